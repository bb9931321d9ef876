"""The demo's certification step: what a verifier and a customer receive for the run's batches.

After compute has finalised the batches the demo runs the operator commands a
plant would, through ``python -m compute`` itself, and writes into ``demo-out/``:

- ``pact/``: PACT v3 ProductFootprints of every final batch and of every product
  over the days its batches ended on (``export pact --all``; schema-checked there);
- ``evidence/``: an evidence bundle per certified batch, each confirmed by
  ``compute verify`` from the archive alone (no database) against its recorded root;
- ``certificates/``: the batch certificate page and carbon label of those batches;
- ``cbam/``: the CBAM figures of every product the site model declares as CBAM goods.

Bundling and verifying replays a batch's readings (seconds per batch), so a run with
many batches certifies the first final batch of each product; a small run all of them.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from datetime import date
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from compute.report import footprint_rows
from deploy.procs import ServiceError

ROOT = Path(__file__).resolve().parent.parent
CERTIFY_ALL_UP_TO = 6  # batches: above this, one batch per product


class CertifyError(ServiceError):
    """A certification command failed; the message names it and carries its stderr."""


def _run(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "compute", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=600)
    if proc.returncode != 0:
        raise CertifyError(f"compute {' '.join(args)} failed ({proc.returncode}):\n"
                           f"{proc.stdout[-1500:]}{proc.stderr[-3000:]}")
    return proc.stdout


def _compute(server: Path, *args: str) -> str:
    return _run("--config", str(server), *args)


def _chosen(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    final = [r for r in rows if r["status"] != "provisional"]
    if len(final) <= CERTIFY_ALL_UP_TO:
        return final
    first: dict[str, dict[str, Any]] = {}
    for r in final:  # rows come ordered by start
        first.setdefault(r["product"], r)
    return list(first.values())


def _cbam_products(site_model: Path) -> list[str]:
    products = tomllib.loads(site_model.read_text()).get("products", {})
    return sorted(name for name, p in products.items() if "cbam" in p)


def certify(console: Console, server: Path, dsn: str, site_model: Path, out: Path) -> None:
    """Export, bundle, verify, certify and report; raises CertifyError naming a failure."""
    rows = footprint_rows(dsn)
    pact = out / "pact"
    _compute(server, "export", "pact", "--all", "--out", str(pact))
    table = Table(title="certification: evidence bundles, each verified from the archive alone")
    for col in ("batch", "product", "revision", "root (sha-256)", "verify", "certificate"):
        table.add_column(col)
    for r in _chosen(rows):
        batch = r["batch_id"]
        bundle = out / "evidence" / f"{batch}.evidence.tar.gz"
        bundle.parent.mkdir(parents=True, exist_ok=True)
        root = _compute(server, "bundle", "--batch", batch, "--out", str(bundle)
                        ).split("root ")[-1].strip()
        # a verifier has the bundle and the root from the label, not our server.toml
        verdict = _run("verify", str(bundle), "--root", root)  # exit 0: "confirmed: …"
        cert = _compute(server, "certificate", "--batch", batch,
                        "--out", str(out / "certificates")).splitlines()[0]
        table.add_row(batch, r["product"], str(r["revision"]), root[:16] + "…",
                      verdict.split(":", 1)[0], Path(cert).name)
    console.print(table)
    if rows:
        days = [date.fromisoformat(r[k][:10]) for r in rows for k in ("start_ts", "end_ts")
                if r[k]]
        first, last = min(days).isoformat(), max(days).isoformat()
        for product in _cbam_products(site_model):
            if any(r["product"] == product for r in rows):
                (out / "cbam").mkdir(parents=True, exist_ok=True)
                _compute(server, "cbam", "--product", product, "--from", first, "--to", last,
                         "--out", str(out / "cbam" / f"{product}.csv"))
    console.print(f"[dim]written: {pact}/ ({sum(1 for _ in pact.glob('*.json'))} PACT files), "
                  f"{out / 'evidence'}/, {out / 'certificates'}/"
                  + (f", {out / 'cbam'}/" if (out / "cbam").exists() else "") + "[/]")
