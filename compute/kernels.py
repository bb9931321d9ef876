"""numba kernels, part 1: counters to interval energy, re-binning, totals (pure).

Every kernel is a jitted ``_..._impl`` over contiguous int64/float64 arrays
(timestamps in epoch ns) and a thin typed wrapper that checks what it is given
and calls it: no I/O, no Python objects inside, results are numpy arrays.
The allocation kernels (boundary splitting, batch timeline, overlap) are in
``compute/kernels_alloc.py``, the count register's hidden fraction in
``compute/kernels_dequant.py``. Only modules named ``kernels*`` import numba.

Interval quality flags (bits of an int64, ARCHITECTURE.md "Meter semantics"):
``MEASURED`` 0; ``ESTIMATED`` some of the energy is an estimate; ``GAP`` the
interval is longer than the meter's gap threshold (total exact, spread in time
estimated: counted as estimated for the primary data share); ``ROLLOVER`` the
counter wrapped at its declared width; ``RESET`` the counter fell (reset or
meter replacement); ``SPIKE`` a jump the rated rate cannot explain;
``NON_MONOTONIC`` a backwards step within the counter's resolution, ignored.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit

from compute.kernels_alloc import allocate_overlap, split_at_knots, weight_segments
from compute.kernels_check import F64, I64, floats, ints, require_sorted, same_length
from compute.kernels_dequant import FractionState, dequantise
from compute.kernels_many import allocate_overlap_many, knots_many, merge_pairs
from compute.kernels_smooth import SmoothCarry, smooth_rate, smooth_rate_resume

__all__ = [
    "CATCH_UP", "ESTIMATED", "GAP", "MEASURED", "NON_MONOTONIC", "NO_TS", "OPEN_END", "RESET",
    "ROLLOVER", "SPIKE", "CounterIntervals", "CounterState", "FractionState", "SmoothCarry",
    "allocate_overlap", "allocate_overlap_many", "dequantise", "knots_many", "merge_pairs",
    "resample_energy", "smooth_rate", "smooth_rate_resume", "split_at_knots", "sum_by_key",
    "unwrap_counter", "weight_segments",
]

MEASURED = 0
ESTIMATED = 1
GAP = 2
ROLLOVER = 4
RESET = 8
SPIKE = 16
NON_MONOTONIC = 32
CATCH_UP = 64  # a frozen register caught up: total measured, its spread in time estimated

NO_TS = -(2**63)  # "no reading yet" in CounterState.last_ts
OPEN_END = 2**63 - 1  # end of a batch still running (ns)
NS_PER_HOUR = 3_600_000_000_000.0
# A fall that wraps to within 1.5x what the rated rate allows (plus one count)
# is a rollover; anything larger cannot be one and is a reset.
ROLLOVER_SLACK = 1.5


class CounterState(NamedTuple):
    """What ``unwrap_counter`` carries from one call to the next, per meter.

    ``last_ts`` (ns, ``NO_TS`` before the first reading), ``baseline`` (counter
    unit, the value the next delta is taken from), ``last_rate`` (counter unit
    per hour of the last measured interval, NaN when none), ``skipped``
    (readings dropped so far: not after the previous one, or not finite),
    ``moved_ts`` (ns, the last reading at which the counter rose: a register
    frozen for a while catches up later by everything it missed).
    """

    last_ts: int = NO_TS
    baseline: float = math.nan
    last_rate: float = math.nan
    skipped: int = 0
    moved_ts: int = NO_TS


class CounterIntervals(NamedTuple):
    """``unwrap_counter``'s result: one interval per reading with a predecessor."""

    start: I64  # ns, the previous reading's timestamp
    end: I64  # ns, this reading's timestamp
    energy: F64  # counter unit, >= 0
    estimated: F64  # counter unit, the part of energy that is an estimate
    flags: I64  # bits MEASURED..NON_MONOTONIC
    state: CounterState  # pass to the next call


def unwrap_counter(
    ts: I64, value: F64, state: CounterState, wrap: float, rated_per_h: float,
    resolution: float, gap_ns: int,
) -> CounterIntervals:
    """Interval energy from one meter's cumulative counter readings.

    ``ts`` (ns) and ``value`` (counter unit: kWh, Nm3, t) are the readings in
    arrival order, ts ascending; a reading whose ts is not after the previous
    accepted one, or whose value is not finite, is skipped and counted in
    ``state.skipped``. ``state`` is what the previous call returned
    (``CounterState()`` for a new meter): cutting a stream into consecutive
    chunks and passing the state along gives exactly the result of one call.

    Meter parameters: ``wrap`` the counter unit at which the counter wraps
    (e.g. 2**32 x 0.1 kWh = 429 496 729.6 kWh for the em24; 0 = never);
    ``rated_per_h`` the most the meter can register per hour (counter unit/h;
    ``inf`` disables spike detection); ``resolution`` one count in counter
    unit (slack for quantisation and float32 rounding); ``gap_ns`` the longest
    interval still taken as continuous.

    Per interval ``dt`` (hours) with ``cap = rated_per_h x dt``: a delta in
    [0, cap + resolution] is measured, where for a rise ``dt`` reaches back to the
    last reading at which the counter rose (a frozen register — a stuck meter, a
    stalled device — catches up by real energy, not a spike; when that catch-up
    is flagged CATCH_UP and ESTIMATED: total exact, spread estimated — and GAP too
    when it spans more than ``gap_ns``); a fall within ``resolution`` is
    NON_MONOTONIC (energy 0, the baseline keeps the higher value); a fall that
    unwraps (value + (wrap - baseline)) to at most 1.5 cap + resolution is a
    ROLLOVER (measured); any other fall is a RESET (new baseline, energy
    estimated as min(last_rate, rated) x dt, 0 with no rate yet); a delta,
    unwrapped or not, above cap + resolution is a SPIKE (the jump is not
    energy: new baseline, energy estimated like a reset). An interval longer
    than ``gap_ns`` is also flagged GAP and ESTIMATED with ``estimated =
    energy``. ``last_rate`` is learned only from MEASURED or ROLLOVER
    intervals. So energy is always within [0, rated x span + resolution].
    """
    if not isinstance(state, CounterState):
        # a float64 carry would round last_ts to 256 ns and break cut invariance
        raise TypeError(f"state: expected a CounterState, got {type(state).__name__}")
    ts = ints("ts", ts)
    value = floats("value", value)
    same_length(ts=ts, value=value)
    if not (wrap >= 0.0 and resolution >= 0.0 and rated_per_h > 0.0 and gap_ns > 0):
        raise ValueError(
            f"meter parameters out of range: wrap={wrap} (>= 0), resolution={resolution} "
            f"(>= 0), rated_per_h={rated_per_h} (> 0), gap_ns={gap_ns} (> 0)"
        )
    (start, end, energy, estimated, flags, last_ts, baseline, last_rate, skipped,
     moved_ts) = _unwrap_impl(
        ts, value, np.int64(state.last_ts), float(state.baseline), float(state.last_rate),
        np.int64(state.skipped), float(wrap), float(rated_per_h), float(resolution),
        np.int64(gap_ns), np.int64(state.moved_ts),
    )
    return CounterIntervals(
        start, end, energy, estimated, flags,
        CounterState(int(last_ts), float(baseline), float(last_rate), int(skipped),
                     int(moved_ts)),
    )


@njit(cache=True)
def _unwrap_impl(  # a meter's state and parameters, flat for numba
    ts: I64, value: F64, last_ts: np.int64, baseline: float, last_rate: float,
    skipped: np.int64, wrap: float, rated_per_h: float, resolution: float, gap_ns: np.int64,
    moved_ts: np.int64,
) -> tuple[I64, I64, F64, F64, I64, np.int64, float, float, np.int64, np.int64]:
    n = ts.shape[0]
    start = np.empty(n, np.int64)
    end = np.empty(n, np.int64)
    energy = np.empty(n, np.float64)
    estimated = np.empty(n, np.float64)
    flags = np.empty(n, np.int64)
    k = 0
    for j in range(n):
        t = ts[j]
        v = value[j]
        if not np.isfinite(v) or (last_ts != NO_TS and t <= last_ts):
            skipped += 1
            continue
        if last_ts == NO_TS:  # the first reading only sets the baseline
            last_ts = t
            moved_ts = t
            baseline = v
            continue
        dt_h = (t - last_ts) / NS_PER_HOUR
        since = last_ts if moved_ts == NO_TS or moved_ts > last_ts else moved_ts
        span_h = (t - since) / NS_PER_HOUR  # back to the counter's last rise
        cap = rated_per_h * dt_h
        f = MEASURED
        e = 0.0
        new_base = v
        delta = v - baseline
        if delta < 0.0:
            if -delta <= resolution:
                f = NON_MONOTONIC
                new_base = baseline
            elif wrap > 0.0 and v + (wrap - baseline) <= ROLLOVER_SLACK * cap + resolution:
                f = ROLLOVER
                delta = v + (wrap - baseline)
            else:
                f = RESET | ESTIMATED
        if (f | ROLLOVER) == ROLLOVER:  # measured so far, wrapped or not
            if delta > rated_per_h * span_h + resolution:
                f |= SPIKE | ESTIMATED
            else:
                e = delta
        if f & ESTIMATED:  # reset or spike: the counter's step is not energy
            if not np.isnan(last_rate):
                e = min(last_rate, rated_per_h) * dt_h
        elif f != NON_MONOTONIC and t - last_ts <= gap_ns:
            last_rate = e / (span_h if e > cap + resolution else dt_h)
        if e > cap + resolution:  # more than this interval allows: a frozen register's catch-up
            f |= CATCH_UP | ESTIMATED
        est = e if f & ESTIMATED else 0.0
        if t - last_ts > gap_ns or (f & CATCH_UP and t - since > gap_ns):
            f |= GAP | ESTIMATED
            est = e
        if f != NON_MONOTONIC and (e > 0.0 or f & (RESET | SPIKE)):
            moved_ts = t
        start[k] = last_ts
        end[k] = t
        energy[k] = e
        estimated[k] = est
        flags[k] = f
        k += 1
        last_ts = t
        baseline = new_base
    return (start[:k], end[:k], energy[:k], estimated[:k], flags[:k],
            last_ts, baseline, last_rate, skipped, moved_ts)


def resample_energy(src_start: I64, src_end: I64, src_energy: F64,
                    dst_start: I64, dst_end: I64) -> F64:
    """Energy of one meter's intervals re-binned onto another meter's intervals.

    Each source interval's energy is taken as spread uniformly over
    [src_start, src_end) (ns); a zero-length source interval is a point that
    counts in the destination interval containing it. Returns the energy
    (source unit) falling in each [dst_start, dst_end); energy outside every
    destination interval is not counted anywhere. Both sides sorted by start
    (non-overlapping for the O(n + m) bound). Used for the parent residual:
    parent energy minus the children's energy resampled onto its intervals.
    """
    src_start, src_end = ints("src_start", src_start), ints("src_end", src_end)
    src_energy = floats("src_energy", src_energy)
    dst_start, dst_end = ints("dst_start", dst_start), ints("dst_end", dst_end)
    same_length(src_start=src_start, src_end=src_end, src_energy=src_energy)
    same_length(dst_start=dst_start, dst_end=dst_end)
    require_sorted("src_start", src_start)
    require_sorted("dst_start", dst_start)
    return _resample_impl(src_start, src_end, src_energy, dst_start, dst_end)


@njit(cache=True)
def _resample_impl(ss: I64, se: I64, sv: F64, ds: I64, de: I64) -> F64:
    n = ss.shape[0]
    m = ds.shape[0]
    out = np.zeros(m, np.float64)
    i = 0
    for j in range(m):
        a = ds[j]
        b = de[j]
        # source intervals wholly before this destination never count again
        while i < n and (se[i] < a or (se[i] == a and ss[i] < a)):
            i += 1
        i2 = i
        while i2 < n and ss[i2] < b:
            s = ss[i2]
            e = se[i2]
            if e > s:
                overlap = min(e, b) - max(s, a)
                if overlap > 0:
                    out[j] += sv[i2] * (overlap / (e - s))
            elif s >= a:
                out[j] += sv[i2]
            i2 += 1
    return out


def sum_by_key(key: I64, value: F64, n_keys: int) -> F64:
    """Totals of ``value`` per ``key`` in [0, n_keys) (e.g. per batch x carrier), float64."""
    key, value = ints("key", key), floats("value", value)
    same_length(key=key, value=value)
    if key.shape[0] and (int(key.min()) < 0 or int(key.max()) >= n_keys):
        raise ValueError(f"keys must lie in [0, {n_keys})")
    return _sum_by_key_impl(key, value, np.int64(n_keys))


@njit(cache=True)
def _sum_by_key_impl(key: I64, value: F64, n_keys: np.int64) -> F64:
    out = np.zeros(n_keys, np.float64)
    for i in range(key.shape[0]):
        out[key[i]] += value[i]
    return out
