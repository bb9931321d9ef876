-- Replay protection across `python -m ingest ledger reset` (docs/ingest.md).
--
-- A reset deletes a gateway's ledger rows so that its re-numbered frames can land.
-- Without more, the bytes that landed before the reset could then land again (a
-- captured frame replayed) and take the sequence numbers of the genuine new frames.
-- The reset therefore moves each deleted frame's identity and body digest here, in
-- the same transaction, and starts a new epoch for the gateway: a frame whose signed
-- body is one of these is dead-lettered as `replayed`, never landed again.
--
-- Append-only evidence: the writer may only read it; the owner (ledger reset) inserts.
CREATE TABLE IF NOT EXISTS gateway_epoch (
    gateway     text        NOT NULL,
    epoch       integer     NOT NULL,             -- 1 for the first reset, then +1
    stream      text        CHECK (stream IN ('readings', 'batches')),  -- NULL: both
    started_at  timestamptz NOT NULL DEFAULT now(),
    started_by  text        NOT NULL DEFAULT current_user,
    frames_retired bigint   NOT NULL,
    export_file text        NOT NULL,             -- the reset's export (its provenance)
    PRIMARY KEY (gateway, epoch)
);

CREATE TABLE IF NOT EXISTS retired_frame (
    gateway     text        NOT NULL,
    stream      text        NOT NULL CHECK (stream IN ('readings', 'batches')),
    seq         bigint      NOT NULL,
    epoch       integer     NOT NULL,             -- the epoch the reset started
    body_sha256 bytea       NOT NULL,
    retired_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (gateway, epoch, stream, seq)
);
-- landing looks every new frame's digest up here
CREATE INDEX IF NOT EXISTS retired_frame_digest_idx ON retired_frame (body_sha256);

GRANT SELECT ON gateway_epoch, retired_frame TO plantprint_writer, plantprint_reader;
REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON gateway_epoch, retired_frame FROM plantprint_writer;
