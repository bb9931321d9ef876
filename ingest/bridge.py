"""``python -m ingest bridge``: MQTT → Kafka for gateways that only speak MQTT.

Subscribes (QoS 1, persistent session: ``clean_session=False`` and a stable
client id) to ``<root>/+/+/readings`` and ``<root>/+/+/batches``, topics named
``<root>/<site>/<gateway>/<stream>``, and produces each payload byte for byte
(the Ed25519 signature covers the body) to ``<prefix>readings|batches`` keyed by
site. The MQTT acknowledgement (``manual_ack``) is sent only after Kafka
acknowledged the record and the ledger recorded it, so a crash never loses a
message, and the ledger (``ingest.bridge_ledger``) makes a redelivery after a
crash not produce it twice.

The bridge verifies before it remembers: a message is forwarded, and its
(gateway, stream, seq) written to the ledger, only when ``edge.wire.decode``
accepts it under the gateway's keys and the topic's site and gateway are the
body's (and the gateway is bound to that site). Anything else — a forged or
zero signature, a topic naming another gateway, a payload over ``[limits]
max_frame_bytes``, a record Kafka refuses for its size — is acknowledged,
dead-lettered to ``<prefix>dlq`` with its reason (source topic ``mqtt:<topic>``)
and not forwarded, so a forged envelope can never make the bridge skip the
genuine frames it claims to be. Dead letters are sent and MQTT acknowledged on
the bridge's main thread, never on paho's network thread; an unexpected error
in a callback is logged and stops the bridge (exit 2) instead of silently
killing paho's thread.

Both sides may use TLS: the Kafka clients take ``[kafka]``'s security settings
(``KafkaConfig.client_config``), the MQTT client ``[bridge]``'s ``url``
(``mqtts://`` for TLS), ``ca_file``, ``cert_file``, ``key_file``, ``username``
and ``password`` (``edge.tls.MqttSecurity``, as the edge's ``[outputs.mqtt]``).
paho retries a failed MQTT connection without saying why; when TLS is on, the
bridge repeats the handshake itself and logs what TLS refused (once per
distinct reason).
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import (
    InvalidRecordError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
)
from paho.mqtt.enums import CallbackAPIVersion

from edge.tls import MQTT_TLS_KEYS, tls_problem
from edge.wire import WireError, decode, peek_gateway, peek_header
from ingest.bridge_ledger import BridgeLedger, Key
from ingest.config import ServerConfig
from ingest.dlq import DeadLetter, DeadLetterQueue
from ingest.errors import IngestError
from ingest.kafka_wait import wait_for_kafka
from ingest.metrics import (
    BRIDGE_DEAD_LETTERED,
    BRIDGE_FORWARDED,
    BRIDGE_INFLIGHT,
    BRIDGE_KAFKA_ERRORS,
    BRIDGE_MQTT_CONNECTED,
    BRIDGE_SKIPPED,
)
from ingest.metrics import serve as serve_metrics

logger = logging.getLogger(__name__)
STREAMS = ("readings", "batches")
TLS_PROBE_TIMEOUT_S = 5.0  # TCP connect of the handshake repeated to explain a refusal


class BridgeError(IngestError):
    """Kafka refused a record or MQTT failed: the bridge stops, MQTT keeps the messages."""


# Kafka errors that are the record's own fault: it is dead-lettered, not retried for ever
RECORD_ERRORS = (MessageSizeTooLargeError, RecordListTooLargeError, InvalidRecordError)


def message_key(payload: bytes) -> Key | None:
    """The ledger key (gateway, stream, seq) an envelope claims, or None when unreadable."""
    header = peek_header(payload)
    return None if header is None else (header.gateway, header.stream, header.seq)


@dataclass(frozen=True)
class _Refused:
    """An MQTT message the bridge will not forward: dead-letter it, then acknowledge it."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    reason: str
    detail: str
    key: Key | None = None  # its ledger ``pending`` entry, when it had one


class Bridge:
    def __init__(self, cfg: ServerConfig) -> None:
        self.cfg = cfg
        self._b = cfg.bridge
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._inflight: dict[Key, list[int]] = {}
        self._lock = threading.Lock()
        self.ledger: BridgeLedger | None = None
        self._producer: KafkaProducer | None = None
        self._client: mqtt.Client | None = None
        self._mqtt_problem: str | None = None  # last TLS refusal logged
        self._keys = cfg.public_keys()
        self._sites = {gw: g.site for gw, g in cfg.gateways.items()}
        # refused messages, dead-lettered and acknowledged by the main thread (run)
        self._refused: queue.Queue[_Refused] = queue.Queue()
        self._dlq: DeadLetterQueue | None = None

    # ------------------------------------------------------------- lifecycle
    def start(self) -> bool:
        """Recover, connect to Kafka (waiting for it) and MQTT; False if stopped meanwhile."""
        self.ledger = BridgeLedger(self._b.state_file)
        if not self._wait_for_kafka():
            return False
        client = self._mqtt_client()
        client.reconnect_delay_set(1, 5)
        # connect_async: paho's loop keeps retrying a broker that is not up yet
        client.connect_async(self._b.host, self._b.port, keepalive=30)
        client.loop_start()
        self._client = client
        return True

    def _mqtt_client(self) -> mqtt.Client:
        b = self._b
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=b.client_id,
            clean_session=False, protocol=mqtt.MQTTv311, manual_ack=True,
        )
        b.secure(client)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        return client

    def _connect_kafka(self) -> None:
        # the producer first: its constructor fails cleanly when no broker answers
        # (a failed KafkaConsumer construction, used by the read-back, leaves a thread)
        if self._producer is None:
            self._producer = KafkaProducer(
                **self.cfg.kafka.client_config(), acks="all", linger_ms=2,
                max_request_size=self.cfg.limits.max_frame_bytes + (1 << 20),
                client_id=self._b.client_id,
                bootstrap_timeout_ms=int(self.cfg.kafka.connect_timeout_s * 1000),
            )
            self._dlq = DeadLetterQueue(self._producer, self.cfg.kafka.topic("dlq"),
                                        self.cfg.kafka.dlq_max_bytes)
        self._recover()

    def _wait_for_kafka(self) -> bool:
        """Kafka first: MQTT messages are acknowledged only once Kafka has them."""
        return wait_for_kafka(self._connect_kafka, self.cfg.kafka, self._stop,
                              "the bridge subscribes to MQTT only once Kafka answers")

    def run(self) -> None:
        while not self._stop.wait(0.2):
            self._dead_letter_refused()
            if self._error is not None:
                raise BridgeError(f"bridge stopped: {self._error}") from self._error

    def _dead_letter_refused(self) -> None:
        """Dead-letter refused messages (acknowledged by Kafka), then acknowledge them to MQTT.

        A DLQ Kafka does not acknowledge stops the bridge: the message stays with the MQTT
        broker and comes again at the next start.
        """
        assert self._dlq is not None and self._client is not None
        while True:
            try:
                r = self._refused.get_nowait()
            except queue.Empty:
                return
            gateway = peek_gateway(r.payload) if len(r.payload) <= (1 << 20) else None
            try:
                self._dlq.send_all([DeadLetter(r.payload, None, r.reason, r.detail,
                                               f"mqtt:{r.topic}", -1, r.mid, gateway)])
            except Exception as exc:  # any failure: stop, MQTT keeps the message
                self._error = exc
                return
            if r.key is not None and self.ledger is not None:
                self.ledger.abandon(r.key)
            BRIDGE_DEAD_LETTERED.labels(r.reason).inc()
            self._client.ack(r.mid, r.qos)

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
        if self._producer is not None:
            # Kafka gone at shutdown: kafka-python's flush and close raise on records
            # still in flight. Nothing is lost: MQTT acked only what Kafka acknowledged,
            # and the ledger (closed below regardless) marks the rest pending
            try:
                self._producer.flush(timeout=10)
                self._producer.close(timeout=5)
            except KafkaError as exc:
                logger.warning("stopping with records Kafka did not acknowledge (%s); their "
                               "MQTT messages were not acked and will be redelivered", exc)
        if self.ledger is not None:
            self.ledger.close()

    # ------------------------------------------------------------- recovery
    def _recover(self) -> None:
        """Messages pending at a crash: find those Kafka already has (read-back)."""
        assert self.ledger is not None
        pending = self.ledger.pending()
        if not pending:
            return
        found = self._read_back(pending, self.ledger.partition_next())
        for key, (topic, partition, offset) in found.items():
            self.ledger.forwarded(key, topic, partition, offset)
        self.ledger.drop_pending()
        logger.info("recovery: %d pending messages, %d already in Kafka", len(pending), len(found))

    def _read_back(self, pending: set[Key], start: dict[tuple[str, int], int]) -> dict[
        Key, tuple[str, int, int]
    ]:
        consumer = KafkaConsumer(**self.cfg.kafka.client_config(),
                                 enable_auto_commit=False,
                                 fetch_max_bytes=self.cfg.kafka.fetch_max_bytes)
        found: dict[Key, tuple[str, int, int]] = {}
        try:
            tps = [TopicPartition(self.cfg.kafka.topic(s), p) for s in STREAMS
                   for p in consumer.partitions_for_topic(self.cfg.kafka.topic(s)) or ()]
            consumer.assign(tps)
            for tp in tps:
                consumer.seek(tp, start.get((tp.topic, tp.partition), 0))
            idle_until = time.monotonic() + self._b.readback_idle_s
            while time.monotonic() < idle_until:  # end offsets are not trusted: read to idle
                for recs in consumer.poll(timeout_ms=200).values():
                    idle_until = time.monotonic() + self._b.readback_idle_s
                    for r in recs:
                        key = message_key(r.value or b"")
                        if key in pending:
                            found[key] = (r.topic, r.partition, r.offset)
        finally:
            consumer.close()
        return found

    # ------------------------------------------------------------- MQTT side
    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            logger.error("MQTT connect to %s:%d refused: %s", self._b.host, self._b.port, rc)
            return
        BRIDGE_MQTT_CONNECTED.set(1)
        self._mqtt_problem = None
        root = self._b.topic_root
        client.subscribe([(f"{root}/+/+/{s}", 1) for s in STREAMS])
        logger.info("bridging %s/+/+/{readings,batches} → Kafka", root)

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        BRIDGE_MQTT_CONNECTED.set(0)
        if not self._stop.is_set():
            logger.warning("MQTT disconnected (%s); paho reconnects", rc)
            if rc.is_failure:  # a refused client certificate shows up as a lost connection
                self._explain_tls_refusal()

    def _on_connect_fail(self, _c: mqtt.Client, _u: Any) -> None:
        self._explain_tls_refusal()

    def _explain_tls_refusal(self) -> None:
        """paho retries without saying why; say it when TLS is the reason (paho's thread)."""
        b = self._b
        if not b.tls:
            return
        problem = tls_problem(b.host, b.port, b.ssl_context(), TLS_PROBE_TIMEOUT_S)
        if problem is not None and problem != self._mqtt_problem:
            logger.error("MQTT broker %s:%d: %s (see [bridge] %s); paho keeps retrying",
                         b.host, b.port, problem, MQTT_TLS_KEYS)
        self._mqtt_problem = problem

    def _on_message(self, client: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        """paho's thread: an exception here would end paho's network loop, so none leaves."""
        try:
            self._forward(client, msg)
        except Exception as exc:  # reported; the bridge stops (exit 2)
            logger.exception("bridge callback failed on a message of %s", msg.topic)
            self._error = exc

    def _forward(self, client: mqtt.Client, msg: mqtt.MQTTMessage) -> None:
        assert self.ledger is not None and self._producer is not None
        parts = msg.topic.split("/")
        if len(parts) != 4 or parts[3] not in STREAMS:
            logger.warning("ignoring MQTT topic %s", msg.topic)
            client.ack(msg.mid, msg.qos)
            return
        site, gateway, stream = parts[1], parts[2], parts[3]
        payload = bytes(msg.payload)
        refusal = self._verify(payload, site, gateway, stream)
        if refusal is not None:
            self._refuse(_Refused(msg.topic, payload, msg.mid, msg.qos, *refusal))
            return
        key = message_key(payload)
        assert key is not None  # decode accepted it
        if self.ledger.seen(key):
            BRIDGE_SKIPPED.labels(stream).inc()
            client.ack(msg.mid, msg.qos)
            return
        with self._lock:
            if key in self._inflight:  # redelivered while the first copy is in flight
                self._inflight[key].append(msg.mid)
                return
            self._inflight[key] = [msg.mid]
        self.ledger.begin(key)
        BRIDGE_INFLIGHT.inc()
        try:
            future = self._producer.send(self.cfg.kafka.topic(stream), value=payload,
                                         key=site.encode())
        except RECORD_ERRORS as exc:  # refused before sending (e.g. over max_request_size)
            BRIDGE_INFLIGHT.dec()
            with self._lock:
                self._inflight.pop(key, None)
            self._refuse(_Refused(msg.topic, payload, msg.mid, msg.qos, "too_large",
                                  f"Kafka refused the record: {exc}", key))
            return
        future.add_callback(self._on_kafka_ack, client, key, msg.mid, msg.qos, stream)
        future.add_errback(self._on_kafka_error, msg, key)

    def _verify(self, payload: bytes, site: str, gateway: str, stream: str
                ) -> tuple[str, str] | None:
        """(reason, detail) when the message must not be forwarded; None when it may."""
        limit = self.cfg.limits.max_frame_bytes
        try:
            message = decode(payload, self._keys, limit)
        except WireError as exc:
            return exc.reason, str(exc)
        claimed = (message.site, message.gateway, message.stream)
        if claimed != (site, gateway, stream):
            return "not_bound", (f"topic names site {site}, gateway {gateway}, stream {stream}; "
                                 f"the signed body says {claimed[0]}, {claimed[1]}, {claimed[2]}")
        if self._sites.get(gateway) != site:
            return "not_bound", (f"gateway {gateway} is bound to site {self._sites.get(gateway)}"
                                 f", not {site}")
        return None

    def _refuse(self, refused: _Refused) -> None:
        logger.warning("not forwarding MQTT message on %s (%d bytes): %s: %s", refused.topic,
                       len(refused.payload), refused.reason, refused.detail[:300])
        self._refused.put(refused)

    def _on_kafka_ack(self, client: mqtt.Client, key: Key | None, mid: int, qos: int,
                      stream: str, meta: Any) -> None:
        BRIDGE_INFLIGHT.dec()
        mids = [mid]
        if key is not None:
            assert self.ledger is not None
            self.ledger.forwarded(key, meta.topic, meta.partition, meta.offset)
            with self._lock:
                mids = self._inflight.pop(key, [mid])
        BRIDGE_FORWARDED.labels(stream).inc()
        for m in mids:
            client.ack(m, qos)

    def _on_kafka_error(self, msg: mqtt.MQTTMessage, key: Key, exc: BaseException) -> None:
        BRIDGE_INFLIGHT.dec()
        BRIDGE_KAFKA_ERRORS.inc()
        with self._lock:
            mids = self._inflight.pop(key, [msg.mid])
        if isinstance(exc, RECORD_ERRORS):  # this record's fault: dead-letter it, go on
            for mid in mids:
                self._refuse(_Refused(msg.topic, bytes(msg.payload), mid, msg.qos,
                                      "too_large", f"Kafka refused the record: {exc}", key))
            return
        logger.error("Kafka refused a message from %s: %s", msg.topic, exc)
        self._error = exc


def run_bridge(cfg: ServerConfig) -> None:
    """The process: its own metrics endpoint, signal handling, the bridge."""
    if cfg.bridge.metrics_port:
        serve_metrics(cfg.bridge.metrics_port, cfg.metrics.addr, "[bridge] metrics_port")
    bridge = Bridge(cfg)
    signal.signal(signal.SIGTERM, lambda *_: bridge.stop())
    signal.signal(signal.SIGINT, lambda *_: bridge.stop())
    try:
        if bridge.start():
            bridge.run()
    finally:
        bridge.close()
