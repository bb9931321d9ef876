"""Kafka output: spooled frames to ``<prefix>readings`` / ``<prefix>batches``, key = site.

kafka-python's ``KafkaProducer`` runs its own sender thread and its ``send``
may block (metadata, full buffer). ``KafkaPublisher`` bridges it explicitly:
``send`` runs in a worker thread, every record's callback counts down a
thread-safe tally, and the last one wakes the event loop once with
``call_soon_threadsafe``; the first failure is re-raised in the loop as
``PublishError``. After a failure the producer is closed without waiting and
re-created on the next publish, so a restarted broker (new topics, unknown
producer id) gets a clean idempotent session and the forwarder re-sends the
same frames in order (at-least-once; ingest deduplicates by sequence).

Over TLS the producer gets one ``ssl.SSLContext`` from ``edge.tls``. A refused
handshake (wrong CA, certificate required, host name) reaches us only as
"Unable to bootstrap" or a delivery timeout; the handshake is then repeated with
the same context and the ``PublishError`` says what TLS refused and which
``[outputs.kafka]`` keys to look at.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Sequence
from typing import Any, Literal

from kafka import KafkaProducer
from kafka.cluster import collect_hosts
from kafka.codec import has_gzip, has_lz4, has_snappy, has_zstd
from kafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError
from pydantic import Field, field_validator

from edge import metrics, tls
from edge.forward import AckTally, PublishError
from edge.spool import SpooledMessage

logger = logging.getLogger(__name__)

# record batch header + record framing that kafka-python counts against max_request_size
_RECORD_OVERHEAD = 128

Compression = Literal["none", "gzip", "snappy", "lz4", "zstd"]
_CODECS = {"none": lambda: True, "gzip": has_gzip, "snappy": has_snappy, "lz4": has_lz4,
           "zstd": has_zstd}
# how kafka-python says it could not reach a broker; over TLS, a refused handshake too
_UNREACHABLE = (KafkaTimeoutError, KafkaConnectionError, TimeoutError)
_TLS_KEYS = "[outputs.kafka] ssl_cafile, ssl_certfile, ssl_keyfile, ssl_check_hostname"


class KafkaOutput(tls.KafkaSecurity):
    """``[outputs.kafka]``: where and how frames are produced (security keys: the base)."""

    bootstrap_servers: list[str] = Field(min_length=1)
    topic_prefix: str = ""
    acks: Literal["all"] = "all"  # a frame is acknowledged once every in-sync replica has it
    idempotent: bool = True
    # none by default: kafka-python's gzip is level 9 and costs about half the
    # framed throughput (bench_edge_outputs); choose gzip for thin uplinks
    compression: Compression = "none"
    linger_s: float = Field(default=0.005, ge=0)  # seconds to wait to fill a batch
    max_request_bytes: int = Field(default=1024 * 1024, gt=0)
    delivery_timeout_s: float = Field(default=30.0, ge=0.5)
    client_id: str | None = None

    @field_validator("compression")
    @classmethod
    def _codec_installed(cls, value: Compression) -> Compression:
        if not _CODECS[value]():
            raise ValueError(f"compression {value!r} needs its codec library, not installed here")
        return value

    def bootstrap_addresses(self) -> list[tuple[str, int]]:
        return [(host, port) for host, port, _family in collect_hosts(self.bootstrap_servers,
                                                                      False)]

    def topic(self, stream: str) -> str:
        return f"{self.topic_prefix}{stream}"

    def producer_config(self) -> dict[str, Any]:
        """Keyword arguments for ``KafkaProducer`` (secrets revealed only here)."""
        timeout_ms = int(self.delivery_timeout_s * 1000)
        linger_ms = round(self.linger_s * 1000)
        cfg: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "acks": self.acks,
            "enable_idempotence": self.idempotent,
            "compression_type": None if self.compression == "none" else self.compression,
            "linger_ms": linger_ms,
            "max_request_size": self.max_request_bytes,
            "delivery_timeout_ms": timeout_ms,
            # kafka-python wants delivery > linger + request timeout
            "request_timeout_ms": max(100, min(30_000, (timeout_ms - linger_ms) // 2)),
            "max_block_ms": min(timeout_ms, 10_000),
            "bootstrap_timeout_ms": min(timeout_ms, 10_000),
            "reconnect_backoff_max_ms": 2_000,
            **self.security_kwargs(),
        }
        if not self.idempotent:  # keep order without the idempotent producer's sequencing
            cfg["max_in_flight_requests_per_connection"] = 1
        if self.client_id:
            cfg["client_id"] = self.client_id
        return cfg


class KafkaPublisher:
    """Publishes spooled frames to Kafka; ``publish`` returns once all are acknowledged."""

    def __init__(self, config: KafkaOutput, site: str, name: str = "kafka") -> None:
        self.config = config
        self.name = name
        self._key = site.encode()
        self._topics = {s: config.topic(s) for s in ("readings", "batches")}
        self._producer: KafkaProducer | None = None
        self._creating: asyncio.Future[KafkaProducer] | None = None  # a producer being built
        self._where = f"kafka {','.join(config.bootstrap_servers)}"

    @property
    def max_frame_bytes(self) -> int:
        """Largest frame this output can produce (the agent splits frames to fit)."""
        return self.config.max_request_bytes - _RECORD_OVERHEAD - len(self._key)

    async def start(self) -> None:
        """Connect now if the broker is up; an unreachable broker is retried by publish.

        This may take up to ``delivery_timeout_s`` (at most 10 s) while the broker
        does not answer: the agent calls it in its forwarding task, never before
        polling starts.
        """
        try:
            await self._ensure_producer()
        except PublishError as exc:
            logger.warning("%s: not reachable at start, will retry: %s", self._where, exc)

    async def _ensure_producer(self) -> KafkaProducer:
        if self._producer is None:
            # in a task of its own, shielded: if the caller is cancelled (the agent
            # stops while the broker is down) the producer still being built is
            # taken by the next call or closed by close(), never left running
            if self._creating is None:
                self._creating = asyncio.ensure_future(
                    asyncio.to_thread(KafkaProducer, **self.config.producer_config()))
            try:
                self._producer = await asyncio.shield(self._creating)
                self._creating = None
            except (KafkaError, OSError, ValueError) as exc:
                self._creating = None
                metrics.PUBLISH_ERRORS.labels(output=self.name, kind="connect").inc()
                why = await self._explain(exc)
                raise PublishError(f"{self._where}: cannot create producer: {why}") from exc
        return self._producer

    async def _explain(self, exc: BaseException) -> str:
        """``exc`` as kafka-python put it, after what TLS refused if that was the cause."""
        if not (self.config.tls and isinstance(exc, _UNREACHABLE)):
            return repr(exc)
        try:
            ctx = self.config.ssl_context()
        except (ssl.SSLError, OSError) as load:
            return f"cannot load the TLS files ({load}; see {_TLS_KEYS}); {exc!r}"
        problem = await asyncio.to_thread(
            tls.first_tls_problem, self.config.bootstrap_addresses(), ctx,
            min(self.config.delivery_timeout_s, 5.0))  # seconds per server
        if problem is None:
            return repr(exc)
        return f"{problem} (see {_TLS_KEYS}); {exc!r}"

    async def publish(self, msgs: Sequence[SpooledMessage]) -> None:
        """Send ``msgs`` in order; return when every one is acknowledged, else PublishError.

        A frame larger than ``max_request_bytes`` can never be produced; retrying
        it would wedge the queue behind it, so it is refused for good: logged
        with its sequence number and counted as a publish error, the rest goes.
        """
        msgs = self._without_oversize(msgs)
        if not msgs:
            return
        producer = await self._ensure_producer()
        tally = AckTally(asyncio.get_running_loop(), len(msgs))
        started = time.perf_counter()
        try:
            await asyncio.to_thread(self._send_all, producer, msgs, tally)
            await asyncio.wait_for(tally.done, self.config.delivery_timeout_s + 5.0)
        except (KafkaError, OSError, ValueError, TypeError, TimeoutError) as exc:
            metrics.PUBLISH_ERRORS.labels(output=self.name, kind="publish").inc()
            await self._discard_producer()
            first = msgs[0]
            why = await self._explain(exc)
            raise PublishError(
                f"{self._where}: {len(msgs)} frames from {first.stream}#{first.seq} "
                f"not acknowledged: {why}"
            ) from exc
        metrics.PUBLISH_LATENCY.labels(output=self.name).observe(time.perf_counter() - started)
        metrics.PUBLISHED.labels(output=self.name).inc(len(msgs))

    def _without_oversize(self, msgs: Sequence[SpooledMessage]) -> Sequence[SpooledMessage]:
        limit = self.max_frame_bytes
        if all(len(m.data) <= limit for m in msgs):
            return msgs
        for m in msgs:
            if len(m.data) > limit:
                metrics.PUBLISH_ERRORS.labels(output=self.name, kind="oversize").inc()
                logger.error(
                    "%s: frame %s#%s of %s bytes exceeds max_request_bytes %s: refused, "
                    "never sent to this output", self._where, m.stream, m.seq, len(m.data),
                    self.config.max_request_bytes,
                )
        return [m for m in msgs if len(m.data) <= limit]

    def _send_all(
        self, producer: KafkaProducer, msgs: Sequence[SpooledMessage], tally: AckTally
    ) -> None:
        # producer thread side: send may block on metadata up to max_block_ms
        for msg in msgs:
            future = producer.send(self._topics[msg.stream], value=msg.data, key=self._key)
            future.add_callback(tally.acked)
            future.add_errback(tally.failed)

    async def _discard_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await asyncio.to_thread(_force_close, producer)

    async def close(self) -> None:
        creating, self._creating = self._creating, None
        if creating is not None:  # its caller was cancelled: wait for it, then close it
            with contextlib.suppress(Exception):
                orphan = await creating
                await asyncio.to_thread(_force_close, orphan)
        producer, self._producer = self._producer, None
        if producer is not None:
            await asyncio.to_thread(producer.close, self.config.delivery_timeout_s)


def _force_close(producer: KafkaProducer) -> None:
    """Close now: batches still in flight fail instead of being delivered later.

    kafka-python's ``close(0)`` flushes first, and that flush raises
    ``KafkaTimeoutError`` while batches are still in flight, before the sender
    thread is force-closed: the thread would live on and the error would escape
    the publish that is giving up. So on that error the sender is force-closed
    here (it aborts the batches in flight) and the close is finished once it ended.
    """
    try:
        producer.close(0)
        return
    except KafkaError as exc:
        logger.debug("producer close(0) refused (%r): force-closing its sender", exc)
    sender = producer._sender  # no public way to force-close with batches in flight
    sender.force_close()
    sender.join(10.0)
    with contextlib.suppress(KafkaError):
        producer.close(0)  # batches aborted: the flush passes, the rest is released
