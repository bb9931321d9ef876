"""Whose fault is a database error: a database that refuses every write (grant revoked)
stalls ingest without dead-lettering anything; a message the database refuses for its
data goes to the DLQ alone while the rest lands; outcomes are counted per topic."""

from __future__ import annotations

import dataclasses
import secrets
import time

import psycopg
import pytest
from ingest_helpers import T0_NS, Gateway, read_topic, send_all, wait_for

from edge.wire import encode
from ingest import metrics
from ingest.config import load_config
from ingest.consumer import IngestConsumer
from ingest.db import describe_dsn
from ingest.dbretry import classify
from ingest.migrate import migrate

DAY_NS = 86_400 * 10**9


def one(dsn: str, sql: str) -> object:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(sql).fetchone()
    return row[0] if row else None


@pytest.mark.parametrize(("sqlstate", "kind"), [
    ("42501", "environment"), ("42P01", "environment"), ("42703", "environment"),
    ("25006", "environment"), ("53100", "environment"), ("57014", "environment"),
    ("58030", "environment"), ("3D000", "environment"), ("28000", "environment"),
    ("XX000", "environment"), ("0A000", "environment"),
    ("22021", "data"), ("22003", "data"), ("23502", "data"), ("54000", "data"),
    ("08006", "connection"), ("57P01", "connection"), ("40001", "connection"),
])
def test_classify_by_sqlstate(sqlstate: str, kind: str) -> None:
    assert classify(psycopg.errors.lookup(sqlstate)("x")) == kind


def test_classify_client_side_errors() -> None:
    assert classify(psycopg.OperationalError("connection lost")) == "connection"
    assert classify(psycopg.InterfaceError("closed")) == "connection"
    assert classify(psycopg.DataError("NUL in text")) == "data"
    assert classify(psycopg.ProgrammingError("bad query")) == "environment"


@pytest.mark.services
def test_revoked_grant_stalls_without_dead_letters_and_lands_once_regranted(
    services, new_database, make_config, producer, topic_prefix, ingest_process, writer_login
) -> None:
    dsn = new_database()
    migrate(dsn)
    g = Gateway("gw1", meters=5)
    proc = ingest_process("--config", str(make_config(writer_login(dsn), [g])))
    proc.start()
    readings = f"{topic_prefix}readings"
    send_all(producer, readings, [g.frame_bytes() for _ in range(5)])
    wait_for(lambda: one(dsn, "SELECT count(*) FROM ingested_frame") == 5, 30, "first frames")
    with psycopg.connect(dsn, autocommit=True) as owner:
        owner.execute("REVOKE INSERT ON reading FROM plantprint_writer")
    for _ in range(4):  # several polls' worth while refused
        send_all(producer, readings, [g.frame_bytes() for _ in range(5)])
        time.sleep(0.2)
    wait_for(lambda: "SQLSTATE 42501" in proc.log.read_text(), 30, "the refusal logged")
    time.sleep(2.0)  # a few retries at reconnect_max_s = 1 s
    log = proc.log.read_text()
    refusal = next(line for line in log.splitlines() if "SQLSTATE 42501" in line)
    assert "ERROR" in refusal and describe_dsn(dsn) in refusal and "reading" in refusal
    assert log.count("SQLSTATE 42501") == 1  # one error, not one per retry
    assert one(dsn, "SELECT count(*) FROM ingested_frame") == 5
    assert one(dsn, "SELECT sum(next_offset) FROM consumer_offset") == 5
    assert proc.alive()
    with psycopg.connect(dsn, autocommit=True) as owner:
        owner.execute("GRANT INSERT ON reading TO plantprint_writer")
    wait_for(lambda: one(dsn, "SELECT sum(next_offset) FROM consumer_offset") == 25, 30,
             "all 25 messages consumed after the re-grant")
    assert one(dsn, "SELECT count(*) FROM ingested_frame") == 25
    assert one(dsn, "SELECT count(*) FROM reading") == 25 * 5
    assert one(dsn, "SELECT count(DISTINCT (meter, ts)) FROM reading") == 25 * 5
    assert one(dsn, "SELECT missing_count FROM gateway_seq") == 0
    # nothing was dead-lettered, during the refusal or after it
    assert read_topic(services.kafka_bootstrap, f"{topic_prefix}dlq", 1, timeout_s=2) == []
    assert "accepts ingest's writes again" in proc.log.read_text()
    assert proc.stop() == 0


@pytest.mark.services
def test_data_error_dead_letters_one_message_and_outcomes_count_per_topic(
    services, new_database, make_config, producer, topic_prefix
) -> None:
    dsn = new_database()
    migrate(dsn)
    g = Gateway("gw1", meters=3)
    # A batch id too long for batch_event's primary key index: SQLSTATE 54000, this
    # message's fault (meter names are bounded by the name pattern since issue 10)
    b1_start = g.batch_bytes("b1")
    poison = g.batch_bytes(secrets.token_hex(2000))
    future = g.frame()  # its last reading is two days ahead: partly rejected
    future = dataclasses.replace(future, ts_ns=[*future.ts_ns[:2], T0_NS + 2 * DAY_NS])
    good = [g.frame_bytes() for _ in range(4)]
    readings, batches = f"{topic_prefix}readings", f"{topic_prefix}batches"
    consumer = IngestConsumer(load_config(make_config(dsn, [g])), clock_ns=lambda: T0_NS + DAY_NS)
    consumer.start()
    try:
        send_all(producer, readings, [good[0], good[1], encode(future, g.key), good[2],
                                      good[1], good[3]])
        send_all(producer, batches, [b1_start, poison, g.batch_bytes("b1", "end")])

        def done() -> bool:
            consumer.poll_once(200)
            return one(dsn, "SELECT sum(next_offset) FROM consumer_offset") == 9

        wait_for(done, 30, "9 messages consumed", every=0)
        consumer.flush()
    finally:
        consumer.close()
    dead = read_topic(services.kafka_bootstrap, f"{topic_prefix}dlq", 2)
    reasons = sorted(dict(r.headers)["pp.reason"].decode() for r in dead)
    assert reasons == ["future_timestamp", "store_rejected"]
    rejected = next(r for r in dead if dict(r.headers)["pp.reason"] == b"store_rejected")
    assert rejected.value == poison and rejected.offset is not None
    assert "54000" in dict(rejected.headers)["pp.detail"].decode() or \
        "index row" in dict(rejected.headers)["pp.detail"].decode()
    assert one(dsn, "SELECT count(*) FROM reading") == 4 * 3 + 2
    assert one(dsn, "SELECT count(*) FROM batch_event") == 2
    count = {(t, o): metrics.MESSAGES.labels(t, o)._value.get()
             for t in (readings, batches) for o in ("landed", "partial", "duplicate", "dlq")}
    assert count == {
        (readings, "landed"): 4, (readings, "partial"): 1, (readings, "duplicate"): 1,
        (readings, "dlq"): 1, (batches, "landed"): 2, (batches, "partial"): 0,
        (batches, "duplicate"): 0, (batches, "dlq"): 1,
    }
