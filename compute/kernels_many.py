"""numba kernels, part 4: every asset and shared meter of a site in one call.

A site has hundreds of meters and each micro-batch touches all of them. Called
once per meter, the kernels of ``compute/kernels_alloc.py`` cost more in their
Python wrappers and the small numpy steps around them than in the sweep
itself. These take the meters at once: their intervals concatenated meter
after meter (meter r holds ``[r_lo[r], r_hi[r])``), each meter pointing at its
allocation scope, and the scopes' batch timelines concatenated likewise (scope
s holds ``[x_ptr[s], x_ptr[s + 1])`` of each of its arrays). Per meter the
result is exactly what the per-meter kernel gives (tested against it).

Same rules as the other kernel modules: jitted ``_..._impl`` over contiguous
int64/float64 arrays (ns, energy in the meter's canonical unit), a typed
wrapper that checks what it is given, no I/O.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from compute.kernels_alloc import _allocate_impl, _first
from compute.kernels_check import F64, I64, floats, ints, same_length


def _ranges_sorted(name: str, a: I64, r_lo: I64, r_hi: I64) -> None:
    """ValueError unless ``a`` is non-decreasing within every range."""
    if not _ranges_sorted_impl(a, r_lo, r_hi):
        raise ValueError(f"{name} must be sorted ascending within each meter")


@njit(cache=True)
def _ranges_sorted_impl(a: I64, r_lo: I64, r_hi: I64) -> bool:
    for r in range(r_lo.shape[0]):
        for i in range(r_lo[r] + 1, r_hi[r]):
            if a[i] < a[i - 1]:
                return False
    return True


def _check_ptr(name: str, ptr: I64, n_scopes: int, total: int) -> None:
    if ptr.shape[0] != n_scopes + 1 or (ptr.shape[0] and (ptr[0] != 0 or ptr[-1] != total)) \
            or np.any(np.diff(ptr) < 0):
        raise ValueError(f"{name}: one offset per scope plus one, from 0 to {total}, "
                         "non-decreasing")


def knots_many(start: I64, end: I64, iv_scope: I64, bounds: I64, bounds_ptr: I64,
               changes: I64, changes_ptr: I64) -> tuple[I64, I64]:
    """Per interval its knot (ns; -1 for none) and whether a machine-state change set it.

    Interval i lies in scope ``iv_scope[i]``; scope s's batch boundaries (sorted,
    distinct) are ``bounds[bounds_ptr[s]:bounds_ptr[s + 1]]`` and its assets'
    machine-state changes (sorted, distinct) ``changes[changes_ptr[s]:…]``. The
    knot is the first boundary strictly inside (start, end); when state changes
    lie strictly inside the interval too, the one nearest that boundary (the
    earlier on a tie) is the knot instead and ``by_state`` is 1.
    """
    start, end, iv_scope = ints("start", start), ints("end", end), ints("iv_scope", iv_scope)
    bounds, bounds_ptr = ints("bounds", bounds), ints("bounds_ptr", bounds_ptr)
    changes, changes_ptr = ints("changes", changes), ints("changes_ptr", changes_ptr)
    same_length(start=start, end=end, iv_scope=iv_scope)
    n_scopes = bounds_ptr.shape[0] - 1
    _check_ptr("bounds_ptr", bounds_ptr, n_scopes, bounds.shape[0])
    _check_ptr("changes_ptr", changes_ptr, n_scopes, changes.shape[0])
    if iv_scope.shape[0] and (int(iv_scope.min()) < 0 or int(iv_scope.max()) >= n_scopes):
        raise ValueError("iv_scope holds a scope outside bounds_ptr")
    return _knots_impl(start, end, iv_scope, bounds, bounds_ptr, changes, changes_ptr)


@njit(cache=True)
def _knots_impl(start: I64, end: I64, iv_scope: I64, bounds: I64, bounds_ptr: I64,
                changes: I64, changes_ptr: I64) -> tuple[I64, I64]:
    n = start.shape[0]
    knot = np.full(n, -1, np.int64)
    by_state = np.zeros(n, np.int64)
    for i in range(n):
        s = iv_scope[i]
        b_hi = bounds_ptr[s + 1]
        f = _first(bounds, bounds_ptr[s], b_hi, start[i], True)
        if f >= b_hi or bounds[f] >= end[i]:
            continue
        k = bounds[f]
        c_lo, c_hi = changes_ptr[s], changes_ptr[s + 1]
        lo = _first(changes, c_lo, c_hi, start[i], True)
        hi = _first(changes, lo, c_hi, end[i], False)
        if hi > lo:  # state change(s) strictly inside: the one nearest the MES boundary
            best = changes[lo]
            for j in range(lo + 1, hi):
                if abs(changes[j] - k) < abs(best - k):
                    best = changes[j]
            k = best
            by_state[i] = 1
        knot[i] = k
    return knot, by_state


def allocate_overlap_many(
    i_start: I64, i_end: I64, i_energy: F64, r_lo: I64, r_hi: I64, r_scope: I64,
    seg_ptr: I64, ptr_ptr: I64, member_ptr: I64, b_ptr: I64,
    seg_start: I64, seg_end: I64, ptr: I64, member: I64, weight: F64, b_start: I64,
    idle_next: int,
) -> tuple[I64, I64, F64, F64]:
    """``allocate_overlap`` for many meters, each against its own scope's timeline.

    Meter r's intervals are ``[r_lo[r], r_hi[r])`` of ``i_*`` (sorted by start
    within the meter), its scope ``r_scope[r]``. Scope s's ``weight_segments``
    output is ``seg_start/seg_end[seg_ptr[s]:seg_ptr[s + 1]]``, its CSR offsets
    ``ptr[ptr_ptr[s]:ptr_ptr[s + 1]]`` (local to its members
    ``member/weight[member_ptr[s]:member_ptr[s + 1]]``), its batch starts
    ``b_start[b_ptr[s]:b_ptr[s + 1]]``. Returns the pairs as ``allocate_overlap``
    does, with interval indices into ``i_*`` and batch indices into ``b_start``
    (a scope's local index + ``b_ptr[s]``), meter by meter, and the unallocated
    energy per interval.
    """
    i_start, i_end = ints("i_start", i_start), ints("i_end", i_end)
    i_energy = floats("i_energy", i_energy)
    r_lo, r_hi, r_scope = ints("r_lo", r_lo), ints("r_hi", r_hi), ints("r_scope", r_scope)
    seg_ptr, ptr_ptr = ints("seg_ptr", seg_ptr), ints("ptr_ptr", ptr_ptr)
    member_ptr, b_ptr = ints("member_ptr", member_ptr), ints("b_ptr", b_ptr)
    seg_start, seg_end, ptr = ints("seg_start", seg_start), ints("seg_end", seg_end), ints(
        "ptr", ptr)
    member, weight, b_start = ints("member", member), floats("weight", weight), ints(
        "b_start", b_start)
    same_length(i_start=i_start, i_end=i_end, i_energy=i_energy)
    same_length(r_lo=r_lo, r_hi=r_hi, r_scope=r_scope)
    same_length(seg_start=seg_start, seg_end=seg_end)
    same_length(member=member, weight=weight)
    n_scopes = seg_ptr.shape[0] - 1
    _check_ptr("seg_ptr", seg_ptr, n_scopes, seg_start.shape[0])
    _check_ptr("member_ptr", member_ptr, n_scopes, member.shape[0])
    _check_ptr("b_ptr", b_ptr, n_scopes, b_start.shape[0])
    if ptr_ptr.shape[0] != n_scopes + 1 or np.any(np.diff(ptr_ptr) != np.diff(seg_ptr) + 1) \
            or (n_scopes and ptr_ptr[-1] != ptr.shape[0]):
        raise ValueError("ptr_ptr: each scope's CSR offsets are its segments plus one")
    if np.any(r_lo > r_hi) or (r_lo.shape[0] and (int(r_lo.min()) < 0
                                                  or int(r_hi.max()) > i_start.shape[0])):
        raise ValueError("r_lo/r_hi: meter ranges must lie within the intervals")
    if r_scope.shape[0] and (int(r_scope.min()) < 0 or int(r_scope.max()) >= n_scopes):
        raise ValueError("r_scope holds a scope outside seg_ptr")
    if not np.all(weight >= 0.0):
        raise ValueError("segment weights must be >= 0")
    if idle_next not in (0, 1):
        raise ValueError(f"idle_next must be 0 or 1, got {idle_next!r}")
    _ranges_sorted("i_start", i_start, r_lo, r_hi)
    _ranges_sorted("seg_start", seg_start, seg_ptr[:-1], seg_ptr[1:])
    if idle_next:
        _ranges_sorted("b_start", b_start, b_ptr[:-1], b_ptr[1:])
    return _allocate_many_impl(i_start, i_end, i_energy, r_lo, r_hi, r_scope, seg_ptr,
                               ptr_ptr, member_ptr, b_ptr, seg_start, seg_end, ptr, member,
                               weight, b_start, np.int64(idle_next))


@njit(cache=True)
def _allocate_many_impl(i_start: I64, i_end: I64, i_energy: F64, r_lo: I64, r_hi: I64,
                        r_scope: I64, seg_ptr: I64, ptr_ptr: I64, member_ptr: I64,
                        b_ptr: I64, seg_start: I64, seg_end: I64, ptr: I64, member: I64,
                        weight: F64, b_start: I64, idle_next: np.int64
                        ) -> tuple[I64, I64, F64, F64]:
    n = i_start.shape[0]
    unallocated = np.zeros(n, np.float64)
    cap = 2 * n + 16
    p_int = np.empty(cap, np.int64)
    p_bat = np.empty(cap, np.int64)
    p_en = np.empty(cap, np.float64)
    npairs = 0
    for r in range(r_lo.shape[0]):
        lo, hi, s = r_lo[r], r_hi[r], r_scope[r]
        if hi <= lo:
            continue
        a, b = seg_ptr[s], seg_ptr[s + 1]
        m0, m1 = member_ptr[s], member_ptr[s + 1]
        b0, b1 = b_ptr[s], b_ptr[s + 1]
        pi, pb, pe, un = _allocate_impl(
            i_start[lo:hi].copy(), i_end[lo:hi].copy(), i_energy[lo:hi].copy(),
            seg_start[a:b].copy(), seg_end[a:b].copy(), ptr[ptr_ptr[s]:ptr_ptr[s + 1]].copy(),
            member[m0:m1].copy(), weight[m0:m1].copy(), b_start[b0:b1].copy(), idle_next)
        unallocated[lo:hi] = un
        k = pi.shape[0]
        if npairs + k > cap:
            cap = max(2 * cap, npairs + k)
            grown_i, grown_b, grown_e = (np.empty(cap, np.int64), np.empty(cap, np.int64),
                                         np.empty(cap, np.float64))
            grown_i[:npairs], grown_b[:npairs], grown_e[:npairs] = (
                p_int[:npairs], p_bat[:npairs], p_en[:npairs])
            p_int, p_bat, p_en = grown_i, grown_b, grown_e
        for x in range(k):
            p_int[npairs + x] = pi[x] + lo
            p_bat[npairs + x] = pb[x] + b0
            p_en[npairs + x] = pe[x]
        npairs += k
    return p_int[:npairs], p_bat[:npairs], p_en[:npairs], unallocated


def merge_pairs(pi: I64, pb: I64, pe: F64) -> tuple[I64, I64, F64]:
    """Pairs summed per (interval, batch), sorted by interval then batch.

    ``pi`` must be non-decreasing (the sweep's pairs, mapped from segments back to
    their intervals): a boundary interval's two parts may go to the same batch.
    Each sum adds the parts in the order given.
    """
    pi, pb, pe = ints("pi", pi), ints("pb", pb), floats("pe", pe)
    same_length(pi=pi, pb=pb, pe=pe)
    _ranges_sorted("pi", pi, np.zeros(1, np.int64), np.full(1, pi.shape[0], np.int64))
    return _merge_impl(pi, pb, pe)


@njit(cache=True)
def _merge_impl(pi: I64, pb: I64, pe: F64) -> tuple[I64, I64, F64]:
    n = pi.shape[0]
    out_i = np.empty(n, np.int64)
    out_b = np.empty(n, np.int64)
    out_e = np.empty(n, np.float64)
    k = 0
    lo = 0
    while lo < n:
        hi = lo + 1
        while hi < n and pi[hi] == pi[lo]:
            hi += 1
        first = k
        for j in range(lo, hi):  # an interval has a few pairs: insert each in batch order
            b = pb[j]
            at = first
            while at < k and out_b[at] < b:
                at += 1
            if at < k and out_b[at] == b:
                out_e[at] += pe[j]
                continue
            for y in range(k, at, -1):
                out_b[y], out_e[y] = out_b[y - 1], out_e[y - 1]
            out_i[k], out_b[at], out_e[at] = pi[lo], b, pe[j]
            k += 1
        lo = hi
    return out_i[:k], out_b[:k], out_e[:k]
