"""``python -m compute verify BUNDLE``: recompute a bundle's footprint and confirm it.

Three layers, each naming what differs:

1. **Hashes.** Every member against the manifest; within an altered member the
   factor row (by id) or the setting (``site.meters.M-OVEN.rated``) whose hash
   differs, and the readings' Merkle root. The root hash (SHA-256 of the
   manifest) against the one the caller expects (``--root``: from the
   certificate, the label or ``batch_evidence``).
2. **Readings → intervals.** The readings go through compute's intake and
   counter kernel (:mod:`compute.evidence.replay`); each recomputed interval is
   compared with compute's stored one. The first that differs names its reading
   (meter, channel, time, value) — or the reading that is missing.
3. **Footprint.** Allocation and footprint recomputed over the context and
   compared, field by field and exactly (floats to the last bit, and the
   inputs SHA-256), with the bundle's footprint record.

Exit 0 when everything is confirmed, 1 with the findings (the first is the
first difference), 2 for an unreadable bundle.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from compute.errors import ComputeError
from compute.evidence.bundle import read_members
from compute.evidence.content import COLUMNS, DOCUMENTS, MANIFEST, BundleError, Evidence
from compute.evidence.manifest import build, factor_hashes, root_of, setting_hashes
from compute.evidence.replay import Replay, replay
from compute.model import Intervals

# flags that record *when* a number was finalised (timeouts, late data), not the data:
# a recomputation from the data cannot re-derive them
TIMING_FLAGS = ("missing:", "weights_unknown:", "late_data:")


@dataclass
class Verdict:
    root: str
    findings: list[str] = field(default_factory=list)
    footprint: dict[str, Any] = field(default_factory=dict)

    @property
    def confirmed(self) -> bool:
        return not self.findings


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns // 1000 / 1e6, UTC).isoformat().replace("+00:00", "Z")


def check_hashes(members: dict[str, bytes], ev: Evidence, expect_root: str | None
                 ) -> tuple[str, list[str], list[str]]:
    """(root, named: the factor rows and settings that differ, general: the root, the
    members and the readings' Merkle root)."""
    mdata = members.get(MANIFEST)
    if mdata is None:
        raise BundleError("bundle has no manifest.json")
    try:
        manifest = orjson.loads(mdata)
        missing = {"files", "factors", "settings", "readings"} - set(manifest)
        if missing:
            raise KeyError(", ".join(sorted(missing)))
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise BundleError(f"manifest.json is not a bundle manifest ({exc})") from exc
    root = root_of(mdata)
    out: list[str] = []
    general: list[str] = []
    if expect_root is not None and root != expect_root.lower():
        general.append(f"root hash {root} is not the expected {expect_root} (the manifest itself "
                   "was changed)")
    now = build(ev, {k: v for k, v in members.items() if k != MANIFEST})
    for name in sorted(set(COLUMNS) | set(DOCUMENTS)):
        if manifest["files"].get(name) != now["files"].get(name):
            general.append(f"{name}: its SHA-256 differs from the manifest's")
    for fid, h in factor_hashes(ev).items():
        if manifest["factors"].get(fid) != h:
            row = next(r for r in ev.rows("factors.jsonl") if str(r["id"]) == fid)
            out.append(f"factor {fid} ({row['carrier']}, {row['region']}, {row['kind']}, "
                       f"{row['period_start']}..{row['period_end']}, value {row['value']} "
                       f"{row['unit']}): differs from the manifest")
    out += [f"factor {fid}: in the manifest, missing from factors.jsonl"
            for fid in sorted(set(manifest["factors"]) - set(factor_hashes(ev)), key=int)]
    mine = setting_hashes(ev)
    for key in sorted(set(mine) | set(manifest["settings"])):
        if mine.get(key) != manifest["settings"].get(key):
            out.append(f"setting {key}: differs from the manifest" if key in mine else
                       f"setting {key}: in the manifest, missing from the bundle")
    r_old, r_new = manifest["readings"], now["readings"]
    if r_old["merkle_root"] != r_new["merkle_root"]:
        general.append(f"readings: Merkle root {r_new['merkle_root']} over {r_new['count']} "
                   f"readings, the manifest says {r_old['merkle_root']} over "
                   f"{r_old['count']}")
    return root, out, general


def _reading(ev: Evidence, meter: str, channel: str, ts: int) -> str:
    for r in ev.rows("readings.jsonl"):
        if r["meter"] == meter and r["channel"] == channel and r["ts_ns"] == ts:
            return f"value {r['value']} {r['unit']}"
    return "no such reading in the bundle"


def check_intervals(ev: Evidence, rp: Replay) -> list[str]:
    """Recomputed intervals against compute's, from the context's start; the differences,
    earliest first, each naming the reading at the interval's end."""
    lo = int(ev.documents["settings.json"]["context_lo_ns"])
    hi = int(ev.documents["settings.json"]["context_hi_ns"])
    stored: dict[str, dict[int, dict[str, Any]]] = {}
    for r in ev.rows("intervals.jsonl"):
        if lo < r["end_ns"] <= hi:
            stored.setdefault(r["meter"], {})[r["end_ns"]] = r
    found: list[tuple[int, str]] = []
    for meter in sorted(set(stored) | set(rp.intervals)):
        spec = rp.view.counters.get(meter)
        channel = spec.channel if spec is not None else "?"
        iv = rp.intervals.get(meter, Intervals())
        mine = {int(e): k for k, e in enumerate(iv.end) if lo < e <= hi}
        theirs = stored.get(meter, {})
        for t in sorted(set(mine) | set(theirs)):
            where = f"reading {meter}/{channel} at {_iso(t)}"
            if t not in mine:
                found.append((t, f"{where}: missing (compute's interval ending there has "
                                 "no reading in the bundle)"))
            elif t not in theirs:
                found.append((t, f"{where} ({_reading(ev, meter, channel, t)}): not a "
                                 "reading compute used (no interval of it ends there)"))
            else:
                diff = _interval_diff(iv, mine[t], theirs[t])
                if diff:
                    found.append((t, f"{where} ({_reading(ev, meter, channel, t)}): {diff}"))
    return [msg for _, msg in sorted(found, key=lambda x: x[0])]


def _same(a: float | None, b: float) -> bool:
    return (a is None and not np.isfinite(b)) or (a is not None and a == b)


def _interval_diff(iv: Intervals, k: int, row: dict[str, Any]) -> str:
    pairs = (("start", int(iv.start[k]), row["start_ns"]),
             ("energy", float(iv.energy[k]), row["energy"]),
             ("estimated", float(iv.estimated[k]), row["estimated"]),
             ("flags", int(iv.flags[k]), row["flags"]))
    for name, mine, theirs in pairs:
        if mine != theirs:
            return f"recomputed {name} {mine}, compute stored {theirs}"
    for name, val, stored in (("power at start", iv.p_start[k], row["power_start"]),
                              ("power at end", iv.p_end[k], row["power_end"]),
                              ("co2", iv.co2[k], row["co2"])):
        # compute stored no power where its carry held none (a meter back from an outage,
        # a restored worker) while the bundle's readings reach further back: not a difference
        # in the data. A power reading removed from the bundle still shows (NaN vs a value).
        if stored is None and name != "co2":
            continue
        if not _same(stored, float(val)):
            return f"recomputed {name} {float(val)}, compute stored {stored}"
    return ""


def check_footprint(ev: Evidence, rp: Replay) -> list[str]:
    fp, mine = ev.documents["footprint.json"], rp.footprint
    out = []
    detail = fp.get("detail") or {}
    pairs: list[tuple[str, object, object]] = [
        ("energy", mine.energy, fp["energy"]),
        ("uncertainty", mine.uncertainty, fp["uncertainty"]),
        ("kgco2e_location", mine.kgco2e_location, fp["kgco2e_location"]),
        ("kgco2e_market", mine.kgco2e_market, fp["kgco2e_market"]),
        ("kgco2e_uncertainty", mine.kgco2e_uncertainty, fp["kgco2e_uncertainty"]),
        ("primary_data_share", mine.primary_data_share, fp["primary_data_share"]),
        ("factor_ids", mine.factor_ids, fp["factor_ids"]),
        ("detail.per_meter", mine.per_meter, detail.get("per_meter")),
        ("detail.methods", sorted(mine.methods), detail.get("methods")),
        ("flags (from the data)", sorted(mine.flags),
         sorted(f for f in fp["flags"] if not f.startswith(TIMING_FLAGS))),
        ("inputs_sha256", mine.inputs_sha256, fp["inputs_sha256"]),
    ]
    for name, got, want in pairs:
        if got != want:
            rel = _relative(got, want)
            note = "" if rel is None else f" (largest relative difference {rel:.1e})"
            out.append(f"footprint {name}: recomputed {got}, the record says {want}{note}")
    return out


def _relative(got: object, want: object) -> float | None:
    """How far apart two numbers or two maps of numbers are, relatively (None when they
    are not numbers): a last-bit difference says another summation order, not other data."""
    if isinstance(got, int | float) and isinstance(want, int | float):
        return abs(got - want) / max(abs(got), abs(want), 1e-300)
    if isinstance(got, dict) and isinstance(want, dict) and set(got) == set(want):
        rels = [_relative(got[k], want[k]) for k in got]
        return None if any(r is None for r in rels) else max((r or 0.0 for r in rels),
                                                               default=0.0)
    return None


def verify(path: Path, expect_root: str | None = None) -> Verdict:
    """Everything above; raises BundleError for an archive that is not a bundle."""
    members = read_members(path)
    ev = Evidence.from_members(members)
    root, named, general = check_hashes(members, ev, expect_root)
    try:
        rp = replay(ev)
    except (ComputeError, ValueError, KeyError, TypeError) as exc:
        findings = [*named, f"the bundle cannot be recomputed: {exc}", *general]
        return Verdict(root, findings, ev.documents["footprint.json"])
    # most specific first: a named factor row or setting, a named reading, then the rest
    findings = [*named, *check_intervals(ev, rp), *general, *check_footprint(ev, rp)]
    return Verdict(root, findings, ev.documents["footprint.json"])


def verify_main(path: Path, expect_root: str | None) -> int:
    try:
        v = verify(path, expect_root)
    except BundleError as exc:
        print(f"compute verify: {exc}", file=sys.stderr)
        return 2
    fp = v.footprint
    what = (f"batch {fp.get('batch_id')} revision {fp.get('revision')} of site "
            f"{fp.get('site')}")
    if v.confirmed:
        print(f"confirmed: {what}: recomputed from the bundle alone, equal to the last digit "
              f"(kgCO2e location {fp['kgco2e_location']!r}, market {fp['kgco2e_market']!r}; "
              f"inputs sha256 {fp['inputs_sha256']})\nroot {v.root}")
        return 0
    print(f"NOT confirmed: {what}: {len(v.findings)} difference(s); the first:\n"
          + "\n".join(f"  {f}" for f in v.findings) + f"\nroot {v.root}")
    return 1
