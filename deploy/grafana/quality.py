"""Data quality: is every meter reporting, how much energy is estimated and why,
are gateways losing or delaying frames, what ingest dead-letters, and whether the
smart carbon meters agree with compute.

Flag bits of ``energy_interval.flags`` (compute.kernels): 1 estimated, 2 gap,
4 rollover, 8 reset, 16 spike, 32 non-monotonic, 64 catch-up. Spool depth and
dead letters are not in the database: they come from the edge's and ingest's
Prometheus metrics (``edge_spool_depth``, ``plantprint_ingest_dlq_total``).
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import table, timeseries

from deploy.grafana.panels import (
    BATCH_OVERLAPS,
    METERS_ON_LINES,
    PROM_DS,
    new_dashboard,
    promql,
    series_sql,
    site_line_product,
    table_sql,
)

UID = "plantprint-quality"

# Each meter of the site model and its newest counter reading up to the range's end:
# a meter that never reported shows with no reading (sorted first).
LAST_READING = """
SELECT m.meter, m.carrier, m.line, l.gateway, l.ts AS last_reading,
       extract(epoch FROM $__timeTo()::timestamptz - l.ts) AS age_s, l.quality
FROM site_meter m
LEFT JOIN LATERAL (
    SELECT r.gateway, r.ts, r.quality FROM reading r
    WHERE r.site = m.site AND r.meter = m.meter AND r.channel = m.channel AND r.ts <= $__timeTo()
    ORDER BY r.ts DESC LIMIT 1) l ON true
WHERE m.site = '$site' AND m.line IN ($line)
ORDER BY age_s DESC NULLS FIRST, m.meter
"""

INTERVAL_QUALITY = """
SELECT i.meter, i.carrier, count(*) AS intervals, sum(i.energy) AS energy,
       sum(i.estimated) / nullif(sum(i.energy), 0) AS estimated_share,
       count(*) FILTER (WHERE i.flags & 2 <> 0) AS gaps,
       count(*) FILTER (WHERE i.flags & 8 <> 0) AS resets,
       count(*) FILTER (WHERE i.flags & 4 <> 0) AS rollovers,
       count(*) FILTER (WHERE i.flags & 16 <> 0) AS spikes,
       count(*) FILTER (WHERE i.flags & 64 <> 0) AS catch_ups,
       count(*) FILTER (WHERE i.flags & 32 <> 0) AS non_monotonic
FROM energy_interval i
WHERE i.site = '$site' AND $__timeFilter(i.end_ts) AND i.meter IN (METERS)
GROUP BY i.meter, i.carrier ORDER BY estimated_share DESC NULLS LAST, i.meter
""".replace("METERS", METERS_ON_LINES)

ESTIMATED_SERIES = """
SELECT $__timeGroupAlias(i.end_ts, 1h), i.carrier AS metric,
       sum(i.estimated) / nullif(sum(i.energy), 0) AS estimated_share
FROM energy_interval i
WHERE i.site = '$site' AND $__timeFilter(i.end_ts) AND i.meter IN (METERS)
GROUP BY 1, 2 ORDER BY 1, 2
""".replace("METERS", METERS_ON_LINES)

# Per gateway and stream: sequence numbers never received (gateway_seq is small).
SEQUENCE_GAPS = """
SELECT g.gateway, g.stream, g.highest_seq, g.frames, g.missing_count,
       g.missing::text AS missing, g.updated_at
FROM gateway_seq g
ORDER BY g.missing_count DESC, g.gateway, g.stream
"""

# How late readings land (received_at − source time): a gateway replaying its
# spool after an outage shows as a rise; the spool's own depth is edge_spool_depth.
LANDING_DELAY = """
SELECT $__timeGroupAlias(r.ts, $__interval), r.gateway AS metric,
       max(extract(epoch FROM r.received_at - r.ts)) AS delay_s
FROM reading r
WHERE r.site = '$site' AND $__timeFilter(r.ts)
GROUP BY 1, 2 ORDER BY 1, 2
"""

# A smart carbon meter's own kgCO2 for a batch beside compute's (its energy × the
# location-based electricity factor the footprint used).
CARBON_METERS = """
SELECT b.batch_id, c.key AS meter, c.value::double precision AS meter_kg,
       (b.detail -> 'per_meter' ->> c.key)::double precision * f.value AS computed_kg,
       c.value::double precision
         / nullif((b.detail -> 'per_meter' ->> c.key)::double precision * f.value, 0) - 1
         AS deviation,
       ('carbon_meter_deviation:' || c.key) = ANY (b.flags) AS flagged
FROM batch_footprint_latest b
CROSS JOIN LATERAL jsonb_each_text(b.detail -> 'carbon_meter_kg') c
LEFT JOIN emission_factor f ON f.id = ANY (b.factor_ids) AND f.carrier = 'electricity'
                           AND f.kind = 'location'
WHERE b.site = '$site' AND OVERLAPS
ORDER BY flagged DESC, abs(c.value::double precision
         / nullif((b.detail -> 'per_meter' ->> c.key)::double precision * f.value, 0) - 1)
         DESC NULLS LAST, b.batch_id
""".replace("OVERLAPS", BATCH_OVERLAPS)

SPOOL_DEPTH = "max by (gateway) (edge_spool_depth)"
DLQ_RATE = "sum by (reason) (rate(plantprint_ingest_dlq_total[$__rate_interval]))"


def dashboard() -> dash.Dashboard:
    board = site_line_product(new_dashboard(
        UID, "Data quality",
        "Last reading per meter, gaps and estimated energy, resets, rollovers and spikes, "
        "gateways' sequence gaps, landing delay and spool depth, dead letters by reason, "
        "carbon-meter deviations."), product=False)
    return (
        board
        .with_panel(
            table.Panel().title("Last reading per meter")
            .description("Newest counter reading of each meter of the site model up to the end "
                         "of the range; age in seconds. A meter with no reading at all is first.")
            .with_target(table_sql(LAST_READING, "meter", "carrier", "line", "gateway",
                                   "last_reading", "age_s", "quality"))
            .height(8).span(12))
        .with_panel(
            table.Panel().title("Intervals: gaps, estimates, resets, rollovers, spikes")
            .description("compute's counter intervals ending in the range, per meter: how many "
                         "carry each flag, and the share of the energy that is estimated.")
            .with_target(table_sql(INTERVAL_QUALITY, "meter", "carrier", "intervals", "energy",
                                   "estimated_share", "gaps", "resets", "rollovers", "spikes",
                                   "catch_ups", "non_monotonic"))
            .height(8).span(12))
        .with_panel(
            timeseries.Panel().title("Estimated share of energy per hour").unit("percentunit")
            .with_target(series_sql(ESTIMATED_SERIES, "time", "metric", "estimated_share"))
            .height(7).span(12))
        .with_panel(
            timeseries.Panel().title("Landing delay per gateway").unit("s")
            .description("Largest received_at − source time of the readings per interval: a "
                         "gateway replaying its spool after an outage shows as a rise.")
            .with_target(series_sql(LANDING_DELAY, "time", "metric", "delay_s"))
            .height(7).span(12))
        .with_panel(
            table.Panel().title("Sequence gaps per gateway")
            .description("Frames a gateway numbered but ingest never received (gateway_seq); "
                         "a late frame removes its number.")
            .with_target(table_sql(SEQUENCE_GAPS, "gateway", "stream", "highest_seq", "frames",
                                   "missing_count", "missing", "updated_at"))
            .height(7).span(12))
        .with_panel(
            timeseries.Panel().title("Spool depth per gateway").datasource(PROM_DS)
            .description("Frames waiting in each edge agent's disk spool (edge_spool_depth, "
                         "Prometheus).")
            .with_target(promql(SPOOL_DEPTH, "{{gateway}}")).height(7).span(12))
        .with_panel(
            timeseries.Panel().title("Dead letters per second by reason").datasource(PROM_DS)
            .description("plantprint_ingest_dlq_total by reason (Prometheus); the reasons are "
                         "in docs/ingest.md, Dead-letter topic.")
            .with_target(promql(DLQ_RATE, "{{reason}}")).height(7).span(12))
        .with_panel(
            table.Panel().title("Carbon meters against compute")
            .description("A smart carbon meter's own kgCO2 for each batch beside its energy × "
                         "the location-based factor; flagged when beyond the site's "
                         "carbon_tolerance.")
            .with_target(table_sql(CARBON_METERS, "batch_id", "meter", "meter_kg",
                                   "computed_kg", "deviation", "flagged"))
            .height(7).span(12))
    )
