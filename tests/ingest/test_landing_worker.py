"""The landing worker keeps order, blocks when full, and lands nothing after a failure."""

from __future__ import annotations

import threading
import time

import pytest

from ingest.errors import StoreError
from ingest.landing import LandingWorker


def test_batches_land_in_order_and_a_failure_stops_all_later_ones() -> None:
    landed: list[int] = []

    def land(accepted, offsets) -> None:
        n = offsets[("t", 0)]
        if n == 3:
            raise StoreError("refused")
        time.sleep(0.01)
        landed.append(n)

    worker = LandingWorker(land, depth=1)
    worker.start()
    try:
        for n in (1, 2):
            worker.submit([], {("t", 0): n})
        worker.drain()
        assert landed == [1, 2]
        worker.submit([], {("t", 0): 3})
        worker.submit([], {("t", 0): 4})  # queued behind the failing one
        with pytest.raises(StoreError, match="refused"):
            worker.drain()
        assert landed == [1, 2]  # 4 must not land: its offsets would skip batch 3
        with pytest.raises(StoreError):
            worker.submit([], {("t", 0): 5})
    finally:
        worker.close()


def test_a_full_queue_blocks_the_poller() -> None:
    gate = threading.Event()
    worker = LandingWorker(lambda a, o: gate.wait(5), depth=1)
    worker.start()
    try:
        worker.submit([], {})  # taken by the worker, which waits on the gate
        time.sleep(0.05)
        worker.submit([], {})  # fills the queue
        blocked = threading.Thread(target=worker.submit, args=([], {}), daemon=True)
        blocked.start()
        blocked.join(0.2)
        assert blocked.is_alive()
        gate.set()
        blocked.join(5)
        assert not blocked.is_alive()
        worker.drain()
    finally:
        gate.set()
        worker.close()
