-- Counter summaries per meter, channel and unit in 15-minute, hourly and daily
-- buckets (UTC): first/last value and time, min/max, count and sum. 1h is built on
-- 15m and 1d on 1h, so the three levels always agree. The energy_* views (0005)
-- turn them into energy per interval.
--
-- Plain PostgreSQL: materialized views, refreshed by `python -m ingest refresh`.
-- date_bin's origin is TimescaleDB's time_bucket origin (Monday 2000-01-03), so
-- bucket boundaries are identical on both backends.
CREATE MATERIALIZED VIEW IF NOT EXISTS reading_15m AS
SELECT date_bin(INTERVAL '15 minutes', ts, TIMESTAMPTZ '2000-01-03 00:00:00+00') AS bucket,
       site, meter, channel, unit,
       (array_agg(value ORDER BY ts))[1]      AS first_value,
       (array_agg(value ORDER BY ts DESC))[1] AS last_value,
       min(ts) AS first_ts, max(ts) AS last_ts,
       min(value) AS min_value, max(value) AS max_value,
       count(*) AS readings, sum(value) AS sum_value
FROM reading
GROUP BY 1, site, meter, channel, unit
WITH DATA;
CREATE UNIQUE INDEX IF NOT EXISTS reading_15m_key ON reading_15m (site, meter, channel, unit, bucket);

CREATE MATERIALIZED VIEW IF NOT EXISTS reading_1h AS
SELECT date_bin(INTERVAL '1 hour', bucket, TIMESTAMPTZ '2000-01-03 00:00:00+00') AS bucket,
       site, meter, channel, unit,
       (array_agg(first_value ORDER BY first_ts))[1]    AS first_value,
       (array_agg(last_value ORDER BY last_ts DESC))[1] AS last_value,
       min(first_ts) AS first_ts, max(last_ts) AS last_ts,
       min(min_value) AS min_value, max(max_value) AS max_value,
       sum(readings)::bigint AS readings, sum(sum_value) AS sum_value
FROM reading_15m
GROUP BY 1, site, meter, channel, unit
WITH DATA;
CREATE UNIQUE INDEX IF NOT EXISTS reading_1h_key ON reading_1h (site, meter, channel, unit, bucket);

CREATE MATERIALIZED VIEW IF NOT EXISTS reading_1d AS
SELECT date_bin(INTERVAL '1 day', bucket, TIMESTAMPTZ '2000-01-03 00:00:00+00') AS bucket,
       site, meter, channel, unit,
       (array_agg(first_value ORDER BY first_ts))[1]    AS first_value,
       (array_agg(last_value ORDER BY last_ts DESC))[1] AS last_value,
       min(first_ts) AS first_ts, max(last_ts) AS last_ts,
       min(min_value) AS min_value, max(max_value) AS max_value,
       sum(readings)::bigint AS readings, sum(sum_value) AS sum_value
FROM reading_1h
GROUP BY 1, site, meter, channel, unit
WITH DATA;
CREATE UNIQUE INDEX IF NOT EXISTS reading_1d_key ON reading_1d (site, meter, channel, unit, bucket);
