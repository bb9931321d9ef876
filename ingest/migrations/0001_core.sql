-- Raw landing tables, the frame ledger (dedup by gateway, stream, seq), sequence
-- gaps and consumer offsets. Shared by PostgreSQL and TimescaleDB; the time-series
-- layout of `reading` differs per backend and follows in 0003.

-- One row per reading. The primary key makes raw landing idempotent: a replayed
-- frame or a redelivered Kafka message lands nothing twice (ON CONFLICT DO NOTHING).
-- Timestamps are microseconds (PostgreSQL's resolution); the wire carries ns.
CREATE TABLE IF NOT EXISTS reading (
    site        text             NOT NULL,
    gateway     text             NOT NULL,
    meter       text             NOT NULL,
    channel     text             NOT NULL,
    ts          timestamptz      NOT NULL,
    value       double precision NOT NULL,
    unit        text             NOT NULL,
    quality     text             NOT NULL CHECK (quality IN ('good', 'uncertain', 'bad')),
    seq         bigint           NOT NULL,
    received_at timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (site, meter, channel, ts)
);

-- MES batch lifecycle events (start | end | quantity) per asset.
CREATE TABLE IF NOT EXISTS batch_event (
    site        text             NOT NULL,
    gateway     text             NOT NULL,
    asset       text             NOT NULL,
    batch_id    text             NOT NULL,
    product     text             NOT NULL,
    kind        text             NOT NULL CHECK (kind IN ('start', 'end', 'quantity')),
    ts          timestamptz      NOT NULL,
    quantity    double precision,
    unit        text,
    seq         bigint           NOT NULL,
    received_at timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (site, asset, batch_id, kind, ts)
);
CREATE INDEX IF NOT EXISTS batch_event_ts_idx ON batch_event (site, ts);

-- Every frame ingest accepted, once: the dedup ledger by (gateway, stream, seq)
-- and the provenance of each row (which Kafka record carried it).
CREATE TABLE IF NOT EXISTS ingested_frame (
    gateway     text        NOT NULL,
    stream      text        NOT NULL CHECK (stream IN ('readings', 'batches')),
    seq         bigint      NOT NULL,
    site        text        NOT NULL,
    items       integer     NOT NULL,
    rejected    integer     NOT NULL DEFAULT 0,
    topic       text        NOT NULL,
    kafka_partition integer NOT NULL,
    kafka_offset    bigint  NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (gateway, stream, seq)
);

-- Per gateway and stream: the highest sequence number seen and the numbers still
-- missing below it (a multirange; a late frame that fills a gap removes its number).
CREATE TABLE IF NOT EXISTS gateway_seq (
    gateway     text           NOT NULL,
    stream      text           NOT NULL CHECK (stream IN ('readings', 'batches')),
    first_seq   bigint         NOT NULL,
    highest_seq bigint         NOT NULL,
    frames      bigint         NOT NULL DEFAULT 0,
    missing     int8multirange NOT NULL DEFAULT '{}',
    missing_count bigint       NOT NULL DEFAULT 0,
    updated_at  timestamptz    NOT NULL DEFAULT now(),
    PRIMARY KEY (gateway, stream)
);

-- Consumer offsets stored with the results they produced (same transaction):
-- the database, not Kafka's group offsets, is the source of truth.
CREATE TABLE IF NOT EXISTS consumer_offset (
    consumer_group  text        NOT NULL,
    topic           text        NOT NULL,
    kafka_partition integer     NOT NULL,
    next_offset     bigint      NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, kafka_partition)
);

-- Units whose channels are cumulative counters (energy and other metered
-- quantities); the energy_* views read only these.
CREATE TABLE IF NOT EXISTS counter_unit (
    unit    text PRIMARY KEY,
    carrier text NOT NULL
);
INSERT INTO counter_unit (unit, carrier) VALUES
    ('Wh', 'electricity'), ('kWh', 'electricity'), ('MWh', 'electricity'),
    ('varh', 'reactive'), ('kvarh', 'reactive'), ('Mvarh', 'reactive'),
    ('m3', 'volume'), ('Nm3', 'volume'), ('MJ', 'heat'), ('GJ', 'heat'),
    ('kg', 'mass'), ('t', 'mass')
ON CONFLICT (unit) DO NOTHING;
