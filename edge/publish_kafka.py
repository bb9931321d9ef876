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
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from kafka import KafkaProducer
from kafka.codec import has_gzip, has_lz4, has_snappy, has_zstd
from kafka.errors import KafkaError
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from edge import metrics
from edge.forward import AckTally, PublishError
from edge.spool import SpooledMessage

logger = logging.getLogger(__name__)

# record batch header + record framing that kafka-python counts against max_request_size
_RECORD_OVERHEAD = 128

Compression = Literal["none", "gzip", "snappy", "lz4", "zstd"]
_CODECS = {"none": lambda: True, "gzip": has_gzip, "snappy": has_snappy, "lz4": has_lz4,
           "zstd": has_zstd}


class KafkaOutput(BaseModel):
    """``[outputs.kafka]``: where and how frames are produced."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bootstrap_servers: list[str] = Field(min_length=1)
    topic_prefix: str = ""
    acks: Literal["all"] = "all"  # a frame is acknowledged once every in-sync replica has it
    idempotent: bool = True
    # none by default: kafka-python's gzip is level 9 and costs about half the
    # framed throughput (bench_edge_outputs); choose gzip for thin uplinks
    compression: Compression = "none"
    linger_ms: int = Field(default=5, ge=0)
    max_request_bytes: int = Field(default=1024 * 1024, gt=0)
    delivery_timeout_s: float = Field(default=30.0, ge=0.5)
    client_id: str | None = None
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_password: SecretStr | None = None
    ssl_check_hostname: bool = True
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None

    @field_validator("compression")
    @classmethod
    def _codec_installed(cls, value: Compression) -> Compression:
        if not _CODECS[value]():
            raise ValueError(f"compression {value!r} needs its codec library, not installed here")
        return value

    @model_validator(mode="after")
    def _sasl_complete(self) -> KafkaOutput:
        if self.security_protocol.startswith("SASL") and not (
            self.sasl_mechanism and self.sasl_username and self.sasl_password
        ):
            raise ValueError(
                f"security_protocol {self.security_protocol} needs sasl_mechanism, "
                "sasl_username and sasl_password"
            )
        return self

    def topic(self, stream: str) -> str:
        return f"{self.topic_prefix}{stream}"

    def producer_config(self) -> dict[str, Any]:
        """Keyword arguments for ``KafkaProducer`` (secrets revealed only here)."""
        timeout_ms = int(self.delivery_timeout_s * 1000)
        cfg: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "acks": self.acks,
            "enable_idempotence": self.idempotent,
            "compression_type": None if self.compression == "none" else self.compression,
            "linger_ms": self.linger_ms,
            "max_request_size": self.max_request_bytes,
            "delivery_timeout_ms": timeout_ms,
            # kafka-python wants delivery > linger + request timeout
            "request_timeout_ms": max(100, min(30_000, (timeout_ms - self.linger_ms) // 2)),
            "max_block_ms": min(timeout_ms, 10_000),
            "bootstrap_timeout_ms": min(timeout_ms, 10_000),
            "reconnect_backoff_max_ms": 2_000,
            "security_protocol": self.security_protocol,
            "ssl_check_hostname": self.ssl_check_hostname,
        }
        if not self.idempotent:  # keep order without the idempotent producer's sequencing
            cfg["max_in_flight_requests_per_connection"] = 1
        if self.client_id:
            cfg["client_id"] = self.client_id
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            path = getattr(self, name)
            if path is not None:
                cfg[name] = str(path)
        if self.ssl_password is not None:
            cfg["ssl_password"] = self.ssl_password.get_secret_value()
        if self.sasl_mechanism is not None:
            cfg["sasl_mechanism"] = self.sasl_mechanism
            cfg["sasl_plain_username"] = self.sasl_username
            cfg["sasl_plain_password"] = (
                self.sasl_password.get_secret_value() if self.sasl_password else None
            )
        return cfg


class KafkaPublisher:
    """Publishes spooled frames to Kafka; ``publish`` returns once all are acknowledged."""

    def __init__(self, config: KafkaOutput, site: str, name: str = "kafka") -> None:
        self.config = config
        self.name = name
        self._key = site.encode()
        self._topics = {s: config.topic(s) for s in ("readings", "batches")}
        self._producer: KafkaProducer | None = None
        self._where = f"kafka {','.join(config.bootstrap_servers)}"

    @property
    def max_frame_bytes(self) -> int:
        """Largest frame this output can produce (the agent splits frames to fit)."""
        return self.config.max_request_bytes - _RECORD_OVERHEAD - len(self._key)

    async def start(self) -> None:
        """Connect now if the broker is up; an unreachable broker is retried by publish."""
        try:
            await self._ensure_producer()
        except PublishError as exc:
            logger.warning("%s: not reachable at start, will retry: %s", self._where, exc)

    async def _ensure_producer(self) -> KafkaProducer:
        if self._producer is None:
            try:
                self._producer = await asyncio.to_thread(
                    KafkaProducer, **self.config.producer_config()
                )
            except (KafkaError, OSError, ValueError) as exc:
                metrics.PUBLISH_ERRORS.labels(output=self.name, kind="connect").inc()
                raise PublishError(f"{self._where}: cannot create producer: {exc!r}") from exc
        return self._producer

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
            raise PublishError(
                f"{self._where}: {len(msgs)} frames from {first.stream}#{first.seq} "
                f"not acknowledged: {exc!r}"
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
            # force-close: pending batches fail now instead of being delivered later
            await asyncio.to_thread(producer.close, 0)

    async def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await asyncio.to_thread(producer.close, self.config.delivery_timeout_s)
