-- Roles: the pipeline writes, Grafana reads, nothing runs as superuser.
--
-- Both roles are NOLOGIN group roles. Production grants membership to LOGIN
-- users created by the DBA, e.g.
--     CREATE ROLE ingest_svc LOGIN PASSWORD '...' IN ROLE plantprint_writer;
--     CREATE ROLE grafana    LOGIN PASSWORD '...' IN ROLE plantprint_reader;
-- Migrations run as the database owner (a role with CREATEROLE, or the DBA
-- creates the two roles beforehand); the services never use that role.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'plantprint_writer') THEN
        CREATE ROLE plantprint_writer NOLOGIN;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;  -- created concurrently by a migration of another database in the cluster
END
$$;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'plantprint_reader') THEN
        CREATE ROLE plantprint_reader NOLOGIN;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;

-- Only the owner creates objects in public (PostgreSQL 14 still lets everyone).
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO plantprint_writer, plantprint_reader;

GRANT SELECT ON ALL TABLES IN SCHEMA public TO plantprint_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO plantprint_writer;
GRANT INSERT ON reading, batch_event, ingested_frame TO plantprint_writer;
GRANT INSERT, UPDATE ON gateway_seq, consumer_offset TO plantprint_writer;

-- Relations created later by the migrating role (views, compute's tables) are
-- readable by both roles; write grants stay explicit per migration.
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO plantprint_reader;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO plantprint_writer;
