"""The demo's verdict: each batch's footprint from the measured data beside the ground truth.

compute never reads the simulator's ground truth; the demo does, to grade it.
``demo-out/footprints.json`` (read back from the database) and
``demo-out/ground_truth.json`` are JSON lists of batches shaped alike:
``batch_id``, ``product``, ``energy`` (carrier → amount in the carrier's unit)
and, in footprints, also ``status``, ``kgco2e_location``, ``kgco2e_market``,
``primary_data_share``, ``uncertainty`` (carrier → amount, expanded, k = 2).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from compute.report import demo_shape, footprint_rows


def truth_batches(truth: Path) -> list[dict[str, Any]]:
    """The ground truth's batches that ran, in the footprints' shape."""
    lines = [orjson.loads(line) for line in truth.read_bytes().splitlines() if line.strip()]
    header = next(r for r in lines if r["type"] == "header")
    summary = next((r for r in lines if r["type"] == "summary"), None)
    done = summary["batches"] if summary else {}
    ended = {r["batch"] for r in lines if r["type"] == "event" and r["kind"] == "batch_end"}
    return [{"batch_id": b["id"], "product": b["product"],
             "energy": done.get(b["id"], {}).get("carriers", {}),
             "co2_carbon_meters": done.get(b["id"], {}).get("co2"),
             "ended": b["id"] in ended}
            for b in header["batches"] if b["id"] in done]


def wait_for_finals(dsn: str, truth: Path, check_alive: Callable[[], None],
                    timeout_s: float = 120.0) -> list[dict[str, Any]]:
    """Until every batch that ended in the run has a final (or revised) footprint."""
    wanted = {b["batch_id"] for b in truth_batches(truth) if b["ended"]}
    deadline = time.monotonic() + timeout_s
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        check_alive()
        rows = footprint_rows(dsn)
        final = {r["batch_id"] for r in rows if r["status"] != "provisional"}
        if wanted <= final:
            break
        time.sleep(1.0)
    return rows


def _error(ours: float, truth: float) -> float:
    return (ours - truth) / truth if truth else (0.0 if ours == 0 else float("inf"))


def report_footprints(console: Console, dsn: str, truth: Path, out: Path) -> None:
    rows = [demo_shape(r) for r in footprint_rows(dsn)]
    true = truth_batches(truth)
    out.mkdir(parents=True, exist_ok=True)
    (out / "footprints.json").write_bytes(orjson.dumps(rows, option=orjson.OPT_INDENT_2))
    (out / "ground_truth.json").write_bytes(orjson.dumps(
        [{k: v for k, v in t.items() if k in ("batch_id", "product", "energy")} for t in true],
        option=orjson.OPT_INDENT_2))
    ours = {r["batch_id"]: r for r in rows}
    table = Table(title="batch footprints from the meters (compute) beside the ground truth")
    for col in ("batch", "status", "carrier", "computed", "truth", "error", "± (k=2)",
                "inside", "kgCO2e loc", "kgCO2e mkt", "primary"):
        table.add_column(col, justify="left" if col in ("batch", "status", "carrier")
                         else "right")
    for t in true:
        r = ours.get(t["batch_id"])
        for carrier, amount in sorted(t["energy"].items()):
            if r is None:
                table.add_row(t["batch_id"], "[red]missing[/]", carrier, "", f"{amount:,.3f}")
                continue
            got = float(r["energy"].get(carrier, 0.0))
            unc = float(r["uncertainty"].get(carrier, 0.0))
            err = _error(got, amount)
            inside = "yes" if abs(got - amount) <= unc else "[red]no[/]"
            table.add_row(t["batch_id"], r["status"], carrier, f"{got:,.3f}", f"{amount:,.3f}",
                          f"{err:+.4%}", f"{unc:,.3f}", inside,
                          f"{r['kgco2e_location']:,.2f}", f"{r['kgco2e_market']:,.2f}",
                          f"{r['primary_data_share']:.1%}")
    console.print(table)
    console.print(f"[dim]written: {out / 'footprints.json'}, {out / 'ground_truth.json'}[/]")
