"""Counter kernels (compute/kernels.py): unwrap, resample, totals, against the references.

Golden cases are named after the fault they pin; the properties run on
hypothesis-generated streams: exact agreement with the plain-Python reference,
the same result however a stream is cut into micro-batches, and — on streams
built from a true consumption with rollovers, resets and spikes injected — no
negative or huge energy, the faults flagged and every measured interval exact.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compute import kernels as K
from compute.kernels_check import F64, I64
from tests.compute import reference as ref
from tests.compute.strategies import tilings

Stream = tuple[I64, F64, dict[str, float]]

S = 1_000_000_000  # ns per second
T0 = 1_764_000_000_123_456_789  # ns, not a multiple of 256: float64 would round it
EM24_WRAP = 2**32 * 0.1  # kWh: the em24's 32-bit counter of 0.1 kWh counts


def i64(*v: int) -> I64:
    return np.array(v, dtype=np.int64)


def f64(*v: float) -> F64:
    return np.array(v, dtype=np.float64)


def minutes(n: int) -> I64:
    return T0 + np.arange(n, dtype=np.int64) * 60 * S


def unwrap(ts: I64, value: F64, *, wrap: float = 0.0, rated: float = 600.0,
           resolution: float = 0.1, gap_s: float = 300.0,
           state: K.CounterState | None = None) -> K.CounterIntervals:
    return K.unwrap_counter(ts, value, state or K.CounterState(), wrap, rated, resolution,
                            int(gap_s * S))


def same_state(a: K.CounterState, b: K.CounterState) -> bool:
    return all(x == y or (isinstance(x, float) and math.isnan(x) and math.isnan(y))
               for x, y in zip(a, b, strict=True))


# --- golden cases ---------------------------------------------------------------------------

def test_em24_32bit_rollover_is_unwrapped_and_measured() -> None:
    # 1 kWh/min at 60 kW; the counter passes 429 496 729.6 kWh and starts again at 0
    r = unwrap(minutes(4), f64(EM24_WRAP - 1.5, EM24_WRAP - 0.5, 0.5, 1.5), wrap=EM24_WRAP)
    assert r.flags.tolist() == [K.MEASURED, K.ROLLOVER, K.MEASURED]
    np.testing.assert_allclose(r.energy, [1.0, 1.0, 1.0], rtol=1e-6)
    assert r.estimated.tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("new_counter", [0.0, 12.5])
def test_reset_starts_a_new_baseline_and_estimates_from_the_last_rate(
        new_counter: float) -> None:
    r = unwrap(minutes(5), f64(1000.0, 1001.0, 1002.0, new_counter, new_counter + 1.0))
    assert r.flags.tolist() == [0, 0, K.RESET | K.ESTIMATED, 0]
    # the interval of the reset: 60 kWh/h learned before it, over one minute
    np.testing.assert_allclose(r.energy, [1.0, 1.0, 1.0, 1.0])
    assert r.estimated.tolist() == [0.0, 0.0, r.energy[2], 0.0]
    assert r.state.baseline == new_counter + 1.0


def test_reset_with_no_rate_known_books_nothing_rather_than_a_guess() -> None:
    r = unwrap(minutes(2), f64(5000.0, 0.0))
    assert r.flags.tolist() == [K.RESET | K.ESTIMATED] and r.energy.tolist() == [0.0]


def test_spike_of_500_kwh_is_not_energy() -> None:
    r = unwrap(minutes(5), f64(100.0, 101.0, 602.0, 603.0, 604.0))
    assert r.flags.tolist() == [0, K.SPIKE | K.ESTIMATED, 0, 0]
    np.testing.assert_allclose(r.energy, [1.0, 1.0, 1.0, 1.0])
    assert r.estimated[1] == r.energy[1]


def test_stuck_register_catching_up_is_energy_not_a_spike() -> None:
    # 55 kW for 5 minutes; the registers froze for the middle three (the faults scenario's
    # `stuck`, or a device stalled): the catch-up is real energy, booked where it shows
    ts = minutes(6)
    r = unwrap(ts, f64(100.0, 100.0 + 55 / 60, 100.0 + 55 / 60, 100.0 + 55 / 60,
                       100.0 + 4 * 55 / 60, 100.0 + 5 * 55 / 60), rated=60.0, gap_s=120)
    # the catch-up's total is measured, its spread in time estimated (and a gap: > 120 s)
    assert r.flags.tolist() == [0, 0, 0, K.CATCH_UP | K.GAP | K.ESTIMATED, 0]
    assert r.energy.sum() == pytest.approx(5 * 55 / 60)
    assert r.estimated[3] == r.energy[3] == pytest.approx(3 * 55 / 60)


def test_spike_estimate_is_capped_by_the_rated_rate() -> None:
    # a rate learned from one count in one second would exceed what the meter can do
    ts = T0 + i64(0, 1, 61) * S
    r = unwrap(ts, f64(0.0, 0.1, 1000.0), rated=60.0, resolution=0.1)
    assert r.flags[1] == K.SPIKE | K.ESTIMATED and r.energy[1] == pytest.approx(1.0)


def test_float32_backwards_jitter_is_ignored_and_totals_stay_exact() -> None:
    hi = float(np.float32(123456.79))
    lo = float(np.nextafter(np.float32(hi), np.float32(0)))  # one float32 step back
    r = unwrap(minutes(4), f64(hi, lo, hi, hi + 1.0), resolution=0.01)
    assert r.flags.tolist() == [K.NON_MONOTONIC, 0, 0]
    assert r.energy.tolist() == [0.0, 0.0, 1.0]
    assert r.energy.sum() == (hi + 1.0) - hi


def test_gap_keeps_its_exact_total_flagged_estimated() -> None:
    ts = T0 + i64(0, 60, 1860, 1920) * S  # 30 min without readings, 5 min threshold
    r = unwrap(ts, f64(10.0, 11.0, 41.0, 42.0), gap_s=300)
    assert r.flags.tolist() == [0, K.GAP | K.ESTIMATED, 0]
    assert r.energy.tolist() == [1.0, 30.0, 1.0]
    assert r.estimated.tolist() == [0.0, 30.0, 0.0]


def test_stale_repeated_and_non_finite_readings_are_skipped_and_counted() -> None:
    ts = T0 + i64(0, 60, 60, 30, 120, 180) * S
    r = unwrap(ts, f64(1.0, 2.0, 2.0, 1.5, math.nan, 3.0))
    assert r.end.tolist() == [T0 + 60 * S, T0 + 180 * S] and r.state.skipped == 3
    assert r.energy.tolist() == [1.0, 1.0]


def test_wrappers_refuse_what_the_kernels_cannot_trust() -> None:
    with pytest.raises(TypeError, match="ts: expected a 1-d int64 array"):
        unwrap(minutes(2).astype(np.float64), f64(1.0, 2.0))
    with pytest.raises(TypeError, match="state: expected a CounterState"):
        K.unwrap_counter(minutes(2), f64(1.0, 2.0), np.zeros(4), 0.0, 1.0, 0.1, S)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="different lengths"):
        unwrap(minutes(3), f64(1.0, 2.0))
    with pytest.raises(ValueError, match="rated_per_h"):
        unwrap(minutes(2), f64(1.0, 2.0), rated=0.0)
    with pytest.raises(ValueError, match="sorted"):
        K.resample_energy(i64(5, 0), i64(6, 1), f64(1, 1), i64(0), i64(9))
    with pytest.raises(ValueError, match="keys"):
        K.sum_by_key(i64(0, 3), f64(1, 1), 3)


# --- properties -----------------------------------------------------------------------------

STEP = st.one_of(
    st.floats(0.0, 12.0),  # ordinary consumption
    st.just(0.0),
    st.floats(-0.1, 0.0),  # jitter, or a small reset when resolution is 0
    st.floats(-5000.0, -1.0),  # reset
    st.floats(50.0, 5000.0),  # spike
)


@st.composite
def counter_streams(draw: st.DrawFn) -> Stream:
    params = {"wrap": draw(st.sampled_from([0.0, 1000.0, EM24_WRAP])),
              "rated": draw(st.sampled_from([60.0, 600.0, math.inf])),
              "resolution": draw(st.sampled_from([0.0, 0.01, 0.1])),
              "gap_s": draw(st.sampled_from([120.0, 3600.0]))}
    n = draw(st.integers(0, 40))
    dts = draw(st.lists(st.integers(-30, 600), min_size=n, max_size=n))
    jitter = draw(st.lists(st.integers(0, 999), min_size=n, max_size=n))
    steps = draw(st.lists(STEP, min_size=n, max_size=n))
    nan_at = draw(st.sets(st.integers(0, max(n - 1, 0)), max_size=2))
    v = draw(st.floats(0.0, params["wrap"] or 1e6))
    ts, values, t = [], [], T0
    for k in range(n):
        t += dts[k] * S + jitter[k]
        v = (v + steps[k]) % params["wrap"] if params["wrap"] else v + steps[k]
        ts.append(t)
        values.append(math.nan if k in nan_at else v)
    return np.array(ts, dtype=np.int64), np.array(values, dtype=np.float64), params


def _unwrap_p(ts: I64, values: F64, p: dict[str, float],
              state: K.CounterState | None = None) -> K.CounterIntervals:
    return unwrap(ts, values, wrap=p["wrap"], rated=p["rated"], resolution=p["resolution"],
                  gap_s=p["gap_s"], state=state)


@settings(max_examples=200, deadline=None)
@given(counter_streams())
def test_unwrap_matches_the_reference_exactly(stream: Stream) -> None:
    ts, values, p = stream
    got = _unwrap_p(ts, values, p)
    want, want_state = ref.unwrap_counter(ts.tolist(), values.tolist(), K.CounterState(),
                                          p["wrap"], p["rated"], p["resolution"],
                                          int(p["gap_s"] * S))
    rows = list(zip(got.start.tolist(), got.end.tolist(), got.energy.tolist(),
                    got.estimated.tolist(), got.flags.tolist(), strict=True))
    assert rows == want
    assert same_state(got.state, want_state)


@settings(max_examples=150, deadline=None)
@given(counter_streams(), st.lists(st.integers(0, 40), max_size=5))
def test_unwrap_is_the_same_however_the_stream_is_cut(stream: Stream, cuts: list[int]) -> None:
    ts, values, p = stream
    whole = _unwrap_p(ts, values, p)
    bounds = [0, *sorted(c for c in cuts if c <= len(ts)), len(ts)]
    state, parts = K.CounterState(), []
    for lo, hi in itertools.pairwise(bounds):
        part = _unwrap_p(ts[lo:hi], values[lo:hi], p, state)
        parts.append(part)
        state = part.state
    for field in ("start", "end", "energy", "estimated", "flags"):
        joined = np.concatenate([getattr(x, field) for x in parts])
        assert np.array_equal(joined, getattr(whole, field)), field
    assert same_state(state, whole.state)


@st.composite
def faulty_meters(draw: st.DrawFn) -> dict[str, Any]:
    """A meter drawing at most 90 % of rated, its integer counter, resets and spikes injected.

    Faults are injected only where a reader could tell them from consumption
    (a reset falls by more than a count and cannot pass for a rollover; a spike
    exceeds what the rated rate allows): that is what the kernel can promise.
    """
    res, bits = draw(st.sampled_from([0.1, 0.01])), draw(st.sampled_from([16, 24]))
    mod, rated = 2**bits, 600.0
    # counter = floor(true energy / resolution) + offset; resets and spikes move the offset
    offset, energy = draw(st.integers(0, mod - 1)), 0.0
    ts, counts, faults = [T0], [offset], []
    rose = T0  # when the counter last rose: a spike must exceed what the rate allows since
    for _ in range(draw(st.integers(1, 40))):
        dt = draw(st.integers(1, 900))
        cap = rated * dt / 3600
        span_cap = rated * ((ts[-1] + dt * S - rose) / S) / 3600
        before = math.floor(energy / res)
        energy += draw(st.floats(0.0, 0.9)) * cap
        fault = draw(st.sampled_from(["none"] * 6 + ["reset", "spike"]))
        if fault == "reset":  # a new counter from the start of the interval
            new_offset = draw(st.integers(0, mod - 1)) - before
            shown = ((math.floor(energy / res) + new_offset) % mod) * res
            prev = (counts[-1] % mod) * res
            if prev - shown > 1.5 * res and shown + mod * res - prev > 1.5 * cap + 2 * res:
                offset = new_offset
            else:
                fault = "none"
        elif fault == "spike":
            low = span_cap + 3 * res
            if low < mod * res / 2:
                offset += math.ceil(draw(st.floats(low, max(low, min(5000.0, mod * res / 2))))
                                    / res)
            else:
                fault = "none"
        ts.append(ts[-1] + dt * S)
        counts.append(math.floor(energy / res) + offset)
        faults.append(fault)
        if counts[-1] != counts[-2]:
            rose = ts[-1]
    return {"ts": np.array(ts, dtype=np.int64),
            "value": np.array([(c % mod) * res for c in counts]), "faults": faults,
            "counts": counts, "res": res, "wrap": mod * res, "mod": mod, "rated": rated}


@settings(max_examples=200, deadline=None)
@given(faulty_meters())
def test_faults_are_flagged_and_never_book_negative_or_huge_energy(m: dict[str, Any]) -> None:
    r = unwrap(m["ts"], m["value"], wrap=m["wrap"], rated=m["rated"], resolution=m["res"],
               gap_s=600)
    dt_h = (r.end - r.start) / 3.6e12
    assert np.all(r.energy >= 0.0)
    # a frozen register may catch up in one interval, never beyond what the rated rate
    # allows since the counter last rose; over any prefix, never beyond rated x elapsed
    elapsed_h = (r.end - r.start[:1]) / 3.6e12
    assert np.all(np.cumsum(r.energy) <= m["rated"] * elapsed_h
                  + m["res"] * np.arange(1, len(r.energy) + 1) + 1e-9)
    assert np.all(dt_h > 0)
    assert np.all((r.estimated >= 0.0) & (r.estimated <= r.energy))
    counts, mod = m["counts"], m["mod"]
    for k, fault in enumerate(m["faults"]):
        flags = int(r.flags[k])
        if fault != "none":
            assert flags & (K.RESET | K.SPIKE) and flags & K.ESTIMATED, (k, fault, flags)
            assert r.estimated[k] == r.energy[k]
            continue
        # a measured interval books exactly the counts the counter advanced
        assert not flags & (K.RESET | K.SPIKE | K.NON_MONOTONIC), (k, flags)
        advanced = (counts[k + 1] - counts[k]) % mod
        assert bool(flags & K.ROLLOVER) == (counts[k + 1] % mod < counts[k] % mod)
        assert r.energy[k] == pytest.approx(advanced * m["res"], abs=1e-6)


# --- resampling and totals ------------------------------------------------------------------

@settings(max_examples=150, deadline=None)
@given(tilings(), tilings(), st.data())
def test_resample_matches_the_per_step_reference(src: tuple[I64, I64], dst: tuple[I64, I64],
                                                  data: st.DataObject) -> None:
    energy = np.array(data.draw(st.lists(st.floats(0.0, 100.0), min_size=len(src[0]),
                                         max_size=len(src[0]))), dtype=np.float64)
    got = K.resample_energy(src[0], src[1], energy, dst[0], dst[1])
    want = ref.resample_steps(src[0].tolist(), src[1].tolist(), energy.tolist(),
                              dst[0].tolist(), dst[1].tolist())
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


def test_resample_onto_a_covering_tiling_keeps_every_kwh() -> None:
    # a child metered every 45 s, its parent every 60 s: the residual needs both on 60 s
    child_t = T0 + np.arange(0, 3601, 45, dtype=np.int64) * S
    rng = np.random.default_rng(7)
    child_e = rng.uniform(0.0, 2.0, len(child_t) - 1)
    parent_t = T0 + np.arange(0, 3601, 60, dtype=np.int64) * S
    got = K.resample_energy(child_t[:-1], child_t[1:], child_e, parent_t[:-1], parent_t[1:])
    assert got.sum() == pytest.approx(child_e.sum(), rel=1e-12)
    # the first parent minute holds the first 45 s and a third of the next reading
    assert got[0] == pytest.approx(child_e[0] + child_e[1] / 3)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.floats(-1e6, 1e6)), max_size=50))
def test_sum_by_key_matches_the_reference(rows: list[tuple[int, float]]) -> None:
    key = np.array([k for k, _ in rows], dtype=np.int64)
    value = np.array([v for _, v in rows], dtype=np.float64)
    assert K.sum_by_key(key, value, 6).tolist() == ref.sum_by_key(key.tolist(),
                                                                    value.tolist(), 6)
