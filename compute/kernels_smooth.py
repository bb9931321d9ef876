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

import numpy as np
from numba import njit

from compute.kernels_check import F64, I64, floats, ints, require_sorted, same_length


def smooth_rate(start: I64, end: I64, energy: F64, half_ns: int) -> F64:
    """Per interval: its length × the mean rate of ``energy`` within ± ``half_ns`` of its
    midpoint (energy spread uniformly inside each interval; where the window reaches past
    the data, the mean is over the part covered). ``half_ns`` <= 0 returns a copy."""
    start, end, energy = ints("start", start), ints("end", end), floats("energy", energy)
    same_length(start=start, end=end, energy=energy)
    require_sorted("start", start)
    if half_ns <= 0:
        return energy.copy()
    return _smooth_impl(start, end, energy, np.int64(half_ns))


@njit(cache=True)
def _smooth_impl(start: I64, end: I64, energy: F64, half: np.int64) -> F64:
    n = start.shape[0]
    out = np.empty(n, np.float64)
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
        while j < n and start[j] < b:
            s = max(start[j], a)
            e = min(end[j], b)
            if e > s and end[j] > start[j]:
                total += energy[j] * ((e - s) / (end[j] - start[j]))
                covered += e - s
            j += 1
        out[i] = total / covered * (end[i] - start[i]) if covered > 0 else energy[i]
    return out
