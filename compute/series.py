"""From one meter's readings to its counter intervals, incrementally.

Per meter the worker keeps a :class:`MeterCarry` (the counter's last reading,
baseline and rate, the last power value, the carbon meter's CO2 counter) and
turns each micro-batch of readings into new :class:`compute.model.Intervals`
with the unwrap kernel; an integer counter's shown counts are then refined with
its power channel (``kernels.dequantise``: the energy hidden below one count,
never more than a count off). Cutting the stream anywhere gives the same intervals
(the carry holds everything the next cut needs; tested). Readings of quality
``bad`` are not counter values and are skipped (by intake); a reading not
newer than the meter's last one (repeated, or out of order within the meter)
is skipped and counted in the carry (``CounterState.skipped``). Readings that
are in order but late — a meter back after its batches were final — become
*late* intervals, which :mod:`compute.revise` takes up.
"""

from __future__ import annotations

import math
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
    power_ts: int = -1
    power: float = math.nan  # canonical rate unit
    # an integer counter's hidden fraction (kernels.dequantise); None before its first interval
    fraction: kernels.FractionState | None = None


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


def _power_at(t: I64, p_ts: I64, p_val: F64, prior_ts: int, prior: float) -> F64:
    """The power channel's value at or before each ``t`` (sample and hold)."""
    all_ts = np.concatenate([i64([prior_ts]), p_ts])
    all_val = np.concatenate([f64([prior]), p_val])
    k = np.searchsorted(all_ts, t, side="right") - 1
    out = np.where(k >= 0, all_val[np.maximum(k, 0)], np.nan)
    return f64(out)


def advance(carry: MeterCarry, spec: CounterSpec, rd: Readings,
            co2_spec: CounterSpec | None = None) -> Intervals:
    """New intervals from one micro-batch; ``carry`` moves past them."""
    ts, value = rd.counter
    out = _unwrap(ts, value, carry.energy, spec)
    carry.energy = out.state
    start, end = out.start, out.end
    p_ts, p_val = rd.power  # canonical rate unit (the caller converts W to kW)
    # intervals follow one another (each starts at the previous one's end): one look-up
    # at every end and at the first start gives both ends' power
    at = _power_at(np.concatenate([start[:1], end]), p_ts, p_val, carry.power_ts, carry.power)
    p_start, p_end = at[:-1], at[1:]
    if len(p_ts):
        carry.power_ts, carry.power = int(p_ts[-1]), float(p_val[-1])
    energy, estimated = out.energy, out.estimated
    if spec.resolution > 0 and len(end):  # whole counts shown: estimate what is hidden
        res = spec.resolution * spec.factor
        energy, carry.fraction = kernels.dequantise(
            start, end, out.energy, out.flags, p_start, p_end, res,
            carry.fraction or kernels.FractionState.fresh(res))
        # an estimated interval stays estimated whole; a part estimated stays that part
        estimated = f64(np.where(out.estimated >= out.energy, energy,
                                 np.minimum(out.estimated, energy)))
    co2 = np.full(len(end), np.nan)
    if co2_spec is not None and len(rd.co2[0]):
        c_ts, c_val = rd.co2
        c = _unwrap(c_ts, c_val, carry.co2, co2_spec)
        carry.co2 = c.state
        idx = np.searchsorted(c.end, end)
        hit = (idx < len(c.end)) & (c.end[np.minimum(idx, max(len(c.end) - 1, 0))] == end)
        co2[hit] = c.energy[idx[hit]] * 1e3  # a kg counter is canonical in t: back to kg
    return Intervals(start, end, energy, estimated, out.flags, p_start, p_end, f64(co2))
