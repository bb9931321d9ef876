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

from compute.allocate import MeterAllocation, SiteAllocation, allocate_site
from compute.footprint import Factor, Footprint, batch_footprints, carbon_meter_flags
from compute.lifecycle import changed, finality, sharing, window_start
from compute.model import Batch, Intervals, StateChanges, i64
from compute.series import MeterCarry, Readings, advance
from compute.sitespec import SiteSpecView

logger = logging.getLogger(__name__)

FactorLookup = Callable[[str, str, int], Factor | None]  # (carrier, kind, at ns)


@dataclass
class Stored:
    """The newest stored footprint revision of a batch."""

    revision: int
    status: str
    energy: dict[str, float]
    kg_location: float


@dataclass
class Outcome:
    """What one evaluation asks the store to write (in one transaction)."""

    intervals: dict[str, Intervals] = field(default_factory=dict)
    batches: list[Batch] = field(default_factory=list)
    state_changes: list[tuple[str, int, int]] = field(default_factory=list)
    allocations: list[tuple[str, int, str, float, str]] = field(default_factory=list)
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
    pending: Outcome = field(default_factory=Outcome)
    # per gateway reporting batches: the send time of its newest batch frame (a watermark)
    batch_marks: dict[str, int] = field(default_factory=dict)

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
                       states: Mapping[str, tuple[list[int], list[int]]]) -> None:
        for asset, (ts, code) in states.items():
            self.states.setdefault(asset, StateChanges()).add(i64(ts), i64(code))
            self.pending.state_changes.extend((asset, t, c) for t, c in zip(ts, code,
                                                                            strict=True))
        for meter, rd in per_meter.items():
            spec = self.view.counters.get(meter)
            if spec is None:
                continue
            carry = self.carry.setdefault(meter, MeterCarry())
            new = advance(carry, spec, rd, self.view.co2.get(meter))
            if len(new) == 0:
                continue
            self.data_now_ns = max(self.data_now_ns, int(new.end[-1]))
            _append(self.pending.intervals, meter, new)
            k = int(np.searchsorted(new.end, self.settled_until, side="right"))
            if k:
                _append(self.pending.late, meter, new.slice(0, k))
            self.series.setdefault(meter, Intervals()).extend(new.slice(k, len(new)))

    # ------------------------------------------------------------ evaluation
    def evaluate(self) -> Outcome:
        """Allocate the window, update footprints and lifecycle; return what to write."""
        batches = sorted(self.batches.values(), key=lambda b: (b.start_ns, b.batch_id))
        alloc = allocate_site(self.view, self.series, batches, self.states)
        fps = batch_footprints(alloc, self.series, self.view.carriers,
                               self.resolutions(), self.factors_for)
        coverage = self._coverage()
        final_ids = {b for b, s in self.stored.items() if s.status != "provisional"}
        for b in batches:
            # a final batch is re-examined only while all its intervals are in the window
            if b.batch_id in final_ids and b.start_ns < self.settled_until:
                continue
            self._lifecycle(b, fps.get(b.batch_id), batches, coverage, final_ids)
        self._settle(alloc, batches, coverage)
        out, self.pending = self.pending, Outcome()
        return out

    def resolutions(self) -> dict[str, float]:
        """Counter resolution per meter now (float counters: their spacing at the value)."""
        return self.view.resolutions_at({m: c.energy.baseline for m, c in self.carry.items()
                                         if c.energy.baseline == c.energy.baseline})

    def _coverage(self) -> dict[str, int]:
        """Per meter, up to when its data is complete for every use: its last reading,
        less what a parent's residual smoothing needs beyond (half the window and the
        meter's typical interval), since a residual is only final once that is known."""
        half = self.view.residual_half_ns
        out: dict[str, int] = {}
        for m, c in self.carry.items():
            iv = self.series.get(m)
            last = max(c.energy.last_ts, iv.covered_until if iv is not None else 0)
            step = int(np.median(iv.end - iv.start)) if iv is not None and len(iv) else 0
            out[m] = last - (half + step if half else 0)
        return out

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

    def _lifecycle(self, b: Batch, fp: Footprint | None, batches: list[Batch],
                   coverage: Mapping[str, int], final_ids: set[str]) -> None:
        if fp is None:
            fp = Footprint(b)
        loc, _ = self.factors_for(b)
        carbon_meter_flags(fp, loc, self.view.carbon_tolerance, self.view.co2_resolution_kg)
        prev = self.stored.get(b.batch_id)
        if prev is not None and prev.status != "provisional":
            if b.batch_id in final_ids and not changed(prev.energy, fp.energy):
                return
            self._write(b, fp, prev.revision + 1, "revised")
            return
        others = sharing(b, batches, self.view.scopes.values())
        fin = finality(b, coverage, self.view.meters_for(b.asset), others,
                       self.data_now_ns, int(self.view.final_timeout_s * 1e9),
                       self.events_until)
        if fin.final:
            fp.flags.update(f"missing:{m}" for m in fin.missing)
            fp.flags.update(f"weights_unknown:{o}" for o in fin.waiting_for)
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
        # never past what every live meter reported, nor past the batch events known
        floor = min(min((coverage[m] for m in live), default=self.data_now_ns),
                    self.events_until)
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
        # history a residual's smoothing still reads: twice its half-window before w
        keep = w - 2 * self.view.residual_half_ns
        for meter, iv in list(self.series.items()):
            self.series[meter] = iv.since(keep)
        self.settled_until = w
        keep_from = min((int(iv.start[0]) for iv in self.series.values() if len(iv)), default=w)
        for b in batches:  # final batches wholly before every kept interval are done
            if b.end_or_open <= keep_from and b.batch_id in final_now:
                del self.batches[b.batch_id]

    def _settled_rows(self, meter: str, ma: MeterAllocation, iv: Intervals, n_done: int,
                      n_old: int, batches: list[Batch]) -> None:
        """Allocation rows of intervals n_done..n_old (settled now, not before)."""
        rows = self.pending.allocations
        sel = (ma.interval >= n_done) & (ma.interval < n_old)
        for i, b, e in zip(ma.interval[sel], ma.batch[sel], ma.energy[sel], strict=True):
            rows.append((meter, int(iv.end[i]), batches[int(b)].batch_id, float(e), ma.rule))
        n_alloc = min(n_old, len(ma.unallocated))
        for i in range(n_done, n_alloc):
            rows.append((meter, int(iv.end[i]), "", float(ma.unallocated[i]), ma.rule))
            metered = float(ma.metered[i]) if ma.metered is not None else float(iv.energy[i])
            children = metered - float(ma.allocated_energy[i])
            if children != 0.0:  # a parent's children, allocated through the children
                rows.append((meter, int(iv.end[i]), "(children)", children, "children"))
            moved = float(iv.energy[i]) - metered
            if moved != 0.0:  # a frozen register's catch-up, spread back over the freeze
                rows.append((meter, int(iv.end[i]), "(respread)", moved, "respread"))


def _append(into: dict[str, Intervals], meter: str, new: Intervals) -> None:
    got = into.get(meter)
    if got is None:
        into[meter] = new
    else:
        got.extend(new)
