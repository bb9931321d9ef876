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
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from deploy.procs import free_port
from edge import wire

ROOT = Path(__file__).resolve().parents[2]
# each test starts the agent as a process (about 2 s each): not for make test-fast
pytestmark = pytest.mark.slow


def site(tmp_path: Path, **changes: Any) -> Path:
    """A valid site config in ``tmp_path`` (a meter nobody answers for, Kafka on a free port)
    with ``changes`` applied to its top-level tables and keys."""
    key = tmp_path / "gw.pem"
    if not key.exists():
        wire.write_private_key(key, wire.generate_private_key())
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


def _notes_txt(tmp: Path) -> Path:
    (tmp / "notes.txt").write_text("not a folder")
    return site(tmp, spool={"path": "notes.txt/gw/spool.db"})


def _not_a_spool(tmp: Path) -> Path:
    (tmp / "spool.db").write_bytes(b"this is not an SQLite database, " * 64)
    return site(tmp)


def _key(prepare: str) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        key = tmp / "other.pem"
        if prepare == "folder":
            key.mkdir()
        elif prepare == "garbage":
            key.write_text("-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n")
            key.chmod(0o600)
        elif prepare == "readable":  # a valid key the group may read: whoever reads it signs
            key.write_bytes(wire.private_key_pem(wire.generate_private_key()))
            key.chmod(0o640)
        return site(tmp, signing_key="other.pem")
    return make


# case -> its site config, made in a folder of its own (TAKEN: a port another process holds)
TAKEN = "{taken}"
CASES: dict[str, Callable[[Path], Path]] = {
    "spool_folder": lambda tmp: site(tmp, spool={"path": "/tmp"}),
    "spool_under_file": _notes_txt,
    "spool_not_a_spool": _not_a_spool,
    "metrics_taken": lambda tmp: site(tmp, metrics={"port": TAKEN}),
    # TEST-NET-1 (RFC 5737): no interface of this machine has it
    "metrics_addr": lambda tmp: site(tmp, metrics={"port": free_port(), "addr": "192.0.2.1"}),
    "key_missing": _key("missing"),
    "key_folder": _key("folder"),
    "key_garbage": _key("garbage"),
    "key_readable": _key("readable"),
    # .invalid never resolves (RFC 6761): a typo in a host name needs an edit, not retries
    "kafka_host": lambda tmp: site(tmp, outputs={"kafka": {
        "bootstrap_servers": ["127.0.0.1:9092", "kafak-1.invalid:9092"]}}),
    "mqtt_host": lambda tmp: site(tmp, outputs={"mqtt": {"url": "mqtt://broker.invalid:1883"}}),
}


@dataclass(frozen=True)
class Outcome:
    folder: Path
    returncode: int
    stderr: str


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Outcome]]:
    """Every case's ``python -m edge --config site.toml``, all started at once (each is
    mostly interpreter start-up: run one after another they would take half a minute)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        procs = {}
        for case, make in CASES.items():
            folder = tmp_path_factory.mktemp(case)
            config = make(folder)
            config.write_text(config.read_text().replace(f'"{TAKEN}"', str(taken)))
            procs[case] = (folder, subprocess.Popen(
                [sys.executable, "-m", "edge", "--config", str(config)], cwd=ROOT,
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        results = {}
        try:
            for case, (folder, proc) in procs.items():
                _out, err = proc.communicate(timeout=90)
                results[case] = Outcome(folder, proc.returncode, err)
        finally:
            for _folder, proc in procs.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate()
        yield {**results, "taken": Outcome(Path(), taken, "")}


def assert_one_line(outcome: Outcome, key: str, *parts: str) -> str:
    """Exit 1 and exactly one stderr line, ``edge: <key>: ...``, containing ``parts``."""
    lines = outcome.stderr.splitlines()
    assert outcome.returncode == 1, outcome.stderr
    assert len(lines) == 1, outcome.stderr
    assert lines[0].startswith(f"edge: {key}: "), lines[0]
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------------------- spool


def test_spool_path_that_is_a_folder(outcomes: dict[str, Outcome]) -> None:
    line = assert_one_line(outcomes["spool_folder"], "[spool] path",
                           "/tmp is a directory, expected a file path")
    assert line.endswith("(e.g. /tmp/spool.db)")


def test_spool_path_under_a_file(outcomes: dict[str, Outcome]) -> None:
    outcome = outcomes["spool_under_file"]
    assert_one_line(outcome, "[spool] path",
                    f"{outcome.folder / 'notes.txt'} is a file, not a folder")


def test_spool_file_that_is_not_a_spool(outcomes: dict[str, Outcome]) -> None:
    assert_one_line(outcomes["spool_not_a_spool"], "[spool] path",
                    "cannot create or open the spool: file is not a database")


# ----------------------------------------------------------------------- metrics


def test_metrics_port_taken(outcomes: dict[str, Outcome]) -> None:
    taken = outcomes["taken"].returncode
    assert_one_line(outcomes["metrics_taken"], "[metrics] port",
                    f"127.0.0.1:{taken} is already in use", "or 0 to switch /metrics off")


def test_metrics_addr_not_on_this_machine(outcomes: dict[str, Outcome]) -> None:
    assert_one_line(outcomes["metrics_addr"], "[metrics] addr", "cannot listen on 192.0.2.1:")


# ------------------------------------------------------------------- signing key


@pytest.mark.parametrize(("case", "says"), [
    ("key_missing", "does not exist (create it with --init-key)"),
    ("key_folder", "is a directory, expected a PEM key file"),
    ("key_garbage", "cannot load an Ed25519 PEM key"),
    ("key_readable", "mode 0640 lets group or others read it; only its owner may (chmod 600"),
])
def test_signing_key_unreadable(outcomes: dict[str, Outcome], case: str, says: str) -> None:
    outcome = outcomes[case]
    assert_one_line(outcome, "signing_key", str(outcome.folder / "other.pem"), says)
    assert not (outcome.folder / "spool.db").exists()  # refused before anything was taken


def test_init_key_creates_its_folder_owner_only(tmp_path: Path) -> None:
    config = site(tmp_path, signing_key="keys/new/gw.pem")
    proc = subprocess.run([sys.executable, "-m", "edge", "--config", str(config), "--init-key"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    key = tmp_path / "keys/new/gw.pem"
    gateway, public = proc.stdout.split()
    assert gateway == "gw-start" and public == wire.public_key_b64(wire.load_private_key(key))
    modes = [stat.S_IMODE(p.stat().st_mode) for p in (key.parent, key.parent.parent, key)]
    assert modes == [0o700, 0o700, 0o600]


# ------------------------------------------------------------------------ outputs


def test_kafka_host_name_unknown(outcomes: dict[str, Outcome]) -> None:
    assert_one_line(outcomes["kafka_host"], "[outputs.kafka] bootstrap_servers",
                    "host name 'kafak-1.invalid' is unknown to DNS")


def test_mqtt_host_name_unknown(outcomes: dict[str, Outcome]) -> None:
    assert_one_line(outcomes["mqtt_host"], "[outputs.mqtt] url",
                    "host name 'broker.invalid' is unknown to DNS")


def test_kafka_merely_down_is_not_a_start_failure(tmp_path: Path) -> None:
    """Nothing listens on the broker's port: the agent runs until told to stop, exit 0.

    (That it spools from the first cycle meanwhile: test_agent.py,
    ``test_kafka_down_at_start_readings_spooled_from_the_first_cycle``.)
    """
    # a stop waits for the producer attempt under way: 1 s here instead of the default 10 s
    config = site(tmp_path, outputs={"kafka": {
        "bootstrap_servers": [f"127.0.0.1:{free_port()}"], "delivery_timeout_s": 1.0}})
    agent = subprocess.Popen([sys.executable, "-m", "edge", "--config", str(config)],
                             cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "spool.db").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(2.0)
        assert agent.poll() is None, "the agent stopped although only Kafka was down"
    finally:
        agent.send_signal(signal.SIGTERM)
        _out, err = agent.communicate(timeout=30)
    assert agent.returncode == 0, err
    assert "Traceback" not in err, err
    assert not [line for line in err.splitlines() if line.startswith("edge: ")], err


@pytest.mark.parametrize(("field", "name"), [("meter", "Kiln 2"), ("channel", "power/1"),
                                             ("meter", ""), ("channel", "é")])
def test_opcua_meters_and_channels_follow_the_name_pattern(field: str, name: str) -> None:
    """As Modbus meters do: ingest refuses any other name on the wire (bad_name)."""
    from pydantic import ValidationError

    from edge.opcua_config import MonitoredNode

    good = {"node": "ns=2;s=Kiln2.Power", "meter": "L2-kiln", "channel": "power"}
    assert MonitoredNode.model_validate(good).meter == "L2-kiln"
    with pytest.raises(ValidationError, match=rf"{field}\n"):
        MonitoredNode.model_validate({**good, field: name})
