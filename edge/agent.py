"""The edge agent's lifecycle: pollers and subscribers in, signed frames spooled, forwarded out.

::

    Modbus pollers ──► pending poll results ─┐  every frame_interval_s     ┌─► Kafka
    OPC UA data changes ─► pending readings ─┼─► one wire.Frame ─► spool ─► forwarder ─┤
    OPC UA batch events ─► pending events ───┘    (seq assigned, durable)  └─► MQTT

* constructor: validates (config, signing key, outputs); touches no network;
* ``start``: takes the spool, checks the outputs' host names, serves metrics
  (each fatal as one ``edge.errors.StartError`` naming its key), then starts
  the inputs and the loops; the outputs connect in the forwarding task, so a
  broker that is down never delays the first poll cycles;
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
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge import errors, metrics, wire
from edge.clock import GatewayClock, ScaledClock, gateway_clock
from edge.config import AgentConfig
from edge.errors import AgentError, StartError
from edge.forward import ForwardConfig, Forwarder, Publisher
from edge.framing import Columns, OverBudget, emit_within_budget, frame_budget, frame_columns
from edge.modbus import ModbusPoller, PollResult
from edge.spool import Spool

if TYPE_CHECKING:
    from edge.modbus_batches import PlcBatchSource
    from edge.opcua import OpcUaSubscriber

logger = logging.getLogger(__name__)

__all__ = ["Agent", "AgentError", "AgentTasks", "Input", "StartError", "default_publishers"]

MAX_PENDING_READINGS: Final = 200_000  # OPC UA notifications waiting for the next frame
DRAIN_ON_CLOSE_S: Final = 3.0


class Input(Protocol):
    """A source of readings or batch events (beside ``edge.forward.Publisher``, the outputs).

    Built by the agent with its sinks; ``start`` never fails for the device's
    sake (a meter or server that is down is retried by ``run``); ``run`` goes on
    until cancelled; ``close`` always runs.
    """

    @property
    def name(self) -> str: ...  # the meter or server, for task names and logs

    async def start(self) -> None: ...

    async def run(self) -> None: ...

    async def close(self) -> None: ...


@dataclass
class AgentTasks:
    """The agent's running loops, held by role: closing stops inputs, then frames, then
    forwarding (so what was read is spooled and sent before the outputs close)."""

    inputs: dict[str, asyncio.Task[None]] = field(default_factory=dict)  # label -> task
    frames: asyncio.Task[None] | None = None
    forward: asyncio.Task[None] | None = None

    def running(self) -> list[asyncio.Task[None]]:
        loops = [self.frames, self.forward]
        return [*self.inputs.values(), *(t for t in loops if t is not None)]


def default_publishers(config: AgentConfig) -> list[Publisher]:
    """The outputs named in the config (imported lazily: a site needs only its own)."""
    out: list[Publisher] = []
    if config.outputs.kafka is not None:
        from edge.publish_kafka import KafkaPublisher

        out.append(KafkaPublisher(config.outputs.kafka, config.site))
    if config.outputs.mqtt is not None:
        from edge.publish_mqtt import MqttPublisher

        out.append(MqttPublisher(config.outputs.mqtt, config.site, config.gateway))
    return out


def check_output_hosts(config: AgentConfig) -> None:
    """StartError if an output's host name does not exist (blocking: DNS)."""
    if config.outputs.kafka is not None:
        for host, port in config.outputs.kafka.bootstrap_addresses():
            errors.check_host("[outputs.kafka] bootstrap_servers", host, port)
    if config.outputs.mqtt is not None:
        mqtt = config.outputs.mqtt
        errors.check_host("[outputs.mqtt] url", mqtt.host, mqtt.port)


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
            signing_key = errors.load_signing_key(config.signing_key)
        self._key = signing_key
        self._publishers = list(publishers) if publishers is not None else None
        self._forward_config = forward_config
        if self._publishers is None and not config.has_output:
            raise StartError("[outputs]", "no [outputs.kafka] or [outputs.mqtt] configured")
        tolerance = config.clock.device_tolerance_s  # device clocks further off: not passed on
        self.pollers = [ModbusPoller(d, self.clock, self.on_poll, tolerance,
                                     config.clock.max_answer_s) for d in config.modbus]
        self.subscribers: list[OpcUaSubscriber] = []
        if config.opcua:  # asyncua takes about a second to import: only for sites using it
            from edge.opcua import OpcUaSubscriber

            self.subscribers = [
                OpcUaSubscriber(s, self.on_readings, self.on_batch_events,
                                clock=self.clock.now_ns, device_tolerance_s=tolerance)
                for s in config.opcua
            ]
        self.plc_batches: list[PlcBatchSource] = []
        if config.modbus_batches:
            from edge.modbus_batches import PlcBatchSource

            self.plc_batches = [PlcBatchSource(b, self.on_batch_events, self.clock)
                                for b in config.modbus_batches]
        # batch events the MES hands over itself: spooled before the sender gets its answer
        self.mes_inputs: list[Input] = []
        if config.mes_http is not None:
            from edge.mes_http import MesHttpEndpoint

            self.mes_inputs.append(MesHttpEndpoint(config.mes_http, self.spool_batch_events))
        if config.mes_folder is not None:
            from edge.dropfolder import DropFolder

            self.mes_inputs.append(DropFolder(config.mes_folder, self.spool_batch_events))
        intervals = [d.poll_interval_s for d in config.modbus]
        self.frame_interval_s = frame_interval_s or min(intervals, default=1.0)
        self._results: deque[PollResult] = deque()
        self._readings: deque[wire.Reading] = deque()
        self._events: deque[wire.BatchEvent] = deque()
        # the subscribers with batch sources (mappings, slots); while every batch source is
        # up, every flush sends a batch frame (a watermark); while one is down, only real
        # events go out
        self._mes_sources = [sub for sub, server in zip(self.subscribers, config.opcua,
                                                        strict=True) if server.batch_mappings]
        self.tasks = AgentTasks()
        self._flush_lock = asyncio.Lock()
        self.spool: Spool | None = None
        self.forwarder: Forwarder | None = None
        self._metrics: metrics.MetricsServer | None = None
        self._closers: list[Callable[[], Any]] = []
        # largest encoded readings frame every output takes (set at start from the outputs)
        self.frame_budget = frame_budget([config.spool.max_bytes])

    @property
    def inputs(self) -> list[tuple[str, Input]]:
        """Every input with its label (``modbus M-INC``, ``opcua plc1``)."""
        return [*((f"modbus {p.name}", p) for p in self.pollers),
                *((f"opcua {s.name}", s) for s in self.subscribers),
                *((f"plc {b.name}", b) for b in self.plc_batches),
                *((f"mes {m.name}", m) for m in self.mes_inputs)]

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

    async def spool_batch_events(self, events: Sequence[wire.BatchEvent]) -> None:
        """Events handed over by the MES: returns once they are signed and spooled."""
        self._events.extend(events)
        await self.flush()

    # --------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Take the local resources, then run; see ``edge.errors`` for what is fatal.

        Everything that can fail for good (spool, output host names, metrics port)
        is taken before anything is polled or logged, so a bad start is one
        StartError. The outputs connect in the forwarding task, not here: a broker
        that is down at start delays nothing, the first cycles go to the spool.
        """
        cfg = self.config
        self.spool = await asyncio.to_thread(errors.open_spool, cfg.spool, cfg.gateway)
        self._closers.append(self.spool.close)
        if self._publishers is None:
            await asyncio.to_thread(check_output_hosts, cfg)
        publishers = self._publishers if self._publishers is not None else default_publishers(cfg)
        if cfg.metrics_port is not None:
            self._metrics = errors.serve_metrics(cfg.metrics_port, cfg.metrics.addr)
            self._closers.append(self._metrics.close)
        self._closers.extend(p.close for p in publishers)
        self.forwarder = Forwarder(self.spool, publishers, self._forward_config)
        self.frame_budget = frame_budget(
            [cfg.spool.max_bytes, *(p.max_frame_bytes for p in publishers)]
        )
        self.tasks.forward = self._spawn(self._forward(publishers), "forward")
        self.tasks.frames = self._spawn(self._frame_loop(), "frames")
        await self._start_inputs()
        if isinstance(self.clock, ScaledClock):
            logger.warning(
                "gateway %s: stamping SIMULATED time (%r); for simulator drills only",
                cfg.gateway, self.clock,
            )
        logger.info(
            "gateway %s (site %s): %s Modbus meters, %s points, %s OPC UA servers, "
            "frames every %.3g s", cfg.gateway, cfg.site, len(self.pollers),
            sum(p.points for p in self.pollers), len(self.subscribers), self.frame_interval_s,
        )

    async def _start_inputs(self) -> None:
        """Every input started concurrently (a first Modbus connect), then run in its task."""
        inputs = self.inputs
        self._closers.extend(inp.close for _, inp in inputs)
        await asyncio.gather(*(inp.start() for _, inp in inputs))
        for label, inp in inputs:
            self.tasks.inputs[label] = self._spawn(inp.run(), label)

    async def _forward(self, publishers: Sequence[Publisher]) -> None:
        """Connect the outputs (each says itself when it cannot yet), then forward."""
        await asyncio.gather(*(_start_output(p, self.config.gateway) for p in publishers))
        assert self.forwarder is not None
        await self.forwarder.run()

    def _spawn(self, coro: Coroutine[Any, Any, None], label: str) -> asyncio.Task[None]:
        return asyncio.create_task(coro, name=f"{self.config.gateway} {label}")

    async def wait(self) -> None:
        """Until cancelled; a loop that dies raises AgentError here."""
        done, _ = await asyncio.wait(self.tasks.running(),
                                     return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            exc = task.exception()
            if exc is not None:
                where = f"gateway {self.config.gateway}"
                raise AgentError(f"{where}: {task.get_name()} failed: {exc}") from exc

    async def close(self) -> None:
        """Stop inputs, spool what was read, drain briefly, close everything (idempotent)."""
        tasks, self.tasks = self.tasks, AgentTasks()
        await _cancel(list(tasks.inputs.values()))
        await _cancel([tasks.frames] if tasks.frames is not None else [])
        if self.spool is not None:
            with contextlib.suppress(Exception):
                await self.flush()
        forward = tasks.forward
        if self.forwarder is not None and forward is not None and not forward.done():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(DRAIN_ON_CLOSE_S):
                    await self.forwarder.drained()
        await _cancel([forward] if forward is not None else [])
        for closer in reversed(self._closers):
            try:
                result = closer()
                if isinstance(result, Awaitable):
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
            if events or self._mes_live():
                # with MES inputs live, a batch frame every flush, empty when nothing
                # happened: a watermark telling compute every event up to its time was sent
                seqs.append(await self._append_batches(events))
        if seqs and self.forwarder is not None:
            self.forwarder.notify()
        return seqs

    def _mes_live(self) -> bool:
        """Every batch source up: OPC UA sessions connected, PLCs read at their last poll
        (HTTP and folder always are: what was handed over is spooled at once)."""
        if not (self._mes_sources or self.plc_batches or self.mes_inputs):
            return False
        return (all(s.connected.is_set() for s in self._mes_sources)
                and all(b.live for b in self.plc_batches))

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


async def _start_output(publisher: Publisher, gateway: str) -> None:
    """``publisher.start()``; a failure is logged, ``publish`` connects again later."""
    try:
        await publisher.start()
    except Exception:  # a publisher bug must not stop forwarding: publish() retries
        logger.exception("gateway %s: output %s failed to start (a bug: please report it); "
                         "forwarding retries it", gateway, publisher.name)


async def _cancel(tasks: Sequence[asyncio.Task[None]]) -> None:
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
