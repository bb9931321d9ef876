-- Evidence bundles (`python -m compute bundle`): the root hash of each bundle written
-- for a footprint revision. batch_footprint rows are immutable once final, so the
-- root lives beside them, keyed by the revision it certifies. A revision may be
-- bundled again: the same data gives the same root (nothing new is stored); data
-- landed since (a late reading inside the batch's context that changed no number)
-- gives another root, kept as another row. Rows are never changed or deleted.
-- Same DDL on PostgreSQL and TimescaleDB.
CREATE TABLE IF NOT EXISTS batch_evidence (
    site                 text        NOT NULL,
    batch_id             text        NOT NULL,
    revision             integer     NOT NULL,
    root_sha256          text        NOT NULL CHECK (root_sha256 ~ '^[0-9a-f]{64}$'),
    readings_merkle_root text        NOT NULL CHECK (readings_merkle_root ~ '^[0-9a-f]{64}$'),
    readings             integer     NOT NULL CHECK (readings >= 0),
    inputs_sha256        text        NOT NULL,  -- the footprint's, copied for the auditor
    created_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (site, batch_id, revision, root_sha256),
    FOREIGN KEY (site, batch_id, revision) REFERENCES batch_footprint (site, batch_id, revision)
);

CREATE OR REPLACE FUNCTION batch_evidence_keep() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'batch_evidence is append-only (%): a bundle root, once recorded, stays',
        TG_OP USING ERRCODE = 'integrity_constraint_violation';
END
$$;
DROP TRIGGER IF EXISTS batch_evidence_keep ON batch_evidence;
CREATE TRIGGER batch_evidence_keep BEFORE UPDATE OR DELETE ON batch_evidence
    FOR EACH ROW EXECUTE FUNCTION batch_evidence_keep();

-- The newest revision of every batch with the root of its newest bundle (NULL: never
-- bundled). batch_footprint_latest is left as it is.
CREATE OR REPLACE VIEW batch_footprint_evidence AS
SELECT l.*, e.root_sha256 AS evidence_root, e.created_at AS evidence_at
FROM batch_footprint_latest l
LEFT JOIN LATERAL (
    SELECT root_sha256, created_at FROM batch_evidence b
    WHERE (b.site, b.batch_id, b.revision) = (l.site, l.batch_id, l.revision)
    ORDER BY created_at DESC, root_sha256 LIMIT 1) e ON true;

GRANT SELECT ON batch_evidence, batch_footprint_evidence TO plantprint_reader, plantprint_writer;
GRANT INSERT ON batch_evidence TO plantprint_writer;
