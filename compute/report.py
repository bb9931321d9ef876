"""``python -m compute footprints``: batch footprints as an energy manager reads them.

Read back from the database (``batch_footprint``): the newest revision of each
batch, or every revision of one batch, as a table or as JSON. The JSON rows are
what the demo writes to ``demo-out/footprints.json``.
"""

from __future__ import annotations

import sys
from datetime import datetime
from typing import Any

import orjson
import psycopg

from ingest.db import connect, describe_dsn
from ingest.ops_render import Table, render

PROG = "python -m compute footprints"

_COLS = """batch_id, revision, status, product, asset, start_ts, end_ts, quantity, unit,
    declared_units, energy, energy_unit, uncertainty, kgco2e_location, kgco2e_market,
    kgco2e_uncertainty, per_unit_location, per_unit_market, primary_data_share, flags,
    factor_ids, detail, inputs_sha256, site"""


def _iso(v: datetime | None) -> str | None:
    return None if v is None else v.isoformat().replace("+00:00", "Z")


def footprint_rows(dsn: str, batch: str | None = None, site: str | None = None
                   ) -> list[dict[str, Any]]:
    """Newest revision per batch (or every revision of ``batch``), as plain dicts."""
    if batch is not None:
        sql, params = (f"SELECT {_COLS} FROM batch_footprint WHERE batch_id = %s "
                       f"ORDER BY site, revision"), [batch]
    else:
        sql, params = f"SELECT {_COLS} FROM batch_footprint_latest", []
    if site is not None:
        sql = sql.replace("WHERE", "WHERE site = %s AND") if "WHERE" in sql else \
            sql + " WHERE site = %s"
        params = [site, *params] if batch is not None else [site]
    sql += "" if "ORDER BY" in sql else " ORDER BY site, start_ts, batch_id"
    with connect(dsn) as conn:
        cur = conn.execute(sql, params)
        names = [d.name for d in cur.description or []]
        rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    for r in rows:
        r["start_ts"], r["end_ts"] = _iso(r["start_ts"]), _iso(r["end_ts"])
    return rows


def demo_shape(row: dict[str, Any]) -> dict[str, Any]:
    """The row as ``demo-out/footprints.json`` carries it (alike with the ground truth)."""
    return {"batch_id": row["batch_id"], "product": row["product"], "energy": row["energy"],
            "status": row["status"], "revision": row["revision"],
            "kgco2e_location": row["kgco2e_location"], "kgco2e_market": row["kgco2e_market"],
            "primary_data_share": row["primary_data_share"],
            "uncertainty": row["uncertainty"], "flags": row["flags"]}


def print_footprints(dsn: str, batch: str | None, as_json: bool) -> int:
    """Print the footprints; exit code 0, or 2 with one line when the database cannot
    answer (unreachable, or not migrated to compute's tables)."""
    try:
        rows = footprint_rows(dsn, batch)
    except psycopg.OperationalError as exc:
        print(f"{PROG}: error: cannot reach the database {describe_dsn(dsn)}: "
              f"{str(exc).strip().splitlines()[0]}", file=sys.stderr)
        return 2
    except psycopg.errors.UndefinedTable:
        print(f"{PROG}: error: {describe_dsn(dsn)} has no batch_footprint table: run "
              "`python -m ingest migrate` (as the database owner) first", file=sys.stderr)
        return 2
    if as_json:
        sys.stdout.buffer.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2) + b"\n")
        return 0
    title = ("batch footprints (newest revision)" if batch is None else
             f"batch {batch}: every revision")
    columns = ("batch", "rev", "status", "product", "energy", "± (k=2)", "kgCO2e loc",
               "kgCO2e mkt", "loc per unit", "primary", "flags")
    cells = []
    for r in rows:
        energy = ", ".join(f"{v:.3f} {r['energy_unit'].get(c, '')}" for c, v in
                           sorted(r["energy"].items()))
        unc = ", ".join(f"{v:.3f} {r['energy_unit'].get(c, '')}" for c, v in
                        sorted(r["uncertainty"].items()))
        per_unit = "" if r["per_unit_location"] is None else f"{r['per_unit_location']:.4f}"
        cells.append((r["batch_id"], str(r["revision"]), r["status"], r["product"], energy,
                      unc, f"{r['kgco2e_location']:.2f}", f"{r['kgco2e_market']:.2f}",
                      per_unit, f"{r['primary_data_share']:.1%}", ", ".join(r["flags"])))
    # plain text, 200 columns when piped (rich would wrap at 80), as the other commands
    render([Table(title, columns, cells)], [], sys.stdout)
    if not rows:
        print("no footprints yet", file=sys.stderr)
    return 0
