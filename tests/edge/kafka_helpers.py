"""Test helpers for the Kafka output: signed frames into a spool, and a reader."""

from __future__ import annotations

import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from kafka import KafkaConsumer, TopicPartition

from edge import wire
from edge.spool import Spool


def append_frame(spool: Spool, key: Ed25519PrivateKey, site: str, n_readings: int = 3) -> int:
    """Append one signed readings frame whose values encode its own seq."""

    def encode(seq: int) -> bytes:
        readings = [
            wire.Reading(f"m{i}", "energy_import_wh", 1_700_000_000_000_000_000 + seq, seq, "Wh",
                         "good")
            for i in range(n_readings)
        ]
        return wire.encode(wire.Frame.from_readings(site, spool.gateway, seq, time.time_ns(),
                                                    readings), key)

    return spool.append("readings", encode)


def append_batch(spool: Spool, key: Ed25519PrivateKey, site: str) -> int:
    def encode(seq: int) -> bytes:
        event = wire.BatchEvent("line1", f"B{seq}", "cement", "start", time.time_ns())
        return wire.encode(wire.BatchFrame(site, spool.gateway, seq, time.time_ns(), (event,)),
                           key)

    return spool.append("batches", encode)


def consume(
    bootstrap: str, topic: str, count: int, timeout: float = 20.0
) -> list[tuple[bytes, bytes]]:
    """(key, value) of the first ``count`` records of every partition of ``topic``.

    Partitions are assigned by hand (no consumer group: tansu joins are slow);
    records come in partition order, which is all a site key needs.
    """
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             consumer_timeout_ms=1000)
    try:
        deadline = time.monotonic() + timeout
        parts = None
        while parts is None and time.monotonic() < deadline:
            parts = consumer.partitions_for_topic(topic)
            if parts is None:
                time.sleep(0.2)
        assert parts, f"topic {topic} never appeared"
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        got: list[tuple[bytes, bytes]] = []
        while len(got) < count and time.monotonic() < deadline:
            for _tp, records in consumer.poll(timeout_ms=300).items():
                got.extend((r.key, r.value) for r in records)
        return got
    finally:
        consumer.close()

