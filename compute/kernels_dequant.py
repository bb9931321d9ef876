"""numba kernel: a count register's hidden fraction, estimated from the power channel (pure).

An integer energy register (an EM24's 0.1 kWh counts) shows the *completed*
counts: the true counter lies in ``[shown, shown + resolution)``. Differences
of shown values are exact to one count, so a 20 kWh lot measured between two
readings can be off by up to 0.1 kWh (0.5 %) from truncation alone, and by
0.03 kWh rms.

The meter's power channel, read in the same request, says how much energy
flowed between two readings: about ``(p0 + p1) / 2 x dt``. Carried from one
reading to the next, that prediction narrows where the true counter sits in
its window: every reading cuts the predicted range with ``[shown, shown +
resolution)``, and each tick of the register pins it from the other side. The
kernel keeps, per meter, the range ``[lo, hi]`` of *true − shown* at the last
reading (counter unit, within ``[0, resolution]``) and a point estimate
``mid``; each interval's energy becomes::

    energy' = energy + mid_new - mid_old     (never below 0)

so a run of intervals telescopes: their sum moves by ``mid_last - mid_first``,
less than one count, and every value stays inside the window the register
shows. The error is therefore never worse than the register's own resolution,
and the uncertainty keeps counting a full count per end (``compute.footprint``).

The prediction allows for what two point samples cannot know of the load in
between: half the change of power across the interval (a load that stepped
somewhere inside) plus ``drift`` of the mean power (load noise). A reading
outside the predicted range (the allowance was too tight, the power channel
lied) starts the range afresh at the full window. A reset, a spike, a gap, an
interval of half an anchor period or longer, or one without power on both ends
keeps its counts as they are and starts afresh: what was known of the fraction
no longer holds. Every half hour (``ANCHOR_NS``) the range starts afresh too,
so the numbers can be reproduced from a bounded stretch of readings (an
evidence bundle's replay), not only from the meter's first reading.

Measured on simulated EM24s (0.1 kWh counts) with 2 % load noise, read every
50 s for four hours (six seeds): rms error of the counter at a reading 0.029
kWh from the counts; estimated 0.006 / 0.007 / 0.010 / 0.020 / 0.027 kWh at
2 / 6 / 20 / 75 / 300 kW (without the anchors 0.003 / 0.006 / 0.010 / 0.020 /
0.027): the smaller the load's noise per interval against one count, the
better; at worst no better than the counts.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from compute.kernels_check import F64, I64, floats, ints, same_length

BREAKS = 2 | 8 | 16  # kernels.GAP | RESET | SPIKE: a long silence or a new baseline
NS_PER_HOUR = 3_600_000_000_000.0
# the load's noise between two point samples of power, as a share of the mean power. Too
# wide, the range narrows slowly; too tight, readings fall outside and it restarts. On
# loads of 2-300 kW with 2 % noise per second read every 50 s, 1 % gave the smallest
# error but at 300 kW (tests/compute/test_kernels_dequant.py measures it)
DRIFT = 0.01
# every interval that crosses a multiple of this (epoch-aligned) starts the range afresh:
# an evidence bundle's replay (compute.evidence, an hour of readings before its context)
# then meets an anchor before the context and reproduces the worker's numbers exactly.
# Intervals of half this or longer never carry the range (a gap or a slow poll), so an
# anchor's interval always ends before the context too
ANCHOR_NS = 1_800 * 10**9


class FractionState(NamedTuple):
    """What ``dequantise`` carries per meter: *true − shown* at the last reading lies in
    ``[lo, hi]`` (counter unit), estimated ``mid``; ``restarts`` counts readings that
    fell outside the predicted range. ``FractionState.fresh(resolution)`` to begin."""

    lo: float
    hi: float
    mid: float
    restarts: int = 0

    @staticmethod
    def fresh(resolution: float) -> FractionState:
        return FractionState(0.0, resolution, resolution / 2)


def dequantise(start: I64, end: I64, energy: F64, flags: I64, p_start: F64, p_end: F64,
               resolution: float, state: FractionState, drift: float = DRIFT,
               anchor_ns: int = ANCHOR_NS) -> tuple[F64, FractionState]:
    """Intervals' energy with the register's hidden fraction estimated (see the module).

    ``start``/``end`` (ns), ``energy`` (counter unit, deltas of consecutive shown values
    as ``kernels.unwrap_counter`` gives them), ``flags`` (its bits), ``p_start``/``p_end``
    (the power channel at each end, counter unit per hour, NaN when unknown),
    ``resolution`` one count (> 0). Cutting the intervals anywhere and passing the state
    along gives exactly the result of one call.
    """
    start, end, flags = ints("start", start), ints("end", end), ints("flags", flags)
    energy, p_start, p_end = (floats("energy", energy), floats("p_start", p_start),
                              floats("p_end", p_end))
    same_length(start=start, end=end, energy=energy, flags=flags, p_start=p_start,
                p_end=p_end)
    if not resolution > 0.0 or not drift >= 0.0 or not anchor_ns > 0:
        raise ValueError(f"resolution={resolution} (> 0), drift={drift} (>= 0), "
                         f"anchor_ns={anchor_ns} (> 0)")
    out, lo, hi, mid, restarts = _dequantise_impl(
        start, end, energy, flags, p_start, p_end, float(resolution), float(drift),
        np.int64(anchor_ns), float(state.lo), float(state.hi), float(state.mid),
        np.int64(state.restarts))
    return out, FractionState(float(lo), float(hi), float(mid), int(restarts))


@njit(cache=True)
def _dequantise_impl(start: I64, end: I64, energy: F64, flags: I64, p_start: F64,
                     p_end: F64, res: float, drift: float, anchor_ns: np.int64, lo: float,
                     hi: float, mid: float, restarts: np.int64
                     ) -> tuple[F64, float, float, float, np.int64]:
    n = energy.shape[0]
    out = np.empty(n, np.float64)
    for k in range(n):
        e = energy[k]
        p0, p1 = p_start[k], p_end[k]
        span = end[k] - start[k]
        if (flags[k] & BREAKS or span * 2 >= anchor_ns or not np.isfinite(p0)
                or not np.isfinite(p1) or p0 < 0.0 or p1 < 0.0):
            # a new baseline, a gap or no power: the counts stand, nothing carries over
            out[k] = e
            lo, hi, mid = 0.0, res, res / 2
            continue
        dt_h = span / NS_PER_HOUR
        flow = 0.5 * (p0 + p1) * dt_h
        allow = (0.5 * abs(p1 - p0) + drift * 0.5 * (p0 + p1)) * dt_h
        if start[k] // anchor_ns != end[k] // anchor_ns:
            # an anchor: the range starts afresh here, whatever came before, so a replay
            # from any reading an anchor period back computes the same from here on. The
            # estimate is the middle, but at least one count less this interval's counts:
            # whatever the last estimate was (at most a count), the interval's energy
            # stays >= 0 (an interval without a tick takes the range's top)
            new_lo, new_hi = max(0.0, flow - e - allow), min(res, res + flow - e + allow)
            if new_lo > new_hi:
                new_lo, new_hi = 0.0, res
                restarts += 1
            new_mid = max(0.5 * (new_lo + new_hi), res - e)
            out[k] = e + new_mid - mid
            lo, hi, mid = new_lo, new_hi, new_mid
            continue
        new_lo = max(0.0, lo + flow - e - allow)
        new_hi = min(res, hi + flow - e + allow)
        if new_lo > new_hi:  # outside what was predicted: start afresh
            new_lo, new_hi = 0.0, res
            restarts += 1
        # the true counter never falls: the estimate may not either
        new_mid = max(0.5 * (new_lo + new_hi), mid - e)
        out[k] = e + new_mid - mid
        lo, hi, mid = new_lo, new_hi, new_mid
    return out, lo, hi, mid, restarts
