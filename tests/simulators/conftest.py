"""Fixtures for the simulator tests: scenarios, a running plant, a thread leak check."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from simulators.config import Scenario, load_scenario
from simulators.runner import PlantRunner, RunOptions

SCENARIOS = Path(__file__).resolve().parents[2] / "deploy" / "scenarios"


@pytest.fixture
def scenario_path() -> Callable[[str], Path]:
    return lambda name: SCENARIOS / f"{name}.toml"


@pytest.fixture
def scenario() -> Callable[[str], Scenario]:
    return lambda name: load_scenario(SCENARIOS / f"{name}.toml")


@pytest.fixture
def plant_factory(tmp_path: Path):
    """Factory: ``async with plant_factory("small", duration_s=600) as runner``.

    The plant runs as fast as possible up to ``duration_s`` and then keeps
    serving its final state (so clients read values that no longer move).
    """

    @asynccontextmanager
    async def make(name: str, duration_s: int = 600, **kw: object) -> AsyncIterator[PlantRunner]:
        opts = RunOptions(speed=0, seed=int(kw.pop("seed", 1)), duration_s=duration_s,
                          ground_truth=tmp_path / f"{name}.gt.jsonl", port_base=0,
                          opcua_port=0, opcua=bool(kw.pop("opcua", True)))
        runner = PlantRunner(load_scenario(SCENARIOS / f"{name}.toml"), opts)
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
