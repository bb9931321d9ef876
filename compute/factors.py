"""Emission factors: the versioned rows of ``emission_factor`` and how one is chosen.

Rows are append-only (migration 0008): a correction is a new row naming the one
it ``supersedes``. :func:`select_factor` is pure and picks, for a carrier, a
region and an accounting time, in this order:

1. **the most specific region** that has a usable row: the site itself (market
   rows only: a site's certificates and PPAs are filed under its site id), then
   the region, then its parents (province CN-SX → grid CN-North → CN);
2. **the period covering the time** (the latest-starting one when several do) —
   or, when none does yet (factors are published two years late), the latest
   period before it, flagged ``period_before``;
3. **the newest row** (added_at, then id) among those.

Rows superseded by another row, rows outside their validity (``valid_from`` ..
``valid_to``) and fossil-fired rows (a reduction baseline, never a consumption
factor) are not candidates.

Location- and market-based results are computed side by side (GHG Protocol
Scope 2 dual reporting). Market-based takes the site's contractual rows (kind
``market``: green-electricity certificates, PPAs, supplier-specific figures)
and, when there are none, falls back to the **residual mix** — MEE/NBS's
national factor *excluding market-traded non-fossil electricity* — flagged
``residual_mix``; a carrier without any market row (natural gas, heat, steam
without a supplier figure) uses its location row, flagged ``location_fallback``.
A contractual row stands for the site's whole consumption of the carrier in its
period: a contract covering part of it is entered as the blended factor.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from typing import Any, Literal, get_args

import psycopg

from compute.errors import FactorError
from compute.site import CANONICAL_UNIT

__all__ = [
    "FactorRow", "Kind", "Variant", "add_factor", "load_factors", "region_chain",
    "select_factor",
]

Kind = Literal["location", "market", "life_cycle"]
Variant = Literal["average", "residual_mix", "fossil", "default", "contract", "supplier"]
_UNIT = re.compile(r"^kg(CO2e?)/([A-Za-z0-9]+)$")

# ISO 3166-2:CN province → the MEE/NBS regional grid its factor is published under.
# Inner Mongolia is split between the North and Northeast grids; its western
# (larger) part is on the North grid, which is the one used here.
_GRIDS: dict[str, tuple[str, ...]] = {
    "CN-North": ("BJ", "TJ", "HE", "SX", "SD", "NM"),
    "CN-Northeast": ("LN", "JL", "HL"),
    "CN-East": ("SH", "JS", "ZJ", "AH", "FJ"),
    "CN-Central": ("HA", "HB", "HN", "JX"),
    "CN-Northwest": ("SN", "GS", "QH", "NX", "XJ"),
    "CN-South": ("GD", "GX", "YN", "GZ", "HI"),
    "CN-Southwest": ("SC", "CQ", "XZ"),
}
GRID_OF_PROVINCE: dict[str, str] = {
    f"CN-{p}": grid for grid, provinces in _GRIDS.items() for p in provinces
}

_COLUMNS = ("id, carrier, region, period_start, period_end, value, unit, kind, variant, "
            "gas_basis, source, publication, valid_from, valid_to, note, supersedes, "
            "added_by, added_at")


@dataclass(frozen=True, slots=True)
class FactorRow:
    """One row of ``emission_factor``; ``flags`` say how :func:`select_factor` chose it."""

    id: int
    carrier: str
    region: str
    period_start: date
    period_end: date  # inclusive
    value: float  # per the carrier's canonical unit (unit = kgCO2[e]/<canonical unit>)
    unit: str
    kind: str
    variant: str
    gas_basis: str  # CO2 | CO2e
    source: str
    publication: str
    valid_from: date
    valid_to: date | None
    note: str | None
    supersedes: int | None
    added_by: str
    added_at: datetime
    flags: tuple[str, ...] = ()  # region_fallback, period_before, residual_mix, location_fallback

    def covers(self, day: date) -> bool:
        return self.period_start <= day <= self.period_end

    def valid_on(self, day: date) -> bool:
        return self.valid_from <= day and (self.valid_to is None or day <= self.valid_to)


def region_chain(region: str) -> tuple[str, ...]:
    """``region`` and its parents, most specific first: CN-SX → CN-North → CN."""
    chain = [region]
    while True:
        current = chain[-1]
        parent = GRID_OF_PROVINCE.get(current) or (
            current.split("-", 1)[0] if "-" in current else None)
        if parent is None or parent in chain:
            return tuple(chain)
        chain.append(parent)


def _day(at: datetime | date) -> date:
    if isinstance(at, datetime):
        if at.tzinfo is None:
            raise FactorError(f"accounting time {at.isoformat()} needs a UTC offset")
        return at.astimezone(UTC).date()
    return at


def _pick(rows: Sequence[FactorRow], chain: Sequence[str], day: date) -> FactorRow | None:
    """Most specific region, then the covering period (else the latest before), then newest."""
    for depth, region in enumerate(chain):
        here = [r for r in rows if r.region == region]
        flags = ["region_fallback"] if depth else []
        pool = [r for r in here if r.covers(day)]
        if not pool:
            before = [r for r in here if r.period_end < day]
            if not before:
                continue  # only periods after the day here: ask the wider region
            latest = max(r.period_end for r in before)
            pool = [r for r in before if r.period_end == latest]
            flags.append("period_before")
        best = max(pool, key=lambda r: (r.period_start, r.added_at, r.id))
        return replace(best, flags=tuple(flags))
    return None


def select_factor(
    rows: Iterable[FactorRow],
    carrier: str,
    region: str,
    at: datetime | date,
    kind: Kind,
    site: str | None = None,
) -> FactorRow | None:
    """The factor row for ``carrier`` consumed at ``at`` in ``region``; None when none fits.

    ``site`` lets a site's own contractual rows (region = the site id) win in
    market-based selection. Pure: the same rows give the same answer.
    """
    day = _day(at)
    every = list(rows)
    superseded = {r.supersedes for r in every if r.supersedes is not None}
    live = [r for r in every if r.carrier == carrier and r.valid_on(day)
            and r.id not in superseded and r.variant != "fossil"]
    chain = region_chain(region)

    def of(pred: Callable[[FactorRow], bool]) -> list[FactorRow]:
        return [r for r in live if pred(r)]

    if kind != "market":
        return _pick(of(lambda r: r.kind == kind), chain, day)
    own = (site, *chain) if site else chain
    contractual = _pick(of(lambda r: r.kind == "market" and r.variant != "residual_mix"),
                        own, day)
    if contractual is not None:
        return contractual
    residual = _pick(of(lambda r: r.kind == "market" and r.variant == "residual_mix"),
                     chain, day)
    if residual is not None:
        return replace(residual, flags=("residual_mix", *residual.flags))
    location = _pick(of(lambda r: r.kind == "location"), chain, day)
    if location is not None:
        return replace(location, flags=("location_fallback", *location.flags))
    return None


# --- database ----------------------------------------------------------------


def load_factors(conn: psycopg.Connection[Any]) -> list[FactorRow]:
    """Every row of ``emission_factor``, oldest first."""
    cur = conn.execute(f"SELECT {_COLUMNS} FROM emission_factor ORDER BY id")
    return [FactorRow(*row) for row in cur.fetchall()]


def _check(carrier: str, unit: str, value: float, kind: str, variant: str,
           period: tuple[date, date]) -> str:
    """The gas basis of a row to add; FactorError naming the argument otherwise."""
    if carrier not in CANONICAL_UNIT:
        raise FactorError(f"carrier {carrier!r}: one of {', '.join(CANONICAL_UNIT)}")
    per = CANONICAL_UNIT[carrier]
    match = _UNIT.match(unit)
    if match is None or match[2] != per:
        raise FactorError(f"unit {unit!r} for {carrier}: kgCO2/{per} or kgCO2e/{per} "
                          "(tCO2/MWh is the same number as kgCO2/kWh)")
    if not (math.isfinite(value) and value >= 0):
        raise FactorError(f"value {value!r}: a finite number ≥ 0")
    if kind not in get_args(Kind):
        raise FactorError(f"kind {kind!r}: one of {', '.join(get_args(Kind))}")
    allowed = {"location": ("average", "default", "supplier"),
               "market": ("contract", "supplier", "residual_mix"),
               "life_cycle": ("average", "default", "supplier")}[kind]
    if variant not in allowed:
        raise FactorError(f"variant {variant!r} with kind {kind}: one of {', '.join(allowed)}")
    if period[1] < period[0]:
        raise FactorError(f"period {period[0]} .. {period[1]}: ends before it starts")
    return match[1]


def add_factor(
    conn: psycopg.Connection[Any],
    *,
    carrier: str,
    region: str,
    period_start: date,
    period_end: date,
    value: float,
    unit: str,
    kind: str,
    source: str,
    publication: str,
    note: str | None = None,
    variant: str | None = None,
    valid_from: date | None = None,
    valid_to: date | None = None,
    supersedes: int | None = None,
) -> FactorRow:
    """Append a user row (never changes one); returns it as stored.

    ``variant`` defaults to ``contract`` for market rows (certificates, PPAs) and
    ``average`` otherwise; ``valid_from`` to ``period_start``.
    """
    variant = variant or ("contract" if kind == "market" else "average")
    gas_basis = _check(carrier, unit, value, kind, variant, (period_start, period_end))
    for name, text in (("region", region), ("source", source), ("publication", publication)):
        if not text.strip():
            raise FactorError(f"{name}: must not be empty")
    try:
        row = conn.execute(
            "INSERT INTO emission_factor (carrier, region, period_start, period_end, value, "
            "unit, kind, variant, gas_basis, source, publication, valid_from, valid_to, note, "
            f"supersedes, added_by) VALUES ({', '.join(['%s'] * 15)}, 'user') "
            f"RETURNING {_COLUMNS}",
            (carrier, region, period_start, period_end, value, unit, kind, variant, gas_basis,
             source, publication, valid_from or period_start, valid_to, note, supersedes),
        ).fetchone()
    except psycopg.errors.ForeignKeyViolation as exc:
        raise FactorError(f"supersedes {supersedes}: no such factor row") from exc
    except psycopg.errors.IntegrityError as exc:  # a CHECK the arguments above missed
        raise FactorError(f"the database refused the row: {exc.diag.message_primary}") from exc
    except psycopg.errors.InsufficientPrivilege as exc:
        raise FactorError(f"this database role may not add factors: "
                          f"{exc.diag.message_primary}") from exc
    assert row is not None  # INSERT … RETURNING returns the row
    return FactorRow(*row)
