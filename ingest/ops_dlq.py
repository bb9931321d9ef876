"""The dead-letter topic for operators: read it back, select records, re-drive them.

Reading never joins a consumer group and never commits: partitions are assigned
by hand and read from offset 0 until no record came for ``idle_s`` (the broker's
end offsets are not trusted: tansu reports wrong high watermarks). Re-driving
produces a record's value *unchanged*, with its key, to its ``pp.source_topic``:
ingest checks it again from scratch and dedups by (gateway, stream, seq), so a
repeated re-drive lands nothing twice. The record's DLQ coordinates travel with
it in the header ``pp.redriven_from`` (ingest ignores headers; the ledger's
``topic``/``kafka_offset`` then point at the re-driven record, which names its
dead letter). A truncated record (``pp.truncated``) is never re-driven: its
original bytes are gone. The command line is ``ingest.ops_dlq_cli``.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError

from ingest.accept import DLQ_REASONS
from ingest.config import KafkaConfig
from ingest.errors import IngestError
from ingest.kafka_wait import UNREACHABLE, kafka_library_quiet, tls_problem

logger = logging.getLogger(__name__)

# every pp.reason ingest and its bridge write (the taxonomy lives in ingest.accept)
KNOWN_REASONS: Final = DLQ_REASONS
DEFAULT_IDLE_S: Final = 2.0
POLL_MS: Final = 200
SEND_TIMEOUT_S: Final = 30.0


@dataclass(frozen=True, slots=True)
class DlqRecord:
    """One dead letter: where it sits in the DLQ, its headers, and its value (if kept)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    headers: dict[str, str]
    size: int  # bytes of the value as stored in the DLQ
    value_sha256: str
    value: bytes | None = field(default=None, repr=False)

    @property
    def reason(self) -> str:
        return self.headers.get("pp.reason", "?")

    @property
    def gateway(self) -> str | None:
        return self.headers.get("pp.gateway")

    @property
    def source_topic(self) -> str | None:
        return self.headers.get("pp.source_topic")

    @property
    def truncated_from(self) -> int | None:
        raw = self.headers.get("pp.truncated")
        return int(raw) if raw is not None and raw.isdigit() else None

    @property
    def where(self) -> str:
        return f"{self.partition}@{self.offset}"

    @property
    def source(self) -> str:
        h = self.headers
        return (f"{h.get('pp.source_topic', '?')}/{h.get('pp.source_partition', '?')}"
                f"@{h.get('pp.source_offset', '?')}")

    def as_json(self) -> dict[str, Any]:
        h = self.headers
        return {
            "dlq_topic": self.topic, "dlq_partition": self.partition,
            "dlq_offset": self.offset, "reason": self.reason, "gateway": self.gateway,
            "source_topic": self.source_topic,
            "source_partition": _int_or_none(h.get("pp.source_partition")),
            "source_offset": _int_or_none(h.get("pp.source_offset")),
            "detail": h.get("pp.detail"), "rejected": h.get("pp.rejected"),
            "truncated_from": self.truncated_from, "size": self.size,
            "value_sha256": self.value_sha256,
            "key": None if self.key is None else self.key.decode("utf-8", "backslashreplace"),
        }


def _int_or_none(raw: str | None) -> int | None:
    return int(raw) if raw is not None and raw.lstrip("-").isdigit() else None


def check_reason(reason: str | None) -> None:
    if reason is not None and reason not in KNOWN_REASONS:
        raise IngestError(f"unknown DLQ reason {reason!r}; known reasons: "
                          f"{', '.join(KNOWN_REASONS)}")


def parse_offsets(text: str) -> set[tuple[int, int]]:
    """``P:O[,P:O...]``: DLQ partition and offset; ``P@O`` as ``dlq list`` shows them too."""
    out: set[tuple[int, int]] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        p, sep, o = part.replace("@", ":", 1).partition(":")
        if not (sep and p.isdigit() and o.isdigit()):
            raise IngestError(f"--offsets {part!r}: expected PARTITION:OFFSET of the DLQ, "
                              "e.g. 0:17 (see dlq list)")
        out.add((int(p), int(o)))
    if not out:
        raise IngestError("--offsets is empty: expected PARTITION:OFFSET[,PARTITION:OFFSET...]")
    return out


@dataclass(frozen=True, slots=True)
class Selection:
    """Which dead letters a command acts on; None means any."""

    reason: str | None = None
    gateway: str | None = None
    offsets: frozenset[tuple[int, int]] | None = None

    def __call__(self, rec: DlqRecord) -> bool:
        return ((self.reason is None or rec.reason == self.reason)
                and (self.gateway is None or rec.gateway == self.gateway)
                and (self.offsets is None or (rec.partition, rec.offset) in self.offsets))

    def missing(self, found: Iterable[DlqRecord]) -> list[str]:
        """Requested offsets that are not in the DLQ (an error: nothing is re-driven)."""
        if self.offsets is None:
            return []
        have = {(r.partition, r.offset) for r in found}
        return [f"{p}:{o}" for p, o in sorted(self.offsets - have)]


@dataclass
class RedrivePlan:
    """What a re-drive does with each selected record (pure, from the records alone)."""

    send: list[DlqRecord] = field(default_factory=list)
    refused: list[tuple[DlqRecord, str]] = field(default_factory=list)
    duplicates: list[tuple[DlqRecord, DlqRecord]] = field(default_factory=list)  # (dup, first)


def plan_redrive(records: Iterable[DlqRecord], source_topics: set[str]) -> RedrivePlan:
    """Truncated records and records from a topic ingest does not consume are refused;
    a second copy of the same message (same topic, key and bytes: the DLQ is at-least-once,
    and a record dead-lettered again after a re-drive) is sent once."""
    plan = RedrivePlan()
    first: dict[tuple[str, bytes | None, str], DlqRecord] = {}
    for rec in records:
        why = _refusal(rec, source_topics)
        if why is not None:
            plan.refused.append((rec, why))
            continue
        ident = (rec.source_topic or "", rec.key, rec.value_sha256)
        if ident in first:
            plan.duplicates.append((rec, first[ident]))
            continue
        first[ident] = rec
        plan.send.append(rec)
    return plan


def _refusal(rec: DlqRecord, source_topics: set[str]) -> str | None:
    cut = rec.truncated_from
    if cut is not None:
        return (f"truncated: the DLQ kept {rec.size} of its {cut} bytes ([kafka] "
                "dlq_max_bytes), the original is gone; it can only be sent again by its gateway")
    if rec.source_topic not in source_topics:
        return (f"its pp.source_topic {rec.source_topic!r} is not a topic this ingest "
                f"consumes ({', '.join(sorted(source_topics))})")
    if rec.value is None:
        return "its value was not read"
    return None


def _unreachable(kafka: KafkaConfig, exc: Exception) -> IngestError:
    problem = tls_problem(kafka)
    if problem is not None:
        return IngestError(f"Kafka at bootstrap servers {kafka.servers}: {problem} (see "
                           "[kafka] ssl_cafile, ssl_certfile, ssl_keyfile, ssl_check_hostname)")
    return IngestError(f"Kafka is not reachable at bootstrap servers {kafka.servers} "
                       f"(gave up after [kafka] connect_timeout_s = {kafka.connect_timeout_s} s: "
                       f"{exc})")


def read_dlq(kafka: KafkaConfig, idle_s: float, want: Callable[[DlqRecord], bool],
             keep_values: bool = False) -> list[DlqRecord]:
    """Every wanted dead letter of ``<prefix>dlq``, in partition and offset order."""
    topic = kafka.topic("dlq")
    try:
        with kafka_library_quiet(True):  # one line of ours instead of its retries
            consumer = KafkaConsumer(
                **kafka.client_config(), group_id=None, enable_auto_commit=False,
                auto_offset_reset="earliest",  # offset 0 gone to retention: first kept
                allow_auto_create_topics=False,  # a read-only tool creates nothing
                fetch_max_bytes=kafka.fetch_max_bytes,
                max_partition_fetch_bytes=kafka.fetch_max_bytes,
                bootstrap_timeout_ms=int(kafka.connect_timeout_s * 1000))
    except UNREACHABLE as exc:
        raise _unreachable(kafka, exc) from exc
    try:
        return _read_to_idle(consumer, topic, idle_s, want, keep_values)
    except KafkaError as exc:
        raise IngestError(f"reading {topic} from {kafka.servers}: {exc}") from exc
    finally:
        consumer.close(autocommit=False)


def _read_to_idle(consumer: KafkaConsumer, topic: str, idle_s: float,
                  want: Callable[[DlqRecord], bool], keep_values: bool) -> list[DlqRecord]:
    parts = sorted(consumer.partitions_for_topic(topic) or ())
    if not parts:
        logger.info("topic %s does not exist: nothing was ever dead-lettered there", topic)
        return []
    tps = [TopicPartition(topic, p) for p in parts]
    consumer.assign(tps)
    for tp in tps:
        consumer.seek(tp, 0)
    out: list[DlqRecord] = []
    idle_until = time.monotonic() + idle_s
    while time.monotonic() < idle_until:  # end offsets are not trusted: read until idle
        for recs in consumer.poll(timeout_ms=POLL_MS).values():
            idle_until = time.monotonic() + idle_s
            for r in recs:
                rec = _record(r, keep_values)
                if want(rec):
                    out.append(rec)
    out.sort(key=lambda r: (r.partition, r.offset))
    return out


def _record(r: Any, keep_value: bool) -> DlqRecord:
    value: bytes = r.value or b""
    headers = {k: v.decode("utf-8", "replace") for k, v in (r.headers or [])}
    return DlqRecord(r.topic, r.partition, r.offset, r.key, headers, len(value),
                     hashlib.sha256(value).hexdigest(), value if keep_value else None)


@dataclass(frozen=True, slots=True)
class Redriven:
    """One record produced again: where it went, or the error that stopped it."""

    record: DlqRecord
    partition: int | None = None
    offset: int | None = None
    error: str | None = None


def produce(kafka: KafkaConfig, records: list[DlqRecord]) -> list[Redriven]:
    """Each value unchanged with its key to its source topic (acks=all); per-record results."""
    if not records:
        return []
    largest = max(len(r.value or b"") for r in records)
    try:
        with kafka_library_quiet(True):
            producer = KafkaProducer(
                **kafka.client_config(), acks="all", linger_ms=5,
                max_request_size=largest + (1 << 20), client_id="plantprint-dlq-redrive",
                bootstrap_timeout_ms=int(kafka.connect_timeout_s * 1000))
    except UNREACHABLE as exc:
        raise _unreachable(kafka, exc) from exc
    try:
        futures = [(r, producer.send(
            r.source_topic, value=r.value, key=r.key,
            headers=[("pp.redriven_from", f"{r.topic}/{r.where}".encode())]))
            for r in records]
        producer.flush(timeout=SEND_TIMEOUT_S)
        return [_outcome(r, f) for r, f in futures]
    finally:
        producer.close(timeout=5)


def _outcome(rec: DlqRecord, future: Any) -> Redriven:
    try:
        meta = future.get(timeout=SEND_TIMEOUT_S)
    except KafkaError as exc:
        logger.error("re-drive of %s/%s to %s failed: %s", rec.topic, rec.where,
                     rec.source_topic, exc)
        return Redriven(rec, error=str(exc))
    logger.info("re-drove %s/%s (%s, gateway %s) to %s/%d@%d", rec.topic, rec.where,
                rec.reason, rec.gateway, meta.topic, meta.partition, meta.offset)
    return Redriven(rec, meta.partition, meta.offset)
