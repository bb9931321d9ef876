#!/bin/sh
# First start of the database container: the plantprint database, its owner (runs the
# migrations) and the LOGIN users of the services, each in the role migration 0002
# grants (the group roles are created here first so the logins can join them;
# the migration leaves existing roles as they are). Nothing runs as superuser later.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres <<SQL
CREATE ROLE plantprint_writer NOLOGIN;
CREATE ROLE plantprint_reader NOLOGIN;
CREATE ROLE plantprint_owner LOGIN CREATEROLE PASSWORD '${PLANTPRINT_OWNER_PASSWORD}';
CREATE ROLE ingest_svc LOGIN PASSWORD '${PLANTPRINT_INGEST_PASSWORD}' IN ROLE plantprint_writer;
CREATE ROLE grafana LOGIN PASSWORD '${PLANTPRINT_GRAFANA_PASSWORD}' IN ROLE plantprint_reader;
CREATE DATABASE plantprint OWNER plantprint_owner;
SQL
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname plantprint \
     -c "CREATE EXTENSION IF NOT EXISTS timescaledb"
