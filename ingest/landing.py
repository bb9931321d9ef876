"""The landing worker: database transactions overlap the next poll's fetch and decode.

One thread lands batches strictly in the order the poller submitted them, so
each partition's stored offset only moves forward. The queue between them is
bounded (``depth`` batches); its overflow policy is **block**: a slow or absent
database stops the poller (backpressure), it never drops or reorders a batch.
After a failure the worker lands nothing more (a later batch would store
offsets past the failed one) and the poller re-raises the error.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Final

from ingest.store import Accepted, TopicPartition

logger = logging.getLogger(__name__)

Batch = tuple[list[Accepted], dict[TopicPartition, int]]
_STOP: Final = None


class LandingWorker:
    def __init__(self, land: Callable[[list[Accepted], dict[TopicPartition, int]], None],
                 depth: int = 2) -> None:
        self._land = land
        self._queue: queue.Queue[Batch | None] = queue.Queue(maxsize=depth)
        self._thread = threading.Thread(target=self._run, name="ingest-landing", daemon=True)
        self._error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def submit(self, accepted: list[Accepted], offsets: dict[TopicPartition, int]) -> None:
        """Queue a batch; blocks while ``depth`` batches wait (overflow policy: block)."""
        self.raise_if_failed()
        self._queue.put((accepted, offsets))

    def drain(self) -> None:
        """Return once every submitted batch is landed (or re-raise why not)."""
        self._queue.join()
        self.raise_if_failed()

    def raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def close(self, timeout_s: float = 30.0) -> None:
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is _STOP:
                    return
                if self._error is None:
                    self._land(*item)
            except BaseException as exc:  # handed to the poller thread, which re-raises it
                logger.error("landing failed; no further batch lands: %s", exc)
                self._error = exc
            finally:
                self._queue.task_done()
