"""The worker's Prometheus metrics (``[compute] metrics_port``, on ``[metrics] addr``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

FRAMES = Counter("plantprint_compute_frames_total",
                 "Kafka records by outcome (used, duplicate, seq_conflict, refused)",
                 ["outcome"])
INTERVALS = Counter("plantprint_compute_intervals_total", "Counter intervals derived", ["site"])
FOOTPRINTS = Counter("plantprint_compute_footprints_total",
                     "Footprint rows written by status", ["site", "status"])
MICRO_BATCH = Histogram("plantprint_compute_micro_batch_seconds",
                        "Wall time of one micro-batch (decode, allocate, commit)")
LAG = Gauge("plantprint_compute_data_lag_seconds",
            "Wall clock minus the newest reading time, per site", ["site"])
UNPUBLISHED = Counter("plantprint_compute_footprints_unpublished_total",
                      "Footprint updates stored but not published to the footprints topic",
                      ["site"])
UNROUTED = Counter("plantprint_compute_unrouted_total",
                   "Frames with readings the site model cannot place (unknown meter or unit)",
                   ["site"])
OUT_OF_ORDER = Counter("plantprint_compute_readings_out_of_order_total",
                       "Readings not used: older than a reading of their meter's channel that "
                       "arrived before them", ["site"])
