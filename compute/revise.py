"""Revisions from late data: a meter's readings arriving after its batches were final.

A gateway down for longer than the site's ``final_timeout_s`` leaves its
meters silent; the batches they serve are finalised with ``missing:<meter>``
flags and their intervals leave the worker's memory. When the meter's data
finally arrives, its intervals are *late* (their time is settled). For each
final batch they touch (through the meter's scope or its parent's residual),
this module reloads the batch's whole context from compute's own tables —
every meter's intervals, the batches and machine states around it — inside the
same transaction that has just stored the late intervals, recomputes the
footprint with the same allocation and factors, and records a new revision
(status ``revised``) when the number changed. Earlier revisions stay.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import psycopg

from compute.allocate import allocate_site
from compute.footprint import batch_footprints, carbon_meter_flags
from compute.lifecycle import changed, infer_ends
from compute.model import Batch, Intervals, StateChanges, f64, i64
from compute.site_state import SiteState, settled_rows
from compute.store import ns_sql, ts_sql

logger = logging.getLogger(__name__)

Cursor = psycopg.Cursor[tuple[object, ...]]
CONTEXT_NS = 3_600 * 10**9  # before a batch: idle energy that may be its (next_batch)


def _affected_assets(state: SiteState, meters: Mapping[str, Intervals]) -> set[str]:
    model = state.view.model
    assets: set[str] = set()
    for m in meters:
        assets.update(state.view.scope(m))
        parent = model.parent_of(m)
        if parent is not None:  # a child's energy is in its parent's residual
            assets.update(state.view.scope(parent))
    return assets


def _batches(cur: Cursor, site: str, lo: int, hi: int) -> list[Batch]:
    cur.execute(f"SELECT batch_id, asset, product, {ns_sql('start_ts')}, {ns_sql('end_ts')}, "
                f"quantity, unit FROM compute_batch WHERE site = %s AND start_ts < {ts_sql('%s')}"
                f" AND (end_ts IS NULL OR end_ts > {ts_sql('%s')})", (site, hi, lo))
    return [Batch(str(b), str(a), str(p), int(s),  # type: ignore[call-overload]
                  None if e is None else int(e), q, u)  # type: ignore[call-overload, arg-type]
            for b, a, p, s, e, q, u in cur.fetchall()]


def _intervals(cur: Cursor, site: str, lo: int, hi: int) -> dict[str, Intervals]:
    cur.execute(
        f"SELECT meter, {ns_sql('start_ts')}, {ns_sql('end_ts')}, energy, estimated, flags, "
        f"coalesce(power_start, 'NaN'), coalesce(power_end, 'NaN'), coalesce(co2, 'NaN') "
        f"FROM energy_interval WHERE site = %s AND end_ts > {ts_sql('%s')} "
        f"AND start_ts < {ts_sql('%s')} ORDER BY meter, end_ts", (site, lo, hi))
    rows: dict[str, list[tuple[object, ...]]] = {}
    for r in cur.fetchall():
        rows.setdefault(str(r[0]), []).append(r[1:])
    out = {}
    for meter, rs in rows.items():
        c = list(zip(*rs, strict=True))
        out[meter] = Intervals(i64(c[0]), i64(c[1]), f64(c[2]), f64(c[3]), i64(c[4]),
                               f64(c[5]), f64(c[6]), f64(c[7]))
    return out


def _states(cur: Cursor, site: str, lo: int, hi: int) -> dict[str, StateChanges]:
    cur.execute(f"SELECT asset, {ns_sql('ts')}, code FROM compute_state_change WHERE site = %s "
                f"AND ts >= {ts_sql('%s')} AND ts <= {ts_sql('%s')} ORDER BY ts", (site, lo, hi))
    out: dict[str, StateChanges] = {}
    for asset, ts, code in cur.fetchall():
        out.setdefault(str(asset), StateChanges()).add(i64([ts]), i64([code]))
    return out


def revise_late(cur: Cursor, state: SiteState, late: Mapping[str, Intervals]) -> int:
    """Recompute the final batches ``late`` intervals touch; revisions go to ``state``'s
    pending outcome (the caller writes them), and so do the allocation rows of the late
    intervals. Returns how many batches were revised plus how many meters got rows (0:
    nothing to write)."""
    if not late:
        return 0
    site = state.view.model.site
    lo = min(int(iv.start[0]) for iv in late.values())
    hi = max(int(iv.end[-1]) for iv in late.values())
    assets = _affected_assets(state, late)
    revised = 0
    limits = state.view.max_concurrent
    for b in infer_ends(_batches(cur, site, lo, hi), limits):
        prev = state.stored.get(b.batch_id)
        if b.asset not in assets or b.end_ns is None or prev is None \
                or prev.status == "provisional":
            continue
        ctx_lo, ctx_hi = b.start_ns - CONTEXT_NS, b.end_ns + CONTEXT_NS
        series = _intervals(cur, site, ctx_lo, ctx_hi)
        batches = infer_ends(sorted(_batches(cur, site, ctx_lo, ctx_hi),
                                    key=lambda x: (x.start_ns, x.batch_id)), limits)
        alloc = allocate_site(state.view, series, batches, _states(cur, site, ctx_lo, ctx_hi))
        loc, _ = state.factors_for(b)
        fp = batch_footprints(alloc, series, state.view.carriers, state.resolutions(),
                              state.factors_for)[b.batch_id]
        if not changed(prev.energy, fp.energy):
            continue
        carbon_meter_flags(fp, loc, state.view.carbon_tolerance,
                           state.view.co2_resolution_kg)
        missing = [m for m in state.view.meters_for(b.asset)
                   if m not in series or series[m].covered_until <= b.end_ns]
        fp.flags.update(f"missing:{m}" for m in missing)
        fp.flags.update(f"late_data:{m}" for m in late if np.any(
            (late[m].start < b.end_ns) & (late[m].end > b.start_ns)))
        state.record(b, fp, prev.revision + 1, "revised")
        revised += 1
        logger.info("batch %s: late data from %s revises its footprint (revision %d)",
                    b.batch_id, ", ".join(sorted(late)), prev.revision + 1)
    return revised + _late_allocations(cur, state, late, lo, hi)


def _with_rows(cur: Cursor, site: str, meters: list[str], lo: int, hi: int
                  ) -> set[tuple[str, int]]:
    cur.execute(f"SELECT DISTINCT meter, {ns_sql('end_ts')} FROM allocation WHERE site = %s "
                f"AND meter = ANY(%s) AND end_ts > {ts_sql('%s')} AND end_ts <= {ts_sql('%s')}",
                (site, meters, lo, hi))
    return {(str(m), int(t)) for m, t in cur.fetchall()}  # type: ignore[call-overload]


def _late_allocations(cur: Cursor, state: SiteState, late: Mapping[str, Intervals], lo: int,
                      hi: int) -> int:
    """Allocation rows for the late intervals, and for their parents' intervals that waited
    for them: allocated with the intervals, batches and states within ``CONTEXT_NS``, as
    the window would have. Only settled intervals without any row yet get rows, so each
    interval's rows still add up to its energy. Returns how many meters got rows."""
    site, model = state.view.model.site, state.view.model
    meters = set(late)
    for m in late:
        up = model.parent_of(m)
        while up is not None and up not in meters:
            meters.add(up)
            up = model.parent_of(up)
    hi = min(hi, state.settled_until)  # later intervals are the window's to settle
    ctx_lo, ctx_hi = lo - CONTEXT_NS, hi + CONTEXT_NS
    series = _intervals(cur, site, ctx_lo, ctx_hi)
    batches = infer_ends(sorted(_batches(cur, site, ctx_lo, ctx_hi),
                                key=lambda x: (x.start_ns, x.batch_id)),
                         state.view.max_concurrent)
    alloc = allocate_site(state.view, series, batches, _states(cur, site, ctx_lo, ctx_hi))
    have = _with_rows(cur, site, sorted(meters), lo, hi)
    written = 0
    for m in sorted(meters):
        ma, iv = alloc.meters.get(m), series.get(m)
        if ma is None or iv is None:
            continue
        todo = (iv.end > lo) & (iv.end <= hi) & ~np.isin(
            iv.end, [t for mm, t in have if mm == m])
        # each run of intervals without rows, as the window settles a run
        edges = np.flatnonzero(np.diff(np.concatenate([[0], todo.astype(np.int8), [0]])))
        for a, b in zip(edges[0::2].tolist(), edges[1::2].tolist(), strict=True):
            state.pending.allocations.append(settled_rows(m, ma, iv, a, b, alloc.batches))
        written += bool(len(edges))
    return written
