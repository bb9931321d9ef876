"""Storage settings and upkeep: chunk interval, compression, retention, aggregate refresh.

These are settings, not schema, so they come from config (``[storage]``) and are
(re)applied idempotently by ``migrate --config`` rather than frozen in a migration.
"""

from __future__ import annotations

import logging
import re

import psycopg

from ingest.config import StorageConfig
from ingest.db import connect
from ingest.errors import MigrationError
from ingest.migrate import Backend, detect_backend

logger = logging.getLogger(__name__)

AGGREGATES = ("reading_15m", "reading_1h", "reading_1d")  # refresh order: each builds on the last
# On-disk bytes per reading row with its indexes before compression (measured ~100-130).
BYTES_PER_READING = 120
_CHUNK_STEPS_S = (3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 7 * 86400)
_INTERVAL = re.compile(r"^\s*\d+\s+(minute|hour|day|week|month|year)s?\s*$")


def chunk_interval_for_rate(readings_per_s: float, target_bytes: int = 1 << 30) -> int:
    """Chunk width in seconds so one chunk (rows and indexes) is about ``target_bytes``.

    TimescaleDB advises that the recent chunks fit in ~25 % of memory; 1 GiB per
    chunk suits a 4-8 GB server. Rounded down to hour/day steps, at least 1 hour.
    """
    seconds = target_bytes / (readings_per_s * BYTES_PER_READING)
    fitting = [s for s in _CHUNK_STEPS_S if s <= seconds]
    return fitting[-1] if fitting else _CHUNK_STEPS_S[0]


def _interval(text: str, key: str) -> str:
    if not _INTERVAL.match(text):
        raise MigrationError(f"[storage] {key} = {text!r}: expected e.g. '7 days' or '12 hours'")
    return text.strip()


def apply_timescale_policies(conn: psycopg.Connection, storage: StorageConfig) -> None:
    """Chunk interval, compression, retention and aggregate refresh policies (idempotent)."""
    if storage.chunk_interval == "auto":
        seconds = chunk_interval_for_rate(storage.expected_readings_per_second)
        chunk = f"{seconds // 60} minutes"
    else:
        chunk = _interval(storage.chunk_interval, "chunk_interval")
    conn.execute(f"SELECT set_chunk_time_interval('reading', INTERVAL '{chunk}')")
    conn.execute("SELECT remove_compression_policy('reading', if_exists => true)")
    if storage.compress_after:
        after = _interval(storage.compress_after, "compress_after")
        conn.execute(f"SELECT add_compression_policy('reading', INTERVAL '{after}')")
    conn.execute("SELECT remove_retention_policy('reading', if_exists => true)")
    if storage.retain_for:
        keep = _interval(storage.retain_for, "retain_for")
        conn.execute(f"SELECT add_retention_policy('reading', INTERVAL '{keep}')")
    every = _interval(storage.aggregate_refresh_every, "aggregate_refresh_every")
    for view in AGGREGATES:
        conn.execute(f"SELECT remove_continuous_aggregate_policy('{view}', if_exists => true)")
        conn.execute(
            f"SELECT add_continuous_aggregate_policy('{view}', start_offset => NULL, "
            f"end_offset => NULL, schedule_interval => INTERVAL '{every}')"
        )
    logger.info(
        "timescaledb policies: chunk %s, compress after %s, retain %s, refresh every %s",
        chunk, storage.compress_after, storage.retain_for or "forever", every,
    )


def refresh_aggregates(dsn: str, timescaledb: str = "auto") -> Backend:
    """Bring the 15m/1h/1d aggregates up to date (materialized views or continuous aggregates)."""
    try:
        conn = connect(dsn)
    except psycopg.OperationalError as exc:
        raise MigrationError(f"cannot connect to the database to refresh: {exc}") from exc
    with conn:
        backend = detect_backend(conn, timescaledb)
        for view in AGGREGATES:
            if backend == "timescaledb":
                conn.execute(f"CALL refresh_continuous_aggregate('{view}', NULL, NULL)")
            else:
                populated = conn.execute(
                    "SELECT ispopulated FROM pg_matviews WHERE matviewname = %s", (view,)
                ).fetchone()
                concurrently = "CONCURRENTLY " if populated and populated[0] else ""
                conn.execute(f"REFRESH MATERIALIZED VIEW {concurrently}{view}")
            logger.info("refreshed %s (%s)", view, backend)
    return backend
