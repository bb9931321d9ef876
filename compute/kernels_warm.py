"""Load the numba kernels from their on-disk cache in a background thread.

Even with the cache warm, the first call of each kernel loads its machine code
and starts numba's compiler context: about half a second in all, most of a
worker's cold start. Started once the worker's imports are done, this thread
loads them while the worker checks the database and joins its Kafka group,
waiting on the network, so the first micro-batch finds them ready. (Started
before the imports, it competed with them for the GIL: measured alternately,
that order was 0.05-0.1 s slower to a first micro-batch.) It calls each
kernel's public wrapper on tiny arrays of the production types (the cache is
keyed by argument types), so no numba internals are used.
Nothing is imported at module level: importing this module costs nothing.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

logger = logging.getLogger(__name__)


def _touch_every_kernel() -> None:
    import numpy as np

    from compute import kernels as K

    i, f = np.zeros(2, np.int64), np.zeros(2)
    i[1] = 1
    K.unwrap_counter(i, f, K.CounterState(), 0.0, 1.0, 0.0, 1)
    K.dequantise(i, i, f, i, f, f, 0.1, K.FractionState.fresh(0.1))
    K.resample_energy(i, i, f, i, i)
    K.smooth_rate(i, i, f, 1)
    K.smooth_rate_resume(i, i, f, 1, K.smooth_rate_resume(i, i, f, 1, None)[1])
    seg = K.weight_segments(i, i, f)
    K.split_at_knots(i, i, f, i, f, f)
    K.allocate_overlap(i, i, f, *seg, i, 1)
    one, ptr = np.zeros(1, np.int64), np.array([0, len(seg[0])])
    K.allocate_overlap_many(i, i, f, one, one + 2, one, ptr, np.array([0, len(seg[2])]),
                            np.array([0, len(seg[3])]), np.array([0, 2]), *seg, i, 1)
    K.knots_many(i, i, np.zeros(2, np.int64), i, np.array([0, 2]), i, np.array([0, 2]))
    K.merge_pairs(i, i, f)
    K.sum_by_key(i, f, 2)


@contextmanager
def _cffi_hidden() -> Iterator[None]:
    """numba's typing context, on its first use, imports its cffi support, which builds
    a ``cffi.FFI()``: pycparser and its regexes, 0.1-0.2 s of CPU in a start of about a
    second. No kernel calls a cffi function, so cffi is made unimportable for that
    moment (numba then records cffi as unsupported) and importable again after. The
    worker imports cffi nowhere else (cryptography's bindings do not need it)."""
    if "cffi" in sys.modules:  # already imported: nothing to save, nothing to hide
        yield
        return
    sys.modules["cffi"] = None  # type: ignore[assignment]  # import cffi -> ImportError
    try:
        yield
    finally:
        if "cffi" in sys.modules and sys.modules["cffi"] is None:
            del sys.modules["cffi"]


def _run() -> None:
    try:
        with _cffi_hidden():
            _touch_every_kernel()
    except Exception:  # a failure here shows again, with its cause, at the real first call
        logger.exception("loading the numba kernels in the background failed")


def warm_kernels() -> threading.Thread:
    """Start loading every kernel (daemon thread; the first real call waits for the
    compiler lock if it is still at it)."""
    thread = threading.Thread(target=_run, name="compute-kernels-warm", daemon=True)
    thread.start()
    return thread
