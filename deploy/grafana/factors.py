"""Factors: the emission-factor rows the footprints in the range used, and the table.

``emission_factor`` is append-only: a correction is a new row naming the one it
supersedes, so the rows a certified footprint names never change.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import table

from deploy.grafana.panels import (
    ASSETS_ON_LINES,
    BATCH_OVERLAPS,
    new_dashboard,
    site_line_product,
    table_sql,
)

UID = "plantprint-factors"

IN_USE = """
SELECT f.id, f.carrier, f.region, f.kind, f.variant, f.period_start, f.period_end,
       f.value, f.unit, f.gas_basis, f.source, f.publication, f.note,
       count(*) AS batches
FROM emission_factor f
JOIN batch_footprint_latest b ON f.id = ANY (b.factor_ids)
WHERE b.site = '$site' AND OVERLAPS
  AND b.product IN ($product) AND b.asset IN (ASSETS)
GROUP BY f.id ORDER BY f.carrier, f.kind, f.id
""".replace("ASSETS", ASSETS_ON_LINES).replace("OVERLAPS", BATCH_OVERLAPS)

ALL_ROWS = """
SELECT f.id, f.carrier, f.region, f.kind, f.variant, f.period_start, f.period_end,
       f.value, f.unit, f.gas_basis, f.valid_from, f.valid_to, f.supersedes,
       EXISTS (SELECT 1 FROM emission_factor n WHERE n.supersedes = f.id) AS superseded,
       f.added_by, f.added_at, f.source, f.publication, f.note
FROM emission_factor f
ORDER BY f.carrier, f.region, f.kind, f.period_start, f.id
"""

_COLUMNS = ("id", "carrier", "region", "kind", "variant", "period_start", "period_end",
            "value", "unit", "gas_basis")


def dashboard() -> dash.Dashboard:
    board = site_line_product(new_dashboard(
        UID, "Factors",
        "The emission-factor rows the batches in the range used, with their sources, and "
        "every row of the table.", time_from="now-30d"))
    return (
        board
        .with_panel(
            table.Panel().title("Factor rows in use")
            .description("Rows named in factor_ids of the newest revision of the batches "
                         "overlapping the range: value, unit, period, source and publication.")
            .with_target(table_sql(IN_USE, *_COLUMNS, "source", "publication", "note",
                                   "batches"))
            .height(10).span(24))
        .with_panel(
            table.Panel().title("All factor rows")
            .description("The whole append-only table; superseded rows are never selected.")
            .with_target(table_sql(ALL_ROWS, *_COLUMNS, "valid_from", "valid_to", "supersedes",
                                   "superseded", "added_by", "added_at", "source",
                                   "publication", "note"))
            .height(14).span(24))
    )
