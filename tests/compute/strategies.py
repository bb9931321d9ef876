"""hypothesis strategies shared by the kernel tests: interval tilings and batch schedules.

Times are small integers so the per-step references stay cheap; the kernels
only compare and subtract them, so ns or steps make no difference to them.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from compute import kernels as K
from compute.kernels_check import F64, I64

Metered = tuple[I64, I64, F64]  # interval start, end, energy
Schedule = tuple[I64, I64, F64]  # batch start, end, weight


@st.composite
def tilings(draw: st.DrawFn, max_n: int = 12) -> tuple[I64, I64]:
    """Sorted, non-overlapping intervals on small integer times, with holes and points."""
    t, starts, ends = draw(st.integers(-10, 10)), [], []
    for _ in range(draw(st.integers(0, max_n))):
        t += draw(st.sampled_from([0, 0, 0, 3, 7]))  # mostly contiguous
        length = draw(st.integers(0, 12))
        starts.append(t)
        ends.append(t + length)
        t += length
    return np.array(starts, dtype=np.int64), np.array(ends, dtype=np.int64)


@st.composite
def metered(draw: st.DrawFn, max_n: int = 12) -> Metered:
    """A tiling with an energy per interval (kWh)."""
    start, end = draw(tilings(max_n))
    energy = draw(st.lists(st.floats(0.0, 100.0), min_size=len(start), max_size=len(start)))
    return start, end, np.array(energy, dtype=np.float64)


@st.composite
def schedules(draw: st.DrawFn, max_batches: int = 6) -> Schedule:
    """Batches (start, end, weight) sorted by start then index, some running, some concurrent."""
    rows = []
    for _ in range(draw(st.integers(0, max_batches))):
        start = draw(st.integers(-5, 80))
        end = K.OPEN_END if draw(st.integers(0, 7)) == 0 else start + draw(st.integers(0, 50))
        weight = draw(st.one_of(st.just(1.0), st.just(0.0), st.floats(0.1, 10.0)))
        rows.append((start, end, weight))
    rows.sort(key=lambda r: r[0])  # stable: ties keep their drawn order, i.e. by index
    return (np.array([r[0] for r in rows], dtype=np.int64),
            np.array([r[1] for r in rows], dtype=np.int64),
            np.array([r[2] for r in rows], dtype=np.float64))
