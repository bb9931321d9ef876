"""Plain-Python versions of the compute kernels, the oracles their tests compare against.

Written for clarity, not speed, and as independently as the contract allows:
the counter unwrap follows the same rules step by step (so results match
exactly); the allocation, split and resampling oracles work per time step on
small integer times, the way the simulator's ground truth is accounted
(docs/simulators.md, "Allocation conventions"), instead of sweeping segments.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Sequence

from compute import kernels as K

NS_PER_HOUR = 3_600_000_000_000.0


def unwrap_counter(ts: Sequence[int], value: Sequence[float], state: K.CounterState,
                   wrap: float, rated_per_h: float, resolution: float, gap_ns: int
                   ) -> tuple[list[tuple[int, int, float, float, int]], K.CounterState]:
    """Intervals (start, end, energy, estimated, flags) and the state after them."""
    last_ts, base, rate, skipped, moved = state
    out: list[tuple[int, int, float, float, int]] = []
    for t, v in zip(ts, value, strict=True):
        if not math.isfinite(v) or (last_ts != K.NO_TS and t <= last_ts):
            skipped += 1
            continue
        if last_ts == K.NO_TS:
            last_ts, base, moved = t, v, t
            continue
        dt_h = (t - last_ts) / NS_PER_HOUR
        since = last_ts if moved == K.NO_TS or moved > last_ts else moved
        span_h = (t - since) / NS_PER_HOUR  # a frozen register catches up: back to its last rise
        cap = rated_per_h * dt_h
        if v - base < 0 and base - v <= resolution:
            kind, new_base, energy = "jitter", base, 0.0
        elif v - base < 0 and wrap > 0 and v + (wrap - base) <= 1.5 * cap + resolution:
            kind, new_base, energy = "rollover", v, v + (wrap - base)
        elif v - base < 0:
            kind, new_base, energy = "reset", v, 0.0
        else:
            kind, new_base, energy = "measured", v, v - base
        flags = {"jitter": K.NON_MONOTONIC, "rollover": K.ROLLOVER,
                 "reset": K.RESET | K.ESTIMATED, "measured": K.MEASURED}[kind]
        if kind in ("rollover", "measured") and energy > rated_per_h * span_h + resolution:
            flags |= K.SPIKE | K.ESTIMATED
        if flags & K.ESTIMATED:
            energy = 0.0 if math.isnan(rate) else min(rate, rated_per_h) * dt_h
        elif kind != "jitter" and t - last_ts <= gap_ns:
            rate = energy / (span_h if energy > cap + resolution else dt_h)
        if energy > cap + resolution:
            flags |= K.CATCH_UP | K.ESTIMATED
        estimated = energy if flags & K.ESTIMATED else 0.0
        if t - last_ts > gap_ns or (flags & K.CATCH_UP and t - since > gap_ns):
            flags |= K.GAP | K.ESTIMATED
            estimated = energy
        if kind != "jitter" and (energy > 0 or flags & (K.RESET | K.SPIKE)):
            moved = t
        out.append((last_ts, t, energy, estimated, flags))
        last_ts, base = t, new_base
    return out, K.CounterState(last_ts, base, rate, skipped, moved)


def split_at_knots(start: Sequence[int], end: Sequence[int], energy: Sequence[float],
                   knot: Sequence[int], w_before: Sequence[float], w_after: Sequence[float]
                   ) -> list[tuple[int, int, float, int]]:
    """Segments (start, end, energy, parent), the first part by the weighted durations."""
    out: list[tuple[int, int, float, int]] = []
    for i, (s, e, en, t, wb, wa) in enumerate(
            zip(start, end, energy, knot, w_before, w_after, strict=True)):
        if not s < t < e:
            out.append((s, e, en, i))
            continue
        a, b = wb * (t - s), wa * (e - t)
        valid = a >= 0 and b >= 0 and 0 < a + b < math.inf
        frac = a / (a + b) if valid else (t - s) / (e - s)
        out += [(s, t, en * frac, i), (t, e, en * (1 - frac), i)]
    return out


def running(b_start: Sequence[int], b_end: Sequence[int], t: int) -> list[int]:
    """The batches running at time ``t`` (a batch runs on [start, end))."""
    return [j for j, (s, e) in enumerate(zip(b_start, b_end, strict=True)) if s <= t < e]


def weight_segments(b_start: Sequence[int], b_end: Sequence[int]
                    ) -> list[tuple[int, int, list[int]]]:
    """(start, end, running batches) between consecutive distinct starts and ends."""
    bounds = sorted(set(b_start) | set(b_end))
    return [(lo, hi, running(b_start, b_end, lo)) for lo, hi in itertools.pairwise(bounds)]


def next_batch(b_start: Sequence[int], t: int) -> int | None:
    """The next batch to start after ``t``: earliest start, then lowest index."""
    later = [j for j, s in enumerate(b_start) if s > t]
    return min(later, key=lambda j: (b_start[j], j)) if later else None


def allocate_steps(i_start: Sequence[int], i_end: Sequence[int], i_energy: Sequence[float],
                   b_start: Sequence[int], b_end: Sequence[int], b_weight: Sequence[float],
                   idle_next: bool) -> tuple[dict[tuple[int, int], float], list[float]]:
    """Per unit time step, as the ground truth does: {(interval, batch): energy}, unallocated.

    An interval's energy is spread evenly over its steps (a zero-length
    interval is one point at its start); each step's share goes to the batches
    running then by weight (equally when the weights sum to 0), else it is idle.
    """
    pairs: dict[tuple[int, int], float] = defaultdict(float)
    unallocated = [0.0] * len(i_start)
    for i, (s, e, energy) in enumerate(zip(i_start, i_end, i_energy, strict=True)):
        steps = range(s, e) if e > s else range(s, s + 1)
        per_step = energy / len(steps)
        for t in steps:
            now = running(b_start, b_end, t)
            total = sum(b_weight[j] for j in now)
            if now:
                for j in now:
                    share = b_weight[j] / total if total > 0 else 1 / len(now)
                    pairs[i, j] += per_step * share
                continue
            nxt = next_batch(b_start, t) if idle_next else None
            if nxt is None:
                unallocated[i] += per_step
            else:
                pairs[i, nxt] += per_step
    return dict(pairs), unallocated


def resample_steps(src_start: Sequence[int], src_end: Sequence[int],
                   src_energy: Sequence[float], dst_start: Sequence[int],
                   dst_end: Sequence[int]) -> list[float]:
    """Each destination interval's sum of the source's per-step energy (points at their start)."""
    out = [0.0] * len(dst_start)
    for s, e, energy in zip(src_start, src_end, src_energy, strict=True):
        steps = range(s, e) if e > s else range(s, s + 1)
        for t in steps:
            for j, (a, b) in enumerate(zip(dst_start, dst_end, strict=True)):
                if a <= t < b:
                    out[j] += energy / len(steps)
    return out


def sum_by_key(key: Sequence[int], value: Sequence[float], n_keys: int) -> list[float]:
    out = [0.0] * n_keys
    for k, v in zip(key, value, strict=True):
        out[k] += v
    return out
