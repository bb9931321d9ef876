"""The I/O shell: paces the physics, writes ground truth, serves the protocols."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

import orjson

from simulators.config import Scenario
from simulators.modbus_server import UnitSlot
from simulators.physics import PlantModel
from simulators.publish import Publisher
from simulators.truth import Record, TruthAccountant

logger = logging.getLogger(__name__)

# real seconds between refreshes of what clients see: at 100x one step (1 simulated s),
# so a register is never more than a step behind the physics, as a real meter's
_MIN_TICK_S = 0.01
_MAX_BATCH_STEPS = 2000  # steps per tick at most, so servers keep answering


@dataclass(frozen=True)
class RunOptions:
    """How to run a scenario (CLI flags)."""

    speed: float = 60.0  # simulated seconds per real second; 0 = as fast as possible
    seed: int = 1
    duration_s: int | None = None
    ground_truth: Path | None = None
    endpoints: Path | None = None
    port_base: int | None = None  # None: the scenario's; 0: free ports
    opcua_port: int | None = None
    opcua: bool = True
    # real seconds between the servers listening and simulated t = 0: clients (an edge
    # agent) connect and read t = 0 values before the plant starts moving
    hold_s: float = 0.0


class PlantRunner:
    """Lifecycle: construct (no network) → ``start`` → ``run`` → ``close`` (always)."""

    def __init__(self, scenario: Scenario, options: RunOptions) -> None:
        self.sc = scenario
        self.opt = options
        self.model = PlantModel(scenario, options.seed)
        self.truth = TruthAccountant(scenario, self.model, options.seed)
        port_base = (scenario.endpoints.modbus_port_base if options.port_base is None
                     else options.port_base)
        opcua_port = (scenario.endpoints.opcua_port if options.opcua_port is None
                      else options.opcua_port)
        self.io = Publisher(scenario, self.model, port_base,
                            opcua_port if options.opcua else None, options.seed)
        self._gt: IO[bytes] | None = None
        self._stop = asyncio.Event()
        self.lag_s = 0.0
        self._t0: float | None = None  # monotonic time of simulated t = 0
        self._running = False  # inside run(): a Modbus read may advance the physics
        self.io.before_modbus_read(self.catch_up)
        self.origin_real_ns: int | None = None  # time.time_ns() at that instant

    async def __aenter__(self) -> PlantRunner:
        await self.start()
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def start(self) -> None:
        """Open the ground truth and bind every server (the endpoints file waits for pacing)."""
        if self.opt.ground_truth is not None:
            self._gt = self.opt.ground_truth.open("wb")
            self._write([self.truth.header()])
        await self.io.refresh()  # devices hold t = 0 values before anyone can connect
        await self.io.start_servers()

    def begin_pacing(self) -> None:
        """Fix the real instant simulated t = 0 is paced from, then write the endpoints file.

        Idempotent: ``run`` calls it, and later ``run`` calls keep the same origin,
        so the ``clock`` published in the endpoints file stays valid.
        """
        if self._t0 is not None:
            return
        hold = max(self.opt.hold_s, 0.0) if self.opt.speed > 0 else 0.0
        self._t0 = time.monotonic() + hold  # paces the steps
        self.origin_real_ns = time.time_ns() + int(hold * 1e9)  # the same instant, UTC ns
        if self.opt.endpoints is not None:
            _write_atomic(self.opt.endpoints, orjson.dumps(self.endpoints(),
                                                           option=orjson.OPT_INDENT_2))

    def endpoints(self) -> dict[str, object]:
        return {"scenario": self.sc.scenario.name, "site": self.sc.scenario.site,
                "start": self._start_iso(), "speed": self.opt.speed, "clock": self.clock(),
                **self.io.endpoints(),
                "ground_truth": str(self.opt.ground_truth) if self.opt.ground_truth else None}

    def clock(self) -> dict[str, object] | None:
        """Simulated time = origin + (real − origin_real_unix_ns) × speed, once pacing began.

        None when the run is not paced (speed 0) or pacing has not begun.
        """
        if self.opt.speed <= 0 or self.origin_real_ns is None:
            return None
        return {"origin": self._start_iso(), "origin_real_unix_ns": self.origin_real_ns,
                "speed": self.opt.speed}

    def _start_iso(self) -> str:
        return self.sc.scenario.start.isoformat().replace("+00:00", "Z")

    def stop(self) -> None:
        """Ask ``run`` to finish after the current tick."""
        self._stop.set()

    async def run(self) -> None:
        """Advance until ``duration_s`` or ``stop()``, refreshing clients every tick."""
        step_s = self.model.step_s
        speed = self.opt.speed
        tick = max(_MIN_TICK_S, step_s / speed) if speed > 0 else 0.0
        self.begin_pacing()
        assert self._t0 is not None
        t0 = self._t0
        if time.monotonic() < t0:  # --hold-s: clients connect while t = 0 holds
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), t0 - time.monotonic())
        self._running = True
        try:
            await self._loop(tick)
        finally:
            self._running = False
        await self.io.settle()  # what clients see is whole when run returns

    def _due_steps(self) -> int:
        """Steps to take for the physics to reach real time (one step ahead at most)."""
        assert self._t0 is not None
        due = int((time.monotonic() - self._t0) * self.opt.speed / self.model.step_s) + 1
        return min(due - self.model.t // self.model.step_s, _MAX_BATCH_STEPS)

    def catch_up(self, slot: UnitSlot) -> None:
        """Bring the physics to real time and ``slot``'s registers to this instant
        before a Modbus read of it is answered.

        The loop refreshes every tick, but a loaded machine stretches ticks, and
        a step is a whole simulated second: a register read in between would show
        another instant than the gateway stamps on it, and meters read at
        different moments would show one instant under different stamps, which no
        real meter does. Synchronous (no await), so it cannot interleave with the
        loop's own step.
        """
        if not self._running or self.opt.speed <= 0 or self._t0 is None or self._done():
            return
        n = self._due_steps()
        if n > 0:
            self._advance(n)
            self.io.refresh_modbus()
        self.io.refresh_unit(slot, (time.monotonic() - self._t0) * self.opt.speed)

    async def _loop(self, tick: float) -> None:
        speed = self.opt.speed
        t0 = self._t0
        assert t0 is not None
        while not self._stop.is_set() and not self._done():
            n = self._due_steps() if speed > 0 else _MAX_BATCH_STEPS // 4
            self._advance(max(n, 0))
            await self.io.refresh()
            if self._gt is not None:
                self._gt.flush()
            if speed > 0:
                self._note_lag((time.monotonic() - t0) - self.model.t / speed)
                wait = self.model.t / speed - (time.monotonic() - t0)
                await asyncio.sleep(min(max(wait, 0.0), tick) if wait > 0 else 0)
            else:
                await asyncio.sleep(0)

    def _note_lag(self, lag_s: float) -> None:
        """Warn once when the physics falls behind real time by more than 5 s."""
        if lag_s > 5.0 and self.lag_s <= 5.0:
            logger.warning("simulation runs %.1f s behind real time at speed %s",
                           lag_s, self.opt.speed)
        self.lag_s = lag_s

    def _done(self) -> bool:
        return self.opt.duration_s is not None and self.model.t >= self.opt.duration_s

    def _advance(self, steps: int) -> None:
        records: list[Record] = []
        for _ in range(steps):
            if self._done():
                break
            res = self.model.step()
            self.io.on_step(res)
            if self._gt is not None:
                records += self.truth.on_step(res)
        if records:
            self._write(records)

    def _write(self, records: list[Record]) -> None:
        assert self._gt is not None
        self._gt.write(b"".join(orjson.dumps(r) + b"\n" for r in records))

    async def close(self) -> None:
        """Write the summary, close the ground truth and every server."""
        try:
            if self._gt is not None:
                self._write(self.truth.finish())
                self._gt.close()
                self._gt = None
        finally:
            await self.io.close()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
