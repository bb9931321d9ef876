"""Cross-reference checks of a scenario (what field validators cannot see)."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from simulators.devices import FAMILIES, MODBUS_FAMILIES
from simulators.faults import Busy, LateEnd, OpcuaRestart, Rollover

if TYPE_CHECKING:
    from simulators.config import Meter, Scenario

_ELECTRIC = frozenset({"sdm630", "pm5000", "em24", "carbon", "opcua_energy"})
_FLOW = frozenset({"flow", "opcua_flow"})


def check_references(sc: Scenario) -> list[str]:
    """Every problem found, each naming its key and what was expected."""
    problems = _duplicates(sc)
    assets = {a.id for a in sc.assets}
    meters = {m.id: m for m in sc.meters}
    for i, m in enumerate(sc.meters):
        problems += [f"meters[{i}] ({m.id}).{p}" for p in _meter_problems(m, assets, meters)]
    problems += _parent_problems(sc)
    for i, b in enumerate(sc.batches):
        if b.asset not in assets:
            problems.append(f"batches[{i}] ({b.id}).asset: unknown asset {b.asset!r}")
        if b.end_s <= b.start_s:
            problems.append(f"batches[{i}] ({b.id}).end_s: expected > start_s {b.start_s}")
    problems += _concurrency_problems(sc)
    problems += _fault_problems(sc, meters)
    return problems


def _duplicates(sc: Scenario) -> list[str]:
    out = []
    for key, ids in (("assets", [a.id for a in sc.assets]), ("meters", [m.id for m in sc.meters]),
                     ("batches", [b.id for b in sc.batches])):
        out += [f"{key}: id {i!r} is used {n} times, expected unique"
                for i, n in Counter(ids).items() if n > 1]
    addrs = Counter((m.modbus.port_offset, m.modbus.unit) for m in sc.meters if m.modbus)
    out += [f"meters.modbus: port_offset {p} unit {u} is used {n} times, expected unique"
            for (p, u), n in addrs.items() if n > 1]
    return out


def _meter_problems(m: Meter, assets: set[str], meters: dict[str, Meter]) -> list[str]:
    out: list[str] = []
    if m.family not in FAMILIES:
        return [f"family: unknown {m.family!r}, expected one of {sorted(FAMILIES)}"]
    if (m.family in MODBUS_FAMILIES) != (m.modbus is not None):
        out.append("modbus: required for Modbus families, forbidden for OPC UA ones")
    if m.family in _ELECTRIC and m.carrier != "electricity":
        out.append(f"carrier: family {m.family} measures electricity")
    if m.family in _FLOW and m.carrier == "electricity":
        out.append(f"carrier: family {m.family} measures natural_gas or steam")
    if m.family == "carbon" and m.co2_factor <= 0:
        out.append("co2_factor: expected > 0 kgCO2/kWh for a carbon meter")
    if m.role == "asset" and m.asset not in assets:
        out.append(f"asset: expected one of the scenario's assets, got {m.asset!r}")
    if m.role == "shared" and not m.assets:
        out.append("assets: a shared meter needs the assets it serves")
    out += [f"assets: unknown asset {a!r}" for a in m.assets if a not in assets]
    if m.role == "parent":
        if not m.children:
            out.append("children: a parent meter needs children")
        for c in m.children:
            if c not in meters or c == m.id:
                out.append(f"children: unknown meter {c!r}")
            elif meters[c].carrier != m.carrier:
                out.append(f"children: {c!r} measures {meters[c].carrier}, not {m.carrier}")
    return out


def _parent_problems(sc: Scenario) -> list[str]:
    owner = Counter(c for m in sc.meters for c in m.children)
    out = [f"meters: {c!r} is a child of {n} parents, expected at most one"
           for c, n in owner.items() if n > 1]
    children = {m.id: m.children for m in sc.meters}

    def cyclic(node: str, seen: tuple[str, ...]) -> bool:
        if node in seen:
            return True
        return any(cyclic(c, (*seen, node)) for c in children.get(node, ()))

    out += [f"meters[{m.id}].children: parent/child cycle" for m in sc.meters
            if m.children and cyclic(m.id, ())]
    return out


def _concurrency_problems(sc: Scenario) -> list[str]:
    out = []
    # Batches truly running at once need a slot each. A late end event holds its
    # slot past the true end, but the next batch then waits (simulators/slots.py).
    for a in sc.assets:
        events = sorted((t, d) for b in sc.batches if b.asset == a.id
                        for t, d in ((b.start_s, 1), (b.end_s, -1)))
        running = peak = 0
        for _, d in events:
            running += d
            peak = max(peak, running)
        if peak > a.slots:
            out.append(f"assets[{a.id}].slots: {peak} concurrent batches need slots >= {peak}")
    return out


def _fault_problems(sc: Scenario, meters: dict[str, Meter]) -> list[str]:
    out = []
    batches = {b.id for b in sc.batches}
    for i, f in enumerate(sc.faults):
        if isinstance(f, LateEnd):
            if f.batch not in batches:
                out.append(f"faults[{i}].batch: unknown batch {f.batch!r}")
            continue
        if isinstance(f, OpcuaRestart):
            continue
        m = meters.get(f.meter)
        if m is None:
            out.append(f"faults[{i}] ({f.kind}).meter: unknown meter {f.meter!r}")
            continue
        end = getattr(f, "end_s", None)
        if end is not None and end <= getattr(f, "start_s", 0):
            out.append(f"faults[{i}] ({f.kind}).end_s: expected > start_s")
        spec = FAMILIES[m.family].counter() if m.family in FAMILIES else None
        if isinstance(f, Rollover) and (spec is None or spec.counter_bits != 32):
            out.append(f"faults[{i}] (rollover).meter: expected a meter with a 32-bit counter,"
                       f" {m.id} is {m.family}")
        if isinstance(f, Busy) and m.modbus is None:
            out.append(f"faults[{i}] (busy).meter: {m.id} is not a Modbus meter")
    return out
