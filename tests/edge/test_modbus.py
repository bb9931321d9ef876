"""The Modbus poller against two independent peers: pymodbus's own server and the simulator."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import struct
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from pymodbus.client.mixin import ModbusClientMixin
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from edge.clock import GatewayClock, ScaledClock
from edge.config import ModbusDevice
from edge.modbus import ModbusPoller, PollResult
from edge.profiles import Profile, load_profile
from edge.registers import DATA_TYPES, WORD_ORDERS

PROFILES = Path(__file__).resolve().parents[2] / "deploy" / "edge" / "profiles"
DT = ModbusClientMixin.DATATYPE


# --------------------------------------------------------------- pymodbus peer


def pymodbus_registers(value: int | float, data_type: str, order: str) -> list[int]:
    """Registers for ``value`` as pymodbus itself encodes them (independent of edge).

    pymodbus knows word order (big/little); the byte swap of BADC/DCBA is done by hand.
    """
    dt = getattr(DT, data_type.upper())
    regs = ModbusClientMixin.convert_to_registers(
        value, dt, word_order="little" if order in ("CDAB", "DCBA") else "big"
    )
    if order in ("BADC", "DCBA"):
        regs = [((r & 0xFF) << 8) | (r >> 8) for r in regs]
    return regs


SAMPLES: dict[str, int | float] = {
    "int16": -12345, "uint16": 54321, "int32": -1_234_567_890, "uint32": 3_456_789_012,
    "int64": -(2**62) - 12345, "uint64": 2**64 - 7, "float32": 230.5, "float64": -1.0e-3 / 7,
}


def every_type_and_order() -> tuple[Profile, list[int], dict[str, float | int]]:
    points, regs, expected = [], [], {}
    for data_type in DATA_TYPES:
        for order in WORD_ORDERS:
            channel = f"{data_type}_{order}"
            points.append(
                {"channel": channel, "address": len(regs), "type": data_type, "word_order": order}
            )
            regs += pymodbus_registers(SAMPLES[data_type], data_type, order)
            expected[channel] = SAMPLES[data_type]
    # scale and offset on a float (the float32 CDAB registers read a second time)
    cdab = next(p["address"] for p in points if p["channel"] == "float32_CDAB")
    points.append({"channel": "kw", "address": cdab, "type": "float32", "scale": 0.001,
                   "offset": 1.0, "word_order": "CDAB"})
    expected["kw"] = SAMPLES["float32"] * 0.001 + 1.0
    profile = Profile.model_validate({"family": "all", "max_gap": 0, "points": points})
    return profile, regs, expected


class PymodbusPeer:
    """pymodbus's own TCP server with one device, optionally answering 'busy' first."""

    def __init__(self, holding: list[int], unit: int = 1, port: int = 0) -> None:
        self.busy_left = 0
        self.delay_s = 0.0  # before each answer (a stalled device or serial gateway)
        self.requests = 0
        hr = [SimData(0, values=holding, datatype=DataType.REGISTERS)]
        ir = [SimData(0, values=holding, datatype=DataType.REGISTERS)]
        bits = [SimData(0, values=[False] * 16, datatype=DataType.BITS)]
        device = SimDevice(id=unit, simdata=(bits, bits, hr, ir), action=self._action)
        self.server = ModbusTcpServer(device, address=("127.0.0.1", port))

    async def _action(self, fc, start, address, count, regs, values) -> ExcCodes | None:
        self.requests += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.busy_left > 0:
            self.busy_left -= 1
            return ExcCodes.DEVICE_BUSY
        return None

    async def start(self) -> int:
        await self.server.serve_forever(background=True)
        return self.server.transport.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        await self.server.shutdown()


@contextlib.asynccontextmanager
async def pymodbus_peer(holding: list[int]) -> AsyncIterator[tuple[PymodbusPeer, int]]:
    peer = PymodbusPeer(holding)
    port = await peer.start()
    try:
        yield peer, port
    finally:
        await peer.stop()


def device(profile: Profile | str, port: int, **kw: Any) -> ModbusDevice:
    if isinstance(profile, str):
        profile = load_profile(PROFILES / f"{profile}.toml")
    opts: dict[str, Any] = {"meter": "M1", "host": "127.0.0.1", "port": port, "unit_id": 1,
                            "profile": profile, "timeout_s": 0.5, "reconnect_delay_s": 0.05,
                            "reconnect_delay_max_s": 0.4}
    opts.update(kw)
    return ModbusDevice.model_validate(opts)


@contextlib.asynccontextmanager
async def poller(dev: ModbusDevice, clock: GatewayClock | None = None
                 ) -> AsyncIterator[ModbusPoller]:
    p = ModbusPoller(dev, clock)
    await p.start()
    try:
        yield p
    finally:
        await p.close()


def as_dict(result: PollResult) -> dict[str, float | int]:
    return dict(zip(result.channel, result.value, strict=True))


async def test_every_type_and_word_order_against_pymodbus_server():
    profile, regs, expected = every_type_and_order()
    async with pymodbus_peer(regs) as (_, port), poller(device(profile, port)) as p:
        result = await p.poll()
    assert not result.errors
    got = as_dict(result)
    assert set(got) == set(expected)
    for channel, want in expected.items():
        assert got[channel] == pytest.approx(want, rel=1e-12), channel
        if not isinstance(want, float):
            assert isinstance(got[channel], int), channel
    assert len(p.plan) == 1 and p.plan[0].request.count == len(regs)  # one block read


def _read_errors(meter: str) -> Counter[str]:
    from prometheus_client import REGISTRY

    out: Counter[str] = Counter()
    for metric in REGISTRY.collect():
        for sample in metric.samples:
            if sample.name == "edge_read_errors_total" and sample.labels["meter"] == meter:
                out[sample.labels["kind"]] += int(sample.value)
    return out


async def test_device_busy_is_retried_a_bounded_number_of_times():
    regs = pymodbus_registers(12345.0, "float32", "ABCD")
    profile = Profile.model_validate(
        {"family": "x", "points": [{"channel": "p", "address": 0, "type": "float32"}]}
    )
    dev_kw = {"busy_retries": 3, "busy_retry_delay_s": 0.0}
    async with pymodbus_peer(regs) as (peer, port), poller(device(profile, port, **dev_kw)) as p:
        peer.busy_left = 3
        ok = await p.poll()
        assert as_dict(ok) == {"p": 12345.0} and not ok.errors
        peer.busy_left, before = 10, peer.requests
        counted = _read_errors(p.meter)
        busy = await p.poll()
        assert len(busy) == 0 and [e.kind for e in busy.errors] == ["busy_exhausted"]
        assert peer.requests - before == 4  # 1 try + 3 retries, then give up
        # each busy answer once, the give-up once: nothing counted twice
        assert _read_errors(p.meter) - counted == {"busy": 4, "busy_exhausted": 1}
        assert p.connected  # busy is data, not a transport failure
        peer.busy_left = 0
        assert as_dict(await p.poll()) == {"p": 12345.0}


async def test_a_busy_device_is_stamped_from_the_try_it_answered():
    """Busy twice, 0.3 s apart, then an answer: the device sampled for the last try, so
    the reading is stamped halfway through that one, and the wait for the retries does
    not make the answer 'too slow' (max_answer_s 0.1 s here) or drop it."""
    regs = pymodbus_registers(12345.0, "float32", "ABCD")
    profile = Profile.model_validate(
        {"family": "x", "points": [{"channel": "p", "address": 0, "type": "float32"}]})
    async with pymodbus_peer(regs) as (peer, port):
        dev = device(profile, port, meter="BUSY1", busy_retries=3, busy_retry_delay_s=0.3)
        p = ModbusPoller(dev, max_answer_s=0.1)
        await p.start()
        try:
            peer.busy_left = 2
            got = await p.poll()
            assert as_dict(got) == {"p": 12345.0} and not got.errors
            block = got.blocks[0]
            assert block.received_ns - block.sent_ns < 100_000_000  # the answered try only
            assert got.ts_ns[0] - got.poll_ns >= 550_000_000  # two waits of 0.3 s before it
            assert _read_errors("BUSY1") == {"busy": 2}
        finally:
            await p.close()


async def test_an_answer_too_slow_to_stamp_is_not_sent_and_said_once(caplog):
    """A reading is stamped halfway between request and answer: an answer slower than
    ``[clock] max_answer_s`` leaves its time unknown by more than half of that, so its
    readings are dropped (counted; the meter's first said); a cumulative counter's
    next reading covers the interval."""
    caplog.set_level(logging.INFO, logger="edge.modbus")
    regs = pymodbus_registers(12345.0, "float32", "ABCD")
    profile = Profile.model_validate(
        {"family": "x", "points": [{"channel": "p", "address": 0, "type": "float32"}]})
    async with pymodbus_peer(regs) as (peer, port):
        p = ModbusPoller(device(profile, port, meter="SLOW1"), max_answer_s=0.1)
        await p.start()
        try:
            assert as_dict(await p.poll()) == {"p": 12345.0}
            peer.delay_s = 0.25
            slow = [await p.poll() for _ in range(3)]
            assert [len(r) for r in slow] == [0, 0, 0]
            assert all(not r.errors for r in slow) and p.connected  # data late, link fine
            assert _read_errors("SLOW1") == {"slow_answer": 3}
            warned = [r for r in caplog.records if "max_answer_s" in r.getMessage()
                      and r.levelno >= logging.WARNING]
            assert len(warned) == 1 and "meter SLOW1" in warned[0].getMessage()
            peer.delay_s = 0.0
            back = await p.poll()
            assert as_dict(back) == {"p": 12345.0}
            assert back.ts_ns[0] - back.blocks[0].sent_ns <= 50_000_000  # halfway, fast
            peer.delay_s = 0.25  # slow again: counted, not said again (a loaded gateway flaps)
            assert len(await p.poll()) == 0 and _read_errors("SLOW1") == {"slow_answer": 4}
            assert len([r for r in caplog.records if "max_answer_s" in r.getMessage()
                        and r.levelno >= logging.WARNING]) == 1
        finally:
            await p.close()


async def test_exception_response_keeps_connection_and_other_blocks():
    regs = list(range(10))
    profile = Profile.model_validate({"family": "x", "points": [
        {"channel": "ok", "address": 0, "type": "uint16"},
        {"channel": "missing", "address": 500, "type": "uint16"},  # outside the datastore
    ]})
    async with pymodbus_peer(regs) as (_, port), poller(device(profile, port)) as p:
        result = await p.poll()
        assert as_dict(result) == {"ok": 0}
        assert [e.kind for e in result.errors] == ["exception"]
        assert "meter M1" in str(result.errors[0]) and "holding 500x1" in str(result.errors[0])
        assert p.connected


async def test_tcp_nodelay_is_set():
    async with pymodbus_peer([1, 2]) as (_, port):
        profile = Profile.model_validate(
            {"family": "x", "points": [{"channel": "a", "address": 0, "type": "uint32"}]}
        )
        async with poller(device(profile, port)) as p:
            await p.poll()
            sock = p._client.ctx.transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_reconnect_backs_off_exponentially_up_to_the_cap_and_recovers():
    port = free_port()
    profile = Profile.model_validate(
        {"family": "x", "points": [{"channel": "a", "address": 0, "type": "uint16"}]}
    )
    dev = device(profile, port, reconnect_delay_s=0.05, reconnect_delay_max_s=0.2)
    async with poller(dev) as p:
        ceilings, waits = [], []
        for _ in range(5):
            ceilings.append(p.backoff.ceiling)
            p._next_connect = 0.0  # pretend the wait is over: test the delay sequence only
            before = time.monotonic()
            result = await p.poll()
            assert [e.kind for e in result.errors] == ["connect"]
            waits.append(p._next_connect - before)
        # after the failed start: doubled, capped; each wait within [ceiling/2, ceiling]
        assert ceilings == pytest.approx([0.1, 0.2, 0.2, 0.2, 0.2])
        assert all(c / 2 - 0.01 <= w <= c + 0.05 for c, w in zip(ceilings, waits, strict=True))
        assert "next try in" in str(result.errors[0])
        waiting = await p.poll()  # inside the backoff window: no connect attempt
        assert "waiting" in str(waiting.errors[0])
        attempts = p.connects
        peer = PymodbusPeer([7], port=port)
        await peer.start()
        try:
            await asyncio.sleep(0.25)
            result = await p.poll()
            assert as_dict(result) == {"a": 7} and p.connects == attempts + 1
            assert p.backoff.ceiling == 0.05  # reset after a good connect
        finally:
            await peer.stop()


class BlackHole:
    """Accepts TCP connections and never answers (a hung gateway)."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.writers.append(writer)
            with contextlib.suppress(ConnectionError):
                while await reader.read(1024):
                    pass

        self.server = await asyncio.start_server(hold, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        for w in self.writers:
            w.close()
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


async def run_pollers(pollers: list[ModbusPoller], seconds: float) -> dict[str, list[PollResult]]:
    got: dict[str, list[PollResult]] = {p.meter: [] for p in pollers}

    def sink_for(meter: str) -> Callable[[PollResult], None]:
        return got[meter].append

    tasks = [asyncio.create_task(p.run(sink_for(p.meter))) for p in pollers]
    await asyncio.sleep(seconds)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return got


@pytest.mark.slow
async def test_unreachable_meters_do_not_slow_the_others():
    """A refused port and a hung one (timeouts) next to a good meter polled every 100 ms."""
    profile = Profile.model_validate(
        {"family": "x", "points": [{"channel": "a", "address": 0, "type": "uint16"}]}
    )
    hole = BlackHole()
    hole_port = await hole.start()
    async with pymodbus_peer([42]) as (_, port):
        pollers = [
            ModbusPoller(device(profile, port, meter="GOOD", poll_interval_s=0.1)),
            ModbusPoller(device(profile, free_port(), meter="REFUSED", poll_interval_s=0.1)),
            ModbusPoller(device(profile, hole_port, meter="HUNG", poll_interval_s=0.1,
                                timeout_s=0.3)),
        ]
        try:
            for p in pollers:
                await p.start()
            got = await run_pollers(pollers, 2.0)
        finally:
            for p in pollers:
                await p.close()
            await hole.stop()
    good = got["GOOD"]
    assert len(good) >= 17 and all(as_dict(r) == {"a": 42} for r in good)
    gaps = [(b.poll_ns - a.poll_ns) / 1e9 for a, b in itertools.pairwise(good)]
    assert max(gaps) < 0.15, gaps  # kept its 100 ms cycle
    assert all(r.errors and not len(r) for r in got["REFUSED"] + got["HUNG"])
    assert {e.kind for r in got["HUNG"] for e in r.errors} >= {"timeout"}


# ------------------------------------------------------------------ the simulator


def simulator_port(families: dict[int, tuple[str, dict[str, float]]]):
    from simulators.devices import FAMILIES, DeviceImage
    from simulators.modbus_server import ModbusPort, UnitSlot

    units = {}
    for unit, (family, readings) in families.items():
        image = DeviceImage(FAMILIES[family])
        image.write(readings)
        units[unit] = UnitSlot(meter=f"{family}-{unit}", image=image)
    return ModbusPort("127.0.0.1", 0, units)


# what the simulator is asked to show: canonical units, counters as raw counts
INTENDED: dict[str, dict[str, float]] = {
    "sdm630": {"voltage_l1": 231.2, "voltage_l2": 229.8, "voltage_l3": 230.4,
               "current_l1": 80.25, "current_l2": 79.5, "current_l3": 81.0,
               "power_l1": 18.2, "power_l2": 18.1, "power_l3": 18.7, "power": 55.0,
               "power_factor": 0.93, "frequency": 49.98, "energy": 15234.5,
               "energy_export": 0.0},
    "pm5000": {"current_l1": 1200.5, "current_l2": 1190.0, "current_l3": 1210.25,
               "voltage_l1": 230.1, "voltage_l2": 230.2, "voltage_l3": 230.3,
               "power_l1": 250.0, "power_l2": 251.5, "power_l3": 249.5, "power": 751.0,
               "power_factor": 0.97, "frequency": 50.01,
               "energy": 1_234_567_890_123, "energy_export": 0},
    "em24": {"voltage_l1": 231.2, "voltage_l2": 229.8, "voltage_l3": 230.4,
             "current_l1": -1.234, "current_l2": 199.999, "current_l3": 0.0,
             "power_l1": 46.6, "power_l2": -1.5, "power_l3": 47.0, "power": 140.3,
             "power_factor": -0.87, "frequency": 50.1, "energy": 2**32 - 3},
    "flow": {"power": 35.25, "temperature": -12.3, "pressure": 4.25,
             "energy": 45000.125, "status": 1, "clock": 1_736_143_200.0},
    "carbon": {"energy": 2**63 + 12345, "co2": 3_000_000_123, "power": 21.5,
               "factor": 0.5703, "clock": 1_736_143_200.25, "status": 1,
               "power_factor": 0.912},
}
PROFILE_OF = {"sdm630": "sdm630", "pm5000": "pm5000", "em24": "em24", "flow": "flow-gas",
              "carbon": "carbon"}


def expected_value(family: str, channel: str) -> float:
    """What the meter means, in the edge profile's unit (canonical units)."""
    from simulators.devices import FAMILIES

    spec = FAMILIES[family].spec(channel)
    value = INTENDED[family][channel]
    if spec.counter_bits is not None:  # raw counts in the register's unit
        return value * spec.scale / spec.factor
    return value


@pytest.mark.parametrize("family", sorted(INTENDED))
async def test_every_family_decodes_to_what_the_simulator_intended(family: str):
    from simulators.devices import FAMILIES

    port = simulator_port({1: (family, INTENDED[family]), 2: (family, INTENDED[family])})
    await port.start()
    try:
        dev = device(PROFILE_OF[family], port.port, meter=f"M-{family}")
        # the gateway in the meters' time base, as a drill's scaled clock: a device clock
        # further off than [clock] device_tolerance_s would not stamp the readings
        gateway = ScaledClock(1_736_143_200 * 10**9, time.time_ns(), 1.0)
        async with poller(dev, gateway) as p:
            result = await p.poll()
    finally:
        await port.close()
    assert not result.errors
    got = as_dict(result)
    clock = INTENDED[family].get("clock")
    assert set(got) == set(INTENDED[family]) - {"clock"}
    for channel, value in got.items():
        spec = FAMILIES[family].spec(channel)
        want = expected_value(family, channel)
        if spec.dtype == "float32":
            tol = abs(want) * 1e-7
        elif spec.dtype == "float64":
            tol = abs(want) * 1e-15
        else:  # integer registers round to their resolution
            tol = spec.scale / spec.factor / 2 + abs(want) * 1e-15
        assert value == pytest.approx(want, abs=tol), f"{family}.{channel}"
    if clock is not None:  # the device's clock stamps its readings
        assert set(result.ts_ns) == {round(clock * 1000) * 1_000_000}  # whole ms, exact
    else:
        assert all(abs(ts - result.poll_ns) < 1e9 for ts in result.ts_ns)


async def test_simulator_types_and_orders_are_all_covered():
    from simulators.devices import FAMILIES

    used = {(r.dtype, r.word_order) for f in PROFILE_OF for r in FAMILIES[f].registers}
    assert {t for t, _ in used} == set(DATA_TYPES)
    assert {o for _, o in used} == set(WORD_ORDERS)


@pytest.mark.slow
async def test_simulator_busy_and_dropped_units_stay_isolated():
    """Behind one simulated gateway port: a busy unit and a silent one next to a good one."""
    from simulators.modbus_server import UnitSlot

    port = simulator_port({1: ("em24", INTENDED["em24"]), 2: ("em24", INTENDED["em24"]),
                           3: ("em24", INTENDED["em24"])})
    port.units[2] = UnitSlot("busy", port.units[2].image, mode="busy", busy_probability=1.0)
    port.units[3] = UnitSlot("drop", port.units[3].image, mode="drop")
    await port.start()
    opts = {"poll_interval_s": 0.1, "busy_retry_delay_s": 0.01, "timeout_s": 0.3}
    pollers = [ModbusPoller(device("em24", port.port, meter=f"U{u}", unit_id=u, **opts))
               for u in (1, 2, 3)]
    try:
        got = await run_pollers(pollers, 1.5)
    finally:
        for p in pollers:
            await p.close()
        await port.close()
    good = got["U1"]
    assert len(good) >= 13 and all(len(r) == 13 and not r.errors for r in good)
    assert {e.kind for r in got["U2"] for e in r.errors} == {"busy_exhausted"}
    assert {e.kind for r in got["U3"] for e in r.errors} <= {"timeout", "connect"}
    assert not any(len(r) for r in got["U2"] + got["U3"])


def test_pymodbus_encoding_agrees_with_struct():
    """Sanity of the independent encoder used above."""
    assert pymodbus_registers(230.5, "float32", "ABCD") == list(
        struct.unpack(">2H", struct.pack(">f", 230.5))
    )
