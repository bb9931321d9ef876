"""Reading a ground-truth file back and checking it is self-consistent (pure)."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson

from simulators.errors import GroundTruthError

Record = dict[str, Any]
_FLOAT32_REL = 2.0 ** -23  # float32 counters round to 24 significant bits


def load_ground_truth(path: str | Path) -> list[Record]:
    """Every record of a ground-truth JSON Lines file, in order."""
    try:
        lines = Path(path).read_bytes().splitlines()
        return [orjson.loads(line) for line in lines if line.strip()]
    except (OSError, orjson.JSONDecodeError) as exc:
        raise GroundTruthError(f"{path}: cannot read ground truth: {exc}") from exc


def check_ground_truth(records: list[Record], tol: float = 1e-9) -> list[str]:
    """Problems found (empty when consistent); see docs/simulators.md."""
    if not records or records[0].get("type") != "header":
        return ["the first record is not a header"]
    meters = {m["id"]: m for m in records[0]["meters"]}
    intervals = [r for r in records if r["type"] == "interval"]
    problems: list[str] = []
    by_end: dict[str, dict[str, Record]] = defaultdict(dict)
    for rec in intervals:
        by_end[rec["end"]][rec["meter"]] = rec
        problems += _interval_problems(rec, meters[rec["meter"]], tol)
    for per_meter in by_end.values():
        problems += _balance_problems(per_meter, meters, tol)
    summary = next((r for r in records if r["type"] == "summary"), None)
    if summary is not None:
        problems += _summary_problems(summary, intervals, tol)
    return problems


def _close(a: float, b: float, tol: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=tol)


def _interval_problems(rec: Record, meter: Record, tol: float) -> list[str]:
    where = f"{rec['meter']} [{rec['start']}, {rec['end']})"
    out = []
    allocated = sum(rec["batches"].values()) + rec["unallocated"] + rec.get("children", 0.0)
    if not _close(allocated, rec["energy"], tol):
        out.append(f"{where}: batches + unallocated (+ children) = {allocated} "
                   f"!= energy {rec['energy']}")
    counter = meter["counter"]
    slack = counter["resolution"] * (1 + rec["resets"]) + tol
    if counter.get("dtype") == "float32":
        slack += 2 * abs(float(rec["counter_end"])) * _FLOAT32_REL
    shown = rec["counter_increase"] - rec["spike"]
    if abs(shown - rec["energy"]) > slack:
        out.append(f"{where}: counter increase - spike = {shown} != energy {rec['energy']} "
                   f"(slack {slack})")
    if counter["bits"] and not rec["resets"]:
        wrapped = (rec["counter_end"] - rec["counter_start"]) % (1 << counter["bits"])
        if not _close(wrapped * counter["resolution"], rec["counter_increase"], tol):
            out.append(f"{where}: raw counters {rec['counter_start']}..{rec['counter_end']} "
                       f"do not give counter_increase {rec['counter_increase']}")
    return out


def _balance_problems(per_meter: dict[str, Record], meters: dict[str, Record],
                      tol: float) -> list[str]:
    out = []
    for mid, rec in per_meter.items():
        children = meters[mid]["children"]
        if not children:
            continue
        kids = sum(per_meter[c]["energy"] for c in children if c in per_meter)
        if not _close(kids, rec["children"], tol):
            out.append(f"{mid} ending {rec['end']}: children sum {kids} != {rec['children']}")
        if not _close(rec["children"] + rec["unmetered"], rec["energy"], tol):
            out.append(f"{mid} ending {rec['end']}: children + unmetered "
                       f"{rec['children'] + rec['unmetered']} != energy {rec['energy']}")
    return out


def _summary_problems(summary: Record, intervals: list[Record], tol: float) -> list[str]:
    totals: dict[str, float] = defaultdict(float)
    per_batch: dict[str, float] = defaultdict(float)
    for rec in intervals:
        totals[rec["meter"]] += rec["energy"]
        for b, e in rec["batches"].items():
            per_batch[b] += e
    out = [f"summary {mid}: energy {t['energy']} != sum of intervals {totals[mid]}"
           for mid, t in summary["meters"].items() if not _close(t["energy"], totals[mid], tol)]
    for b, bt in summary["batches"].items():
        if not _close(sum(bt["meters"].values()), per_batch.get(b, 0.0), tol):
            out.append(f"summary batch {b}: {sum(bt['meters'].values())} != {per_batch[b]}")
    return out
