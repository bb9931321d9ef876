"""Allocation kernels (compute/kernels_alloc.py) against per-step references and invariants.

The reference allocates each unit time step the way the simulator's ground
truth does; the kernels sweep segments. Properties: energy balance per
interval, the same pairs however the intervals are cut into micro-batches,
batch order not changing any batch's share, exact boundary splits.
"""

from __future__ import annotations

import random
from collections import defaultdict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compute import kernels as K
from compute.kernels_check import F64, I64
from tests.compute import reference as ref
from tests.compute.strategies import Metered, Schedule, metered, schedules

Pairs = dict[tuple[int, int], float]


def i64(*v: int) -> I64:
    return np.array(v, dtype=np.int64)


def f64(*v: float) -> F64:
    return np.array(v, dtype=np.float64)


def allocate(iv: Metered, batches: Schedule, idle_next: int) -> tuple[I64, I64, F64, F64]:
    b_start, b_end, b_weight = batches
    seg_start, seg_end, ptr, member, weight = K.weight_segments(b_start, b_end, b_weight)
    return K.allocate_overlap(iv[0], iv[1], iv[2], seg_start, seg_end, ptr, member, weight,
                              b_start, idle_next)


def as_pairs(pi: I64, pb: I64, pe: F64) -> Pairs:
    out: Pairs = defaultdict(float)
    for i, b, e in zip(pi.tolist(), pb.tolist(), pe.tolist(), strict=True):
        out[i, b] += e
    return dict(out)


def assert_pairs_close(got: Pairs, want: Pairs, scale: float) -> None:
    for key in got.keys() | want.keys():
        assert got.get(key, 0.0) == pytest.approx(want.get(key, 0.0), abs=1e-9 * scale), key


# --- golden cases ---------------------------------------------------------------------------

def test_two_concurrent_batches_split_by_quantity() -> None:
    batches = (i64(0, 0), i64(120, 120), f64(300.0, 100.0))  # quantities, split `quantity`
    pi, pb, pe, unalloc = allocate((i64(0, 60), i64(60, 120), f64(8.0, 4.0)), batches, 0)
    assert as_pairs(pi, pb, pe) == {(0, 0): 6.0, (0, 1): 2.0, (1, 0): 3.0, (1, 1): 1.0}
    assert unalloc.tolist() == [0.0, 0.0]


def test_a_batch_starting_mid_interval_gets_its_share_of_time() -> None:
    # one batch runs [30, 150): half of the first minute, half of the third
    pi, pb, pe, unalloc = allocate((i64(0, 60, 120), i64(60, 120, 180), f64(6.0, 6.0, 6.0)),
                                   (i64(30), i64(150), f64(1.0)), 0)
    assert as_pairs(pi, pb, pe) == {(0, 0): 3.0, (1, 0): 6.0, (2, 0): 3.0}
    assert unalloc.tolist() == [3.0, 0.0, 3.0]


@pytest.mark.parametrize(("idle_next", "want", "want_unalloc"), [
    (1, {(0, 0): 60.0, (0, 1): 120.0}, [0.0, 60.0]),
    (0, {(0, 0): 60.0, (0, 1): 60.0}, [60.0, 60.0]),
])
def test_idle_to_next_batch(idle_next: int, want: Pairs, want_unalloc: list[float]) -> None:
    # batches [0, 60) and [120, 180); the changeover [60, 120) belongs to the next one,
    # energy after the last batch has no next batch and stays unallocated
    batches = (i64(0, 120), i64(60, 180), f64(1.0, 1.0))
    pi, pb, pe, unalloc = allocate((i64(0, 180), i64(180, 240), f64(180.0, 60.0)), batches,
                                   idle_next)
    assert as_pairs(pi, pb, pe) == want
    assert unalloc.tolist() == want_unalloc


def test_still_running_batch_takes_everything_after_its_start() -> None:
    pi, pb, pe, unalloc = allocate((i64(0), i64(100), f64(10.0)), (i64(50), i64(K.OPEN_END),
                                                                    f64(1.0)), 0)
    assert as_pairs(pi, pb, pe) == {(0, 0): 5.0} and unalloc.tolist() == [5.0]


def test_boundary_split_by_power_puts_energy_where_the_machine_ran() -> None:
    # the batch starts at 30 s; the power channel reads 0 kW before and 12 kW after
    seg_start, seg_end, seg_energy, parent = K.split_at_knots(
        i64(0), i64(60), f64(0.1), i64(30), f64(0.0), f64(12.0))
    assert seg_energy.tolist() == [0.0, 0.1] and parent.tolist() == [0, 0]
    pi, pb, pe, unalloc = allocate((seg_start, seg_end, seg_energy),
                                   (i64(30), i64(90), f64(1.0)), 0)
    assert as_pairs(pi, pb, pe) == {(1, 0): 0.1} and unalloc.tolist() == [0.0, 0.0]


def test_wrappers_refuse_inconsistent_timelines() -> None:
    ss, se, ptr, member, weight = K.weight_segments(i64(0, 10), i64(20, 30), f64(1.0, 1.0))
    with pytest.raises(ValueError, match="ptr"):
        K.allocate_overlap(i64(0), i64(5), f64(1.0), ss, se, ptr[:-1], member, weight,
                           i64(0, 10), 0)
    with pytest.raises(ValueError, match="outside b_start"):
        K.allocate_overlap(i64(0), i64(5), f64(1.0), ss, se, ptr, member, weight, i64(0), 0)
    with pytest.raises(ValueError, match="i_start must be sorted"):
        K.allocate_overlap(i64(5, 0), i64(6, 1), f64(1, 1), ss, se, ptr, member, weight,
                           i64(0, 10), 0)
    with pytest.raises(ValueError, match="ends before it starts"):
        K.weight_segments(i64(10), i64(0), f64(1.0))
    with pytest.raises(ValueError, match="weights"):
        K.weight_segments(i64(0), i64(10), f64(-1.0))


# --- properties -----------------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(metered(), schedules(), st.sampled_from([0, 1]))
def test_allocation_matches_the_per_step_reference(iv: Metered, batches: Schedule,
                                                   idle_next: int) -> None:
    pi, pb, pe, unalloc = allocate(iv, batches, idle_next)
    want, want_unalloc = ref.allocate_steps(
        iv[0].tolist(), iv[1].tolist(), iv[2].tolist(), batches[0].tolist(),
        batches[1].tolist(), batches[2].tolist(), bool(idle_next))
    scale = 1.0 + float(iv[2].sum())
    assert_pairs_close(as_pairs(pi, pb, pe), want, scale)
    np.testing.assert_allclose(unalloc, want_unalloc, atol=1e-9 * scale)
    # one pair per interval x batch, in order, none of them zero
    keys = list(zip(pi.tolist(), pb.tolist(), strict=True))
    assert keys == sorted(set(keys)) and np.all(pe != 0.0)


@settings(max_examples=200, deadline=None)
@given(metered(), schedules(), st.sampled_from([0, 1]))
def test_energy_balance_per_interval(iv: Metered, batches: Schedule, idle_next: int) -> None:
    pi, _, pe, unalloc = allocate(iv, batches, idle_next)
    booked = np.bincount(pi, weights=pe, minlength=len(iv[0])) + unalloc
    np.testing.assert_allclose(booked, iv[2], rtol=1e-9, atol=1e-12)
    assert np.all(pe >= 0.0) and np.all(unalloc >= 0.0)


@settings(max_examples=150, deadline=None)
@given(metered(), schedules(), st.sampled_from([0, 1]), st.integers(0, 12))
def test_allocation_is_the_same_however_the_intervals_are_cut(
        iv: Metered, batches: Schedule, idle_next: int, cut: int) -> None:
    cut = min(cut, len(iv[0]))
    whole = allocate(iv, batches, idle_next)
    head = allocate((iv[0][:cut], iv[1][:cut], iv[2][:cut]), batches, idle_next)
    tail = allocate((iv[0][cut:], iv[1][cut:], iv[2][cut:]), batches, idle_next)
    assert np.array_equal(np.concatenate([head[0], tail[0] + cut]), whole[0])
    for k in (1, 2, 3):
        assert np.array_equal(np.concatenate([head[k], tail[k]]), whole[k])


@settings(max_examples=150, deadline=None)
@given(metered(), schedules(), st.randoms(use_true_random=False))
def test_batch_order_does_not_change_any_share(iv: Metered, batches: Schedule,
                                               rnd: random.Random) -> None:
    # with idle energy unallocated nothing depends on order; (next_batch breaks start
    # ties by batch id, which the caller fixes by sorting)
    order = list(range(len(batches[0])))
    rnd.shuffle(order)
    perm = np.array(order, dtype=np.int64)
    shuffled = (batches[0][perm], batches[1][perm], batches[2][perm])
    pi, pb, pe, unalloc = allocate(iv, shuffled, 0)
    base = allocate(iv, batches, 0)
    scale = 1.0 + float(iv[2].sum())
    assert_pairs_close(as_pairs(pi, perm[pb] if len(pb) else pb, pe), as_pairs(*base[:3]),
                       scale)
    np.testing.assert_allclose(unalloc, base[3], atol=1e-9 * scale)


@settings(max_examples=150, deadline=None)
@given(schedules(max_batches=8))
def test_segments_match_the_reference(batches: Schedule) -> None:
    b_start, b_end, b_weight = batches
    seg_start, seg_end, ptr, member, weight = K.weight_segments(b_start, b_end, b_weight)
    got = [(int(s), int(e), member[ptr[k]:ptr[k + 1]].tolist())
           for k, (s, e) in enumerate(zip(seg_start, seg_end, strict=True))]
    assert got == ref.weight_segments(b_start.tolist(), b_end.tolist())
    assert np.array_equal(weight, b_weight[member])


@settings(max_examples=120, deadline=None)
@given(metered(), st.data())
def test_split_at_knots_matches_the_reference_and_keeps_totals_exact(
        iv: Metered, data: st.DataObject) -> None:
    start, end, energy = iv
    n = len(start)
    knot = np.array([data.draw(st.integers(s - 2, e + 2)) for s, e in zip(start, end,
                                                                          strict=True)],
                    dtype=np.int64)
    weights = st.lists(st.one_of(st.just(0.0), st.just(1.0), st.floats(-1.0, 50.0)),
                       min_size=n, max_size=n)
    w_before, w_after = (np.array(data.draw(weights), dtype=np.float64) for _ in range(2))
    got = K.split_at_knots(start, end, energy, knot, w_before, w_after)
    want = ref.split_at_knots(start.tolist(), end.tolist(), energy.tolist(), knot.tolist(),
                              w_before.tolist(), w_after.tolist())
    assert list(zip(got[0].tolist(), got[1].tolist(), got[3].tolist(), strict=True)) == [
        (s, e, p) for s, e, _, p in want]
    np.testing.assert_allclose(got[2], [x for _, _, x, _ in want], rtol=1e-12, atol=1e-12)
    for i in range(n):  # two floats that add up to the interval's energy, exactly
        assert got[2][got[3] == i].sum() == energy[i]


@pytest.mark.parametrize("idle_next", [0, 1])
def test_more_pairs_than_intervals_grow_the_output(idle_next: int) -> None:
    # 40 batches on one asset, staggered: intervals inside one segment and across many
    rng = np.random.default_rng(3)
    b_start = np.sort(rng.integers(0, 50, 40)).astype(np.int64)
    batches = (b_start, b_start + rng.integers(5, 200, 40), rng.uniform(0.5, 5.0, 40))
    iv = (i64(-10, 20, 60, 61, 100), i64(20, 60, 61, 100, 400), f64(5.0, 7.0, 1.0, 3.0, 9.0))
    pi, pb, pe, unalloc = allocate(iv, batches, idle_next)
    assert len(pi) > 2 * len(iv[0]) + 16  # past the first buffer
    want, want_unalloc = ref.allocate_steps(
        iv[0].tolist(), iv[1].tolist(), iv[2].tolist(), batches[0].tolist(),
        batches[1].tolist(), batches[2].tolist(), bool(idle_next))
    assert_pairs_close(as_pairs(pi, pb, pe), want, 25.0)
    np.testing.assert_allclose(unalloc, want_unalloc, atol=1e-9)


def test_idle_before_a_zero_length_batch_goes_to_it_then_to_the_next() -> None:
    # a batch of no duration at 10, the next at 20: steps 5..9 go to the first, 10..14 on
    pi, pb, pe, unalloc = allocate((i64(5), i64(15), f64(10.0)),
                                   (i64(10, 20), i64(10, 30), f64(1.0, 1.0)), 1)
    assert as_pairs(pi, pb, pe) == {(0, 0): 5.0, (0, 1): 5.0} and unalloc.tolist() == [0.0]
