"""The footprint recomputed from a bundle alone, with compute's own pipeline.

No database and no second implementation: the bundle's readings are rebuilt
into the frames they came in and go through :func:`compute.intake.group_readings`
(unit routing, bad readings skipped, microseconds), a fresh
:class:`compute.site_state.SiteState` (batch events, counters to intervals with
the unwrap kernel), then :func:`compute.allocate.allocate_site`,
:func:`compute.footprint.batch_footprints` and the carbon-meter check over the
context, exactly as :mod:`compute.revise` does from the database. The factor
rows are selected again with :func:`compute.factors.select_factor`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from itertools import groupby
from typing import Any

import numpy as np

from compute.allocate import SiteAllocation, allocate_site
from compute.evidence.content import Evidence
from compute.factors import FactorRow, select_factor
from compute.footprint import Factor, Footprint, batch_footprints, carbon_meter_flags
from compute.intake import Accepted, group_readings
from compute.model import Batch, Intervals, StateChanges
from compute.site import SiteModel
from compute.site_state import SiteState
from compute.sitespec import SiteSpecView, site_view
from compute.store import FrameKey
from edge.wire import Frame

_KIND_ORDER = {"start": 0, "quantity": 1, "end": 2}
MAX_CHOICES = 64  # combinations of float-counter resolutions tried for the uncertainty


@dataclass
class Replay:
    """What the pipeline made of the bundle: intervals of every meter (all of them, from
    the first reading), the batches and machine states, and the batch's footprint."""

    view: SiteSpecView
    intervals: dict[str, Intervals]
    batches: dict[str, Batch]
    states: dict[str, StateChanges]
    allocation: SiteAllocation
    footprint: Footprint
    factors: list[FactorRow]


def factor_rows(ev: Evidence) -> list[FactorRow]:
    out = []
    for r in ev.rows("factors.jsonl"):
        r = dict(r)
        for k in ("period_start", "period_end", "valid_from", "valid_to"):
            r[k] = None if r[k] is None else date.fromisoformat(r[k])
        r["added_at"] = datetime.fromisoformat(r["added_at"])
        out.append(FactorRow(**r))
    return out


def _frames(ev: Evidence, site: str) -> list[Accepted]:
    """The readings regrouped into the frames that carried them, in the order they
    arrived: a gateway's in sequence order (its spool and idempotent producer deliver
    them so), gateways by their first reading (a meter moved to a new gateway: the old
    one's first). Each channel is taken in that order (``compute.series``: a reading
    older than one that came before it is not used, by the worker either)."""
    first: dict[str, int] = {}
    for r in ev.tables["readings.jsonl"]:
        first[r[6]] = min(first.get(r[6], r[2]), r[2])
    rows = sorted(ev.tables["readings.jsonl"], key=lambda r: (first[r[6]], r[6], r[7]))
    out = []
    for (gw, seq), grp in groupby(rows, key=lambda r: (r[6], r[7])):
        rs = list(grp)
        frame = Frame(site, gw, seq, 0, [r[0] for r in rs], [r[1] for r in rs],
                      [r[2] for r in rs], [r[3] for r in rs], [r[4] for r in rs],
                      [r[5] for r in rs])
        out.append(Accepted(frame, None, FrameKey(gw, "readings", seq, site, b"", 0, 0)))
    return out


def _lookup(rows: list[FactorRow], model: SiteModel) -> Any:
    def find(carrier: str, kind: str, at_ns: int) -> Factor | None:
        day = datetime.fromtimestamp(at_ns / 1e9, UTC).date()
        row = select_factor(rows, carrier, model.grid_region, day, kind,  # type: ignore[arg-type]
                            site=model.site)
        return None if row is None else Factor(row.id, row.value,
                                               f"{row.source} ({row.publication})")
    return find


def _baseline_choices(view: SiteSpecView, ev: Evidence, fp: dict[str, Any]
                      ) -> list[dict[str, float]]:
    """Float counters' values (canonical) at which the worker may have taken their
    resolution for the uncertainty: its counter value when it finalised the batch, which
    lies between the batch's end and the timeout, and which micro-batches sampled. Only the
    float spacing matters (it changes at powers of two), so each meter has one or two
    choices; the value at the end comes first."""
    end = int(fp["end_ns"])
    hi = end + int(view.model.final_timeout_s * 1e9)
    floats = {m for m in (fp.get("detail") or {}).get("per_meter", {})
              if m in view.model.meters and view.model.meters[m].counter_bits is None}
    at_end: dict[str, float] = {}
    later: dict[str, dict[float, float]] = {}  # meter -> spacing -> a value having it
    for r in ev.rows("readings.jsonl"):
        spec = view.counters.get(r["meter"])
        if spec is None or r["channel"] != spec.channel or r["quality"] == "bad" \
                or r["ts_ns"] > hi:
            continue
        value = view.model.to_canonical(r["meter"], float(r["value"]), r["unit"])
        if r["ts_ns"] <= end:
            at_end[r["meter"]] = value
        elif r["meter"] in floats:
            spacing = view.resolutions_at({r["meter"]: value})[r["meter"]]
            later.setdefault(r["meter"], {}).setdefault(spacing, value)
    choices = [at_end]
    for meter in sorted(floats):
        for value in later.get(meter, {}).values():
            choices += [{**c, meter: value} for c in choices][:MAX_CHOICES]
    return choices[:MAX_CHOICES]


def replay(ev: Evidence) -> Replay:
    s = ev.documents["settings.json"]
    model = SiteModel.model_validate(ev.documents["site_model.json"])
    view = site_view(model, float(s["gap_s"]))
    rows = factor_rows(ev)
    state = SiteState(view, _lookup(rows, model), float(s["gap_s"]))
    events = sorted(ev.rows("batch_events.jsonl"),
                    key=lambda e: (e["seq"], e["ts_ns"], _KIND_ORDER[e["kind"]]))
    for e in events:
        state.apply_event(e["asset"], e["batch_id"], e["product"], e["kind"], e["ts_ns"],
                          e["quantity"], e["unit"])
    site_in = group_readings(_frames(ev, model.site), {model.site: model}).get(model.site)
    if site_in is not None:
        state.apply_readings(site_in.readings, site_in.states)
    lo, hi = int(s["context_lo_ns"]), int(s["context_hi_ns"])
    fp_doc = ev.documents["footprint.json"]
    unknown = {f.split(":", 1)[1] for f in fp_doc["flags"] if f.startswith("weights_unknown:")}
    series = {m: _window(iv, lo, hi) for m, iv in state.series.items()}
    batches = sorted((_as_seen(b, unknown) for b in state.batches.values()
                      if b.start_ns < hi and b.end_or_open > lo),
                     key=lambda b: (b.start_ns, b.batch_id))
    states = {a: _states_within(sc, lo, hi) for a, sc in state.states.items()}
    alloc = allocate_site(view, series, batches, states)
    fp: Footprint | None = None
    for baselines in _baseline_choices(view, ev, fp_doc):
        got = batch_footprints(alloc, series, view.carriers, view.resolutions_at(baselines),
                               state.factors_for)[fp_doc["batch_id"]]
        fp = fp or got
        if got.uncertainty == fp_doc["uncertainty"]:
            fp = got
            break
    assert fp is not None  # there is always the first choice
    loc, _ = state.factors_for(fp.batch)
    carbon_meter_flags(fp, loc, view.carbon_tolerance, view.co2_resolution_kg)
    return Replay(view, dict(state.series), dict(state.batches), dict(state.states), alloc,
                  fp, rows)


def _window(iv: Intervals, lo: int, hi: int) -> Intervals:
    keep = np.flatnonzero((iv.end > lo) & (iv.start < hi))
    return iv.slice(int(keep[0]), int(keep[-1]) + 1) if len(keep) else iv.slice(0, 0)


def _states_within(sc: StateChanges, lo: int, hi: int) -> StateChanges:
    sel = (sc.ts >= lo) & (sc.ts <= hi)
    return StateChanges(sc.ts[sel], sc.code[sel])


def _as_seen(b: Batch, unknown: set[str]) -> Batch:
    """A batch whose quantity was unknown when the footprint was finalised
    (``weights_unknown:<b>``) weighs as it did then: without it."""
    if b.batch_id not in unknown:
        return b
    return Batch(b.batch_id, b.asset, b.product, b.start_ns, b.end_ns, None, b.unit)
