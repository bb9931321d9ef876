"""Independent Modbus clients (pymodbus, Debian's mbpoll) read the simulated meters."""

from __future__ import annotations

import asyncio
import math
import shutil
import struct

import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from simulators.physics import MeterState
from simulators.runner import PlantRunner

FMT = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "int64": "q", "uint64": "Q",
       "float32": "f", "float64": "d"}


def decode(regs: list[int], dtype: str, order: str) -> float:
    words = [r.to_bytes(2, "big") for r in regs]
    if order in ("BADC", "DCBA"):
        words = [w[::-1] for w in words]
    if order in ("CDAB", "DCBA"):
        words = words[::-1]
    return struct.unpack(">" + FMT[dtype], b"".join(words))[0]


# what a poller needs per family, as docs/simulators.md states it:
# (function, energy address, type, order, kWh|unit per raw count or None for value,
#  power address, power type, order, power scale to the carrier rate unit)
POLL = {
    "sdm630": ("input", 0x48, "float32", "ABCD", None, 0x34, "float32", "ABCD", 0.001),
    "pm5000": ("holding", 3203, "int64", "ABCD", 0.001, 3059, "float32", "ABCD", 1.0),
    "em24": ("holding", 0x34, "uint32", "CDAB", 0.1, 0x28, "int32", "CDAB", 0.0001),
    "flow": ("input", 4, "float64", "DCBA", None, 0, "float32", "BADC", 1.0),
    "carbon": ("holding", 0, "uint64", "CDAB", 0.001, 6, "float32", "DCBA", 1.0),
}
WORDS = {"float32": 2, "float64": 4, "int64": 4, "uint64": 4, "uint32": 2, "int32": 2}


async def _read(client: AsyncModbusTcpClient, table: str, address: int, count: int,
                unit: int) -> list[int]:
    if table == "input":
        rr = await client.read_input_registers(address, count=count, device_id=unit)
    else:
        rr = await client.read_holding_registers(address, count=count, device_id=unit)
    assert not rr.isError(), rr
    return list(rr.registers)


def _true_counter(ms: MeterState) -> float:
    """The meter's counter in its unit, from the simulator's own state."""
    c = ms.counter
    return c.raw(ms.energy) * c.resolution if c.bits is not None else c.raw(ms.energy)


async def test_pymodbus_reads_every_family(plant_factory) -> None:
    async with plant_factory("small", duration_s=1500) as runner:
        runner: PlantRunner
        eps = runner.endpoints()["modbus"]
        assert {e["family"] for e in eps} == set(POLL)
        for ep in eps:
            ms = runner.model.by_id[ep["meter"]]
            table, e_addr, e_type, e_order, e_res, p_addr, p_type, p_order, p_scale = \
                POLL[ep["family"]]
            client = AsyncModbusTcpClient(ep["host"], port=ep["port"], timeout=2, retries=0)
            await client.connect()
            try:
                raw = decode(await _read(client, table, e_addr, WORDS[e_type], ep["unit"]),
                             e_type, e_order)
                power = decode(await _read(client, table, p_addr, WORDS[p_type], ep["unit"]),
                               p_type, p_order) * p_scale
            finally:
                client.close()
            counter = raw * e_res if e_res is not None else raw
            tol = 0.01 if e_type == "float32" else 1e-9  # float32 kWh near 15 000: 1/512
            assert math.isclose(counter, _true_counter(ms), abs_tol=tol), ep["meter"]
            # the counter increased by the true energy of the run (within one count)
            start = ms.cfg.counter_start
            assert abs((counter - start) - ms.energy) <= (e_res or 0.01) + tol, ep["meter"]
            assert math.isclose(power, ms.rate, rel_tol=1e-3, abs_tol=0.01), ep["meter"]


async def test_block_reads_and_exceptions(plant_factory) -> None:
    async with plant_factory("small", duration_s=60, opcua=False) as runner:
        ep = next(e for e in runner.endpoints()["modbus"] if e["meter"] == "M-PRESS")
        client = AsyncModbusTcpClient(ep["host"], port=ep["port"], timeout=2, retries=0)
        await client.connect()
        try:
            regs = await _read(client, "input", 0, 76, 1)  # the documented poll block
            volts = decode(regs[0:2], "float32", "ABCD")
            assert 225.0 < volts < 235.0
            freq = decode(regs[0x46:0x48], "float32", "ABCD")
            assert 49.9 < freq < 50.1
            rr = await client.read_input_registers(200, count=10, device_id=1)
            assert rr.isError() and rr.exception_code == 2  # outside the table
            rr = await client.read_input_registers(0, count=2, device_id=99)
            assert rr.isError() and rr.exception_code == 0x0B  # no such unit behind gateway
        finally:
            client.close()


async def _mbpoll_registers(ep: dict, address: int, count: int, table: str) -> list[int]:
    """Registers read by Debian's mbpoll (table 4 = holding, 3 = input), as ints."""
    assert shutil.which("mbpoll"), "mbpoll missing: deploy/setup-system.sh installs it"
    proc = await asyncio.create_subprocess_exec(
        "mbpoll", "-m", "tcp", "-p", str(ep["port"]), "-a", str(ep["unit"]), "-0",
        "-r", str(address), "-c", str(count), "-t", f"{table}:hex", "-1", "-o", "2", ep["host"],
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err.decode()
    lines = [ln for ln in out.decode().splitlines() if ln.startswith("[")]
    return [int(ln.split()[-1], 16) for ln in lines]


async def test_mbpoll_reads_32_and_64_bit_counters(plant_factory) -> None:
    async with plant_factory("small", duration_s=600, opcua=False) as runner:
        eps = {e["meter"]: e for e in runner.endpoints()["modbus"]}
        # em24: uint32 word-swapped (CDAB) counter, holding registers
        regs = await _mbpoll_registers(eps["M-OVEN"], 0x34, 2, "4")
        ms = runner.model.by_id["M-OVEN"]
        assert len(regs) == 2
        assert decode(regs, "uint32", "CDAB") == ms.counter.raw(ms.energy)
        # pm5000: int64 Wh counter, big-endian, holding registers 3203..3206
        regs = await _mbpoll_registers(eps["M-INC"], 3203, 4, "4")
        ms = runner.model.by_id["M-INC"]
        assert len(regs) == 4
        assert decode(regs, "int64", "ABCD") == ms.counter.raw(ms.energy)


async def test_busy_and_dropout_faults(plant_factory) -> None:
    async with plant_factory("faults", duration_s=1260, opcua=False) as runner:
        eps = {e["meter"]: e for e in runner.endpoints()["modbus"]}
        busy = eps["L3-CEMENTMILL-MAIN"]  # busy 1200..1400, probability 1
        client = AsyncModbusTcpClient(busy["host"], port=busy["port"], timeout=1, retries=0)
        await client.connect()
        try:
            rr = await client.read_holding_registers(0, count=2, device_id=busy["unit"])
            assert rr.isError() and rr.exception_code == 6  # server device busy
        finally:
            client.close()
        # the site incomer is alone on its port: the port refuses connections
        site = eps["M-SITE"]
        client = AsyncModbusTcpClient(site["host"], port=site["port"], timeout=0.5, retries=0)
        try:
            assert not await client.connect()
        finally:
            client.close()
        # a gateway unit drops out: no answer, while its neighbour on the same port answers
        drop = eps["L2-COOLER-MAIN"]
        other = next(e for e in eps.values() if e["port"] == drop["port"] and e is not drop)
        client = AsyncModbusTcpClient(drop["host"], port=drop["port"], timeout=0.5, retries=0)
        assert await client.connect()
        try:
            with pytest.raises(ModbusException):
                await client.read_holding_registers(3203, count=4, device_id=drop["unit"])
            client.close()
            assert await client.connect()
            fc = "input" if other["family"] in ("sdm630", "flow") else "holding"
            regs = await _read(client, fc, 0 if other["family"] != "pm5000" else 3203, 4,
                               other["unit"])
            assert len(regs) == 4
        finally:
            client.close()


async def test_stress_gateways_serve_every_unit(plant_factory) -> None:
    async with plant_factory("stress", duration_s=120, opcua=False) as runner:
        eps = runner.endpoints()["modbus"]
        assert len(eps) == 1000 and len({e["port"] for e in eps}) == 10
        for ep in (eps[0], eps[499], eps[-1]):  # first, middle and last meter
            ms = runner.model.by_id[ep["meter"]]
            table, e_addr, e_type, e_order, e_res, *_ = POLL[ep["family"]]
            client = AsyncModbusTcpClient(ep["host"], port=ep["port"], timeout=2, retries=0)
            await client.connect()
            try:
                raw = decode(await _read(client, table, e_addr, WORDS[e_type], ep["unit"]),
                             e_type, e_order)
            finally:
                client.close()
            counter = raw * e_res if e_res is not None else raw
            assert math.isclose(counter, _true_counter(ms), abs_tol=0.01), ep["meter"]
