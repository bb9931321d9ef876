"""The durable on-disk queue between the pollers and the publishers.

Every frame gets its (gateway, stream, sequence number) and is written here
before anything is sent; the forwarder drains the spool in order and deletes a
frame only after every broker acknowledged it. Delivery is at-least-once: a
crash between publish and ack redelivers the same sequence number, which
ingest deduplicates.

Storage is SQLite in WAL mode with ``synchronous=FULL``: a commit returns only
after the WAL is fsynced, so an append that returned survives kill -9 *and*
power loss (``NORMAL`` would survive kill -9 but may roll back the last commits
on power loss, which is the failure this spool exists for).

Sequence numbers live in their own table and advance in the same transaction
as the insert, so they are never reused, not after acks, drops or restarts.

The spool is bounded by payload bytes. When an append pushes it past
``max_bytes`` the *oldest* frames are dropped (policy ``drop_oldest``): counted
per stream, logged with their sequence range and exported as a metric; ingest
sees the gap in sequence numbers.

The methods block (SQLite, fsync); they are thread-safe, so asyncio callers
may run them with ``asyncio.to_thread``.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, Literal, get_args

from pydantic import Field

from edge import metrics
from edge.settings import Frozen

logger = logging.getLogger(__name__)

Stream = Literal["readings", "batches"]
STREAMS: Final = get_args(Stream)

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS sequence (
    gateway TEXT NOT NULL, stream TEXT NOT NULL, next_seq INTEGER NOT NULL,
    PRIMARY KEY (gateway, stream)
);
CREATE TABLE IF NOT EXISTS message (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    gateway TEXT NOT NULL, stream TEXT NOT NULL, seq INTEGER NOT NULL,
    created_ns INTEGER NOT NULL, data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS dropped (
    gateway TEXT NOT NULL, stream TEXT NOT NULL, frames INTEGER NOT NULL,
    PRIMARY KEY (gateway, stream)
);
"""


class SpoolError(RuntimeError):
    """The spool cannot store or read frames (disk, corruption, oversized frame)."""


class SpoolConfig(Frozen):
    """Where the spool lives and how much it may hold."""

    path: Path
    # payload bytes; about a day of a 1k-point gateway at 1 s cycles and ~100 B/point
    max_bytes: int = Field(default=8 * 1024**3, gt=0)
    overflow: Literal["drop_oldest"] = "drop_oldest"
    synchronous: Literal["FULL", "NORMAL"] = "FULL"


@dataclass(frozen=True, slots=True)
class SpooledMessage:
    """One stored frame: spool row id (for ack), stream, sequence number, bytes."""

    id: int
    stream: Stream
    seq: int
    created_ns: int
    data: bytes


class Spool:
    """A gateway's durable, bounded, ordered queue of encoded frames."""

    def __init__(self, config: SpoolConfig, gateway: str) -> None:
        self.config = config
        self.gateway = gateway
        self._lock = threading.Lock()
        self._db = self._open(config.path)
        self._depth = self._bytes = 0
        self._recount()
        self._publish_gauges()

    def _open(self, path: Path) -> sqlite3.Connection:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise SpoolError(f"spool {path}: journal_mode is {mode}, WAL refused")
            db.execute(f"PRAGMA synchronous={self.config.synchronous}")
            db.execute("PRAGMA busy_timeout=5000")
            db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise SpoolError(f"spool {path}: cannot open: {exc}") from exc
        return db

    # ------------------------------------------------------------------ writes

    def append(self, stream: Stream, encode: Callable[[int], bytes]) -> int:
        """Store the frame ``encode(seq)`` under the stream's next sequence number.

        Returns the sequence number once the frame is durable. If ``encode``
        raises, nothing is stored and the number is not consumed.
        """
        if stream not in STREAMS:
            raise SpoolError(f"spool {self.config.path}: unknown stream {stream!r}")
        with self._lock, self._transaction():
            seq = self._next_seq(stream)
            data = encode(seq)
            if len(data) > self.config.max_bytes:
                raise SpoolError(
                    f"spool {self.config.path}: frame {self.gateway}/{stream}#{seq} of "
                    f"{len(data)} bytes exceeds max_bytes {self.config.max_bytes}"
                )
            self._db.execute(
                "INSERT INTO message (gateway, stream, seq, created_ns, data) VALUES (?,?,?,?,?)",
                (self.gateway, stream, seq, time.time_ns(), data),
            )
            self._db.execute(
                "INSERT INTO sequence VALUES (?, ?, ?) ON CONFLICT (gateway, stream) "
                "DO UPDATE SET next_seq = excluded.next_seq",
                (self.gateway, stream, seq + 1),
            )
            self._depth += 1
            self._bytes += len(data)
            if self._bytes > self.config.max_bytes:
                self._drop_oldest()
        self._publish_gauges()
        return seq

    def ack(self, ids: Sequence[int]) -> None:
        """Delete frames every broker acknowledged (unknown ids are ignored)."""
        if not ids:
            return
        with self._lock, self._transaction():
            for start in range(0, len(ids), 500):
                chunk = list(ids[start : start + 500])
                marks = ",".join("?" * len(chunk))
                gone, size = self._db.execute(
                    f"SELECT count(*), coalesce(sum(length(data)), 0) FROM message "
                    f"WHERE gateway = ? AND id IN ({marks})",
                    (self.gateway, *chunk),
                ).fetchone()
                self._db.execute(
                    f"DELETE FROM message WHERE gateway = ? AND id IN ({marks})",
                    (self.gateway, *chunk),
                )
                self._depth -= gone
                self._bytes -= size
        self._publish_gauges()

    def _next_seq(self, stream: Stream) -> int:
        row = self._db.execute(
            "SELECT next_seq FROM sequence WHERE gateway = ? AND stream = ?",
            (self.gateway, stream),
        ).fetchone()
        return 0 if row is None else int(row[0])

    def _drop_oldest(self) -> None:
        """Drop oldest frames until the payload fits (the newest is always kept)."""
        excess = self._bytes - self.config.max_bytes
        victims: list[tuple[int, str, int, int]] = []
        freed = 0
        rows = self._db.execute(
            "SELECT id, stream, seq, length(data) FROM message WHERE gateway = ? ORDER BY id",
            (self.gateway,),
        )
        for row in rows:
            if freed >= excess or len(victims) >= self._depth - 1:
                break
            victims.append(row)
            freed += row[3]
        rows.close()
        if not victims:
            return
        self._db.execute(
            "DELETE FROM message WHERE gateway = ? AND id <= ?", (self.gateway, victims[-1][0])
        )
        self._depth -= len(victims)
        self._bytes -= freed
        for stream in STREAMS:
            seqs = [v[2] for v in victims if v[1] == stream]
            if seqs:
                self._count_drop(stream, seqs)

    def _count_drop(self, stream: str, seqs: list[int]) -> None:
        self._db.execute(
            "INSERT INTO dropped VALUES (?, ?, ?) ON CONFLICT (gateway, stream) "
            "DO UPDATE SET frames = frames + excluded.frames",
            (self.gateway, stream, len(seqs)),
        )
        metrics.SPOOL_DROPPED.labels(gateway=self.gateway, stream=stream).inc(len(seqs))
        logger.warning(
            "spool %s full (max_bytes %s): dropped %s oldest %s frames of gateway %s, seq %s..%s",
            self.config.path, self.config.max_bytes, len(seqs), stream, self.gateway,
            seqs[0], seqs[-1],
        )

    # ------------------------------------------------------------------- reads

    def peek(self, limit: int = 100, max_bytes: int | None = None) -> list[SpooledMessage]:
        """The oldest ``limit`` frames, in append order, without removing them.

        ``max_bytes`` caps the batch's payload (the first frame is always
        returned so an oversized frame cannot wedge the queue).
        """
        with self._lock:
            try:
                rows = self._db.execute(
                    "SELECT id, stream, seq, created_ns, data FROM message "
                    "WHERE gateway = ? ORDER BY id LIMIT ?",
                    (self.gateway, limit),
                ).fetchall()
            except sqlite3.Error as exc:
                raise SpoolError(f"spool {self.config.path}: cannot read: {exc}") from exc
        out: list[SpooledMessage] = []
        size = 0
        for row in rows:
            size += len(row[4])
            if out and max_bytes is not None and size > max_bytes:
                break
            out.append(SpooledMessage(*row))
        return out

    @property
    def depth(self) -> int:
        """Frames waiting."""
        return self._depth

    @property
    def payload_bytes(self) -> int:
        return self._bytes

    def oldest_age_seconds(self, now_ns: int | None = None) -> float:
        """Age of the oldest waiting frame (0.0 when empty)."""
        with self._lock:
            row = self._db.execute(
                "SELECT created_ns FROM message WHERE gateway = ? ORDER BY id LIMIT 1",
                (self.gateway,),
            ).fetchone()
        if row is None:
            return 0.0
        now = time.time_ns() if now_ns is None else now_ns
        return max(0.0, (now - int(row[0])) / 1e9)

    def dropped(self) -> dict[str, int]:
        """Frames dropped per stream since the spool was created (persisted)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT stream, frames FROM dropped WHERE gateway = ?", (self.gateway,)
            ).fetchall()
        counts = dict.fromkeys(STREAMS, 0)
        counts.update({stream: int(frames) for stream, frames in rows})
        return counts

    def next_seq(self, stream: Stream) -> int:
        """The sequence number the next append on ``stream`` will get."""
        with self._lock:
            return self._next_seq(stream)

    def _publish_gauges(self) -> None:
        metrics.SPOOL_DEPTH.labels(gateway=self.gateway).set(self._depth)
        metrics.SPOOL_BYTES.labels(gateway=self.gateway).set(self._bytes)

    # --------------------------------------------------------------- lifecycle

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db, self.config.path, self._recount)

    def _recount(self) -> None:
        self._depth, self._bytes = self._db.execute(
            "SELECT count(*), coalesce(sum(length(data)), 0) FROM message WHERE gateway = ?",
            (self.gateway,),
        ).fetchone()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class _Transaction:
    """BEGIN IMMEDIATE … COMMIT, rolled back (and in-memory counts resynced) on error."""

    def __init__(self, db: sqlite3.Connection, path: Path, recount: Callable[[], None]) -> None:
        self._db = db
        self._path = path
        self._recount = recount

    def __enter__(self) -> None:
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise SpoolError(f"spool {self._path}: cannot begin: {exc}") from exc

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if et is None:
            try:
                self._db.execute("COMMIT")
                return
            except sqlite3.Error as exc:
                ev, et = exc, type(exc)
        self._db.execute("ROLLBACK")
        self._recount()
        if issubclass(et, sqlite3.Error):
            raise SpoolError(f"spool {self._path}: write failed: {ev}") from ev
