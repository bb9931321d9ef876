"""Landing against the real broker and PostgreSQL: dedup, gaps, offsets, odd text."""

from __future__ import annotations

import psycopg
import pytest
from ingest_helpers import T0_NS, Gateway, send_all, wait_for

from edge.wire import encode
from ingest import metrics
from ingest.config import load_config
from ingest.consumer import IngestConsumer
from ingest.migrate import migrate

pytestmark = pytest.mark.services


def drain(consumer: IngestConsumer, dsn: str, frames: int, timeout_s: float = 30) -> None:
    def landed() -> bool:
        consumer.poll_once(200)
        with psycopg.connect(dsn) as conn:
            n = conn.execute("SELECT count(*) FROM ingested_frame").fetchone()
        return n is not None and n[0] >= frames

    wait_for(landed, timeout_s, f"{frames} frames landed", every=0)


def test_duplicates_land_once_and_gaps_are_recorded_and_exported(
    new_database, make_config, producer, topic_prefix
) -> None:
    dsn = new_database()
    migrate(dsn)
    g = Gateway("gw1", meters=3)
    frames = {s: g.frame_bytes(seq=s) for s in range(12)}
    first = [frames[s] for s in (0, 1, 2, 3, 4, 3, 4, 7, 8, 9, 11)]  # dup 3,4; gaps 5-6, 10
    consumer = IngestConsumer(load_config(make_config(dsn, [g])))
    consumer.start()
    try:
        send_all(producer, f"{topic_prefix}readings", first)
        drain(consumer, dsn, 9)
        with psycopg.connect(dsn) as conn:
            row = conn.execute("SELECT highest_seq, missing::text, missing_count, frames "
                               "FROM gateway_seq WHERE gateway = 'gw1'").fetchone()
            assert row == (11, "{[5,7),[10,11)}", 3, 9)
        assert metrics.SEQ_MISSING.labels("gw1", "readings")._value.get() == 3
        send_all(producer, f"{topic_prefix}readings", [frames[5], frames[3], frames[10]])
        drain(consumer, dsn, 11)
        with psycopg.connect(dsn) as conn:
            row = conn.execute("SELECT highest_seq, missing::text, missing_count "
                               "FROM gateway_seq WHERE gateway = 'gw1'").fetchone()
            assert row == (11, "{[6,7)}", 1)
            seqs = conn.execute("SELECT DISTINCT seq FROM reading ORDER BY 1").fetchall()
            assert [s for (s,) in seqs] == [0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11]
            assert conn.execute("SELECT count(*) FROM reading").fetchone() == (33,)
            offsets = conn.execute("SELECT sum(next_offset) FROM consumer_offset").fetchone()
            assert offsets == (14,)  # every message, duplicates included, is consumed once
        assert metrics.SEQ_MISSING.labels("gw1", "readings")._value.get() == 1
    finally:
        consumer.close()


def test_odd_text_and_batches_land_exactly(new_database, make_config, producer, topic_prefix):
    dsn = new_database()
    migrate(dsn)
    g = Gateway("gw2", meters=2)
    f = g.frame(t_ns=T0_NS + 123_456_789)
    # names follow the name pattern (edge.wire refuses others: bad_name); units are free text
    f = type(f)(f.site, f.gateway, f.seq, f.sent_ns, ["gw2-m0", "gw2-m1"], ["e", "e"],
                f.ts_ns, [1.5, 10**15], ["k\tWh", "k\\Wh\n"], ["good", "bad"])
    consumer = IngestConsumer(load_config(make_config(dsn, [g])))
    consumer.start()
    try:
        send_all(producer, f"{topic_prefix}readings", [encode(f, g.key)])
        send_all(producer, f"{topic_prefix}batches",
                 [g.batch_bytes("B-1", "start"), g.batch_bytes("B-1", "end", T0_NS + 10**12)])
        drain(consumer, dsn, 3)
        with psycopg.connect(dsn) as conn:
            rows = conn.execute(
                "SELECT unit, value, quality, ts = '2026-01-01 00:00:00.123456+00' "
                "FROM reading ORDER BY meter").fetchall()
            assert rows == [("k\tWh", 1.5, "good", True), ("k\\Wh\n", 1e15, "bad", True)]
            events = conn.execute("SELECT batch_id, kind, ts FROM batch_event ORDER BY ts")
            assert [(b, k) for b, k, _ in events] == [("B-1", "start"), ("B-1", "end")]
    finally:
        consumer.close()


def test_same_readings_under_another_seq_take_the_staging_path(
    new_database, make_config, producer, topic_prefix
) -> None:
    dsn = new_database()
    migrate(dsn)
    g = Gateway("gw3", meters=5)
    original = g.frame(seq=0)
    # a re-sent poll cycle under a new sequence number, plus one reading that is new
    again = type(original)(original.site, original.gateway, 1, original.sent_ns,
                           [*original.meter, "gw3-extra"], [*original.channel, "energy"],
                           [*original.ts_ns, original.ts_ns[0]], [*original.value, 9.0],
                           [*original.unit, "kWh"], [*original.quality, "good"])
    consumer = IngestConsumer(load_config(make_config(dsn, [g])))
    consumer.start()
    try:
        send_all(producer, f"{topic_prefix}readings", [encode(original, g.key)])
        drain(consumer, dsn, 1)
        send_all(producer, f"{topic_prefix}readings", [encode(again, g.key)])
        drain(consumer, dsn, 2)
        with psycopg.connect(dsn) as conn:
            rows = conn.execute("SELECT meter, seq FROM reading ORDER BY meter").fetchall()
        assert sorted(rows) == sorted([*((f"gw3-m{i}", 0) for i in range(5)), ("gw3-extra", 1)])
    finally:
        consumer.close()


def test_insert_path_lands_integer_and_float_values_together(new_database) -> None:
    """JSON gives a gateway's integer registers as ints next to floats: the unnest INSERT
    path (the TimescaleDB peer's) must land both, in one frame and across frames."""
    from edge.wire import BatchEvent, BatchFrame, Frame
    from ingest.store import Accepted, Store

    dsn = new_database()
    migrate(dsn)
    mixed = Frame("s", "gw", 0, T0_NS, ["a", "b", "c"], ["energy"] * 3, [T0_NS] * 3,
                  [1.5, 2, 2**64 - 1], ["kWh"] * 3, ["good"] * 3)
    ints = Frame("s", "gw", 1, T0_NS, ["d"], ["energy"], [T0_NS], [7], ["kWh"], ["good"])
    events = BatchFrame("s", "gw", 0, T0_NS, (
        BatchEvent("l1", "b1", "p", "quantity", T0_NS, 3, "t"),
        BatchEvent("l1", "b1", "p", "quantity", T0_NS + 1000, 2.5, "t"),
        BatchEvent("l1", "b1", "p", "end", T0_NS + 2000),
    ))
    store = Store(dsn, "g", use_copy=False)
    try:
        result = store.land([Accepted(m, "t", 0, i) for i, m in enumerate([mixed, ints, events])],
                            {("t", 0): 3})
    finally:
        store.close()
    assert (result.readings, result.events) == (4, 3)
    with psycopg.connect(dsn) as conn:
        values = conn.execute("SELECT meter, value FROM reading ORDER BY meter").fetchall()
        quantities = conn.execute("SELECT quantity FROM batch_event ORDER BY ts").fetchall()
    assert values == [("a", 1.5), ("b", 2.0), ("c", float(2**64 - 1)), ("d", 7.0)]
    assert quantities == [(3.0,), (2.5,), (None,)]
