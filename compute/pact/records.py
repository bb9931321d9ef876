"""What a PACT footprint is made of, read from compute's tables.

The rows of ``batch_footprint`` that may be exchanged (final and revised
revisions: a provisional number is never certified, so never exported), the
``emission_factor`` rows they name, and each batch's activity period: the
first and last counter interval whose energy was allocated to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import psycopg

from ingest.db import connect

__all__ = ["FactorRow", "FootprintRecord", "load_factors", "load_records", "open_reader"]

CERTIFIED = ("final", "revised")


@dataclass(frozen=True)
class FootprintRecord:
    """One final or revised revision of a batch footprint, with its activity period."""

    site: str
    batch_id: str
    revision: int
    status: str
    asset: str
    product: str
    start_ts: datetime
    end_ts: datetime | None
    quantity: float | None
    unit: str | None
    declared_units: float | None
    energy: dict[str, float]  # carrier -> canonical unit
    estimated: dict[str, float]  # carrier -> the estimated part of it
    kgco2e_location: float
    kgco2e_market: float
    kgco2e_uncertainty: float
    primary_data_share: float
    flags: tuple[str, ...]
    factor_ids: tuple[int, ...]
    inputs_sha256: str
    computed_at: datetime
    activity_start: datetime  # first allocated interval's start (the batch start if none)
    activity_end: datetime  # last allocated interval's end (the batch end if none)
    newest: bool  # the batch's newest revision (PACT Active); older ones are Deprecated
    earlier: tuple[int, ...]  # the batch's earlier certified revisions


@dataclass(frozen=True)
class FactorRow:
    id: int
    carrier: str
    region: str
    period_start: date
    period_end: date
    value: float
    unit: str
    kind: str
    variant: str
    gas_basis: str
    source: str
    publication: str


_RECORDS = """
SELECT f.site, f.batch_id, f.revision, f.status, f.asset, f.product, f.start_ts, f.end_ts,
       f.quantity, f.unit, f.declared_units, f.energy, f.detail -> 'estimated',
       f.kgco2e_location, f.kgco2e_market, f.kgco2e_uncertainty, f.primary_data_share,
       f.flags, f.factor_ids, f.inputs_sha256, f.computed_at, p.first_ts, p.last_ts,
       f.revision = max(f.revision) OVER (PARTITION BY f.site, f.batch_id),
       array_agg(f.revision) OVER (PARTITION BY f.site, f.batch_id ORDER BY f.revision
                                   ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
FROM batch_footprint f
LEFT JOIN LATERAL (
    SELECT min(i.start_ts) AS first_ts, max(i.end_ts) AS last_ts
    FROM allocation a JOIN energy_interval i USING (site, meter, end_ts)
    WHERE a.site = f.site AND a.batch_id = f.batch_id AND a.energy <> 0
) p ON true
WHERE f.status IN ('final', 'revised') {where}
ORDER BY f.site, f.start_ts, f.batch_id, f.revision
"""


def _record(r: tuple[Any, ...]) -> FootprintRecord:
    (site, batch, rev, status, asset, product, start, end, qty, unit, du, energy, est,
     kg_loc, kg_mkt, kg_unc, pds, flags, fids, sha, at, first, last, newest, earlier) = r
    return FootprintRecord(
        site=site, batch_id=batch, revision=rev, status=status, asset=asset, product=product,
        start_ts=start, end_ts=end, quantity=qty, unit=unit, declared_units=du,
        energy={k: float(v) for k, v in energy.items()},
        estimated={k: float(v) for k, v in (est or {}).items()},
        kgco2e_location=kg_loc, kgco2e_market=kg_mkt, kgco2e_uncertainty=kg_unc,
        primary_data_share=pds, flags=tuple(flags), factor_ids=tuple(fids),
        inputs_sha256=sha, computed_at=at,
        activity_start=first or start, activity_end=last or end or start,
        newest=bool(newest), earlier=tuple(earlier or ()))


def load_records(conn: psycopg.Connection, *, site: str | None = None,
                 batch: str | None = None, product: str | None = None,
                 ended_from: datetime | None = None, ended_before: datetime | None = None,
                 ) -> list[FootprintRecord]:
    """Every certified revision matching the filters (all revisions of each batch: the
    newest is Active, the others Deprecated), oldest batch first."""
    where, params = "", []
    for sql, value in (("f.site = %s", site), ("f.batch_id = %s", batch),
                       ("f.product = %s", product), ("f.end_ts >= %s", ended_from),
                       ("f.end_ts < %s", ended_before)):
        if value is not None:
            where += f" AND {sql}"
            params.append(value)
    rows = conn.execute(_RECORDS.format(where=where), params).fetchall()
    return [_record(r) for r in rows]


def load_factors(conn: psycopg.Connection, ids: set[int]) -> dict[int, FactorRow]:
    """The emission_factor rows of ``ids`` (append-only: an id fixes its value)."""
    if not ids:
        return {}
    rows = conn.execute(
        "SELECT id, carrier, region, period_start, period_end, value, unit, kind, variant, "
        "gas_basis, source, publication FROM emission_factor WHERE id = ANY(%s)",
        [sorted(ids)]).fetchall()
    return {r[0]: FactorRow(*r) for r in rows}


def open_reader(dsn: str) -> psycopg.Connection:
    """A read-only session: nothing an export or the API does can change a number."""
    conn = connect(dsn)
    conn.execute("SET default_transaction_read_only = on")
    return conn
