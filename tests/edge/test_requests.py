"""Request grouping: fewest reads, never over the limits, every point covered once."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.requests import MAX_REGISTERS, RequestPlanError, Table, plan_requests


@dataclass(frozen=True)
class P:
    table: Table
    address: int
    registers: int


def test_adjacent_points_share_one_read():
    pts = [P("holding", 0, 2), P("holding", 2, 2), P("holding", 4, 4)]
    reqs = plan_requests(pts)
    assert [(r.address, r.count) for r in reqs] == [(0, 8)]
    assert reqs[0].points == tuple(pts)


def test_gap_merging_obeys_max_gap():
    pts = [P("holding", 0, 2), P("holding", 5, 2)]
    assert len(plan_requests(pts, max_gap=2)) == 2
    reqs = plan_requests(pts, max_gap=3)
    assert [(r.address, r.count) for r in reqs] == [(0, 7)]


def test_tables_are_never_mixed():
    pts = [P("input", 0, 2), P("holding", 0, 2), P("holding", 2, 1)]
    reqs = plan_requests(pts, max_gap=10)
    assert [(r.table, r.address, r.count) for r in reqs] == [("holding", 0, 3), ("input", 0, 2)]


def test_reads_split_at_max_registers():
    pts = [P("holding", a, 2) for a in range(0, 300, 2)]
    reqs = plan_requests(pts)
    assert [r.count for r in reqs] == [124, 124, 52]
    reqs = plan_requests(pts, max_registers=10)
    assert all(r.count <= 10 for r in reqs) and len(reqs) == 30


def test_overlapping_points_are_covered():
    pts = [P("holding", 10, 4), P("holding", 10, 2), P("holding", 12, 2)]
    reqs = plan_requests(pts)
    assert [(r.address, r.count) for r in reqs] == [(10, 4)]
    assert len(reqs[0].points) == 3


def test_impossible_plans_fail_with_reason():
    with pytest.raises(RequestPlanError, match="max_registers 1"):
        plan_requests([P("holding", 0, 2)], max_registers=1)
    with pytest.raises(RequestPlanError, match=r"within 1\.\.125"):
        plan_requests([P("holding", 0, 2)], max_registers=126)


points = st.lists(
    st.builds(
        P, st.sampled_from(["holding", "input"]), st.integers(0, 1000), st.sampled_from([1, 2, 4])
    ),
    max_size=80,
)


@given(points, st.integers(0, 20), st.integers(4, MAX_REGISTERS))
def test_plan_properties(pts, max_gap, max_registers):
    reqs = plan_requests(pts, max_gap=max_gap, max_registers=max_registers)
    covered = [p for r in reqs for p in r.points]
    assert sorted(covered, key=repr) == sorted(pts, key=repr)  # each point exactly once
    for r in reqs:
        assert 1 <= r.count <= max_registers
        for p in r.points:
            assert r.address <= p.address and p.address + p.registers <= r.end
            assert p.table == r.table
    # minimal: consecutive reads of a table could not have been merged
    for a, b in itertools.pairwise(reqs):
        if a.table == b.table:
            furthest = max(p.address + p.registers for p in b.points)
            assert b.address - a.end > max_gap or furthest - a.address > max_registers
