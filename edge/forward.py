"""The drain loop: spool → every configured output → ack.

``Forwarder.run`` peeks the oldest frames, publishes them to each output in
order, and acks them in the spool only when *every* output acknowledged them.
A failing output is retried with the same frames, so order is kept, after a
capped exponential backoff with jitter (``edge.backoff``; it starts over after
every batch that got through). An output that already took a batch is not
sent it again while another output is being retried (in this process; after a
restart everything unacked is re-sent: at-least-once, ingest deduplicates by
(gateway, stream, seq)).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from edge import metrics
from edge.backoff import Backoff
from edge.spool import Spool, SpooledMessage

logger = logging.getLogger(__name__)


class PublishError(RuntimeError):
    """An output did not acknowledge every frame of a publish call."""


class Publisher(Protocol):
    """An output: ``publish`` returns only when every frame is acknowledged.

    ``start`` may connect but never fails for the broker's sake (``publish``
    connects again); ``max_frame_bytes`` is the largest frame it can carry
    (None: no limit of its own), so the agent splits frames to fit.
    """

    name: str

    @property
    def max_frame_bytes(self) -> int | None: ...

    async def start(self) -> None: ...

    async def publish(self, msgs: Sequence[SpooledMessage]) -> None: ...

    async def close(self) -> None: ...


class AckTally:
    """Counts acks arriving on a client library's thread; wakes the loop once at the end.

    kafka-python and paho call back on their own threads; the first failure or
    the last ack settles ``done`` in the event loop with ``call_soon_threadsafe``.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, total: int) -> None:
        self.loop = loop
        self.done: asyncio.Future[None] = loop.create_future()
        self._left = total
        self._lock = threading.Lock()
        self._fired = False

    def acked(self, _metadata: object) -> None:
        with self._lock:
            self._left -= 1
            fire = self._left == 0 and not self._fired
            self._fired |= fire
        if fire:
            self.loop.call_soon_threadsafe(self._settle, None)

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            fire = not self._fired
            self._fired = True
        if fire:
            self.loop.call_soon_threadsafe(self._settle, exc)

    def _settle(self, exc: BaseException | None) -> None:
        if self.done.done():
            return
        if exc is None:
            self.done.set_result(None)
        else:
            self.done.set_exception(exc)


@dataclass(frozen=True)
class ForwardConfig:
    batch_frames: int = 200
    batch_bytes: int = 4 * 1024 * 1024
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 30.0
    idle_poll_s: float = 0.5  # re-check the spool this often even without notify()


class Forwarder:
    """Drains one spool to its outputs, in order, acking after all outputs acked."""

    def __init__(
        self, spool: Spool, publishers: Sequence[Publisher], config: ForwardConfig | None = None
    ) -> None:
        if not publishers:
            raise ValueError(f"gateway {spool.gateway}: no output configured to forward to")
        self.spool = spool
        self.publishers = list(publishers)
        self.config = config or ForwardConfig()
        self._wake = asyncio.Event()
        self._empty = asyncio.Event()  # set while the run loop finds nothing to send
        # spool id up to which each output has acknowledged (this process only)
        self._sent_upto: dict[str, int] = {p.name: 0 for p in self.publishers}
        self._backoff = Backoff(self.config.backoff_initial_s, self.config.backoff_max_s)
        self.failures = 0

    def notify(self) -> None:
        """A frame was appended: drain now instead of at the next idle poll."""
        self._empty.clear()
        self._wake.set()

    async def drained(self) -> None:
        """Wait until the running ``run`` loop has emptied the spool."""
        while True:
            await self._empty.wait()
            if self.spool.depth == 0:
                return
            self._empty.clear()

    async def run(self) -> None:
        """Forward until cancelled."""
        while True:
            await self.forward_once()
            if self.spool.depth == 0:
                self._wake.clear()
                self._empty.set()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.config.idle_poll_s)

    async def forward_once(self) -> int:
        """Forward one batch (retrying until it is through); the number of frames acked."""
        msgs = await asyncio.to_thread(
            self.spool.peek, self.config.batch_frames, self.config.batch_bytes
        )
        self._export_spool_gauges()
        if not msgs:
            return 0
        while not await self._publish_everywhere(msgs):
            self.failures += 1
            self._export_spool_gauges()
            await asyncio.sleep(self._backoff.next_delay())
        self._backoff.reset()
        await asyncio.to_thread(self.spool.ack, [m.id for m in msgs])
        self._export_spool_gauges()
        return len(msgs)

    async def _publish_everywhere(self, msgs: Sequence[SpooledMessage]) -> bool:
        ok = True
        for publisher in self.publishers:
            pending = [m for m in msgs if m.id > self._sent_upto[publisher.name]]
            if not pending:
                continue
            try:
                await publisher.publish(pending)
            except PublishError as exc:
                logger.warning(
                    "gateway %s: output %s failed, frames kept in spool (depth %s): %s",
                    self.spool.gateway, publisher.name, self.spool.depth, exc,
                )
                ok = False
                continue
            except Exception:  # a publisher bug must not stop forwarding for good
                metrics.PUBLISH_ERRORS.labels(output=publisher.name, kind="unexpected").inc()
                logger.exception(
                    "gateway %s: output %s raised an unexpected error (a bug: please report "
                    "it); frames kept in spool (depth %s), retrying",
                    self.spool.gateway, publisher.name, self.spool.depth,
                )
                ok = False
                continue
            self._sent_upto[publisher.name] = pending[-1].id
        return ok

    def _export_spool_gauges(self) -> None:
        gateway = self.spool.gateway
        metrics.SPOOL_DEPTH.labels(gateway=gateway).set(self.spool.depth)
        metrics.SPOOL_BYTES.labels(gateway=gateway).set(self.spool.payload_bytes)
        metrics.SPOOL_OLDEST_AGE.labels(gateway=gateway).set(self.spool.oldest_age_seconds())

    async def drain(self) -> None:
        """Forward until the spool is empty (tests, shutdown; bound it with asyncio.timeout)."""
        while self.spool.depth:
            await self.forward_once()
