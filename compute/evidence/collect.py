"""A batch's evidence, read from the database (ingest's landing tables and compute's own).

The context is the stretch of time whose data can change the batch's number:
its run plus an hour either side and twice the parent-residual half window
(the smoothing reads that far), or exactly what a late-data revision used
(``compute.revise``: an hour either side). Readings start an hour earlier
still, so the counters' baselines and rates are known when the context
begins, and each meter's channels bring their last reading before that (the
counter's baseline, the power value held into the first interval). Factor
rows are every row added by the time the footprint was
computed (the table is append-only, so the selection can be re-run).
"""

from __future__ import annotations

import platform
import subprocess
from datetime import date, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

from compute.evidence.content import BundleError, Evidence, Row
from compute.revise import CONTEXT_NS
from compute.site import SiteModel
from compute.store import ns_sql, ts_sql

Conn = psycopg.Connection[tuple[object, ...]]
WARMUP_NS = 3_600 * 10**9  # readings before the context: each counter's baseline and rate,
# and its hidden fraction past an anchor (compute.kernels_dequant.ANCHOR_NS, half of this)

_FOOTPRINT = f"""SELECT site, batch_id, revision, status, asset, product, {ns_sql('start_ts')},
    {ns_sql('end_ts')}, quantity, unit, declared_units, energy, energy_unit, uncertainty,
    kgco2e_location, kgco2e_market, kgco2e_uncertainty, per_unit_location, per_unit_market,
    primary_data_share, flags, factor_ids, detail, inputs_sha256, computed_at
FROM batch_footprint WHERE site = %s AND batch_id = %s AND status <> 'provisional'
ORDER BY revision"""
_FP_COLS = ("site", "batch_id", "revision", "status", "asset", "product", "start_ns", "end_ns",
            "quantity", "unit", "declared_units", "energy", "energy_unit", "uncertainty",
            "kgco2e_location", "kgco2e_market", "kgco2e_uncertainty", "per_unit_location",
            "per_unit_market", "primary_data_share", "flags", "factor_ids", "detail",
            "inputs_sha256", "computed_at")


def _json(v: object) -> object:
    if isinstance(v, datetime):
        return v.isoformat().replace("+00:00", "Z")
    if isinstance(v, date):
        return v.isoformat()
    if isinstance(v, memoryview | bytes):
        return bytes(v).hex()
    return v


def _rows(conn: Conn, sql: str, params: tuple[object, ...]) -> list[Row]:
    return [[_json(v) for v in r] for r in conn.execute(sql, params).fetchall()]


def find_sites(conn: Conn, batch_id: str) -> list[str]:
    return [str(r[0]) for r in conn.execute(
        "SELECT DISTINCT site FROM batch_footprint WHERE batch_id = %s ORDER BY 1", (batch_id,))]


def footprint_revisions(conn: Conn, site: str, batch_id: str) -> list[dict[str, Any]]:
    """Every final or revised revision of the batch, oldest first, as JSON-able dicts."""
    rows = conn.execute(_FOOTPRINT, (site, batch_id)).fetchall()
    return [dict(zip(_FP_COLS, [_json(v) for v in r], strict=True)) for r in rows]


def context(fp: dict[str, Any], model: SiteModel) -> tuple[str, int, int]:
    """(mode, lo, hi) in ns: ``late`` reproduces compute.revise's bounds, ``window`` covers
    what the live window held for the batch (the residual smoothing reads ± half window)."""
    start, end = int(fp["start_ns"]), int(fp["end_ns"])
    if any(f.startswith("late_data:") for f in fp["flags"]):
        return "late", start - CONTEXT_NS, end + CONTEXT_NS
    smooth = int(model.residual_smoothing_s * 1e9)
    return "window", start - CONTEXT_NS - smooth, end + CONTEXT_NS + smooth


def code_version() -> dict[str, str]:
    try:
        version = metadata.version("plantprint")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        version = "unknown"
    return {"plantprint": version, "commit": _commit(), "python": platform.python_version(),
            "numpy": np.__version__, "numba": metadata.version("numba")}


def _commit() -> str:
    """The source tree's git commit (``+dirty`` with local changes), or ``unknown`` for an
    installed release: the version alone does not pin the pipeline's code."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"],
                              capture_output=True, text=True, timeout=5, check=True)
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--",
                                str(here.parent)], capture_output=True, text=True,
                               timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def collect(conn: Conn, model: SiteModel, gap_s: float, batch_id: str) -> Evidence:
    """The evidence of the newest final or revised revision of ``batch_id``."""
    site = model.site
    revisions = footprint_revisions(conn, site, batch_id)
    if not revisions:
        raise BundleError(f"batch {batch_id} of site {site} has no final footprint yet "
                          "(a bundle certifies a final or revised number)")
    fp = revisions[-1]
    mode, lo, hi = context(fp, model)
    if mode == "window" and model.idle_policy == "next_batch":
        lo = min(lo, _first_idle(conn, site, batch_id, lo))
    since = lo - WARMUP_NS
    ev = Evidence(tables=_tables(conn, site, since, lo, hi, fp["computed_at"]))
    ev.documents = {
        "footprint.json": fp,
        "revisions.json": [{k: r[k] for k in ("revision", "status", "computed_at",
                                               "kgco2e_location", "kgco2e_market", "energy",
                                               "flags", "inputs_sha256")} for r in revisions],
        "site_model.json": model.model_dump(mode="json"),
        "settings.json": {"site": site, "batch_id": batch_id, "revision": fp["revision"],
                          "gap_s": gap_s, "mode": mode, "context_lo_ns": lo,
                          "context_hi_ns": hi, "readings_from_ns": since},
        "code.json": code_version(),
    }
    return ev


def _tables(conn: Conn, site: str, since: int, lo: int, hi: int, computed_at: str
            ) -> dict[str, list[Row]]:
    """The bundle's tables: readings from ``since``, the rest of the context lo … hi."""
    t: dict[str, list[Row]] = {}
    t["readings.jsonl"] = _rows(conn, f"""
        SELECT r.meter, r.channel, {ns_sql('r.ts')}, r.value, r.unit, r.quality, r.gateway,
               r.seq, f.body_sha256
        FROM reading r LEFT JOIN ingested_frame f
            ON (f.gateway, f.stream, f.seq) = (r.gateway, 'readings', r.seq)
        WHERE r.site = %s AND r.ts >= {ts_sql('%s')} AND r.ts <= {ts_sql('%s')}
        ORDER BY r.meter, r.channel, r.ts""", (site, since, hi))
    t["readings.jsonl"] = _before(conn, site, since) + t["readings.jsonl"]
    t["readings.jsonl"].sort(key=lambda r: (r[0], r[1], r[2]))
    t["batches.jsonl"] = _rows(conn, f"""
        SELECT batch_id, asset, product, {ns_sql('start_ts')}, {ns_sql('end_ts')}, quantity,
               unit FROM compute_batch
        WHERE site = %s AND start_ts < {ts_sql('%s')}
          AND (end_ts IS NULL OR end_ts > {ts_sql('%s')}) ORDER BY start_ts, batch_id""",
        (site, hi, lo))
    t["batch_events.jsonl"] = _rows(conn, f"""
        SELECT asset, batch_id, product, kind, {ns_sql('ts')}, quantity, unit, gateway, seq
        FROM batch_event WHERE site = %s AND batch_id = ANY(%s)
        ORDER BY gateway, seq, ts, batch_id, kind""", (site, [r[0] for r in t["batches.jsonl"]]))
    t["state_changes.jsonl"] = _rows(conn, f"""
        SELECT asset, {ns_sql('ts')}, code FROM compute_state_change
        WHERE site = %s AND ts >= {ts_sql('%s')} AND ts <= {ts_sql('%s')}
        ORDER BY asset, ts""", (site, since, hi))
    t["intervals.jsonl"] = _rows(conn, f"""
        SELECT meter, carrier, {ns_sql('start_ts')}, {ns_sql('end_ts')}, energy, estimated,
               flags, power_start, power_end, co2 FROM energy_interval
        WHERE site = %s AND end_ts > {ts_sql('%s')} AND start_ts < {ts_sql('%s')}
        ORDER BY meter, end_ts""", (site, since, hi))
    t["allocations.jsonl"] = _rows(conn, f"""
        SELECT meter, {ns_sql('end_ts')}, batch_id, energy, rule FROM allocation
        WHERE site = %s AND end_ts > {ts_sql('%s')} AND end_ts <= {ts_sql('%s')}
        ORDER BY meter, end_ts, batch_id""", (site, since, hi))
    t["factors.jsonl"] = _rows(conn, """
        SELECT id, carrier, region, period_start, period_end, value, unit, kind, variant,
               gas_basis, source, publication, valid_from, valid_to, note, supersedes,
               added_by, added_at
        FROM emission_factor WHERE added_at <= %s::timestamptz ORDER BY id""",
        (computed_at,))
    return t


def _before(conn: Conn, site: str, since: int) -> list[Row]:
    """Per meter and channel, its last reading before ``since``: the counter's baseline and
    the power channel's value held into the first interval (sample and hold), however long
    ago (a meter back from an outage). One index look-up per channel."""
    pairs = conn.execute(f"""SELECT DISTINCT meter, channel FROM reading WHERE site = %s
        AND ts >= {ts_sql('%s')} ORDER BY 1, 2""", (site, since)).fetchall()
    out: list[Row] = []
    for meter, channel in pairs:
        out += _rows(conn, f"""
            SELECT r.meter, r.channel, {ns_sql('r.ts')}, r.value, r.unit, r.quality,
                   r.gateway, r.seq, f.body_sha256
            FROM reading r LEFT JOIN ingested_frame f
                ON (f.gateway, f.stream, f.seq) = (r.gateway, 'readings', r.seq)
            WHERE r.site = %s AND r.meter = %s AND r.channel = %s
              AND r.ts < {ts_sql('%s')} AND r.quality <> 'bad'
            ORDER BY r.ts DESC LIMIT 1""", (site, meter, channel, since))
    return out


def _first_idle(conn: Conn, site: str, batch_id: str, lo: int) -> int:
    """next_batch: an hour before the earliest interval whose energy went to the batch
    (idle energy before its start is the batch's too)."""
    row = conn.execute(f"""
        SELECT min({ns_sql('i.start_ts')}) FROM allocation a
        JOIN energy_interval i USING (site, meter, end_ts)
        WHERE a.site = %s AND a.batch_id = %s""", (site, batch_id)).fetchone()
    first = None if row is None else row[0]
    if not isinstance(first, int):
        return lo
    return min(lo, first - CONTEXT_NS)
