"""Forged, conflicting, replayed and re-keyed frames against the real broker and PostgreSQL
(issue 10's Must-show): what lands, what is dead-lettered with which reason, what is counted."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from ingest_helpers import T0_NS, Gateway, binding, read_topic, run_cli, send_all, wait_for

from compute.intake import accept as compute_accept
from compute.store import ComputeStore, FrameKey
from edge.wire import Frame, encode, generate_private_key, peek_header, public_key_b64
from ingest import metrics
from ingest.accept import Acceptance
from ingest.config import load_config
from ingest.consumer import IngestConsumer
from ingest.migrate import migrate
from ingest.ops_ledger import main as ledger_main
from ingest.screen import Limits
from ingest.store import body_digest

pytestmark = pytest.mark.services


def query(dsn: str, sql: str, *params: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, params or None).fetchall()


def consumed(consumer: IngestConsumer, dsn: str, messages: int) -> None:
    """Poll until ingest is done with ``messages`` records (stored offsets)."""
    def done() -> bool:
        consumer.poll_once(200)
        consumer.flush()
        return query(dsn, "SELECT coalesce(sum(next_offset), 0) FROM consumer_offset")[0][0] \
            >= messages

    wait_for(done, 30, f"{messages} messages consumed", every=0)


def compute_saw(compute: ComputeStore, frames: list[bytes]) -> tuple[set[int], list[int]]:
    """Compute's verdict on ``frames`` in its own ledger: (indices used, seq conflicts)."""
    keys = []
    for i, raw in enumerate(frames):
        head = peek_header(raw)
        assert head is not None
        keys.append(FrameKey(head.gateway, head.stream, head.seq, "site-r", body_digest(raw),
                             0, i))
    with compute.conn.transaction(), compute.conn.cursor() as cur:
        return compute.new_frames(cur, keys)


def dead_letters(services: Any, topic_prefix: str, n: int) -> list[tuple[str, str, str | None]]:
    """(reason, gateway, rejected) of the DLQ's records, in order."""
    out = []
    for r in read_topic(services.kafka_bootstrap, f"{topic_prefix}dlq", n, 20):
        h = {k: v.decode() for k, v in r.headers}
        out.append((h["pp.reason"], h.get("pp.gateway", ""), h.get("pp.rejected")))
    return out


def reading(site: str, gw: Gateway, seq: int, meters: list[str], values: list[float],
            t_ns: int = T0_NS) -> bytes:
    n = len(meters)
    return encode(Frame(site, gw.name, seq, t_ns, meters, ["energy"] * n, [t_ns] * n, values,
                        ["kWh"] * n, ["good"] * n), gw.key)


def test_a_gateway_cannot_report_for_another_site_or_meter(
    new_database, make_config, producer, topic_prefix, services,
) -> None:
    dsn = new_database()
    migrate(dsn)
    a, b = Gateway("gw-a", site="site-a"), Gateway("gw-b", site="site-b")
    consumer = IngestConsumer(load_config(make_config(dsn, [a, b])))
    consumer.start()
    try:
        # gw-a, with its own valid key, first: B's site and meter, then B's meter at its site
        send_all(producer, f"{topic_prefix}readings", [
            reading("site-b", a, 0, ["gw-b-m0"], [999.0]),
            reading("site-a", a, 1, ["gw-a-m0", "gw-b-m0"], [5.0, 999.0]),
        ])
        send_all(producer, f"{topic_prefix}readings", [reading("site-b", b, 0, ["gw-b-m0"],
                                                               [1000.0])], key=b"site-b")
        consumed(consumer, dsn, 3)
    finally:
        consumer.close()
    assert query(dsn, "SELECT site, gateway, meter, value FROM reading ORDER BY 1, 3") == [
        ("site-a", "gw-a", "gw-a-m0", 5.0), ("site-b", "gw-b", "gw-b-m0", 1000.0)]
    assert dead_letters(services, topic_prefix, 2) == [
        ("not_bound", "gw-a", None), ("not_bound", "gw-a", "1/2")]
    assert query(dsn, "SELECT gateway, seq, items, rejected FROM ingested_frame ORDER BY 1, 2") \
        == [("gw-a", 1, 1, 1), ("gw-b", 0, 1, 0)]  # the whole-frame refusal is not in it


@pytest.mark.parametrize("landing", ["copy", "insert"])
def test_a_conflicting_value_is_dead_lettered_counted_and_the_stored_row_untouched(
    new_database, make_config, producer, topic_prefix, services, landing: str,
) -> None:
    dsn = new_database()
    migrate(dsn)
    g = Gateway("gw-c", site="site-c")
    other = Gateway("gw-d", site="site-c")  # bound to the same meters by mistake
    cfg = make_config(dsn, [g, other], database={"dsn": dsn, "landing": landing},
                      gateways={"gw-d": binding(other, meters=["gw-c-*"])})
    before = metrics.READING_CONFLICTS.labels("gw-c")._value.get()
    consumer = IngestConsumer(load_config(cfg))
    consumer.start()
    try:
        topic = f"{topic_prefix}readings"
        send_all(producer, topic, [reading("site-c", g, 0, ["gw-c-m0", "gw-c-m1"], [10.0, 20.0])])
        consumed(consumer, dsn, 1)
        send_all(producer, topic, [
            reading("site-c", g, 1, ["gw-c-m0", "gw-c-m1"], [10.0, 20.0]),  # re-sent: idempotent
            reading("site-c", g, 2, ["gw-c-m0", "gw-c-m2"], [11.5, 30.0]),  # another value
            reading("site-c", other, 0, ["gw-c-m1"], [20.0]),  # another gateway, same value
        ])
        consumed(consumer, dsn, 4)
    finally:
        consumer.close()
    assert query(dsn, "SELECT meter, gateway, seq, value FROM reading ORDER BY 1") == [
        ("gw-c-m0", "gw-c", 0, 10.0), ("gw-c-m1", "gw-c", 0, 20.0), ("gw-c-m2", "gw-c", 2, 30.0)]
    assert dead_letters(services, topic_prefix, 2) == [
        ("reading_conflict", "gw-c", "1/2"), ("reading_conflict", "gw-d", "1/1")]
    assert metrics.READING_CONFLICTS.labels("gw-c")._value.get() - before == 1
    # all four frames are in the ledger (their other readings landed); gaps are not faked
    assert query(dsn, "SELECT gateway, seq FROM ingested_frame ORDER BY 1, 2") == [
        ("gw-c", 0), ("gw-c", 1), ("gw-c", 2), ("gw-d", 0)]


def test_a_frame_replayed_after_a_ledger_reset_is_refused(
    new_database, make_config, producer, topic_prefix, services, tmp_path: Path,
) -> None:
    dsn = new_database()
    migrate(dsn)
    g = Gateway("gw-r", site="site-r", meters=2)
    old = [g.frame_bytes(seq=s) for s in range(4)]
    cfg = make_config(dsn, [g])
    topic = f"{topic_prefix}readings"
    consumer = IngestConsumer(load_config(cfg))
    consumer.start()
    compute = ComputeStore(dsn, "compute-g")
    try:
        send_all(producer, topic, old)
        consumed(consumer, dsn, 4)
        assert compute_saw(compute, old) == ({0, 1, 2, 3}, [])  # compute used them too
        code, out, err = run_cli(ledger_main, "reset", "--dsn", dsn, "--gateway", "gw-r",
                                 "--export", tmp_path / "gw-r.jsonl")
        assert code == 0, err
        assert "epoch 1 of gateway gw-r started" in out
        # the re-provisioned gateway numbers from 0 again; an attacker replays old seq 1
        renumbered = dataclasses.replace(g.frame(seq=1), sent_ns=T0_NS + 10**12,
                                         ts_ns=[T0_NS + 10**12] * 2)
        after = [old[1], encode(renumbered, g.key), old[2]]
        send_all(producer, topic, after)
        consumed(consumer, dsn, 7)
        # compute, on its own ledger: the new seq 1 is used (not a conflict with the old
        # seq 1), the replays are neither used nor counted as conflicts
        assert compute_saw(compute, after) == ({1}, [])
    finally:
        consumer.close()
        compute.close()
    assert [r for r, _, _ in dead_letters(services, topic_prefix, 2)] == ["replayed"] * 2
    assert query(dsn, "SELECT seq, frames FROM gateway_seq JOIN ingested_frame USING "
                      "(gateway, stream)") == [(1, 1)]  # only the new frame holds seq 1
    assert query(dsn, "SELECT gateway, epoch, frames_retired FROM gateway_epoch") == [
        ("gw-r", 1, 4)]


def test_rotation_lands_both_keys_in_the_overlap_and_refuses_a_revoked_one(
    new_database, make_config, producer, topic_prefix, services,
) -> None:
    dsn = new_database()
    migrate(dsn)
    old = Gateway("gw-k", site="site-k", meters=1)
    new_key, stolen = generate_private_key(), generate_private_key()
    overlap = datetime.fromtimestamp((T0_NS + 50 * 10**10) / 1e9, UTC)  # seq 50's time
    keys = [{"public_key": public_key_b64(old.key), "valid_until": overlap},
            {"public_key": public_key_b64(new_key),
             "valid_from": datetime.fromtimestamp(T0_NS / 1e9, UTC)},
            {"public_key": public_key_b64(stolen)}]
    cfg = make_config(dsn, [old], gateways={"gw-k": binding(old, public_key="", keys=keys)},
                      revoked={"keys": [public_key_b64(stolen)]})
    consumer = IngestConsumer(load_config(cfg))
    consumer.start()
    try:
        signed = [encode(old.frame(seq=0), old.key), encode(old.frame(seq=1), new_key),
                  encode(old.frame(seq=2), stolen),  # revoked: refused whatever its time
                  encode(old.frame(seq=60), old.key),  # the old key after its period
                  encode(old.frame(seq=61), new_key)]
        send_all(producer, f"{topic_prefix}readings", signed, key=b"site-k")
        consumed(consumer, dsn, 5)
    finally:
        consumer.close()
    assert query(dsn, "SELECT seq FROM ingested_frame ORDER BY 1") == [(0,), (1,), (61,)]
    assert [r for r, _, _ in dead_letters(services, topic_prefix, 2)] == [
        "revoked_key", "key_not_valid"]


def test_compute_accepts_exactly_what_ingest_accepts(tmp_path: Path, make_config) -> None:
    """The same records through ingest's and compute's intake: the same verdicts."""
    a, b = Gateway("gw-a", site="site-a", meters=2), Gateway("gw-b", site="site-b")
    cfg = load_config(make_config("postgresql://127.0.0.1/unused", [a, b],
                                  limits={"max_frame_age_s": 3600.0}))
    limits = Limits(now_ns=T0_NS + 600 * 10**9, future_skew_ns=300 * 10**9,
                    earliest_ns=0, commissioning_ns={})
    records = {
        "landed": a.frame_bytes(seq=0),
        "not_bound": reading("site-b", a, 1, ["gw-a-m0"], [1.0]),
        "too_old": reading("site-a", a, 2, ["gw-a-m0"], [1.0], t_ns=T0_NS - 10**13),
        "unknown_gateway": reading("site-a", Gateway("gw-x"), 0, ["gw-x-m0"], [1.0]),
    }

    class Rec:
        def __init__(self, value: bytes) -> None:
            self.value, self.key, self.topic, self.partition, self.offset = value, b"", "t", 0, 0

    consumer = IngestConsumer(cfg, clock_ns=lambda: limits.now_ns)
    for want, raw in records.items():
        accepted: list[Any] = []
        dead: list[Any] = []
        consumer._classify_one(Rec(raw), limits, accepted, dead)
        ingest_says = dead[0].reason if dead else "landed"
        got = compute_accept(Rec(raw), Acceptance.from_config(cfg), 1 << 24, limits)
        compute_says = got if isinstance(got, str) else "landed"
        assert (ingest_says, compute_says) == (want, want)
