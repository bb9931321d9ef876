"""What the demo prints: what landed, sequence health, and the simulator's ground truth.

Batch footprints computed from the measured data arrive with ``compute/``; until
then the report shows the landed counters next to the true per-batch energy, so
a reader can see what the next stage will be held to.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

# units of cumulative counters (energy, gas/steam volume or mass, CO2 mass)
COUNTER_UNITS = ("kWh", "Wh", "MWh", "Nm3", "m3", "t", "kg", "kgCO2")

COUNTERS_SQL = """
SELECT meter, channel, unit, count(*) AS n,
       (array_agg(value ORDER BY ts ASC))[1]  AS first_value,
       (array_agg(value ORDER BY ts DESC))[1] AS last_value,
       min(ts) AS first_ts, max(ts) AS last_ts
FROM reading
WHERE unit = ANY(%s)
GROUP BY meter, channel, unit
ORDER BY meter, channel
"""


def _rows(dsn: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, params).fetchall()


def landed_counters(console: Console, dsn: str) -> None:
    table = Table(title="landed counter channels (raw; unwrapping and allocation are compute's)")
    for col in ("meter", "channel", "readings", "first", "last", "span", "unit"):
        table.add_column(col, justify="right" if col in ("readings", "first", "last", "span")
                         else "left")
    for meter, channel, unit, n, first, last, _t0, _t1 in _rows(
        dsn, COUNTERS_SQL, (list(COUNTER_UNITS),)
    ):
        table.add_row(meter, channel, f"{n:,}", f"{first:,.3f}", f"{last:,.3f}",
                      f"{last - first:,.3f}", unit)
    console.print(table)


def sequence_health(console: Console, dsn: str) -> None:
    table = Table(title="frames per gateway and stream")
    for col in ("gateway", "stream", "frames", "first seq", "highest seq", "missing"):
        table.add_column(col)
    for row in _rows(dsn, "SELECT gateway, stream, frames, first_seq, highest_seq, "
                          "missing_count FROM gateway_seq ORDER BY gateway, stream"):
        table.add_row(*(f"{v:,}" if isinstance(v, int) else str(v) for v in row))
    events = _rows(dsn, "SELECT kind, count(*) FROM batch_event GROUP BY kind ORDER BY kind")
    console.print(table)
    console.print("batch events landed: "
                  + (", ".join(f"{k} {n}" for k, n in events) if events else "none"))


def ground_truth(console: Console, truth: Path) -> None:
    lines = [orjson.loads(line) for line in truth.read_bytes().splitlines() if line.strip()]
    header = next(r for r in lines if r["type"] == "header")
    summary = next((r for r in lines if r["type"] == "summary"), None)
    if summary is None:
        console.print("[yellow]ground truth has no summary line (simulator stopped early)[/]")
        return
    units: dict[str, str] = {}
    for meter in header["meters"]:
        units.setdefault(meter["carrier"], meter["unit"])
    carriers = sorted({c for b in summary["batches"].values() for c in b["carriers"]})
    table = Table(title=f"ground truth per batch (simulator, {header['scenario']}, "
                        f"seed {header['seed']})")
    for col in ("batch", "product", "asset", *[f"{c} ({units.get(c, '')})" for c in carriers],
                "CO2 by carbon meter (kg)"):
        table.add_column(col, no_wrap=True)
    for batch in header["batches"]:
        truth_b = summary["batches"].get(batch["id"], {"carriers": {}, "co2": 0.0})
        table.add_row(batch["id"], batch["product"], batch["asset"],
                      *[f"{truth_b['carriers'].get(c, 0.0):,.3f}" for c in carriers],
                      f"{truth_b.get('co2', 0.0):,.3f}")
    console.print(table)


def print_report(console: Console, dsn: str, truth: Path) -> None:
    landed_counters(console, dsn)
    sequence_health(console, dsn)
    ground_truth(console, truth)
    console.print(
        "[dim]Next, compute's batch footprints from the measured data (interval energy, "
        "allocation, emission factors), graded against the ground truth above.[/]"
    )
