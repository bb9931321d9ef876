"""Ingest test helpers: signed frame factories, configs, Kafka I/O, the ingest process."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import tomli_w
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from paho.mqtt.enums import CallbackAPIVersion

from edge.wire import BatchEvent, BatchFrame, Frame, encode, generate_private_key, public_key_b64

ROOT = Path(__file__).resolve().parents[2]
T0_NS = 1_767_225_600 * 10**9  # 2026-01-01T00:00:00Z


def publisher(host: str, port: int) -> mqtt.Client:
    """An MQTT client connected to the broker with its network loop running (a gateway
    publishing to the bridge)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"gw-{time.monotonic_ns()}")
    client.connect(host, port)
    client.loop_start()
    return client


@dataclass
class Gateway:
    """A simulated gateway: deterministic counters, its own key, its own sequence."""

    name: str
    site: str = "site1"
    meters: int = 4
    key: Ed25519PrivateKey = field(default_factory=generate_private_key)
    seq: int = 0
    batch_seq: int = 0

    def frame(self, t_ns: int | None = None, seq: int | None = None) -> Frame:
        s = self.seq if seq is None else seq
        if seq is None:
            self.seq += 1
        t = T0_NS + s * 10**10 if t_ns is None else t_ns  # one poll per 10 s
        ms = [f"{self.name}-m{i}" for i in range(self.meters)]
        return Frame(
            site=self.site, gateway=self.name, seq=s, sent_ns=t, meter=ms,
            channel=["energy"] * self.meters, ts_ns=[t] * self.meters,
            value=[1000.0 * i + 0.25 * s for i in range(self.meters)],
            unit=["kWh"] * self.meters, quality=["good"] * self.meters,
        )

    def frame_bytes(self, **kw: Any) -> bytes:
        return encode(self.frame(**kw), self.key)

    def batch_bytes(self, batch_id: str, kind: str = "start", t_ns: int = T0_NS) -> bytes:
        ev = BatchEvent("line1", batch_id, "clinker", kind, t_ns)  # type: ignore[arg-type]
        msg = BatchFrame(self.site, self.name, self.batch_seq, t_ns, (ev,))
        self.batch_seq += 1
        return encode(msg, self.key)


def binding(g: Gateway, **over: Any) -> dict[str, Any]:
    """``[gateways.<id>]`` of a test gateway: its key, its site, its own meters, any asset."""
    return {"public_key": public_key_b64(g.key), "site": g.site, "meters": [f"{g.name}-*"],
            "assets": ["*"], **over}


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, list | tuple):  # bootstrap_servers
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_toml(path: Path, data: dict[str, Any]) -> Path:
    if any(isinstance(v, list) and v and isinstance(v[0], dict)
           for g in data.get("gateways", {}).values() for v in g.values()):
        path.write_text(tomli_w.dumps(data))  # arrays of tables (a gateway's keys)
        return path
    lines: list[str] = []

    def table(prefix: str, d: dict[str, Any]) -> None:
        scalars = {k: v for k, v in d.items() if not isinstance(v, dict)}
        if prefix and scalars:
            lines.append(f"[{prefix}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in scalars.items())
        for k, v in d.items():
            if isinstance(v, dict):
                table(f"{prefix}.{k}" if prefix else k, v)

    table("", data)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def make_config(tmp_path: Path, services, topic_prefix: str) -> Callable[..., Path]:
    """Factory: a server TOML for these gateways, DSN and overrides ({table: {key: v}})."""

    def make(dsn: str, gws: list[Gateway], name: str = "server.toml",
             **tables: dict[str, Any]) -> Path:
        data: dict[str, Any] = {
            "kafka": {"bootstrap_servers": [services.kafka_bootstrap],
                      "topic_prefix": topic_prefix, "group": f"{topic_prefix}ingest",
                      "session_timeout_s": 6.0},
            "database": {"dsn": dsn, "reconnect_max_s": 1.0},
            "metrics": {"port": 0},
            "bridge": {"metrics_port": 0},  # tests that scrape it pick a free port
            "gateways": {g.name: binding(g) for g in gws},
        }
        for t, values in tables.items():
            data.setdefault(t, {}).update(values)
        return write_toml(tmp_path / name, data)

    return make


@pytest.fixture
def producer(services) -> Iterator[KafkaProducer]:
    p = KafkaProducer(bootstrap_servers=services.kafka_bootstrap, acks="all", linger_ms=2,
                      max_request_size=64 * 1024 * 1024)
    yield p
    p.close(timeout=5)


def send_all(
    producer: KafkaProducer, topic: str, values: list[bytes], key: bytes = b"site1"
) -> None:
    futures = [producer.send(topic, value=v, key=key) for v in values]
    producer.flush()
    for f in futures:
        f.get(timeout=30)


def read_topic(bootstrap: str, topic: str, expect: int, timeout_s: float = 30.0,
               client: dict[str, Any] | None = None) -> list[Any]:
    """All records of a topic from the start, once at least ``expect`` arrived (or timeout).

    ``client``: kafka-python servers and security (e.g. ``KafkaConfig.client_config()``)
    in place of plain ``bootstrap``. Partitions are assigned by hand (tansu's group
    joins are slow) and the broker's end offsets are not trusted.
    """
    consumer = KafkaConsumer(**(client or {"bootstrap_servers": bootstrap}),
                             enable_auto_commit=False, fetch_max_bytes=64 * 1024 * 1024,
                             max_partition_fetch_bytes=64 * 1024 * 1024)
    try:
        deadline = time.monotonic() + timeout_s
        parts = None
        while not parts and time.monotonic() < deadline:
            parts = consumer.partitions_for_topic(topic)
            if not parts:
                time.sleep(0.2)
        if not parts:
            return []
        consumer.assign([TopicPartition(topic, p) for p in parts])
        for p in parts:
            consumer.seek(TopicPartition(topic, p), 0)
        out: list[Any] = []
        while len(out) < expect and time.monotonic() < deadline:
            for recs in consumer.poll(timeout_ms=300).values():
                out.extend(recs)
        return out
    finally:
        consumer.close()


def scalar(dsn: str, sql: str) -> int:
    """The first column of the first row of ``sql`` as an int (0 when there is no row)."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        row = conn.execute(sql).fetchone()
    return int(row[0]) if row else 0


@contextmanager
def frame_stream(producer: KafkaProducer, topic: str, g: Gateway) -> Iterator[dict[str, int]]:
    """Send ``g``'s frames in a thread (5 every 50 ms) while the body runs.

    Yields ``{"frames": n}``, the number sent and acknowledged so far; once the
    block is left the thread has stopped and the number is final.
    """
    stop = threading.Event()
    sent = {"frames": 0}

    def stream() -> None:
        while not stop.is_set():
            send_all(producer, topic, [g.frame_bytes() for _ in range(5)])
            sent["frames"] += 5
            time.sleep(0.05)

    sender = threading.Thread(target=stream, name="frame-stream")
    sender.start()
    try:
        yield sent
    finally:
        stop.set()
        sender.join()


def run_cli(main: Callable[..., int], *argv: object) -> tuple[int, str, str]:
    """An operator command's ``main(argv, out, err)`` in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    code = main([str(a) for a in argv], out, err)
    return code, out.getvalue(), err.getvalue()


def stored_offsets(dsn: str) -> int:
    """Messages ingest is done with (landed, skipped or dead-lettered): stored offsets."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT coalesce(sum(next_offset), 0) FROM consumer_offset").fetchone()
    return int(row[0]) if row else 0


def wait_for(cond: Callable[[], Any], timeout_s: float, what: str, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


class IngestProcess:
    """``python -m ingest`` as a child process the test may SIGKILL and restart."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.args = args
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("PLANTPRINT_DSN", None)  # the config's DSN is the one under test
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ingest", *self.args], cwd=ROOT, env=env,
                stdout=out, stderr=subprocess.STDOUT,
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


@pytest.fixture
def ingest_process(tmp_path: Path) -> Iterator[Callable[..., IngestProcess]]:
    procs: list[IngestProcess] = []

    def make(*args: str) -> IngestProcess:
        p = IngestProcess(list(args), tmp_path / f"ingest-{len(procs)}.log")
        procs.append(p)
        return p

    yield make
    for p in procs:
        p.stop()


@pytest.fixture
def writer_login(services) -> Iterator[Callable[[str], str]]:
    """Factory: a LOGIN user in role plantprint_writer and the DSN of ``dsn`` as that user.

    Ingest runs with the writer's privileges only, as in production.
    """
    import uuid
    from urllib.parse import urlparse

    import psycopg

    users: list[tuple[str, str]] = []

    def make(dsn: str) -> str:
        user = f"pp_ingest_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(services.pg_admin_dsn, autocommit=True) as conn:
            conn.execute(f'CREATE ROLE "{user}" LOGIN IN ROLE plantprint_writer')
        users.append((user, dsn))
        url = urlparse(dsn)
        return url._replace(netloc=f"{user}@{url.hostname}:{url.port}").geturl()

    yield make
    for user, dsn in users:  # the ingest process may still hold a session (temp table)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'ALTER ROLE "{user}" NOLOGIN')
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE usename = %s", (user,))
            conn.execute(f'DROP OWNED BY "{user}"')
        with psycopg.connect(services.pg_admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP ROLE IF EXISTS "{user}"')
