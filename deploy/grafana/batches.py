"""Batches: running and recent batches with their footprint, and a drill-down per batch.

A batch's footprint is the newest revision (``batch_footprint_latest``):
provisional while it runs and until every meter has reported past its end,
final once, revised when late data changed a final number. The drill-down shows
where its energy came from: the allocation rows over time and per meter.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import bargauge, table, timeseries
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.models.dashboard import DynamicConfigValue

from deploy.grafana.panels import (
    ASSETS_ON_LINES,
    BATCH_OVERLAPS,
    EVERY_ROW,
    SITE_SQL,
    new_dashboard,
    query_variable,
    series_sql,
    site_line_product,
    table_sql,
)

UID = "plantprint-batches"
DRILL_UID = "plantprint-batch"

# jsonb {carrier: amount} → "electricity 53.109 kWh, steam 0.210 t"
_ENERGY_TEXT = """(SELECT string_agg(e.key || ' ' || round(e.value::numeric, 3) || ' '
                           || coalesce(b.energy_unit ->> e.key, ''), ', ' ORDER BY e.key)
        FROM jsonb_each_text(b.energy) e)"""

BATCHES = """
SELECT b.batch_id, CASE WHEN b.end_ts IS NULL THEN 'running' ELSE 'ended' END AS state,
       b.status, b.revision, b.product, b.asset, a.line, b.start_ts, b.end_ts,
       b.quantity, b.unit, ENERGY AS energy,
       b.kgco2e_location, b.kgco2e_market, b.kgco2e_uncertainty,
       b.per_unit_location, b.per_unit_market, b.primary_data_share,
       array_to_string(b.flags, ' ') AS flags, b.site
FROM batch_footprint_latest b
JOIN site_asset a ON a.site = b.site AND a.asset = b.asset
WHERE b.site = '$site' AND OVERLAPS
  AND b.product IN ($product) AND a.line IN ($line)
ORDER BY b.end_ts IS NOT NULL, b.start_ts DESC
LIMIT 500
""".replace("ENERGY", _ENERGY_TEXT).replace("OVERLAPS", BATCH_OVERLAPS)

STATUS_COUNTS = """
SELECT CASE WHEN b.end_ts IS NULL THEN 'running' ELSE b.status END AS metric, count(*) AS batches
FROM batch_footprint_latest b
WHERE b.site = '$site' AND OVERLAPS
  AND b.product IN ($product) AND b.asset IN (ASSETS)
GROUP BY 1 ORDER BY 1
""".replace("ASSETS", ASSETS_ON_LINES).replace("OVERLAPS", BATCH_OVERLAPS)

BATCH_SQL = ("SELECT batch_id FROM compute_batch WHERE site = '$site' "
             "ORDER BY start_ts DESC LIMIT 1000")

SUMMARY = """
SELECT b.batch_id, b.revision, b.status, b.product, b.asset, b.start_ts, b.end_ts,
       b.quantity, b.unit, b.declared_units, ENERGY AS energy,
       b.kgco2e_location, b.kgco2e_market, b.kgco2e_uncertainty,
       b.per_unit_location, b.per_unit_market, b.primary_data_share,
       array_to_string(b.flags, ' ') AS flags,
       array_to_string(b.factor_ids, ', ') AS factor_ids, b.inputs_sha256, b.computed_at
FROM batch_footprint_latest b
WHERE b.site = '$site' AND b.batch_id = '$batch'
""".replace("ENERGY", _ENERGY_TEXT)

# Cumulative energy per meter over the batch's settled intervals (allocation rows).
TIMELINE = """
SELECT a.end_ts AS "time", a.meter || ' (' || c.energy_unit || ')' AS metric,
       sum(a.energy) OVER (PARTITION BY a.meter ORDER BY a.end_ts) AS energy
FROM allocation a
JOIN energy_interval i ON i.site = a.site AND i.meter = a.meter AND i.end_ts = a.end_ts
JOIN carrier_unit c ON c.carrier = i.carrier
WHERE a.site = '$site' AND a.batch_id = '$batch'
ORDER BY 1, 2
"""

# The footprint's own per-meter energy (complete also while provisional).
BY_METER = """
SELECT pm.key AS meter, m.role, i.carrier, pm.value::double precision AS energy,
       c.energy_unit AS unit
FROM batch_footprint_latest b
CROSS JOIN LATERAL jsonb_each_text(b.detail -> 'per_meter') pm
LEFT JOIN site_meter m ON m.site = b.site AND m.meter = pm.key
LEFT JOIN LATERAL (SELECT carrier FROM energy_interval e
                   WHERE e.site = b.site AND e.meter = pm.key LIMIT 1) i ON true
LEFT JOIN carrier_unit c ON c.carrier = i.carrier
WHERE b.site = '$site' AND b.batch_id = '$batch'
ORDER BY i.carrier, energy DESC
"""

BY_RULE = """
SELECT a.meter, a.rule, count(*) AS intervals, sum(a.energy) AS energy,
       min(a.end_ts) AS first_end, max(a.end_ts) AS last_end
FROM allocation a
WHERE a.site = '$site' AND a.batch_id = '$batch'
GROUP BY a.meter, a.rule ORDER BY a.meter, a.rule
"""

REVISIONS = """
SELECT b.revision, b.status, b.computed_at, b.kgco2e_location, b.kgco2e_market,
       b.primary_data_share, array_to_string(b.flags, ' ') AS flags, b.inputs_sha256
FROM batch_footprint b
WHERE b.site = '$site' AND b.batch_id = '$batch'
ORDER BY b.revision
"""

# Data link from a row of the batch list to its drill-down.
DRILL_LINK = (f"/d/{DRILL_UID}/batch?var-site=${{__data.fields.site}}"
              "&var-batch=${__value.raw}&${__url_time_range}")


def dashboard() -> dash.Dashboard:
    board = site_line_product(new_dashboard(
        UID, "Batches",
        "Running and recent batches: lifecycle status, footprint, intensity, primary data "
        "share, uncertainty and flags. Click a batch for its drill-down."))
    return (
        board
        .with_panel(
            bargauge.Panel().title("Batches by status")
            .description("Batches overlapping the range: running, or the status of their newest "
                         "revision (provisional, final, revised).")
            .with_target(table_sql(STATUS_COUNTS, "metric", "batches"))
            .reduce_options(EVERY_ROW).height(5).span(24))
        .with_panel(
            table.Panel().title("Running and recent batches")
            .description("Newest revision of every batch overlapping the range. kgCO2e "
                         "uncertainty is expanded (k = 2); primary data share is the part of "
                         "the kgCO2e from measured, not estimated, energy. Flags name what "
                         "affected the number (gap:, reset:, missing:, late_data:, …).")
            .with_target(table_sql(
                BATCHES, "batch_id", "state", "status", "revision", "product", "asset", "line",
                "start_ts", "end_ts", "quantity", "unit", "energy", "kgco2e_location",
                "kgco2e_market", "kgco2e_uncertainty", "per_unit_location", "per_unit_market",
                "primary_data_share", "flags", "site"))
            .override_by_name("batch_id", [DynamicConfigValue(id_val="links", value=[
                {"title": "Batch ${__value.raw}", "url": DRILL_LINK}])])
            .override_by_name("site", [DynamicConfigValue(id_val="custom.hidden",
                                                          value=True)])
            .override_by_name("primary_data_share", [DynamicConfigValue(
                id_val="unit", value="percentunit")])
            .height(18).span(24))
    )


def drilldown() -> dash.Dashboard:
    board = new_dashboard(
        DRILL_UID, "Batch",
        "One batch: its footprint, the energy timeline of its settled intervals, its "
        "allocation by meter and rule, and every revision.", time_from="now-7d")
    board = board.with_variable(query_variable("site", "Site", SITE_SQL, multi=False))
    board = board.with_variable(query_variable("batch", "Batch", BATCH_SQL, multi=False))
    return (
        board
        .with_panel(
            table.Panel().title("Footprint (newest revision)")
            .with_target(table_sql(
                SUMMARY, "batch_id", "revision", "status", "product", "asset", "start_ts",
                "end_ts", "quantity", "unit", "declared_units", "energy", "kgco2e_location",
                "kgco2e_market", "kgco2e_uncertainty", "per_unit_location", "per_unit_market",
                "primary_data_share", "flags", "factor_ids", "inputs_sha256", "computed_at"))
            .height(5).span(24))
        .with_panel(
            timeseries.Panel().title("Energy timeline by meter (cumulative)")
            .description("Σ of the batch's allocation rows per meter, over the settled "
                         "intervals' end times. Intervals not settled yet (a running batch) "
                         "are in the footprint but not here.")
            .with_target(series_sql(TIMELINE, "time", "metric", "energy"))
            .height(9).span(24))
        .with_panel(
            table.Panel().title("Allocation by meter")
            .description("detail.per_meter of the footprint: the energy each meter gave the "
                         "batch (a parent's residual share under the parent).")
            .with_target(table_sql(BY_METER, "meter", "role", "carrier", "energy", "unit"))
            .height(8).span(12))
        .with_panel(
            table.Panel().title("Allocation rows by meter and rule")
            .with_target(table_sql(BY_RULE, "meter", "rule", "intervals", "energy", "first_end",
                                   "last_end"))
            .height(8).span(12))
        .with_panel(
            table.Panel().title("Revisions")
            .description("Every revision stays: final and revised rows are never changed.")
            .with_target(table_sql(REVISIONS, "revision", "status", "computed_at",
                                   "kgco2e_location", "kgco2e_market", "primary_data_share",
                                   "flags", "inputs_sha256"))
            .height(7).span(24))
    )

