"""``python -m compute``: the Kafka consumer group that allocates energy to batches live.

Per micro-batch (at least every ``[compute] micro_batch_s``): poll ``readings``
and ``batches`` (co-partitioned by site, so one worker owns all of a site),
accept exactly what ingest accepts (:mod:`compute.intake`), skip frames already
taken into account and refuse sequence conflicts (the frame ledger), advance
each site's state, evaluate it, and write the results with the partitions'
next offsets in one transaction (:mod:`compute.store`). Then every footprint
that changed is published to the compacted ``footprints`` topic, keyed by
``site/batch``. Kafka's own group offsets are never committed: on assignment
the worker forgets its sites and seeks to the stored offsets; a site's state
is restored from the database when its next message arrives.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import orjson
import psycopg
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError

from compute import metrics
from compute.factors_lookup import FactorBook
from compute.intake import Accepted, accept, group_readings
from compute.revise import revise_late
from compute.site import SiteModel
from compute.site_state import Outcome, SiteState
from compute.sitespec import site_view
from compute.store import ComputeStore
from edge.backoff import Backoff
from ingest.accept import Acceptance
from ingest.config import ServerConfig
from ingest.kafka_bounds import UnreadableBatch, unreadable_partition
from ingest.kafka_bounds import install as install_expansion_bound
from ingest.kafka_wait import wait_for_kafka
from ingest.metrics import serve
from ingest.schema_check import check_schema
from ingest.screen import Limits

logger = logging.getLogger(__name__)
EARLIEST_NS = 946_684_800 * 10**9  # 2000-01-01, as ingest

TP = tuple[str, int]


class _Assignments(ConsumerRebalanceListener):  # type: ignore[misc]
    """Assignment changes, taken by the poll loop (kafka-python calls back on its IO loop)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pending: set[TP] = set()
        self.changed = False

    def on_partitions_revoked(self, revoked: Any) -> None:
        with self.lock:
            self.pending -= {(tp.topic, tp.partition) for tp in revoked}
            self.changed = True

    def on_partitions_assigned(self, assigned: Any) -> None:
        logger.info("assigned %s", sorted((tp.topic, tp.partition) for tp in assigned))
        with self.lock:
            self.pending |= {(tp.topic, tp.partition) for tp in assigned}
            self.changed = True

    def force_reseek(self, tps: set[TP]) -> None:
        with self.lock:
            self.pending |= tps
            self.changed = True

    def take(self) -> tuple[set[TP], bool]:
        with self.lock:
            fresh, changed = self.pending, self.changed
            self.pending, self.changed = set(), False
        return fresh, changed


class ComputeWorker:
    """Lifecycle: construct (no I/O) → start → poll_once/run → close."""

    def __init__(self, cfg: ServerConfig, models: dict[str, SiteModel],
                 clock_ns: Callable[[], int] = time.time_ns) -> None:
        self.cfg = cfg
        self.models = models
        self._keys = Acceptance.from_config(cfg)  # ingest's keys, bindings, age limit
        self._commissioning = cfg.commissioning_ns()
        self._clock_ns = clock_ns
        self._topics = [cfg.kafka.topic("readings"), cfg.kafka.topic("batches")]
        self._listener = _Assignments()
        self._stop = threading.Event()
        self._consumer: KafkaConsumer | None = None
        self._producer: KafkaProducer | None = None
        self.store = ComputeStore(cfg.database.dsn.get_secret_value(), cfg.compute.group,
                                  cfg.database.connect_timeout_s)
        self.factors = FactorBook(self.store)
        self.sites: dict[str, SiteState] = {}
        self._reported: set[tuple[str, str]] = set()
        self._db_backoff = Backoff(0.5, cfg.database.reconnect_max_s)
        self.conflicts = 0
        self.refused = 0
        self._unpublished_lock = threading.Lock()  # the producer's IO thread counts failures
        self._unpublished_n = 0
        self._unpublished_why = ""

    # ------------------------------------------------------------ lifecycle
    def start(self) -> bool:
        """The database's schema must be this release's (SchemaMismatch otherwise: one line
        naming the database and what to do), then Kafka; False if stopped while waiting."""
        db = self.cfg.database
        if not check_schema(db.dsn.get_secret_value(), stop=self._stop,
                            connect_timeout_s=db.connect_timeout_s,
                            reconnect_max_s=db.reconnect_max_s):
            return False
        if wait_for_kafka(self._connect, self.cfg.kafka, self._stop,
                          "compute waits for the broker; SIGTERM stops it"):
            logger.info("computing %s as group %s", self._topics, self.cfg.compute.group)
            return True
        return False

    def _connect(self) -> None:
        # a compressed record batch expands within [limits] max_expanded_bytes, as in
        # ingest: a gzip bomb on readings must not take compute's memory either
        install_expansion_bound(self.cfg.limits.max_expanded_bytes)
        k = self.cfg.kafka
        timeout_ms = int(k.connect_timeout_s * 1000)
        session_ms = int(k.session_timeout_s * 1000)
        if self._producer is None:
            self._producer = KafkaProducer(**k.client_config(), acks="all", linger_ms=5,
                                           client_id=f"{self.cfg.compute.group}-footprints",
                                           bootstrap_timeout_ms=timeout_ms)
        self._consumer = KafkaConsumer(
            **k.client_config(), group_id=self.cfg.compute.group,
            client_id=self.cfg.compute.group, enable_auto_commit=False,
            auto_offset_reset="earliest", session_timeout_ms=session_ms,
            heartbeat_interval_ms=max(100, session_ms // 3),
            max_poll_records=k.max_poll_records, fetch_max_bytes=k.fetch_max_bytes,
            max_partition_fetch_bytes=k.fetch_max_bytes, bootstrap_timeout_ms=timeout_ms)
        self._consumer.subscribe(self._topics, listener=self._listener)

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close(autocommit=False)
        if self._producer is not None:
            try:
                self._producer.close(timeout=5)  # flushes the updates still in flight
            except KafkaError as exc:
                logger.warning("closing the footprints producer: %s", exc)
            self._say_unpublished()
        self.store.close()

    def run(self) -> None:
        while not self._stop.is_set():
            self.poll_once()

    # ------------------------------------------------------------ one micro-batch
    def poll_once(self) -> int:
        assert self._consumer is not None, "start() first"
        timeout_ms = int(self.cfg.compute.micro_batch_s * 1000)
        try:
            polled = self._consumer.poll(timeout_ms=timeout_ms)
        except UnreadableBatch as exc:
            self._skip_unreadable(exc)
            return 0
        records = {(tp.topic, tp.partition): recs for tp, recs in polled.items()}
        for tp in self._seek_new_assignments():
            records.pop(tp, None)
        if not records:
            return 0
        self._process(records)
        return sum(map(len, records.values()))

    def _skip_unreadable(self, exc: UnreadableBatch) -> None:
        """A record batch that does not expand within the bound holds no frame ingest
        landed (ingest dead-letters a note of it): store the offset after it, so neither
        this process nor a restart reads it again, and read on."""
        assert self._consumer is not None
        tp = unreadable_partition(self._consumer, exc)
        if tp is None:
            raise exc  # which partition is not certain: stop rather than skip a guess
        try:
            with self.store.conn.transaction(), self.store.conn.cursor() as cur:
                self.store.save_offsets(cur, {tp: exc.next_offset})
        except psycopg.Error as err:
            self._rewind(f"database unreachable storing the offset past a record batch "
                         f"that does not expand ({err})")
            return
        self._consumer.seek(TopicPartition(*tp), exc.next_offset)
        self.refused += 1
        metrics.FRAMES.labels("refused").inc()
        logger.error("skipped %s/%d offsets %d..%d: %s", tp[0], tp[1], exc.base_offset,
                     exc.next_offset - 1, exc.detail)

    def _seek_new_assignments(self) -> set[TP]:
        assert self._consumer is not None
        fresh, changed = self._listener.take()
        if changed:
            self.sites.clear()  # restored from the database when their data comes
        if not fresh:
            return fresh
        try:
            stored = self.store.load_offsets(fresh)
        except psycopg.Error as exc:  # try again at the next poll; their records wait
            self._listener.force_reseek(fresh)
            self.store.close()
            delay = self._db_backoff.next_delay()
            logger.error("database unreachable for the stored offsets (%s); again in %.1f s",
                         exc, delay)
            self._stop.wait(delay)
            return fresh
        for tp in sorted(fresh):
            try:
                self._consumer.seek(TopicPartition(*tp), stored.get(tp, 0))
            except (AssertionError, ValueError) as exc:
                logger.info("not seeking %s: %s", tp, exc)
        return fresh

    def _limits(self) -> Limits:
        return Limits(now_ns=self._clock_ns(),
                      future_skew_ns=int(self.cfg.limits.future_skew_s * 1e9),
                      earliest_ns=EARLIEST_NS, commissioning_ns=self._commissioning)

    def _process(self, records: dict[TP, list[Any]]) -> None:
        limits = self._limits()
        offsets: dict[TP, int] = {}
        accepted: list[Accepted] = []
        for tp, recs in records.items():
            for rec in recs:
                offsets[tp] = rec.offset + 1
                got = accept(rec, self._keys, self.cfg.limits.max_frame_bytes, limits)
                if isinstance(got, str):
                    self.refused += 1
                    metrics.FRAMES.labels("refused").inc()
                    continue
                accepted.append(got)
        try:
            with metrics.MICRO_BATCH.time():
                self._commit(accepted, offsets)
            self._db_backoff.reset()
        except psycopg.OperationalError as exc:
            self._rewind(f"database unreachable: {exc}")
        except psycopg.Error as exc:  # a refusal for the data's or the schema's sake
            self._rewind(f"database refused the micro-batch ({type(exc).__name__}: {exc})")

    def _rewind(self, why: str) -> None:
        """Nothing of the micro-batch is stored: forget the sites (their state ran ahead of
        the database) and read again from the stored offsets, after a capped backoff."""
        delay = self._db_backoff.next_delay()
        logger.error("%s; nothing of this micro-batch was stored, retrying from the stored "
                     "offsets in %.1f s", why, delay)
        self.sites.clear()
        self.store.close()
        self._stop.wait(delay)
        assert self._consumer is not None
        try:
            tps = {(tp.topic, tp.partition) for tp in self._consumer.assignment()}
            stored = self.store.load_offsets(tps)
        except psycopg.Error as exc:
            logger.error("database still unreachable: %s", exc)
            tps, stored = set(), {}
            self._listener.force_reseek(
                {(tp.topic, tp.partition) for tp in self._consumer.assignment()})
        for tp in sorted(tps):
            self._consumer.seek(TopicPartition(*tp), stored.get(tp, 0))

    def _commit(self, accepted: list[Accepted], offsets: dict[TP, int]) -> None:
        conn = self.store.conn
        published: list[tuple[str, bytes]] = []
        with conn.transaction(), conn.cursor() as cur:
            new, conflicts = self.store.new_frames(cur, [a.key for a in accepted])
            if conflicts:
                self.conflicts += len(conflicts)
                logger.warning("%d frame(s) under sequence numbers already used with another "
                               "body: not used (ingest dead-letters them as seq_conflict)",
                               len(conflicts))
            fresh = [a for i, a in enumerate(accepted) if i in new]
            metrics.FRAMES.labels("used").inc(len(fresh))
            metrics.FRAMES.labels("seq_conflict").inc(len(conflicts))
            metrics.FRAMES.labels("duplicate").inc(len(accepted) - len(fresh) - len(conflicts))
            for site, site_in in group_readings(fresh, self.models).items():
                state = self._site(site)
                for ev in site_in.events:
                    state.apply_event(*ev)
                state.note_batch_marks(site_in.batch_marks)
                self._report_unrouted(site, site_in.unknown_meters, site_in.unit_errors)
                self._report_out_of_order(
                    site, state.apply_readings(site_in.readings, site_in.states))
            for state in self.sites.values():
                for out in self._evaluate(cur, state):
                    published.extend(_messages(state, out))
                    _count(state, out)
            self.store.save_offsets(cur, offsets)
        self._publish(published)

    def _report_unrouted(self, site: str, meters: set[str], unit_errors: set[str]) -> None:
        """Readings the site model cannot place: said once each, counted every time."""
        for what in sorted(meters) + sorted(unit_errors):
            metrics.UNROUTED.labels(site).inc()
            if (site, what) not in self._reported:
                self._reported.add((site, what))
                if what in meters:
                    logger.warning("site %s: readings of meter %s, which its site model does "
                                   "not have, are not used (add it to the site model)", site, what)
                else:
                    logger.warning("%s: those readings are not used (fix the site model's unit "
                                   "or the edge profile)", what)

    def _report_out_of_order(self, site: str, refused: dict[str, int]) -> None:
        """Readings older than one of their channel that came before them: counted every
        time, said once per meter (the raw readings stay in the database as landed)."""
        for meter, n in sorted(refused.items()):
            metrics.OUT_OF_ORDER.labels(site).inc(n)
            if (site, f"out of order: {meter}") not in self._reported:
                self._reported.add((site, f"out of order: {meter}"))
                logger.warning("site %s: %d reading(s) of meter %s came after newer ones of "
                               "their channel and are not used (out of order; counted in "
                               "plantprint_compute_readings_out_of_order_total)", site, n,
                               meter)

    def _evaluate(self, cur: Any, state: SiteState) -> list[Outcome]:
        """The site's outcome, written; then revisions from late data, written too."""
        out = state.evaluate()
        if out.empty():
            return []
        self.store.write(cur, state, out)
        if not out.late or not revise_late(cur, state, out.late):
            return [out]
        revisions, state.pending = state.pending, Outcome()
        self.store.write(cur, state, revisions)
        return [out, revisions]

    def _site(self, site: str) -> SiteState:
        state = self.sites.get(site)
        if state is None:
            view = site_view(self.models[site], self.cfg.compute.gap_s)
            state = SiteState(view, self.factors.lookup(self.models[site]),
                              self.cfg.compute.gap_s)
            self.store.restore(state)
            self.sites[site] = state
        return state

    def _publish(self, messages: list[tuple[str, bytes]]) -> None:
        """Hand the updates to the producer and go on: the acks come back on its IO thread
        (waiting for them here held the next micro-batch back by a broker round trip, some
        6 % of a micro-batch's time at 10k readings/s in a profile). The database holds
        every revision; the topic is a live feed for consumers: a broker that refuses or
        times out is reported (counted per update, said once per micro-batch), never a
        reason to stop computing. ``close`` flushes what is still in flight."""
        self._say_unpublished()
        if not messages or self._producer is None:
            return
        topic = self.cfg.kafka.topic("footprints")
        for key, value in messages:
            try:
                future = self._producer.send(topic, key=key.encode(), value=value)
            except KafkaError as exc:
                self._unpublished(key, exc)
                continue
            future.add_errback(partial(self._unpublished, key))

    def _unpublished(self, key: str, exc: BaseException) -> None:
        metrics.UNPUBLISHED.labels(key.split("/", 1)[0]).inc()
        with self._unpublished_lock:
            self._unpublished_n += 1
            self._unpublished_why = str(exc)

    def _say_unpublished(self) -> None:
        with self._unpublished_lock:
            n, why, self._unpublished_n = self._unpublished_n, self._unpublished_why, 0
        if n:
            logger.error("%d footprint update(s) not published to %s (%s); they are stored "
                         "in batch_footprint", n, self.cfg.kafka.topic("footprints"), why)


def _messages(state: SiteState, out: Outcome) -> list[tuple[str, bytes]]:
    site = state.view.model.site
    return [(f"{site}/{fp.batch.batch_id}", orjson.dumps({
        "site": site, "batch_id": fp.batch.batch_id, "revision": rev, "status": status,
        "product": fp.batch.product, "energy": fp.energy, "uncertainty": fp.uncertainty,
        "kgco2e_location": fp.kgco2e_location, "kgco2e_market": fp.kgco2e_market,
        "primary_data_share": fp.primary_data_share, "flags": sorted(fp.flags),
        "inputs_sha256": fp.inputs_sha256})) for rev, status, fp in out.footprints]


def _count(state: SiteState, out: Outcome) -> None:
    site = state.view.model.site
    metrics.INTERVALS.labels(site).inc(sum(len(iv) for iv in out.intervals.values()))
    for _, status, _fp in out.footprints:
        metrics.FOOTPRINTS.labels(site, status).inc()
    if state.data_now_ns:
        metrics.LAG.labels(site).set(time.time() - state.data_now_ns / 1e9)


def run_worker(cfg: ServerConfig, models: dict[str, SiteModel]) -> None:
    """The process: metrics endpoint, signals, the poll loop, a clean close."""
    if cfg.compute.metrics_port:
        serve(cfg.compute.metrics_port, cfg.metrics.addr, "[compute] metrics_port")
    worker = ComputeWorker(cfg, models)
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    signal.signal(signal.SIGINT, lambda *_: worker.stop())
    try:
        if worker.start():
            worker.run()
    finally:
        worker.close()
