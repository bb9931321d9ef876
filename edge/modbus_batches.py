"""``[[modbus_batches]]``: batch boundaries from a PLC's registers over Modbus TCP.

Many lines have no MES with OPC UA: the PLC counts batches. Per asset:

* ``batch_number``: an integer register (or pair); a change of number is a
  batch boundary (the previous batch ends, the next starts), 0 means no batch;
* ``running`` (optional): a coil, discrete input or one bit of a register;
  with it, a batch runs only while the bit is set;
* ``product_code`` (optional) and ``products``: a code register and the table
  naming each code (``{ "1" = "clinker" }``); an unknown code travels as its
  number and is warned about once;
* ``quantity`` (optional) with ``unit``: the quantity register, as the batch's
  end was polled (or the poll before, when the next batch reset it).

The registers are read by a ``ModbusPoller`` of a generated profile (same
grouping, busy retries, reconnect backoff and metrics as a meter, named
``<asset>``), and the values fed to a ``BatchTracker``. A PLC register has no
timestamp: events carry the gateway time of the poll that saw the change, so
poll a batch PLC faster (``poll_interval_s``) than the timing you need. A batch
already running when the agent starts is not started again (its start time is
not known here; the previous run sent it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from edge import metrics, wire
from edge.batch_tracker import BatchTracker, Observation
from edge.clock import GatewayClock, SystemClock
from edge.config import ModbusDevice
from edge.modbus import ModbusPoller, ModbusPollError, PollResult
from edge.modbus_batches_config import PlcBatches, RegisterRef
from edge.profiles import PointSpec, Profile

logger = logging.getLogger(__name__)

BatchSink = Callable[[list[wire.BatchEvent]], None]


def plc_device(cfg: PlcBatches) -> ModbusDevice:
    """The registers as a meter of a generated profile, for a ModbusPoller."""
    points = [_point("batch_number", cfg.batch_number)]
    if cfg.product_code is not None:
        points.append(_point("product_code", cfg.product_code))
    if cfg.quantity is not None:
        points.append(_point("quantity", cfg.quantity))
    if cfg.running is not None and cfg.running.table in ("holding", "input"):
        points.append(PointSpec(channel="running", address=cfg.running.address,
                                type="uint16", table=cfg.running.table))
    # neighbouring registers of one PLC data block: a few unused ones may be read over
    profile = Profile(family="plc-batches", max_gap=8, points=tuple(points))
    return ModbusDevice(meter=cfg.asset, host=cfg.host, port=cfg.port,
                        unit_id=cfg.unit_id, profile=profile,
                        poll_interval_s=cfg.poll_interval_s, timeout_s=cfg.timeout_s,
                        reconnect_delay_s=cfg.reconnect_delay_s,
                        reconnect_delay_max_s=cfg.reconnect_delay_max_s, clock="gateway")


def _point(channel: str, ref: RegisterRef) -> PointSpec:
    return PointSpec(channel=channel, address=ref.address, type=ref.type, table=ref.table,
                     word_order=ref.word_order, scale=ref.scale)


class PlcBatchSource:
    """An agent input: polls one PLC's batch registers, hands batch events over."""

    def __init__(self, config: PlcBatches, on_events: BatchSink,
                 clock: GatewayClock | None = None) -> None:
        self.config = config
        self._on_events = on_events
        self.poller = ModbusPoller(plc_device(config), clock or SystemClock())
        self.tracker = BatchTracker(config.asset, has_running=config.running is not None,
                                    unit=config.unit, start_at_first_sight=False)
        self.live = False  # the last poll read the batch number
        self.last_result: PollResult | None = None  # for --check
        self._unknown_codes: set[int] = set()

    @property
    def name(self) -> str:
        return self.config.asset

    async def start(self) -> None:
        await self.poller.start()

    async def close(self) -> None:
        await self.poller.close()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.config.poll_interval_s
            events = await self.poll()
            if events:
                self._on_events(events)
            await asyncio.sleep(max(0.0, due - loop.time()))

    async def poll(self) -> list[wire.BatchEvent]:
        """One read of the registers; the events the values mean."""
        result = self.last_result = await self.poller.poll()
        values = _values(result)
        running: bool | None = None
        bit = self.config.running
        if bit is not None and bit.table in ("coil", "discrete") and "batch_number" in values:
            try:
                running = (await self.poller.read_bits(bit.table, bit.address))[0]
            except ModbusPollError as exc:
                logger.warning("%s", exc)
                values.clear()
        elif bit is not None and "running" in values:
            running = bool((int(values["running"]) >> bit.bit) & 1)
        self.live = "batch_number" in values and (bit is None or running is not None)
        if not self.live:
            return []  # nothing read: the batch keeps what it showed
        return self._observe(values, running, result.poll_ns)

    def _observe(self, values: dict[str, Any], running: bool | None,
                 ts: int) -> list[wire.BatchEvent]:
        cfg = self.config
        obs = [Observation("batch_id", cfg.batch_id(int(values["batch_number"])), ts)]
        if "product_code" in values:
            obs.append(Observation("product", self._product(int(values["product_code"])), ts))
        if "quantity" in values:
            obs.append(Observation("quantity", float(values["quantity"]), ts))
        if running is not None:
            obs.append(Observation("running", running, ts))
        out = []
        for tracked in self.tracker.observe(obs):
            ev = tracked.event
            metrics.BATCH_EVENTS.labels(source=f"modbus {cfg.asset}", kind=ev.kind).inc()
            logger.info("plc %s: batch %s %s (poll at %s)", cfg.asset, ev.batch_id, ev.kind,
                        ev.ts_ns)
            out.append(ev)
        if self.tracker.unsent_start is not None:
            logger.warning("plc %s: batch %s was already running when the agent started; "
                           "its start is not sent again (no start time in the PLC)",
                           cfg.asset, self.tracker.unsent_start)
            self.tracker.unsent_start = None
        return out

    def describe(self) -> str:
        """The batch state as the edge reads the registers now (for ``--check``)."""
        return self.tracker.describe() if self.live else "unknown (batch registers not read)"

    def _product(self, code: int) -> str:
        name = self.config.products.get(str(code))
        if name is None:
            if code not in self._unknown_codes:
                self._unknown_codes.add(code)
                logger.warning("plc %s: product code %s is not in products: sent as %r",
                               self.config.asset, code, str(code))
            return str(code)
        return name


def _values(result: PollResult) -> dict[str, Any]:
    return dict(zip(result.channel, result.value, strict=True))
