-- Plain PostgreSQL: `reading` stays one table. Range scans by meter and time use
-- the primary key (site, meter, channel, ts); scans of a time window across all
-- meters use a BRIN index on ts (rows arrive roughly in time order, so BRIN is
-- tiny and effective).
CREATE INDEX IF NOT EXISTS reading_ts_brin ON reading USING brin (ts) WITH (pages_per_range = 32);
CREATE INDEX IF NOT EXISTS batch_event_ts_brin ON batch_event USING brin (ts);
