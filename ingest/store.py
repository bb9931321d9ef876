"""The landing transaction: frames, readings, batch events, sequence state and offsets.

One call of :meth:`Store.land` is one PostgreSQL transaction holding

1. the frame ledger insert (``ingested_frame``, ON CONFLICT DO NOTHING RETURNING):
   only frames never seen before, by (gateway, stream, seq), go further. A frame
   whose key is already there is a duplicate when its body digest (SHA-256 of the
   signed body) matches the stored one, and a **sequence conflict** when it does
   not (the gateway's sequence restarted): conflicts are handed to the caller's
   ``on_conflicts`` inside the transaction (ingest dead-letters them there, so
   they are in the DLQ before the offsets that skip them commit);
2. their readings: COPY into a temporary staging table, then
   ``INSERT … SELECT … ON CONFLICT DO NOTHING`` into ``reading`` (or, for
   servers without COPY, one INSERT from unnest'ed arrays);
3. their batch events, the same way;
4. ``gateway_seq``: highest sequence and the multirange of missing numbers;
5. the consumer's next offsets per partition (``consumer_offset``).

So the rows and the offsets that produced them commit together or not at all.
psycopg errors propagate; ``ingest.dbretry`` decides whether to retry them.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import psycopg

from edge.wire import BatchFrame, Frame, Message, signed_body
from ingest.db import connect

logger = logging.getLogger(__name__)

TopicPartition = tuple[str, int]
_TS = "'epoch'::timestamptz + (ts_ns / 1000) * interval '1 microsecond'"
_COLUMNS = "site, gateway, meter, channel, ts, value, unit, quality, seq"
_STAGE = """CREATE TEMP TABLE IF NOT EXISTS stage_reading (
    site text, gateway text, meter text, channel text, ts timestamptz,
    value float8, unit text, quality text, seq bigint) ON COMMIT DELETE ROWS"""
_COPY_DIRECT = f"COPY reading ({_COLUMNS}) FROM STDIN"
_FROM_STAGE = f"""INSERT INTO reading ({_COLUMNS}) SELECT {_COLUMNS} FROM stage_reading
ON CONFLICT DO NOTHING"""
_READINGS_UNNEST = f"""INSERT INTO reading
    (site, gateway, meter, channel, ts, value, unit, quality, seq)
SELECT site, gateway, meter, channel, {_TS}, value, unit, quality, seq
FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::text[], %s::text[], %s::bigint[],
            %s::float8[], %s::text[], %s::text[])
     AS t(site, gateway, seq, meter, channel, ts_ns, value, unit, quality)
ON CONFLICT DO NOTHING"""
_FRAMES = """INSERT INTO ingested_frame (gateway, stream, seq, site, items, rejected, topic,
                            kafka_partition, kafka_offset, body_sha256)
SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::text[], %s::int[], %s::int[],
                     %s::text[], %s::int[], %s::bigint[], %s::bytea[])
ON CONFLICT DO NOTHING RETURNING gateway, stream, seq"""
# Frames whose signed body a `ledger reset` retired (migration 0010): replays.
_RETIRED = """SELECT DISTINCT body_sha256, gateway, epoch FROM retired_frame
WHERE body_sha256 = ANY(%s::bytea[])"""
# Readings whose key already held another gateway's or another value (after the
# ON CONFLICT DO NOTHING insert, so `reading` holds what landed; a row that is its
# own landed copy has the same gateway and seq and is skipped).
_CONFLICTING = """SELECT s.gateway, s.seq, s.meter, s.channel, s.ts, s.value, s.unit,
       r.gateway, r.seq, r.value, r.unit
FROM {source} JOIN reading r USING (site, meter, channel, ts)
WHERE (r.gateway, r.seq) IS DISTINCT FROM (s.gateway, s.seq)
  AND (r.gateway <> s.gateway OR r.value IS DISTINCT FROM s.value OR r.unit <> s.unit
       OR r.quality <> s.quality)"""
_STAGED = "stage_reading s"
_UNNESTED = f"""(SELECT site, gateway, seq, meter, channel, {_TS} AS ts, value, unit, quality
FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::text[], %s::text[], %s::bigint[],
            %s::float8[], %s::text[], %s::text[])
     AS t(site, gateway, seq, meter, channel, ts_ns, value, unit, quality)) s"""
# Only run when a batch held frames already in the ledger: their stored digests.
_STORED = """SELECT gateway, stream, seq, body_sha256, topic, kafka_partition, kafka_offset
FROM ingested_frame JOIN unnest(%s::text[], %s::text[], %s::bigint[]) AS k(gateway, stream, seq)
USING (gateway, stream, seq)"""
_EVENTS = f"""INSERT INTO batch_event
    (site, gateway, asset, batch_id, product, kind, ts, quantity, unit, seq)
SELECT site, gateway, asset, batch_id, product, kind, {_TS}, quantity, unit, seq
FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[],
            %s::bigint[], %s::float8[], %s::text[], %s::bigint[])
     AS t(site, gateway, asset, batch_id, product, kind, ts_ns, quantity, unit, seq)
ON CONFLICT DO NOTHING"""
# New state per (gateway, stream) from this batch's new sequence numbers: numbers
# skipped past the previous highest become missing; numbers that arrive remove it.
_SEQ = """WITH s AS (SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[]) AS t(g, st, seq)),
agg AS (SELECT g, st, min(seq) AS mn, max(seq) AS mx, count(*) AS n,
               range_agg(int8range(seq, seq, '[]')) AS got FROM s GROUP BY g, st),
cur AS (SELECT a.*, t.first_seq AS fs, t.highest_seq AS hi, t.missing AS miss
        FROM agg a LEFT JOIN gateway_seq t ON t.gateway = a.g AND t.stream = a.st),
nxt AS (SELECT g, st, n, least(coalesce(fs, mn), mn) AS first_seq,
               greatest(coalesce(hi, mx), mx) AS highest_seq,
               (coalesce(miss, '{}')
                + CASE WHEN hi IS NULL THEN int8multirange(int8range(mn, mx, '[]'))
                       WHEN mx > hi THEN int8multirange(int8range(hi + 1, mx, '[]'))
                       ELSE '{}' END
                + CASE WHEN fs IS NOT NULL AND mn < fs
                       THEN int8multirange(int8range(mn, fs - 1, '[]')) ELSE '{}' END
               ) - got AS missing
        FROM cur)
INSERT INTO gateway_seq AS t
    (gateway, stream, first_seq, highest_seq, frames, missing, missing_count, updated_at)
SELECT g, st, first_seq, highest_seq, n, missing,
       (SELECT coalesce(sum(upper(r) - lower(r)), 0) FROM unnest(missing) AS r), now()
FROM nxt
ON CONFLICT (gateway, stream) DO UPDATE SET
    first_seq = EXCLUDED.first_seq, highest_seq = EXCLUDED.highest_seq,
    frames = t.frames + EXCLUDED.frames, missing = EXCLUDED.missing,
    missing_count = EXCLUDED.missing_count, updated_at = now()
RETURNING gateway, stream, highest_seq, missing_count"""
_OFFSETS = """INSERT INTO consumer_offset (consumer_group, topic, kafka_partition, next_offset)
SELECT %s, * FROM unnest(%s::text[], %s::int[], %s::bigint[])
ON CONFLICT (consumer_group, topic, kafka_partition) DO UPDATE
SET next_offset = greatest(consumer_offset.next_offset, EXCLUDED.next_offset), updated_at = now()"""


@dataclass(frozen=True, slots=True)
class Accepted:
    """A decoded message to land, where it came from, and which of its items to keep."""

    message: Message
    topic: str
    partition: int
    offset: int
    keep: list[int] | None = None  # indices of readings/events; None = all
    raw: bytes = b""  # the original message, for a dead letter if the database refuses it
    key: bytes | None = None
    digest: bytes | None = None  # body_digest(raw); None: not checked against the ledger


FrameKey = tuple[str, str, int]  # (gateway, stream, seq)


def body_digest(raw: bytes) -> bytes:
    """SHA-256 of an envelope's signed body (``edge.wire.signed_body``): what the ledger keeps.

    Signing is deterministic, but the body alone is hashed so that the same frame
    re-signed under a new key still counts as the same frame.
    """
    return hashlib.sha256(signed_body(raw)).digest()


def frame_key(a: Accepted) -> FrameKey:
    return (a.message.gateway, a.message.stream, a.message.seq)


@dataclass(frozen=True, slots=True)
class Conflict:
    """A frame the database shows cannot land (whole or in part); ``reason`` is its DLQ reason.

    ``seq_conflict``: its (gateway, stream, seq) is in the ledger under a different body;
    ``replayed``: its body is one a ``ledger reset`` retired; ``reading_conflict``: some of
    its readings' keys (site, meter, channel, ts) hold another gateway's or another value
    (the frame is in the ledger, its other readings landed, the stored rows are untouched).
    """

    accepted: Accepted
    stored_digest: bytes
    stored_at: str  # topic/partition@offset of the frame that holds the key
    reason: str = "seq_conflict"
    note: str = ""  # replayed / reading_conflict: what the database showed
    rejected: str | None = None  # reading_conflict: "cut/total"

    @property
    def detail(self) -> str:
        if self.reason != "seq_conflict":
            return self.note
        g, s, q = frame_key(self.accepted)
        return (
            f"sequence conflict: gateway {g} stream {s} seq {q} already landed with a different "
            f"body (sha256 {self.stored_digest.hex()[:16]}…, from {self.stored_at}); this frame "
            f"(sha256 {(self.accepted.digest or b'').hex()[:16]}…) did not land. The gateway's "
            "sequence restarted (spool lost or re-provisioned): give it a new gateway id or "
            "reset its ledger, then re-drive this record"
        )


@dataclass
class LandResult:
    frames: int = 0
    duplicates: int = 0
    readings: int = 0
    events: int = 0
    seq_state: list[tuple[str, str, int, int]] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)
    new: list[Accepted] = field(default_factory=list)  # frames new to the ledger
    # (topic, outcome) -> messages; outcome: landed | partial (time screen cut items) | duplicate
    outcomes: dict[tuple[str, str], int] = field(default_factory=dict)

    def tally(self, new: Sequence[Accepted], accepted: Sequence[Accepted]) -> None:
        """Count each message's outcome under its own topic."""
        fresh = {id(a) for a in new}
        partial = {id(c.accepted) for c in self.conflicts if c.reason == "reading_conflict"}
        conflicting = {id(c.accepted) for c in self.conflicts} - partial
        for a in accepted:
            if id(a) in fresh:
                outcome = "landed" if a.keep is None and id(a) not in partial else "partial"
            elif id(a) in conflicting:
                continue  # dead-lettered (seq_conflict), counted as dlq
            else:
                outcome = "duplicate"
            self.outcomes[(a.topic, outcome)] = self.outcomes.get((a.topic, outcome), 0) + 1


@lru_cache(maxsize=1 << 16)
def _esc(text: str) -> str:
    """COPY text-format escaping (backslash, tab, newline, carriage return)."""
    if "\\" in text or "\t" in text or "\n" in text or "\r" in text:
        return (text.replace("\\", "\\\\").replace("\t", "\\t")
                .replace("\n", "\\n").replace("\r", "\\r"))
    return text


def _kept(seq: Sequence[object], keep: list[int] | None) -> Sequence[object]:
    return seq if keep is None else [seq[i] for i in keep]


def _reading_columns(frame: Frame, keep: list[int] | None) -> list[Sequence[object]]:
    return [_kept(c, keep) for c in
            (frame.meter, frame.channel, frame.ts_ns, frame.value, frame.unit, frame.quality)]


@lru_cache(maxsize=1 << 16)
def _ts_text(ts_ns: int) -> str:
    """Epoch ns as PostgreSQL timestamptz text, microseconds (readings share timestamps)."""
    seconds, micros = divmod(ts_ns // 1000, 1_000_000)
    return f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(seconds))}.{micros:06d}+00"


def copy_text(frames: Iterable[tuple[Frame, list[int] | None]]) -> str:
    """Readings of frames as COPY text rows in ``reading``'s column order; pure."""
    parts: list[str] = []
    for frame, keep in frames:
        site, gateway, seq = _esc(frame.site), _esc(frame.gateway), frame.seq
        meter, channel, ts, value, unit, quality = _reading_columns(frame, keep)
        parts.extend(
            f"{site}\t{gateway}\t{_esc(m)}\t{_esc(c)}\t{_ts_text(t)}\t{v!r}\t{_esc(u)}\t{q}\t{seq}\n"
            for m, c, t, v, u, q in zip(meter, channel, ts, value, unit, quality, strict=True)
        )
    return "".join(parts)


def reading_arrays(frames: Iterable[tuple[Frame, list[int] | None]]) -> list[list[object]]:
    """The same rows as column arrays for the unnest INSERT path; pure."""
    cols: list[list[object]] = [[] for _ in range(9)]
    for frame, keep in frames:
        kept = _reading_columns(frame, keep)
        n = len(kept[0])
        cols[0] += [frame.site] * n
        cols[1] += [frame.gateway] * n
        cols[2] += [frame.seq] * n
        kept[3] = [float(v) for v in frame.value] if keep is None else [
            float(frame.value[i]) for i in keep]  # JSON mixes ints and floats; psycopg can't
        for dst, src in zip(cols[3:], kept, strict=True):
            dst += src
    return cols


def event_arrays(frames: Iterable[tuple[BatchFrame, list[int] | None]]) -> list[list[object]]:
    cols: list[list[object]] = [[] for _ in range(10)]
    for frame, keep in frames:
        events = frame.events if keep is None else [frame.events[i] for i in keep]
        for e in events:
            quantity = None if e.quantity is None else float(e.quantity)
            row = (frame.site, frame.gateway, e.asset, e.batch_id, e.product, e.kind,
                   e.ts_ns, quantity, e.unit, frame.seq)
            for dst, v in zip(cols, row, strict=True):
                dst.append(v)
    return cols


def _items(msg: Message) -> int:
    return len(msg) if isinstance(msg, Frame) else len(msg.events)


class Store:
    """The database side of ingest: offsets in, landing transactions out, reconnects."""

    def __init__(self, dsn: str, group: str, *, use_copy: bool = True,
                 connect_timeout_s: float = 5.0) -> None:
        self._dsn = dsn
        self._group = group
        self._use_copy = use_copy
        self._timeout = connect_timeout_s
        self._conn: psycopg.Connection | None = None

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self._dsn, autocommit=False, timeout_s=self._timeout)
            if self._use_copy:
                self._conn.execute(_STAGE)
                self._conn.commit()
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def load_offsets(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """Stored next offsets of these partitions (absent: never landed anything)."""
        conn = self._connection()
        with conn.transaction():
            stored = read_offsets(conn, self._group, tps)
        conn.commit()
        return stored

    def land(self, accepted: Sequence[Accepted], offsets: dict[TopicPartition, int],
             on_conflicts: Callable[[list[Conflict]], None] | None = None,
             on_new: Callable[[list[Accepted]], None] | None = None) -> LandResult:
        """Land one batch and its offsets in one transaction. psycopg errors propagate.

        ``on_conflicts`` gets the batch's conflicts, ``on_new`` the frames new to the
        ledger (the envelope archive), both before the commit; if one raises, nothing
        commits.
        """
        conn = self._connection()
        try:
            with conn.transaction():
                result = self._land(conn, accepted, offsets)
                if result.conflicts and on_conflicts is not None:
                    on_conflicts(result.conflicts)
                if result.new and on_new is not None:
                    on_new(result.new)
        finally:
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.rollback()
        conn.commit()
        return result

    def _land(self, conn: psycopg.Connection, accepted: Sequence[Accepted],
              offsets: dict[TopicPartition, int]) -> LandResult:
        result = LandResult()
        replayed = self._replays(conn, accepted)
        new, result.conflicts = self._new_frames(
            conn, [a for a in accepted if id(a) not in replayed])
        result.conflicts += list(replayed.values())
        result.new = new
        result.frames = len(new)
        result.duplicates = len(accepted) - len(new) - len(result.conflicts)
        frames = [(a.message, a.keep) for a in new if isinstance(a.message, Frame)]
        batches = [(a.message, a.keep) for a in new if isinstance(a.message, BatchFrame)]
        if frames:
            result.readings, clashes = self._land_readings(conn, frames)
            result.conflicts += _reading_conflicts(clashes, new)
        result.tally(new, accepted)
        if batches:
            cur = conn.execute(_EVENTS, event_arrays(batches))
            result.events = cur.rowcount
        if new:
            keys = [[a.message.gateway for a in new], [a.message.stream for a in new],
                    [a.message.seq for a in new]]
            result.seq_state = conn.execute(_SEQ, keys).fetchall()
        save_offsets(conn, self._group, offsets)
        return result

    def _new_frames(self, conn: psycopg.Connection, accepted: Sequence[Accepted]
                    ) -> tuple[list[Accepted], list[Conflict]]:
        """Frames new to the ledger (now recorded), and the sequence conflicts among the rest."""
        unique: dict[FrameKey, Accepted] = {}
        for a in accepted:
            unique.setdefault(frame_key(a), a)
        if not unique:
            return [], []
        rows = list(unique.values())
        params = [
            [a.message.gateway for a in rows], [a.message.stream for a in rows],
            [a.message.seq for a in rows], [a.message.site for a in rows],
            [_items(a.message) if a.keep is None else len(a.keep) for a in rows],
            [0 if a.keep is None else _items(a.message) - len(a.keep) for a in rows],
            [a.topic for a in rows], [a.partition for a in rows], [a.offset for a in rows],
            [a.digest for a in rows],
        ]
        fresh: set[FrameKey] = {(g, s, q) for g, s, q in conn.execute(_FRAMES, params)}
        new = [a for k, a in unique.items() if k in fresh]
        if len(new) == len(accepted):
            return new, []  # the usual case: no key seen before, nothing to compare
        return new, self._conflicts(conn, accepted, unique, fresh)

    def _conflicts(self, conn: psycopg.Connection, accepted: Sequence[Accepted],
                   unique: dict[FrameKey, Accepted], fresh: set[FrameKey]) -> list[Conflict]:
        """Frames not landed whose body differs from the one holding their key."""
        hits = [k for k in unique if k not in fresh]
        holder: dict[FrameKey, tuple[bytes | None, str]] = {}
        if hits:
            keys = [[k[0] for k in hits], [k[1] for k in hits], [k[2] for k in hits]]
            for g, s, q, digest, topic, part, off in conn.execute(_STORED, keys):
                holder[(g, s, q)] = (digest, f"{topic}/{part}@{off}")
        for k in fresh:  # landed by this batch: a later copy in it compares with that one
            a = unique[k]
            holder[k] = (a.digest, f"{a.topic}/{a.partition}@{a.offset}")
        conflicts: list[Conflict] = []
        for a in accepted:
            k = frame_key(a)
            if k in fresh and unique[k] is a:
                continue
            stored, where = holder.get(k, (None, "?"))
            if stored is not None and a.digest is not None and a.digest != stored:
                conflicts.append(Conflict(a, stored, where))
        return conflicts

    def _replays(self, conn: psycopg.Connection, accepted: Sequence[Accepted]
                 ) -> dict[int, Conflict]:
        """Messages whose signed body a ledger reset retired (by id of the Accepted)."""
        digests = list({a.digest for a in accepted if a.digest is not None})
        if not digests:
            return {}
        retired = {bytes(d): (g, e) for d, g, e in conn.execute(_RETIRED, (digests,))}
        out: dict[int, Conflict] = {}
        for a in accepted:
            hit = retired.get(a.digest or b"")
            if hit is not None:
                g, s, q = frame_key(a)
                out[id(a)] = Conflict(a, a.digest or b"", "retired_frame", "replayed", (
                    f"replayed: gateway {g} stream {s} seq {q} landed before the ledger reset "
                    f"that started epoch {hit[1]} of gateway {hit[0]}; the same signed bytes "
                    "never land again (a captured frame sent again, or a re-drive of a frame "
                    "that had landed)"))
        return out

    def _land_readings(self, conn: psycopg.Connection,
                       frames: list[tuple[Frame, list[int] | None]]
                       ) -> tuple[int, list[tuple[object, ...]]]:
        """Rows inserted, and the readings refused because their key holds other data."""
        total = sum(len(f) if keep is None else len(keep) for f, keep in frames)
        if not self._use_copy:
            arrays = reading_arrays(frames)
            inserted = conn.execute(_READINGS_UNNEST, arrays).rowcount
            if inserted == total:
                return inserted, []
            source, params = _UNNESTED, arrays
        else:
            text = copy_text(frames)
            try:
                # Fast path: these frames are new by the ledger, so their readings normally
                # are too; COPY them straight into `reading` inside a savepoint...
                with conn.transaction(), conn.cursor().copy(_COPY_DIRECT) as copy:
                    copy.write(text)
                return total, []
            except psycopg.errors.UniqueViolation:
                # ...and when one is already there, stage them: ON CONFLICT DO NOTHING keeps
                # identical re-sends idempotent, and the others are conflicts (below)
                logger.info("readings already landed in this batch; staging with ON CONFLICT")
            with conn.cursor().copy("COPY stage_reading FROM STDIN") as copy:
                copy.write(text)
            inserted = conn.execute(_FROM_STAGE).rowcount
            source, params = _STAGED, []
        clashes = conn.execute(_CONFLICTING.format(source=source), params or None).fetchall()
        return inserted, clashes


def _reading_conflicts(clashes: list[tuple[object, ...]], new: Sequence[Accepted]
                       ) -> list[Conflict]:
    """One ``reading_conflict`` per frame that brought readings whose key holds other data."""
    by_frame: dict[tuple[object, object], list[tuple[object, ...]]] = {}
    for row in clashes:
        by_frame.setdefault((row[0], row[1]), []).append(row)
    frames = {(a.message.gateway, a.message.seq): a for a in new if isinstance(a.message, Frame)}
    out: list[Conflict] = []
    for (gateway, seq), rows in sorted(by_frame.items(), key=str):
        a = frames[(gateway, seq)]  # type: ignore[index]
        _g, _q, meter, channel, ts, value, unit, r_gw, r_seq, r_value, r_unit = rows[0]
        total = _items(a.message) if a.keep is None else len(a.keep)
        note = (f"reading conflict: gateway {gateway} seq {seq}: {len(rows)} of {total} readings "
                f"have a key (site, meter, channel, ts) already landed with another gateway or "
                f"value, e.g. {meter}/{channel} at {ts}: {value} {unit} here, {r_value} {r_unit} "
                f"from gateway {r_gw} seq {r_seq}; those did not land (the stored rows are "
                "untouched), the frame's other readings did")
        out.append(Conflict(a, a.digest or b"", "reading", "reading_conflict", note,
                            f"{len(rows)}/{_items(a.message)}"))
    return out


def read_offsets(conn: psycopg.Connection, group: str, tps: Iterable[TopicPartition]
                 ) -> dict[TopicPartition, int]:
    """The next offsets ``group`` stored for these partitions (absent: none stored yet).
    Every consumer that keeps its offsets with its results (ingest, compute) reads here."""
    wanted = list(tps)
    rows = conn.execute(
        "SELECT topic, kafka_partition, next_offset FROM consumer_offset "
        "WHERE consumer_group = %s AND topic = ANY(%s)",
        (group, sorted({t for t, _ in wanted})),
    ).fetchall()
    stored = {(t, p): o for t, p, o in rows}
    return {tp: stored[tp] for tp in wanted if tp in stored}


def save_offsets(conn: psycopg.Connection | psycopg.Cursor, group: str,
                 offsets: dict[TopicPartition, int]) -> None:
    """Store ``group``'s next offsets inside the caller's transaction (never moving back)."""
    if offsets:
        tps = sorted(offsets)
        conn.execute(_OFFSETS, (group, [t for t, _ in tps], [p for _, p in tps],
                                [offsets[tp] for tp in tps]))
