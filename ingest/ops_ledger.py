"""``python -m ingest ledger reset``: forget a gateway's frame ledger, with an export.

    python -m ingest ledger reset --config server.toml --gateway G --export FILE
                                  [--stream readings|batches] [--dsn OWNER_DSN]

After a gateway's sequence restarted under the same id (new spool), its frames
are ``seq_conflict`` dead letters until its rows in ``ingested_frame`` and
``gateway_seq`` are gone. This command deletes them in ONE transaction that
also writes them to FILE (JSON lines: a header line with when, who, gateway
and counts, then one line per deleted row), fsyncs FILE and only then commits:
the file holds exactly the rows deleted, or nothing is deleted and no file is
left. It refuses without ``--export`` and never overwrites a file. ``reading``
and ``batch_event`` rows already landed are kept.

The transaction is REPEATABLE READ: rows counted, exported and deleted come
from one snapshot, and a concurrent change to them (ingest landing frames of
the gateway meanwhile) aborts the reset instead of deleting unexported rows.

Role: the writer role (``plantprint_writer``, migration 0002) has no DELETE on
either table, so this runs as the database owner: ``--dsn``, else the
environment variable ``PLANTPRINT_DSN``, else ``[database] dsn`` of ``--config``.
"""

from __future__ import annotations

import argparse
import getpass
import os
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any, TextIO

import orjson
import psycopg
from psycopg.rows import dict_row

from ingest.config import load_config
from ingest.db import connect, describe_dsn
from ingest.errors import IngestError
from ingest.ops_render import Table, render

_WHERE = "gateway = %(gw)s AND (%(stream)s::text IS NULL OR stream = %(stream)s)"
# every column, as JSON-friendly values (multirange as text, digest as hex)
_DELETE = {
    "gateway_seq": "DELETE FROM gateway_seq WHERE " + _WHERE + " RETURNING gateway, stream, "
                   "first_seq, highest_seq, frames, missing::text AS missing, missing_count, "
                   "updated_at",
    # each deleted frame's body digest is retired (migration 0010): those bytes never land
    # again, so a captured frame replayed after the reset cannot take a new frame's seq
    "ingested_frame": "WITH d AS (DELETE FROM ingested_frame WHERE " + _WHERE + " RETURNING *), "
                      "r AS (INSERT INTO retired_frame (gateway, stream, seq, epoch, body_sha256) "
                      "SELECT gateway, stream, seq, %(epoch)s, body_sha256 FROM d "
                      "WHERE body_sha256 IS NOT NULL) "
                      "SELECT gateway, stream, seq, site, items, rejected, topic, "
                      "kafka_partition, kafka_offset, received_at, "
                      "encode(body_sha256, 'hex') AS body_sha256 FROM d",
}
_FORGET_COMPUTE = "DELETE FROM compute_frame WHERE " + _WHERE
_EPOCH = "SELECT coalesce(max(epoch), 0) + 1 FROM gateway_epoch WHERE gateway = %(gw)s"
_NEW_EPOCH = """INSERT INTO gateway_epoch (gateway, epoch, stream, frames_retired, export_file)
VALUES (%(gw)s, %(epoch)s, %(stream)s, %(frames)s, %(export)s)"""
KEPT = ("reading and batch_event rows already landed are kept (not touched): a re-driven "
        "frame adds only the rows not already there (their primary keys)")


@dataclass(frozen=True, slots=True)
class ResetResult:
    header: dict[str, Any]
    gateway_seq: list[dict[str, Any]]  # the deleted rows (one per stream at most)


def reset_ledger(dsn: str, gateway: str, export: Path, stream: str | None = None,
                 timeout_s: float = 5.0) -> ResetResult:
    """Export and delete the gateway's ledger rows in one transaction (see the module)."""
    if export.exists():
        raise IngestError(f"--export {export} exists: refusing to overwrite an export "
                          "(choose a new file name)")
    try:
        conn = connect(dsn, autocommit=False, timeout_s=timeout_s)
    except psycopg.OperationalError as exc:
        raise IngestError(f"database {describe_dsn(dsn)} is not reachable: {exc}") from exc
    try:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        return _reset(conn, dsn, gateway, export, stream)
    except psycopg.errors.SerializationFailure as exc:
        raise IngestError(f"the ledger of gateway {gateway} changed during the reset (ingest "
                          "landed frames of it): stop that gateway and run again; nothing "
                          "was deleted") from exc
    except psycopg.Error as exc:
        raise IngestError(f"database {describe_dsn(dsn)}: {exc}; nothing was deleted") from exc
    finally:
        conn.close()  # without a commit, everything is rolled back


def _reset(conn: psycopg.Connection, dsn: str, gateway: str, export: Path,
           stream: str | None) -> ResetResult:
    params: dict[str, Any] = {"gw": gateway, "stream": stream, "export": str(export)}
    who, session_user, when, may_delete = _identity(conn)
    if not may_delete:
        raise IngestError(f"database role {who} may not DELETE from ingested_frame, "
                          "gateway_seq and compute_frame (plantprint_writer has no DELETE): "
                          "run ledger reset as "
                          "the database owner (--dsn or PLANTPRINT_DSN); nothing was deleted")
    streams, seq_rows = _counts(conn, params)
    if not streams and not seq_rows:
        raise IngestError(_no_such_gateway(conn, gateway, stream, dsn))
    row = conn.execute(_EPOCH, params).fetchone()
    params["epoch"] = int(row[0]) if row else 1
    header = {
        "kind": "plantprint ledger reset", "when": when, "who": who, "epoch": params["epoch"],
        "session_user": session_user, "os_user": _os_user(), "host": socket.gethostname(),
        "database": describe_dsn(dsn), "gateway": gateway, "stream": stream,
        "counts": {"ingested_frame": sum(s["frames"] for s in streams.values()),
                   "gateway_seq": seq_rows},
        "streams": streams, "kept": KEPT,
    }
    try:
        f = export.open("xb")  # "x": a file created meanwhile is not overwritten either
    except OSError as exc:
        raise IngestError(f"--export {export}: cannot create it ({exc}); nothing was "
                          "deleted") from exc
    with f:
        try:
            deleted_seq = _export_and_delete(conn, f, header, params)
            conn.commit()
        except BaseException as exc:
            f.close()
            export.unlink(missing_ok=True)  # rolled back: no file claims a deletion
            if isinstance(exc, OSError):
                raise IngestError(f"--export {export}: {exc}; nothing was deleted") from exc
            raise
    return ResetResult(header, deleted_seq)


def _identity(conn: psycopg.Connection) -> tuple[str, str, datetime, bool]:
    row = conn.execute(
        "SELECT current_user::text, session_user::text, now(), "
        "has_table_privilege('ingested_frame', 'DELETE') "
        "AND has_table_privilege('gateway_seq', 'DELETE') "
        "AND has_table_privilege('compute_frame', 'DELETE')").fetchone()
    assert row is not None
    return row[0], row[1], row[2], bool(row[3])


def _counts(conn: psycopg.Connection, params: dict[str, Any]) -> tuple[
    dict[str, dict[str, int]], int
]:
    streams = {
        s: {"frames": n, "first_seq": lo, "last_seq": hi}
        for s, n, lo, hi in conn.execute(
            "SELECT stream, count(*), min(seq), max(seq) FROM ingested_frame WHERE "
            + _WHERE + " GROUP BY stream ORDER BY stream", params).fetchall()
    }
    row = conn.execute("SELECT count(*) FROM gateway_seq WHERE " + _WHERE, params).fetchone()
    return streams, int(row[0]) if row else 0


def _no_such_gateway(conn: psycopg.Connection, gateway: str, stream: str | None,
                     dsn: str) -> str:
    known = [r[0] for r in conn.execute(
        "SELECT DISTINCT gateway FROM gateway_seq ORDER BY 1 LIMIT 50").fetchall()]
    what = f"gateway {gateway!r}" + (f" stream {stream}" if stream else "")
    return (f"no such gateway in the ledger: {what} has no rows in ingested_frame or "
            f"gateway_seq of {describe_dsn(dsn)}; gateways in the ledger: "
            f"{', '.join(known) if known else 'none'}")


def _export_and_delete(conn: psycopg.Connection, f: IO[bytes], header: dict[str, Any],
                       params: dict[str, Any]) -> list[dict[str, Any]]:
    f.write(orjson.dumps(header) + b"\n")
    deleted: dict[str, int] = {}
    seq_rows: list[dict[str, Any]] = []
    cur = conn.cursor(row_factory=dict_row)
    for table, sql in _DELETE.items():
        deleted[table] = 0
        for row in cur.stream(sql, params):  # row by row: a ledger may hold millions
            f.write(orjson.dumps({"table": table, "row": row}) + b"\n")
            deleted[table] += 1
            if table == "gateway_seq":
                seq_rows.append(row)
    if deleted != header["counts"]:  # one snapshot makes this impossible; never commit if so
        raise IngestError(f"deleted {deleted} but counted {header['counts']}; rolled back")
    conn.execute(_NEW_EPOCH, {**params, "frames": deleted["ingested_frame"]})
    # compute keeps its own ledger of the frames it used (migration 0009): the new epoch's
    # frames re-use the sequence numbers, so compute forgets the old ones too; their
    # bodies are retired above, so a replay is refused by compute as by ingest
    conn.execute(_FORGET_COMPUTE, params)
    f.flush()
    os.fsync(f.fileno())  # the export is on disk before the rows are gone
    return seq_rows


def _os_user() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        return None


# ------------------------------------------------------------------ command line
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ingest ledger",
                                description="operator commands on the frame ledger")
    sub = p.add_subparsers(dest="action", required=True)
    r = sub.add_parser("reset", help="export and delete a gateway's ledger rows")
    r.add_argument("--config", type=Path, help="server TOML ([database] dsn if no --dsn)")
    r.add_argument("--dsn", help="the database owner's DSN (the writer may not DELETE)")
    r.add_argument("--gateway", required=True)
    r.add_argument("--stream", choices=("readings", "batches"), help="default: both")
    r.add_argument("--export", type=Path, help="new file for the deleted rows (JSON lines)")
    return p


def _dsn_and_timeout(args: argparse.Namespace) -> tuple[str, float]:
    cfg = load_config(args.config) if args.config else None
    timeout = cfg.database.connect_timeout_s if cfg else 5.0
    if args.dsn:
        return str(args.dsn), timeout
    if os.environ.get("PLANTPRINT_DSN"):
        return os.environ["PLANTPRINT_DSN"], timeout
    if cfg is not None:
        return cfg.database.dsn.get_secret_value(), timeout
    raise IngestError("no database: pass --dsn, --config or set PLANTPRINT_DSN")


def report(result: ResetResult, export: Path, out: TextIO) -> None:
    h = result.header
    rows = [(s, str(v["frames"]), f"{v['first_seq']}..{v['last_seq']}")
            for s, v in h["streams"].items()]
    seq = [(r["stream"], str(r["first_seq"]), str(r["highest_seq"]), str(r["frames"]),
            str(r["missing_count"])) for r in result.gateway_seq]
    render([
        Table(f"ingested_frame rows deleted, gateway {h['gateway']}",
              ("stream", "frames", "seq"), rows),
        Table("gateway_seq rows deleted",
              ("stream", "first_seq", "highest_seq", "frames", "missing_count"), seq),
    ], [
        f"ledger of gateway {h['gateway']} ({h['stream'] or 'all streams'}) reset in "
        f"{h['database']} as {h['who']} at {h['when'].isoformat()}",
        f"exported {h['counts']['ingested_frame']} ingested_frame and "
        f"{h['counts']['gateway_seq']} gateway_seq row(s) to {export} (JSON lines; the first "
        "line is the header)",
        f"epoch {h['epoch']} of gateway {h['gateway']} started: the deleted frames' bodies are "
        "retired (retired_frame); sent again they are dead-lettered as replayed",
        KEPT,
        "next: python -m ingest dlq redrive --config <server.toml> --gateway "
        f"{h['gateway']} --reason seq_conflict",
    ], out)


def main(argv: Sequence[str] | None = None, out: TextIO | None = None,
         err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    args = _parser().parse_args(argv)
    try:
        if args.export is None:
            raise IngestError("refusing to reset without --export FILE: an auditor needs the "
                              "provenance of the deleted rows")
        dsn, timeout = _dsn_and_timeout(args)
        result = reset_ledger(dsn, args.gateway, args.export, args.stream, timeout)
    except IngestError as exc:
        err.write(f"python -m ingest ledger {args.action}: error: {exc}\n")
        return 2
    report(result, args.export, out)
    return 0
