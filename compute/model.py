"""What compute works on: a meter's counter intervals, batches, machine-state changes.

Plain containers (numpy arrays, frozen dataclasses) shared by the allocation
core (``compute.allocate``), the worker's site state and the store. Times are
epoch ns (int64); energies are in the carrier's canonical unit (kWh, Nm3, t, GJ).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

OPEN_END = np.iinfo(np.int64).max  # a batch still running


def f64(values: object = ()) -> F64:
    return np.ascontiguousarray(values, dtype=np.float64)


def i64(values: object = ()) -> I64:
    return np.ascontiguousarray(values, dtype=np.int64)


_FIELDS = ("start", "end", "energy", "estimated", "flags", "p_start", "p_end", "co2")


@dataclass
class Intervals:
    """One meter's counter intervals, in time order, not overlapping.

    ``p_start``/``p_end``: the power channel at the interval's ends (canonical
    rate unit, NaN where the meter has none); ``co2``: a smart carbon meter's own
    kg counter increase over the interval (NaN otherwise).
    """

    start: I64 = field(default_factory=i64)
    end: I64 = field(default_factory=i64)
    energy: F64 = field(default_factory=f64)
    estimated: F64 = field(default_factory=f64)
    flags: I64 = field(default_factory=i64)
    p_start: F64 = field(default_factory=f64)
    p_end: F64 = field(default_factory=f64)
    co2: F64 = field(default_factory=f64)

    def __len__(self) -> int:
        return len(self.end)

    def extend(self, other: Intervals) -> None:
        for name in ("start", "end", "energy", "estimated", "flags", "p_start", "p_end", "co2"):
            setattr(self, name, np.concatenate([getattr(self, name), getattr(other, name)]))

    @classmethod
    def concat(cls, parts: list[Intervals]) -> Intervals:
        """Several meters' intervals one after the other (for the many-meter kernels)."""
        if not parts:
            return cls()
        cols = {n: np.concatenate([getattr(p, n) for p in parts]) for n in _FIELDS}
        return cls(**cols)

    def since(self, t_ns: int) -> Intervals:
        """The intervals ending after ``t_ns`` (a view of the tail)."""
        k = int(np.searchsorted(self.end, t_ns, side="right"))
        return self.slice(k, len(self))

    def slice(self, lo: int, hi: int) -> Intervals:
        return Intervals(*(getattr(self, n)[lo:hi] for n in (
            "start", "end", "energy", "estimated", "flags", "p_start", "p_end", "co2")))

    @property
    def covered_until(self) -> int:
        """End of the last interval (0 when there is none)."""
        return int(self.end[-1]) if len(self.end) else 0


@dataclass(frozen=True)
class Batch:
    """A production batch as the MES reported it (end and quantity once it ended)."""

    batch_id: str
    asset: str
    product: str
    start_ns: int
    end_ns: int | None = None
    quantity: float | None = None
    unit: str | None = None
    # the MES's end event never came: the end is the start of the batch that the asset's
    # max_concurrent showed could not run beside it (compute.lifecycle.infer_ends)
    end_inferred: bool = False

    @property
    def end_or_open(self) -> int:
        return int(OPEN_END) if self.end_ns is None else self.end_ns

    @property
    def ended(self) -> bool:
        return self.end_ns is not None


@dataclass
class StateChanges:
    """Machine-state changes of one asset (source timestamps, state codes)."""

    ts: I64 = field(default_factory=i64)
    code: I64 = field(default_factory=i64)

    def add(self, ts: I64, code: I64) -> None:
        ts_all = np.concatenate([self.ts, ts])
        code_all = np.concatenate([self.code, code])
        order = np.argsort(ts_all, kind="stable")
        ts_sorted = ts_all[order]
        keep = np.ones(len(ts_sorted), dtype=bool)
        keep[1:] = ts_sorted[1:] != ts_sorted[:-1]  # one state per instant
        self.ts, self.code = i64(ts_sorted[keep]), i64(code_all[order][keep])
