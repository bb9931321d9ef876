"""The database goes away mid-stream (backends terminated, connections refused for a
few seconds): ingest waits, reconnects and continues without loss or doubles."""

from __future__ import annotations

import threading
import time
from urllib.parse import urlparse

import psycopg
import pytest
from ingest_helpers import Gateway, send_all, wait_for

from ingest.migrate import migrate

pytestmark = pytest.mark.services


def count(dsn: str, sql: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(sql).fetchone()
    return int(row[0]) if row else 0


def test_ingest_waits_for_the_database_and_loses_nothing(
    services, new_database, make_config, producer, topic_prefix, ingest_process, writer_login
) -> None:
    dsn = new_database()
    migrate(dsn)
    dbname = urlparse(dsn).path.lstrip("/")
    g = Gateway("gw1", meters=10)
    proc = ingest_process("--config", str(make_config(writer_login(dsn), [g])))
    proc.start()
    stop = threading.Event()
    sent = {"frames": 0}

    def stream() -> None:
        while not stop.is_set():
            send_all(producer, f"{topic_prefix}readings", [g.frame_bytes() for _ in range(5)])
            sent["frames"] += 5
            time.sleep(0.05)

    sender = threading.Thread(target=stream, name="frame-stream")
    sender.start()
    try:
        wait_for(lambda: count(dsn, "SELECT count(*) FROM ingested_frame") > 0, 30, "landing")
        with psycopg.connect(services.pg_admin_dsn, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS false')
            outage_end = time.monotonic() + 4.0
            while time.monotonic() < outage_end:  # keep it down: kill whatever holds on
                admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE datname = %s AND pid <> pg_backend_pid()", (dbname,))
                time.sleep(0.3)
            admin.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS true')
        time.sleep(1.0)
    finally:
        stop.set()
        sender.join()
    expected = sent["frames"]
    wait_for(lambda: count(dsn, "SELECT count(*) FROM ingested_frame") == expected, 60,
             f"all {expected} frames after the outage")
    assert count(dsn, "SELECT count(*) FROM reading") == expected * 10
    assert count(dsn, "SELECT missing_count FROM gateway_seq") == 0
    assert count(dsn, "SELECT sum(next_offset) FROM consumer_offset") == expected
    assert proc.alive()
    assert "database unavailable" in proc.log.read_text()
