"""The edge agent's Prometheus metrics, one module-level object per figure.

Every part of the agent (pollers, OPC UA subscriber, spool, forwarder,
publishers) updates these objects; ``serve_metrics`` exposes the default
registry on the configured HTTP port. Label values are device/meter names,
server names, output names and gateway ids: a bounded set fixed by the config.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Final
from wsgiref.simple_server import WSGIServer

from prometheus_client import Counter, Gauge, Histogram, start_wsgi_server

logger = logging.getLogger(__name__)

_LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

# --------------------------------------------------------------------- inputs

POINTS_READ: Final = Counter(
    "edge_points_read", "Points read and decoded with good quality", ("meter",)
)
READ_ERRORS: Final = Counter(
    "edge_read_errors",
    "Failed Modbus reads by meter and kind (connect, timeout, transport, exception, short, "
    "busy: each busy answer, busy_exhausted: a request given up after its busy retries, "
    "not_finite: per value, slow_answer: an answer slower than [clock] max_answer_s, its "
    "readings not sent)",
    ("meter", "kind"),
)
POLL_SECONDS: Final = Histogram(
    "edge_poll_seconds", "Duration of one device poll cycle", ("meter",), buckets=_LATENCY_BUCKETS
)
POLL_OVERRUNS: Final = Counter(
    "edge_poll_overruns", "Poll cycles that took longer than the poll interval", ("meter",)
)
DEVICE_UP: Final = Gauge("edge_device_up", "1 when the last poll of a device succeeded", ("meter",))
RECONNECTS: Final = Counter("edge_modbus_reconnects", "Modbus reconnect attempts", ("meter",))
OPCUA_NOTIFICATIONS: Final = Counter(
    "edge_opcua_notifications", "OPC UA data changes received", ("server",)
)
OPCUA_RECONNECTS: Final = Counter(
    "edge_opcua_reconnects", "OPC UA session re-creations", ("server",)
)
OPCUA_NODE_PROBLEM: Final = Gauge(
    "edge_opcua_node_problem",
    "1 while a configured OPC UA node cannot be used: not monitored (e.g. BadNodeIdUnknown), "
    "or its value has the wrong type (text where a number is expected)",
    ("server", "node"),
)
DEVICE_CLOCK_OFFSET: Final = Gauge(
    "edge_device_clock_offset_seconds",
    "Last seen offset of a meter's device time from the gateway clock, device minus gateway "
    "(Modbus clock register vs request sent .. answer received, 0 inside; OPC UA source "
    "timestamp vs receive time, not counting one far behind, which may be an old value's)",
    ("meter",),
)
DEVICE_CLOCK_RESTAMPED: Final = Counter(
    "edge_device_clock_restamped",
    "Readings stamped with gateway time because the meter's device time was off the "
    "gateway clock by more than [clock] device_tolerance_s",
    ("meter",),
)
BATCH_EVENTS: Final = Counter(
    "edge_batch_events", "Batch events produced, by source and kind (start, end)",
    ("source", "kind"),
)
BATCH_ENDS_INFERRED: Final = Counter(
    "edge_batch_ends_inferred",
    "Batch ends the source no longer showed after a reconnect (a next batch had taken "
    "its record): sent at the next batch's appearance, quantity only if written before",
    ("source", "asset"),
)
MES_EVENTS_REFUSED: Final = Counter(
    "edge_mes_events_refused",
    "MES batch events refused at the HTTP endpoint or the drop folder, by source and reason",
    ("source", "reason"),
)

# ------------------------------------------------------------ frames and spool

FRAMES_SPOOLED: Final = Counter(
    "edge_frames_spooled", "Frames given a sequence number and written to the spool", ("stream",)
)
QUEUE_DROPPED: Final = Counter(
    "edge_queue_dropped_frames",
    "Poll cycles dropped oldest-first because the spool writer fell behind",
    ("stream",),
)
SPOOL_DEPTH: Final = Gauge("edge_spool_depth", "Frames waiting in the spool", ("gateway",))
SPOOL_BYTES: Final = Gauge("edge_spool_bytes", "Payload bytes in the spool", ("gateway",))
SPOOL_OLDEST_AGE: Final = Gauge(
    "edge_spool_oldest_age_seconds", "Age of the oldest unsent frame", ("gateway",)
)
SPOOL_DROPPED: Final = Counter(
    "edge_spool_dropped_frames", "Frames dropped oldest-first, spool full", ("gateway", "stream")
)

# -------------------------------------------------------------------- outputs

PUBLISH_LATENCY: Final = Histogram(
    "edge_publish_latency_seconds",
    "Publish call until broker ack",
    ("output",),
    buckets=_LATENCY_BUCKETS,
)
PUBLISHED: Final = Counter("edge_published_frames", "Frames acknowledged", ("output",))
PUBLISH_ERRORS: Final = Counter(
    "edge_publish_errors",
    "Failed publish attempts by output and kind (connect: creating the producer or "
    "connecting the client failed; publish: frames not acknowledged; oversize: a frame "
    "refused for good)",
    ("output", "kind"),
)


@dataclass
class MetricsServer:
    """The running HTTP exposition; ``close`` stops it and joins its thread."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve_metrics(port: int, addr: str = "127.0.0.1") -> MetricsServer:
    """Serve the default registry on ``addr:port`` (port 0: any free port)."""
    server, thread = start_wsgi_server(port, addr)
    logger.info("metrics on http://%s:%s/metrics", addr, server.server_port)
    return MetricsServer(server, thread)
