-- TimescaleDB: `reading` becomes a hypertable on ts. The chunk interval set here
-- is the initial one; `python -m ingest migrate --config` re-sets it from the
-- configured data rate, and sets compression and retention policies (settings,
-- not schema: they live in config, not in a migration).
SELECT create_hypertable('reading', by_range('ts', INTERVAL '1 day'),
                         if_not_exists => TRUE, migrate_data => TRUE);
ALTER TABLE reading SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'site, meter, channel',
    timescaledb.compress_orderby = 'ts'
);
