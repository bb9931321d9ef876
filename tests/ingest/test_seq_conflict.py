"""Sequence conflicts against the real broker and PostgreSQL: a gateway whose numbering
restarted (spool lost, re-provisioned under the same id) is dead-lettered as
``seq_conflict``, never silently dropped as a duplicate; true redeliveries still are."""

from __future__ import annotations

import logging
import uuid

import psycopg
import pytest
from ingest_helpers import T0_NS, Gateway, read_topic, send_all, wait_for

from edge.wire import decode
from ingest import metrics
from ingest.config import load_config
from ingest.consumer import IngestConsumer
from ingest.migrate import migrate
from ingest.store import Accepted, Store, body_digest

pytestmark = pytest.mark.services
DAY_NS = 86_400 * 10**9


def accept(g: Gateway, raw: bytes, offset: int, digest: bool = True) -> Accepted:
    msg = decode(raw, {g.name: g.key.public_key()})
    return Accepted(msg, "t", 0, offset, None, raw, None, body_digest(raw) if digest else None)


def consumed(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT coalesce(sum(next_offset), 0) FROM consumer_offset").fetchone()
    return int(row[0]) if row else 0


def drain(consumer: IngestConsumer, dsn: str, messages: int, timeout_s: float = 30) -> None:
    """Poll until the offsets of ``messages`` messages are stored (DLQ'd ones included)."""

    def done() -> bool:
        consumer.poll_once(200)
        return consumed(dsn) >= messages

    wait_for(done, timeout_s, f"{messages} messages consumed", every=0)


def ledger(dsn: str) -> dict[str, list[tuple[object, ...]]]:
    with psycopg.connect(dsn) as conn:
        return {
            "reading": conn.execute("SELECT meter, ts, value, seq FROM reading "
                                    "ORDER BY seq, meter").fetchall(),
            "ingested_frame": conn.execute("SELECT seq, body_sha256, kafka_offset "
                                           "FROM ingested_frame ORDER BY seq").fetchall(),
            "gateway_seq": conn.execute("SELECT highest_seq, frames, missing_count "
                                        "FROM gateway_seq").fetchall(),
        }


def test_restarted_sequence_is_dead_lettered_and_redelivery_is_skipped(
    services, new_database, make_config, producer, topic_prefix, caplog
) -> None:
    dsn = new_database()
    migrate(dsn)
    name = f"gw-{uuid.uuid4().hex[:6]}"
    original = Gateway(name, meters=3)
    sent = [original.frame_bytes(seq=s) for s in range(10)]
    # the same gateway id after its spool was lost: numbering restarts at 0, new data
    again = Gateway(name, meters=3, key=original.key)
    conflicting = [again.frame_bytes(seq=s, t_ns=T0_NS + DAY_NS + s * 10**10) for s in range(5)]
    consumer = IngestConsumer(load_config(make_config(dsn, [original])))
    assert consumer.start()
    readings_topic = f"{topic_prefix}readings"
    try:
        send_all(producer, readings_topic, sent)
        drain(consumer, dsn, 10)
        before = ledger(dsn)
        assert len(before["reading"]) == 30 and before["gateway_seq"] == [(9, 10, 0)]
        assert all(d == body_digest(raw) for (_, d, _), raw in
                   zip(before["ingested_frame"], sent, strict=True))
        with caplog.at_level(logging.WARNING, logger="ingest"):
            send_all(producer, readings_topic, [*conflicting, sent[3]])  # + a true redelivery
            drain(consumer, dsn, 16)
    finally:
        consumer.close()

    dlq = read_topic(services.kafka_bootstrap, f"{topic_prefix}dlq", 6, timeout_s=3)
    assert len(dlq) == 5, "the five conflicting frames, and not the redelivered seq 3"
    assert [r.value for r in dlq] == conflicting  # byte for byte: they can be re-driven
    for seq, rec in enumerate(dlq):
        h = {k: v.decode() for k, v in rec.headers}
        assert h["pp.reason"] == "seq_conflict" and h["pp.gateway"] == name
        assert f"gateway {name} stream readings seq {seq} already landed" in h["pp.detail"]
        assert int(h["pp.source_offset"]) == 10 + seq
    assert ledger(dsn) == before, "the original rows are untouched"
    assert metrics.SEQ_CONFLICTS.labels(name, "readings")._value.get() == 5
    assert metrics.MESSAGES.labels(readings_topic, "duplicate")._value.get() == 1
    warnings = [r.getMessage() for r in caplog.records
                if r.name == "ingest.consumer" and "sequence conflict" in r.getMessage()]
    assert len(warnings) == 1, warnings  # one per gateway and stream per batch, not per frame
    assert f"gateway {name} stream readings sent 5 frame(s)" in warnings[0]
    assert "new gateway id" in warnings[0] and "reset its ledger" in warnings[0]


def test_conflicts_within_one_batch_and_legacy_rows_without_digest(new_database) -> None:
    """Store level: two bodies under one key in a single batch; rows landed before the
    digest existed (NULL) cannot be checked and stay plain duplicates."""
    dsn = new_database()
    migrate(dsn)
    g = Gateway("gw-batch", meters=2)
    first, other = g.frame_bytes(seq=0), g.frame_bytes(seq=0, t_ns=T0_NS + DAY_NS)
    legacy = g.frame_bytes(seq=1)
    seen: list[list[int]] = []
    store = Store(dsn, "conflict-test")
    try:
        store.land([accept(g, legacy, 0, digest=False)], {("t", 0): 1})
        result = store.land(
            [accept(g, first, 1), accept(g, other, 2), accept(g, first, 3), accept(g, legacy, 4)],
            {("t", 0): 5}, lambda cs: seen.append([c.accepted.offset for c in cs]))
    finally:
        store.close()
    assert (result.frames, result.duplicates) == (1, 2)
    assert [c.accepted.offset for c in result.conflicts] == [2] and seen == [[2]]
    assert result.conflicts[0].stored_digest == body_digest(first)
    assert "from t/0@1" in result.conflicts[0].detail
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT seq, body_sha256 FROM ingested_frame ORDER BY seq").fetchall()
    assert rows == [(0, body_digest(first)), (1, None)]
    assert body_digest(first) != body_digest(other)


def test_a_failing_dead_letter_rolls_the_batch_back(new_database) -> None:
    """If the DLQ cannot take a conflict, nothing of the batch commits (no silent loss)."""
    dsn = new_database()
    migrate(dsn)
    g = Gateway("gw-rollback", meters=1)
    a, b = g.frame_bytes(seq=0), g.frame_bytes(seq=0, t_ns=T0_NS + DAY_NS)
    fresh = g.frame_bytes(seq=5)

    def broken_dlq(_: object) -> None:
        raise RuntimeError("broker refused the dead letter")

    store = Store(dsn, "rollback-test")
    try:
        store.land([accept(g, a, 0)], {("t", 0): 1})
        with pytest.raises(RuntimeError, match="refused"):
            store.land([accept(g, b, 1), accept(g, fresh, 2)], {("t", 0): 3}, broken_dlq)
    finally:
        store.close()
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT array_agg(seq ORDER BY seq) FROM ingested_frame").fetchone() \
            == ([0],)
        assert conn.execute("SELECT next_offset FROM consumer_offset").fetchone() == (1,)
