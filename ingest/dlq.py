"""The dead-letter topic: what could not land, why, and from where.

A DLQ record is the *original message bytes* as its value (byte for byte, so the
signature still verifies and the record can be re-driven), the original key, and
headers (all UTF-8):

=========================  ==============================================
``pp.reason``              machine-readable reason (``edge.wire.WireReason``,
                           ``future_timestamp``, ``before_commissioning``,
                           ``store_rejected``, ``seq_conflict``)
``pp.detail``              human-readable message naming gateway/field
``pp.source_topic``        topic, partition and offset the message came from
``pp.source_partition``
``pp.source_offset``
``pp.gateway``             the gateway id, when it could be read
``pp.rejected``            ``n/m``: for partial rejects, items cut of items sent
``pp.truncated``           original size in bytes, when the value was cut to
                           ``[kafka] dlq_max_bytes`` (e.g. a 50 MB frame)
=========================  ==============================================

Records are produced and flushed *before* the landing transaction commits, so
the DLQ is at-least-once: after a crash the same source offset may appear
twice; (source topic, partition, offset) identifies duplicates.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from kafka import KafkaProducer

from ingest.metrics import DLQ

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    value: bytes
    key: bytes | None
    reason: str
    detail: str
    topic: str
    partition: int
    offset: int
    gateway: str | None = None
    rejected: str | None = None


def dlq_headers(dead: DeadLetter, truncated_from: int | None) -> list[tuple[str, bytes]]:
    headers = [
        ("pp.reason", dead.reason),
        ("pp.detail", dead.detail[:2000]),
        ("pp.source_topic", dead.topic),
        ("pp.source_partition", str(dead.partition)),
        ("pp.source_offset", str(dead.offset)),
    ]
    if dead.gateway is not None:
        headers.append(("pp.gateway", dead.gateway))
    if dead.rejected is not None:
        headers.append(("pp.rejected", dead.rejected))
    if truncated_from is not None:
        headers.append(("pp.truncated", str(truncated_from)))
    return [(k, v.encode("utf-8", "replace")) for k, v in headers]


class DeadLetterQueue:
    """Produces dead letters; ``send_all`` returns once the broker acknowledged them."""

    def __init__(self, producer: KafkaProducer, topic: str, max_bytes: int) -> None:
        self._producer = producer
        self._topic = topic
        self._max = max_bytes

    def send_all(self, dead: list[DeadLetter]) -> None:
        futures = []
        for d in dead:
            cut = len(d.value) if len(d.value) > self._max else None
            value = d.value[: self._max] if cut else d.value
            futures.append(self._producer.send(
                self._topic, value=value, key=d.key, headers=dlq_headers(d, cut)
            ))
            DLQ.labels(d.reason).inc()
            logger.warning("DLQ %s from %s/%d@%d: %s", d.reason, d.topic, d.partition,
                           d.offset, d.detail[:300])
        self._producer.flush()
        for f in futures:
            f.get(timeout=30)  # raises if the broker refused: never drop a dead letter silently
