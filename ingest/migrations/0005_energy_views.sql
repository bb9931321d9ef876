-- Energy per meter per 15 minutes, hour and day, from cumulative counters.
--
-- Definition: the energy of bucket k is the counter's increase from the last
-- reading before bucket k (the previous bucket's last_value) to the last reading
-- in bucket k:  energy = last_value(k) - last_value(k-1).  Consecutive buckets
-- therefore telescope: their sum is exactly the counter's total increase, and the
-- energy between two polls that straddle a boundary is not lost (max-min or
-- last-first within a bucket would drop it). The first bucket of a meter falls
-- back to last_value - first_value. `from_ts`/`to_ts` give the span the delta
-- really covers (a gap of whole buckets lands in the bucket after it).
--
-- Readings are not interpolated to bucket boundaries, and counter rollovers,
-- resets, meter replacements and spikes are NOT handled here: a wrap shows as a
-- negative energy. Interval energy with those semantics is compute's job
-- (energy_interval); these views are the quick, raw look for dashboards.

CREATE OR REPLACE VIEW energy_15m AS
SELECT r.bucket, r.site, r.meter, r.channel, r.unit, c.carrier,
       r.last_value - coalesce(lag(r.last_value) OVER w, r.first_value) AS energy,
       coalesce(lag(r.last_ts) OVER w, r.first_ts) AS from_ts,
       r.last_ts AS to_ts,
       r.readings
FROM reading_15m r
JOIN counter_unit c ON c.unit = r.unit
WINDOW w AS (PARTITION BY r.site, r.meter, r.channel, r.unit ORDER BY r.bucket);

CREATE OR REPLACE VIEW energy_1h AS
SELECT r.bucket, r.site, r.meter, r.channel, r.unit, c.carrier,
       r.last_value - coalesce(lag(r.last_value) OVER w, r.first_value) AS energy,
       coalesce(lag(r.last_ts) OVER w, r.first_ts) AS from_ts,
       r.last_ts AS to_ts,
       r.readings
FROM reading_1h r
JOIN counter_unit c ON c.unit = r.unit
WINDOW w AS (PARTITION BY r.site, r.meter, r.channel, r.unit ORDER BY r.bucket);

CREATE OR REPLACE VIEW energy_1d AS
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
