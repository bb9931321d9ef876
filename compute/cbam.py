"""``python -m compute cbam``: a product's CBAM figures over a period, from its final footprints.

Per site (a CBAM installation) and product, over the batches that ended in the
period (newest final or revised revision of each; provisional numbers never):

- **specific electricity consumption** (SEC, MWh per tonne): the batches'
  electricity ÷ their production in tonnes;
- **specific direct embedded emissions** (tCO2e per tonne): on-site fuel
  combustion and consumed heat and steam (CBAM counts heat consumed in the
  production process as direct, wherever it was produced), each with the
  location-based factor row the footprint used;
- **specific indirect embedded emissions** (tCO2e per tonne): electricity ×
  its factor. *Actual* when the footprint's market-based electricity row is
  the site's own contract or supplier figure (a PPA or direct connection, the
  cases CBAM accepts an actual factor for); otherwise *default*: the official
  grid average the footprint used (MEE/NBS). plantprint does not hold the
  Commission's CBAM default values;
- which of them count, by the product's goods category from the site model
  (definitive period, Regulation (EU) 2023/956 Annex II): iron and steel,
  aluminium and hydrogen direct only; cement and fertilisers direct and
  indirect.

Not covered, and said in every record: process emissions (e.g. the
calcination CO2 of clinker) and precursors' embedded emissions, which meters of
energy cannot see.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import psycopg

from compute.commands import run_command
from compute.errors import ComputeError
from compute.factors import FactorRow, load_factors
from compute.site import SiteModel, load_sites
from ingest.config import ServerConfig
from ingest.db import connect

DIRECT_ONLY = frozenset({"iron_steel", "aluminium", "hydrogen"})
ELECTRICITY = "electricity"
# CBAM's direct emissions: fuels burnt on site and heat consumed (steam, hot water)
DIRECT_CARRIERS = ("natural_gas", "steam", "heat")
ACTUAL_VARIANTS = frozenset({"contract", "supplier"})  # a PPA, a direct line, a supplier figure
NOT_COVERED = ("process emissions (e.g. calcination CO2 of clinker, anode and reductant "
               "CO2): not metered as energy",
               "embedded emissions of precursors",
               "CH4 and N2O of fuel combustion where the factor rows are CO2 only")

_BATCHES = """SELECT site, batch_id, revision, quantity, unit, energy, factor_ids,
    primary_data_share, flags
FROM batch_footprint_latest
WHERE product = %s AND status <> 'provisional' AND end_ts >= %s AND end_ts < %s
ORDER BY site, end_ts, batch_id"""


class CbamError(ComputeError):
    """A product or period the CBAM view cannot report (the message says what is missing)."""


@dataclass(frozen=True)
class BatchFigures:
    batch_id: str
    tonnes: float
    electricity_mwh: float
    direct_t: float
    indirect_t: float
    electricity_rows: tuple[FactorRow, ...]  # the row(s) that priced the electricity
    primary_data_share: float
    flags: tuple[str, ...]


def _tonnes(batch: str, quantity: float | None, unit: str | None) -> float:
    if quantity is None or unit not in ("t", "kg"):
        raise CbamError(f"batch {batch}: quantity {quantity} {unit}: CBAM needs the "
                        "production in t or kg")
    return quantity / 1e3 if unit == "kg" else quantity


def batch_figures(batch: str, quantity: float | None, unit: str | None,
                  energy: Mapping[str, float], factor_ids: Sequence[int],
                  rows: Mapping[int, FactorRow], share: float,
                  flags: Sequence[str]) -> BatchFigures:
    """One batch's CBAM figures from its footprint record and the factor rows it used."""
    used = [rows[i] for i in factor_ids if i in rows]

    def row(carrier: str, kinds: tuple[str, ...]) -> FactorRow | None:
        return next((r for k in kinds for r in used if r.carrier == carrier and r.kind == k),
                    None)

    direct = 0.0
    for carrier in DIRECT_CARRIERS:
        if energy.get(carrier):
            f = row(carrier, ("location",))
            if f is None:
                raise CbamError(f"batch {batch}: no factor row for its {carrier}")
            direct += energy[carrier] * f.value / 1e3  # kgCO2 → t
    kwh = float(energy.get(ELECTRICITY, 0.0))
    market, location = row(ELECTRICITY, ("market",)), row(ELECTRICITY, ("location",))
    elec = market if market is not None and market.variant in ACTUAL_VARIANTS else location
    if kwh and elec is None:
        raise CbamError(f"batch {batch}: no electricity factor row")
    indirect = kwh * elec.value / 1e3 if elec is not None else 0.0
    return BatchFigures(batch, _tonnes(batch, quantity, unit), kwh / 1e3, direct, indirect,
                        () if elec is None else (elec,), share, tuple(flags))


def installation_record(site: str, product: str, model: SiteModel, start: date, end: date,
                        figures: Sequence[BatchFigures]) -> dict[str, Any]:
    goods = model.products[product].cbam
    assert goods is not None  # checked by the caller
    t = sum(f.tonnes for f in figures)
    mwh = sum(f.electricity_mwh for f in figures)
    direct = sum(f.direct_t for f in figures)
    indirect = sum(f.indirect_t for f in figures)
    rows = {r.id: r for f in figures for r in f.electricity_rows}
    kinds = {"actual" if r.variant in ACTUAL_VARIANTS else "default" for r in rows.values()}
    counts_indirect = goods.category not in DIRECT_ONLY
    return {
        "site": site, "product": product, "cbam_category": goods.category,
        "cn_code": goods.cn_code, "from": start.isoformat(), "to": end.isoformat(),
        "batches": len(figures), "batch_ids": [f.batch_id for f in figures],
        "production_t": t, "electricity_mwh": mwh,
        "sec_mwh_per_t": mwh / t if t else None,
        "direct_tco2e": direct, "indirect_tco2e": indirect,
        "see_direct_tco2e_per_t": direct / t if t else None,
        "see_indirect_tco2e_per_t": indirect / t if t else None,
        "indirect_counted": counts_indirect,
        "see_counted_tco2e_per_t": (direct + (indirect if counts_indirect else 0.0)) / t
        if t else None,
        "direct_basis": "actual (metered energy × factor rows)",
        "electricity_factor_tco2_per_mwh": indirect / mwh if mwh else None,
        "electricity_factor_type": "/".join(sorted(kinds)) or None,
        "electricity_factor_ids": sorted(rows),
        "electricity_factor_source": "; ".join(f"{r.source} ({r.publication})"
                                               for r in rows.values()),
        "primary_data_share": _weighted_share(figures),
        "flags": sorted({fl for f in figures for fl in f.flags}),
        "not_covered": list(NOT_COVERED),
    }


def _weighted_share(figures: Sequence[BatchFigures]) -> float | None:
    total = sum(f.direct_t + f.indirect_t for f in figures)
    if not total:
        return None
    return sum(f.primary_data_share * (f.direct_t + f.indirect_t) for f in figures) / total


def cbam_records(conn: psycopg.Connection[tuple[object, ...]], models: Mapping[str, SiteModel],
                 product: str, start: date, end: date) -> list[dict[str, Any]]:
    """One record per site that makes ``product`` (batches ending start … end, inclusive)."""
    sites = {s: m for s, m in models.items() if product in m.products}
    if not sites:
        raise CbamError(f"product {product!r} is in no site model ([products.{product}])")
    for s, m in sites.items():
        if m.products[product].cbam is None:
            raise CbamError(f"site {s}: products.{product}.cbam: not set, so {product} is not "
                            "CBAM goods here (declare its category and CN code in the site "
                            "model; it is never guessed)")
    lo = datetime(start.year, start.month, start.day, tzinfo=UTC)
    hi = datetime(end.year, end.month, end.day, tzinfo=UTC) + timedelta(days=1)
    rows = {r.id: r for r in load_factors(conn)}
    per_site: dict[str, list[BatchFigures]] = {}
    for site, bid, _rev, q, u, energy, fids, share, flags in conn.execute(
            _BATCHES, (product, lo, hi)).fetchall():
        if site not in sites:
            continue
        per_site.setdefault(str(site), []).append(batch_figures(
            str(bid), q, u, dict(energy), list(fids), rows,  # type: ignore[call-overload, arg-type]
            float(share), list(flags)))  # type: ignore[arg-type, call-overload]
    if not per_site:
        raise CbamError(f"product {product}: no final footprint of a batch ending "
                        f"{start} … {end}")
    return [installation_record(s, product, sites[s], start, end, f)
            for s, f in sorted(per_site.items())]


CSV_COLUMNS = ("site", "product", "cbam_category", "cn_code", "from", "to", "batches",
               "production_t", "electricity_mwh", "sec_mwh_per_t", "direct_tco2e",
               "indirect_tco2e", "see_direct_tco2e_per_t", "see_indirect_tco2e_per_t",
               "indirect_counted", "see_counted_tco2e_per_t", "electricity_factor_tco2_per_mwh",
               "electricity_factor_type", "electricity_factor_ids",
               "electricity_factor_source", "direct_basis", "primary_data_share", "flags",
               "not_covered")


def to_csv(records: Sequence[Mapping[str, Any]]) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in records:
        w.writerow(["; ".join(map(str, v)) if isinstance(v, list) else
                    ("" if v is None else v) for v in (r[c] for c in CSV_COLUMNS)])
    return out.getvalue()


def cbam_main(argv: list[str], cfg: ServerConfig, config_path: Path) -> int:
    ap = argparse.ArgumentParser(prog="python -m compute cbam",
                                 description="CBAM figures of a product over a period")
    ap.add_argument("--product", required=True)
    ap.add_argument("--from", dest="start", type=date.fromisoformat, required=True)
    ap.add_argument("--to", dest="end", type=date.fromisoformat, required=True)
    ap.add_argument("--format", choices=("csv", "json"), default="csv")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    dsn = cfg.database.dsn.get_secret_value()
    def work() -> int:
        if args.end < args.start:
            raise CbamError(f"--to {args.end} is before --from {args.start}")
        models = load_sites(cfg.compute.sites, config_path.parent)
        with connect(dsn) as conn:
            records = cbam_records(conn, models, args.product, args.start, args.end)
        text = (to_csv(records) if args.format == "csv" else
                orjson.dumps(records, option=orjson.OPT_INDENT_2).decode() + "\n")
        if args.out is None:
            sys.stdout.write(text)
        else:
            args.out.write_text(text)
        return 0

    return run_command("compute cbam", dsn, work, (CbamError,))
