"""The simulator as its own process (an independent peer), for agent-level tests."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def small_simulator(folder: Path, speed: float, opcua: bool = False
                    ) -> Iterator[dict[str, Any]]:
    """The `small` scenario at ``speed`` on free ports (OPC UA only when asked, on a free
    port); yields its endpoints JSON."""
    endpoints = folder / "endpoints.json"
    log = folder / "simulator.log"
    with log.open("wb") as out:  # a file, not a pipe: a chatty simulator never blocks
        proc = subprocess.Popen(
            [sys.executable, "-m", "simulators", "--scenario",
             str(ROOT / "deploy/scenarios/small.toml"), "--speed", f"{speed:g}",
             "--port-base", "0", "--endpoints", str(endpoints),
             *(["--opcua-port", "0"] if opcua else ["--no-opcua"])],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=out,
        )
    try:
        deadline = time.monotonic() + 20
        while not endpoints.exists():
            assert proc.poll() is None, f"simulator exited: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "simulator did not start"
            time.sleep(0.05)
        yield json.loads(endpoints.read_text())
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
