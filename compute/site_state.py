"""Everything the worker holds for one site, and one evaluation step over it.

A :class:`SiteState` takes a micro-batch's batch events and readings, keeps the
*window* of intervals that can still change a non-final batch, and on
:meth:`SiteState.evaluate` allocates the window, computes every batch's
footprint, decides the lifecycle (provisional → final → revised) and hands back
what must be written: new intervals, batches, state changes, settled
allocations and footprint revisions. Intervals that leave the window are
settled: their allocation is stored and they are forgotten.

The state is rebuilt after a restart from compute's own tables
(:mod:`compute.store`), never from Kafka's or the simulator's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from compute.allocate import AllocCache, MeterAllocation, SiteAllocation, allocate_site
from compute.footprint import Factor, Footprint, batch_footprints, carbon_meter_flags
from compute.lifecycle import changed, finality, infer_ends, window_start
from compute.model import F64, I64, Batch, Intervals, StateChanges, f64, i64
from compute.series import MeterCarry, Readings, advance
from compute.sitespec import SiteSpecView

logger = logging.getLogger(__name__)

_RECENT = 9  # a meter's recent intervals, whose longest sets the residual's margin
FactorLookup = Callable[[str, str, int], Factor | None]  # (carrier, kind, at ns)


@dataclass
class Stored:
    """The newest stored footprint revision of a batch."""

    revision: int
    status: str
    energy: dict[str, float]
    kg_location: float


@dataclass(frozen=True)
class SettledRows:
    """One meter's allocation rows settled by one evaluation, as columns: per row its
    interval's end (ns), the batch id ('' unallocated, '(children)', '(respread)'), the
    energy and the rule."""

    meter: str
    end: I64
    batch_id: list[str]
    energy: F64
    rule: list[str]


@dataclass
class Outcome:
    """What one evaluation asks the store to write (in one transaction)."""

    intervals: dict[str, Intervals] = field(default_factory=dict)
    batches: list[Batch] = field(default_factory=list)
    state_changes: list[tuple[str, int, int]] = field(default_factory=list)
    allocations: list[SettledRows] = field(default_factory=list)
    footprints: list[tuple[int, str, Footprint]] = field(default_factory=list)
    # intervals that arrived after their time was settled (a meter back from an outage):
    # compute.revise recomputes the final batches they touch from the database
    late: dict[str, Intervals] = field(default_factory=dict)

    def empty(self) -> bool:
        return not (self.intervals or self.batches or self.state_changes
                    or self.allocations or self.footprints)


@dataclass
class SiteState:
    view: SiteSpecView
    factors: FactorLookup
    gap_s: float
    series: dict[str, Intervals] = field(default_factory=dict)
    carry: dict[str, MeterCarry] = field(default_factory=dict)
    batches: dict[str, Batch] = field(default_factory=dict)
    states: dict[str, StateChanges] = field(default_factory=dict)
    stored: dict[str, Stored] = field(default_factory=dict)
    data_now_ns: int = 0
    settled_until: int = 0
    # final batches whose shares may still change (the last intervals they draw from are
    # not all settled): everything they draw from is kept in memory and their footprints
    # are re-examined each evaluation
    tails: set[str] = field(default_factory=set)
    # per batch, settled_until when it went final: nothing it draws from had settled yet
    # (the window never passes an open batch's energy), so it draws from after this
    final_from: dict[str, int] = field(default_factory=dict)
    pending: Outcome = field(default_factory=Outcome)
    # per gateway reporting batches: the send time of its newest batch frame (a watermark)
    batch_marks: dict[str, int] = field(default_factory=dict)
    # what an evaluation keeps for the next so that it computes only what changed
    cache: AllocCache = field(default_factory=AllocCache, repr=False)
    _shared_assets: dict[str, tuple[str, ...]] = field(default_factory=dict, repr=False)
    # per meter, the arrays its window is a view of, how much of them is written, and
    # that view (a window replaced otherwise, e.g. restored, is copied on its next append)
    _room: dict[str, tuple[tuple[np.ndarray, ...], int, Intervals]] = field(
        default_factory=dict, repr=False)
    _margin: int = 0  # what the residual's smoothing reads beyond a time (_coverage)

    def note_batch_marks(self, marks: Mapping[str, int]) -> None:
        for gw, t in marks.items():
            self.batch_marks[gw] = max(self.batch_marks.get(gw, t), t)

    @property
    def events_until(self) -> int:
        """Every batch event before this time is known (no gateway reported batches: 0)."""
        if not self.batch_marks:
            return 0
        return min(self.batch_marks.values()) - int(self.view.model.event_delay_s * 1e9)

    # ------------------------------------------------------------ input
    def apply_event(self, asset: str, batch_id: str, product: str, kind: str, ts_ns: int,
                    quantity: float | None, unit: str | None) -> None:
        """A start, end or quantity event of the MES (repeats are harmless)."""
        old = self.batches.get(batch_id)
        if old is None:
            old = Batch(batch_id, asset, product, ts_ns)
        if kind == "start":
            new = Batch(batch_id, asset, product, ts_ns, old.end_ns, old.quantity, old.unit)
        elif kind == "end":
            new = Batch(batch_id, old.asset, old.product, old.start_ns, ts_ns,
                        quantity if quantity is not None else old.quantity, unit or old.unit)
        else:
            new = Batch(batch_id, old.asset, old.product, old.start_ns, old.end_ns,
                        quantity, unit or old.unit)
        if new != self.batches.get(batch_id):
            self.batches[batch_id] = new
            self.pending.batches.append(new)

    def apply_readings(self, per_meter: Mapping[str, Readings],
                       states: Mapping[str, tuple[list[int], list[int]]]) -> dict[str, int]:
        """Machine states and each meter's readings of a micro-batch, taken in. Returns
        per meter how many of its readings were not used for arriving out of order
        (``compute.series``; none: empty)."""
        out_of_order: dict[str, int] = {}
        for asset, (ts, code) in states.items():
            self.states.setdefault(asset, StateChanges()).add(i64(ts), i64(code))
            self.pending.state_changes.extend((asset, t, c) for t, c in zip(ts, code,
                                                                            strict=True))
        for meter, rd in per_meter.items():
            spec = self.view.counters.get(meter)
            if spec is None:
                continue
            carry = self.carry.setdefault(meter, MeterCarry())
            refused = carry.out_of_order
            new = advance(carry, spec, rd, self.view.co2.get(meter))
            if carry.out_of_order != refused:
                out_of_order[meter] = carry.out_of_order - refused
            if len(new) == 0:
                continue
            self.data_now_ns = max(self.data_now_ns, int(new.end[-1]))
            _append(self.pending.intervals, meter, new)
            k = int(np.searchsorted(new.end, self.settled_until, side="right"))
            # late: every interval that reaches into settled time. One that straddles
            # settled_until (a meter's first reading after an outage) goes to the window
            # as well, which settles it; its parents' intervals that were settled before
            # it came, without rows (their residual was not computable), get theirs from
            # compute.revise
            late = int(np.searchsorted(new.start, self.settled_until, side="left"))
            if late:
                _append(self.pending.late, meter, new.slice(0, late))
            self._append_window(meter, new.slice(k, len(new)))
        return out_of_order

    def _append_window(self, meter: str, new: Intervals) -> None:
        """``new`` after the meter's window, written into spare room at the end of its
        arrays (grown by doubling), so a micro-batch copies its new intervals, not the
        window. The window stays a view that ends where the written part ends."""
        iv = self.series.get(meter)
        room = self._room.get(meter)
        n, k = (0 if iv is None else len(iv)), len(new)
        if iv is not None and room is not None and room[2] is iv:
            cols, used, _view = room
            if used + k <= len(cols[0]):
                for col, name in zip(cols, _FIELDS, strict=True):
                    col[used:used + k] = getattr(new, name)
                view = Intervals(*(c[used - n:used + k] for c in cols))
                self._room[meter] = (cols, used + k, view)
                self.series[meter] = view
                return
        cap = max(2 * (n + k), 64)
        old = iv if iv is not None else Intervals()
        cols = tuple(np.empty(cap, dtype=getattr(new, name).dtype) for name in _FIELDS)
        for col, name in zip(cols, _FIELDS, strict=True):
            col[:n] = getattr(old, name)
            col[n:n + k] = getattr(new, name)
        view = Intervals(*(c[:n + k] for c in cols))
        self._room[meter] = (cols, n + k, view)
        self.series[meter] = view

    # ------------------------------------------------------------ evaluation
    def evaluate(self) -> Outcome:
        """Allocate the window, update footprints and lifecycle; return what to write."""
        batches = infer_ends(sorted(self.batches.values(), key=lambda b: (b.start_ns,
                                                                          b.batch_id)),
                             self.view.max_concurrent)
        alloc = allocate_site(self.view, self.series, batches, self.states, self.cache)
        fps = batch_footprints(alloc, self.series, self.view.carriers,
                               self.resolutions(), self.factors_for)
        coverage = self._coverage()
        final_ids = {b for b, s in self.stored.items() if s.status != "provisional"}
        on_asset: dict[str, list[int]] = {}
        for k, b in enumerate(batches):
            on_asset.setdefault(b.asset, []).append(k)
        for b in batches:
            # a final batch is re-examined while all its intervals are in memory (kept
            # until its last shares are settled: _settle), so that a share that changes
            # after it went final (a meter back from an outage completing a parent's
            # residual) revises it rather than leave a stale final number
            if b.batch_id in final_ids and b.batch_id not in self.tails:
                continue
            self._lifecycle(b, fps.get(b.batch_id), batches, on_asset, coverage, final_ids)
        self._settle(alloc, batches, coverage)
        out, self.pending = self.pending, Outcome()
        return out

    def resolutions(self) -> dict[str, float]:
        """Counter resolution per meter now (float counters: their spacing at the value)."""
        return self.view.resolutions_at({m: c.energy.baseline for m, c in self.carry.items()
                                         if c.energy.baseline == c.energy.baseline})

    def _coverage(self) -> dict[str, int]:
        """Per meter, up to when its data is complete for every use: its last reading,
        less what a parent's residual smoothing needs beyond it: half the window and the
        longest recent interval of any meter of the site. A parent's interval that holds
        the window's edge ends up to its own interval later, and its residual needs every
        child's data to that end, so one meter's own interval is not margin enough when
        polls are late or meters are polled at different rates."""
        half = self.view.residual_half_ns
        meters = list(self.carry)
        last = [self.carry[m].energy.last_ts for m in meters]
        step = 0
        for k, m in enumerate(meters):
            iv = self.series.get(m)
            if iv is not None and len(iv):
                last[k] = max(last[k], iv.covered_until)
                step = max(step, int((iv.end[-_RECENT:] - iv.start[-_RECENT:]).max()))
        margin = half + step if half else 0
        self._margin = margin
        return {m: t - margin for m, t in zip(meters, last, strict=True)}

    def factors_for(self, b: Batch) -> tuple[dict[str, Factor], dict[str, Factor]]:
        """The factor rows of the batch's own time (its start), per carrier."""
        return self.factor_maps(b.start_ns)

    def factor_maps(self, at: int) -> tuple[dict[str, Factor], dict[str, Factor]]:
        loc: dict[str, Factor] = {}
        mkt: dict[str, Factor] = {}
        for carrier in set(self.view.carriers.values()):
            f = self.factors(carrier, "location", at)
            if f is not None:
                loc[carrier] = f
            g = self.factors(carrier, "market", at)
            if g is not None:
                mkt[carrier] = g
        return loc, mkt

    def _sharing(self, b: Batch, batches: list[Batch], on_asset: Mapping[str, list[int]]
                 ) -> list[Batch]:
        """Batches that overlap ``b`` in time on any asset of a scope containing its asset
        (their quantities weigh its shares), looking only at the batches on those assets
        (the assets remembered per asset: the scopes are the model's)."""
        assets = self._shared_assets.get(b.asset)
        if assets is None:
            assets = tuple(sorted({a for scope in self.view.scopes.values() if b.asset in scope
                                   for a in scope}))
            self._shared_assets[b.asset] = assets
        near = sorted(k for a in assets for k in on_asset.get(a, ()))
        return [o for o in (batches[k] for k in near) if o.batch_id != b.batch_id
                and o.start_ns < b.end_or_open and b.start_ns < o.end_or_open]

    def _lifecycle(self, b: Batch, fp: Footprint | None, batches: list[Batch],
                   on_asset: Mapping[str, list[int]], coverage: Mapping[str, int],
                   final_ids: set[str]) -> None:
        if fp is None:
            fp = Footprint(b)
        loc, _ = self.factors_for(b)
        carbon_meter_flags(fp, loc, self.view.carbon_tolerance, self.view.co2_resolution_kg)
        prev = self.stored.get(b.batch_id)
        if prev is not None and prev.status != "provisional":
            if b.batch_id in final_ids and not changed(prev.energy, fp.energy):
                return
            fp.flags.update(f"missing:{m}" for m in self.view.meters_for(b.asset)
                            if coverage.get(m, 0) <= b.end_or_open)
            logger.info("batch %s: its shares changed after it went final (data that came "
                        "after its finality); revision %d", b.batch_id, prev.revision + 1)
            self._write(b, fp, prev.revision + 1, "revised")
            return
        others = self._sharing(b, batches, on_asset)
        # batch events as far as the meters: a batch starting within the residual's
        # smoothing window after this one's end is a knot in the shared meters' spread,
        # which moves the residual there, and so this batch's share
        fin = finality(b, coverage, self.view.meters_for(b.asset), others,
                       self.data_now_ns, int(self.view.final_timeout_s * 1e9),
                       self.events_until - self._margin)
        if fin.final:
            fp.flags.update(f"missing:{m}" for m in fin.missing)
            fp.flags.update(f"weights_unknown:{o}" for o in fin.waiting_for)
            self.final_from[b.batch_id] = self.settled_until
            self._write(b, fp, 1, "final")
        elif prev is None or changed(prev.energy, fp.energy) or prev.kg_location != \
                fp.kgco2e_location:
            self._write(b, fp, 0, "provisional")

    def record(self, b: Batch, fp: Footprint, revision: int, status: str) -> None:
        """A revision computed outside the window (compute.revise), to be written."""
        self._write(b, fp, revision, status)

    def _write(self, b: Batch, fp: Footprint, revision: int, status: str) -> None:
        self.stored[b.batch_id] = Stored(revision, status, dict(fp.energy), fp.kgco2e_location)
        self.pending.footprints.append((revision, status, fp))

    def _settle(self, alloc: SiteAllocation, batches: list[Batch],
                coverage: Mapping[str, int]) -> None:
        final_now = {b for b, s in self.stored.items() if s.status != "provisional"}
        live = [m for m, c in coverage.items()
                if self.data_now_ns - c < self.view.final_timeout_s * 1e9]
        # never past what every live meter reported, nor past the batch events known by
        # the residual smoothing's reach: a batch boundary within it is a knot in the
        # sub-meters' spread, which moves a parent's residual there and so its smoothed
        # share in intervals already settled (the number would then depend on whether the
        # MES's event came before or after the meters' readings)
        floor = min(min((coverage[m] for m in live), default=self.data_now_ns),
                    self.events_until - self._margin)
        w = window_start(batches, final_now, self.view.idle_policy == "next_batch", floor,
                         self.view.model.assets, self.settled_until, self.data_now_ns)
        if w <= self.settled_until:
            return
        for meter, ma in alloc.meters.items():
            iv = self.series[meter]
            n_old = int(np.searchsorted(iv.end, w, side="right"))
            n_done = int(np.searchsorted(iv.end, self.settled_until, side="right"))
            if n_old > n_done:
                self._settled_rows(meter, ma, iv, n_done, n_old, alloc.batches)
        keep = self.retain_from(w, final_now)
        for meter, iv in list(self.series.items()):
            self.series[meter] = kept = iv.since(keep)
            room = self._room.get(meter)
            if room is not None and room[2] is iv:  # still a view ending at the written end
                self._room[meter] = (room[0], room[1], kept)
        self.settled_until = w
        keep_from = min((int(iv.start[0]) for iv in self.series.values() if len(iv)), default=w)
        for b in batches:  # final batches wholly before every kept interval are done
            if b.end_or_open <= keep_from and b.batch_id in final_now:
                del self.batches[b.batch_id]

    def retain_from(self, w: int, final_ids: set[str]) -> int:
        """Intervals ending after this stay in memory once ``w`` is settled: the history a
        residual's smoothing still reads (twice its half-window before ``w``), and all
        that a final batch whose last shares may not be settled yet draws from (idle
        energy before it too, under ``next_batch``: from its ``final_from``); those
        batches are ``tails`` from now on."""
        half2 = 2 * self.view.residual_half_ns
        self.tails = {b for b in final_ids
                      if b in self.batches and self.batches[b].end_or_open > w - half2}
        self.final_from = {b: t for b, t in self.final_from.items() if b in self.tails}
        return min([w, *(self.final_from.get(b, self.settled_until)
                         for b in self.tails)]) - half2

    def _settled_rows(self, meter: str, ma: MeterAllocation, iv: Intervals, n_done: int,
                      n_old: int, batches: list[Batch]) -> None:
        """Allocation rows of intervals n_done..n_old (settled now, not before)."""
        self.pending.allocations.append(settled_rows(meter, ma, iv, n_done, n_old, batches))


def settled_rows(meter: str, ma: MeterAllocation, iv: Intervals, n_done: int, n_old: int,
                 batches: list[Batch]) -> SettledRows:
    """The allocation rows of ``meter``'s intervals n_done..n_old as ``ma`` allocated them."""
    sel = np.flatnonzero((ma.interval >= n_done) & (ma.interval < n_old))
    ends, energy = [iv.end[ma.interval[sel]]], [ma.energy[sel]]
    ids = [batches[b].batch_id for b in ma.batch[sel].tolist()]
    rules = [ma.rule] * len(sel)
    span = slice(n_done, min(n_old, len(ma.unallocated)))
    at = iv.end[span]
    metered = iv.energy[span] if ma.metered is None else ma.metered[span]
    # '' the unallocated rest (every interval, 0 included); a parent's children,
    # allocated through the children; a frozen register's catch-up spread back over
    # the freeze
    for what, rule, amount, every in (
            ("", ma.rule, ma.unallocated[span], True),
            ("(children)", "children", metered - ma.allocated_energy[span], False),
            ("(respread)", "respread", iv.energy[span] - metered, False)):
        keep = slice(None) if every else np.flatnonzero(amount != 0.0)
        ends.append(at[keep])
        energy.append(amount[keep])
        ids += [what] * len(ends[-1])
        rules += [rule] * len(ends[-1])
    return SettledRows(meter, i64(np.concatenate(ends)), ids, f64(np.concatenate(energy)), rules)


_FIELDS = ("start", "end", "energy", "estimated", "flags", "p_start", "p_end", "co2")


def _append(into: dict[str, Intervals], meter: str, new: Intervals) -> None:
    got = into.get(meter)
    if got is None:
        into[meter] = new
    else:
        got.extend(new)
