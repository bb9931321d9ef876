"""``python -m ingest dlq list|redrive``: the dead-letter topic from the command line.

    python -m ingest dlq list --config server.toml [--reason R] [--gateway G] [--json]
    python -m ingest dlq redrive --config server.toml (--reason R | --gateway G |
                                  --offsets P:O[,P:O...]) [--dry-run]

Exit codes: 0 done; 1 ``redrive`` left some selected records out (truncated, or the
broker refused one: each is named); 2 an ``IngestError`` (config, unknown reason,
offsets not in the DLQ, Kafka not reachable within ``[kafka] connect_timeout_s``).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import orjson

from ingest.config import ServerConfig, load_config
from ingest.errors import IngestError
from ingest.ops_dlq import (
    DEFAULT_IDLE_S,
    KNOWN_REASONS,
    DlqRecord,
    Redriven,
    RedrivePlan,
    Selection,
    check_reason,
    parse_offsets,
    plan_redrive,
    produce,
    read_dlq,
)
from ingest.ops_render import Table, render

DETAIL_CHARS = 160  # per table cell; --json has all of it


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ingest dlq",
                                description="inspect and re-drive the dead-letter topic")
    sub = p.add_subparsers(dest="action", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, required=True, help="server TOML")
    common.add_argument("--idle-s", type=float, default=DEFAULT_IDLE_S,
                        help="read the DLQ until no record came for this long (seconds)")
    common.add_argument("--reason", help=f"one of: {', '.join(KNOWN_REASONS)}")
    common.add_argument("--gateway", help="the pp.gateway header")
    ls = sub.add_parser("list", parents=[common], help="print the dead letters")
    ls.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    rd = sub.add_parser("redrive", parents=[common],
                        help="produce selected dead letters again to their source topic")
    rd.add_argument("--offsets", help="DLQ PARTITION:OFFSET[,...] as dlq list shows them")
    rd.add_argument("--dry-run", action="store_true", help="show what would be re-driven")
    return p


def _selection(args: argparse.Namespace) -> Selection:
    check_reason(args.reason)
    if args.idle_s <= 0:
        raise IngestError(f"--idle-s {args.idle_s}: expected seconds > 0")
    offsets = getattr(args, "offsets", None)
    if args.action == "redrive":
        if offsets is not None and (args.reason or args.gateway):
            raise IngestError("--offsets selects records by itself: drop --reason/--gateway")
        if offsets is None and not (args.reason or args.gateway):
            raise IngestError("redrive needs a selection: --reason R, --gateway G (or both), "
                              "or --offsets P:O[,P:O...]; see dlq list")
    return Selection(args.reason, args.gateway,
                     frozenset(parse_offsets(offsets)) if offsets is not None else None)


def list_dead_letters(cfg: ServerConfig, sel: Selection, idle_s: float, as_json: bool,
                      out: TextIO, err: TextIO) -> int:
    records = read_dlq(cfg.kafka, idle_s, sel)
    counts = Counter(r.reason for r in records)
    summary = _counts_line(cfg, records, counts)
    if as_json:
        for r in records:
            out.write(orjson.dumps(r.as_json()).decode() + "\n")
        err.write(summary + "\n")  # stdout stays pure JSON lines
        return 0
    table = Table(f"dead letters in {cfg.kafka.topic('dlq')}",
                  ("dlq", "reason", "gateway", "source", "detail", "size"),
                  [(r.where, r.reason, r.gateway or "-", r.source, _short(r), _size(r))
                   for r in records])
    by_reason = Table("per reason", ("reason", "count"),
                      [(k, str(n)) for k, n in sorted(counts.items())])
    render([table, by_reason] if records else [], [summary], out)
    return 0


def _counts_line(cfg: ServerConfig, records: Sequence[DlqRecord], counts: Counter[str]) -> str:
    per = ", ".join(f"{k} {n}" for k, n in sorted(counts.items()))
    return f"{len(records)} dead letter(s) in {cfg.kafka.topic('dlq')}" + (
        f": {per}" if per else "")


def _short(r: DlqRecord) -> str:
    detail = r.headers.get("pp.detail", "")
    rejected = r.headers.get("pp.rejected")
    text = f"[{rejected} items cut] {detail}" if rejected else detail
    return text if len(text) <= DETAIL_CHARS else text[: DETAIL_CHARS - 1] + "…"


def _size(r: DlqRecord) -> str:
    cut = r.truncated_from
    return f"{r.size} (truncated from {cut})" if cut is not None else str(r.size)


def redrive(cfg: ServerConfig, sel: Selection, idle_s: float, dry_run: bool,
            out: TextIO) -> int:
    records = read_dlq(cfg.kafka, idle_s, sel, keep_values=True)
    missing = sel.missing(records)
    if missing:
        raise IngestError(f"not in {cfg.kafka.topic('dlq')}: {', '.join(missing)} "
                          "(PARTITION:OFFSET of the DLQ, see dlq list); nothing re-driven")
    if not records:
        render([], [f"no dead letters in {cfg.kafka.topic('dlq')} match; nothing re-driven"],
               out)
        return 0
    plan = plan_redrive(records, {cfg.kafka.topic("readings"), cfg.kafka.topic("batches")})
    done = [Redriven(r) for r in plan.send] if dry_run else produce(cfg.kafka, plan.send)
    render(_redrive_tables(done, plan, dry_run), _redrive_notes(done, plan, dry_run), out)
    failed = [d for d in done if d.error is not None]
    return 1 if plan.refused or failed else 0


def _redrive_tables(done: list[Redriven], plan: RedrivePlan, dry_run: bool) -> list[Table]:
    verb = "would re-drive (dry run)" if dry_run else "re-driven"
    rows = [(d.record.where, d.record.reason, d.record.gateway or "-", d.record.source,
             _target(d, dry_run)) for d in done]
    tables = [Table(verb, ("dlq", "reason", "gateway", "source", "to"), rows)] if rows else []
    left = [(r.where, r.reason, r.gateway or "-", why) for r, why in plan.refused]
    left += [(dup.where, dup.reason, dup.gateway or "-",
              f"same message as {first.where}: sent once") for dup, first in plan.duplicates]
    if left:
        tables.append(Table("not re-driven", ("dlq", "reason", "gateway", "why"), left))
    return tables


def _target(d: Redriven, dry_run: bool) -> str:
    topic = d.record.source_topic or "?"
    if dry_run:
        return topic
    if d.error is not None:
        return f"FAILED: {d.error}"
    return f"{topic}/{d.partition}@{d.offset}"


def _redrive_notes(done: list[Redriven], plan: RedrivePlan, dry_run: bool) -> list[str]:
    ok = sum(d.error is None for d in done)
    truncated = sum(r.truncated_from is not None for r, _ in plan.refused)
    notes = [f"{'would re-drive' if dry_run else 're-drove'} {ok} record(s); "
             f"{len(plan.refused)} refused ({truncated} truncated: their original bytes are "
             f"gone and truncated records are never re-driven); {len(plan.duplicates)} "
             "duplicate(s) sent once"]
    if dry_run:
        notes.append("dry run: nothing was produced")
    elif ok:
        notes.append("ingest checks them again and dedups by (gateway, stream, seq): "
                     "re-driving the same records again lands nothing twice")
    failed = len(done) - ok
    if failed:
        notes.append(f"{failed} record(s) FAILED to produce (see above): run again")
    return notes


def main(argv: Sequence[str] | None = None, out: TextIO | None = None,
         err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    args = _parser().parse_args(argv)
    try:
        sel = _selection(args)
        cfg = load_config(args.config)
        if args.action == "list":
            return list_dead_letters(cfg, sel, args.idle_s, args.json, out, err)
        return redrive(cfg, sel, args.idle_s, args.dry_run, out)
    except IngestError as exc:
        err.write(f"python -m ingest dlq {args.action}: error: {exc}\n")
        return 2
