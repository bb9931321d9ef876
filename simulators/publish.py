"""What clients see: device images and OPC UA variables refreshed from physics.

Applies the transport faults (dropout, busy, stuck, clock skew) and the batch
lifecycle on OPC UA slots, including late end events (which slot shows which
batch when: ``simulators/slots.py``).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from datetime import datetime, timedelta

from simulators.config import Scenario
from simulators.devices import FAMILIES, DeviceImage
from simulators.modbus_server import ModbusPort, UnitSlot
from simulators.opcua_server import MIN_DATETIME, OpcuaPlant
from simulators.physics import MeterState, PlantModel, StepResult
from simulators.schedule import STATE_CODES
from simulators.slots import SlotUse, plan_slots

logger = logging.getLogger(__name__)
Write = tuple[str, object, float]  # node, value, simulated time


class Publisher:
    """Owns the Modbus ports and the OPC UA plant and keeps them current."""

    def __init__(self, sc: Scenario, model: PlantModel, port_base: int, opcua_port: int | None,
                 seed: int) -> None:
        self.sc = sc
        self.model = model
        self.start = sc.scenario.start
        self.rng = random.Random(seed + 1)  # auxiliary readings only, never the truth
        host = sc.endpoints.host
        self.ports: dict[int, ModbusPort] = {}
        self.slots: list[tuple[MeterState, UnitSlot]] = []
        for ms in model.meters:
            addr = ms.cfg.modbus
            if addr is None:
                continue
            port = self.ports.get(addr.port_offset)
            if port is None:
                number = port_base + addr.port_offset if port_base else 0
                port = self.ports[addr.port_offset] = ModbusPort(host, number, {}, seed)
            slot = UnitSlot(ms.cfg.id, DeviceImage(FAMILIES[ms.cfg.family]))
            port.units[addr.unit] = slot
            self.slots.append((ms, slot))
        self.opcua = OpcuaPlant(sc, host, opcua_port) if opcua_port is not None else None
        self._opcua_meters = [ms for ms in model.meters if ms.cfg.modbus is None]
        self._by_slot = {id(slot): ms for ms, slot in self.slots}
        self._pending: list[Write] = []
        self._plan = plan_slots(sc, model.faults.late_ends)
        # step -> slot uses whose start / end goes out in that step
        self._shows: dict[int, list[SlotUse]] = {}
        self._ends: dict[int, list[SlotUse]] = {}
        for use in self._plan.values():
            self._shows.setdefault(use.shown_s, []).append(use)
            self._ends.setdefault(use.ended_s, []).append(use)
        self._states: dict[str, str] = {}
        self._serving = False  # servers started (injected outages only after that)
        self._restart: asyncio.Task[None] | None = None  # an injected stop or start

    def when(self, t: float) -> datetime:
        return self.start + timedelta(seconds=t)

    async def start_servers(self) -> None:
        self._serving = True
        for port in self.ports.values():
            await port.start()
        if self.opcua is not None:
            await self.opcua.start()

    async def settle(self) -> None:
        """Wait for an injected stop or start in flight (the end of a run, a close)."""
        if self._restart is not None:
            await self._restart

    async def close(self) -> None:
        self._serving = False
        await self.settle()
        for port in self.ports.values():
            await port.close()
        if self.opcua is not None:
            await self.opcua.close()

    def on_step(self, res: StepResult) -> None:
        """Queue the OPC UA batch lifecycle writes of one step: starts, then ends."""
        if self.opcua is None:
            return
        for b in res.started:
            use = self._plan[b.id]
            if use.waited:
                logger.info("%s: batch %s starts while every OPC UA slot still shows a batch "
                            "whose end is not published; slot %d shows it from t=%d s",
                            b.asset, b.id, use.slot, use.shown_s)
        for use in self._shows.pop(res.t, []):
            b, slot = use.batch, f"{use.batch.asset}.Batch{use.slot}"
            at = use.shown_s if use.waited else b.start_s  # source time: when it went out
            self._pending += [(f"{slot}.BatchId", b.id, at),
                              (f"{slot}.Product", b.product, at),
                              (f"{slot}.Unit", b.unit, at),
                              (f"{slot}.StartTime", self.when(b.start_s), at),
                              (f"{slot}.EndTime", MIN_DATETIME, at),
                              (f"{slot}.Quantity", 0.0, at),
                              (f"{slot}.Running", True, at)]
        for use in self._ends.pop(res.t, []):
            b, slot = use.batch, f"{use.batch.asset}.Batch{use.slot}"
            self._pending += [(f"{slot}.EndTime", self.when(b.end_s), res.t),
                              (f"{slot}.Quantity", b.quantity, res.t),
                              (f"{slot}.Running", False, res.t)]

    async def refresh(self) -> None:
        """Bring every device and variable up to the model's current time."""
        now = self.model.t
        self._refresh_modbus(now)
        if self._serving:
            await self._port_dropouts(now)
        if self.opcua is not None:
            await self._refresh_opcua(now)

    def before_modbus_read(self, hook: Callable[[UnitSlot], None]) -> None:
        """Call ``hook`` with the unit's slot before each Modbus request is answered."""
        for port in self.ports.values():
            port.before_answer = hook

    def refresh_modbus(self) -> None:
        """Bring the Modbus device images up to the model's current time."""
        self._refresh_modbus(self.model.t)

    def refresh_unit(self, slot: UnitSlot, at_s: float) -> None:
        """One device's registers as at simulated ``at_s`` within the last step: a real
        meter's counter is current when read, not a whole step ahead or behind."""
        if slot.mode != "drop":  # a dropped-out device answers nothing anyway
            self._write_image(self._by_slot[id(slot)], slot, at_s)

    def _refresh_modbus(self, now: int) -> None:
        faults = self.model.faults
        for ms, slot in self.slots:
            mid = ms.cfg.id
            slot.mode = "drop" if faults.dropout(mid, now) else "ok"
            slot.busy_probability = faults.busy_probability(mid, now)
            if slot.busy_probability and slot.mode == "ok":
                slot.mode = "busy"
            self._write_image(ms, slot, None)

    def _write_image(self, ms: MeterState, slot: UnitSlot, at_s: float | None) -> None:
        """The device's registers at the model's time, or at ``at_s`` inside the last step;
        a stuck device keeps what it showed."""
        faults, now, mid = self.model.faults, self.model.t, ms.cfg.id
        if faults.stuck(mid, now):
            return
        readings = self.model.readings(ms, self.rng, at_s)
        at = now if at_s is None else at_s
        readings["clock"] = self.start.timestamp() + at + faults.skew_s(mid, now)
        slot.image.write(readings)

    async def _port_dropouts(self, now: int) -> None:
        for port in self.ports.values():
            down = all(u.mode == "drop" for u in port.units.values())
            if down and port.listening:
                logger.info("modbus port %s drops out (connection refused)", port.port)
                await port.close()
            elif not down and not port.listening:
                await port.start()

    async def _refresh_opcua(self, now: int) -> None:
        assert self.opcua is not None
        down = self.model.faults.opcua_down(now)
        # an injected restart runs beside the refresh loop: stopping and rebuilding the
        # address space takes real seconds, hundreds of simulated ones at 100x, during
        # which the Modbus meters must keep counting as real ones do
        busy = self._restart is not None and not self._restart.done()
        if down and self.opcua.running and not busy:
            self._restart = asyncio.create_task(self.opcua.stop())
        # a state holds from the start of the step it was taken for (the schedule's time),
        # as a batch's start and end do: stamped a step later, every boundary knot the
        # state gives would sit a step (1 s) off the true change of power
        since = self.model.schedule.t
        for asset, state in self.model.schedule.state.items():
            if self._states.get(asset) != state:
                self._states[asset] = state
                self._pending += [(f"{asset}.State", state, since),
                                  (f"{asset}.StateCode", STATE_CODES[state], since)]
        pending, self._pending = self._pending, []
        for node, value, t in pending:
            await self.opcua.write(node, value, self.when(t))
        for ms in self._opcua_meters:
            await self._write_meter(ms, now)
        if self._serving and not down and not self.opcua.running and not busy:
            self._restart = asyncio.create_task(self.opcua.start())

    async def _write_meter(self, ms: MeterState, now: int) -> None:
        assert self.opcua is not None
        faults = self.model.faults
        mid = ms.cfg.id
        counter, rate = (("Energy", "Power") if ms.cfg.family == "opcua_energy"
                         else ("Volume", "Flow"))
        ts = self.when(now + faults.skew_s(mid, now))
        if faults.dropout(mid, now):
            for name in (counter, rate):
                await self.opcua.write_status(f"{mid}.{name}", False, ts)
            return
        if faults.stuck(mid, now):
            return
        await self.opcua.write(f"{mid}.{counter}", ms.counter.raw(ms.energy), ts)
        await self.opcua.write(f"{mid}.{rate}", ms.rate, ts)

    def endpoints(self) -> dict[str, object]:
        """What is actually bound, for the ``--endpoints`` file."""
        modbus = [{"meter": slot.meter, "family": ms.cfg.family, "host": port.host,
                   "port": port.port, "unit": unit, "port_offset": offset}
                  for offset, port in sorted(self.ports.items())
                  for unit, slot in sorted(port.units.items())
                  for ms in [self.model.by_id[slot.meter]]]
        opcua = ({"url": self.opcua.url, "namespace": self.opcua.uri}
                 if self.opcua is not None else None)
        return {"modbus": modbus, "opcua": opcua}
