-- Aggregates and energy views without `bad` readings.
--
-- An OPC UA value with a Bad status reaches the database as value 0, quality
-- 'bad' (edge keeps the reading so the outage is visible). Aggregated with the
-- rest, one bad 0 in a cumulative counter made energy_* show a huge negative
-- energy in its bucket and the same positive amount in the next one. From this
-- migration on, reading_15m (and so reading_1h, reading_1d and every energy_*
-- view) aggregates only readings with quality <> 'bad'. 'uncertain' readings
-- still count: OPC UA sends Uncertain for e.g. the last usable value or a sensor
-- out of calibration, real readings whose loss would hide energy; the raw
-- `reading` table keeps every reading with its quality for whoever needs it.
-- A bucket whose readings were all bad has no row: like a polling gap, its
-- energy lands in the next bucket that has good readings (from_ts shows the span).
--
-- Same definitions as 0004/0005 otherwise. The views depend on each other, so
-- all six are dropped (no CASCADE: a view of someone else's built on them stops
-- the migration with PostgreSQL's message instead of vanishing) and re-created.
--
-- Plain PostgreSQL: materialized views, populated here (WITH DATA); refreshed by
-- `python -m ingest refresh` as before.
DROP VIEW IF EXISTS energy_15m, energy_1h, energy_1d;
DROP MATERIALIZED VIEW IF EXISTS reading_1d;
DROP MATERIALIZED VIEW IF EXISTS reading_1h;
DROP MATERIALIZED VIEW IF EXISTS reading_15m;

CREATE MATERIALIZED VIEW reading_15m AS
SELECT date_bin(INTERVAL '15 minutes', ts, TIMESTAMPTZ '2000-01-03 00:00:00+00') AS bucket,
       site, meter, channel, unit,
       (array_agg(value ORDER BY ts))[1]      AS first_value,
       (array_agg(value ORDER BY ts DESC))[1] AS last_value,
       min(ts) AS first_ts, max(ts) AS last_ts,
       min(value) AS min_value, max(value) AS max_value,
       count(*) AS readings, sum(value) AS sum_value
FROM reading
WHERE quality <> 'bad'
GROUP BY 1, site, meter, channel, unit
WITH DATA;
CREATE UNIQUE INDEX reading_15m_key ON reading_15m (site, meter, channel, unit, bucket);

CREATE MATERIALIZED VIEW reading_1h AS
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
CREATE UNIQUE INDEX reading_1h_key ON reading_1h (site, meter, channel, unit, bucket);

CREATE MATERIALIZED VIEW reading_1d AS
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
CREATE UNIQUE INDEX reading_1d_key ON reading_1d (site, meter, channel, unit, bucket);

CREATE VIEW energy_15m AS
SELECT r.bucket, r.site, r.meter, r.channel, r.unit, c.carrier,
       r.last_value - coalesce(lag(r.last_value) OVER w, r.first_value) AS energy,
       coalesce(lag(r.last_ts) OVER w, r.first_ts) AS from_ts,
       r.last_ts AS to_ts,
       r.readings
FROM reading_15m r
JOIN counter_unit c ON c.unit = r.unit
WINDOW w AS (PARTITION BY r.site, r.meter, r.channel, r.unit ORDER BY r.bucket);

CREATE VIEW energy_1h AS
SELECT r.bucket, r.site, r.meter, r.channel, r.unit, c.carrier,
       r.last_value - coalesce(lag(r.last_value) OVER w, r.first_value) AS energy,
       coalesce(lag(r.last_ts) OVER w, r.first_ts) AS from_ts,
       r.last_ts AS to_ts,
       r.readings
FROM reading_1h r
JOIN counter_unit c ON c.unit = r.unit
WINDOW w AS (PARTITION BY r.site, r.meter, r.channel, r.unit ORDER BY r.bucket);

CREATE VIEW energy_1d AS
SELECT r.bucket, r.site, r.meter, r.channel, r.unit, c.carrier,
       r.last_value - coalesce(lag(r.last_value) OVER w, r.first_value) AS energy,
       coalesce(lag(r.last_ts) OVER w, r.first_ts) AS from_ts,
       r.last_ts AS to_ts,
       r.readings
FROM reading_1d r
JOIN counter_unit c ON c.unit = r.unit
WINDOW w AS (PARTITION BY r.site, r.meter, r.channel, r.unit ORDER BY r.bucket);

GRANT SELECT ON reading_15m, reading_1h, reading_1d, energy_15m, energy_1h, energy_1d
    TO plantprint_reader, plantprint_writer;
