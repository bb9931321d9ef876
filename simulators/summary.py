"""Ground-truth records (pure): interval records and the run summary."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from simulators.physics import MeterState, PlantModel

Record = dict[str, Any]
_SUMMED = ("energy", "unallocated", "children", "unmetered", "spike", "counter_increase",
           "rollovers", "resets", "co2", "co2_unallocated", "co2_counter_increase")
_MERGED = ("batches", "co2_batches")


def interval_record(ms: MeterState, acc: Any, mark: tuple[float, float, int, float],
                    now: tuple[float, float, int, float], start: str, end: str,
                    flags: list[str]) -> Record:
    """One meter's truth over one interval (see docs/simulators.md)."""
    cfg = ms.cfg
    rollovers = now[2] - mark[2]
    counter_flags = [name for name, n in (("rollover", rollovers), ("reset", acc.resets),
                                          ("spike", acc.spike)) if n]
    rec: Record = {
        "type": "interval", "meter": cfg.id, "start": start, "end": end,
        "energy": acc.energy, "batches": dict(sorted(acc.batches.items())),
        "unallocated": acc.unallocated,
        "counter_start": mark[0], "counter_end": now[0],
        "counter_increase": _in_unit(ms.counter, now[1] - mark[1]),
        "rollovers": rollovers, "resets": acc.resets, "spike": acc.spike,
        "flags": sorted({*flags, *counter_flags}),
    }
    if cfg.role == "parent":
        rec["children"] = acc.children
        rec["unmetered"] = acc.unmetered
    if ms.co2 is not None:
        f = cfg.co2_factor
        rec["co2"] = acc.energy * f
        rec["co2_batches"] = {b: e * f for b, e in rec["batches"].items()}
        rec["co2_unallocated"] = acc.unallocated * f
        rec["co2_counter_increase"] = _in_unit(ms.co2, now[3] - mark[3])
    return rec


def _in_unit(counter: Any, diff: float) -> float:
    """An increase in raw counts (integer counters) or unit (float ones) in the unit."""
    return int(diff) * counter.resolution if counter.bits is not None else diff


def add_interval(total: Record, rec: Record) -> None:
    """Add an interval record's figures into a meter's running total."""
    for key in _SUMMED:
        if key in rec:
            total[key] = total.get(key, 0) + rec[key]
    for key in _MERGED:
        if key in rec:
            merged = total.setdefault(key, {})
            for b, v in rec[key].items():
                merged[b] = merged.get(b, 0.0) + v


def summary_record(model: PlantModel, totals: dict[str, Record], end: str) -> Record:
    """Whole-run truth per meter, per batch and the parent balances."""
    meters = {mid: {**t, "batches": dict(sorted(t.get("batches", {}).items()))}
              for mid, t in totals.items()}
    batches: dict[str, Record] = {
        b.id: {"meters": {}, "carriers": {}, "co2": 0.0} for b in model.scenario.batches
    }
    for ms in model.meters:
        total = totals[ms.cfg.id]
        for b_id, e in total.get("batches", {}).items():
            bt = batches[b_id]
            bt["meters"][ms.cfg.id] = e
            bt["carriers"][ms.cfg.carrier] = bt["carriers"].get(ms.cfg.carrier, 0.0) + e
        for b_id, kg in total.get("co2_batches", {}).items():
            batches[b_id]["co2"] += kg
    balance = {ms.cfg.id: {"energy": totals[ms.cfg.id].get("energy", 0.0),
                           "children": totals[ms.cfg.id].get("children", 0.0),
                           "unmetered": totals[ms.cfg.id].get("unmetered", 0.0)}
               for ms in model.meters if ms.cfg.role == "parent"}
    return {"type": "summary", "end": end, "meters": meters, "batches": batches,
            "balance": balance}
