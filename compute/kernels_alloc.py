"""numba kernels, part 2: boundary splitting, the batch timeline, the overlap sweep.

Re-exported by ``compute/kernels.py`` (import them from there). Same rules:
jitted ``_..._impl`` over contiguous int64/float64 arrays (ns, energy in the
meter's unit), a typed wrapper that checks the input, no I/O.

Allocation follows ARCHITECTURE.md "Allocation" (ISO 14044 order): inside an interval
energy is spread uniformly in time (``split_at_knots`` first makes the spread
boundary-aware); each instant's energy goes to the batches running then, pro
rata by weight; an instant with none is idle: unallocated, or given to the next
batch to start. Never dropped: per interval Σ shares + unallocated = energy.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from compute.kernels_check import F64, I64, floats, ints, require_sorted, same_length


def split_at_knots(start: I64, end: I64, energy: F64, knot: I64, w_before: F64,
                   w_after: F64) -> tuple[I64, I64, F64, I64]:
    """Split intervals where the energy density changes (a state change, a batch boundary).

    Interval i = [start, end) (ns) with ``energy`` may have one ``knot`` (ns)
    strictly inside it; ``knot <= start`` or ``knot >= end`` means none. Its
    energy is split between [start, knot) and [knot, end) in proportion to
    ``w_before x (knot - start)`` and ``w_after x (end - knot)`` (weights are
    rates: the power channel before and after, or neighbouring intervals'
    rates; 1 and 1 is linear). When both products are 0, or either is negative
    or not finite, the split is linear. The two parts add up to ``energy``
    exactly (the smaller part is derived from the larger by an exact
    subtraction). For several knots in one interval, call again on the result.

    Returns ``(seg_start, seg_end, seg_energy, seg_parent)``: 1 or 2 segments
    per interval in input order, ``seg_parent`` the source interval's index.
    """
    start, end = ints("start", start), ints("end", end)
    energy, knot = floats("energy", energy), ints("knot", knot)
    w_before, w_after = floats("w_before", w_before), floats("w_after", w_after)
    same_length(start=start, end=end, energy=energy, knot=knot, w_before=w_before,
                w_after=w_after)
    return _split_impl(start, end, energy, knot, w_before, w_after)


@njit(cache=True)
def _split_impl(start: I64, end: I64, energy: F64, knot: I64, w_before: F64,
                w_after: F64) -> tuple[I64, I64, F64, I64]:
    n = start.shape[0]
    count = n
    for i in range(n):
        if start[i] < knot[i] < end[i]:
            count += 1
    seg_start = np.empty(count, np.int64)
    seg_end = np.empty(count, np.int64)
    seg_energy = np.empty(count, np.float64)
    seg_parent = np.empty(count, np.int64)
    k = 0
    for i in range(n):
        s, e, t, total = start[i], end[i], knot[i], energy[i]
        if s < t < e:
            a = w_before[i] * (t - s)
            b = w_after[i] * (e - t)
            both = a + b
            if a >= 0.0 and b >= 0.0 and 0.0 < both < np.inf:
                first = total * (a / both)
            else:
                first = total * ((t - s) / (e - s))
            second = total - first
            first = total - second  # now first + second == total exactly (Sterbenz)
            seg_start[k], seg_end[k], seg_energy[k], seg_parent[k] = s, t, first, i
            seg_start[k + 1], seg_end[k + 1], seg_energy[k + 1], seg_parent[k + 1] = (
                t, e, second, i)
            k += 2
        else:
            seg_start[k], seg_end[k], seg_energy[k], seg_parent[k] = s, e, total, i
            k += 1
    return seg_start, seg_end, seg_energy, seg_parent


def weight_segments(b_start: I64, b_end: I64, b_weight: F64
                    ) -> tuple[I64, I64, I64, I64, F64]:
    """The batches of one allocation scope as a piecewise-constant timeline.

    Batch j runs on [b_start[j], b_end[j]) (ns; ``OPEN_END`` = 2**63 - 1 while
    it runs) with weight ``b_weight[j]`` (1 for ``equal`` / ``machine_hours``,
    the quantity for ``quantity``, quantity / duration for ``mass``). Segment k
    is [seg_start[k], seg_end[k]) between consecutive distinct batch starts and
    ends; segments cover first start .. last end without holes, and a segment
    with no running batch is kept with an empty member set (time before the
    first or after the last segment is idle too). Members of segment k are
    ``member[ptr[k]:ptr[k + 1]]`` (batch indices, ascending) with ``weight``
    alike (CSR). Batches may come in any order; ``allocate_overlap`` with
    ``idle_next`` wants them sorted by start, then id.
    """
    b_start, b_end = ints("b_start", b_start), ints("b_end", b_end)
    b_weight = floats("b_weight", b_weight)
    same_length(b_start=b_start, b_end=b_end, b_weight=b_weight)
    if np.any(b_end < b_start):
        raise ValueError("a batch ends before it starts (b_end < b_start)")
    if not np.all(b_weight >= 0.0) or np.any(np.isinf(b_weight)):
        raise ValueError("batch weights must be finite and >= 0")
    return _segments_impl(b_start, b_end, b_weight)


@njit(cache=True)
def _segments_impl(b_start: I64, b_end: I64, b_weight: F64
                   ) -> tuple[I64, I64, I64, I64, F64]:
    nb = b_start.shape[0]
    points = np.sort(np.concatenate((b_start, b_end)))
    bounds = np.empty(points.shape[0], np.int64)
    nu = 0
    for p in points:
        if nu == 0 or p != bounds[nu - 1]:
            bounds[nu] = p
            nu += 1
    nseg = max(nu - 1, 0)
    first = np.empty(nb, np.int64)  # a batch covers segments [first, last)
    last = np.empty(nb, np.int64)
    for j in range(nb):
        first[j] = _bisect(bounds, nu, b_start[j], False)
        last[j] = _bisect(bounds, nu, b_end[j], False)
    ptr = np.zeros(nseg + 1, np.int64)
    for j in range(nb):
        for k in range(first[j], last[j]):
            ptr[k + 1] += 1
    for k in range(nseg):
        ptr[k + 1] += ptr[k]
    fill = ptr[:-1].copy()
    member = np.empty(ptr[nseg], np.int64)
    weight = np.empty(ptr[nseg], np.float64)
    for j in range(nb):  # in index order, so members come out ascending
        for k in range(first[j], last[j]):
            member[fill[k]] = j
            weight[fill[k]] = b_weight[j]
            fill[k] += 1
    return bounds[: nseg], bounds[1: nseg + 1], ptr, member, weight


@njit(cache=True)
def _first(a: I64, lo: int, hi: int, x: int, after: bool) -> int:
    """First index in sorted a[lo:hi] with a[i] > x (``after``) or a[i] >= x (np.searchsorted
    right / left, written out: numba's generic one costs seconds of compile time)."""
    while lo < hi:
        mid = (lo + hi) // 2
        if a[mid] < x or (after and a[mid] == x):
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(cache=True)
def _bisect(a: I64, n: int, x: int, after: bool) -> int:
    """First index in sorted a[:n] with a[i] > x (``after``) or a[i] >= x."""
    return _first(a, 0, n, x, after)


def allocate_overlap(i_start: I64, i_end: I64, i_energy: F64, seg_start: I64, seg_end: I64,
                     ptr: I64, member: I64, weight: F64, b_start: I64, idle_next: int
                     ) -> tuple[I64, I64, F64, F64]:
    """One meter's interval energy to the batches running, as an O(n + m) sweep.

    Intervals [i_start, i_end) (ns, sorted by start; non-overlapping for the
    O(n + m) bound) carry ``i_energy``, spread uniformly in time within each
    (a zero-length interval is a point at its start). The timeline is
    ``weight_segments``' output. The part of an interval inside segment k goes
    to k's members pro rata by weight (equally when all weights are 0). A part
    in no segment, or in one with no member, is idle: with
    ``idle_next == 0`` it is unallocated; with ``idle_next == 1`` it goes to the
    next batch to start after the idle part begins (``b_start`` sorted
    ascending, ties to the lower index: sort batches by start, then id), or is
    unallocated when none is left. Negative energy (a residual) is shared
    likewise.

    Returns ``(pair_interval, pair_batch, pair_energy, unallocated)``: one pair
    per interval x batch with a nonzero share, by interval then batch index,
    and the unallocated energy of each interval. Per interval Σ pair_energy +
    unallocated == i_energy to rounding (the last part and the last member get
    the remainder).
    """
    i_start, i_end, i_energy = ints("i_start", i_start), ints("i_end", i_end), floats(
        "i_energy", i_energy)
    seg_start, seg_end = ints("seg_start", seg_start), ints("seg_end", seg_end)
    ptr, member, weight = ints("ptr", ptr), ints("member", member), floats("weight", weight)
    b_start = ints("b_start", b_start)
    same_length(i_start=i_start, i_end=i_end, i_energy=i_energy)
    same_length(seg_start=seg_start, seg_end=seg_end)
    same_length(member=member, weight=weight)
    if ptr.shape[0] != seg_start.shape[0] + 1 or (ptr.shape[0] and ptr[-1] != member.shape[0]):
        raise ValueError("ptr must have one entry per segment plus one, ending at len(member)")
    if member.shape[0] and (int(member.min()) < 0 or int(member.max()) >= b_start.shape[0]):
        raise ValueError("member holds a batch index outside b_start")
    if not np.all(weight >= 0.0):
        raise ValueError("segment weights must be >= 0")
    if idle_next not in (0, 1):
        raise ValueError(f"idle_next must be 0 or 1, got {idle_next!r}")
    require_sorted("i_start", i_start)
    require_sorted("seg_start", seg_start)
    if idle_next:
        require_sorted("b_start", b_start)
    return _allocate_impl(i_start, i_end, i_energy, seg_start, seg_end, ptr, member, weight,
                          b_start, np.int64(idle_next))


@njit(cache=True)
def _grow(a: F64, size: int) -> F64:
    out = np.empty(size, a.dtype)
    out[: a.shape[0]] = a
    return out


@njit(cache=True)
def _grow_i(a: I64, size: int) -> I64:
    out = np.empty(size, a.dtype)
    out[: a.shape[0]] = a
    return out


@njit(cache=True)
def _allocate_impl(i_start: I64, i_end: I64, i_energy: F64, seg_start: I64, seg_end: I64,
                   ptr: I64, member: I64, weight: F64, b_start: I64, idle_next: np.int64
                   ) -> tuple[I64, I64, F64, F64]:
    n, m, nb = i_start.shape[0], seg_start.shape[0], b_start.shape[0]
    # per segment: its members' total weight and which member takes the remainder
    seg_total = np.zeros(m, np.float64)
    seg_last = np.empty(m, np.int64)
    for k in range(m):
        seg_last[k] = ptr[k + 1] - 1
        for p in range(ptr[k], ptr[k + 1]):
            seg_total[k] += weight[p]
            if weight[p] > 0.0:
                seg_last[k] = p
    # pairs are mostly one or two per interval; pages never written cost nothing, and
    # growing (a copy) is dearer than a generous start. _sweep stops short when full.
    cap = 2 * n + 16
    p_int = np.empty(cap, np.int64)
    p_bat = np.empty(cap, np.int64)
    p_en = np.empty(cap, np.float64)
    unallocated = np.zeros(n, np.float64)
    acc = np.zeros(nb, np.float64)
    seen = np.empty(nb, np.int64)  # the interval that last touched each batch
    seen[:] = -1
    touched = np.empty(nb, np.int64)
    i, k, npairs = 0, 0, 0
    while True:
        # the sweep itself never reassigns an array: numba keeps its loop free of refcounting
        i, k, npairs = _sweep(i, k, npairs, i_start, i_end, i_energy, seg_start, seg_end, ptr,
                              member, weight, seg_total, seg_last, b_start, idle_next, p_int,
                              p_bat, p_en, unallocated, acc, seen, touched)
        if i >= n:
            return p_int[:npairs], p_bat[:npairs], p_en[:npairs], unallocated
        cap = max(2 * cap, npairs + nb + 16)  # room for interval i's pairs at least
        p_int, p_bat, p_en = _grow_i(p_int, cap), _grow_i(p_bat, cap), _grow(p_en, cap)


@njit(cache=True)
def _sweep(i0: int, k: int, npairs: int, i_start: I64, i_end: I64, i_energy: F64,
           seg_start: I64, seg_end: I64, ptr: I64, member: I64, weight: F64, seg_total: F64,
           seg_last: I64, b_start: I64, idle_next: np.int64, p_int: I64, p_bat: I64,
           p_en: F64, unallocated: F64, acc: F64, seen: I64, touched: I64
           ) -> tuple[int, int, int]:
    """Intervals from i0 on, until done or the pair buffers might not hold the next one."""
    n, m, nb = i_start.shape[0], seg_start.shape[0], b_start.shape[0]
    cap = p_int.shape[0]
    # segment k's bounds and members, reloaded only when the sweep moves on
    cur = -1
    k_start, k_end, lo, hi, total, last = 0, 0, 0, 0, 0.0, 0
    for i in range(i0, n):
        s, e, energy = i_start[i], i_end[i], i_energy[i]
        while k < m and seg_end[k] <= s:
            k += 1
        if k < m and k != cur:
            cur = k
            k_start, k_end, lo, hi = seg_start[k], seg_end[k], ptr[k], ptr[k + 1]
            total, last = seg_total[k], seg_last[k]
        if k < m and k_start <= s and e <= k_end and hi > lo:
            # the common case: the whole interval inside one segment with batches running;
            # members are distinct and ascending, so the pairs go out as they come
            if npairs + hi - lo > cap:
                return i, k, npairs
            if hi - lo == 1:  # one batch running: it takes it all
                if energy != 0.0:
                    p_int[npairs], p_bat[npairs], p_en[npairs] = i, member[lo], energy
                    npairs += 1
                continue
            share_left = energy
            for p in range(lo, hi):
                w = weight[p]
                if total > 0.0 and w <= 0.0:
                    continue
                if p == last:
                    part = share_left
                elif total > 0.0:
                    part = energy * (w / total)
                else:
                    part = energy / (hi - lo)
                share_left -= part
                if part != 0.0:
                    p_int[npairs], p_bat[npairs], p_en[npairs] = i, member[p], part
                    npairs += 1
            continue
        if k >= m or e <= seg_start[k] or (
                seg_start[k] <= s and e <= seg_end[k] and ptr[k + 1] == ptr[k]):
            # the whole interval idle: before, between or after the batches
            q = _bisect(b_start, nb, s, True) if idle_next else nb
            if q >= nb:
                unallocated[i] = energy
            elif energy != 0.0:
                if npairs >= cap:
                    return i, k, npairs
                p_int[npairs], p_bat[npairs], p_en[npairs] = i, q, energy
                npairs += 1
            continue
        nt = 0
        idle = 0.0
        rest = energy
        t = s
        kk = k
        while True:  # one part per segment or idle stretch, in time order
            while kk < m and seg_end[kk] <= t:
                kk += 1
            inside = kk < m and seg_start[kk] <= t
            if inside:
                part_end = min(e, seg_end[kk])
            elif kk < m:
                part_end = min(e, seg_start[kk])
            else:
                part_end = e
            if part_end >= e:
                portion = rest  # the last part takes the remainder
            else:
                portion = energy * ((part_end - t) / (e - s))
                rest -= portion
            # (the bookkeeping of a batch's share is written out twice below: a helper
            # taking the arrays would cost a refcounted call per part)
            if inside and ptr[kk + 1] > ptr[kk]:
                lo, hi, total = ptr[kk], ptr[kk + 1], seg_total[kk]
                share_left = portion
                for p in range(lo, hi):
                    w = weight[p]
                    if total > 0.0 and w <= 0.0:
                        continue
                    if p == seg_last[kk]:
                        part = share_left
                    elif total > 0.0:
                        part = portion * (w / total)
                    else:
                        part = portion / (hi - lo)
                    share_left -= part
                    b = member[p]
                    if seen[b] != i:
                        seen[b] = i
                        acc[b] = 0.0
                        touched[nt] = b
                        nt += 1
                    acc[b] += part
            else:  # idle: no batch runs
                q = nb
                if idle_next:
                    q = _bisect(b_start, nb, t, True)  # the next batch to start after t
                if q < nb:
                    if seen[q] != i:
                        seen[q] = i
                        acc[q] = 0.0
                        touched[nt] = q
                        nt += 1
                    acc[q] += portion
                else:
                    idle += portion
            if part_end >= e:
                break
            t = part_end
        unallocated[i] = idle
        if npairs + nt > cap:  # no room: forget this interval, the caller grows and resumes
            for x in range(nt):
                seen[touched[x]] = -1
            return i, k, npairs
        for x in range(1, nt):  # insertion sort: an interval touches a few batches
            v = touched[x]
            y = x - 1
            while y >= 0 and touched[y] > v:
                touched[y + 1] = touched[y]
                y -= 1
            touched[y + 1] = v
        for x in range(nt):
            b = touched[x]
            if acc[b] != 0.0:
                p_int[npairs], p_bat[npairs], p_en[npairs] = i, b, acc[b]
                npairs += 1
    return n, k, npairs
