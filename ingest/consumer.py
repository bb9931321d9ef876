"""``python -m ingest``: the Kafka consumer group that validates and lands raw data.

Per poll: decode each message (``edge.wire.decode``); screen time limits; send
what is invalid to the DLQ (and keep going); land the rest together with the
partitions' next offsets in one database transaction (``ingest.store``), on a
landing thread while the next poll is fetched and decoded (``ingest.landing``). Kafka's
own group offsets are never committed: on assignment the consumer seeks to the
offsets stored in the database, so a crash at any point neither loses nor
doubles a row. A lost database, or one refusing every write for a reason that is
not the data's (missing grant or table, read-only, disk full: ``ingest.dbretry``),
is waited for (capped backoff) with the batch held in memory; nothing is
dead-lettered or acknowledged meanwhile. Only a data error (SQLSTATE class 22, 23,
54) isolates the message at fault, which goes to the DLQ as ``store_rejected``. A broker that is not
there yet at startup is waited for too (logged, capped backoff, until SIGTERM).

A frame under a (gateway, stream, seq) already landed with a different body is a
sequence conflict (the gateway's numbering restarted): it goes to the DLQ as
``seq_conflict`` inside the landing transaction, is counted per gateway and
stream, and a warning tells the operator what to do.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError

from edge.wire import Frame, peek_gateway
from ingest import metrics
from ingest.accept import Acceptance, Refused
from ingest.archive import EnvelopeArchive
from ingest.config import ServerConfig
from ingest.dbretry import with_reconnect
from ingest.dlq import DeadLetter, DeadLetterQueue
from ingest.errors import StoreError, StoreUnavailable
from ingest.kafka_bounds import UnreadableBatch, unreadable_partition
from ingest.kafka_bounds import install as install_expansion_bound
from ingest.kafka_wait import wait_for_kafka
from ingest.landing import LandingWorker
from ingest.screen import Limits
from ingest.store import (
    Accepted,
    Conflict,
    LandResult,
    Store,
    body_digest,
    frame_key,
)
from ingest.store import TopicPartition as TP

logger = logging.getLogger(__name__)
EARLIEST_NS = 946_684_800 * 10**9  # 2000-01-01: floor for meters without a commissioning date

class _SeekOnAssign(ConsumerRebalanceListener):  # type: ignore[misc]
    """Records new assignments; the poll loop seeks them to the stored offsets.

    The callback runs on kafka-python's IO loop, where blocking on the database
    would stall heartbeats, so the seek happens in the loop thread instead.
    """

    def __init__(self) -> None:
        self.pending: set[TP] = set()
        self.lock = threading.Lock()

    def on_partitions_revoked(self, revoked: Any) -> None:
        with self.lock:
            self.pending -= {(tp.topic, tp.partition) for tp in revoked}

    def on_partitions_assigned(self, assigned: Any) -> None:
        logger.info("assigned %s", sorted((tp.topic, tp.partition) for tp in assigned))
        with self.lock:
            self.pending |= {(tp.topic, tp.partition) for tp in assigned}

    def take(self) -> set[TP]:
        with self.lock:
            taken, self.pending = self.pending, set()
        return taken


class IngestConsumer:
    """Lifecycle: construct (no I/O) → start → poll_once/run → close."""

    def __init__(self, cfg: ServerConfig, clock_ns: Callable[[], int] = time.time_ns) -> None:
        self.cfg = cfg
        self._acceptance = Acceptance.from_config(cfg)
        install_expansion_bound(cfg.limits.max_expanded_bytes)
        self._archive = EnvelopeArchive(cfg.archive.dir) if cfg.archive.dir else None
        self._commissioning = cfg.commissioning_ns()
        self._clock_ns = clock_ns
        self._topics = [cfg.kafka.topic("readings"), cfg.kafka.topic("batches")]
        self._listener = _SeekOnAssign()
        self._stop = threading.Event()
        self._consumer: KafkaConsumer | None = None
        self._producer: KafkaProducer | None = None
        self._dlq: DeadLetterQueue | None = None
        self._worker = LandingWorker(self._land)
        self.store = Store(cfg.database.dsn.get_secret_value(), cfg.kafka.group,
                           use_copy=cfg.database.landing == "copy",
                           connect_timeout_s=cfg.database.connect_timeout_s)

    def start(self) -> bool:
        """Connect to Kafka, waiting for the broker if needed; False if stopped meanwhile."""
        k = self.cfg.kafka
        if wait_for_kafka(self._connect, k, self._stop,
                          "ingest waits for the broker; SIGTERM stops it"):
            self._worker.start()
            logger.info("consuming %s as group %s from %s", self._topics, k.group, k.servers)
            return True
        logger.info("stopped before Kafka at %s became reachable", k.servers)
        return False

    def _connect(self) -> None:
        """Both clients. The producer goes first: its constructor fails cleanly when no
        broker answers (a failed KafkaConsumer construction leaves its IO thread running)."""
        k = self.cfg.kafka
        timeout_ms = int(k.connect_timeout_s * 1000)
        if self._producer is None:
            self._producer = KafkaProducer(
                **k.client_config(), acks="all", linger_ms=5,
                max_request_size=k.dlq_max_bytes + (1 << 20), client_id=f"{k.group}-dlq",
                bootstrap_timeout_ms=timeout_ms,
            )
            self._dlq = DeadLetterQueue(self._producer, k.topic("dlq"), k.dlq_max_bytes)
        self._consumer = KafkaConsumer(
            **k.client_config(), group_id=k.group, client_id=k.group,
            enable_auto_commit=False, auto_offset_reset="earliest",
            session_timeout_ms=int(k.session_timeout_s * 1000),
            heartbeat_interval_ms=max(100, int(k.session_timeout_s * 1000) // 3),
            max_poll_records=k.max_poll_records, fetch_max_bytes=k.fetch_max_bytes,
            max_partition_fetch_bytes=k.fetch_max_bytes, bootstrap_timeout_ms=timeout_ms,
        )
        self._consumer.subscribe(self._topics, listener=self._listener)

    def stop(self) -> None:
        self._stop.set()

    def flush(self) -> None:
        """Wait until every polled batch is landed."""
        self._worker.drain()

    def close(self) -> None:
        self._worker.close()
        if self._consumer is not None:
            self._consumer.close(autocommit=False)
        if self._producer is not None:
            # dead letters are acknowledged before their batch commits (ingest.dlq), so a
            # close that finds Kafka gone loses nothing; kafka-python's close raises then
            try:
                self._producer.close(timeout=5)
            except KafkaError as exc:
                logger.warning("closing the DLQ producer: %s", exc)
        self.store.close()

    def run(self) -> None:
        while not self._stop.is_set():
            self.poll_once()
        self._worker.drain()

    # ------------------------------------------------------------------ one poll
    def poll_once(self, timeout_ms: int = 500) -> int:
        assert self._consumer is not None, "start() first"
        try:
            polled = self._consumer.poll(timeout_ms=timeout_ms)
        except UnreadableBatch as exc:
            self._skip_unreadable(exc)
            return 0
        records = {(tp.topic, tp.partition): recs for tp, recs in polled.items()}
        for tp in self._seek_new_assignments():
            records.pop(tp, None)  # fetched from Kafka's idea of the position: refetch
        if not records:
            return 0
        accepted, dead, offsets = self._classify(records)
        if dead:
            self._send_dead(dead)
        self._worker.submit(accepted, offsets)
        return sum(map(len, records.values()))

    def _skip_unreadable(self, exc: UnreadableBatch) -> None:
        """A batch kafka-python cannot expand within the bound: dead-letter a note of it
        (the value is empty: the bytes never existed expanded) and store the offset after it
        with the landing order, so neither this process nor a restart reads it again."""
        assert self._consumer is not None
        tp = unreadable_partition(self._consumer, exc)
        if tp is None:
            raise exc  # which partition is not certain: stop rather than skip a guess
        self._send_dead([DeadLetter(b"", None, exc.reason, exc.detail, tp[0], tp[1],
                                    exc.base_offset)])
        self._worker.submit([], {tp: exc.next_offset})
        self._worker.drain()
        self._consumer.seek(TopicPartition(*tp), exc.next_offset)
        logger.error("skipped %s/%d offsets %d..%d: %s", tp[0], tp[1], exc.base_offset,
                     exc.next_offset - 1, exc.detail)

    def _retry(self, action: Callable[[], Any]) -> Any:
        return with_reconnect(
            self.store, action, dsn=self.cfg.database.dsn.get_secret_value(),
            max_backoff_s=self.cfg.database.reconnect_max_s,
            stopping=self._stop.is_set, on_retry=metrics.DB_RETRIES.inc,
        )

    def _seek_new_assignments(self) -> set[TP]:
        assert self._consumer is not None
        fresh = self._listener.take()
        if not fresh:
            return fresh
        self._worker.drain()  # offsets of batches in flight must be stored before reading them
        stored: dict[TP, int] = self._retry(lambda: self.store.load_offsets(fresh))
        for tp in sorted(fresh):
            offset = stored.get(tp, 0)
            try:
                self._consumer.seek(TopicPartition(*tp), offset)
            except (AssertionError, ValueError) as exc:  # revoked again meanwhile
                logger.info("not seeking %s: %s", tp, exc)
                continue
            logger.info("partition %s/%d resumes at stored offset %d", *tp, offset)
        return fresh

    def _classify(self, records: dict[TP, list[Any]]) -> tuple[
        list[Accepted], list[DeadLetter], dict[TP, int]
    ]:
        limits = Limits(
            now_ns=self._clock_ns(),
            future_skew_ns=int(self.cfg.limits.future_skew_s * 1e9),
            earliest_ns=EARLIEST_NS, commissioning_ns=self._commissioning,
        )
        accepted: list[Accepted] = []
        dead: list[DeadLetter] = []
        offsets: dict[TP, int] = {}
        for (topic, partition), recs in records.items():
            for rec in recs:
                offsets[(topic, partition)] = rec.offset + 1
                self._classify_one(rec, limits, accepted, dead)
        return accepted, dead, offsets

    def _classify_one(self, rec: Any, limits: Limits, accepted: list[Accepted],
                      dead: list[DeadLetter]) -> None:
        value: bytes = rec.value or b""
        where = (rec.topic, rec.partition, rec.offset)
        try:
            msg, verdict = self._acceptance.admit(value, limits)
        except Refused as exc:
            gateway = exc.gateway
            if gateway is None and len(value) <= self.cfg.limits.max_frame_bytes:
                gateway = peek_gateway(value)
            dead.append(DeadLetter(value, rec.key, exc.reason, exc.detail, *where, gateway))
            return
        if verdict.reason is not None:
            total = len(msg) if isinstance(msg, Frame) else len(msg.events)
            cut = total - len(verdict.keep or []) if verdict.keep is not None else total
            dead.append(DeadLetter(value, rec.key, verdict.reason, verdict.detail, *where,
                                   msg.gateway, f"{cut}/{total}"))
        accepted.append(Accepted(msg, rec.topic, rec.partition, rec.offset, verdict.keep,
                                 value, rec.key, body_digest(value)))

    def _send_dead(self, dead: list[DeadLetter]) -> None:
        assert self._dlq is not None
        self._dlq.send_all(dead)
        for d in dead:
            metrics.MESSAGES.labels(d.topic, "dlq").inc()

    def _land(self, accepted: list[Accepted], offsets: dict[TP, int]) -> None:
        try:
            result: LandResult = self._retry(
                lambda: self.store.land(accepted, offsets, self._dead_letter_conflicts,
                                        self._archive_new))
        except StoreUnavailable:
            raise
        except StoreError as exc:
            logger.error("batch refused for its data (%s); landing its messages one by one", exc)
            self._land_one_by_one(accepted, offsets)
            return
        self._count(result)

    def _land_one_by_one(self, accepted: list[Accepted], offsets: dict[TP, int]) -> None:
        for a in accepted:
            tp_next = {(a.topic, a.partition): a.offset + 1}
            try:
                result = self._retry(partial(self.store.land, [a], tp_next,
                                             self._dead_letter_conflicts, self._archive_new))
                self._count(result)
            except StoreUnavailable:
                raise
            except StoreError as exc:
                self._send_dead([DeadLetter(a.raw, a.key, "store_rejected", str(exc), a.topic,
                                            a.partition, a.offset, a.message.gateway)])
        self._retry(lambda: self.store.land([], offsets))

    def _archive_new(self, new: list[Accepted]) -> None:
        """Inside the landing transaction: the envelopes are on disk before the rows commit."""
        if self._archive is not None:
            self._archive.append([a.raw for a in new])

    def _dead_letter_conflicts(self, conflicts: list[Conflict]) -> None:
        """Inside the landing transaction: the DLQ has them before their offsets commit."""
        self._send_dead([
            DeadLetter(c.accepted.raw, c.accepted.key, c.reason, c.detail, c.accepted.topic,
                       c.accepted.partition, c.accepted.offset, c.accepted.message.gateway,
                       c.rejected)
            for c in conflicts
        ])

    def _count(self, result: LandResult) -> None:
        metrics.READINGS.inc(result.readings)
        metrics.BATCH_EVENTS.inc(result.events)
        for gateway, stream, highest, missing in result.seq_state:
            metrics.SEQ_HIGHEST.labels(gateway, stream).set(highest)
            metrics.SEQ_MISSING.labels(gateway, stream).set(missing)
        for (topic, outcome), n in result.outcomes.items():
            metrics.MESSAGES.labels(topic, outcome).inc(n)
        if result.conflicts:
            _report_conflicts(result.conflicts)


def _report_conflicts(conflicts: list[Conflict]) -> None:
    """One warning per gateway and stream per batch (a restarted gateway conflicts a lot)."""
    by_stream: dict[tuple[str, str], list[int]] = {}
    for c in conflicts:
        gateway = c.accepted.message.gateway
        if c.reason == "reading_conflict":
            assert c.rejected is not None
            metrics.READING_CONFLICTS.labels(gateway).inc(int(c.rejected.split("/")[0]))
            logger.warning("%s", c.detail)
            continue
        if c.reason == "replayed":
            metrics.REPLAYED.labels(gateway).inc()
            logger.warning("%s", c.detail)
            continue
        gateway, stream, seq = frame_key(c.accepted)
        by_stream.setdefault((gateway, stream), []).append(seq)
    for (gateway, stream), seqs in sorted(by_stream.items()):
        metrics.SEQ_CONFLICTS.labels(gateway, stream).inc(len(seqs))
        logger.warning(
            "sequence conflict: gateway %s stream %s sent %d frame(s) under sequence numbers "
            "already landed with different content (seq %d..%d); they are in the DLQ as "
            "seq_conflict and did NOT land. The gateway's sequence restarted (spool lost or "
            "gateway re-provisioned under the same id). Operator: give the re-provisioned "
            "gateway a new gateway id (new [gateways.<id>] key), or reset its ledger "
            "(python -m ingest ledger reset --gateway %s --export FILE, as the owner), then "
            "re-drive these DLQ records (python -m ingest dlq redrive --reason seq_conflict "
            "--gateway %s).", gateway, stream, len(seqs), min(seqs), max(seqs), gateway, gateway)


def run_consumer(cfg: ServerConfig) -> None:
    """The process: metrics endpoint, signal handling, the poll loop."""
    if cfg.metrics.port:
        metrics.serve(cfg.metrics.port, cfg.metrics.addr, "[metrics] port")
    consumer = IngestConsumer(cfg)
    signal.signal(signal.SIGTERM, lambda *_: consumer.stop())
    signal.signal(signal.SIGINT, lambda *_: consumer.stop())
    try:
        if consumer.start():
            consumer.run()
    finally:
        consumer.close()
