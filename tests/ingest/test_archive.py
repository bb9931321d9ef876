"""A landed reading re-verified from the envelope archive alone (no database, no Kafka):
real broker and PostgreSQL land it, then only the archive files and the public keys."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from ingest_helpers import Gateway, run_cli, send_all, wait_for

from ingest.archive import find_reading
from ingest.archive import main as archive_main
from ingest.config import load_config
from ingest.consumer import IngestConsumer
from ingest.migrate import migrate

pytestmark = pytest.mark.services


def test_a_landed_reading_is_re_verified_from_the_archive_alone(
    new_database, make_config, producer, topic_prefix, tmp_path: Path,
) -> None:
    dsn = new_database()
    migrate(dsn)
    g = Gateway("gw-v", site="site-v", meters=3)
    archive = tmp_path / "archive"
    cfg_path = make_config(dsn, [g], archive={"dir": str(archive)})
    cfg = load_config(cfg_path)
    consumer = IngestConsumer(cfg)
    consumer.start()
    try:
        frames = [g.frame_bytes() for _ in range(3)]
        send_all(producer, f"{topic_prefix}readings", [*frames, frames[1]])  # one redelivery

        def landed() -> bool:
            consumer.poll_once(200)
            consumer.flush()
            with psycopg.connect(dsn) as conn:
                row = conn.execute("SELECT sum(next_offset) FROM consumer_offset").fetchone()
            return row is not None and row[0] == 4

        wait_for(landed, 30, "4 messages consumed", every=0)
    finally:
        consumer.close()
    with psycopg.connect(dsn) as conn:
        site, meter, channel, ts, value, seq, digest = conn.execute(
            "SELECT r.site, r.meter, r.channel, r.ts, r.value, r.seq, f.body_sha256 "
            "FROM reading r JOIN ingested_frame f USING (gateway, seq) "
            "WHERE r.meter = 'gw-v-m2' AND r.seq = 1").fetchone()  # type: ignore[misc]
    files = list(archive.glob("*.ppa"))
    assert len(files) == 1 and files[0].read_bytes().count(b"PPW1") == 3  # new frames, once

    # from here on: the archive files and the public keys only
    ts_us = (ts - datetime(1970, 1, 1, tzinfo=UTC)) // (datetime(1970, 1, 1, 0, 0, 0, 1, UTC)
                                                         - datetime(1970, 1, 1, tzinfo=UTC))
    keys = cfg.public_keys()
    found, refused = find_reading(archive, keys, site, meter, channel, ts_us)
    assert refused == []
    assert [(f.gateway, f.seq, f.value, f.body_sha256) for f in found] == [
        ("gw-v", seq, value, bytes(digest).hex())]
    code, out, err = run_cli(archive_main, "verify", "--config", cfg_path, "--site", site,
                             "--meter", meter, "--channel", channel, "--ts", ts.isoformat())
    assert code == 0, err
    assert f"signed by gateway gw-v in frame seq {seq}" in out and "signature verified" in out

    # one byte changed in the archived body: that envelope no longer verifies
    tampered = tmp_path / "tampered"
    shutil.copytree(archive, tampered)
    data = bytearray(files[0].read_bytes())
    at = data.index(repr(value).encode())
    data[at] = ord("9") if data[at] != ord("9") else ord("8")
    (tampered / files[0].name).write_bytes(bytes(data))
    found, refused = find_reading(tampered, keys, site, meter, channel, ts_us)
    assert found == [] and len(refused) == 1 and "bad_signature" in refused[0]
