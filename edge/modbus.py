"""Modbus TCP poller: one per meter, block reads decoded in one pass, failures isolated.

A :class:`ModbusPoller` owns one connection (``AsyncModbusTcpClient``, its own
reconnect disabled) and a fixed read plan built from the meter's profile:
grouped requests (``edge.requests``) and one :class:`~edge.registers.BlockDecoder`
each. Errors are handled by kind, as in Telegraf and pymodbus:

* exception 06 "device busy": the same request is retried ``busy_retries``
  times, ``busy_retry_delay_s`` apart (each busy answer counts as kind ``busy``,
  giving up as ``busy_exhausted``);
* any other exception response is data: that block's points are missing this
  cycle, the connection stays;
* a timeout or a lost connection closes the client; the next cycle reconnects,
  and failed connects back off (``edge.backoff``: from ``reconnect_delay_s``,
  doubling up to ``reconnect_delay_max_s``, equal jitter; cycles in between are
  skipped, not queued), so a dead meter costs the others nothing: every poller
  runs in its own task on its own schedule.

Readings are stamped with the gateway time halfway between their request's send
and its answer (the agent's :class:`~edge.clock.GatewayClock`, system time unless
a simulator drill configures a scaled one), or with the meter's own clock register when the
profile has one (``clock = "device"``) and it is within ``[clock]
device_tolerance_s`` of the gateway times its request was sent and answered: a
clock further off either way is not passed on (``edge.clock.DeviceClocks``:
metrics, warnings). An answer slower than ``[clock] max_answer_s`` leaves its
readings' time unknown by more than half of it: they are not sent (counted as
``slow_answer``; the next reading of a cumulative counter covers the interval).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, Final

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException

from edge import metrics
from edge.backoff import Backoff
from edge.clock import (
    DEVICE_TOLERANCE_S,
    MAX_ANSWER_S,
    DeviceClocks,
    GatewayClock,
    SystemClock,
)
from edge.config import ModbusDevice
from edge.profiles import PointSpec
from edge.registers import BlockDecoder, Field, Value, decode_raw
from edge.requests import ReadRequest, plan_requests

logger = logging.getLogger(__name__)

DEVICE_BUSY: Final = 6


class ModbusPollError(RuntimeError):
    """One failed read or connect of a meter; ``kind`` labels the error metric."""

    def __init__(self, meter: str, kind: str, message: str) -> None:
        super().__init__(f"meter {meter}: {message}")
        self.meter = meter
        self.kind = kind


@dataclass(frozen=True, slots=True)
class PlannedRead:
    """One request of the plan, with its decoder and the readings it yields."""

    request: ReadRequest[PointSpec]
    decoder: BlockDecoder
    channels: tuple[str, ...]  # channels emitted as readings (the clock point is not)
    units: tuple[str, ...]
    keep: Callable[[Sequence[Value]], Any] | None  # picks emitted values; None: all
    clock_index: int | None  # index of the clock point in the decoded values


def _planned(request: ReadRequest[PointSpec]) -> PlannedRead:
    points = request.points
    fields = [
        Field(p.address - request.address, p.type, p.word_order, p.scale, p.offset)
        for p in points
    ]
    emit = [i for i, p in enumerate(points) if p.kind != "clock"]
    clock = next((i for i, p in enumerate(points) if p.kind == "clock"), None)
    keep = None if len(emit) == len(points) else _picker(emit)
    return PlannedRead(
        request,
        BlockDecoder(request.count, fields),
        tuple(points[i].channel for i in emit),
        tuple(points[i].unit for i in emit),
        keep,
        clock,
    )


def _picker(indices: list[int]) -> Callable[[Sequence[Value]], Any]:
    if len(indices) == 1:
        only = indices[0]
        return lambda values: (values[only],)
    return itemgetter(*indices)


def build_plan(device: ModbusDevice) -> list[PlannedRead]:
    """The fixed read plan of a meter (pure: no I/O)."""
    requests = plan_requests(device.points, device.gap, device.request_limit)
    return [_planned(r) for r in requests]


@dataclass(slots=True)
class BlockRead:
    """What one request returned this cycle (kept for ``--check``)."""

    read: PlannedRead
    registers: Sequence[int] | None = None
    values: Sequence[Value] | None = None
    error: ModbusPollError | None = None
    sent_ns: int | None = None  # gateway time the request was sent
    received_ns: int | None = None  # gateway time its answer was received


@dataclass(slots=True)
class PollResult:
    """One poll cycle of one meter: columnar readings plus what went wrong."""

    meter: str
    poll_ns: int
    channel: list[str] = field(default_factory=list)
    ts_ns: list[int] = field(default_factory=list)
    value: list[Value] = field(default_factory=list)
    unit: list[str] = field(default_factory=list)
    blocks: list[BlockRead] = field(default_factory=list)
    errors: list[ModbusPollError] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.value)


def add_block(result: PollResult, read: PlannedRead, regs: Sequence[int], ts_ns: int,
              received_ns: int | None = None) -> int:
    """Decode one block into ``result`` (the hot path); returns the readings added.

    ``ts_ns``: the gateway time the request was sent; ``received_ns``: its answer. The
    device sampled its registers somewhere between the two, so the readings are stamped
    at the midpoint (Cristian's estimate: off by at most half the round trip, where the
    send time is off by up to all of it, always the same way).
    """
    values = read.decoder.decode(regs)
    emitted: Sequence[Value] = values if read.keep is None else read.keep(values)
    channels, units = read.channels, read.units
    if not all(map(math.isfinite, emitted)):
        ok = [i for i, v in enumerate(emitted) if math.isfinite(v)]
        dropped = len(emitted) - len(ok)
        metrics.READ_ERRORS.labels(meter=result.meter, kind="not_finite").inc(dropped)
        emitted = [emitted[i] for i in ok]
        channels = tuple(channels[i] for i in ok)
        units = tuple(units[i] for i in ok)
    result.channel.extend(channels)
    result.value.extend(emitted)
    result.unit.extend(units)
    stamp = ts_ns if received_ns is None else ts_ns + max(received_ns - ts_ns, 0) // 2
    result.ts_ns.extend([stamp] * len(emitted))
    result.blocks.append(BlockRead(read, regs, values, sent_ns=ts_ns, received_ns=received_ns))
    return len(emitted)


def device_clock_read(result: PollResult) -> tuple[int, int, int] | None:
    """The meter's own clock and the gateway times its request was sent and answered.

    All epoch ns; None when the profile has no clock point or its block was not
    read. Integer clocks convert exactly (epoch ms * 1 000 000), not through a float
    of seconds, which would round to 256 ns at today's epoch.
    """
    for block in result.blocks:
        idx = block.read.clock_index
        if idx is None or block.registers is None:
            continue
        point = block.read.request.points[idx]
        start = point.address - block.read.request.address
        raw = decode_raw(block.registers[start : start + point.registers], point.type,
                         point.word_order)
        ns_per_count = point.scale * 1e9
        if isinstance(raw, int) and ns_per_count == round(ns_per_count):
            clock = raw * round(ns_per_count) + round(point.offset * 1e9)
        elif math.isfinite(raw):
            clock = round((raw * point.scale + point.offset) * 1e9)
        else:
            return None
        sent = result.poll_ns if block.sent_ns is None else block.sent_ns
        received = sent if block.received_ns is None else block.received_ns
        return (clock, sent, received) if clock > 0 else None
    return None


class ModbusPoller:
    """Polls one meter on its own schedule; see the module docstring for error handling."""

    def __init__(
        self,
        device: ModbusDevice,
        clock: GatewayClock | None = None,
        sink: Callable[[PollResult], None] | None = None,
        device_tolerance_s: float = DEVICE_TOLERANCE_S,
        max_answer_s: float = MAX_ANSWER_S,
    ) -> None:
        self.device = device
        self.meter = device.meter
        self.clock: GatewayClock = clock if clock is not None else SystemClock()
        # the device clock, when it stamps: passed on only within this of the gateway's
        self.device_clocks = DeviceClocks(device_tolerance_s, "clock")
        self.max_answer_ns = round(max_answer_s * 1e9)  # gateway clock
        self._slow_said = False  # a too slow answer was said (the rest are counted)
        self.sink = sink  # where ``run`` hands each cycle's result (the agent's on_poll)
        self.plan = build_plan(device)
        self._client: AsyncModbusTcpClient | None = None
        self.backoff = Backoff(device.reconnect_delay_s, device.reconnect_delay_max_s)
        self._next_connect = 0.0  # monotonic time of the next allowed connect attempt
        self.connects = 0

    @property
    def name(self) -> str:
        return self.meter

    @property
    def points(self) -> int:
        return sum(len(r.channels) for r in self.plan)

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    def _new_client(self) -> AsyncModbusTcpClient:
        dev = self.device
        # reconnect_delay=0: pymodbus' own reconnect off, we back off per meter
        return AsyncModbusTcpClient(
            dev.host, port=dev.port, timeout=dev.timeout_s, retries=0,
            reconnect_delay=0, name=f"modbus {dev.meter}",
        )

    async def start(self) -> None:
        """First connect; a meter that is down now is retried by later cycles."""
        try:
            await self._ensure_connected()
        except ModbusPollError as exc:
            logger.warning("%s (will retry)", exc)

    async def _ensure_connected(self) -> AsyncModbusTcpClient:
        if self._client is not None and self._client.connected:
            return self._client
        now = time.monotonic()
        if now < self._next_connect:
            raise ModbusPollError(
                self.meter, "connect", f"{self._endpoint}: waiting {self._next_connect - now:.1f} s"
                " before the next connect attempt",
            )
        self._drop_client()
        client = self._new_client()
        self.connects += 1
        metrics.RECONNECTS.labels(meter=self.meter).inc()
        if not await client.connect():
            client.close()
            delay = self.backoff.next_delay()
            self._next_connect = time.monotonic() + delay
            raise ModbusPollError(
                self.meter, "connect",
                f"cannot connect to {self._endpoint}, next try in {delay:.1f} s",
            )
        _set_nodelay(client)
        self._client = client
        self.backoff.reset()
        if self.device.workarounds.pause_after_connect_s:
            await asyncio.sleep(self.device.workarounds.pause_after_connect_s)
        logger.info("meter %s: connected to %s", self.meter, self._endpoint)
        return client

    @property
    def _endpoint(self) -> str:
        d = self.device
        return f"{d.host}:{d.port} unit {d.unit_id}"

    def _drop_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def _read(self, client: AsyncModbusTcpClient, req: ReadRequest[PointSpec]
                    ) -> tuple[list[int], int]:
        """The block's registers and the gateway time the answered try was sent: a device
        that said "busy" first sampled its registers for the last try, not the first."""
        call = (
            client.read_holding_registers if req.table == "holding" else client.read_input_registers
        )
        where = f"{req.table} {req.address}x{req.count} at {self._endpoint}"
        for attempt in range(self.device.busy_retries + 1):
            sent_ns = self.clock.now_ns()
            try:
                resp = await call(req.address, count=req.count, device_id=self.device.unit_id)
            except ModbusException as exc:
                self._drop_client()  # a late answer must not be taken for the next request's
                kind = "transport" if isinstance(exc, ConnectionException) else "timeout"
                raise ModbusPollError(self.meter, kind, f"{where}: {exc}") from exc
            if not resp.isError():
                if len(resp.registers) < req.count:
                    raise ModbusPollError(
                        self.meter, "short", f"{where}: got {len(resp.registers)} registers"
                    )
                return list(resp.registers), sent_ns
            code = getattr(resp, "exception_code", None)
            if code != DEVICE_BUSY:
                raise ModbusPollError(self.meter, "exception", f"{where}: exception code {code}")
            # every busy answer counts once as "busy"; the give-up below as "busy_exhausted"
            metrics.READ_ERRORS.labels(meter=self.meter, kind="busy").inc()
            if attempt < self.device.busy_retries:
                await asyncio.sleep(self.device.busy_retry_delay_s)
        raise ModbusPollError(
            self.meter, "busy_exhausted",
            f"{where}: device busy after {self.device.busy_retries} retries",
        )

    async def read_bits(self, table: str, address: int, count: int = 1) -> list[bool]:
        """Coils (FC 1) or discrete inputs (FC 2) on this poller's connection.

        For a PLC's running bit (``edge.modbus_batches``); failures are
        ModbusPollError of the same kinds as register reads.
        """
        client = await self._ensure_connected()
        call = client.read_coils if table == "coil" else client.read_discrete_inputs
        where = f"{table} {address}x{count} at {self._endpoint}"
        try:
            resp = await call(address, count=count, device_id=self.device.unit_id)
        except ModbusException as exc:
            self._drop_client()
            kind = "transport" if isinstance(exc, ConnectionException) else "timeout"
            raise ModbusPollError(self.meter, kind, f"{where}: {exc}") from exc
        if resp.isError():
            code = getattr(resp, "exception_code", None)
            raise ModbusPollError(self.meter, "exception", f"{where}: exception code {code}")
        return [bool(b) for b in resp.bits[:count]]

    async def poll(self) -> PollResult:
        """One cycle: every block read once; failed blocks are reported, never raised."""
        now_ns = self.clock.now_ns
        result = PollResult(self.meter, now_ns())
        try:
            client = await self._ensure_connected()
        except ModbusPollError as exc:
            result.errors.append(exc)
        else:
            for read in self.plan:
                try:
                    regs, sent_ns = await self._read(client, read.request)
                except ModbusPollError as exc:
                    result.errors.append(exc)
                    result.blocks.append(BlockRead(read, error=exc))
                    if exc.kind in ("timeout", "transport"):
                        break  # connection gone: the rest of the cycle would fail the same way
                    continue
                received_ns = now_ns()
                if self._too_slow(received_ns - sent_ns):
                    result.blocks.append(BlockRead(read, regs, sent_ns=sent_ns,
                                                   received_ns=received_ns))
                    continue
                add_block(result, read, regs, sent_ns, received_ns)
        self._finish(result)
        return result

    def _too_slow(self, took_ns: int) -> bool:
        """Whether an answer took too long for its readings' time to be known (counted;
        the meter's first is said, the rest only counted: a loaded gateway flaps)."""
        if took_ns <= self.max_answer_ns:
            return False
        metrics.READ_ERRORS.labels(meter=self.meter, kind="slow_answer").inc()
        log = logger.debug if self._slow_said else logger.warning
        self._slow_said = True
        log("meter %s: an answer took %.3f s, more than [clock] max_answer_s (%g s): its "
            "readings' time is that uncertain, so they are not sent (counters are "
            "cumulative: the next reading covers the interval); further ones are counted in "
            "edge_read_errors{kind=\"slow_answer\"}", self.meter, took_ns / 1e9,
            self.max_answer_ns / 1e9)
        return True

    def _finish(self, result: PollResult) -> None:
        if self.device.clock == "device":
            read = device_clock_read(result)
            if read is not None:
                device_ns, sent_ns, received_ns = read
                ts = self.device_clocks.stamp(self.meter, device_ns, sent_ns, len(result),
                                              received_ns)
                if ts == device_ns:  # else: kept, each block's own stamp
                    result.ts_ns = [ts] * len(result.ts_ns)
        for exc in result.errors:
            metrics.READ_ERRORS.labels(meter=self.meter, kind=exc.kind).inc()
            logger.warning("%s", exc)
        metrics.POINTS_READ.labels(meter=self.meter).inc(len(result))
        metrics.DEVICE_UP.labels(meter=self.meter).set(0 if result.errors else 1)
        if self.device.workarounds.close_after_poll:
            self._drop_client()

    async def run(self, sink: Callable[[PollResult], None] | None = None) -> None:
        """Poll every ``poll_interval_s`` on a drift-free schedule until cancelled.

        Each result goes to ``sink``, else to the one given to the constructor.
        """
        sink = sink or self.sink
        if sink is None:
            raise ValueError(f"meter {self.meter}: run() needs a sink for its poll results")
        interval = self.device.poll_interval_s
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            started = loop.time()
            result = await self.poll()
            took = loop.time() - started
            metrics.POLL_SECONDS.labels(meter=self.meter).observe(took)
            sink(result)
            due += interval
            if loop.time() > due:  # overran: skip the missed slots instead of bursting
                metrics.POLL_OVERRUNS.labels(meter=self.meter).inc()
                due += interval * math.ceil((loop.time() - due) / interval)
            await asyncio.sleep(max(0.0, due - loop.time()))

    async def close(self) -> None:
        self._drop_client()


def _set_nodelay(client: AsyncModbusTcpClient) -> None:
    """Small request/response pairs: never wait for Nagle's coalescing."""
    transport = client.ctx.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
