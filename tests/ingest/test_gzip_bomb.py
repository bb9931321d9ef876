"""A gzip bomb on ``readings`` (200 MiB expanded from about 200 kB): ingest stays within its
memory bound, dead-letters a note of it, lands the frames after it, and a restart does not
meet it again (real broker, real PostgreSQL, ingest as a process)."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import psycopg
import pytest
from ingest_helpers import Gateway, read_topic, send_all, stored_offsets, wait_for
from kafka import KafkaProducer

from ingest.kafka_bounds import gunzip_bounded
from ingest.migrate import migrate
from tests.logcheck import our_tracebacks

pytestmark = pytest.mark.services
BOMB_BYTES = 200 * 1024 * 1024
BOUND = 8 * 1024 * 1024  # [limits] max_expanded_bytes of this test


def peak_rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmHWM:\s+(\d+) kB", status)
    assert match is not None
    return int(match.group(1)) / 1024


def test_gunzip_bounded_refuses_past_its_limit_and_reads_every_member() -> None:
    data = gzip.compress(b"a" * 1000) + gzip.compress(b"b" * 10)
    assert gunzip_bounded(data, 1010) == b"a" * 1000 + b"b" * 10
    for limit in (1009, 999):
        with pytest.raises(ValueError, match="expands past"):
            gunzip_bounded(data, limit)


def test_a_gzip_bomb_neither_takes_ingest_down_nor_stops_its_partition(
    services, new_database, make_config, producer, topic_prefix, ingest_process,
) -> None:
    dsn = new_database()
    migrate(dsn)
    g = Gateway("gw-z", meters=3)
    cfg = make_config(dsn, [g], limits={"max_expanded_bytes": BOUND})
    topic = f"{topic_prefix}readings"
    ingest = ingest_process("--config", str(cfg))
    ingest.start()
    send_all(producer, topic, [g.frame_bytes() for _ in range(3)])
    wait_for(lambda: stored_offsets(dsn) >= 3, 60, "the frames before the bomb landed")
    bomber = KafkaProducer(bootstrap_servers=services.kafka_bootstrap, compression_type="gzip",
                           max_request_size=BOMB_BYTES + (1 << 20),
                           batch_size=1 << 20)
    try:
        bomber.send(topic, value=bytes(BOMB_BYTES), key=b"site1").get(timeout=120)
    finally:
        bomber.close(timeout=10)
    send_all(producer, topic, [g.frame_bytes() for _ in range(3)])
    wait_for(lambda: stored_offsets(dsn) >= 7, 60, "the frames after the bomb landed")
    assert ingest.alive(), ingest.log.read_text()[-3000:]
    peak = peak_rss_mib(ingest.proc.pid)  # type: ignore[union-attr]
    print(f"ingest peak RSS with a {BOMB_BYTES >> 20} MiB gzip bomb: {peak:.0f} MiB")
    assert ingest.stop() == 0
    # a restart resumes after the bomb: the frames sent meanwhile land, nothing is re-read
    send_all(producer, topic, [g.frame_bytes() for _ in range(2)])
    ingest.start()
    wait_for(lambda: stored_offsets(dsn) >= 9, 60, "the frames after the restart landed")
    assert ingest.stop() == 0
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*), max(seq) FROM ingested_frame").fetchone() == (8, 7)
    dead = read_topic(services.kafka_bootstrap, f"{topic_prefix}dlq", 2, 10)
    assert [(dict(d.headers)["pp.reason"], d.value) for d in dead] == [(b"too_large", b"")]
    assert "expands past 8388608 bytes" in dict(dead[0].headers)["pp.detail"].decode()
    log = ingest.log.read_text()
    assert log.count("skipped") == 1 and our_tracebacks(log) == []
    assert peak < 200, f"peak RSS {peak:.0f} MiB: the bomb was expanded"
