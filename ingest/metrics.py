"""Prometheus metrics of ingest and the bridge (scraped at ``[metrics] port``)."""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, start_http_server

from ingest.errors import IngestError

logger = logging.getLogger(__name__)

MESSAGES = Counter(
    "plantprint_ingest_messages", "Kafka messages handled", ["topic", "outcome"]
)  # outcome: landed | partial (new frame, time screen cut items) | duplicate | dlq
READINGS = Counter("plantprint_ingest_readings", "Readings landed (new rows)")
BATCH_EVENTS = Counter("plantprint_ingest_batch_events", "Batch events landed (new rows)")
DLQ = Counter("plantprint_ingest_dlq", "Messages sent to the DLQ", ["reason"])
SEQ_MISSING = Gauge(
    "plantprint_ingest_sequence_missing",
    "Sequence numbers below the highest seen that never arrived",
    ["gateway", "stream"],
)
SEQ_HIGHEST = Gauge(
    "plantprint_ingest_sequence_highest", "Highest sequence number seen", ["gateway", "stream"]
)
SEQ_CONFLICTS = Counter(
    "plantprint_ingest_sequence_conflicts",
    "Frames under an already-landed sequence number with different content (sent to the DLQ)",
    ["gateway", "stream"],
)
READING_CONFLICTS = Counter(
    "plantprint_ingest_reading_conflicts",
    "Readings whose key (site, meter, channel, ts) already held another gateway's or another "
    "value: not landed, their frame dead-lettered as reading_conflict",
    ["gateway"],
)
REPLAYED = Counter(
    "plantprint_ingest_replayed",
    "Frames whose signed body a ledger reset retired, sent again (DLQ replayed)",
    ["gateway"],
)
KAFKA_CONNECT_RETRIES = Counter(
    "plantprint_ingest_kafka_connect_retries", "Attempts to reach Kafka that failed at startup"
)
DB_RETRIES = Counter("plantprint_ingest_db_retries", "Landing attempts retried after a DB error")
DB_REFUSALS = Counter(
    "plantprint_ingest_db_refusals",
    "Landing attempts the database refused for an environment reason (grant, schema, "
    "read-only, disk full, ...), retried without dead-lettering",
    ["sqlstate"],
)
BRIDGE_FORWARDED = Counter(
    "plantprint_bridge_forwarded", "MQTT messages forwarded to Kafka", ["stream"]
)
BRIDGE_DEAD_LETTERED = Counter(
    "plantprint_bridge_dead_lettered",
    "MQTT messages not forwarded (signature, topic/body mismatch, binding, size) but "
    "dead-lettered, then acknowledged",
    ["reason"],
)
BRIDGE_SKIPPED = Counter(
    "plantprint_bridge_skipped", "Redelivered MQTT messages already in Kafka", ["stream"]
)
BRIDGE_INFLIGHT = Gauge(
    "plantprint_bridge_inflight",
    "MQTT messages sent to Kafka and not yet acknowledged by it (MQTT not yet acked)",
)
BRIDGE_MQTT_CONNECTED = Gauge(
    "plantprint_bridge_mqtt_connected", "1 while the bridge holds its MQTT session, else 0"
)
BRIDGE_KAFKA_ERRORS = Counter(
    "plantprint_bridge_kafka_errors", "Records Kafka refused (the bridge stops on the first)"
)


def serve(port: int, addr: str, key: str) -> None:
    """Serve the default registry on ``addr:port``; ``key`` names the config key
    that chose the port, for the error an operator reads when it is taken."""
    try:
        start_http_server(port, addr=addr)
    except OSError as exc:
        raise IngestError(f"metrics endpoint {addr}:{port} ({key}, [metrics] addr): {exc.strerror}"
                          " — pick a free port, or 0 for no endpoint") from None
    logger.info("metrics on http://%s:%d/metrics", addr, port)
