"""``python -m compute factors list|add``: the emission factor table for operators.

    factors list [--carrier C] [--region R] [--kind K]
    factors add --carrier electricity --region cement-works --from 2025-01-01 \\
        --to 2025-12-31 --value 0 --unit kgCO2/kWh --kind market \\
        --source "PPA with …" --publication "contract no. …, 2024-12-01" [--note …]

``add`` appends a row (rows are never changed: ``--supersedes ID`` names the row
a correction replaces). A site's own contractual factor (certificate, PPA,
supplier) is filed under the site id as region, kind ``market``. Exit codes:
0 done, 2 refused (bad arguments, a row the database refuses, no database).
"""

from __future__ import annotations

import argparse
import sys
from datetime import date
from typing import Any, TextIO

import psycopg

from compute.errors import FactorError
from compute.factors import FactorRow, add_factor, load_factors
from ingest.db import connect, describe_dsn
from ingest.ops_render import Table, render

PROG = "python -m compute factors"
COLUMNS = ("id", "carrier", "region", "period", "value", "unit", "kind", "source")


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Emission factors (append-only).")
    sub = p.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list", help="print the factor rows")
    ls.add_argument("--carrier")
    ls.add_argument("--region")
    ls.add_argument("--kind", choices=("location", "market", "life_cycle"))
    add = sub.add_parser("add", help="append a factor row (certificate, PPA, supplier …)")
    add.add_argument("--carrier", required=True, help="electricity | natural_gas | steam | heat")
    add.add_argument("--region", required=True, help="grid region (CN-North …) or a site id")
    add.add_argument("--from", dest="period_start", type=_day, required=True,
                     help="first day of the period the figure describes")
    add.add_argument("--to", dest="period_end", type=_day, required=True,
                     help="last day of that period (inclusive)")
    add.add_argument("--value", type=float, required=True)
    add.add_argument("--unit", required=True, help="kgCO2/kWh, kgCO2e/kWh, kgCO2/Nm3 …")
    add.add_argument("--kind", required=True, choices=("location", "market", "life_cycle"))
    add.add_argument("--source", required=True, help="publisher and document title")
    add.add_argument("--publication", required=True, help="document number, date, table")
    add.add_argument("--note", help="assumptions, what is not confirmed")
    add.add_argument("--variant", choices=("average", "default", "contract", "supplier"),
                     help="default: contract for market rows, else average")
    add.add_argument("--valid-from", type=_day, help="first accounting day (default: --from)")
    add.add_argument("--valid-to", type=_day, help="last accounting day (default: open)")
    add.add_argument("--supersedes", type=int, help="id of the row this one corrects")
    return p


def _cells(r: FactorRow) -> tuple[str, ...]:
    end = "open" if r.period_end.year == 9999 else r.period_end.isoformat()
    return (str(r.id), r.carrier, r.region, f"{r.period_start.isoformat()} .. {end}",
            f"{r.value:.6g}", r.unit, r.kind if r.variant in ("average", "default")
            else f"{r.kind} ({r.variant})", r.source)


def _list(conn: psycopg.Connection[Any], args: argparse.Namespace, out: TextIO) -> None:
    rows = [r for r in load_factors(conn)
            if (args.carrier in (None, r.carrier) and args.region in (None, r.region)
                and args.kind in (None, r.kind))]
    superseded = {r.supersedes for r in rows if r.supersedes is not None}
    notes = [f"row {r.id}: superseded by a newer row" for r in rows if r.id in superseded]
    render([Table(f"emission factors ({len(rows)})", COLUMNS, [_cells(r) for r in rows])],
           notes, out)


def _add(conn: psycopg.Connection[Any], args: argparse.Namespace, out: TextIO) -> None:
    row = add_factor(
        conn, carrier=args.carrier, region=args.region, period_start=args.period_start,
        period_end=args.period_end, value=args.value, unit=args.unit, kind=args.kind,
        source=args.source, publication=args.publication, note=args.note,
        variant=args.variant, valid_from=args.valid_from, valid_to=args.valid_to,
        supersedes=args.supersedes)
    render([Table("added", COLUMNS, [_cells(row)])], [], out)


def factors_main(argv: list[str], dsn: str, out: TextIO | None = None) -> int:
    """Run ``factors list|add`` against the database at ``dsn``; returns the exit code."""
    out = out or sys.stdout
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse has printed its usage message
        return exc.code if isinstance(exc.code, int) else 2
    try:
        with connect(dsn) as conn:
            (_list if args.command == "list" else _add)(conn, args, out)
    except FactorError as exc:
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except psycopg.OperationalError as exc:
        print(f"{PROG} {args.command}: error: cannot reach the database "
              f"{describe_dsn(dsn)}: {exc}", file=sys.stderr)
        return 2
    except psycopg.errors.UndefinedTable:
        print(f"{PROG} {args.command}: error: {describe_dsn(dsn)} has no emission_factor "
              "table: run `python -m ingest migrate` (as the database owner) first",
              file=sys.stderr)
        return 2
    return 0
