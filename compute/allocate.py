"""Allocation of one site's metered energy to its batches (ARCHITECTURE.md, ISO 14044 order).

Pure: intervals, batches and machine states in; per meter and interval the
shares of each batch and the unallocated rest, and per batch its energy,
estimated part and uncertainty per carrier. The heavy lifting is in
``compute.kernels``; this module chooses, per meter, what the kernels get:

1. *Sub-division*: an ``asset`` meter's intervals against the batches on its
   asset, concurrent batches weighted by the asset's split (``equal`` or
   ``quantity``).
2. *Physical relationship*: a ``shared`` meter's intervals against the batches
   on its served assets, weighted by its rule (``machine_hours``/``equal`` 1,
   ``mass`` = quantity per second of the batch); a ``parent`` meter's residual
   (parent − Σ children, re-binned onto the parent's intervals) likewise over
   its scope.
3. *Idle and changeover*: parts of intervals with no batch running follow the
   site's idle policy (``unallocated`` or ``next_batch``), never dropped.

A boundary interval (a batch starts or ends inside it) is split on the best
evidence: the knot is the asset's machine-state change inside the interval
(source timestamp) or else the batch boundary; the energy either side follows
the meter's power channel at the interval's ends (``power``), else time
(``linear``). The method is recorded per batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from compute import kernels
from compute.model import F64, I64, OPEN_END, Batch, Intervals, StateChanges, f64, i64


class MeterSpec(Protocol):
    @property
    def role(self) -> str: ...
    @property
    def children(self) -> tuple[str, ...]: ...
    @property
    def rule(self) -> str | None: ...


class SiteSpec(Protocol):
    @property
    def idle_policy(self) -> str: ...

    @property
    def residual_half_ns(self) -> int: ...

    @property
    def meters(self) -> Mapping[str, MeterSpec]: ...

    def scope(self, meter: str) -> tuple[str, ...]: ...

    def split_of(self, asset: str) -> str: ...


@dataclass
class MeterAllocation:
    """Where one meter's intervals went (pairs of interval index, batch index, energy)."""

    meter: str
    rule: str
    interval: I64
    batch: I64
    energy: F64
    unallocated: F64  # per interval
    allocated_energy: F64  # what was allocated per interval: energy, or a parent's residual
    uncertainty: F64  # per pair, same unit as energy (boundary spread and estimates)
    estimated: F64  # per pair: estimated part of the pair's energy
    # how the meter's energy is spread in time (split at knots): a parent's residual
    # subtracts its children's energy re-binned from these, not from raw intervals
    spread: tuple[I64, I64, F64] | None = None
    # per interval, the meter's energy as allocated from: as counted, or with a frozen
    # register's catch-up spread back (respread_catch_ups); None: as counted
    metered: F64 | None = None


@dataclass
class SiteAllocation:
    batches: list[Batch]
    meters: dict[str, MeterAllocation] = field(default_factory=dict)
    methods: dict[str, set[str]] = field(default_factory=dict)  # batch id -> split methods


# batch quantities in these units are weighed as mass (kg), so kg and t batches compare
_MASS_KG = {"kg": 1.0, "t": 1e3}


def _quantity(b: Batch) -> float | None:
    if not b.quantity:
        return None
    return b.quantity * _MASS_KG.get(b.unit or "", 1.0)


def _batch_weight(b: Batch, rule: str) -> float:
    """Weight of a running batch under a split rule; 1 while the needed quantity is unknown."""
    q = _quantity(b)
    if rule == "quantity":
        return q if q else 1.0
    if rule == "mass":
        if q and b.end_ns is not None and b.end_ns > b.start_ns:
            return q / ((b.end_ns - b.start_ns) / 1e9)  # kg (or the batch's unit) per second
        return 1.0
    return 1.0  # equal, machine_hours


def _scope_batches(batches: Sequence[Batch], assets: tuple[str, ...]) -> I64:
    wanted = set(assets)
    return i64([k for k, b in enumerate(batches) if b.asset in wanted])


def _boundaries(batches: Sequence[Batch], idx: I64) -> I64:
    times = [batches[k].start_ns for k in idx] + [
        batches[k].end_ns for k in idx if batches[k].end_ns is not None]
    return np.unique(i64(times))


def _knots(iv: Intervals, bounds: I64, states: Sequence[StateChanges]) -> tuple[I64, I64]:
    """Per interval the knot (a boundary inside it, refined by a state change) or -1."""
    knot = np.full(len(iv), -1, dtype=np.int64)
    if len(bounds) == 0 or len(iv) == 0:
        return knot, np.zeros(len(iv), dtype=np.int64)
    first = np.searchsorted(bounds, iv.start, side="right")
    inside = (first < len(bounds))
    inside[inside] = bounds[first[inside]] < iv.end[inside]
    knot[inside] = bounds[first[inside]]
    by_state = np.zeros(len(iv), dtype=np.int64)
    changes = np.unique(np.concatenate([s.ts for s in states])) if states else i64()
    if len(changes):
        for i in np.flatnonzero(inside):
            lo = np.searchsorted(changes, iv.start[i], side="right")
            hi = np.searchsorted(changes, iv.end[i], side="left")
            if hi > lo:  # state change(s) strictly inside: the one nearest the MES boundary
                cand = changes[lo:hi]
                knot[i] = cand[np.argmin(np.abs(cand - knot[i]))]
                by_state[i] = 1
    return knot, by_state


def _spread_weights(iv: Intervals, knot: I64) -> tuple[F64, F64, np.ndarray]:
    have_power = np.isfinite(iv.p_start) & np.isfinite(iv.p_end) & (
        (iv.p_start > 0) | (iv.p_end > 0))
    w_before = np.where(have_power, np.nan_to_num(iv.p_start), 1.0)
    w_after = np.where(have_power, np.nan_to_num(iv.p_end), 1.0)
    return f64(w_before), f64(w_after), have_power & (knot >= 0)


@dataclass(frozen=True)
class Scope:
    """The batches a meter allocates to, as kernel input."""

    idx: I64  # indices into the site's batch list, ordered by start then id
    seg: tuple[I64, I64, I64, I64, F64]
    starts: I64


def _scope(batches: Sequence[Batch], assets: tuple[str, ...], rule: str) -> Scope:
    idx = _scope_batches(batches, assets)
    b_start = i64([batches[k].start_ns for k in idx])
    b_end = i64([batches[k].end_or_open for k in idx])
    b_w = f64([_batch_weight(batches[k], rule) for k in idx])
    return Scope(idx, kernels.weight_segments(b_start, b_end, b_w), b_start)


def _allocate(iv_start: I64, iv_end: I64, energy: F64, scope: Scope,
              idle_next: bool) -> tuple[I64, I64, F64, F64]:
    seg_start, seg_end, ptr, member, weight = scope.seg
    pi, pb, pe, unalloc = kernels.allocate_overlap(
        iv_start, iv_end, energy, seg_start, seg_end, ptr, member, weight, scope.starts,
        1 if idle_next else 0)
    return pi, scope.idx[pb] if len(pb) else i64(), pe, unalloc


def allocate_meter(meter: str, spec: MeterSpec, iv: Intervals, scope: Scope,
                   rule: str, idle_next: bool, batches: Sequence[Batch],
                   states: Sequence[StateChanges], methods: dict[str, set[str]]
                   ) -> MeterAllocation:
    """An asset or shared meter: boundary-aware spreading, then the overlap sweep."""
    knot, by_state = _knots(iv, _boundaries(batches, scope.idx), states)
    w_before, w_after, by_power = _spread_weights(iv, knot)
    s_start, s_end, s_energy, s_parent = kernels.split_at_knots(
        iv.start, iv.end, iv.energy, knot, w_before, w_after)
    pi_seg, pb, pe, unalloc_seg = _allocate(s_start, s_end, s_energy, scope, idle_next)
    pi, pb, pe = _per_interval(s_parent[pi_seg] if len(pi_seg) else i64(), pb, pe)
    unalloc = np.bincount(s_parent, weights=unalloc_seg, minlength=len(iv)) if len(iv) else f64()
    straddle = knot >= 0
    # linear split of a boundary interval: what the other method moved, as a bound
    _, _, lin_energy, _ = kernels.split_at_knots(
        iv.start, iv.end, iv.energy, knot, np.ones(len(iv)), np.ones(len(iv)))
    pair_unc = _pair_uncertainty(iv, pi, pe, straddle, by_power, s_energy, lin_energy, s_parent)
    frac_est = np.divide(iv.estimated, iv.energy, out=np.zeros(len(iv)), where=iv.energy > 0)
    _record_methods(methods, batches, pi, pb, straddle, by_power, by_state)
    return MeterAllocation(meter, rule, pi, pb, pe, f64(unalloc), iv.energy, pair_unc,
                           pe * frac_est[pi] if len(pi) else f64(), (s_start, s_end, s_energy))


def _per_interval(pi: I64, pb: I64, pe: F64) -> tuple[I64, I64, F64]:
    """Pairs of segments summed per (interval, batch): a split interval's two parts may
    go to the same batch."""
    if len(pi) == 0:
        return pi, pb, pe
    keys, inverse = np.unique(np.stack([pi, pb]), axis=1, return_inverse=True)
    return i64(keys[0]), i64(keys[1]), f64(np.bincount(inverse.ravel(), weights=pe,
                                                        minlength=keys.shape[1]))


# seconds a reading's time stamp may sit from its registers' refresh: meters refresh
# their energy registers about once a second, and the gateway stamps at the request
READING_TIMING_S = 2.0


def _pair_uncertainty(iv: Intervals, pi: I64, pe: F64, straddle: np.ndarray,
                      by_power: np.ndarray, s_energy: F64, lin_energy: F64,
                      s_parent: I64) -> F64:
    """Expanded uncertainty of each (interval, batch) share from the boundary spread.

    Inside a batch an interval's spread does not matter; across a boundary the
    energy that could sit on the other side does: half of what the power
    evidence moved against a linear split, plus a tenth of the smaller side for
    the timing of the knot (register refresh, clock), and for a linear split or
    a gap half of the smaller side; and, from the power channel, the change of
    rate across the knot over ``READING_TIMING_S`` (how far a reading's time
    stamp may sit from the instant its registers were refreshed).
    """
    if len(pi) == 0:
        return f64()
    first_seg = np.searchsorted(s_parent, np.arange(len(iv)), side="left")
    side = np.minimum(s_energy[first_seg], iv.energy - s_energy[first_seg])
    moved = np.abs(s_energy[first_seg] - lin_energy[first_seg])
    gap = (iv.flags & kernels.GAP) != 0
    step = np.abs(np.nan_to_num(iv.p_end) - np.nan_to_num(iv.p_start)) * READING_TIMING_S / 3600
    per_iv = np.where(by_power & ~gap, 0.5 * moved + 0.1 * side + step, 0.5 * side)
    per_iv = np.where(straddle, per_iv, 0.0)
    share = np.divide(pe, iv.energy[pi], out=np.zeros(len(pi)), where=iv.energy[pi] > 0)
    return f64(per_iv[pi] * np.minimum(1.0, 2 * share))


def _record_methods(methods: dict[str, set[str]], batches: Sequence[Batch], pi: I64, pb: I64,
                    straddle: np.ndarray, by_power: np.ndarray, by_state: I64) -> None:
    for i, b in zip(pi, pb, strict=True):
        if straddle[i]:
            how = ("state+" if by_state[i] else "") + ("power" if by_power[i] else "linear")
            methods.setdefault(batches[int(b)].batch_id, set()).add(how)


def residual(parent: Intervals, children: Sequence[tuple[I64, I64, F64]]) -> F64:
    """Parent − Σ children per parent interval; each child given as its spread in time
    (start, end, energy), re-binned onto the parent's intervals."""
    total = parent.energy.copy()
    for start, end, energy in children:
        total -= kernels.resample_energy(start, end, energy, parent.start, parent.end)
    return f64(total)


def respread_catch_ups(iv: Intervals) -> Intervals:
    """A frozen register's catch-up spread evenly back over the frozen stretch.

    A meter whose registers froze (a stuck device, a stalled gateway link) shows
    intervals of no energy and then one interval with all of it (kernel flag
    CATCH_UP). Its total is measured; when it was consumed is not: it is spread
    evenly over the frozen stretch (the zero intervals before it) and the whole
    stretch is marked estimated. Without this, a parent's residual subtracts its
    children's energy at other times than the parent's own, and the batches
    running during the freeze get the difference.
    """
    ups = np.flatnonzero(iv.flags & kernels.CATCH_UP)
    if len(ups) == 0:
        return iv
    out = iv.slice(0, len(iv))
    out.energy, out.estimated, out.flags = (iv.energy.copy(), iv.estimated.copy(),
                                            iv.flags.copy())
    for i in ups:
        j = int(i)
        while j > 0 and iv.energy[j - 1] == 0.0 and not iv.flags[j - 1] & (
                kernels.RESET | kernels.SPIKE | kernels.CATCH_UP):
            j -= 1
        if j == i:
            continue
        span = float(iv.end[i] - iv.start[j])
        share = iv.energy[i] * (iv.end[j:i + 1] - iv.start[j:i + 1]) / span
        share[-1] = iv.energy[i] - share[:-1].sum()  # the total stays exact
        out.energy[j:i + 1] = share
        out.estimated[j:i + 1] = share
        out.flags[j:i + 1] |= kernels.CATCH_UP | kernels.ESTIMATED
    return out


def allocate_site(site: SiteSpec, series: Mapping[str, Intervals], batches: Sequence[Batch],
                  states: Mapping[str, StateChanges]) -> SiteAllocation:
    """Every meter of the site, in the order sub-division, shared, parent residual.

    ``series`` as the meters counted it; frozen registers' catch-ups are first spread
    back over the frozen stretch (:func:`respread_catch_ups`)."""
    series = {m: respread_catch_ups(iv) for m, iv in series.items()}
    ordered = sorted(batches, key=lambda b: (b.start_ns, b.batch_id))
    out = _allocate_all(site, series, ordered, states)
    for meter, ma in out.meters.items():
        ma.metered = series[meter].energy
    return out


def _allocate_all(site: SiteSpec, series: Mapping[str, Intervals], ordered: list[Batch],
                  states: Mapping[str, StateChanges]) -> SiteAllocation:
    out = SiteAllocation(list(ordered))
    idle_next = site.idle_policy == "next_batch"
    # children before their parents: a residual needs its children's spread in time
    order = sorted(site.meters.items(), key=lambda kv: _depth(site, kv[0]), reverse=True)
    for meter, spec in order:
        iv = series.get(meter)
        if iv is None or len(iv) == 0:
            continue
        assets = site.scope(meter)
        asset_states = [states[a] for a in assets if a in states]
        rule = site.split_of(assets[0]) if spec.role == "asset" else spec.rule or "equal"
        scope = _scope(ordered, assets, rule)
        if spec.role == "parent":
            out.meters[meter] = _allocate_parent(meter, spec, iv, series, out.meters, scope,
                                                 rule, idle_next, site.residual_half_ns)
        else:
            out.meters[meter] = allocate_meter(meter, spec, iv, scope, rule, idle_next,
                                               ordered, asset_states, out.methods)
    return out


def _depth(site: SiteSpec, meter: str) -> int:
    """How many parents a meter sits under (the site incomer 0, its sub-meters 1 …)."""
    parents = {c: m for m, spec in site.meters.items() for c in spec.children}
    depth = 0
    while meter in parents and depth < len(parents):
        meter = parents[meter]
        depth += 1
    return depth


def parent_coverage(parent: Intervals, children: Sequence[Intervals]) -> int:
    """How many of the parent's intervals every child covers (residual computable)."""
    until = min((c.covered_until for c in children), default=int(OPEN_END))
    return int(np.searchsorted(parent.end, until, side="right"))


def _allocate_parent(meter: str, spec: MeterSpec, iv: Intervals,
                     series: Mapping[str, Intervals], done: Mapping[str, MeterAllocation],
                     scope: Scope, rule: str, idle_next: bool, half_ns: int) -> MeterAllocation:
    """The residual (unmetered loads: lighting, HVAC, auxiliaries), its rate smoothed over
    ± ``half_ns``, spread evenly in time within each interval."""
    kids = [series.get(c, Intervals()) for c in spec.children]
    n = parent_coverage(iv, kids)
    head = iv.slice(0, n)
    spreads = []
    for c, raw in zip(spec.children, kids, strict=True):
        got = done.get(c)
        spreads.append(got.spread if got is not None and got.spread is not None
                       else (raw.start, raw.end, raw.energy))
    res = kernels.smooth_rate(head.start, head.end, residual(head, spreads), half_ns)
    pi, pb, pe, unalloc = _allocate(head.start, head.end, res, scope, idle_next)
    # the residual's own spread is smooth (unmetered loads): no boundary term; a
    # negative residual in an interval (children's timing against the parent's) is
    # allocated as it is, so the sums stay exact
    frac_est = np.divide(head.estimated, head.energy, out=np.zeros(n), where=head.energy > 0)
    return MeterAllocation(meter, rule, pi, pb, pe, f64(unalloc), res, np.zeros(len(pi)),
                           pe * frac_est[pi] if len(pi) else f64(),
                           (head.start, head.end, head.energy))
