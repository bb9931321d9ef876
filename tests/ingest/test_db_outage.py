"""The database goes away mid-stream (backends terminated, connections refused for a
few seconds): ingest waits, reconnects and continues without loss or doubles."""

from __future__ import annotations

import time
from urllib.parse import urlparse

import psycopg
import pytest
from ingest_helpers import Gateway, frame_stream, scalar, wait_for

from ingest.migrate import migrate

pytestmark = pytest.mark.services


def test_ingest_waits_for_the_database_and_loses_nothing(
    services, new_database, make_config, producer, topic_prefix, ingest_process, writer_login
) -> None:
    dsn = new_database()
    migrate(dsn)
    dbname = urlparse(dsn).path.lstrip("/")
    g = Gateway("gw1", meters=10)
    proc = ingest_process("--config", str(make_config(writer_login(dsn), [g])))
    proc.start()
    with frame_stream(producer, f"{topic_prefix}readings", g) as sent:
        wait_for(lambda: scalar(dsn, "SELECT count(*) FROM ingested_frame") > 0, 30, "landing")
        with psycopg.connect(services.pg_admin_dsn, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS false')
            outage_end = time.monotonic() + 4.0
            while time.monotonic() < outage_end:  # keep it down: kill whatever holds on
                admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE datname = %s AND pid <> pg_backend_pid()", (dbname,))
                time.sleep(0.3)
            admin.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS true')
        time.sleep(1.0)
    expected = sent["frames"]
    wait_for(lambda: scalar(dsn, "SELECT count(*) FROM ingested_frame") == expected, 60,
             f"all {expected} frames after the outage")
    assert scalar(dsn, "SELECT count(*) FROM reading") == expected * 10
    assert scalar(dsn, "SELECT missing_count FROM gateway_seq") == 0
    assert scalar(dsn, "SELECT sum(next_offset) FROM consumer_offset") == expected
    assert proc.alive()
    assert "database unavailable" in proc.log.read_text()
