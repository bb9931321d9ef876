"""Simulator bench: meters one simulator process serves at 1 s on one core.

Runs the ``stress`` scenario (1,000 Modbus meters) in real time in a child
process; first with no clients (baseline: physics, ground truth and register
refresh alone), then while this process reads every meter's register block
once per second over raw pipelined Modbus TCP. The child's CPU time comes from
/proc, so the client's own cost is not counted.
"""

from __future__ import annotations

import asyncio
import os
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from bench.harness import BenchContext, Figure

ROOT = Path(__file__).resolve().parents[1]
STRESS = ROOT / "deploy" / "scenarios" / "stress.toml"
# first poll block per family (table function code, address, count), as in docs/simulators.md
BLOCKS = {"sdm630": (4, 0, 76), "pm5000": (3, 2999, 112), "em24": (3, 0, 54),
          "flow": (4, 0, 11), "carbon": (3, 0, 18)}


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _scenario(ctx: BenchContext) -> tuple[Path, int]:
    if not ctx.quick:
        return STRESS, 1000
    path = Path(ctx.scratch) / "stress-quick.toml"
    path.write_text(f'extends = "{STRESS}"\n[generate]\nlines = 4\n')
    return path, 200


async def _read_port(host: str, port: int, units: list[tuple[int, str]], rounds: int,
                     stats: dict[str, float]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        t0 = time.monotonic()
        for r in range(rounds):
            frames = []
            for i, (unit, family) in enumerate(units):
                fc, addr, count = BLOCKS[family]
                frames.append(struct.pack(">HHHBBHH", i, 0, 6, unit, fc, addr, count))
            writer.write(b"".join(frames))
            sent = time.monotonic()
            for _ in units:
                head = await reader.readexactly(7)
                body = await reader.readexactly(struct.unpack(">H", head[4:6])[0] - 1)
                stats["ok" if body[0] < 0x80 else "errors"] += 1
            stats["worst_s"] = max(stats["worst_s"], time.monotonic() - sent)
            await asyncio.sleep(max(0.0, t0 + r + 1 - time.monotonic()))
    finally:
        writer.close()
        await writer.wait_closed()


async def _load(endpoints: dict[str, Any], seconds: int) -> dict[str, float]:
    by_port: dict[tuple[str, int], list[tuple[int, str]]] = {}
    for e in endpoints["modbus"]:
        by_port.setdefault((e["host"], e["port"]), []).append((e["unit"], e["family"]))
    stats = {"ok": 0.0, "errors": 0.0, "worst_s": 0.0}
    await asyncio.gather(*(_read_port(h, p, u, seconds, stats) for (h, p), u in by_port.items()))
    return stats


def _start(scenario: Path, scratch: Path) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    ep = scratch / "sim-endpoints.json"
    ep.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulators", "--scenario", str(scenario), "--speed", "1",
         "--port-base", "0", "--no-opcua", "--endpoints", str(ep),
         "--ground-truth", str(scratch / "sim-gt.jsonl")],
        cwd=ROOT, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not ep.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("simulator did not start")
        time.sleep(0.1)
    return proc, orjson.loads(ep.read_bytes())


def _cpu_fraction(pid: int, seconds: float) -> float:
    c0, t0 = _cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return (_cpu_seconds(pid) - c0) / (time.monotonic() - t0)


def run(ctx: BenchContext) -> list[Figure]:
    scenario, meters = _scenario(ctx)
    seconds = 4 if ctx.quick else 10
    proc, endpoints = _start(scenario, Path(ctx.scratch))
    try:
        time.sleep(2)  # warm-up: first ticks, imports settled
        idle = _cpu_fraction(proc.pid, seconds)
        c0, t0 = _cpu_seconds(proc.pid), time.monotonic()
        stats = asyncio.run(_load(endpoints, seconds))
        busy = (_cpu_seconds(proc.pid) - c0) / (time.monotonic() - t0)
    finally:
        proc.terminate()
        proc.wait(30)
    expected = meters * seconds
    answered = stats["ok"] / expected
    return [
        Figure("simulators", f"CPU of one core, {meters} meters at 1 s with block reads",
               busy, "core", "same simulator, no clients", idle,
               goal="< 0.5 core, every read answered within the second", better="lower",
               met=busy < 0.5 and stats["ok"] == expected and stats["worst_s"] < 1.0,
               notes=f"answered {stats['ok']:.0f}/{expected}, errors {stats['errors']:.0f}, "
                     f"worst round {stats['worst_s'] * 1000:.0f} ms"),
        Figure("simulators", "meters served at 1 s per core (extrapolated)",
               meters / busy if busy else float("inf"), "meters", "meters in the scenario",
               float(meters), goal=">= 1000", better="higher",
               met=(meters / busy if busy else 1e9) >= 1000 and answered == 1.0),
    ]
