"""``python -m ingest bridge``: MQTT → Kafka for gateways that only speak MQTT.

Subscribes (QoS 1, persistent session: ``clean_session=False`` and a stable
client id) to ``<root>/+/+/readings`` and ``<root>/+/+/batches``, topics named
``<root>/<site>/<gateway>/<stream>``, and produces each payload byte for byte
(the Ed25519 signature covers the body) to ``<prefix>readings|batches`` keyed by
site. The MQTT acknowledgement (``manual_ack``) is sent only after Kafka
acknowledged the record and the ledger recorded it, so a crash never loses a
message, and the ledger (``ingest.bridge_ledger``) makes a redelivery after a
crash not produce it twice. The ledger's key is the envelope's claimed
(gateway, stream, seq), read by ``edge.wire.peek_header`` (the bridge has no
gateway keys; ingest verifies). Messages whose key cannot be read are
forwarded as they are: ingest puts them in the DLQ.

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
import signal
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError
from paho.mqtt.enums import CallbackAPIVersion

from edge.tls import MQTT_TLS_KEYS, tls_problem
from edge.wire import peek_header
from ingest.bridge_ledger import BridgeLedger, Key
from ingest.config import ServerConfig
from ingest.errors import IngestError
from ingest.kafka_wait import wait_for_kafka
from ingest.metrics import (
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


def message_key(payload: bytes) -> Key | None:
    """The ledger key (gateway, stream, seq) an envelope claims, or None when unreadable."""
    header = peek_header(payload)
    return None if header is None else (header.gateway, header.stream, header.seq)


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
        self._recover()

    def _wait_for_kafka(self) -> bool:
        """Kafka first: MQTT messages are acknowledged only once Kafka has them."""
        return wait_for_kafka(self._connect_kafka, self.cfg.kafka, self._stop,
                              "the bridge subscribes to MQTT only once Kafka answers")

    def run(self) -> None:
        while not self._stop.wait(0.2):
            if self._error is not None:
                raise BridgeError(f"bridge stopped: {self._error}") from self._error

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
        assert self.ledger is not None and self._producer is not None
        parts = msg.topic.split("/")
        if len(parts) != 4 or parts[3] not in STREAMS:
            logger.warning("ignoring MQTT topic %s", msg.topic)
            client.ack(msg.mid, msg.qos)
            return
        site, stream = parts[1], parts[3]
        payload = bytes(msg.payload)
        key = message_key(payload)
        if key is not None:
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
        future = self._producer.send(self.cfg.kafka.topic(stream), value=payload,
                                     key=site.encode())
        future.add_callback(self._on_kafka_ack, client, key, msg.mid, msg.qos, stream)
        future.add_errback(self._on_kafka_error, msg.topic)

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

    def _on_kafka_error(self, topic: str, exc: BaseException) -> None:
        BRIDGE_INFLIGHT.dec()
        BRIDGE_KAFKA_ERRORS.inc()
        logger.error("Kafka refused a message from %s: %s", topic, exc)
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
