"""Edge Modbus: points decoded per second, per core of agent CPU, against block reads.

Two figures, each with a same-run baseline on the same registers:

* decode only: ``add_block`` (BlockDecoder: word orders, scale, offset, then
  the frame columns) against the bare minimum, one ``struct.unpack`` of the
  same registers as big-endian floats (no word order, no scale, no columns);
* the full poll: ``ModbusPoller.poll`` reading 125-register blocks over TCP
  from a pymodbus server in another process, CPU seconds of this process
  only, against the pymodbus client's reads of the same blocks alone.

Anchor: EMQX NeuronEX (C) publishes about 83k points/s per core; goal ≥ 100k.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import subprocess
import sys
import time
from typing import Any

from bench.harness import BenchContext, Figure, best_seconds, cpu_seconds

# One 124-register block of a typical meter mix: 66 points.
_MIX: list[tuple[str, str, float]] = (
    [("uint16", "ABCD", 0.1)] * 20
    + [("float32", "ABCD", 1.0)] * 20
    + [("float32", "CDAB", 0.001)] * 10
    + [("uint32", "CDAB", 0.1)] * 10
    + [("int64", "ABCD", 0.001)] * 3
    + [("float64", "DCBA", 1.0)] * 3
)
_WIDTH = {"uint16": 1, "float32": 2, "uint32": 2, "int64": 4, "float64": 4}
BLOCKS = 4
BLOCK_STRIDE = 200  # blocks 200 registers apart: never merged, one request each

SERVER = """
import asyncio, random, sys
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice
async def main(port):
    rnd = random.Random(1)
    regs = [rnd.randrange(0, 0x7F00) for _ in range(1000)]
    hr = [SimData(0, values=regs, datatype=DataType.REGISTERS)]
    bits = [SimData(0, values=[False] * 16, datatype=DataType.BITS)]
    server = ModbusTcpServer(SimDevice(id=1, simdata=(bits, bits, hr, hr)),
                             address=("127.0.0.1", port))
    await server.serve_forever()
asyncio.run(main(int(sys.argv[1])))
"""


def _points(block_start: int = 0) -> list[dict[str, Any]]:
    out, addr = [], block_start
    for i, (dtype, order, scale) in enumerate(_MIX):
        out.append({"channel": f"p{block_start}_{i}", "address": addr, "type": dtype,
                    "word_order": order, "scale": scale, "unit": "u"})
        addr += _WIDTH[dtype]
    return out


def _device(port: int) -> Any:
    from edge.config import ModbusDevice
    from edge.profiles import Profile

    points = [p for b in range(BLOCKS) for p in _points(b * BLOCK_STRIDE)]
    profile = Profile.model_validate({"family": "bench", "max_gap": 10, "points": points})
    return ModbusDevice(meter="BENCH", host="127.0.0.1", port=port, profile=profile,
                        timeout_s=5.0)


def _decode_figure(ctx: BenchContext) -> Figure:
    from edge.modbus import PollResult, add_block, build_plan

    plan = build_plan(_device(1))
    read = plan[0]
    rnd = random.Random(1)
    regs = [rnd.randrange(0, 0x7F00) for _ in range(read.request.count)]
    n_points = len(read.channels)
    cycles = 2_000 if ctx.quick else 20_000

    def ours() -> None:
        result = PollResult("BENCH", 0)
        for _ in range(cycles):
            add_block(result, read, regs, 0)
            result.channel.clear()
            result.value.clear()
            result.unit.clear()
            result.ts_ns.clear()
            result.blocks.clear()

    fmt = struct.Struct(f">{read.request.count // 2}f")
    pack = struct.Struct(f">{read.request.count}H")

    def bare() -> None:
        for _ in range(cycles):
            fmt.unpack(pack.pack(*regs))

    t_ours = best_seconds(ours, repeat=3 if ctx.quick else 5)
    t_bare = best_seconds(bare, repeat=3 if ctx.quick else 5)
    return Figure(
        area="edge", name="modbus decode only (66-point 124-register block, 4 word orders)",
        value=cycles * n_points / t_ours, unit="points/s",
        baseline_name="struct.unpack of the block as ABCD floats",
        baseline_value=cycles * (read.request.count // 2) / t_bare,
        goal="", better="higher",
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _measure_polls(port: int, cycles: int) -> tuple[float, float, int]:
    """(CPU s of full polls, CPU s of bare client reads, points per poll)."""
    from pymodbus.client import AsyncModbusTcpClient

    from edge.modbus import ModbusPoller

    poller = ModbusPoller(_device(port))
    await poller.start()
    try:
        await poller.poll()  # warm up
        t0 = cpu_seconds()
        for _ in range(cycles):
            result = await poller.poll()
        cpu_poll = cpu_seconds() - t0
        assert not result.errors, result.errors
        points = len(result)
    finally:
        await poller.close()
    client = AsyncModbusTcpClient("127.0.0.1", port=port, retries=0, reconnect_delay=0)
    await client.connect()
    try:
        requests = [(r.request.address, r.request.count) for r in poller.plan]
        t0 = cpu_seconds()
        for _ in range(cycles):
            for address, count in requests:
                await client.read_holding_registers(address, count=count, device_id=1)
        cpu_reads = cpu_seconds() - t0
    finally:
        client.close()
    return cpu_poll, cpu_reads, points


def _poll_figure(ctx: BenchContext) -> Figure:
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("pymodbus bench server did not start") from None
                time.sleep(0.05)
        cycles = 100 if ctx.quick else 1000
        cpu_poll, cpu_reads, points = asyncio.run(_measure_polls(port, cycles))
    finally:
        server.terminate()
        server.wait(10)
    value = cycles * points / cpu_poll
    return Figure(
        area="edge", name="modbus poll: points decoded per core (4 x 124-register block reads)",
        value=value, unit="points/s/core",
        baseline_name="pymodbus client reads alone, same blocks",
        baseline_value=cycles * points / cpu_reads,
        goal=">= 100k points/s per core (NeuronEX ~83k)", better="higher",
        met=value >= 100_000,
        notes=f"{points} points per poll, {cycles} polls, server in another process",
    )


def run(ctx: BenchContext) -> list[Figure]:
    return [_decode_figure(ctx), _poll_figure(ctx)]
