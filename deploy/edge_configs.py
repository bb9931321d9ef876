"""The edge agent configs of the simulator's plant scenarios, written from one table.

    python -m deploy.edge_configs           # (re)write deploy/edge/{plant,faults,stress}.toml
    python -m deploy.edge_configs --check   # exit 1 if a committed file differs from its table

``plant`` and ``faults`` are the same cement works on different ports, and
``stress`` has 1,000 meters: written by hand they would drift apart, so they are
generated here and committed (a test regenerates them and compares the bytes).
``deploy/edge/small.toml`` is the hand-written model they follow.

The tables below are what an integrator takes from the plant documentation
(the scenario files' header comments and meter lists, docs/simulators.md): each
meter's gateway port, unit id and device family, the PLC's OPC UA counters and
the MES's batch slots. Nothing here reads the simulator's files.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

EDGE_DIR = Path(__file__).resolve().parent / "edge"
HOST = "127.0.0.1"
NAMESPACE = "urn:plantprint:simulator"
OPCUA_PATH = "/plantprint/sim"
POLL_INTERVAL_S = 1.0
# counters, machine states and batch flags: sampled fast so batch edges fall between
# close readings (small.toml does the same); rates keep the 1 s default
FAST_SAMPLING_S = 0.02
# [clock] device_tolerance_s, simulated s: these plants run in drills at 100x real time,
# where the default 10 s is 0.1 s real, within the scheduling jitter of a simulator and an
# agent sharing a loaded machine (a 0.23 s stall of the agent was seen in the faults demo; a
# simulator lagging that much shows its clocks that far behind). At most 30 s: the faults
# scenario's gas meter clock runs 95 s ahead (the PLC's OPC UA timestamps 42.5 s behind are
# kept whatever the tolerance: behind may be an old value)
DEVICE_TOLERANCE_S = 20.0
# [clock] max_answer_s, simulated s: the default 2 s is 20 ms real at 100x, which a loaded
# machine's scheduling exceeds now and then; 5 s (50 ms real) still drops the readings
# whose request waited out a simulator stall (35 s simulated across an OPC UA restart,
# stamped halfway: up to 17 s off the value's time)
MAX_ANSWER_S = 5.0


@dataclass(frozen=True)
class ModbusMeter:
    meter: str
    port_offset: int  # the meter listens on port_base + port_offset
    unit: int
    profile: str  # file name in deploy/edge/profiles/


@dataclass(frozen=True)
class PlcMeter:
    """A counter the PLC exposes over OPC UA: ``<meter>.<counter>`` and ``<meter>.<rate>``."""

    meter: str
    counter: str  # node name of the cumulative value: Energy | Volume
    counter_unit: str
    rate: str  # node name of the rate: Power | Flow
    rate_unit: str


@dataclass(frozen=True)
class Target:
    """One generated file: a scenario's site, ports and devices."""

    scenario: str
    site: str
    title: str  # what the plant is, for the header comment
    port_base: int
    opcua_port: int
    metrics_port: int  # distinct per file, so agents of several scenarios can run at once
    modbus: tuple[ModbusMeter, ...]
    ports: dict[int, str]  # port offset -> what sits behind it, for the comments
    plc: tuple[PlcMeter, ...]
    mes: tuple[tuple[str, int], ...]  # (asset, batch slots)
    queue_frames: int = 1000  # the agent's default


    @property
    def gateway(self) -> str:
        return f"gw-{self.scenario}-1"


# --- the cement works (scenarios plant and faults) ------------------------------------

# Gateways: M-SITE on +0, M-AIR on +1, line Lk's gateway on +1+k with the asset feeders
# (MAIN, DRIVE, AUX per asset) on units 1-9, the gas flow meter on 10, the incomer on 20.
CEMENT_MODBUS = (
    ModbusMeter("M-SITE", 0, 1, "pm5000"),
    ModbusMeter("M-AIR", 1, 1, "carbon"),
    ModbusMeter("L1-CRUSHER-MAIN", 2, 1, "sdm630"),
    ModbusMeter("L1-CRUSHER-DRIVE", 2, 2, "em24"),
    ModbusMeter("L1-CRUSHER-AUX", 2, 3, "pm5000"),
    ModbusMeter("L1-RAWMILL-MAIN", 2, 4, "em24"),
    ModbusMeter("L1-RAWMILL-DRIVE", 2, 5, "pm5000"),
    ModbusMeter("L1-RAWMILL-AUX", 2, 6, "sdm630"),
    ModbusMeter("L1-HOMO-MAIN", 2, 7, "pm5000"),
    ModbusMeter("L1-HOMO-DRIVE", 2, 8, "sdm630"),
    ModbusMeter("L1-HOMO-AUX", 2, 9, "em24"),
    ModbusMeter("L1-HGG-GAS", 2, 10, "flow-gas"),
    ModbusMeter("L1-INC", 2, 20, "pm5000"),
    ModbusMeter("L2-KILN-MAIN", 3, 1, "sdm630"),
    ModbusMeter("L2-KILN-DRIVE", 3, 2, "em24"),
    ModbusMeter("L2-KILN-AUX", 3, 3, "pm5000"),
    ModbusMeter("L2-COOLER-MAIN", 3, 4, "em24"),
    ModbusMeter("L2-COOLER-DRIVE", 3, 5, "pm5000"),
    ModbusMeter("L2-COOLER-AUX", 3, 6, "sdm630"),
    ModbusMeter("L2-COALMILL-MAIN", 3, 7, "pm5000"),
    ModbusMeter("L2-COALMILL-DRIVE", 3, 8, "sdm630"),
    ModbusMeter("L2-COALMILL-AUX", 3, 9, "em24"),
    ModbusMeter("L2-KILN-GAS", 3, 10, "flow-gas"),
    ModbusMeter("L2-INC", 3, 20, "carbon"),
    ModbusMeter("L3-CEMENTMILL-MAIN", 4, 1, "sdm630"),
    ModbusMeter("L3-CEMENTMILL-DRIVE", 4, 2, "em24"),
    ModbusMeter("L3-CEMENTMILL-AUX", 4, 3, "pm5000"),
    ModbusMeter("L3-SEPARATOR-MAIN", 4, 4, "em24"),
    ModbusMeter("L3-SEPARATOR-DRIVE", 4, 5, "pm5000"),
    ModbusMeter("L3-SEPARATOR-AUX", 4, 6, "sdm630"),
    ModbusMeter("L3-PACKER-MAIN", 4, 7, "pm5000"),
    ModbusMeter("L3-PACKER-DRIVE", 4, 8, "sdm630"),
    ModbusMeter("L3-PACKER-AUX", 4, 9, "em24"),
    ModbusMeter("L3-INC", 4, 20, "em24"),
)
CEMENT_PORTS = {
    0: "the site HV incomer M-SITE (PM5xxx)",
    1: "the compressed air station M-AIR (smart carbon meter)",
    2: "the L1 raw meal line gateway: feeders on units 1-9, gas 10, incomer 20",
    3: "the L2 clinker line gateway: feeders on units 1-9, gas 10, incomer 20 (carbon)",
    4: "the L3 cement line gateway: feeders on units 1-9, incomer 20 (EM24)",
}
CEMENT_PLC = (
    PlcMeter("L1-MILL-FAN-PLC", "Energy", "kWh", "Power", "kW"),
    PlcMeter("L2-KILN-DRIVE-PLC", "Energy", "kWh", "Power", "kW"),
    PlcMeter("L2-COOLER-FANS-PLC", "Energy", "kWh", "Power", "kW"),
    PlcMeter("L3-MILL-FAN-PLC", "Energy", "kWh", "Power", "kW"),
    PlcMeter("L3-MILL-STEAM", "Volume", "t", "Flow", "t/h"),
)
CEMENT_MES = (
    ("L1-crusher", 1), ("L1-rawmill", 1), ("L1-homo", 1),
    ("L2-kiln", 1), ("L2-cooler", 1), ("L2-coalmill", 1),
    ("L3-cementmill", 1), ("L3-separator", 1), ("L3-packer", 2),  # two packer spouts
)


def cement_works(scenario: str, title: str, port_base: int, opcua_port: int,
                 metrics_port: int) -> Target:
    return Target(scenario, "cement-works", title, port_base, opcua_port, metrics_port,
                  CEMENT_MODBUS, CEMENT_PORTS, CEMENT_PLC, CEMENT_MES)


# --- the stress plant -------------------------------------------------------------------

# deploy/scenarios/stress.toml: 20 lines x 6 assets x 8 meters, families cycling over a
# line's asset meters by (asset + meter) index; per line then a compressed-air meter and
# an incomer (both PM5xxx); meter i (in that order) on port_base + i // 100, unit i % 100 + 1.
STRESS_LINES, STRESS_ASSETS, STRESS_METERS, STRESS_UNITS_PER_PORT = 20, 6, 8, 100
STRESS_CYCLE = ("sdm630", "pm5000", "em24", "carbon", "flow-gas")  # the flow meters: gas


def stress() -> Target:
    names: list[tuple[str, str]] = []
    mes: list[tuple[str, int]] = []
    for li in range(STRESS_LINES):
        line = f"L{li + 1:02d}"
        for ai in range(STRESS_ASSETS):
            asset = f"{line}-A{ai + 1:02d}"
            mes.append((asset, 1))
            names += [(f"{asset}-M{mi + 1:02d}", STRESS_CYCLE[(ai + mi) % len(STRESS_CYCLE)])
                      for mi in range(STRESS_METERS)]
        names += [(f"{line}-AIR", "pm5000"), (f"{line}-INC", "pm5000")]
    per = STRESS_UNITS_PER_PORT
    meters = tuple(ModbusMeter(m, i // per, i % per + 1, p) for i, (m, p) in enumerate(names))
    ports = {o: f"meters {o * per + 1}-{min(len(meters), (o + 1) * per)} in generation order"
             for o in range(meters[-1].port_offset + 1)}
    # every meter delivers a poll cycle per second and the frame loop spools them once a
    # second: the default queue of 1,000 cycles would drop most of them; 10 s of cycles
    return Target("stress", "stress-site", "a generated plant of 20 lines x 6 assets",
                  15300, 14870, 9111, meters, ports, (), tuple(mes),
                  queue_frames=10 * len(meters))


def targets() -> tuple[Target, ...]:
    return (
        cement_works("plant", "a cement works, 3 lines", 15100, 14850, 9109),
        cement_works("faults", "the `plant` cement works with every fault, on other ports",
                     15200, 14860, 9110),
        stress(),
    )


# --- rendering --------------------------------------------------------------------------


def _value(value: str | int | float | tuple[str, ...]) -> str:
    if isinstance(value, tuple):
        if len(value) == 1:
            return f"[{_value(value[0])}]"
        return "[" + ",\n         ".join(_value(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string for ASCII text
    return repr(value)


def _table(header: str, **keys: str | int | float | tuple[str, ...]) -> str:
    return "\n".join([header, *(f"{k} = {_value(v)}" for k, v in keys.items())]) + "\n"


def _node(ref: str) -> str:
    return f"nsu={NAMESPACE};s={ref}"


def _modbus(t: Target) -> Iterator[str]:
    port_offset = -1
    for m in t.modbus:
        if m.port_offset != port_offset:
            port_offset = m.port_offset
            yield f"# Port {t.port_base + port_offset}: {t.ports[port_offset]}.\n"
        yield _table("[[modbus]]", meter=m.meter, host=HOST, port=t.port_base + m.port_offset,
                     unit_id=m.unit, profile=m.profile, poll_interval_s=POLL_INTERVAL_S)


def _opcua(t: Target) -> Iterator[str]:
    what = "the PLC's energy and flow counters and " if t.plc else ""
    yield (f"# The PLC and MES on the simulator's OPC UA server: {what}the batch slots\n"
           "# and machine state of every asset (docs/simulators.md, \"OPC UA server\").\n")
    yield _table("[[opcua]]", name=f"sim-{t.scenario}",
                 endpoint=f"opc.tcp://{HOST}:{t.opcua_port}{OPCUA_PATH}",
                 security_policy="None", security_mode="None", publishing_interval_s=1.0)
    for p in t.plc:
        yield _table("[[opcua.nodes]]", node=_node(f"{p.meter}.{p.counter}"), meter=p.meter,
                     channel="energy", unit=p.counter_unit, sampling_interval_s=FAST_SAMPLING_S)
        if p.rate_unit == "kW":  # power: skip sub-0.1 kW noise, as small.toml does
            yield _table("[[opcua.nodes]]", node=_node(f"{p.meter}.{p.rate}"), meter=p.meter,
                         channel="power", unit=p.rate_unit, deadband_type="absolute",
                         deadband=0.1)
        else:
            yield _table("[[opcua.nodes]]", node=_node(f"{p.meter}.{p.rate}"), meter=p.meter,
                         channel="power", unit=p.rate_unit)
    for asset, slots in t.mes:
        yield _table("[[opcua.mes]]", asset=asset,
                     slots=tuple(_node(f"{asset}.Batch{k}") for k in range(slots)),
                     state=_node(f"{asset}.StateCode"), sampling_interval_s=FAST_SAMPLING_S)


def render(t: Target) -> str:
    """The config file of ``t``, as committed under deploy/edge/."""
    state = f"../../.state/edge-{t.scenario}"
    cmd = f"deploy/edge/{t.scenario}.toml"
    counts = (f"{len(t.modbus) + len(t.plc)} meters: {len(t.modbus)} on Modbus TCP, "
              f"{len(t.plc)} via the PLC (OPC UA); MES batches of {len(t.mes)} assets")
    head = (
        f"# Edge agent for the simulator's `{t.scenario}` scenario "
        f"(deploy/scenarios/{t.scenario}.toml):\n"
        f"# {t.title}.\n# {counts}.\n"
        "# On the scenario's default ports:\n#\n"
        f"#   python -m simulators --scenario deploy/scenarios/{t.scenario}.toml &\n"
        f"#   python -m edge --config {cmd} --init-key   # once: writes the key\n"
        f"#   python -m edge --config {cmd} --check\n"
        f"#   python -m edge --config {cmd}\n#\n"
        "# Relative paths are relative to this file.\n#\n"
        "# GENERATED by `python -m deploy.edge_configs` from its tables: edit those and\n"
        "# regenerate, not this file (a test compares the two).\n"
    )
    top = (f"site = {_value(t.site)}\ngateway = {_value(t.gateway)}\n"
           f"signing_key = {_value(f'{state}/{t.gateway}.pem')}\n"
           'profile_dirs = ["profiles"]\n')
    if t.queue_frames != 1000:
        seconds = t.queue_frames // len(t.modbus)
        top += (f"# poll cycles waiting for the spool writer: {seconds} s of {len(t.modbus)} "
                "meters' cycles\n"
                f"queue_frames = {t.queue_frames}\n")
    clock = ("# A device clock (or an OPC UA source timestamp ahead) further off the gateway\n"
             "# clock than this is not passed on. 20 s, not the default 10 s: in a drill at\n"
             "# 100x real time (deploy.demo adds the simulator's scaled clock here) 10 s is\n"
             "# 0.1 s real, within a loaded machine's scheduling jitter; 20 s still catches\n"
             "# the faults scenario's gas meter clock 95 s ahead. A Modbus answer slower\n"
             "# than max_answer_s leaves its readings' time unknown: they are not sent. 5 s,\n"
             "# not 2 s: 50 ms real, above a loaded machine's jitter, below a simulator stall.\n"
             + _table("[clock]", device_tolerance_s=DEVICE_TOLERANCE_S,
                      max_answer_s=MAX_ANSWER_S))
    tail = [
        _table("[outputs.kafka]", bootstrap_servers=("127.0.0.1:9092",), topic_prefix=""),
        _table("[spool]", path=f"{state}/spool.db"),
        _table("[metrics]", port=t.metrics_port),
        clock,
    ]
    return "\n".join([head, top, *_modbus(t), *_opcua(t), *tail])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m deploy.edge_configs", description=__doc__)
    ap.add_argument("--check", action="store_true",
                    help="write nothing; exit 1 if a committed file differs from its table")
    args = ap.parse_args(argv)
    stale = []
    for t in targets():
        path = EDGE_DIR / f"{t.scenario}.toml"
        text = render(t)
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        stale.append(path.name)
        if not args.check:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    if args.check and stale:
        print(f"out of date: {', '.join(stale)} (run python -m deploy.edge_configs)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
