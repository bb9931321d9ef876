"""Batch schedule and asset states over simulated time (pure, incremental).

``advance(t)`` must be called with non-decreasing ``t``; a batch runs in the
step ``[t, t + step)`` when ``start_s <= t < end_s``.
"""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from simulators.config import Batch, Scenario, State

STATE_CODES: dict[str, int] = {"off": 0, "idle": 1, "setup": 2, "production": 3}


class Schedule:
    """Which batches run where, the state of each asset, and what comes next."""

    def __init__(self, scenario: Scenario) -> None:
        self._assets = {a.id: a for a in scenario.assets}
        self.by_asset: dict[str, list[Batch]] = {a.id: [] for a in scenario.assets}
        for b in sorted(scenario.batches, key=lambda b: (b.start_s, b.id)):
            self.by_asset[b.asset].append(b)
        self._starts = {a: [b.start_s for b in bs] for a, bs in self.by_asset.items()}
        self.running: dict[str, list[Batch]] = {a: [] for a in self.by_asset}
        self.state: dict[str, State] = dict.fromkeys(self.by_asset, "idle")
        self._events = sorted(
            [(b.start_s, 1, b.id, b) for b in scenario.batches]
            + [(b.end_s, 0, b.id, b) for b in scenario.batches]
        )
        self._next_event = 0
        self.t = -1

    def advance(self, t: int) -> tuple[list[Batch], list[Batch]]:
        """Move to time ``t``; returns the batches that started and ended."""
        started: list[Batch] = []
        ended: list[Batch] = []
        events = self._events
        while self._next_event < len(events) and events[self._next_event][0] <= t:
            _, is_start, _, b = events[self._next_event]
            self._next_event += 1
            if is_start:
                self.running[b.asset].append(b)
                started.append(b)
            else:
                self.running[b.asset].remove(b)
                ended.append(b)
        self.t = t
        for asset in self.by_asset:
            self.state[asset] = self._state_of(asset, t)
        return started, ended

    def _state_of(self, asset: str, t: int) -> State:
        if self.running[asset]:
            return "production"
        cfg = self._assets[asset]
        nxt = self.next_batch(asset, t)
        if nxt is not None and cfg.setup_s and nxt.start_s - cfg.setup_s <= t:
            return "setup"
        if any(lo <= t < hi for lo, hi in cfg.off_windows):
            return "off"
        return "idle"

    def next_batch(self, asset: str, t: int) -> Batch | None:
        """The first batch on ``asset`` starting after ``t``."""
        i = bisect.bisect_right(self._starts[asset], t)
        batches = self.by_asset[asset]
        return batches[i] if i < len(batches) else None

    def next_of(self, assets: tuple[str, ...] | list[str], t: int) -> Batch | None:
        """The next batch over several assets: earliest start, then batch id."""
        found = [b for a in assets if (b := self.next_batch(a, t)) is not None]
        return min(found, key=lambda b: (b.start_s, b.id)) if found else None
