"""The edge agent's lifecycle: pollers and subscribers in, signed frames spooled, forwarded out.

::

    Modbus pollers ──► pending poll results ─┐  every frame_interval_s     ┌─► Kafka
    OPC UA data changes ─► pending readings ─┼─► one wire.Frame ─► spool ─► forwarder ─┤
    OPC UA batch events ─► pending events ───┘    (seq assigned, durable)  └─► MQTT

* constructor: validates (config, signing key, outputs); touches no network;
* ``start``: opens the spool, starts outputs, metrics, pollers and the loops;
* ``close``: always runs; stops the inputs, spools what was already read (so a
  clean stop loses nothing), lets the forwarder drain briefly, closes all.

Everything read is spooled before it is sent; the spool gives each frame its
per-(gateway, stream) sequence number inside the same transaction that stores it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge import metrics, wire
from edge.clock import GatewayClock, ScaledClock, gateway_clock
from edge.config import AgentConfig
from edge.forward import ForwardConfig, Forwarder, Publisher
from edge.framing import Columns, OverBudget, emit_within_budget, frame_budget, frame_columns
from edge.modbus import ModbusPoller, PollResult
from edge.spool import Spool

logger = logging.getLogger(__name__)

MAX_PENDING_READINGS: Final = 200_000  # OPC UA notifications waiting for the next frame
DRAIN_ON_CLOSE_S: Final = 3.0


class AgentError(RuntimeError):
    """The agent cannot start or run (bad key, no output, a loop that died)."""


def default_publishers(config: AgentConfig) -> list[Publisher]:
    """The outputs named in the config (imported lazily: a site may lack one library)."""
    out: list[Publisher] = []
    if config.outputs.kafka is not None:
        from edge.publish_kafka import KafkaPublisher

        out.append(KafkaPublisher(config.outputs.kafka, config.site))
    if config.outputs.mqtt is not None:
        from edge.publish_mqtt import MqttPublisher

        out.append(MqttPublisher(config.outputs.mqtt, config.site, config.gateway))
    return out


class Agent:
    """One gateway's agent; use ``async with Agent(config) as agent: await agent.wait()``."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        signing_key: Ed25519PrivateKey | None = None,
        publishers: Sequence[Publisher] | None = None,
        frame_interval_s: float | None = None,
        forward_config: ForwardConfig | None = None,
        clock: GatewayClock | None = None,
    ) -> None:
        self.config = config
        # gateway time for readings without a device clock and for each frame's sent_ns
        self.clock = clock if clock is not None else gateway_clock(config.clock)
        if signing_key is None:
            try:
                signing_key = wire.load_private_key(config.signing_key)
            except ValueError as exc:
                raise AgentError(f"gateway {config.gateway}: {exc}") from exc
        self._key = signing_key
        self._publishers = list(publishers) if publishers is not None else None
        self._forward_config = forward_config
        if self._publishers is None and not config.has_output:
            raise AgentError(f"gateway {config.gateway}: no [outputs.kafka] or [outputs.mqtt]")
        self.pollers = [ModbusPoller(d, self.clock) for d in config.modbus]
        intervals = [d.poll_interval_s for d in config.modbus]
        self.frame_interval_s = frame_interval_s or min(intervals, default=1.0)
        self._results: deque[PollResult] = deque()
        self._readings: deque[wire.Reading] = deque()
        self._events: deque[wire.BatchEvent] = deque()
        self._tasks: list[asyncio.Task[None]] = []
        self._flush_lock = asyncio.Lock()
        self.spool: Spool | None = None
        self.forwarder: Forwarder | None = None
        self._metrics: metrics.MetricsServer | None = None
        self._closers: list[Callable[[], Any]] = []
        # largest encoded readings frame every output takes (set at start from the outputs)
        self.frame_budget = frame_budget([config.spool.max_bytes])

    # ------------------------------------------------------------------ inputs

    def on_poll(self, result: PollResult) -> None:
        """A poller's cycle; past ``queue_frames`` waiting the oldest is dropped, counted."""
        if len(self._results) >= self.config.queue_frames:
            dropped = self._results.popleft()
            metrics.QUEUE_DROPPED.labels(stream="readings").inc()
            logger.error(
                "gateway %s: spool writer behind, dropped a poll cycle of meter %s (%s readings)",
                self.config.gateway, dropped.meter, len(dropped),
            )
        self._results.append(result)

    def on_reading(self, reading: wire.Reading) -> None:
        """A subscriber's reading (OPC UA data change), for the next frame."""
        if len(self._readings) >= MAX_PENDING_READINGS:
            self._readings.popleft()
            metrics.QUEUE_DROPPED.labels(stream="readings").inc()
        self._readings.append(reading)

    def on_readings(self, readings: Sequence[wire.Reading]) -> None:
        """A subscriber's notification message (OPC UA data changes), for the next frame."""
        for reading in readings:
            self.on_reading(reading)

    def on_batch_event(self, event: wire.BatchEvent) -> None:
        """An MES batch event; batch events are never dropped in memory (they are few)."""
        self._events.append(event)

    def on_batch_events(self, events: Sequence[wire.BatchEvent]) -> None:
        self._events.extend(events)

    # --------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        cfg = self.config
        self.spool = await asyncio.to_thread(Spool, cfg.spool, cfg.gateway)
        self._closers.append(self.spool.close)
        publishers = self._publishers if self._publishers is not None else default_publishers(cfg)
        for pub in publishers:
            await pub.start()
            self._closers.append(pub.close)
        self.forwarder = Forwarder(self.spool, publishers, self._forward_config)
        self.frame_budget = frame_budget(
            [cfg.spool.max_bytes, *(getattr(p, "max_frame_bytes", None) for p in publishers)]
        )
        if cfg.metrics_port is not None:
            self._metrics = metrics.serve_metrics(cfg.metrics_port, cfg.metrics.addr)
            self._closers.append(self._metrics.close)
        await self._start_subscribers()
        await asyncio.gather(*(p.start() for p in self.pollers))
        for p in self.pollers:
            self._closers.append(p.close)
            self._spawn(p.run(self.on_poll), f"poll {p.meter}")
        self._spawn(self._frame_loop(), "frames")
        self._spawn(self.forwarder.run(), "forward")
        if isinstance(self.clock, ScaledClock):
            logger.warning(
                "gateway %s: stamping SIMULATED time (%r); for simulator drills only",
                cfg.gateway, self.clock,
            )
        logger.info(
            "gateway %s (site %s): %s Modbus meters, %s points, frames every %.3g s",
            cfg.gateway, cfg.site, len(self.pollers), sum(p.points for p in self.pollers),
            self.frame_interval_s,
        )

    async def _start_subscribers(self) -> None:
        """OPC UA subscribers (edge.opcua): data changes and MES batch events into frames.

        ``OpcUaSubscriber(server, on_readings, on_batch_events, clock=)`` (the gateway clock
        stamps only values that carry no timestamp); ``run`` keeps a session
        up until cancelled (it reconnects itself); ``start``/``close`` are used if present.
        """
        if not self.config.opcua:
            return
        try:
            from edge.opcua import OpcUaSubscriber  # type: ignore[attr-defined,unused-ignore]
        except ImportError as exc:
            raise AgentError(
                f"gateway {self.config.gateway}: [[opcua]] configured but edge.opcua is missing"
            ) from exc
        for server in self.config.opcua:
            sub: Any = OpcUaSubscriber(server, self.on_readings, self.on_batch_events,
                                       clock=self.clock.now_ns)
            if hasattr(sub, "start"):
                await sub.start()
            if hasattr(sub, "close"):
                self._closers.append(sub.close)
            self._spawn(sub.run(), f"opcua {getattr(server, 'name', '?')}")

    def _spawn(self, coro: Any, name: str) -> None:
        self._tasks.append(asyncio.create_task(coro, name=f"{self.config.gateway} {name}"))

    async def wait(self) -> None:
        """Until cancelled; a loop that dies raises AgentError here."""
        done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            exc = task.exception()
            if exc is not None:
                where = f"gateway {self.config.gateway}"
                raise AgentError(f"{where}: {task.get_name()} failed: {exc}") from exc

    async def close(self) -> None:
        """Stop inputs, spool what was read, drain briefly, close everything (idempotent)."""
        inputs = [t for t in self._tasks if not t.get_name().endswith(("frames", "forward"))]
        await _cancel(inputs)
        await _cancel([t for t in self._tasks if t.get_name().endswith("frames")])
        if self.spool is not None:
            with contextlib.suppress(Exception):
                await self.flush()
        forward = [t for t in self._tasks if t.get_name().endswith("forward")]
        if self.forwarder is not None and forward and not forward[0].done():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(DRAIN_ON_CLOSE_S):
                    await self.forwarder.drained()
        await _cancel(forward)
        self._tasks.clear()
        for closer in reversed(self._closers):
            try:
                result = closer()
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                logger.exception("gateway %s: error while closing", self.config.gateway)
        self._closers.clear()

    async def __aenter__(self) -> Agent:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ frames

    async def _frame_loop(self) -> None:
        while True:
            await asyncio.sleep(self.frame_interval_s)
            await self.flush()

    async def flush(self) -> list[int]:
        """Spool everything pending as frames now; the sequence numbers given."""
        async with self._flush_lock:
            results, self._results = list(self._results), deque()
            readings, self._readings = list(self._readings), deque()
            events, self._events = tuple(self._events), deque()
            seqs = []
            cols = frame_columns(results, readings)
            if cols[0]:
                seqs.extend(await asyncio.to_thread(emit_within_budget, cols, self._spool_part))
            if events:
                seqs.append(await self._append_batches(events))
        if seqs and self.forwarder is not None:
            self.forwarder.notify()
        return seqs

    def _spool_part(self, cols: Columns, may_refuse: bool) -> int:
        """Spool ``cols`` as one readings frame, encoded once with its real seq (worker thread).

        Over the frame budget it raises OverBudget (the spool consumes no seq) so
        the caller halves it; a part that cannot be halved is spooled and logged.
        """
        cfg, key, now_ns, budget = self.config, self._key, self.clock.now_ns, self.frame_budget

        def encode(seq: int) -> bytes:
            data = wire.encode(wire.Frame(cfg.site, cfg.gateway, seq, now_ns(), *cols), key)
            if len(data) > budget:
                if may_refuse:
                    raise OverBudget(len(data))
                logger.error(
                    "reading %s/%s alone encodes to %s bytes, over the frame budget of %s: "
                    "an output may refuse its frame", cols[0][0], cols[1][0], len(data), budget,
                )
            return data

        assert self.spool is not None
        seq = self.spool.append("readings", encode)
        metrics.FRAMES_SPOOLED.labels(stream="readings").inc()
        return seq

    async def _append_batches(self, events: tuple[wire.BatchEvent, ...]) -> int:
        cfg, key, now_ns = self.config, self._key, self.clock.now_ns

        def encode(seq: int) -> bytes:
            frame = wire.BatchFrame(cfg.site, cfg.gateway, seq, now_ns(), events)
            return wire.encode(frame, key)

        assert self.spool is not None
        seq = await asyncio.to_thread(self.spool.append, "batches", encode)
        metrics.FRAMES_SPOOLED.labels(stream="batches").inc()
        return seq


async def _cancel(tasks: Sequence[asyncio.Task[None]]) -> None:
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
