"""Migrations on the real PostgreSQL and on the TimescaleDB peer; roles; storage settings."""

from __future__ import annotations

import tomllib
import uuid
from pathlib import Path
from urllib.parse import urlparse

import psycopg
import pytest
from pydantic import BaseModel

from ingest.config import ConfigError, ServerConfig, load_config
from ingest.db import connect
from ingest.errors import MigrationError
from ingest.maintenance import chunk_interval_for_rate
from ingest.migrate import load_migrations, migrate

ROOT = Path(__file__).resolve().parents[2]
ALL = [
    "0001_core (all)",
    "0002_roles (all)",
    "0003_reading_timeseries (pg)",
    "0004_reading_aggregates (pg)",
    "0005_energy_views (all)",
    "0006_frame_digest (all)",
    "0007_aggregates_without_bad (pg)",
    "0008_emission_factors (all)",
    "0009_compute (all)",
    "0010_integrity (all)",
]
# migrations of other areas numbered after ours (each area's tests pin its own)
LATER = [f"{n:04d}_{m.name} ({m.variant})" for n, v in load_migrations().items() if n > 10
         for m in [v.get("all") or v["pg"]]]

SCHEMA_SQL = """
SELECT c.relname, c.relkind, a.attname, format_type(a.atttypid, a.atttypmod)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE n.nspname = 'public'
ORDER BY 1, 3
"""


def schema(dsn: str) -> list[tuple[object, ...]]:
    with connect(dsn) as conn:
        return conn.execute(SCHEMA_SQL).fetchall()


def test_packaged_migrations_have_one_numbered_sequence() -> None:
    known = load_migrations()
    assert list(known) == list(range(1, max(known) + 1)) and max(known) >= 10
    assert set(known[3]) == {"pg", "tsdb"} and set(known[1]) == {"all"}
    assert set(known[7]) == {"pg", "tsdb"}
    for mig in known[7].values():  # the peer path too: no COPY in any migration
        assert "COPY" not in mig.sql.upper() and "quality <> 'bad'" in mig.sql


def test_chunk_interval_follows_the_data_rate() -> None:
    assert chunk_interval_for_rate(10) == 7 * 86400  # small plant: weekly chunks
    assert chunk_interval_for_rate(50) == 86400
    assert chunk_interval_for_rate(5_000) == 3600  # ~2 GB/day → hourly
    assert chunk_interval_for_rate(500) == 3 * 3600


def test_sample_config_loads_and_bad_config_names_the_key(tmp_path: Path) -> None:
    cfg = load_config(ROOT / "deploy/server/server.toml")
    assert cfg.limits.future_skew_s == 300.0 and "gw-kiln-1" in cfg.public_keys()
    bad = tmp_path / "bad.toml"
    bad.write_text('[gateways.gw1]\npublic_key = "nope"\n[limits]\nfuture_skew_s = -1\n')
    expected = r"bad.toml: limits.future_skew_s: .*gateways.gw1.public_key"
    with pytest.raises(ConfigError, match=expected):
        load_config(bad)


def test_sample_config_documents_every_setting() -> None:
    """Each setting of each [table] is in the sample (so a new one cannot go undocumented)."""
    sample = tomllib.loads((ROOT / "deploy/server/server.toml").read_text())
    for table, field in ServerConfig.model_fields.items():
        model = field.annotation
        if isinstance(model, type) and issubclass(model, BaseModel):
            assert set(sample.get(table, {})) == set(model.model_fields), f"[{table}]"
    kafka = load_config(ROOT / "deploy/server/server.toml").kafka
    assert (kafka.connect_timeout_s, kafka.reconnect_max_s) == (5.0, 30.0)


@pytest.mark.services
def test_migrations_apply_twice_without_change_on_postgresql(new_database) -> None:
    dsn = new_database()
    assert migrate(dsn) == ALL + LATER
    first = schema(dsn)
    assert migrate(dsn) == []
    assert schema(dsn) == first
    tables = {row[0] for row in first}
    for rel in ("reading", "batch_event", "gateway_seq", "consumer_offset", "ingested_frame",
                "reading_15m", "reading_1h", "reading_1d", "energy_15m", "energy_1d"):
        assert rel in tables
    assert ("ingested_frame", "r", "body_sha256", "bytea") in first  # nullable: older rows
    with connect(dsn) as conn:
        rows = conn.execute("SELECT version, name, variant FROM schema_migration ORDER BY 1")
        assert [f"{v:04d}_{n} ({var})" for v, n, var in rows] == ALL + LATER


@pytest.mark.services
def test_changed_applied_migration_is_an_error(new_database) -> None:
    dsn = new_database()
    migrate(dsn)
    with connect(dsn) as conn:
        conn.execute("UPDATE schema_migration SET checksum = 'edited' WHERE version = 3")
    with pytest.raises(MigrationError, match=r"0003_reading_timeseries .* changed after"):
        migrate(dsn)


def _login(admin_dsn: str, dsn: str, role: str) -> tuple[str, str]:
    user = f"pp_{role.split('_')[1]}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{user}" LOGIN IN ROLE {role}')
    return user, urlparse(dsn)._replace(netloc=f"{user}@{urlparse(dsn).hostname}:"
                                        f"{urlparse(dsn).port}").geturl()


@pytest.mark.services
def test_reader_reads_and_writes_nothing_writer_only_appends(services, new_database) -> None:
    dsn = new_database()
    migrate(dsn)
    with connect(dsn) as conn:
        conn.execute("INSERT INTO reading VALUES ('s','g','m','e',now(),1,'kWh','good',1)")
    users = []
    try:
        reader, reader_dsn = _login(services.pg_admin_dsn, dsn, "plantprint_reader")
        writer, writer_dsn = _login(services.pg_admin_dsn, dsn, "plantprint_writer")
        users = [reader, writer]
        with psycopg.connect(reader_dsn, autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM reading").fetchone() == (1,)
            conn.execute("SELECT * FROM energy_15m, gateway_seq, consumer_offset LIMIT 1")
            for sql in (
                "INSERT INTO reading VALUES ('s','g','m','e',now(),1,'kWh','good',2)",
                "UPDATE gateway_seq SET frames = 0",
                "DELETE FROM reading",
                "CREATE TABLE evil (x int)",
                "REFRESH MATERIALIZED VIEW reading_15m",
                "TRUNCATE consumer_offset",
            ):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(sql)
        with psycopg.connect(writer_dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO reading VALUES ('s','g','m','e',now(),2,'kWh','good',2)")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("DELETE FROM reading")
    finally:
        with psycopg.connect(services.pg_admin_dsn, autocommit=True) as conn:
            for user in users:
                conn.execute(f'DROP ROLE IF EXISTS "{user}"')


@pytest.mark.services
def test_migrations_apply_twice_on_timescaledb_peer_and_reading_is_a_hypertable(services) -> None:
    first = migrate(services.tsdb_dsn)
    assert all("(pg)" not in name for name in first)
    before = schema(services.tsdb_dsn)
    assert migrate(services.tsdb_dsn) == []
    assert schema(services.tsdb_dsn) == before
    with connect(services.tsdb_dsn) as conn:
        hyper = conn.execute(
            "SELECT hypertable_name FROM timescaledb_information.hypertables"
        ).fetchall()
        assert ("reading",) in hyper
        caggs = conn.execute(
            "SELECT view_name FROM timescaledb_information.continuous_aggregates ORDER BY 1"
        ).fetchall()
        assert caggs == [("reading_15m",), ("reading_1d",), ("reading_1h",)]
        variants = conn.execute("SELECT variant FROM schema_migration WHERE version IN (3, 4)")
        assert [v for (v,) in variants] == ["tsdb", "tsdb"]
        can = conn.execute(
            "SELECT has_table_privilege('plantprint_reader', r, p) FROM (VALUES "
            "('reading', 'SELECT'), ('energy_15m', 'SELECT'), ('reading_1d', 'SELECT'), "
            "('reading', 'INSERT'), ('gateway_seq', 'UPDATE'), ('reading', 'DELETE')) AS v(r, p)"
        ).fetchall()
        assert [c for (c,) in can] == [True, True, True, False, False, False]


@pytest.mark.services
def test_cli_migrate_and_refresh(new_database) -> None:
    import os
    import subprocess
    import sys

    dsn = new_database()
    env = {k: v for k, v in os.environ.items() if k != "PLANTPRINT_DSN"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "ingest", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)

    first = cli("migrate", "--dsn", dsn)
    assert first.returncode == 0, first.stderr
    assert "applied migration 0007_aggregates_without_bad (pg)" in first.stderr
    assert "using the plain PostgreSQL variant" in first.stderr  # detection is logged
    second = cli("migrate", "--dsn", dsn)
    assert second.returncode == 0 and f"up to date ({len(ALL + LATER)} migrations" in second.stderr
    refresh = cli("refresh", "--dsn", dsn)
    assert refresh.returncode == 0 and "refreshed reading_1d" in refresh.stderr
    bad = cli("migrate", "--dsn", "postgresql://127.0.0.1:1/none")
    assert bad.returncode == 2 and "cannot connect to the database to migrate" in bad.stderr
    assert "Traceback" not in bad.stderr


@pytest.mark.services
def test_upgrade_drops_bad_readings_from_existing_aggregates(
    new_database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database at 0006 with a bad zero in a counter: negative energy; after 0007 none,
    and the buckets still telescope to the counter's increase."""
    import ingest.migrate as migrate_module
    from edge.wire import Frame
    from ingest.maintenance import refresh_aggregates
    from ingest.store import Accepted, Store

    dsn = new_database()
    every = load_migrations()
    monkeypatch.setattr(migrate_module, "load_migrations",
                        lambda: {v: m for v, m in every.items() if v <= 6})
    migrate(dsn)
    monkeypatch.undo()
    t0, step = 1_767_225_600 * 10**9, 300 * 10**9  # 2026-01-01, a poll every 5 min
    values = [100.0 + 2.5 * i for i in range(24)]
    quality = ["good"] * 24
    values[11], quality[11] = 0.0, "bad"  # OPC UA Bad arrives as 0; last of its bucket
    frame = Frame("s", "gw", 0, t0, ["m"] * 24, ["energy"] * 24,
                  [t0 + i * step for i in range(24)], values, ["kWh"] * 24, quality)
    store = Store(dsn, "g")
    try:
        store.land([Accepted(frame, "t", 0, 0)], {("t", 0): 1})
    finally:
        store.close()
    refresh_aggregates(dsn)

    def energies() -> list[float]:
        with connect(dsn) as conn:
            return [e for (e,) in conn.execute("SELECT energy FROM energy_15m ORDER BY bucket")]

    assert min(energies()) < -100  # the defect this migration fixes
    assert migrate(dsn) == ALL[6:] + LATER  # 0007 and the migrations after it
    assert migrate(dsn) == []
    got = energies()
    assert min(got) >= 0 and sum(got) == pytest.approx(values[-1] - values[0])
    with connect(dsn) as conn:
        grants = conn.execute(
            "SELECT has_table_privilege('plantprint_reader', 'energy_15m', 'SELECT'), "
            "has_table_privilege('plantprint_reader', 'reading_1d', 'SELECT')").fetchone()
    assert grants == (True, True)
