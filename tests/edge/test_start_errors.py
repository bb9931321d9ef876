"""Every failure the agent can meet at start: one stderr line naming the config key, exit 1.

Each test runs ``python -m edge --config site.toml`` as a user would, with one
thing wrong, and checks what that user sees: exit status 1, exactly one line
on stderr that starts with ``edge: <key>:``, no traceback. A Kafka broker that
is merely down is not such a failure: the agent polls and spools.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deploy.procs import free_port
from edge import wire

ROOT = Path(__file__).resolve().parents[2]


def site(tmp_path: Path, **changes: Any) -> Path:
    """A valid site config in ``tmp_path`` (a meter nobody answers for, Kafka on a free port)
    with ``changes`` applied to its top-level tables and keys."""
    key = tmp_path / "gw.pem"
    if not key.exists():
        key.write_bytes(wire.private_key_pem(wire.generate_private_key()))
    data: dict[str, Any] = {
        "site": "plant-a", "gateway": "gw-start", "signing_key": "gw.pem",
        "spool": {"path": "spool.db", "synchronous": "NORMAL"},
        "metrics": {"port": 0},
        "outputs": {"kafka": {"bootstrap_servers": [f"127.0.0.1:{free_port()}"]}},
    }
    data.update(changes)
    meter = ('[[modbus]]\nmeter = "M1"\nhost = "127.0.0.1"\nport = 1\npoll_interval_s = 0.2\n'
             '[modbus.profile]\nfamily = "f"\n'
             'points = [{ channel = "p", address = 1, type = "uint16" }]\n')
    path = tmp_path / "site.toml"
    path.write_text(_toml(data) + meter)
    return path


def _toml(data: dict[str, Any]) -> str:
    """Top-level keys, then one [table] (or [a.b]) per dict: enough for these configs."""
    lines = [f"{k} = {json.dumps(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for name, table in data.items():
        if isinstance(table, dict):
            for sub, inner in table.items():
                if isinstance(inner, dict):
                    lines.append(f"[{name}.{sub}]")
                    lines.extend(f"{k} = {json.dumps(v)}" for k, v in inner.items())
            lines.append(f"[{name}]")
            lines.extend(f"{k} = {json.dumps(v)}" for k, v in table.items()
                         if not isinstance(v, dict))
    return "\n".join(lines) + "\n"


def run_edge(config: Path, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge", "--config", str(config)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout_s, check=False)


def assert_one_line(proc: subprocess.CompletedProcess[str], key: str, *parts: str) -> str:
    """Exit 1 and exactly one stderr line, ``edge: <key>: ...``, containing ``parts``."""
    lines = proc.stderr.splitlines()
    assert proc.returncode == 1, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"edge: {key}: "), lines[0]
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------------------- spool


def test_spool_path_that_is_a_folder(tmp_path: Path) -> None:
    proc = run_edge(site(tmp_path, spool={"path": "/tmp"}))
    line = assert_one_line(proc, "[spool] path", "/tmp is a directory, expected a file path")
    assert line.endswith("(e.g. /tmp/spool.db)")


def test_spool_path_under_a_file(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a folder")
    proc = run_edge(site(tmp_path, spool={"path": "notes.txt/gw/spool.db"}))
    assert_one_line(proc, "[spool] path", f"{tmp_path / 'notes.txt'} is a file, not a folder")


def test_spool_file_that_is_not_a_spool(tmp_path: Path) -> None:
    (tmp_path / "spool.db").write_bytes(b"this is not an SQLite database, " * 64)
    proc = run_edge(site(tmp_path))
    assert_one_line(proc, "[spool] path", "cannot create or open the spool")


# ----------------------------------------------------------------------- metrics


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port another process listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_metrics_port_taken(tmp_path: Path, taken_port: int) -> None:
    proc = run_edge(site(tmp_path, metrics={"port": taken_port}))
    assert_one_line(proc, "[metrics] port", f"127.0.0.1:{taken_port} is already in use",
                    "or 0 to switch /metrics off")


def test_metrics_addr_not_on_this_machine(tmp_path: Path) -> None:
    # TEST-NET-1 (RFC 5737): no interface of this machine has it
    proc = run_edge(site(tmp_path, metrics={"port": free_port(), "addr": "192.0.2.1"}))
    assert_one_line(proc, "[metrics] addr", "cannot listen on 192.0.2.1:")


# ------------------------------------------------------------------- signing key


@pytest.mark.parametrize(("prepare", "says"), [
    ("missing", "does not exist (create it with --init-key)"),
    ("folder", "is a directory, expected a PEM key file"),
    ("garbage", "cannot load an Ed25519 PEM key"),
])
def test_signing_key_unreadable(tmp_path: Path, prepare: str, says: str) -> None:
    key = tmp_path / "other.pem"
    if prepare == "folder":
        key.mkdir()
    elif prepare == "garbage":
        key.write_text("-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n")
    proc = run_edge(site(tmp_path, signing_key="other.pem"))
    assert_one_line(proc, "signing_key", str(key), says)
    assert not (tmp_path / "spool.db").exists()  # refused before anything was taken


# ------------------------------------------------------------------------ outputs


def test_kafka_host_name_unknown(tmp_path: Path) -> None:
    # .invalid never resolves (RFC 6761): a typo in a host name needs an edit, not retries
    kafka = {"bootstrap_servers": ["127.0.0.1:9092", "kafak-1.invalid:9092"]}
    proc = run_edge(site(tmp_path, outputs={"kafka": kafka}))
    assert_one_line(proc, "[outputs.kafka] bootstrap_servers",
                    "host name 'kafak-1.invalid' is unknown to DNS")


def test_mqtt_host_name_unknown(tmp_path: Path) -> None:
    mqtt = {"url": "mqtt://broker.invalid:1883"}
    proc = run_edge(site(tmp_path, outputs={"mqtt": mqtt}))
    assert_one_line(proc, "[outputs.mqtt] url", "host name 'broker.invalid' is unknown to DNS")


def test_kafka_merely_down_is_not_a_start_failure(tmp_path: Path) -> None:
    """Nothing listens on the broker's port: the agent runs until told to stop, exit 0.

    (That it spools from the first cycle meanwhile: test_agent.py,
    ``test_kafka_down_at_start_readings_spooled_from_the_first_cycle``.)
    """
    config = site(tmp_path)
    agent = subprocess.Popen([sys.executable, "-m", "edge", "--config", str(config)],
                             cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "spool.db").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(3.0)
        assert agent.poll() is None, "the agent stopped although only Kafka was down"
    finally:
        agent.send_signal(signal.SIGTERM)
        _out, err = agent.communicate(timeout=30)
    assert agent.returncode == 0, err
    assert "Traceback" not in err, err
    assert not [line for line in err.splitlines() if line.startswith("edge: ")], err
