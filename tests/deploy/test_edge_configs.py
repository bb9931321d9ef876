"""The shipped edge configs read every meter, batch slot and machine state of their scenario.

Each scenario is read with the simulator's own loader (``extends`` and
``[generate]`` expanded), each config with the edge's; a test may read both,
the product code never does. Where compute has a site model of the plant, the
channels and units the edge reports are the ones that model expects.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest

from compute.site import RATE_UNITS, SiteModel, load_site
from deploy.edge_configs import EDGE_DIR, main, render, targets
from edge.config import AgentConfig, load_config
from edge.profiles import PointSpec
from simulators.config import Meter, Scenario, load_scenario

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ("small", "plant", "faults", "stress")
SITE_MODELS = {"small": "small", "plant": "plant", "faults": "plant"}  # compute's models
# the counter's and the rate's unit per carrier, as the plant documents them
COUNTER_UNIT = {"electricity": "kWh", "natural_gas": "Nm3", "steam": "t"}
RATE_UNIT = {"electricity": "kW", "natural_gas": "Nm3/h", "steam": "t/h"}
# OPC UA families: the counter's and the rate's node names
PLC_NODES = {"opcua_energy": ("Energy", "Power"), "opcua_flow": ("Volume", "Flow")}


@cache  # stress: 1,000 meters take seconds to expand and load
def _scenario(name: str) -> Scenario:
    return load_scenario(ROOT / "deploy" / "scenarios" / f"{name}.toml")


@cache
def _config(name: str) -> AgentConfig:
    return load_config(EDGE_DIR / f"{name}.toml")


def _point(config: AgentConfig, meter: str, channel: str) -> PointSpec | None:
    for dev in config.modbus:
        if dev.meter == meter:
            return next((p for p in dev.points if p.channel == channel), None)
    return None


def _node_units(config: AgentConfig) -> dict[tuple[str, str], str]:
    return {(n.meter, n.channel): n.unit for s in config.opcua for n in s.nodes}


@pytest.mark.parametrize("path", sorted(EDGE_DIR.glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_config_loads_with_the_edge_loader(path: Path) -> None:
    config = load_config(path)
    assert config.has_output and (config.modbus or config.opcua)


def test_generated_configs_are_the_committed_bytes() -> None:
    """plant, faults and stress come from deploy/edge_configs.py: they never drift from it."""
    for t in targets():
        committed = (EDGE_DIR / f"{t.scenario}.toml").read_text(encoding="utf-8")
        assert committed == render(t), f"{t.scenario}.toml: run python -m deploy.edge_configs"
    assert main(["--check"]) == 0


@pytest.mark.parametrize("name", SCENARIOS)
def test_modbus_meters_are_the_scenarios_with_their_ports_units_and_families(name: str) -> None:
    scenario, config = _scenario(name), _config(name)
    ep = scenario.endpoints
    want = {m.id: (ep.host, ep.modbus_port_base + m.modbus.port_offset, m.modbus.unit,
                   m.family, COUNTER_UNIT[m.carrier])
            for m in scenario.meters if m.modbus is not None}
    got = {}
    for dev in config.modbus:
        energy = next(p for p in dev.points if p.channel == "energy")
        got[dev.meter] = (dev.host, dev.port, dev.unit_id, dev.register_map.family, energy.unit)
    assert got == want
    assert config.site == scenario.scenario.site
    assert {d.poll_interval_s for d in config.modbus} == {1.0}


def _plc_nodes(scenario: Scenario, m: Meter) -> set[tuple[str, str, str, str]]:
    counter, rate = PLC_NODES[m.family]
    ns = scenario.endpoints.namespace
    return {(m.id, "energy", f"nsu={ns};s={m.id}.{counter}", COUNTER_UNIT[m.carrier]),
            (m.id, "power", f"nsu={ns};s={m.id}.{rate}", RATE_UNIT[m.carrier])}


@pytest.mark.parametrize("name", SCENARIOS)
def test_opcua_reads_every_plc_meter_batch_slot_and_machine_state(name: str) -> None:
    scenario, config = _scenario(name), _config(name)
    ep = scenario.endpoints
    assert [s.endpoint for s in config.opcua] == [
        f"opc.tcp://{ep.host}:{ep.opcua_port}{ep.opcua_path}"]
    plc = [m for m in scenario.meters if m.family in PLC_NODES]
    want_nodes = set().union(*(_plc_nodes(scenario, m) for m in plc))
    got_nodes = {(n.meter, n.channel, n.node, n.unit) for s in config.opcua for n in s.nodes}
    assert got_nodes == want_nodes
    ns = ep.namespace
    want_mes = {a.id: (tuple(f"nsu={ns};s={a.id}.Batch{k}" for k in range(a.slots)),
                       f"nsu={ns};s={a.id}.StateCode") for a in scenario.assets}
    got_mes = {m.asset: (m.slots, m.state) for s in config.opcua for m in s.mes}
    assert got_mes == want_mes
    # nothing of the plant goes unread: every meter is polled or subscribed
    read = {d.meter for d in config.modbus} | {n.meter for s in config.opcua for n in s.nodes}
    assert read == {m.id for m in scenario.meters}


def test_the_cement_works_has_39_meters_and_faults_only_moves_its_ports() -> None:
    plant, faults = _config("plant"), _config("faults")
    assert len(plant.modbus) + len({n.meter for n in plant.opcua[0].nodes}) == 39
    assert plant.site == faults.site == "cement-works"
    assert plant.gateway != faults.gateway
    assert [(d.meter, d.port + 100, d.unit_id) for d in plant.modbus] == [
        (d.meter, d.port, d.unit_id) for d in faults.modbus]
    assert plant.opcua[0].nodes == faults.opcua[0].nodes
    assert plant.opcua[0].mes == faults.opcua[0].mes
    assert len(_config("stress").modbus) == 1000


def _check_counter(site: SiteModel, config: AgentConfig, mid: str) -> None:
    m = site.meters[mid]
    point = _point(config, mid, m.channel)
    if point is None:  # a PLC counter: an OPC UA Double
        assert _node_units(config)[(mid, m.channel)] == m.unit, mid
        assert (m.counter_bits, m.float_bits) == (None, 64), mid
        return
    assert (point.kind, point.unit) == ("counter", m.unit), mid
    if point.type.startswith("float"):
        assert m.counter_bits is None and m.float_bits == int(point.type[5:]), mid
    else:  # the model's wrap (2**bits x resolution) is where the edge's counter wraps
        assert (point.counter_bits, point.scale) == (m.counter_bits, m.resolution), mid


def _check_power_and_carbon(site: SiteModel, config: AgentConfig, mid: str) -> None:
    m = site.meters[mid]
    if m.power_channel:
        point = _point(config, mid, m.power_channel)
        unit = point.unit if point else _node_units(config)[(mid, m.power_channel)]
        assert unit in RATE_UNITS[m.carrier], (mid, unit)
    if m.carbon is not None:
        co2 = _point(config, mid, m.carbon.co2_channel)
        factor = _point(config, mid, m.carbon.factor_channel)
        assert co2 is not None and factor is not None, mid
        assert (co2.kind, co2.unit) == ("counter", "kg"), mid
        assert (co2.counter_bits, co2.scale) == (m.carbon.co2_counter_bits,
                                                 m.carbon.co2_resolution), mid
        assert factor.unit == "kg/kWh", mid


@pytest.mark.parametrize("name", sorted(SITE_MODELS))
def test_edge_reports_the_channels_and_units_the_site_model_expects(name: str) -> None:
    site = load_site(ROOT / "deploy" / "sites" / f"{SITE_MODELS[name]}.toml")
    config = _config(name)
    assert config.site == site.site
    read = {d.meter for d in config.modbus} | {n.meter for s in config.opcua for n in s.nodes}
    assert read == set(site.meters)
    assert {m.asset for s in config.opcua for m in s.mes} == set(site.assets)
    for mid in site.meters:
        _check_counter(site, config, mid)
        _check_power_and_carbon(site, config, mid)
