"""Smoothing a parent's residual rate in time (compute.kernels smooth_rate and
smooth_rate_resume), against a plain reference.

What an auditor relies on: the residual a batch is given is the same whether the
worker computed it in one go or micro-batch by micro-batch (resuming its sums),
and smoothing only moves timing blips, it does not invent energy.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from compute import kernels as K
from compute.kernels_check import F64, I64

S = 10**9


def reference(start: list[int], end: list[int], energy: list[float], half: int) -> list[float]:
    """The definition: each interval's length × the mean rate within ± half of its middle
    (energy uniform within each interval; the mean over the part of the window covered)."""
    out = []
    for i in range(len(start)):
        mid = start[i] + (end[i] - start[i]) // 2
        a, b = mid - half, mid + half
        total = covered = 0.0
        for s, e, x in zip(start, end, energy, strict=True):
            lo, hi = max(s, a), min(e, b)
            if hi > lo and e > s:
                total += x * ((hi - lo) / (e - s))
                covered += hi - lo
        out.append(total / covered * (end[i] - start[i]) if covered > 0 else energy[i])
    return out


@st.composite
def residual_streams(draw: st.DrawFn) -> tuple[I64, I64, F64]:
    n = draw(st.integers(1, 40))
    lengths = draw(st.lists(st.integers(1, 120), min_size=n, max_size=n))
    gaps = draw(st.lists(st.sampled_from([0, 0, 0, 5, 300]), min_size=n, max_size=n))
    energy = draw(st.lists(st.floats(-5.0, 50.0, allow_nan=False), min_size=n, max_size=n))
    start, t = [], 1_700_000_000
    for length, gap in zip(lengths, gaps, strict=True):
        t += gap
        start.append(t)
        t += length
    s = np.array(start, np.int64) * S
    return s, s + np.array(lengths, np.int64) * S, np.array(energy, np.float64)


def test_a_steady_load_stays_steady_and_a_timing_blip_is_spread() -> None:
    start = np.arange(0, 600, 60, dtype=np.int64) * S
    end = start + 60 * S
    steady = np.full(10, 3.0)
    assert np.allclose(K.smooth_rate(start, end, steady, 300 * S), steady)
    blip = steady.copy()
    blip[4], blip[5] = 4.0, 2.0  # one reading late: +1 kWh then -1 kWh
    out = K.smooth_rate(start, end, blip, 300 * S)
    assert np.abs(out - 3.0).max() < 0.2  # the blip is spread over its neighbours
    assert abs(out.sum() - blip.sum()) < 1e-9  # and nothing is invented


@settings(max_examples=150, deadline=None)
@given(residual_streams(), st.sampled_from([0, 30, 300, 900]))
def test_smooth_rate_is_the_reference(stream: tuple[I64, I64, F64], half_s: int) -> None:
    start, end, energy = stream
    got = K.smooth_rate(start, end, energy, half_s * S)
    want = reference(start.tolist(), end.tolist(), energy.tolist(), half_s * S)
    assert np.allclose(got, want, rtol=1e-12, atol=1e-12)


@settings(max_examples=200, deadline=None)
@given(residual_streams(), st.sampled_from([30, 300, 900]), st.data())
def test_resuming_micro_batch_by_micro_batch_is_bit_for_bit_one_go(
        stream: tuple[I64, I64, F64], half_s: int, data: st.DataObject) -> None:
    """Intervals arrive in micro-batches; the window loses settled intervals at its
    front, and the newest interval may be revised (a late reading splits it)."""
    start, end, energy = stream
    n = len(start)
    cuts = sorted(data.draw(st.lists(st.integers(1, n), max_size=5)))
    carry = None
    front = 0
    for k in [*cuts, n]:
        front = data.draw(st.integers(front, max(front, k - 1)))  # settled and trimmed
        e = energy[front:k].copy()
        if data.draw(st.booleans()) and len(e):
            e[-1] += 1.0  # the last interval changed since the previous call
        got, carry = K.smooth_rate_resume(start[front:k], end[front:k], e, half_s * S, carry)
        want = K.smooth_rate(start[front:k], end[front:k], e, half_s * S)
        assert np.array_equal(got, want)
