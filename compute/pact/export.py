"""``python -m compute export pact``: PACT v3 ProductFootprint JSON files.

    export pact --batch ID [--site S]                 the batch's newest final revision
    export pact --product SKU --from DATE --to DATE   production-weighted, batches that
                                                      ended from DATE to DATE (inclusive)
    export pact --all                                 every final batch, and every product
                                                      over the days its batches ended on
    [--out DIR] [--spec 3]                            files in DIR (else JSON on stdout)

Every footprint is validated against the shipped v3 ProductFootprint schema
before it is written. Only final and revised footprints leave: a batch whose
newest number is provisional is refused (``--batch``) or left out and named
(``--product``). Exit 0 done, 2 refused (one line naming why).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import orjson
import psycopg

from compute.errors import ComputeError
from compute.pact.mapping import Identity, PactMappingError, batch_footprint, product_footprint
from compute.pact.records import FootprintRecord, load_factors, load_records, open_reader
from compute.pact.schema import validate_footprint
from compute.site import SiteModel, load_sites
from ingest.config import PactConfig, ServerConfig
from ingest.db import describe_dsn

PROG = "python -m compute export pact"


def identity(pact: PactConfig) -> Identity:
    return Identity(pact.company_name, tuple(pact.company_ids), pact.electricity_basis,
                    tuple(pact.ipcc_characterization_factors))


def _args(argv: Sequence[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--batch", help="batch id")
    what.add_argument("--product", help="product (SKU as the MES reports it)")
    what.add_argument("--all", action="store_true",
                      help="every final batch, and every product over its batches' days")
    ap.add_argument("--site", help="site id (when batch ids repeat across sites)")
    ap.add_argument("--from", dest="start", type=date.fromisoformat, help="first day, UTC")
    ap.add_argument("--to", dest="end", type=date.fromisoformat, help="last day, UTC")
    ap.add_argument("--out", type=Path, help="folder for the files (default: stdout)")
    ap.add_argument("--spec", choices=["3"], default="3", help="PACT Technical Specs major")
    args = ap.parse_args(list(argv))
    if args.product and (args.start is None or args.end is None):
        ap.error("--product needs --from and --to")
    if args.product and args.end < args.start:
        ap.error("--to is before --from")
    return args


def _provisional(conn: psycopg.Connection, **where: Any) -> list[str]:
    """Batches whose newest revision is provisional (not final yet), for the filters."""
    sql = "SELECT batch_id FROM batch_footprint_latest WHERE status = 'provisional'"
    params = []
    for col, op, value in (("site", "=", where.get("site")), ("batch_id", "=",
                           where.get("batch")), ("product", "=", where.get("product")),
                           ("end_ts", ">=", where.get("ended_from")),
                           ("end_ts", "<", where.get("ended_before"))):
        if value is not None:
            sql += f" AND {col} {op} %s"
            params.append(value)
    return [r[0] for r in conn.execute(sql + " ORDER BY start_ts, batch_id", params)]


def _model(sites: dict[str, SiteModel], site: str) -> SiteModel:
    if site not in sites:
        raise ComputeError(f"site {site}: no site model in [compute] sites")
    return sites[site]


def batch_export(conn: psycopg.Connection, sites: dict[str, SiteModel], ident: Identity,
                 batch: str, site: str | None) -> list[tuple[str, dict[str, Any]]]:
    recs = [r for r in load_records(conn, site=site, batch=batch) if r.newest]
    if not recs:
        pending = _provisional(conn, site=site, batch=batch)
        why = ("its footprint is still provisional: only final and revised footprints are "
               "exported" if pending else "no such batch footprint")
        raise ComputeError(f"batch {batch}: {why}")
    if len(recs) > 1:
        raise ComputeError(f"batch {batch} is at sites {', '.join(r.site for r in recs)}: "
                           "name one with --site")
    rec = recs[0]
    factors = load_factors(conn, set(rec.factor_ids))
    pf = batch_footprint(rec, _model(sites, rec.site), factors, ident)
    return [(f"{rec.site}_{rec.batch_id}_r{rec.revision}.json", pf)]


def product_export(conn: psycopg.Connection, sites: dict[str, SiteModel], ident: Identity,
                   sku: str, first: date, last: date, site: str | None,
                   ) -> list[tuple[str, dict[str, Any]]]:
    period = (datetime.combine(first, time(), UTC),
              datetime.combine(last + timedelta(days=1), time(), UTC))
    recs = load_records(conn, site=site, product=sku, ended_from=period[0],
                        ended_before=period[1])
    by_site: dict[str, list[FootprintRecord]] = {}
    for r in recs:
        by_site.setdefault(r.site, []).append(r)
    if not by_site:
        raise ComputeError(f"product {sku}: no final footprint of a batch that ended from "
                           f"{first} to {last}")
    out = []
    factors = load_factors(conn, {i for r in recs for i in r.factor_ids})
    for s, site_recs in sorted(by_site.items()):
        pending = _provisional(conn, site=s, product=sku, ended_from=period[0],
                               ended_before=period[1])
        if pending:
            print(f"{PROG}: {s}: left out, not final yet: {', '.join(pending)}",
                  file=sys.stderr)
        pf = product_footprint(site_recs, _model(sites, s), factors, ident, sku, period,
                               pending)
        out.append((f"{s}_{sku}_{first}_{last}.json", pf))
    return out


def all_export(conn: psycopg.Connection, sites: dict[str, SiteModel], ident: Identity,
               ) -> list[tuple[str, dict[str, Any]]]:
    """One file per batch (newest final revision) and one per product and site over the
    days its final batches ended on."""
    recs = [r for r in load_records(conn) if r.newest and r.site in sites]
    factors = load_factors(conn, {i for r in recs for i in r.factor_ids})
    out, mapped = [], []
    for r in recs:
        try:
            out.append((f"{r.site}_{r.batch_id}_r{r.revision}.json",
                        batch_footprint(r, sites[r.site], factors, ident)))
            mapped.append(r)
        except PactMappingError as exc:
            # one batch PACT cannot carry (say, no declared units) must not stop the
            # export of every other one; it is named, and its product says so too
            print(f"{PROG}: left out batch {r.batch_id} (site {r.site}, revision "
                  f"{r.revision}): {exc}", file=sys.stderr)
    products = sorted({(r.site, r.product) for r in mapped})
    for site, sku in products:
        ended = [r.end_ts.date() for r in recs
                 if (r.site, r.product) == (site, sku) and r.end_ts is not None]
        out += product_export(conn, sites, ident, sku, min(ended), max(ended), site)
    return out


def export_main(argv: Sequence[str], cfg: ServerConfig, config_path: Path) -> int:
    """The subcommand; returns the exit code."""
    if not argv or argv[0] != "pact":
        print(f"{PROG.rsplit(' ', 1)[0]}: say what to export: `export pact …`",
              file=sys.stderr)
        return 2
    args = _args(argv[1:])
    dsn = cfg.database.dsn.get_secret_value()
    try:
        sites = load_sites(cfg.compute.sites, config_path.parent)
        with open_reader(dsn) as conn:
            ident = identity(cfg.pact)
            if args.all:
                files = all_export(conn, sites, ident)
            elif args.batch:
                files = batch_export(conn, sites, ident, args.batch, args.site)
            else:
                files = product_export(conn, sites, ident, args.product, args.start,
                                       args.end, args.site)
        for _, pf in files:
            validate_footprint(pf)
    except psycopg.OperationalError as exc:
        print(f"{PROG}: error: cannot reach the database {describe_dsn(dsn)}: "
              f"{str(exc).strip().splitlines()[0]}", file=sys.stderr)
        return 2
    except ComputeError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    write(files, args.out)
    return 0


def write(files: list[tuple[str, dict[str, Any]]], out: Path | None) -> None:
    if out is None:
        body = [pf for _, pf in files]
        sys.stdout.buffer.write(orjson.dumps(body[0] if len(body) == 1 else body,
                                             option=orjson.OPT_INDENT_2) + b"\n")
        return
    out.mkdir(parents=True, exist_ok=True)
    for name, pf in files:
        (out / name).write_bytes(orjson.dumps(pf, option=orjson.OPT_INDENT_2) + b"\n")
        print(out / name)
