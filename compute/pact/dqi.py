"""PACT data-quality ratings (1 best … 5 worst) of a footprint's secondary factors.

The activity data are the site's own meters (primary); what varies is how well
each emission factor represents the energy it is applied to. Each carrier's
factor row is rated by the tables below, and the footprint's rating is the
mean over carriers weighted by each carrier's kgCO2e, as the PACT Methodology
weights DQRs by contribution. Pure: rows and numbers in, numbers out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date

from compute.pact.records import FactorRow

OPEN_END = date(9999, 12, 31)  # emission_factor's open-ended default period

# technological: what the factor stands for
TECHNOLOGICAL = {
    "contract": 1.0,  # the supply actually bought (certificate, PPA)
    "supplier": 1.0,  # the supplier's own figure
    "average": 2.0,  # the grid's average generation mix
    "residual_mix": 2.0,  # the grid less market-traded non-fossil supply
    "default": 3.0,  # a guideline default for the fuel or carrier
}
# temporal: years between the end of the factor's data period and the activity
# (factors are published about two years late, so two years still rate 2)
TEMPORAL = ((0.0, 1.0), (2.0, 2.0), (4.0, 3.0), (6.0, 4.0))
TEMPORAL_UNDATED = 3.0  # an open-ended guideline default
TEMPORAL_OLDER = 5.0


@dataclass(frozen=True)
class Ratings:
    technological: float
    geographical: float
    temporal: float


def temporal(row: FactorRow, activity: date) -> float:
    if row.period_end == OPEN_END:
        return TEMPORAL_UNDATED
    if row.period_start <= activity <= row.period_end:
        return 1.0
    years = abs((activity - row.period_end).days) / 365.25
    return next((score for limit, score in TEMPORAL if years <= limit), TEMPORAL_OLDER)


def geographical(row: FactorRow, site: str, geography: str, grid_region: str) -> float:
    if row.region in (site, geography):
        return 1.0  # the site's own contract, or its province
    if row.region == grid_region:
        return 2.0  # its regional grid
    if row.region == geography[:2]:
        return 3.0  # its country
    return 4.0


def rate(rows: Mapping[str, FactorRow], kg: Mapping[str, float], activity: date,
         site: str, geography: str, grid_region: str) -> Ratings:
    """Carrier → factor row used and carrier → kgCO2e: the weighted ratings."""
    total = sum(kg.get(c, 0.0) for c in rows)
    weights = {c: (kg.get(c, 0.0) / total if total > 0 else 1.0 / len(rows)) for c in rows}

    def mean(score: dict[str, float]) -> float:
        return sum(weights[c] * score[c] for c in rows) if rows else 5.0

    return Ratings(
        technological=mean({c: TECHNOLOGICAL.get(r.variant, 4.0) for c, r in rows.items()}),
        geographical=mean({c: geographical(r, site, geography, grid_region)
                           for c, r in rows.items()}),
        temporal=mean({c: temporal(r, activity) for c, r in rows.items()}),
    )
