"""Bad input against the real ingest process: every bad message lands in the DLQ with
its reason, nothing valid around it is lost, the process keeps running."""

from __future__ import annotations

import time

import orjson
import psycopg
import pytest
from ingest_helpers import T0_NS, Gateway, read_topic, send_all, wait_for

from edge.wire import HEADER_BYTES, MAGIC, canonical_bytes, encode
from ingest.migrate import migrate

pytestmark = pytest.mark.services
NS = 10**9


def signed(g: Gateway, body: bytes) -> bytes:
    return MAGIC + g.key.sign(body) + body


def bad_messages(g: Gateway, stranger: Gateway) -> list[tuple[bytes, str]]:
    """(message, expected DLQ reason): the hand-made cases of the issue."""
    frame = g.frame(seq=1000)
    body = orjson.loads(canonical_bytes(frame))
    wrong_type = orjson.dumps({**body, "seq": "1000"}, option=orjson.OPT_SORT_KEYS)
    nan = canonical_bytes(frame).replace(b'"value":[', b'"value":[NaN,', 1)
    valid = encode(frame, g.key)
    flipped = bytearray(valid)
    flipped[10] ^= 0xFF  # inside the signature
    now = time.time_ns()
    future = g.frame(seq=1001, t_ns=now + 86400 * NS)
    early = g.frame(seq=1002, t_ns=T0_NS - 86400 * NS)  # before gw1-m0's commissioning
    huge = MAGIC + bytes(64) + b" " * (50 * 1024 * 1024)
    return [
        (valid[: len(valid) // 2], "malformed_json"),  # truncated
        (signed(g, wrong_type), "wrong_type"),
        (bytes(flipped), "bad_signature"),
        (stranger.frame_bytes(), "unknown_gateway"),
        (signed(g, nan), "non_finite"),  # NaN is not JSON; edge.wire names it
        (huge, "too_large"),
        (encode(future, g.key), "future_timestamp"),
        (encode(early, g.key), "before_commissioning"),
        (b"", "bad_envelope"),
    ]


def test_each_bad_message_is_dead_lettered_and_valid_ones_land(
    services, new_database, make_config, producer, topic_prefix, ingest_process
) -> None:
    dsn = new_database()
    migrate(dsn)
    g, stranger = Gateway("gw1", meters=4), Gateway("gw-unknown")
    bad = bad_messages(g, stranger)
    cfg = make_config(
        dsn, [g], kafka={"dlq_max_bytes": 1 << 20},
        limits={"max_frame_bytes": 4 << 20},
        meters={"gw1-m0": {"commissioned": "2026-01-01T00:00:00Z"}},
    )
    cfg.write_text(cfg.read_text().replace('commissioned = "2026-01-01T00:00:00Z"',
                                           "commissioned = 2026-01-01T00:00:00Z"))
    proc = ingest_process("--config", str(cfg))
    proc.start()
    stream: list[bytes] = []
    for i, (msg, _) in enumerate(bad):  # valid frames around every bad one
        stream += [g.frame_bytes(seq=2 * i), msg, g.frame_bytes(seq=2 * i + 1)]
    send_all(producer, f"{topic_prefix}readings", stream)

    dlq = read_topic(services.kafka_bootstrap, f"{topic_prefix}dlq", len(bad), timeout_s=60)
    assert proc.alive()
    headers = [dict(r.headers) for r in dlq]
    assert sorted(h["pp.reason"].decode() for h in headers) == sorted(r for _, r in bad)
    by_reason = {h["pp.reason"].decode(): (h, r) for h, r in zip(headers, dlq, strict=True)}
    h, rec = by_reason["too_large"]
    assert h["pp.truncated"] == str(len(bad[5][0])).encode() and len(rec.value) == 1 << 20
    h, rec = by_reason["bad_signature"]
    assert rec.value == bad[2][0] and h["pp.source_topic"] == f"{topic_prefix}readings".encode()
    assert h["pp.gateway"] == b"gw1" and int(h["pp.source_offset"]) == 7
    assert by_reason["before_commissioning"][0]["pp.rejected"] == b"1/4"
    assert by_reason["future_timestamp"][0]["pp.rejected"] == b"4/4"

    def all_valid_landed() -> bool:
        with psycopg.connect(dsn) as conn:
            n = conn.execute("SELECT count(*) FROM reading WHERE seq < 1000").fetchone()
        return n == (4 * 2 * len(bad),)

    wait_for(all_valid_landed, 30, "valid frames around bad ones")
    with psycopg.connect(dsn) as conn:
        # the early frame keeps its 3 meters that have no commissioning date
        early = conn.execute("SELECT meter FROM reading WHERE seq = 1002 ORDER BY 1").fetchall()
        assert [m for (m,) in early] == ["gw1-m1", "gw1-m2", "gw1-m3"]
        assert conn.execute("SELECT count(*) FROM reading WHERE seq = 1001").fetchone() == (0,)
    assert proc.alive()
    assert proc.stop() == 0
    assert HEADER_BYTES == 68
