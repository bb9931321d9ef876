"""The many-meter kernels (compute/kernels_many.py) against the per-meter ones, meter by meter.

A site's asset and shared meters are allocated in one call; each meter's
result must be exactly (bit for bit) what the per-meter kernels give it, with
its own scope, whatever the meters' order and however many share a scope.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compute import kernels as K
from compute.kernels_check import F64, I64
from tests.compute.strategies import Metered, Schedule, metered, schedules


def _knots_reference(start: I64, end: I64, bounds: I64, changes: I64) -> tuple[I64, I64]:
    """The per-meter rule, written plainly: the first boundary inside the interval, or the
    state change inside it nearest that boundary."""
    knot, by_state = [], []
    for s, e in zip(start.tolist(), end.tolist(), strict=True):
        inside = [b for b in bounds.tolist() if s < b]
        if not inside or inside[0] >= e:
            knot.append(-1)
            by_state.append(0)
            continue
        cand = [c for c in changes.tolist() if s < c < e]
        if cand:
            knot.append(min(cand, key=lambda c: abs(c - inside[0])))  # the earlier on a tie
            by_state.append(1)
        else:
            knot.append(inside[0])
            by_state.append(0)
    return np.array(knot, dtype=np.int64), np.array(by_state, dtype=np.int64)


def _cat(parts: list[np.ndarray], dtype: type) -> tuple[np.ndarray, I64]:
    ptr = np.zeros(len(parts) + 1, dtype=np.int64)
    np.cumsum([len(p) for p in parts], out=ptr[1:])
    return (np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)), ptr


Site = tuple[list[tuple[Metered, int]], list[Schedule]]


@st.composite
def sites(draw: st.DrawFn) -> Site:
    """A few scopes (batch schedules) and meters pointing at them."""
    scopes = draw(st.lists(schedules(), min_size=1, max_size=3))
    meters = draw(st.lists(st.tuples(metered(), st.integers(0, len(scopes) - 1)), max_size=5))
    return meters, scopes


@settings(max_examples=150, deadline=None)
@given(site=sites(), idle_next=st.integers(0, 1))
def test_many_meters_in_one_call_equal_each_meter_alone(site: Site, idle_next: int) -> None:
    meters, scopes = site
    timelines = [K.weight_segments(*s) for s in scopes]
    seg_start, seg_ptr = _cat([t[0] for t in timelines], np.int64)
    seg_end, _ = _cat([t[1] for t in timelines], np.int64)
    ptr, ptr_ptr = _cat([t[2] for t in timelines], np.int64)
    member, member_ptr = _cat([t[3] for t in timelines], np.int64)
    weight, _ = _cat([t[4] for t in timelines], np.float64)
    b_start, b_ptr = _cat([s[0] for s in scopes], np.int64)
    i_start, r_off = _cat([m[0][0] for m in meters], np.int64)
    i_end, _ = _cat([m[0][1] for m in meters], np.int64)
    i_energy, _ = _cat([m[0][2] for m in meters], np.float64)
    r_scope = np.array([m[1] for m in meters], dtype=np.int64)
    pi, pb, pe, unalloc = K.allocate_overlap_many(
        i_start, i_end, i_energy, r_off[:-1], r_off[1:], r_scope, seg_ptr, ptr_ptr,
        member_ptr, b_ptr, seg_start, seg_end, ptr, member, weight, b_start, idle_next)
    p_off = np.searchsorted(pi, r_off)
    for r, ((start, end, energy), s) in enumerate(meters):
        want = K.allocate_overlap(start, end, energy, *timelines[s], scopes[s][0], idle_next)
        a, b = p_off[r], p_off[r + 1]
        assert (pi[a:b] - r_off[r]).tolist() == want[0].tolist()
        assert (pb[a:b] - b_ptr[s]).tolist() == want[1].tolist()
        assert pe[a:b].tolist() == want[2].tolist()  # exactly: the same sweep
        assert unalloc[r_off[r]:r_off[r + 1]].tolist() == want[3].tolist()


@settings(max_examples=150, deadline=None)
@given(site=sites(), changes=st.lists(st.lists(st.integers(-10, 120), max_size=6), max_size=3))
def test_knots_of_many_meters_follow_the_per_meter_rule(site: Site,
                                                        changes: list[list[int]]) -> None:
    meters, scopes = site
    bounds = [np.unique(np.concatenate([s[0], s[1][s[1] != K.OPEN_END]])) for s in scopes]
    state = [np.unique(np.array(changes[k] if k < len(changes) else [], dtype=np.int64))
             for k in range(len(scopes))]
    b_cat, b_ptr = _cat(bounds, np.int64)
    c_cat, c_ptr = _cat(state, np.int64)
    start, _ = _cat([m[0][0] for m in meters], np.int64)
    end, off = _cat([m[0][1] for m in meters], np.int64)
    iv_scope = np.repeat(np.array([m[1] for m in meters], dtype=np.int64),
                         np.diff(off)) if meters else np.zeros(0, np.int64)
    knot, by_state = K.knots_many(start, end, iv_scope, b_cat, b_ptr, c_cat, c_ptr)
    for r, (_iv, s) in enumerate(meters):
        lo, hi = off[r], off[r + 1]
        want = _knots_reference(start[lo:hi], end[lo:hi], bounds[s], state[s])
        assert knot[lo:hi].tolist() == want[0].tolist()
        assert by_state[lo:hi].tolist() == want[1].tolist()


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(st.tuples(st.integers(0, 6), st.integers(0, 4),
                               st.floats(-5.0, 5.0).filter(lambda x: x != 0.0)), max_size=30))
def test_merged_pairs_are_the_sums_per_interval_and_batch(
        rows: list[tuple[int, int, float]]) -> None:
    rows.sort(key=lambda r: r[0])  # the sweep's pairs come by interval
    pi = np.array([r[0] for r in rows], dtype=np.int64)
    pb = np.array([r[1] for r in rows], dtype=np.int64)
    pe = np.array([r[2] for r in rows], dtype=np.float64)
    got_i, got_b, got_e = K.merge_pairs(pi, pb, pe)
    want: dict[tuple[int, int], float] = {}
    for i, b, e in rows:  # in the order given, as the allocation adds a split interval's parts
        want[i, b] = want[i, b] + e if (i, b) in want else e
    assert list(zip(got_i.tolist(), got_b.tolist(), strict=True)) == sorted(want)
    assert got_e.tolist() == [want[k] for k in sorted(want)]


def test_the_wrappers_refuse_what_the_kernels_cannot_trust() -> None:
    z, one, two = np.zeros(0, np.int64), np.zeros(1, np.int64), np.zeros(2, np.int64)
    ptr_ptr = np.array([0, 1])  # one scope without batches
    with pytest.raises(ValueError, match="sorted ascending within each meter"):
        K.allocate_overlap_many(np.array([5, 1]), np.array([6, 2]), np.ones(2),
                                np.array([0]), np.array([2]), np.array([0]), two, ptr_ptr,
                                two, two, z, z, one, z, np.zeros(0), z, 0)
    with pytest.raises(ValueError, match="r_scope"):
        K.allocate_overlap_many(z, z, np.zeros(0), one, one, np.array([3]), two, ptr_ptr, two,
                                two, z, z, one, z, np.zeros(0), z, 0)
    with pytest.raises(ValueError, match="sorted"):
        K.merge_pairs(np.array([2, 1]), np.array([0, 0]), np.ones(2))
    f: F64 = np.zeros(1)
    with pytest.raises(TypeError, match="iv_scope"):
        K.knots_many(one, one, f, z, one, z, one)  # type: ignore[arg-type]
