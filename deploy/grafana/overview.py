"""Plant overview: power now and over time, energy and kgCO2e today and this month,
intensity per product against its target, top consumers, the unallocated share.

Energy is compute's interval energy (``energy_interval``: rollovers, resets and
spikes handled) in each carrier's canonical unit; power is the meters' power
channels converted to the carrier's rate unit (``rate_unit``). A parent meter
(an incomer) is left out of sums over its sub-meters, which it already holds.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import bargauge, stat, table, timeseries
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.models.common import BigValueGraphMode, VisibilityMode

from deploy.grafana.panels import (
    ASSETS_ON_LINES,
    EVERY_ROW,
    Sql,
    new_dashboard,
    series_sql,
    site_line_product,
    table_sql,
)

UID = "plantprint-overview"

# Each meter's newest power reading in the 15 minutes before the range's end.
POWER_NOW = """
SELECT m.line || ' · ' || m.carrier || ' (' || c.rate_unit || ')' AS metric,
       sum(p.value * u.to_rate_unit) AS power
FROM site_meter m
JOIN carrier_unit c ON c.carrier = m.carrier
CROSS JOIN LATERAL (
    SELECT r.value, r.unit FROM reading r
    WHERE r.site = m.site AND r.meter = m.meter AND r.channel = m.power_channel
      AND r.quality <> 'bad'
      AND r.ts > $__timeTo()::timestamptz - interval '15 minutes' AND r.ts <= $__timeTo()
    ORDER BY r.ts DESC LIMIT 1) p
JOIN rate_unit u ON u.carrier = m.carrier AND u.unit = p.unit
WHERE m.site = '$site' AND m.role <> 'parent' AND m.line IN ($line)
GROUP BY 1 ORDER BY 1
"""

# Mean power per 15 minutes from the reading_15m aggregate (sum/count of the power channel).
POWER_SERIES = """
SELECT r.bucket AS "time", m.line || ' · ' || m.carrier || ' (' || c.rate_unit || ')' AS metric,
       sum(r.sum_value / r.readings * u.to_rate_unit) AS power
FROM reading_15m r
JOIN site_meter m ON m.site = r.site AND m.meter = r.meter AND m.channel IS NOT NULL
                 AND r.channel = m.power_channel
JOIN carrier_unit c ON c.carrier = m.carrier
JOIN rate_unit u ON u.carrier = m.carrier AND u.unit = r.unit
WHERE r.site = '$site' AND $__timeFilter(r.bucket) AND m.role <> 'parent' AND m.line IN ($line)
GROUP BY 1, 2 ORDER BY 1, 2
"""

# The site's energy: meters that are nobody's sub-meter, so nothing counts twice.
SITE_ENERGY = """
SELECT i.carrier || ' (' || c.energy_unit || ')' AS metric, sum(i.energy) AS energy
FROM energy_interval i
JOIN site_meter m ON m.site = i.site AND m.meter = i.meter
JOIN carrier_unit c ON c.carrier = i.carrier
WHERE i.site = '$site' AND $__timeFilter(i.end_ts) AND NOT m.is_child
GROUP BY 1 ORDER BY 1
"""

# kgCO2e of the batches that started in the range (newest revision each).
BATCH_CO2E = """
SELECT coalesce(sum(b.kgco2e_location), 0) AS kgco2e_location,
       coalesce(sum(b.kgco2e_market), 0) AS kgco2e_market
FROM batch_footprint_latest b
WHERE b.site = '$site' AND $__timeFilter(b.start_ts)
  AND b.product IN ($product) AND b.asset IN (ASSETS)
""".replace("ASSETS", ASSETS_ON_LINES)

# Hourly energy from the meters' counters (energy_1h over the reading_1h aggregate).
COUNTER_ENERGY = """
SELECT e.bucket AS "time", m.carrier || ' (' || e.unit || ')' AS metric, sum(e.energy) AS energy
FROM energy_1h e
JOIN site_meter m ON m.site = e.site AND m.meter = e.meter AND m.channel = e.channel
WHERE e.site = '$site' AND $__timeFilter(e.bucket) AND NOT m.is_child
GROUP BY 1, 2 ORDER BY 1, 2
"""

INTENSITY = """
SELECT b.product,
       sum(b.kgco2e_location) / nullif(sum(b.declared_units), 0) AS per_unit_location,
       sum(b.kgco2e_market) / nullif(sum(b.declared_units), 0) AS per_unit_market,
       p.target_kgco2e_per_unit AS target,
       coalesce(p.declared_unit, 'kilogram') AS declared_unit,
       count(*) AS batches
FROM batch_footprint_latest b
LEFT JOIN site_product p ON p.site = b.site AND p.product = b.product
WHERE b.site = '$site' AND b.status <> 'provisional' AND $__timeFilter(b.end_ts)
  AND b.declared_units IS NOT NULL
  AND b.product IN ($product) AND b.asset IN (ASSETS)
GROUP BY b.product, p.target_kgco2e_per_unit, p.declared_unit
ORDER BY 1
""".replace("ASSETS", ASSETS_ON_LINES)

TOP_CONSUMERS = """
SELECT i.meter, m.line, i.carrier, sum(i.energy) AS energy, c.energy_unit AS unit,
       sum(i.estimated) / nullif(sum(i.energy), 0) AS estimated_share
FROM energy_interval i
JOIN site_meter m ON m.site = i.site AND m.meter = i.meter
JOIN carrier_unit c ON c.carrier = i.carrier
WHERE i.site = '$site' AND $__timeFilter(i.end_ts) AND m.role <> 'parent' AND m.line IN ($line)
GROUP BY i.meter, m.line, i.carrier, c.energy_unit
ORDER BY i.carrier, energy DESC
LIMIT 20
"""

# Settled allocations: '' rows are the unallocated overhead; a parent's
# '(children)' rows are energy allocated through its sub-meters (not counted).
UNALLOCATED = """
SELECT i.carrier AS metric,
       sum(a.energy) FILTER (WHERE a.batch_id = '')
         / nullif(sum(a.energy) FILTER (WHERE a.batch_id <> '(children)'), 0) AS unallocated_share
FROM allocation a
JOIN energy_interval i ON i.site = a.site AND i.meter = a.meter AND i.end_ts = a.end_ts
WHERE a.site = '$site' AND $__timeFilter(a.end_ts)
GROUP BY 1 ORDER BY 1
"""


def _stat(title: str, description: str, query: Sql, unit: str,
          time_from: str | None = None) -> stat.Panel:
    panel = (stat.Panel().title(title).description(description).with_target(query).unit(unit)
             .decimals(1).graph_mode(BigValueGraphMode.NONE).reduce_options(EVERY_ROW)
             .height(5).span(6))
    return panel.time_from(time_from) if time_from else panel


def dashboard() -> dash.Dashboard:
    board = site_line_product(new_dashboard(
        UID, "Plant overview",
        "Power, energy and kgCO2e of a site, intensity per product against its target, "
        "the biggest consumers and the energy no batch carries."))
    board = (
        board.with_row(dash.Row("Now"))
        .with_panel(
            bargauge.Panel().title("Power now per line and carrier")
            .description("Each meter's newest power reading of the last 15 minutes, summed per "
                         "line and carrier in the carrier's rate unit. Incomers (parent meters) "
                         "are left out: their sub-meters are in the sums.")
            .with_target(table_sql(POWER_NOW, "metric", "power")).decimals(1)
            .reduce_options(EVERY_ROW)
            .height(7).span(8))
        .with_panel(
            timeseries.Panel().title("Power per line and carrier (15 min means)")
            .description("Mean of the power channel per 15 minutes (reading_15m), summed over "
                         "the line's meters.")
            .with_target(series_sql(POWER_SERIES, "time", "metric", "power"))
            .height(7).span(16))
        .with_row(dash.Row("Today and this month"))
        .with_panel(_stat("Energy today", "The site's energy by carrier since midnight: meters "
                          "that are nobody's sub-meter, compute's interval energy.",
                          table_sql(SITE_ENERGY, "metric", "energy"), "none", "now/d"))
        .with_panel(_stat("kgCO2e today", "Location- and market-based kgCO2e of the batches "
                          "started today (newest revision).",
                          table_sql(BATCH_CO2E, "kgco2e_location", "kgco2e_market"), "none",
                          "now/d"))
        .with_panel(_stat("Energy this month", "As Energy today, since the first of the month.",
                          table_sql(SITE_ENERGY, "metric", "energy"), "none", "now/M"))
        .with_panel(_stat("kgCO2e this month", "As kgCO2e today, batches started this month.",
                          table_sql(BATCH_CO2E, "kgco2e_location", "kgco2e_market"), "none",
                          "now/M"))
        .with_row(dash.Row("Products and consumers"))
        .with_panel(
            table.Panel().title("Intensity per product against target")
            .description("kgCO2e per declared unit of the batches finalised in the range "
                         "(Σ kgCO2e ÷ Σ declared units), location- and market-based, beside the "
                         "site model's target_kgco2e_per_unit.")
            .with_target(table_sql(INTENSITY, "product", "per_unit_location", "per_unit_market",
                                   "target", "declared_unit", "batches"))
            .height(8).span(12))
        .with_panel(
            table.Panel().title("Top consumers")
            .description("Energy per meter in the range, canonical unit, with its estimated "
                         "share (gaps, resets, spikes).")
            .with_target(table_sql(TOP_CONSUMERS, "meter", "line", "carrier", "energy", "unit",
                                   "estimated_share"))
            .height(8).span(12))
        .with_panel(
            stat.Panel().title("Unallocated share").unit("percentunit").decimals(1)
            .description("Share of the settled energy that no batch carries (idle, changeover "
                         "kept as overhead), per carrier.")
            .with_target(table_sql(UNALLOCATED, "metric", "unallocated_share"))
            .reduce_options(EVERY_ROW).graph_mode(BigValueGraphMode.NONE).height(6).span(8))
        .with_panel(
            timeseries.Panel().title("Energy per hour from the meter counters")
            .description("energy_1h: counter increase per hour of the top-level meters, in the "
                         "readings' unit; the quick raw look, without compute's rollover and "
                         "reset handling.")
            .with_target(series_sql(COUNTER_ENERGY, "time", "metric", "energy"))
            .show_points(VisibilityMode.NEVER).height(6).span(16))
    )
    return board
