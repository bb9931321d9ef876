"""The bridge's durable memory of what it forwarded to Kafka (SQLite, synchronous=FULL).

MQTT redelivers every QoS 1 message the bridge did not acknowledge. The bridge
acknowledges only after Kafka did, so a crash between the two would forward a
message twice. To deliver each message once, the bridge records:

* ``pending``: a message it is about to produce, *before* producing it;
* ``forwarded``: (gateway, stream, seq) once Kafka acknowledged it, with the
  partition and offset — written before the MQTT acknowledgement;
* ``partition_next``: per partition, the offset after the last acknowledged one.

A redelivered message already in ``forwarded`` is acknowledged without producing.
A message still ``pending`` at startup may or may not have reached Kafka (the
crash hit between produce and ledger write): the bridge reads the topics back
from ``partition_next`` and marks what it finds as forwarded; the rest is
produced when MQTT redelivers it. ``forwarded`` keeps a window of recent
sequence numbers per gateway (older ones are pruned; ingest's own dedup by
(gateway, stream, seq) remains the backstop).
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

Key = tuple[str, str, int]  # gateway, stream, seq

_SCHEMA = """
CREATE TABLE IF NOT EXISTS forwarded (
    gateway TEXT NOT NULL, stream TEXT NOT NULL, seq INTEGER NOT NULL,
    topic TEXT NOT NULL, kafka_partition INTEGER NOT NULL, kafka_offset INTEGER NOT NULL,
    PRIMARY KEY (gateway, stream, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pending (
    gateway TEXT NOT NULL, stream TEXT NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (gateway, stream, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS partition_next (
    topic TEXT NOT NULL, kafka_partition INTEGER NOT NULL, next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, kafka_partition)) WITHOUT ROWID;
"""


class BridgeLedger:
    """Thread-safe (paho's and kafka-python's threads both call in)."""

    def __init__(self, path: Path, window: int = 100_000) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._window = window
        self._since_prune = 0

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def seen(self, key: Key) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM forwarded WHERE gateway=? AND stream=? AND seq=?", key
            ).fetchone()
        return row is not None

    def begin(self, key: Key) -> None:
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO pending VALUES (?, ?, ?)", key)

    def forwarded(self, key: Key, topic: str, partition: int, offset: int) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            self._db.execute("INSERT OR IGNORE INTO forwarded VALUES (?, ?, ?, ?, ?, ?)",
                             (*key, topic, partition, offset))
            self._db.execute("DELETE FROM pending WHERE gateway=? AND stream=? AND seq=?", key)
            self._db.execute(
                "INSERT INTO partition_next VALUES (?, ?, ?) ON CONFLICT DO UPDATE "
                "SET next_offset = max(next_offset, excluded.next_offset)",
                (topic, partition, offset + 1),
            )
            self._db.execute("COMMIT")
            self._since_prune += 1
            if self._since_prune >= 10_000:
                self._prune()

    def _prune(self) -> None:
        self._since_prune = 0
        self._db.execute(
            "DELETE FROM forwarded WHERE seq < (SELECT max(f.seq) FROM forwarded f "
            "WHERE f.gateway = forwarded.gateway AND f.stream = forwarded.stream) - ?",
            (self._window,),
        )

    def abandon(self, key: Key) -> None:
        """A message begun but dead-lettered instead of forwarded: no longer pending."""
        with self._lock:
            self._db.execute("DELETE FROM pending WHERE gateway=? AND stream=? AND seq=?", key)

    def pending(self) -> set[Key]:
        with self._lock:
            return set(self._db.execute("SELECT gateway, stream, seq FROM pending").fetchall())

    def drop_pending(self) -> None:
        with self._lock:
            self._db.execute("DELETE FROM pending")

    def partition_next(self) -> dict[tuple[str, int], int]:
        with self._lock:
            rows = self._db.execute(
                "SELECT topic, kafka_partition, next_offset FROM partition_next"
            )
            return {(t, p): o for t, p, o in rows.fetchall()}
