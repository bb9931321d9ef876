"""Fixtures for the simulator tests: scenarios, a running plant, a thread leak check."""

from __future__ import annotations

import threading
import time
import tomllib
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from simulators.config import Scenario, load_scenario, scenario_from_dict
from simulators.runner import PlantRunner, RunOptions

SCENARIOS = Path(__file__).resolve().parents[2] / "deploy" / "scenarios"


@pytest.fixture
def scenario_path() -> Callable[[str], Path]:
    return lambda name: SCENARIOS / f"{name}.toml"


@pytest.fixture
def scenario() -> Callable[[str], Scenario]:
    return lambda name: load_scenario(SCENARIOS / f"{name}.toml")


@pytest.fixture
def late_end_small() -> Callable[[int], Scenario]:
    """Factory: ``small`` with a third oven batch B-004 starting at 4500 s, while both oven
    slots are taken (B-003 runs to 5400), and B-002's end (true 4200) ``delay_s`` late."""

    def make(delay_s: int) -> Scenario:
        data = tomllib.loads((SCENARIOS / "small.toml").read_text())
        data["scenario"]["name"] = f"small-late-{delay_s}"
        data["batches"].append({"id": "B-004", "asset": "L1-oven", "product": "brick-A",
                                "start_s": 4500, "end_s": 6000, "quantity": 6.0, "unit": "t"})
        data.setdefault("faults", []).append(
            {"kind": "late_end", "batch": "B-002", "delay_s": delay_s})
        return scenario_from_dict(data, f"small + late end of B-002 by {delay_s} s")

    return make


@pytest.fixture
def plant_factory(tmp_path: Path):
    """Factory: ``async with plant_factory("small", duration_s=600) as runner``
    (a shipped scenario by name, or a Scenario object).

    The plant runs as fast as possible up to ``duration_s`` and then keeps
    serving its final state (so clients read values that no longer move).
    """

    @asynccontextmanager
    async def make(name: str | Scenario, duration_s: int = 600,
                   **kw: object) -> AsyncIterator[PlantRunner]:
        sc = load_scenario(SCENARIOS / f"{name}.toml") if isinstance(name, str) else name
        opts = RunOptions(speed=0, seed=int(kw.pop("seed", 1)), duration_s=duration_s,
                          ground_truth=tmp_path / f"{sc.scenario.name}.gt.jsonl", port_base=0,
                          opcua_port=0, opcua=bool(kw.pop("opcua", True)))
        runner = PlantRunner(sc, opts)
        async with runner:
            await runner.run()
            yield runner

    return make


@pytest.fixture(autouse=True)
def _no_leftovers() -> Iterator[None]:
    """Fail a test that leaves threads behind (tasks: the root conftest checks each loop).

    Threads get a short grace period: asyncio's child watcher thread
    (``asyncio-waitpid-N``) outlives ``proc.wait()`` by a few instructions,
    because it hands the exit status to the loop before it returns.
    """
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5.0
    while True:
        extra = [t for t in threading.enumerate() if t not in before and t.is_alive()
                 and not t.name.startswith(("asyncio_", "ThreadPoolExecutor"))]
        if not extra or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not extra, f"threads left behind: {extra}"
