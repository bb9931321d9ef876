-- Database roles, run once by the DBA (migration 0002 creates the two group roles
-- and grants them; this adds the LOGIN users). Nothing runs as superuser.
CREATE ROLE plantprint_owner LOGIN CREATEROLE PASSWORD '…';  -- runs migrations only
CREATE DATABASE plantprint OWNER plantprint_owner;
\c plantprint
CREATE EXTENSION IF NOT EXISTS timescaledb;                 -- as the DBA, before migrating
-- after `python -m ingest migrate` (as plantprint_owner):
CREATE ROLE ingest_svc LOGIN PASSWORD '…' IN ROLE plantprint_writer CONNECTION LIMIT 20;
CREATE ROLE grafana    LOGIN PASSWORD '…' IN ROLE plantprint_reader CONNECTION LIMIT 10;
ALTER ROLE grafana SET default_transaction_read_only = on;
ALTER ROLE grafana SET statement_timeout = '30s';
-- TLS only for these logins (pg_hba.conf):
--   hostssl plantprint ingest_svc,grafana 10.0.0.0/8 scram-sha-256
--   hostnossl all all 0.0.0.0/0 reject
