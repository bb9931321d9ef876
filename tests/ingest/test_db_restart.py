"""The database server itself crashes and comes back mid-stream: ingest waits,
reconnects and continues; every frame lands exactly once.

This drill needs a server the test may kill, so it runs its own embedded
PostgreSQL (the shared one may be the machine's). The server is stopped with
``pg_ctl stop -m immediate``: no checkpoint, every backend dropped mid-
transaction, WAL replay on the next start, as after a power cut of the host.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import psycopg
import pytest
from ingest_helpers import Gateway, frame_stream, scalar, wait_for

from deploy import embedded_pg
from ingest.migrate import migrate

pytestmark = pytest.mark.services


@pytest.fixture
def own_server() -> Iterator[Path]:
    # Under the temp dir, readable by the unprivileged user the server runs as
    # when the tests run as root (pytest's own tmp_path is private).
    state = Path(tempfile.mkdtemp(prefix="plantprint-pg-restart-"))
    os.chmod(state, 0o755)
    try:
        yield state
    finally:
        embedded_pg.stop(state)
        shutil.rmtree(state, ignore_errors=True)


def test_database_crash_and_restart_mid_stream_loses_and_doubles_nothing(
    own_server, make_config, producer, topic_prefix, ingest_process
) -> None:
    admin = embedded_pg.start(own_server, 0)
    port = urlparse(admin).port
    assert port is not None
    migrate(admin)
    with psycopg.connect(admin, autocommit=True) as conn:  # ingest runs as a writer only
        conn.execute('CREATE ROLE "pp_ingest" LOGIN IN ROLE plantprint_writer')
    writer = urlparse(admin)._replace(netloc=f"pp_ingest@127.0.0.1:{port}").geturl()

    g = Gateway("gw1", meters=10)
    proc = ingest_process("--config", str(make_config(writer, [g])))
    proc.start()
    with frame_stream(producer, f"{topic_prefix}readings", g) as sent:
        wait_for(lambda: scalar(admin, "SELECT count(*) FROM ingested_frame") > 0, 30, "landing")
        landed_before = scalar(admin, "SELECT count(*) FROM ingested_frame")
        embedded_pg.stop(own_server, mode="immediate")
        time.sleep(3.0)  # down long enough for several failed reconnects
        again = embedded_pg.start(own_server, port)
        assert urlparse(again).port == port, "the server came back on another port"
        server_log = (own_server / "postgres.log").read_text(errors="replace")
        assert "automatic recovery in progress" in server_log, "the restart replayed no WAL"
        time.sleep(1.0)
    expected = sent["frames"]
    assert expected > landed_before, "no frame was sent while the database was down"
    wait_for(lambda: scalar(admin, "SELECT count(*) FROM ingested_frame") == expected, 60,
             f"all {expected} frames after the restart")
    assert scalar(admin, "SELECT count(*) FROM reading") == expected * 10
    assert scalar(admin, "SELECT count(DISTINCT (gateway, seq)) FROM reading") == expected
    assert scalar(admin, "SELECT missing_count FROM gateway_seq") == 0
    assert scalar(admin, "SELECT sum(next_offset) FROM consumer_offset") == expected
    assert proc.alive()
    assert "database unavailable" in proc.log.read_text()
