"""``ledger reset`` and ``dlq redrive`` end to end against the real broker, PostgreSQL and
a running ingest: a gateway whose sequence restarted is reset (with an export an auditor
can read) and its dead-lettered frames are re-driven, landing once and only once."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from pathlib import Path

import orjson
import psycopg
import pytest
from ingest_helpers import (
    T0_NS,
    Gateway,
    read_topic,
    run_cli,
    send_all,
    stored_offsets,
    wait_for,
)

from edge.wire import Frame, decode
from ingest.migrate import migrate
from ingest.ops_dlq_cli import main as dlq_main
from ingest.ops_ledger import main as ledger_main
from ingest.store import Accepted, Store, body_digest

pytestmark = pytest.mark.services
DAY_NS = 86_400 * 10**9
IDLE = "0.5"  # s without a DLQ record before a read-back ends (2 s by default)


def query(dsn: str, sql: str, *params: object) -> list[tuple[object, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, params).fetchall()


READINGS = ("SELECT meter, (extract(epoch FROM ts) * 1000000)::bigint * 1000, value, seq "
            "FROM reading ORDER BY ts, meter")


def readings_of(frames: Sequence[bytes], g: Gateway) -> list[tuple[object, ...]]:
    rows = []
    for raw in frames:
        f = decode(raw, {g.name: g.key.public_key()})
        assert isinstance(f, Frame)
        rows += [(m, t, v, f.seq) for m, t, v in zip(f.meter, f.ts_ns, f.value, strict=True)]
    return sorted(rows, key=lambda r: (r[1], r[0]))


def test_reset_then_redrive_lands_the_conflicting_frames_once(
    services, new_database, make_config, producer, topic_prefix, ingest_process,
    writer_login, tmp_path: Path
) -> None:
    dsn = new_database()
    migrate(dsn)
    name = f"gw-{uuid.uuid4().hex[:6]}"
    original = Gateway(name, meters=3)
    sent = [original.frame_bytes(seq=s) for s in range(10)]
    # re-provisioned under the same id with a new spool: seq restarts at 0, new data
    again = Gateway(name, meters=3, key=original.key)
    conflicting = [again.frame_bytes(seq=s, t_ns=T0_NS + DAY_NS + s * 10**10) for s in range(5)]
    cfg = make_config(writer_login(dsn), [original])
    ingest_process("--config", str(cfg)).start()
    topic = f"{topic_prefix}readings"
    send_all(producer, topic, sent)
    wait_for(lambda: stored_offsets(dsn) >= 10, 30, "the original frames landed")
    send_all(producer, topic, conflicting)
    wait_for(lambda: stored_offsets(dsn) >= 15, 30, "the conflicting frames dead-lettered")
    assert query(dsn, READINGS) == readings_of(sent, original)

    code, out, err = run_cli(dlq_main, "list", "--config", cfg, "--reason", "seq_conflict",
                         "--json", "--idle-s", IDLE)
    assert code == 0, err
    listed = [orjson.loads(line) for line in out.splitlines()]
    assert [d["value_sha256"] for d in listed] == [hashlib.sha256(c).hexdigest()
                                                   for c in conflicting]
    assert [(d["reason"], d["gateway"], d["source_topic"], d["source_offset"]) for d in listed] \
        == [("seq_conflict", name, topic, 10 + s) for s in range(5)]
    assert f"5 dead letter(s) in {topic_prefix}dlq: seq_conflict 5" in err

    export = tmp_path / "ledger-export.jsonl"
    code, out, err = run_cli(ledger_main, "reset", "--config", cfg, "--dsn", dsn, "--gateway", name,
                         "--export", export)
    assert code == 0, err
    assert "reading and batch_event rows already landed are kept" in out
    header, *lines = [orjson.loads(line) for line in export.read_bytes().splitlines()]
    owner = query(dsn, "SELECT current_user")[0][0]
    assert (header["gateway"], header["who"], header["stream"]) == (name, owner, None)
    assert header["counts"] == {"ingested_frame": 10, "gateway_seq": 1}
    assert header["streams"] == {"readings": {"frames": 10, "first_seq": 0, "last_seq": 9}}
    frames = [d["row"] for d in lines if d["table"] == "ingested_frame"]
    assert sorted((f["seq"], f["body_sha256"], f["kafka_offset"]) for f in frames) == [
        (s, body_digest(raw).hex(), s) for s, raw in enumerate(sent)]
    [seq_row] = [d["row"] for d in lines if d["table"] == "gateway_seq"]
    assert (seq_row["highest_seq"], seq_row["frames"], seq_row["missing_count"]) == (9, 10, 0)
    assert query(dsn, "SELECT count(*) FROM ingested_frame") == [(0,)]
    assert query(dsn, "SELECT count(*) FROM gateway_seq") == [(0,)]
    assert query(dsn, READINGS) == readings_of(sent, original), "readings are kept"

    code, out, err = run_cli(dlq_main, "redrive", "--config", cfg, "--reason", "seq_conflict",
                         "--idle-s", IDLE)
    assert code == 0, err
    assert "re-drove 5 record(s)" in out
    wait_for(lambda: stored_offsets(dsn) >= 20, 30, "the re-driven frames consumed")
    landed = query(dsn, READINGS)
    assert landed == sorted(readings_of(sent, original) + readings_of(conflicting, again),
                            key=lambda r: (r[1], r[0]))
    ledger = query(dsn, "SELECT seq, body_sha256, kafka_offset FROM ingested_frame ORDER BY seq")
    assert ledger == [(s, body_digest(raw), 15 + s) for s, raw in enumerate(conflicting)]
    redriven = read_topic(services.kafka_bootstrap, topic, 20, timeout_s=10)[15:]
    assert [r.value for r in redriven] == conflicting  # byte for byte, with their provenance
    assert [dict(r.headers)["pp.redriven_from"].decode() for r in redriven] == [
        f"{topic_prefix}dlq/{d['dlq_partition']}@{d['dlq_offset']}" for d in listed]

    code, out, err = run_cli(dlq_main, "redrive", "--config", cfg, "--reason", "seq_conflict",
                         "--idle-s", IDLE)  # again: harmless
    assert code == 0, err
    wait_for(lambda: stored_offsets(dsn) >= 25, 30, "the second re-drive consumed")
    assert query(dsn, READINGS) == landed
    assert query(dsn, "SELECT seq, body_sha256, kafka_offset FROM ingested_frame "
                      "ORDER BY seq") == ledger
    assert query(dsn, "SELECT highest_seq, frames, missing_count FROM gateway_seq") \
        == [(4, 5, 0)]
    code, out, err = run_cli(dlq_main, "list", "--config", cfg, "--json", "--idle-s", IDLE)
    assert len(out.splitlines()) == 5, "nothing new was dead-lettered"


def land(dsn: str, g: Gateway, raws: list[bytes]) -> None:
    store = Store(dsn, "ops-ledger-test")
    try:
        accepted = [Accepted(decode(raw, {g.name: g.key.public_key()}), "t", 0, i, None, raw,
                             None, body_digest(raw)) for i, raw in enumerate(raws)]
        store.land(accepted, {("t", 0): len(raws)})
    finally:
        store.close()


def test_reset_refuses_without_export_over_a_file_as_the_writer_and_for_unknown_gateways(
    new_database, writer_login, tmp_path: Path
) -> None:
    dsn = new_database()
    migrate(dsn)
    g = Gateway("gw-keep", meters=2)
    land(dsn, g, [g.frame_bytes(seq=s) for s in range(3)] + [g.batch_bytes("B1")])
    before = query(dsn, "SELECT stream, seq FROM ingested_frame ORDER BY 1, 2")
    export = tmp_path / "x.jsonl"

    code, _, err = run_cli(ledger_main, "reset", "--dsn", dsn, "--gateway", "gw-keep")
    assert code == 2 and "without --export" in err and "auditor" in err
    export.write_text("an earlier export\n")
    code, _, err = run_cli(ledger_main, "reset", "--dsn", dsn, "--gateway", "gw-keep",
                       "--export", export)
    assert code == 2 and "exists: refusing to overwrite" in err
    assert export.read_text() == "an earlier export\n"
    export.unlink()
    code, _, err = run_cli(ledger_main, "reset", "--dsn", writer_login(dsn), "--gateway", "gw-keep",
                       "--export", export)
    assert code == 2 and "may not DELETE" in err and "database owner" in err
    code, _, err = run_cli(ledger_main, "reset", "--dsn", dsn, "--gateway", "gw-nope",
                       "--export", export)
    assert code == 2 and "no such gateway in the ledger: gateway 'gw-nope'" in err
    assert "gateways in the ledger: gw-keep" in err
    assert not export.exists()
    assert query(dsn, "SELECT stream, seq FROM ingested_frame ORDER BY 1, 2") == before

    code, out, err = run_cli(ledger_main, "reset", "--dsn", dsn, "--gateway", "gw-keep",
                         "--stream", "batches", "--export", export)
    assert code == 0, err
    assert "ledger of gateway gw-keep (batches) reset" in out
    header = orjson.loads(export.read_bytes().splitlines()[0])
    assert header["counts"] == {"ingested_frame": 1, "gateway_seq": 1}
    assert query(dsn, "SELECT stream, seq FROM ingested_frame ORDER BY 1, 2") \
        == [("readings", 0), ("readings", 1), ("readings", 2)]
    assert query(dsn, "SELECT stream FROM gateway_seq") == [("readings",)]
    assert query(dsn, "SELECT count(*) FROM batch_event") == [(1,)], "events are kept"
