"""Ingest scales out as a Kafka consumer group: two ``python -m ingest`` processes in one
group share a topic's partitions (sites spread over them by key), every frame lands
exactly once in the partition the producer put it, and when one member stops the other
takes over its partitions from the offsets it stored, still landing everything once."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from ingest_helpers import Gateway, IngestProcess, wait_for
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.partitioner.default import murmur2

from ingest.migrate import migrate
from tests.logcheck import our_tracebacks

pytestmark = pytest.mark.services
PARTITIONS = 4
METERS = 5
TP = tuple[str, int]
Where = dict[tuple[str, str, int], tuple[str, int, int]]  # (gw, stream, seq) → topic/part/off


def sites_over_partitions(n: int, per_partition: int = 2) -> list[str]:
    """Site names whose keys the producer's partitioner (murmur2) puts on every partition."""
    by_partition: dict[int, list[str]] = {p: [] for p in range(n)}
    i = 0
    while any(len(s) < per_partition for s in by_partition.values()):
        site = f"site-{i}"
        chosen = by_partition[(murmur2(site.encode()) & 0x7FFFFFFF) % n]
        if len(chosen) < per_partition:
            chosen.append(site)
        i += 1
    return [s for sites in by_partition.values() for s in sites]


@pytest.fixture
def topics(services, topic_prefix: str) -> Iterator[list[TP]]:
    """``readings`` and ``batches`` with PARTITIONS partitions each (co-partitioned)."""
    names = [f"{topic_prefix}readings", f"{topic_prefix}batches"]
    admin = KafkaAdminClient(bootstrap_servers=services.kafka_bootstrap)
    try:
        admin.create_topics([NewTopic(t, PARTITIONS, 1) for t in names])
    finally:
        admin.close()
    yield [(t, p) for t in names for p in range(PARTITIONS)]


def send(producer: KafkaProducer, topic_prefix: str, gateways: list[Gateway], frames: int,
         where: Where, batch: str | None = None) -> None:
    """``frames`` reading frames per gateway (and one batch event each), keyed by site;
    records where the broker put each one."""
    sent: list[tuple[tuple[str, str, int], Any]] = []
    for _ in range(frames):
        for g in gateways:
            key = (g.name, "readings", g.seq)
            sent.append((key, producer.send(f"{topic_prefix}readings", g.frame_bytes(),
                                            key=g.site.encode())))
    for g in gateways if batch else ():
        key = (g.name, "batches", g.batch_seq)
        sent.append((key, producer.send(f"{topic_prefix}batches", g.batch_bytes(str(batch)),
                                        key=g.site.encode())))
    producer.flush()
    for key, future in sent:
        meta = future.get(timeout=30)
        where[key] = (meta.topic, meta.partition, meta.offset)


def assignments(log: Path) -> list[set[TP]]:
    """Every assignment a member logged, oldest first."""
    found = re.findall(r"ingest\.consumer: assigned (\[.*\])", log.read_text())
    return [{tuple(tp) for tp in ast.literal_eval(a)} for a in found]  # type: ignore[misc]


def current(proc: IngestProcess) -> set[TP]:
    got = assignments(proc.log)
    return got[-1] if got else set()


def landed(dsn: str) -> Where:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT gateway, stream, seq, topic, kafka_partition, kafka_offset "
                            "FROM ingested_frame").fetchall()
    return {(g, s, q): (t, p, o) for g, s, q, t, p, o in rows}


def test_two_members_share_partitions_and_one_takes_over_when_the_other_stops(
    new_database, make_config, producer, topic_prefix, ingest_process, writer_login, topics
) -> None:
    dsn = new_database()
    migrate(dsn)
    gateways = [Gateway(f"gw-{s}", site=s, meters=METERS)
                for s in sites_over_partitions(PARTITIONS)]
    cfg = make_config(writer_login(dsn), gateways, kafka={"max_poll_records": 20})
    a, b = ingest_process("--config", str(cfg)), ingest_process("--config", str(cfg))
    a.start()
    wait_for(lambda: current(a) == set(topics), 45, "the first member owning every partition")
    b.start()

    def split() -> bool:
        mine, theirs = current(a), current(b)
        return bool(mine and theirs and not mine & theirs and mine | theirs == set(topics))

    wait_for(split, 45, "the group to split the partitions between both members")
    owned_by_b = current(b)
    where: Where = {}
    send(producer, topic_prefix, gateways, 20, where, batch="B1")
    wait_for(lambda: len(landed(dsn)) == len(where), 45, "phase 1 landed by both members")
    worked = {tp for t, p, _ in landed(dsn).values() for tp in [(t, p)]}
    assert worked & current(a) and worked & owned_by_b, "both members must have landed frames"

    assert b.stop() == 0  # leaves the group: a rebalance hands its partitions to a
    send(producer, topic_prefix, gateways, 10, where)  # sent while the group rebalances
    wait_for(lambda: current(a) == set(topics), 45, "the survivor owning every partition")
    send(producer, topic_prefix, gateways, 10, where, batch="B2")
    wait_for(lambda: len(landed(dsn)) == len(where), 45, "frames after the takeover")

    assert landed(dsn) == where  # each frame once, from the record the producer wrote
    taken = re.findall(r"partition (\S+)/(\d+) resumes at stored offset ([1-9]\d*)",
                       a.log.read_text())
    assert {(t, int(p)) for t, p, _ in taken} >= {tp for tp in owned_by_b if tp in worked}
    check_tables(dsn, gateways, where)
    for proc in (a, b):
        assert our_tracebacks(proc.log.read_text()) == []
    assert a.alive()


def check_tables(dsn: str, gateways: list[Gateway], where: Where) -> None:
    next_offsets: dict[TP, int] = {}
    for t, p, o in where.values():
        next_offsets[(t, p)] = max(next_offsets.get((t, p), 0), o + 1)
    with psycopg.connect(dsn) as conn:
        readings = conn.execute("SELECT gateway, count(*), count(DISTINCT seq) FROM reading "
                                "GROUP BY gateway").fetchall()
        events = conn.execute("SELECT count(*) FROM batch_event").fetchone()
        seq = conn.execute("SELECT gateway, stream, first_seq, highest_seq, frames, "
                           "missing_count FROM gateway_seq").fetchall()
        offsets = conn.execute("SELECT topic, kafka_partition, next_offset "
                               "FROM consumer_offset").fetchall()
    assert sorted(readings) == sorted((g.name, 40 * METERS, 40) for g in gateways)
    assert events == (2 * len(gateways),)
    expected_seq = [(g.name, "readings", 0, 39, 40, 0) for g in gateways]
    expected_seq += [(g.name, "batches", 0, 1, 2, 0) for g in gateways]
    assert sorted(seq) == sorted(expected_seq)  # every sequence number, no gaps, none twice
    assert {(t, p): o for t, p, o in offsets} == next_offsets
