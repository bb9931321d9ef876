"""From one meter's readings to its counter intervals, incrementally.

Per meter the worker keeps a :class:`MeterCarry` (the counter's last reading,
baseline and rate, the power readings the next intervals read, the hidden
fraction's range, the carbon meter's CO2 counter) and
turns each micro-batch of readings into new :class:`compute.model.Intervals`
with the unwrap kernel; an integer counter's shown counts are then refined with
its power channel (``kernels.dequantise``: the energy hidden below one count,
never more than a count off). Cutting the stream anywhere gives the same intervals
(the carry holds everything the next cut needs; tested). Readings of quality
``bad`` are not counter values and are skipped (by intake).

Each channel's readings come in the order they arrived. One older than a reading
of its channel that arrived before it (in this micro-batch or an earlier one) is
*out of order*: it is not used and is counted (``MeterCarry.out_of_order``; the
worker reports it). Sorting it into place instead would give a result that
depends on whether it came in the same micro-batch as the newer reading, and
the interval it would split may already be stored. A repeated time stamp is not
out of order: the unwrap skips a repeated counter reading (``CounterState.skipped``),
and of power readings the later holds. Readings that are in order but late — a
meter back after its batches were final — become *late* intervals, which
:mod:`compute.revise` takes up.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from compute import kernels
from compute.model import F64, I64, Intervals, f64, i64


@dataclass(frozen=True)
class CounterSpec:
    """What the unwrap needs of a meter's counter (reading unit as configured)."""

    channel: str
    factor: float  # canonical units per reading unit (Wh -> kWh: 0.001)
    wrap: float  # reading unit; 0 = never wraps (float counter)
    resolution: float  # reading unit per count; 0 for float counters
    rated_per_h: float  # canonical unit per hour
    gap_s: float  # an interval longer than this is a gap


@dataclass
class MeterCarry:
    """A meter's state between micro-batches (canonical units)."""

    energy: kernels.CounterState = field(default_factory=kernels.CounterState)
    co2: kernels.CounterState = field(default_factory=kernels.CounterState)
    # the power readings the next intervals may still read (sample and hold): the last
    # at or before the counter's last reading, and every later one (ns, canonical rate
    # unit). A micro-batch may bring a meter's power without its counter (the counter's
    # request failed or was too slow), and the next interval starts back at the counter
    power_ts: I64 = field(default_factory=i64)
    power: F64 = field(default_factory=f64)
    # an integer counter's hidden fraction (kernels.dequantise); None before its first interval
    fraction: kernels.FractionState | None = None
    # readings not used for arriving out of order, since this carry was made or restored
    # (for reporting; not stored)
    out_of_order: int = 0


@dataclass(frozen=True)
class Readings:
    """One meter's readings of one micro-batch, by channel: (ts ns sorted, value)."""

    counter: tuple[I64, F64]
    power: tuple[I64, F64] = (i64(), f64())
    co2: tuple[I64, F64] = (i64(), f64())


def _unwrap(ts: I64, value: F64, state: kernels.CounterState,
            spec: CounterSpec) -> kernels.CounterIntervals:
    f = spec.factor
    return kernels.unwrap_counter(
        ts, f64(value * f), state, wrap=spec.wrap * f, rated_per_h=spec.rated_per_h,
        resolution=spec.resolution * f, gap_ns=int(spec.gap_s * 1e9))


# power readings held for a counter that stays silent (each poll's, until the counter is
# read again): about a week at one a minute; beyond it the oldest after the anchor go
MAX_HELD_POWER = 10_000


def _power_at(t: I64, p_ts: I64, p_val: F64) -> F64:
    """The power channel's value at or before each ``t`` (sample and hold; NaN before
    the first)."""
    if not len(p_ts):
        return f64(np.full(len(t), np.nan))
    k = np.searchsorted(p_ts, t, side="right") - 1
    out = np.where(k >= 0, p_val[np.maximum(k, 0)], np.nan)
    return f64(out)


def in_arrival_order(ts: I64, value: F64, newest_ns: int) -> tuple[I64, F64, int]:
    """A channel's readings of one micro-batch as they arrived, less every one older than
    a reading that arrived before it (``newest_ns``: the newest of earlier micro-batches),
    and how many those were. What is left never goes back in time."""
    n = len(ts)
    # the usual case, cheaply (a few readings per meter and micro-batch): all in order
    if n == 0 or (int(ts[0]) >= newest_ns and (n == 1 or bool((ts[1:] >= ts[:-1]).all()))):
        return ts, value, 0
    before = np.maximum.accumulate(np.concatenate([np.array([newest_ns], np.int64), ts[:-1]]))
    keep = ts >= before
    if keep.all():
        return ts, value, 0
    return i64(ts[keep]), f64(value[keep]), int(len(ts) - np.count_nonzero(keep))


def _held_power(carry: MeterCarry, p_ts: I64, p_val: F64) -> tuple[I64, F64]:
    """The carry's held power readings, then the micro-batch's (``in_arrival_order``
    already: of readings with one time stamp, the one that came last counts)."""
    if not len(carry.power_ts):
        return p_ts, p_val
    return (i64(np.concatenate([carry.power_ts, p_ts])),
            f64(np.concatenate([carry.power, p_val])))


def _in_order(carry: MeterCarry, rd: Readings) -> Readings:
    """``rd`` with every out-of-order reading taken out (and counted in the carry)."""
    held = int(carry.power_ts[-1]) if len(carry.power_ts) else kernels.NO_TS
    counter = in_arrival_order(*rd.counter, carry.energy.last_ts)
    power = in_arrival_order(*rd.power, held)
    co2 = in_arrival_order(*rd.co2, carry.co2.last_ts)
    carry.out_of_order += counter[2] + power[2] + co2[2]
    return Readings(counter[:2], power[:2], co2[:2])


def advance(carry: MeterCarry, spec: CounterSpec, rd: Readings,
            co2_spec: CounterSpec | None = None) -> Intervals:
    """New intervals from one micro-batch (each channel's readings as they arrived);
    ``carry`` moves past them."""
    rd = _in_order(carry, rd)
    ts, value = rd.counter
    out = _unwrap(ts, value, carry.energy, spec)
    carry.energy = out.state
    start, end = out.start, out.end
    # canonical rate unit (the caller converts W to kW), with what the carry holds
    p_ts, p_val = _held_power(carry, *rd.power)
    # intervals follow one another (each starts at the previous one's end): one look-up
    # at every end and at the first start gives both ends' power
    at = _power_at(np.concatenate([start[:1], end]), p_ts, p_val)
    p_start, p_end = at[:-1], at[1:]
    # keep what the next intervals read: from the last reading at or before the
    # counter's last one on (the one-shot result for any cut of the stream)
    keep = max(int(np.searchsorted(p_ts, carry.energy.last_ts, side="right")) - 1, 0)
    keep = max(keep, len(p_ts) - MAX_HELD_POWER)
    carry.power_ts, carry.power = p_ts[keep:], p_val[keep:]
    energy, estimated = out.energy, out.estimated
    if spec.resolution > 0 and len(end):  # whole counts shown: estimate what is hidden
        res = spec.resolution * spec.factor
        energy, carry.fraction = kernels.dequantise(
            start, end, out.energy, out.flags, p_start, p_end, res,
            carry.fraction or kernels.FractionState.fresh(res))
        # an interval estimated whole stays so; a part estimated stays that part at most
        # (a measured interval of no counts, refined to a little energy, stays measured)
        whole = ((out.flags & kernels.ESTIMATED) != 0) & (out.estimated >= out.energy)
        estimated = f64(np.where(whole, energy, np.minimum(out.estimated, energy)))
    co2 = np.full(len(end), np.nan)
    if co2_spec is not None and len(rd.co2[0]):
        c_ts, c_val = rd.co2
        c = _unwrap(c_ts, c_val, carry.co2, co2_spec)
        carry.co2 = c.state
        idx = np.searchsorted(c.end, end)
        hit = (idx < len(c.end)) & (c.end[np.minimum(idx, max(len(c.end) - 1, 0))] == end)
        co2[hit] = c.energy[idx[hit]] * 1e3  # a kg counter is canonical in t: back to kg
    return Intervals(start, end, energy, estimated, out.flags, p_start, p_end, f64(co2))
