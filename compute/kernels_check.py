"""What every kernel wrapper checks before calling its jitted implementation.

The jitted ``_impl`` functions trust their input (numba does not bounds-check);
the wrappers in ``compute/kernels.py`` and ``compute/kernels_alloc.py`` make
sure it is what they trust: 1-d contiguous int64/float64 arrays of matching
lengths, sorted where a sweep relies on it.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from numba import njit

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]


def ints(name: str, a: object) -> I64:
    """``a`` as a contiguous 1-d int64 array; TypeError naming ``name`` otherwise."""
    if not isinstance(a, np.ndarray) or a.dtype != np.int64 or a.ndim != 1:
        raise TypeError(f"{name}: expected a 1-d int64 array, got {_describe(a)}")
    return np.ascontiguousarray(a)


def floats(name: str, a: object) -> F64:
    """``a`` as a contiguous 1-d float64 array; TypeError naming ``name`` otherwise."""
    if not isinstance(a, np.ndarray) or a.dtype != np.float64 or a.ndim != 1:
        raise TypeError(f"{name}: expected a 1-d float64 array, got {_describe(a)}")
    return np.ascontiguousarray(a)


def _describe(a: object) -> str:
    if isinstance(a, np.ndarray):
        return f"{a.ndim}-d {a.dtype} array"
    return type(a).__name__


def same_length(**arrays: npt.NDArray[np.generic]) -> int:
    """The common length of ``arrays``; ValueError naming them when they differ."""
    lengths = {name: a.shape[0] for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"arrays of different lengths: {lengths}")
    return next(iter(lengths.values()), 0)


def require_sorted(name: str, a: I64) -> None:
    """ValueError unless ``a`` is non-decreasing (the sweeps rely on it)."""
    if not is_sorted(a):
        raise ValueError(f"{name} must be sorted ascending")


@njit(cache=True)
def is_sorted(a: I64) -> bool:
    """True when ``a`` is non-decreasing (one pass, no temporary array)."""
    for i in range(1, a.shape[0]):  # noqa: SIM110 - numba compiles loops, not all(genexpr)
        if a[i] < a[i - 1]:
            return False
    return True
