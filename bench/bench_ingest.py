"""Ingest: readings landed per second from Kafka into PostgreSQL, against COPY.

The figure: frames of 1,000 readings (a large gateway's poll cycle) are produced
to a fresh topic, then ``IngestConsumer`` decodes, verifies signatures, screens,
and lands them (frame ledger, COPY into staging, INSERT … ON CONFLICT into
``reading``, gateway_seq, offsets; one transaction per poll) into a freshly
migrated database. Timing starts after the first landed poll (so the consumer
group join, ~3 s on tansu, is not counted) and ends when every frame landed.

* readings/s (wall, one ingest process) against ``psql \\copy`` of the same
  rows, as prepared text in a file, into a fresh copy of ``reading`` (same
  columns, key and indexes), moments apart, same machine and server. The psql
  process start (~10 ms) is inside the timing, a rounding error at 600k rows.
  Where no ``psql`` client is installed the baseline is psycopg ``COPY`` of the
  same text, and the table says so;
* readings per CPU-second of the ingest process (per core), against the same COPY.

Goal: ≥ 200k readings/s per core and ≥ 0.5 × COPY. Anchor: PostgreSQL loads
~320k rows/s with COPY on a 4-vCPU host.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from kafka import KafkaProducer

from bench.harness import BenchContext, Figure, cpu_seconds
from edge.wire import Frame, encode, generate_private_key, public_key_b64

T0_NS = 1_767_225_600 * 10**9
READINGS_PER_FRAME = 1000


def _frames(gateways: int, per_gateway: int) -> tuple[list[tuple[str, bytes]], dict[str, str]]:
    out, keys = [], {}
    for g in range(gateways):
        key = generate_private_key()
        name = f"bench-gw{g}"
        keys[name] = public_key_b64(key)
        meters = [f"{name}-m{i // 4}" for i in range(READINGS_PER_FRAME)]
        channels = ["energy", "power", "voltage", "current"] * (READINGS_PER_FRAME // 4)
        for s in range(per_gateway):
            t = T0_NS + s * 10**10
            values = [1000.0 + s * 0.5 + i for i in range(READINGS_PER_FRAME)]
            f = Frame(f"site{g % 4}", name, s, t, meters, channels, [t] * READINGS_PER_FRAME,
                      values, ["kWh"] * READINGS_PER_FRAME, ["good"] * READINGS_PER_FRAME)
            out.append((f.site, encode(f, key)))
    return out, keys


def _copy_rows(frames: list[tuple[str, bytes]], keys: dict[str, str]) -> str:
    from edge.wire import decode, public_key_from_b64
    from ingest.store import copy_text

    pub = {g: public_key_from_b64(k) for g, k in keys.items()}
    decoded = [(decode(b, pub), None) for _, b in frames]
    return copy_text(decoded)  # type: ignore[arg-type]


COPY_COLUMNS = "site, gateway, meter, channel, ts, value, unit, quality, seq"


def _baseline_copy(dsn: str, text: str, rows: int, scratch: Path) -> tuple[str, float]:
    """(baseline name, seconds) to load the same rows, as prepared text, into a
    fresh copy of ``reading`` (same columns, primary key and indexes): with
    ``psql \\copy`` as the issue names it, or psycopg COPY where psql is missing."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE copy_baseline (LIKE reading INCLUDING ALL)")
    psql = shutil.which("psql")
    if psql:
        scratch.mkdir(parents=True, exist_ok=True)
        data = scratch / "copy_baseline.txt"
        data.write_text(text, encoding="utf-8")
        try:
            t0 = time.perf_counter()
            done = subprocess.run(
                [psql, "--no-psqlrc", "-v", "ON_ERROR_STOP=1", "-q", "-d", dsn,
                 "-c", f"\\copy copy_baseline ({COPY_COLUMNS}) FROM '{data}'"],
                capture_output=True, text=True, timeout=600)
            seconds = time.perf_counter() - t0
            if done.returncode:
                raise RuntimeError(f"psql \\copy baseline failed: {done.stderr.strip()}")
        finally:
            data.unlink(missing_ok=True)
        name = "psql \\copy rows/s"
    else:
        with psycopg.connect(dsn) as conn:
            t0 = time.perf_counter()
            with conn.cursor().copy(f"COPY copy_baseline ({COPY_COLUMNS}) FROM STDIN") as copy:
                copy.write(text)
            conn.commit()
            seconds = time.perf_counter() - t0
        name = "psycopg COPY rows/s (no psql client)"
    with psycopg.connect(dsn) as conn:
        n = conn.execute("SELECT count(*) FROM copy_baseline").fetchone()
    assert n == (rows,), f"baseline copied {n} rows, expected {rows}"
    return name, seconds


def _services() -> tuple[Any, list[str]]:
    from deploy import devstack

    before = {n for n, ep in devstack.load_state().items() if devstack.reachable(ep)}
    state = devstack.up(("kafka", "postgres"))
    return state, [n for n in ("kafka", "postgres") if n not in before]


def _fresh_db(admin_dsn: str) -> tuple[str, str]:
    from urllib.parse import urlparse

    name = f"pp_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name, urlparse(admin_dsn)._replace(path=f"/{name}").geturl()


def _ingest(cfg: Any, frames: int) -> tuple[float, float, int]:
    from ingest.consumer import IngestConsumer

    consumer = IngestConsumer(cfg)
    consumer.start()
    try:
        done = 0
        while done == 0:
            done = consumer.poll_once(200)
        consumer.flush()
        first = done
        t0, c0 = time.perf_counter(), cpu_seconds()
        while done < frames:
            done += consumer.poll_once(200)
        consumer.flush()
        return time.perf_counter() - t0, cpu_seconds() - c0, first
    finally:
        consumer.close()


def run(ctx: BenchContext) -> list[Figure]:
    from deploy import devstack
    from ingest.config import ServerConfig
    from ingest.migrate import migrate

    state, started = _services()
    admin = state["postgres"].url
    dbname, dsn = _fresh_db(admin)
    gateways, per_gw = (4, 25) if ctx.quick else (8, 75)
    frames, keys = _frames(gateways, per_gw)
    rows = len(frames) * READINGS_PER_FRAME
    prefix = f"bench{uuid.uuid4().hex[:8]}."
    try:
        migrate(dsn)
        producer = KafkaProducer(bootstrap_servers=state["kafka"].url, acks="all",
                                 linger_ms=20, max_request_size=8 << 20, batch_size=1 << 20)
        for site, value in frames:
            producer.send(f"{prefix}readings", value=value, key=site.encode())
        producer.flush()
        producer.close()
        cfg = ServerConfig.model_validate({
            "kafka": {"bootstrap_servers": [state["kafka"].url], "topic_prefix": prefix,
                      "group": f"{prefix}bench", "session_timeout_s": 6.0,
                      "max_poll_records": 50},
            "database": {"dsn": dsn}, "metrics": {"port": 0},
            # each bench gateway reports its own meters at site{g % 4} (the ingest binding)
            "gateways": {g: {"public_key": k, "site": f"site{int(g.removeprefix('bench-gw')) % 4}",
                             "meters": [f"{g}-m*"], "assets": []} for g, k in keys.items()},
        })
        wall, cpu, first = _ingest(cfg, len(frames))
        timed = rows - first * READINGS_PER_FRAME
        with psycopg.connect(dsn) as conn:
            landed = conn.execute("SELECT count(*) FROM reading").fetchone()
            assert landed == (rows,), f"ingest landed {landed}, expected {rows}"
        copy_name, copy_s = _baseline_copy(dsn, _copy_rows(frames, keys), rows,
                                              Path(ctx.scratch))
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        devstack.down(started)
    rate, per_core, copy_rate = timed / wall, timed / cpu, rows / copy_s
    note = f"{rows:,} readings in {len(frames)} frames of {READINGS_PER_FRAME}"
    return [
        Figure("ingest", "Kafka → PostgreSQL readings/s (wall, 1 process)", rate, "readings/s",
               copy_name, copy_rate, "≥ 0.5 × COPY", "higher",
               rate >= 0.5 * copy_rate, note),
        Figure("ingest", "Kafka → PostgreSQL readings per CPU-second", per_core,
               "readings/core-s", copy_name, copy_rate, "≥ 200k/core", "higher",
               per_core >= 200_000, note),
    ]
