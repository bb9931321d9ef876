"""Crash safety: SIGKILL the ingest process at random moments while frames flow;
the final tables equal those of an uninterrupted run of the same stream, row for row."""

from __future__ import annotations

import random
import re
import threading
import time

import psycopg
import pytest
from ingest_helpers import Gateway, send_all, wait_for

from ingest.migrate import migrate

pytestmark = pytest.mark.services

TABLES = {
    "reading": "SELECT site, gateway, meter, channel, ts, value, unit, quality, seq "
               "FROM reading ORDER BY site, meter, channel, ts",
    "batch_event": "SELECT site, gateway, asset, batch_id, product, kind, ts, quantity, unit, seq"
                   " FROM batch_event ORDER BY 1, 2, 3, 4, 6, 7",
    "ingested_frame": "SELECT gateway, stream, seq, site, items, rejected, topic, "
                      "kafka_partition, kafka_offset FROM ingested_frame ORDER BY 1, 2, 3",
    "gateway_seq": "SELECT gateway, stream, first_seq, highest_seq, frames, missing::text, "
                   "missing_count FROM gateway_seq ORDER BY 1, 2",
    "consumer_offset": "SELECT topic, kafka_partition, next_offset FROM consumer_offset "
                       "ORDER BY 1, 2",
}


def snapshot(dsn: str) -> dict[str, list[tuple[object, ...]]]:
    with psycopg.connect(dsn) as conn:
        return {name: conn.execute(sql).fetchall() for name, sql in TABLES.items()}


def frames_landed(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM ingested_frame").fetchone()
    return row[0] if row else 0


def test_sigkill_at_random_moments_loses_and_doubles_nothing(
    new_database, make_config, producer, topic_prefix, ingest_process, writer_login
) -> None:
    crash_db, reference_db = new_database(), new_database()
    migrate(crash_db)
    migrate(reference_db)
    gateways = [Gateway("gw-a", site="s1", meters=20), Gateway("gw-b", site="s2", meters=20)]
    crash_cfg = make_config(writer_login(crash_db), gateways, "crash.toml",
                            kafka={"max_poll_records": 50})
    ref_cfg = make_config(reference_db, gateways, "ref.toml",
                          kafka={"group": f"{topic_prefix}reference"})
    victim = ingest_process("--config", str(crash_cfg))
    reference = ingest_process("--config", str(ref_cfg))
    victim.start()
    reference.start()

    stop = threading.Event()
    sent = {"frames": 0}

    def stream() -> None:  # until told to stop; ~250 frames/s, 20 readings each
        i = 0
        while not stop.is_set() or i < 100:
            for g in gateways:
                frames = [g.frame_bytes() for _ in range(10)]
                send_all(producer, f"{topic_prefix}readings", frames, key=g.site.encode())
                sent["frames"] += 10
            if i % 5 == 0:
                g = gateways[0]
                send_all(producer, f"{topic_prefix}batches", [g.batch_bytes(f"B{i}")], b"s1")
                sent["frames"] += 1
            i += 1
            time.sleep(0.08)

    sender = threading.Thread(target=stream, name="frame-stream")
    sender.start()
    rng = random.Random(20260101)
    try:
        for _ in range(3):  # kill only once this incarnation is landing, at a random moment
            before = frames_landed(crash_db)
            wait_for(lambda b=before: frames_landed(crash_db) > b, 30, "victim landing")
            time.sleep(rng.uniform(0.05, 1.5))
            victim.kill()
            victim.start()
    finally:
        stop.set()
        sender.join()
    expected = sent["frames"]
    wait_for(lambda: frames_landed(crash_db) == expected, 60, "crashed run to catch up")
    wait_for(lambda: frames_landed(reference_db) == expected, 30, "reference run")
    time.sleep(1.0)  # nothing more may arrive: both stay exactly at the expected count
    crashed, ref = snapshot(crash_db), snapshot(reference_db)
    assert len(crashed["reading"]) == (expected - len(crashed["batch_event"])) * 20
    for name in TABLES:
        assert crashed[name] == ref[name], f"{name} differs after crashes"
    assert all(row[5] == "{}" for row in crashed["gateway_seq"])
    resumed = re.findall(r"resumes at stored offset ([1-9]\d*)", victim.log.read_text())
    assert len(resumed) >= 3, "restarts must resume from offsets stored by the killed runs"
    assert victim.alive() and reference.alive()
