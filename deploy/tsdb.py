"""The TimescaleDB test peer: PGlite (PostgreSQL 17 + TimescaleDB, WASM) behind node.

``deploy/tsdb_peer/server.mjs`` serves one database over the PostgreSQL wire
protocol and prints one JSON line when it listens. Quirks (see its README):
one connection at a time, no ``COPY ... FROM STDIN``, no background jobs,
psycopg needs ``prepare_threshold=None``. It proves the TimescaleDB DDL and
queries, not throughput.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from deploy.procs import ManagedService, ServiceError, log_path, state_dir

PEER_DIR = Path(__file__).resolve().parent / "tsdb_peer"


def node_binary() -> str:
    found = shutil.which("node")
    if not found:
        raise ServiceError("tsdb: node is not installed; the TimescaleDB peer needs Node.js ≥ 20")
    return found


def ensure_node_modules() -> None:
    """Install the peer's pinned npm packages once (``npm ci``, lockfile-exact)."""
    if (PEER_DIR / "node_modules" / "@electric-sql" / "pglite-socket").exists():
        return
    npm = shutil.which("npm")
    if not npm:
        raise ServiceError("tsdb: npm is not installed; cannot install the TimescaleDB peer")
    proc = subprocess.run(
        [npm, "ci", "--legacy-peer-deps", "--no-audit", "--no-fund"],
        cwd=PEER_DIR, capture_output=True, text=True, timeout=600,
    )
    if proc.returncode != 0:
        raise ServiceError(f"tsdb: npm ci failed in deploy/tsdb_peer:\n{proc.stderr[-2000:]}")


class TsdbPeer(ManagedService):
    """One peer process on a free port, data under ``.state/<name>``."""

    kind = "TimescaleDB peer"
    stop_timeout = 20.0  # it closes the WASM database cleanly on SIGTERM

    def __init__(self, name: str = "tsdb", port: int | None = None) -> None:
        super().__init__(name, port)
        self.data_dir = state_dir() / name

    @property
    def dsn(self) -> str:
        # any password is accepted; sslmode=disable because the peer speaks no TLS
        return f"postgresql://postgres:peer@127.0.0.1:{self.port}/postgres?sslmode=disable"

    def before_start(self) -> None:
        ensure_node_modules()
        log = log_path(self.name)
        if log.exists():
            log.unlink()  # readiness is read from this run's log only

    def argv(self) -> list[str]:
        return [node_binary(), str(PEER_DIR / "server.mjs"), str(self.data_dir), str(self.port)]

    def answers(self) -> bool:
        """The peer prints one JSON line with ready and its port once it listens."""
        log = log_path(self.name)
        if not log.exists():
            return False
        for line in log.read_text(errors="replace").splitlines()[-50:]:
            if line.startswith("{") and f'"port":{self.port}' in line.replace(" ", ""):
                return bool(json.loads(line).get("ready"))
        return False

    def start(self, timeout: float = 120.0) -> None:
        super().start(timeout)
