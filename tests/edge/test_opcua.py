"""OPC UA subscriber against an in-process asyncua server (and the simulator's address space)."""

from __future__ import annotations

import asyncio
import datetime as dt
import tomllib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from asyncua import ua
from pydantic import ValidationError

from edge import wire
from edge.opcua import OpcUaSubscriber
from edge.opcua_config import MesAsset, MonitoredNode, OpcUaServer, split_node_ref
from edge.opcua_values import epoch_ns, quality_of
from tests.edge.opcua_helpers import NS_URI, PlantServer, make_certificate

UTC = dt.UTC
T0 = dt.datetime(2025, 1, 6, 6, 0, 0, tzinfo=UTC)
SMALL_SCENARIO = Path(__file__).resolve().parents[2] / "deploy" / "scenarios" / "small.toml"

# The [[opcua]] part of an agent config for the simulator's small scenario
# (docs/simulators.md): PLC meters and the MES batch slots of both assets.
SMALL_OPCUA_TOML = """
[[opcua]]
name = "sim-plc"
endpoint = "opc.tcp://127.0.0.1:14840/plantprint/sim"
security_policy = "None"
security_mode = "None"
publishing_interval_s = 1.0

[[opcua.nodes]]
node = "nsu=urn:plantprint:simulator;s=M-DRIVE.Energy"
meter = "M-DRIVE"
channel = "energy"
unit = "kWh"
sampling_interval_s = 0.02

[[opcua.nodes]]
node = "nsu=urn:plantprint:simulator;s=M-DRIVE.Power"
meter = "M-DRIVE"
channel = "power"
unit = "kW"
deadband_type = "absolute"
deadband = 0.1

[[opcua.nodes]]
node = "nsu=urn:plantprint:simulator;s=M-STEAM.Volume"
meter = "M-STEAM"
channel = "energy"
unit = "t"

[[opcua.nodes]]
node = "nsu=urn:plantprint:simulator;s=M-STEAM.Flow"
meter = "M-STEAM"
channel = "power"
unit = "t/h"

[[opcua.mes]]
asset = "L1-press"
slots = ["nsu=urn:plantprint:simulator;s=L1-press.Batch0"]
state = "nsu=urn:plantprint:simulator;s=L1-press.StateCode"
sampling_interval_s = 0.02

[[opcua.mes]]
asset = "L1-oven"
slots = ["nsu=urn:plantprint:simulator;s=L1-oven.Batch0",
         "nsu=urn:plantprint:simulator;s=L1-oven.Batch1"]
state = "nsu=urn:plantprint:simulator;s=L1-oven.StateCode"
sampling_interval_s = 0.02
"""


def ns(ts: dt.datetime) -> int:
    return int(ts.timestamp()) * 1_000_000_000 + ts.microsecond * 1000


class Sink:
    """Collects callbacks and lets a test wait for a condition on them."""

    def __init__(self) -> None:
        self.readings: list[wire.Reading] = []
        self.events: list[wire.BatchEvent] = []
        self.changed = asyncio.Event()

    def on_readings(self, readings: list[wire.Reading]) -> None:
        self.readings.extend(readings)
        self.changed.set()

    def on_batch_events(self, events: list[wire.BatchEvent]) -> None:
        self.events.extend(events)
        self.changed.set()

    async def until(self, cond: Callable[[], bool], within: float = 10.0) -> None:
        async with asyncio.timeout(within):
            while not cond():
                self.changed.clear()
                await self.changed.wait()

    def values_of(self, meter: str, channel: str) -> list[wire.Reading]:
        return [r for r in self.readings if r.meter == meter and r.channel == channel]


def server_config(url: str, **overrides: object) -> OpcUaServer:
    ref = f"nsu={NS_URI};s="
    base: dict[str, object] = {
        "name": "plc1", "endpoint": url, "publishing_interval_s": 0.05, "timeout_s": 2,
        "watchdog_s": 0.3, "reconnect_initial_s": 0.1, "reconnect_max_s": 0.5,
        "nodes": [
            MonitoredNode(node=f"{ref}M1.Energy", meter="M1", channel="energy_kwh", unit="kWh",
                          sampling_interval_s=0.02),
            MonitoredNode(node=f"{ref}M1.Power", meter="M1", channel="power_kw", unit="kW",
                          sampling_interval_s=0.02, deadband_type="absolute", deadband=5.0),
            MonitoredNode(node=f"{ref}M2.Energy", meter="M2", channel="energy_kwh", unit="kWh",
                          sampling_interval_s=0.02),
        ],
        "mes": [MesAsset(asset="OVEN", slots=(f"{ref}OVEN.Batch0",), state=f"{ref}OVEN.StateCode",
                         sampling_interval_s=0.02)],
    }
    base.update(overrides)
    return OpcUaServer.model_validate(base)


async def _running(sub: OpcUaSubscriber) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(sub.run())
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


# ------------------------------------------------------------------ pure parts


def test_status_codes_map_to_quality() -> None:
    assert quality_of(ua.StatusCode(ua.StatusCodes.Good)) == "good"
    assert quality_of(ua.StatusCode(ua.StatusCodes.UncertainLastUsableValue)) == "uncertain"
    assert quality_of(ua.StatusCode(ua.StatusCodes.BadNoCommunication)) == "bad"
    assert quality_of(ua.StatusCode(ua.StatusCodes.BadSensorFailure)) == "bad"


def test_timestamps_convert_exactly_and_the_1601_minimum_means_none() -> None:
    ts = dt.datetime(2025, 1, 6, 6, 0, 0, 123456, tzinfo=UTC)
    assert epoch_ns(ts) == 1_736_143_200_123_456_000
    assert epoch_ns(dt.datetime(1601, 1, 1, tzinfo=UTC)) is None
    assert epoch_ns(None) is None


def test_config_refuses_inconsistent_security_and_bad_node_ids(tmp_path: Path) -> None:
    assert split_node_ref("nsu=urn:x;s=A.B") == ("urn:x", "s=A.B")
    assert split_node_ref("ns=2;i=5") == (None, "ns=2;i=5")
    with pytest.raises(ValidationError, match="None goes with None"):
        server_config("opc.tcp://h:4840", security_policy="Basic256Sha256")
    with pytest.raises(ValidationError, match="needs certificate"):
        server_config("opc.tcp://h:4840", security_policy="Basic256Sha256",
                      security_mode="SignAndEncrypt")
    with pytest.raises(ValidationError, match="node id"):
        MonitoredNode(node="M1.Energy", meter="M1", channel="e")


# ------------------------------------------------------------ against a server


@pytest.mark.slow
async def test_values_arrive_with_source_timestamps_and_quality() -> None:
    server = PlantServer()
    await server.start()
    sink = Sink()
    sub = OpcUaSubscriber(server_config(server.url), sink.on_readings, sink.on_batch_events)
    try:
        async for _ in _running(sub):
            await asyncio.wait_for(sub.connected.wait(), 10)
            await server.write("M1.Energy", 1234.5, T0)
            await sink.until(lambda: any(r.value == 1234.5 for r in sink.readings))
            await server.write("M2.Energy", 77.0, T0 + dt.timedelta(seconds=1),
                               ua.StatusCodes.BadNoCommunication)
            await sink.until(
                lambda: any(r.quality == "bad" for r in sink.values_of("M2", "energy_kwh")))
            await server.write("OVEN.StateCode", 3, T0 + dt.timedelta(seconds=2))
            await sink.until(lambda: any(r.value == 3 for r in sink.values_of("OVEN", "state")))
    finally:
        await server.stop()
    energy = [r for r in sink.values_of("M1", "energy_kwh") if r.value == 1234.5]
    assert energy == [wire.Reading("M1", "energy_kwh", ns(T0), 1234.5, "kWh", "good")]
    bad = [r for r in sink.values_of("M2", "energy_kwh") if r.quality == "bad"]
    assert bad[-1].ts_ns == ns(T0 + dt.timedelta(seconds=1))
    assert bad[-1].value == 0  # a Bad data value carries no value (Part 4, 7.7.1)
    state = sink.values_of("OVEN", "state")[-1]
    assert (state.value, state.unit, state.ts_ns) == (3, "state", ns(T0 + dt.timedelta(seconds=2)))


@pytest.mark.slow
async def test_absolute_deadband_suppresses_small_changes() -> None:
    server = PlantServer()
    await server.start()
    sink = Sink()
    sub = OpcUaSubscriber(server_config(server.url), sink.on_readings, sink.on_batch_events)
    try:
        async for _ in _running(sub):
            await asyncio.wait_for(sub.connected.wait(), 10)
            for i, kw in enumerate([100.0, 101.0, 102.0, 110.0]):
                await server.write("M1.Power", kw, T0 + dt.timedelta(seconds=i))
                await asyncio.sleep(0.1)
            await sink.until(lambda: any(r.value == 110.0 for r in sink.readings))
    finally:
        await server.stop()
    seen = [r.value for r in sink.values_of("M1", "power_kw")]
    assert 101.0 not in seen and 102.0 not in seen
    assert seen[-2:] == [100.0, 110.0]


@pytest.mark.slow
async def test_batch_slot_changes_become_batch_events() -> None:
    server = PlantServer()
    await server.start()
    sink = Sink()
    sub = OpcUaSubscriber(server_config(server.url), sink.on_readings, sink.on_batch_events)
    start, end = T0, T0 + dt.timedelta(hours=3)
    try:
        async for _ in _running(sub):
            await asyncio.wait_for(sub.connected.wait(), 10)
            # the simulator's write order: slot fields first, Running last
            for path, value in [("BatchId", "B-17"), ("Product", "clinker"), ("Unit", "t"),
                                ("StartTime", start), ("Quantity", 0.0), ("Running", True)]:
                await server.write(f"OVEN.Batch0.{path}", value, start)
            await sink.until(lambda: len(sink.events) >= 1)
            for path, value in [("EndTime", end), ("Quantity", 412.0), ("Running", False)]:
                await server.write(f"OVEN.Batch0.{path}", value, end)
            await sink.until(lambda: len(sink.events) >= 2)
    finally:
        await server.stop()
    assert sink.events == [
        wire.BatchEvent("OVEN", "B-17", "clinker", "start", ns(start)),
        wire.BatchEvent("OVEN", "B-17", "clinker", "end", ns(end), 412.0, "t"),
    ]


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_server_restart_subscriptions_resume_by_themselves() -> None:
    server = PlantServer()
    await server.start()
    sink = Sink()
    sub = OpcUaSubscriber(server_config(server.url), sink.on_readings, sink.on_batch_events)
    try:
        async for _ in _running(sub):
            await asyncio.wait_for(sub.connected.wait(), 10)
            await server.write("M1.Energy", 1.0, T0)
            await sink.until(lambda: any(r.value == 1.0 for r in sink.readings))
            await server.stop()
            await asyncio.sleep(1.0)  # down for a while: the subscriber retries meanwhile
            server.extra_namespaces = 2  # and the restarted server moves our namespace index
            await server.start()
            await sink.until(lambda: sub.sessions >= 2, within=20)
            await server.write("M1.Energy", 2.0, T0 + dt.timedelta(seconds=5))
            await sink.until(lambda: any(r.value == 2.0 for r in sink.readings))
    finally:
        await server.stop()
    assert sub.sessions == 2
    after = [r for r in sink.values_of("M1", "energy_kwh") if r.value == 2.0]
    assert after[0].ts_ns == ns(T0 + dt.timedelta(seconds=5))


@pytest.mark.slow
async def test_basic256sha256_sign_and_encrypt_with_self_signed_certificates(
    tmp_path: Path,
) -> None:
    server_pair = make_certificate(tmp_path, "server", "urn:plantprint:test-server")
    client_pair = make_certificate(tmp_path, "client", "urn:plantprint:edge")
    server = PlantServer(security=server_pair, users={"edge": "s3cret"})
    await server.start()
    sink = Sink()
    cfg = server_config(
        server.url, security_policy="Basic256Sha256", security_mode="SignAndEncrypt",
        certificate=client_pair.cert, private_key=client_pair.key,
        user="edge", password="s3cret",
    )
    sub = OpcUaSubscriber(cfg, sink.on_readings, sink.on_batch_events)
    try:
        async for _ in _running(sub):
            await asyncio.wait_for(sub.connected.wait(), 15)
            await server.write("M1.Energy", 42.0, T0)
            await sink.until(lambda: any(r.value == 42.0 for r in sink.readings))
    finally:
        await server.stop()
    assert sub.sessions == 1


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_simulator_plant_batches_and_meter_over_opcua() -> None:
    """The simulator's own OPC UA server (docs/simulators.md) as an independent peer."""
    from simulators.config import load_scenario
    from simulators.runner import PlantRunner, RunOptions

    scenario = load_scenario(SMALL_SCENARIO)
    runner = PlantRunner(scenario, RunOptions(speed=1500, port_base=0, opcua_port=0,
                                              duration_s=5500))
    await runner.start()
    url = runner.endpoints()["opcua"]["url"]  # type: ignore[index]
    table = tomllib.loads(SMALL_OPCUA_TOML)["opcua"][0]
    cfg = OpcUaServer.model_validate({**table, "endpoint": url, "publishing_interval_s": 0.05,
                                      "reconnect_initial_s": 0.1})
    sink = Sink()
    sub = OpcUaSubscriber(cfg, sink.on_readings, sink.on_batch_events)
    try:
        async for _ in _running(sub):
            await asyncio.wait_for(sub.connected.wait(), 10)
            await asyncio.wait_for(runner.run(), 30)
            await sink.until(lambda: len(sink.events) >= 6)
    finally:
        await runner.close()
    t0 = scenario.scenario.start
    expected = set()
    for b in scenario.batches:
        expected.add(wire.BatchEvent(b.asset, b.id, b.product, "start",
                                     ns(t0 + dt.timedelta(seconds=b.start_s))))
        expected.add(wire.BatchEvent(b.asset, b.id, b.product, "end",
                                     ns(t0 + dt.timedelta(seconds=b.end_s)), b.quantity, b.unit))
    assert set(sink.events) == expected
    energy = sink.values_of("M-DRIVE", "energy")
    assert len(energy) > 10
    assert all(r.quality == "good" and r.unit == "kWh" for r in energy)
    stamps = [r.ts_ns for r in energy]
    assert stamps == sorted(stamps)  # simulated source time, not gateway time
    assert ns(t0) <= stamps[0] and stamps[-1] <= ns(t0 + dt.timedelta(seconds=5500))
    assert [r.value for r in energy] == sorted(r.value for r in energy)  # a counter
    states = {r.value for r in sink.values_of("L1-press", "state")}
    assert 3 in states  # production while B-001 ran


@pytest.mark.slow
async def test_wrong_password_gets_no_session() -> None:
    server = PlantServer(users={"edge": "s3cret"})
    await server.start()
    sink = Sink()
    cfg = server_config(server.url, user="edge", password="wrong")
    sub = OpcUaSubscriber(cfg, sink.on_readings, sink.on_batch_events)
    try:
        async for _ in _running(sub):
            await asyncio.sleep(1.5)  # several attempts with backoff
            assert sub.sessions == 0 and not sub.connected.is_set()
    finally:
        await server.stop()


@pytest.mark.slow
async def test_a_node_the_server_lacks_is_logged_by_status_name_and_configured_id(
    caplog,
) -> None:
    """The warning names the node as configured and the status code by name
    (``BadNodeIdUnknown``), not as a NodeId repr and a raw number; the other nodes run."""
    server = PlantServer()
    await server.start()
    missing = f"nsu={NS_URI};s=M9.Energy"
    base = server_config(server.url)
    nodes = (*base.nodes, MonitoredNode(node=missing, meter="M9", channel="energy_kwh",
                                        unit="kWh", sampling_interval_s=0.02))
    sink = Sink()
    sub = OpcUaSubscriber(base.model_copy(update={"nodes": nodes}), sink.on_readings,
                          sink.on_batch_events)
    try:
        with caplog.at_level("WARNING", logger="edge.opcua"):
            async for _ in _running(sub):
                await asyncio.wait_for(sub.connected.wait(), 10)
                await sink.until(lambda: bool(sink.values_of("M1", "energy_kwh")))
    finally:
        await server.stop()
    lines = [r.getMessage() for r in caplog.records if r.name == "edge.opcua"]
    assert (f"opcua plc1: cannot monitor node {missing}: BadNodeIdUnknown "
            "(meter M9 channel energy_kwh)") in lines, lines
    assert not [line for line in lines if "StatusCode(" in line or "NodeId(" in line], lines


@pytest.mark.slow
async def test_asyncua_chatter_is_off_by_default_and_on_with_verbose(caplog) -> None:
    """asyncua's endpoint dump (INFO) and session-timeout note (WARNING) on every connect."""
    import logging

    from edge.logs import EDGE_LIBRARIES, configure_logging
    from edge.opcua import new_client

    saved = {name: logging.getLogger(name).level for name in EDGE_LIBRARIES}
    server = PlantServer()
    await server.start()
    said: dict[bool, list[str]] = {}
    try:
        for verbose in (False, True):
            configure_logging("INFO", verbose=verbose, libraries=EDGE_LIBRARIES)
            caplog.clear()
            with caplog.at_level("INFO"):
                client = await new_client(server_config(server.url))
                await client.connect()
                await client.disconnect()
            said[verbose] = [r.getMessage() for r in caplog.records
                             if r.name.startswith("asyncua.client")]
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
        await server.stop()
    assert said[False] == []
    assert any(m.startswith("find_endpoint") for m in said[True]), said[True]
    assert any("session timeout" in m for m in said[True]), said[True]
