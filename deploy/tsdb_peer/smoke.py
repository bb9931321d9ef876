"""Smoke test of the TimescaleDB test peer: python deploy/tsdb_peer/smoke.py

Starts ``server.mjs`` on a temporary data dir and a free port, proves the
TimescaleDB DDL and queries the project relies on (hypertable, continuous
aggregate, compression and retention policies run by ``CALL run_job``),
restarts the peer on the same data dir and checks the data is still there.
Needs ``npm ci`` in this folder first. Exits non-zero on the first failure.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

HERE = Path(__file__).resolve().parent


def start(data_dir: Path) -> tuple[subprocess.Popen[str], int]:
    t0 = time.monotonic()
    proc = subprocess.Popen(
        ["node", str(HERE / "server.mjs"), str(data_dir), "0"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=HERE,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    info = json.loads(line) if line else {"ready": False}
    if not info.get("ready"):
        proc.kill()
        sys.exit(f"peer did not start: {info}")
    print(f"peer ready on port {info['port']} in {time.monotonic() - t0:.2f} s")
    return proc, int(info["port"])


def stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    if proc.wait(timeout=30) != 0:
        sys.exit(f"peer exited with {proc.returncode}")


def connect(port: int) -> psycopg.Connection:
    # any user, password and dbname are accepted (and ignored)
    return psycopg.connect(
        f"postgresql://postgres:peer@127.0.0.1:{port}/postgres",
        prepare_threshold=None,
        autocommit=True,
        connect_timeout=10,
    )


def first(conn: psycopg.Connection, sql: str) -> object:
    row = conn.execute(sql).fetchone()
    assert row is not None, sql
    return row[0]


def prove(port: int) -> None:
    with connect(port) as conn:
        conn.execute(
            "CREATE TABLE reading (ts timestamptz NOT NULL, device text NOT NULL,"
            " value double precision)"
        )
        conn.execute("SELECT create_hypertable('reading', by_range('ts', INTERVAL '1 day'))")
        assert first(conn, "SELECT hypertable_name FROM timescaledb_information.hypertables") == (
            "reading"
        )
        conn.cursor().executemany(
            "INSERT INTO reading VALUES (%s::timestamptz + %s * INTERVAL '1 minute', %s, %s)",
            [("2024-01-01T00:00:00Z", i, "d1", float(i)) for i in range(0, 3 * 1440, 7)],
        )
        conn.execute(
            "CREATE MATERIALIZED VIEW reading_15m WITH (timescaledb.continuous) AS"
            " SELECT time_bucket('15 minutes', ts) AS bucket, device, avg(value) AS avg"
            " FROM reading GROUP BY bucket, device WITH NO DATA"
        )
        conn.execute("CALL refresh_continuous_aggregate('reading_15m', NULL, NULL)")
        assert first(conn, "SELECT count(*) FROM reading_15m") == 3 * 96
        conn.execute(
            "ALTER TABLE reading SET (timescaledb.compress,"
            " timescaledb.compress_segmentby = 'device', timescaledb.compress_orderby = 'ts')"
        )
        compress_job = first(conn, "SELECT add_compression_policy('reading', INTERVAL '1 day')")
        retention_job = first(conn, "SELECT add_retention_policy('reading', INTERVAL '1 day')")
        # no background workers in PGlite: policies only run when called
        conn.execute("CALL run_job(%s)", (compress_job,))
        chunks = (
            "SELECT count(*) FROM timescaledb_information.chunks"
            " WHERE hypertable_name = 'reading'"  # not the aggregate's own hypertable
        )
        assert first(conn, chunks + " AND is_compressed") == 3
        conn.execute("CALL run_job(%s)", (retention_job,))
        assert first(conn, chunks) == 0
        conn.execute("INSERT INTO reading VALUES ('2030-01-01T00:00:00Z', 'd2', 42)")
    print("hypertable, continuous aggregate, compression and retention jobs: ok")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="tsdb_peer_smoke_") as tmp:
        data_dir = Path(tmp) / "data"
        proc, port = start(data_dir)
        try:
            prove(port)
            for i in range(20):  # sequential connections, each a fresh session
                with connect(port) as conn:
                    assert first(conn, "SHOW search_path") == "public", i
        finally:
            stop(proc)
        proc, port = start(data_dir)
        try:
            with connect(port) as conn:
                assert first(conn, "SELECT count(*) FROM reading") == 1
                assert first(conn, "SELECT count(*) FROM reading_15m") == 3 * 96
        finally:
            stop(proc)
    print("restart on the same data dir: ok")


if __name__ == "__main__":
    main()
