"""The bench harness: figures measured against a baseline taken in the same run.

Machines here are shared and noisy, so an absolute number alone says little.
Every figure carries a baseline measured in the same process, moments apart,
on the same data (for example: orjson parsing the same bytes that the frame
decoder decodes), and the table prints the ratio next to the goal.

A bench module is ``bench/bench_<name>.py`` with ``run(ctx) -> list[Figure]``.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Literal


@dataclass(frozen=True)
class Figure:
    """One measured figure, its same-run baseline and the goal it is held to."""

    area: str  # issue area: wire, edge, ingest, simulators, compute
    name: str
    value: float
    unit: str
    baseline_name: str
    baseline_value: float
    goal: str = ""
    # "lower" when smaller is better (cost per item), "higher" for throughput
    better: Literal["lower", "higher"] = "lower"
    met: bool | None = None  # None: no goal to meet
    notes: str = ""

    @property
    def ratio(self) -> float:
        """value / baseline (how many baselines this figure costs or delivers)."""
        return self.value / self.baseline_value if self.baseline_value else float("nan")

    def as_json(self) -> dict[str, object]:
        out = asdict(self)
        out["ratio"] = self.ratio
        return out


@dataclass
class BenchContext:
    """What a bench module gets: a quick flag (CI smoke) and a scratch folder."""

    quick: bool = False
    scratch: str = "bench-out"
    extras: dict[str, object] = field(default_factory=dict)


def best_seconds(fn: Callable[[], object], repeat: int = 5, number: int = 1) -> float:
    """Best wall time of ``number`` calls, over ``repeat`` tries (noise only adds time)."""
    best = float("inf")
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeat):
            t0 = time.perf_counter()
            for _ in range(number):
                fn()
            best = min(best, time.perf_counter() - t0)
    finally:
        if gc_was_enabled:
            gc.enable()
    return best / number


def median_seconds(samples: list[float]) -> float:
    return statistics.median(samples) if samples else float("nan")


def cpu_seconds() -> float:
    """CPU seconds used by this process (user + system), for per-core figures."""
    return time.process_time()
