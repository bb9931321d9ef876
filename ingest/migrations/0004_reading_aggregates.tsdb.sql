-- Counter summaries per meter, channel and unit in 15-minute, hourly and daily
-- buckets (UTC): first/last value and time, min/max, count and sum. 1h is built on
-- 15m and 1d on 1h, so the three levels always agree. The energy_* views (0005)
-- turn them into energy per interval.
--
-- TimescaleDB: hierarchical continuous aggregates with real-time aggregation
-- (materialized_only = false: buckets not yet materialized are computed on read).
-- Refresh policies are set from config by `migrate --config`; `python -m ingest
-- refresh` refreshes them by hand (the WASM test peer runs no background jobs).

CREATE MATERIALIZED VIEW IF NOT EXISTS reading_15m
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '15 minutes', ts) AS bucket,
       site, meter, channel, unit,
       first(value, ts) AS first_value,
       last(value, ts) AS last_value,
       min(ts) AS first_ts, max(ts) AS last_ts,
       min(value) AS min_value, max(value) AS max_value,
       count(*) AS readings, sum(value) AS sum_value
FROM reading
GROUP BY time_bucket(INTERVAL '15 minutes', ts), site, meter, channel, unit
WITH NO DATA;

CREATE MATERIALIZED VIEW IF NOT EXISTS reading_1h
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 hour', bucket) AS bucket,
       site, meter, channel, unit,
       first(first_value, first_ts) AS first_value,
       last(last_value, last_ts) AS last_value,
       min(first_ts) AS first_ts, max(last_ts) AS last_ts,
       min(min_value) AS min_value, max(max_value) AS max_value,
       sum(readings)::bigint AS readings, sum(sum_value) AS sum_value
FROM reading_15m
GROUP BY time_bucket(INTERVAL '1 hour', bucket), site, meter, channel, unit
WITH NO DATA;

CREATE MATERIALIZED VIEW IF NOT EXISTS reading_1d
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 day', bucket) AS bucket,
       site, meter, channel, unit,
       first(first_value, first_ts) AS first_value,
       last(last_value, last_ts) AS last_value,
       min(first_ts) AS first_ts, max(last_ts) AS last_ts,
       min(min_value) AS min_value, max(max_value) AS max_value,
       sum(readings)::bigint AS readings, sum(sum_value) AS sum_value
FROM reading_1h
GROUP BY time_bucket(INTERVAL '1 day', bucket), site, meter, channel, unit
WITH NO DATA;
