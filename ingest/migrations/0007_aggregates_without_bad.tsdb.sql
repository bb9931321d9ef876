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
-- TimescaleDB: continuous aggregates cannot change their query, so they are
-- dropped and re-created WITH NO DATA (with materialized_only = false every
-- bucket is computed from `reading` on read until refreshed). Dropping them also
-- drops their refresh policies: run `python -m ingest migrate --config
-- server.toml` (re-applies the [storage] policies) and `python -m ingest refresh`
-- after this upgrade.
DROP VIEW IF EXISTS energy_15m, energy_1h, energy_1d;
DROP MATERIALIZED VIEW IF EXISTS reading_1d;
DROP MATERIALIZED VIEW IF EXISTS reading_1h;
DROP MATERIALIZED VIEW IF EXISTS reading_15m;

CREATE MATERIALIZED VIEW reading_15m
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '15 minutes', ts) AS bucket,
       site, meter, channel, unit,
       first(value, ts) AS first_value,
       last(value, ts) AS last_value,
       min(ts) AS first_ts, max(ts) AS last_ts,
       min(value) AS min_value, max(value) AS max_value,
       count(*) AS readings, sum(value) AS sum_value
FROM reading
WHERE quality <> 'bad'
GROUP BY time_bucket(INTERVAL '15 minutes', ts), site, meter, channel, unit
WITH NO DATA;

CREATE MATERIALIZED VIEW reading_1h
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

CREATE MATERIALIZED VIEW reading_1d
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
