"""Smoothing of a parent meter's residual in time (numba; numpy in, numpy out).

A residual (incomer − Σ sub-meters) is the small difference of large counters
read at slightly different instants: each reading's timing error (register
refresh, request latency) shows up as a blip in one interval and the opposite
blip in the next. The unmetered loads it measures (lighting, HVAC, line
auxiliaries) change slowly, so before it is allocated the residual's *rate*
is averaged over a time window: each interval gets its length times the mean
rate of the residual within ± ``half_ns`` of its midpoint. The result for an
interval depends only on intervals within that window, summed in time order,
so it is the same however much history the caller holds beyond it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from compute.kernels_check import F64, I64, floats, ints, require_sorted, same_length


def smooth_rate(start: I64, end: I64, energy: F64, half_ns: int) -> F64:
    """Per interval: its length × the mean rate of ``energy`` within ± ``half_ns`` of its
    midpoint (energy spread uniformly inside each interval; where the window reaches past
    the data, the mean is over the part covered). ``half_ns`` <= 0 returns a copy.

    One kernel serves both: this is :func:`smooth_rate_resume` with nothing to resume."""
    return smooth_rate_resume(start, end, energy, half_ns, None)[0]


@dataclass(frozen=True)
class SmoothCarry:
    """What :func:`smooth_rate_resume` keeps of one call for the next: the inputs, and per
    interval its running sums (rate × overlap, overlap ns) and the range of intervals
    [``jlo``, ``jstop``) they were summed over."""

    start: I64
    end: I64
    energy: F64
    total: F64
    covered: F64
    jlo: I64
    jstop: I64


def smooth_rate_resume(start: I64, end: I64, energy: F64, half_ns: int,
                       prev: SmoothCarry | None) -> tuple[F64, SmoothCarry | None]:
    """:func:`smooth_rate`, bit for bit, reusing ``prev`` (the last call's carry).

    An interval whose sum read only inputs that are unchanged keeps it; one whose sum
    ran to the end of the old data, all of it unchanged, goes on adding the new
    intervals in time order (the same additions in the same order as a fresh call).
    The rest are summed afresh. A micro-batch that appends intervals then costs the
    new intervals × the window, not the whole window × the window. The old data may
    have lost intervals at its front (trimmed history) or be cut at its end."""
    start, end, energy = ints("start", start), ints("end", end), floats("energy", energy)
    n = same_length(start=start, end=end, energy=energy)
    require_sorted("start", start)
    if half_ns <= 0:
        return energy.copy(), None
    off, same = 0, 0  # the old data's index of start[0]; how many leading inputs match
    if prev is not None and n and len(prev.start):
        off = int(np.searchsorted(prev.start, start[0]))
        if off < len(prev.start) and prev.start[off] == start[0]:
            m = min(len(prev.start) - off, n)
            diff = ((start[:m] != prev.start[off:off + m]) | (end[:m] != prev.end[off:off + m])
                    | (energy[:m] != prev.energy[off:off + m]))
            hit = np.flatnonzero(diff)
            same = int(hit[0]) if len(hit) else m
    if prev is None or same == 0:
        empty_f, empty_i = np.zeros(0), np.zeros(0, np.int64)
        prev = SmoothCarry(empty_i, empty_i, empty_f, empty_f, empty_f, empty_i, empty_i)
        off = 0
    out, total, covered, jlo, jstop = _smooth_resume_impl(
        start, end, energy, np.int64(half_ns), prev.total, prev.covered, prev.jlo, prev.jstop,
        np.int64(off), np.int64(len(prev.start) - off), np.int64(same))
    return out, SmoothCarry(start, end, energy, total, covered, jlo, jstop)


@njit(cache=True)
def _smooth_resume_impl(start: I64, end: I64, energy: F64, half: np.int64, p_total: F64,
                        p_covered: F64, p_jlo: I64, p_jstop: I64, off: np.int64,
                        p_n: np.int64, same: np.int64
                        ) -> tuple[F64, F64, F64, I64, I64]:
    # old interval off + i is new interval i for i < p_n; inputs [0, same) are unchanged
    n = start.shape[0]
    out = np.empty(n, np.float64)
    total_out = np.empty(n, np.float64)
    covered_out = np.empty(n, np.float64)
    jlo_out = np.empty(n, np.int64)
    jstop_out = np.empty(n, np.int64)
    lo = 0
    for i in range(n):
        mid = start[i] + (end[i] - start[i]) // 2
        a = mid - half
        b = mid + half
        while lo < n and end[lo] <= a:
            lo += 1
        total = 0.0
        covered = 0.0
        j = lo
        j_end = lo
        if i < same:
            o_lo = p_jlo[off + i] - off
            o_stop = p_jstop[off + i] - off
            if o_lo == lo and o_stop < same and o_stop < p_n:
                j = -1  # summed over unchanged inputs only, and stopped by the window
                total = p_total[off + i]
                covered = p_covered[off + i]
                j_end = o_stop
            elif o_lo == lo and o_stop == p_n and same == p_n:
                total = p_total[off + i]  # ran to the old data's end: go on from there
                covered = p_covered[off + i]
                j = o_stop
        if j >= 0:
            while j < n and start[j] < b:
                s = max(start[j], a)
                e = min(end[j], b)
                if e > s and end[j] > start[j]:
                    total += energy[j] * ((e - s) / (end[j] - start[j]))
                    covered += e - s
                j += 1
            j_end = j
        out[i] = total / covered * (end[i] - start[i]) if covered > 0 else energy[i]
        total_out[i] = total
        covered_out[i] = covered
        jlo_out[i] = lo
        jstop_out[i] = j_end
    return out, total_out, covered_out, jlo_out, jstop_out
