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
from functools import lru_cache
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


Spread = tuple[I64, I64, F64]  # (start, end, energy) of pieces in time order


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
    # how the meter's energy is spread in time, as pieces (start, end, energy): an asset
    # or shared meter's intervals split at knots; a parent's residual per interval and its
    # children's pieces. A parent's residual subtracts its children's energy re-binned
    # from these, not from their raw intervals
    spread: tuple[Spread, ...] | None = None
    # per interval, the meter's energy as allocated from: as counted, or with a frozen
    # register's catch-up spread back (respread_catch_ups); None: as counted
    metered: F64 | None = None


@dataclass
class AllocCache:
    """What one evaluation of a site keeps for its next (the worker's SiteState): per
    parent meter the residual smoothing's running sums, so that a micro-batch sums only
    what its new intervals add (``kernels.smooth_rate_resume``, bit for bit a fresh
    ``smooth_rate``)."""

    smooth: dict[str, kernels.SmoothCarry] = field(default_factory=dict)


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


def _spread_weights(iv: Intervals, knot: I64) -> tuple[F64, F64, np.ndarray]:
    # a frozen register's power channel froze with it: in a catch-up's stretch the
    # power values are no evidence, and the energy is spread evenly in time anyway
    have_power = np.isfinite(iv.p_start) & np.isfinite(iv.p_end) & (
        (iv.p_start > 0) | (iv.p_end > 0)) & ((iv.flags & kernels.CATCH_UP) == 0)
    w_before = np.where(have_power, np.nan_to_num(iv.p_start), 1.0)
    w_after = np.where(have_power, np.nan_to_num(iv.p_end), 1.0)
    return f64(w_before), f64(w_after), have_power & (knot >= 0)


@dataclass(frozen=True)
class Scope:
    """The batches a meter allocates to, as kernel input."""

    idx: I64  # indices into the site's batch list, ordered by start then id
    seg: tuple[I64, I64, I64, I64, F64]
    starts: I64


def _scope(batches: Sequence[Batch], assets: tuple[str, ...], rule: str,
           idx: I64 | None = None) -> Scope:
    idx = _scope_batches(batches, assets) if idx is None else idx
    mine = [batches[k] for k in idx.tolist()]
    timeline = _timeline(tuple(b.start_ns for b in mine), tuple(b.end_or_open for b in mine),
                         tuple(_batch_weight(b, rule) for b in mine))
    return Scope(idx, timeline, i64([b.start_ns for b in mine]))


@lru_cache(maxsize=4096)
def _timeline(starts: tuple[int, ...], ends: tuple[int, ...], weights: tuple[float, ...]
              ) -> tuple[I64, I64, I64, I64, F64]:
    """A scope's weight_segments, remembered: most scopes' batches stay the same between
    micro-batches (the arrays are only read)."""
    return kernels.weight_segments(i64(starts), i64(ends), f64(weights))


def _allocate(iv_start: I64, iv_end: I64, energy: F64, scope: Scope,
              idle_next: bool) -> tuple[I64, I64, F64, F64]:
    seg_start, seg_end, ptr, member, weight = scope.seg
    pi, pb, pe, unalloc = kernels.allocate_overlap(
        iv_start, iv_end, energy, seg_start, seg_end, ptr, member, weight, scope.starts,
        1 if idle_next else 0)
    return pi, scope.idx[pb] if len(pb) else i64(), pe, unalloc


def _concat(parts: Sequence[I64]) -> tuple[I64, I64]:
    """Arrays one after the other, and the offset of each (one more than arrays)."""
    ptr = np.zeros(len(parts) + 1, dtype=np.int64)
    np.cumsum([len(p) for p in parts], out=ptr[1:])
    return (i64(np.concatenate(parts)) if parts else i64()), ptr


@dataclass
class _Scopes:
    """The distinct (assets, rule) scopes of one evaluation, as kernel input."""

    ordered: Sequence[Batch]
    states: Mapping[str, StateChanges]
    ids: dict[tuple[tuple[str, ...], str], int] = field(default_factory=dict)
    scopes: list[Scope] = field(default_factory=list)
    bounds: list[I64] = field(default_factory=list)
    changes: list[I64] = field(default_factory=list)
    by_asset: dict[str, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for k, b in enumerate(self.ordered):
            self.by_asset.setdefault(b.asset, []).append(k)

    def of(self, assets: tuple[str, ...], rule: str) -> int:
        s = self.ids.get((assets, rule))
        if s is None:
            s = self.ids[(assets, rule)] = len(self.scopes)
            idx = i64(sorted(k for a in set(assets) for k in self.by_asset.get(a, ())))
            scope = _scope(self.ordered, assets, rule, idx)
            self.scopes.append(scope)
            self.bounds.append(_boundaries(self.ordered, scope.idx))
            ts = [self.states[a].ts for a in assets if a in self.states]
            self.changes.append(np.unique(np.concatenate(ts)) if ts else i64())
        return s

    def timelines(self) -> dict[str, I64 | F64]:
        """The scopes' weight_segments outputs and batch starts, concatenated with their
        offsets: kernels.allocate_overlap_many's keywords."""
        segs = [sc.seg for sc in self.scopes]
        seg_start, seg_ptr = _concat([s[0] for s in segs])
        seg_end, _ = _concat([s[1] for s in segs])
        ptr, ptr_ptr = _concat([s[2] for s in segs])
        member, member_ptr = _concat([s[3] for s in segs])
        b_start, b_ptr = _concat([sc.starts for sc in self.scopes])
        weight = f64(np.concatenate([s[4] for s in segs])) if segs else f64()
        return {"seg_ptr": seg_ptr, "ptr_ptr": ptr_ptr, "member_ptr": member_ptr,
                "b_ptr": b_ptr, "seg_start": seg_start, "seg_end": seg_end, "ptr": ptr,
                "member": member, "weight": weight, "b_start": b_start}


def allocate_meters(metered: Sequence[tuple[str, Intervals, tuple[str, ...], str]],
                    ordered: Sequence[Batch], states: Mapping[str, StateChanges],
                    idle_next: bool, methods: dict[str, set[str]]) -> dict[str, MeterAllocation]:
    """Asset and shared meters, (meter, intervals, scope assets, rule) each, all at once:
    boundary-aware spreading, then the overlap sweep (``compute.kernels_many``; per meter
    exactly what the per-meter kernels give)."""
    if not metered:
        return {}
    scopes = _Scopes(ordered, states)
    r_scope = i64([scopes.of(assets, rule) for _m, _iv, assets, rule in metered])
    iv = Intervals.concat([m[1] for m in metered])
    lengths = i64([len(m[1]) for m in metered])
    off = np.zeros(len(metered) + 1, dtype=np.int64)
    np.cumsum(lengths, out=off[1:])
    bounds, b_ptr = _concat(scopes.bounds)
    changes, c_ptr = _concat(scopes.changes)
    knot, by_state = kernels.knots_many(iv.start, iv.end, np.repeat(r_scope, lengths), bounds,
                                        b_ptr, changes, c_ptr)
    w_before, w_after, by_power = _spread_weights(iv, knot)
    s_start, s_end, s_energy, s_parent = kernels.split_at_knots(
        iv.start, iv.end, iv.energy, knot, w_before, w_after)
    s_off = np.searchsorted(s_parent, off)
    pi_seg, pb, pe, unalloc_seg = kernels.allocate_overlap_many(
        s_start, s_end, s_energy, s_off[:-1], s_off[1:], r_scope,
        idle_next=1 if idle_next else 0, **scopes.timelines())  # type: ignore[arg-type]
    idx, _ = _concat([sc.idx for sc in scopes.scopes])  # a scope's batches' site indices
    pi, pb, pe = kernels.merge_pairs(s_parent[pi_seg], idx[pb], pe)
    unalloc = f64(np.bincount(s_parent, weights=unalloc_seg, minlength=len(iv)))
    straddle = knot >= 0
    # linear split of a boundary interval: what the other method moved, as a bound
    ones = np.ones(len(iv))
    _, _, lin_energy, _ = kernels.split_at_knots(iv.start, iv.end, iv.energy, knot, ones, ones)
    pair_unc = _pair_uncertainty(iv, pi, pe, straddle, by_power, s_energy, lin_energy, s_parent,
                                 off, _edge_timing(iv, off, r_scope, scopes.bounds))
    frac_est = np.divide(iv.estimated, iv.energy, out=np.zeros(len(iv)), where=iv.energy > 0)
    estimated = pe * frac_est[pi]
    _record_methods(methods, ordered, pi, pb, straddle, by_power, by_state)
    p_off = np.searchsorted(pi, off)
    out = {}
    for r, (meter, m_iv, _assets, rule) in enumerate(metered):
        a, b, lo, hi, sa, sb = p_off[r], p_off[r + 1], off[r], off[r + 1], s_off[r], s_off[r + 1]
        out[meter] = MeterAllocation(meter, rule, pi[a:b] - lo, pb[a:b], pe[a:b], unalloc[lo:hi],
                                     m_iv.energy, pair_unc[a:b], estimated[a:b],
                                     ((s_start[sa:sb], s_end[sa:sb], s_energy[sa:sb]),))
    return out


# seconds a reading's time stamp may sit from its registers' refresh: meters refresh
# their energy registers about once a second, and the gateway stamps at the request
READING_TIMING_S = 2.0


def _stretch_sides(iv: Intervals, st: I64, before_knot: F64, off: I64) -> F64:
    """Per straddling interval ``st`` of a catch-up's stretch, the smaller side of the
    whole stretch at its knot: the catch-up's spread over the stretch is an estimate, so
    a boundary inside it could have any part of the stretch on either side."""
    up = (iv.flags & kernels.CATCH_UP) != 0
    first = up & np.concatenate([[True], ~up[:-1]])
    first[off[:-1][off[:-1] < len(iv)]] |= up[off[:-1][off[:-1] < len(iv)]]  # meters apart
    run = np.cumsum(first) - 1  # stretch id of each catch-up interval
    cum = np.concatenate([[0.0], np.cumsum(np.where(up, iv.energy, 0.0))])
    run_lo = np.flatnonzero(first)
    run_hi = np.append(run_lo[1:], len(iv))
    out = np.zeros(len(st))
    for k, i in enumerate(st.tolist()):
        if up[i]:
            r = run[i]
            lo, hi = run_lo[r], i
            while hi + 1 < run_hi[r] and up[hi + 1]:
                hi += 1
            before = cum[i] - cum[lo] + before_knot[k]
            out[k] = min(before, cum[hi + 1] - cum[lo] - before)
    return out


def _edge_timing(iv: Intervals, off: I64, r_scope: I64, bounds: Sequence[I64]) -> F64:
    """Per interval, what its ends' timing may move across a batch boundary that one of
    its readings is stamped exactly at (no interval straddles it, so no split bounds it):
    the rate there over ``READING_TIMING_S``. A device clock of whole seconds stamps
    readings at the very second a boundary is; the value is from within that second."""
    out = np.zeros(len(iv))
    duration_h = (iv.end - iv.start) / 3.6e12
    mean = np.divide(iv.energy, duration_h, out=np.zeros(len(iv)), where=duration_h > 0)
    for k, r in enumerate(r_scope.tolist()):
        b = bounds[r]
        if len(b) == 0:
            continue
        sl = slice(int(off[k]), int(off[k + 1]))
        for ts, rate in ((iv.end[sl], iv.p_end[sl]), (iv.start[sl], iv.p_start[sl])):
            at = np.isin(ts, b)
            if at.any():
                kw = np.where(np.isfinite(rate), np.abs(rate), mean[sl])
                out[sl] += np.where(at, kw * READING_TIMING_S / 3600, 0.0)
    return out


def _pair_uncertainty(iv: Intervals, pi: I64, pe: F64, straddle: np.ndarray,
                      by_power: np.ndarray, s_energy: F64, lin_energy: F64,
                      s_parent: I64, off: I64, edge: F64) -> F64:
    """Expanded uncertainty of each (interval, batch) share from the boundary spread.

    Inside a batch an interval's spread does not matter; across a boundary the
    energy that could sit on the other side does: half of what the power
    evidence moved against a linear split, plus a tenth of the smaller side for
    the timing of the knot (register refresh, clock), and for a linear split, a
    gap or a catch-up's stretch half of the smaller side; and, from the power
    channel, the change of rate across the knot over ``READING_TIMING_S`` (how
    far a reading's time stamp may sit from the instant its registers were
    refreshed); and ``edge``, for an interval a boundary meets at one of its readings.
    """
    out = np.zeros(len(pi))
    st = np.flatnonzero(straddle)  # only boundary intervals have a term: a few in the window
    rows = np.flatnonzero(straddle[pi] | (edge[pi] > 0))
    if len(rows) == 0:
        return out
    first_seg = np.searchsorted(s_parent, st, side="left")
    energy = iv.energy[st]
    side = np.minimum(s_energy[first_seg], energy - s_energy[first_seg])
    moved = np.abs(s_energy[first_seg] - lin_energy[first_seg])
    # a gap's or a catch-up's spread in time is not known: bounded as a linear split
    gap = (iv.flags[st] & (kernels.GAP | kernels.CATCH_UP)) != 0
    step = np.abs(np.nan_to_num(iv.p_end[st]) - np.nan_to_num(iv.p_start[st])
                  ) * READING_TIMING_S / 3600
    per_iv = edge.copy()
    side = np.maximum(side, _stretch_sides(iv, st, s_energy[first_seg], off))
    per_iv[st] += np.where(by_power[st] & ~gap, 0.5 * moved + 0.1 * side + step, 0.5 * side)
    at = pi[rows]
    share = np.divide(pe[rows], iv.energy[at], out=np.zeros(len(rows)), where=iv.energy[at] > 0)
    out[rows] = per_iv[at] * np.minimum(1.0, 2 * share)
    return out


def _record_methods(methods: dict[str, set[str]], batches: Sequence[Batch], pi: I64, pb: I64,
                    straddle: np.ndarray, by_power: np.ndarray, by_state: I64) -> None:
    sel = np.flatnonzero(straddle[pi])  # pairs of boundary intervals only
    for i, b in zip(pi[sel].tolist(), pb[sel].tolist(), strict=True):
        how = ("state+" if by_state[i] else "") + ("power" if by_power[i] else "linear")
        methods.setdefault(batches[b].batch_id, set()).add(how)


def residual(parent: Intervals, children: Sequence[Spread]) -> F64:
    """Parent − Σ children per parent interval; the children given as pieces of their
    spread in time (start, end, energy), re-binned onto the parent's intervals."""
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
                  states: Mapping[str, StateChanges], cache: AllocCache | None = None
                  ) -> SiteAllocation:
    """Every meter of the site, in the order sub-division, shared, parent residual.

    ``series`` as the meters counted it; frozen registers' catch-ups are first spread
    back over the frozen stretch (:func:`respread_catch_ups`). ``cache``: what the
    previous call for the same site kept (the result is the same without it)."""
    series = {m: respread_catch_ups(iv) for m, iv in series.items()}
    ordered = sorted(batches, key=lambda b: (b.start_ns, b.batch_id))
    out = _allocate_all(site, series, ordered, states, cache)
    for meter, ma in out.meters.items():
        ma.metered = series[meter].energy
    return out


def _allocate_all(site: SiteSpec, series: Mapping[str, Intervals], ordered: list[Batch],
                  states: Mapping[str, StateChanges], cache: AllocCache | None
                  ) -> SiteAllocation:
    out = SiteAllocation(list(ordered))
    idle_next = site.idle_policy == "next_batch"
    order = meter_order(site)
    metered = []
    for meter, spec in order:
        iv = series.get(meter)
        if spec.role != "parent" and iv is not None and len(iv):
            assets = site.scope(meter)
            rule = site.split_of(assets[0]) if spec.role == "asset" else spec.rule or "equal"
            metered.append((meter, iv, assets, rule))
    done = allocate_meters(metered, ordered, states, idle_next, out.methods)
    scopes = _Scopes(ordered, states)
    for meter, spec in order:  # parents, deepest first: a residual needs its children's spread
        iv = series.get(meter)
        if spec.role == "parent" and iv is not None and len(iv):
            assets = site.scope(meter)
            scope = scopes.scopes[scopes.of(assets, spec.rule or "equal")]
            done[meter] = _allocate_parent(meter, spec, iv, series, done, scope,
                                           spec.rule or "equal", idle_next,
                                           site.residual_half_ns, cache)
    out.meters = {m: done[m] for m, _spec in order if m in done}
    return out


# site's meters → (them, their order): built once per site model, not per evaluation
_ORDER: dict[int, tuple[Mapping[str, MeterSpec], list[tuple[str, MeterSpec]]]] = {}


def meter_order(site: SiteSpec) -> list[tuple[str, MeterSpec]]:
    """The site's meters, children before their parents (deepest first, then file order)."""
    meters = site.meters
    got = _ORDER.get(id(meters))
    if got is None or got[0] is not meters:
        parents = {c: m for m, spec in meters.items() for c in spec.children}

        def depth(meter: str) -> int:  # the site incomer 0, its sub-meters 1 …
            d = 0
            while meter in parents and d < len(parents):
                meter, d = parents[meter], d + 1
            return d
        got = _ORDER[id(meters)] = (meters, sorted(meters.items(), key=lambda kv: depth(kv[0]),
                                                   reverse=True))
    return got[1]


def parent_coverage(parent: Intervals, spreads: Sequence[Spread]) -> int:
    """How many of the parent's intervals every child's spread covers (residual
    computable). A child that is itself a parent spreads only as far as *its* residual
    is computable, i.e. as far as all its own children reported: a grandchild that is
    silent (a PLC behind an OPC UA server that restarts) stops its grandparent's residual
    too, rather than leave that line's whole load in the grandparent's residual."""
    until = min((int(ends[-1]) if len(ends) else 0 for _s, ends, _e in spreads),
                default=int(OPEN_END))
    return int(np.searchsorted(parent.end, until, side="right"))


def _allocate_parent(meter: str, spec: MeterSpec, iv: Intervals,
                     series: Mapping[str, Intervals], done: Mapping[str, MeterAllocation],
                     scope: Scope, rule: str, idle_next: bool, half_ns: int,
                     cache: AllocCache | None = None) -> MeterAllocation:
    """The residual (unmetered loads: lighting, HVAC, auxiliaries), its rate smoothed over
    ± ``half_ns``, spread evenly in time within each interval.

    A child that is a parent itself (a line incomer under the site incomer) is taken as
    its own residual per interval plus its children's pieces, not as its intervals spread
    evenly: a machine that stops inside a long interval of the line incomer stops at the
    right moment for the site's residual too (its feeder's interval is split there)."""
    spreads: list[Spread] = []
    for c in spec.children:
        got = done.get(c)
        raw = series.get(c, Intervals())
        spreads += (got.spread if got is not None and got.spread is not None
                    else ((raw.start, raw.end, raw.energy),))
    n = parent_coverage(iv, spreads)
    head = iv.slice(0, n)
    raw_res = residual(head, spreads)
    if cache is None:
        res = kernels.smooth_rate(head.start, head.end, raw_res, half_ns)
    else:  # the same numbers; only the new intervals' terms are summed
        res, carry = kernels.smooth_rate_resume(head.start, head.end, raw_res, half_ns,
                                                cache.smooth.get(meter))
        if carry is None:
            cache.smooth.pop(meter, None)
        else:
            cache.smooth[meter] = carry
    pi, pb, pe, unalloc = _allocate(head.start, head.end, res, scope, idle_next)
    # the residual's own spread is smooth (unmetered loads): no boundary term; a
    # negative residual in an interval (children's timing against the parent's) is
    # allocated as it is, so the sums stay exact
    frac_est = np.divide(head.estimated, head.energy, out=np.zeros(n), where=head.energy > 0)
    estimated = pe * frac_est[pi] if len(pi) else f64()
    # where the parent's energy was spread in time by estimate (a gap, a frozen register's
    # catch-up), so were its children's: the residual there is the difference of two
    # estimates, each batch's share of it uncertain by half (as a reset's guess)
    uncertainty = f64(0.5 * np.abs(estimated))
    # its energy in time: the residual evenly within each interval (it sums with the
    # children's pieces to the meter's energy, interval by interval), and the children's
    # pieces, whose last ends reach at least as far as the residual does
    spread = ((head.start, head.end, raw_res), *spreads)
    return MeterAllocation(meter, rule, pi, pb, pe, f64(unalloc), res, uncertainty,
                           estimated, spread)
