-- compute's tables: what it used (frame ledger, batches, machine states), what it
-- derived (interval energy, allocations) and what it concluded (footprints, in
-- revisions that are never overwritten once final). Written by the compute
-- worker together with its Kafka offsets (consumer_offset, its own group) in one
-- transaction. Same DDL on PostgreSQL and TimescaleDB. Timestamps are
-- microseconds (PostgreSQL's resolution); energies are in the carrier's
-- canonical unit (electricity kWh, natural gas Nm3, steam t, heat GJ).

-- Frames compute took into account, once each: a redelivered or re-sent frame
-- (same digest) is skipped; a different body under a known key (the gateway's
-- sequence restarted) is refused, exactly as ingest refuses it.
CREATE TABLE IF NOT EXISTS compute_frame (
    gateway     text        NOT NULL,
    stream      text        NOT NULL CHECK (stream IN ('readings', 'batches')),
    seq         bigint      NOT NULL,
    site        text        NOT NULL,
    body_sha256 bytea       NOT NULL,
    kafka_partition integer NOT NULL,
    kafka_offset    bigint  NOT NULL,
    PRIMARY KEY (gateway, stream, seq)
);

-- The batches as compute understands them from the MES events (start, end,
-- quantity). One row per batch; its footprint revisions reference it.
CREATE TABLE IF NOT EXISTS compute_batch (
    site        text        NOT NULL,
    batch_id    text        NOT NULL,
    asset       text        NOT NULL,
    product     text        NOT NULL,
    start_ts    timestamptz NOT NULL,
    end_ts      timestamptz,
    quantity    double precision,
    unit        text,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (site, batch_id)
);

-- Machine-state changes per asset (the `state` channel the edge reports), with
-- their source timestamps: the best evidence for splitting a boundary interval.
CREATE TABLE IF NOT EXISTS compute_state_change (
    site   text        NOT NULL,
    asset  text        NOT NULL,
    ts     timestamptz NOT NULL,
    code   integer     NOT NULL,
    PRIMARY KEY (site, asset, ts)
);

-- One row per counter interval of a meter: between two consecutive readings of
-- its counter channel. `energy` >= 0 always (rollovers unwrapped; resets and
-- spikes estimated and flagged); `estimated` is the part that is an estimate;
-- `flags` are compute.kernels' bits (1 estimated, 2 gap, 4 rollover, 8 reset,
-- 16 spike, 32 non-monotonic, 64 catch-up of a frozen register).
-- `power_start`/`power_end` (canonical rate unit) are the power channel around
-- the interval (the evidence for splitting a boundary interval); `co2` (kg) the
-- smart carbon meter's own counter increase.
CREATE TABLE IF NOT EXISTS energy_interval (
    site        text             NOT NULL,
    meter       text             NOT NULL,
    carrier     text             NOT NULL,
    start_ts    timestamptz      NOT NULL,
    end_ts      timestamptz      NOT NULL,
    energy      double precision NOT NULL CHECK (energy >= 0),
    estimated   double precision NOT NULL DEFAULT 0,
    flags       integer          NOT NULL DEFAULT 0,
    power_start double precision,
    power_end   double precision,
    co2         double precision,
    PRIMARY KEY (site, meter, end_ts),
    CHECK (end_ts > start_ts)
);

-- Per meter, what the worker carries between micro-batches (the counter's last
-- reading time, baseline and rate in canonical units, the last power value, the
-- carbon meter's CO2 counter), and per site how far allocations are settled and
-- the newest reading time: restored on partition assignment.
CREATE TABLE IF NOT EXISTS compute_meter_state (
    site        text   NOT NULL,
    meter       text   NOT NULL,
    carry       jsonb  NOT NULL,
    PRIMARY KEY (site, meter)
);
CREATE TABLE IF NOT EXISTS compute_site_state (
    site          text   PRIMARY KEY,
    settled_until bigint NOT NULL,  -- epoch ns
    data_now      bigint NOT NULL,  -- epoch ns
    batch_marks   jsonb  NOT NULL DEFAULT '{}'  -- gateway -> newest batch frame's send time
);

-- Where each interval's energy went, once the interval is settled (every batch
-- it overlaps is known to its end and quantity). batch_id '' is the unallocated
-- overhead; '(children)' on a parent is its sub-meters' energy (allocated through
-- them); '(respread)' moves a frozen register's catch-up back over the frozen
-- stretch. Invariant, checked by the tests:
--   Σ allocation.energy per (site, meter, end_ts) = energy_interval.energy.
CREATE TABLE IF NOT EXISTS allocation (
    site      text             NOT NULL,
    meter     text             NOT NULL,
    end_ts    timestamptz      NOT NULL,
    batch_id  text             NOT NULL,
    energy    double precision NOT NULL,
    rule      text             NOT NULL,
    PRIMARY KEY (site, meter, end_ts, batch_id)
);
CREATE INDEX IF NOT EXISTS allocation_batch_idx ON allocation (site, batch_id);

-- Footprint of a batch, per revision. Revision 0 is the provisional number,
-- updated while the batch runs; revision 1 is the final one; each change after
-- that is a new revision (status 'revised'). Rows of a final or revised
-- revision are never updated or deleted (trigger below).
CREATE TABLE IF NOT EXISTS batch_footprint (
    site                 text             NOT NULL,
    batch_id             text             NOT NULL,
    revision             integer          NOT NULL CHECK (revision >= 0),
    status               text             NOT NULL
                         CHECK (status IN ('provisional', 'final', 'revised')),
    asset                text             NOT NULL,
    product              text             NOT NULL,
    start_ts             timestamptz      NOT NULL,
    end_ts               timestamptz,
    quantity             double precision,
    unit                 text,
    declared_units       double precision,
    energy               jsonb            NOT NULL,  -- carrier -> amount (canonical unit)
    energy_unit          jsonb            NOT NULL,  -- carrier -> unit
    uncertainty          jsonb            NOT NULL,  -- carrier -> amount, expanded (k = 2)
    kgco2e_location      double precision NOT NULL,
    kgco2e_market        double precision NOT NULL,
    kgco2e_uncertainty   double precision NOT NULL,
    per_unit_location    double precision,
    per_unit_market      double precision,
    primary_data_share   double precision NOT NULL,
    flags                text[]           NOT NULL DEFAULT '{}',
    factor_ids           integer[]        NOT NULL DEFAULT '{}',
    detail               jsonb            NOT NULL DEFAULT '{}',  -- per meter, methods, carbon meters
    inputs_sha256        text             NOT NULL,
    computed_at          timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (site, batch_id, revision)
);

CREATE OR REPLACE FUNCTION batch_footprint_keep_certified() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status <> 'provisional' THEN
        RAISE EXCEPTION 'batch_footprint %/% revision % is %: certified numbers are never changed',
            OLD.site, OLD.batch_id, OLD.revision, OLD.status
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END
$$;
DROP TRIGGER IF EXISTS batch_footprint_keep_certified ON batch_footprint;
CREATE TRIGGER batch_footprint_keep_certified
    BEFORE UPDATE OR DELETE ON batch_footprint
    FOR EACH ROW EXECUTE FUNCTION batch_footprint_keep_certified();

-- The newest revision of every batch (what Grafana and the exports show).
CREATE OR REPLACE VIEW batch_footprint_latest AS
SELECT DISTINCT ON (site, batch_id) *
FROM batch_footprint
ORDER BY site, batch_id, revision DESC;

GRANT INSERT ON compute_frame, energy_interval, compute_state_change TO plantprint_writer;
GRANT INSERT, UPDATE ON compute_batch, allocation, batch_footprint, compute_meter_state,
    compute_site_state TO plantprint_writer;
GRANT SELECT ON batch_footprint_latest TO plantprint_reader, plantprint_writer;
