"""Every panel's and every variable's SQL, as Grafana would send it, against the small
plant's data on PostgreSQL and on the TimescaleDB peer: each returns rows with the
columns its panel reads, as the read-only ``plantprint_reader`` role.

The ``small_plant`` database is the source: its rows are copied into a fresh
PostgreSQL database and into a private TimescaleDB peer (the shared peer's one
database holds other tests' migrations), both migrated by this release. The copy
then gets what a deployment adds after the demo: the site model stored
(``python -m deploy.grafana sites``) and the aggregates refreshed (the demo does
not refresh them; a deployment's timer or TimescaleDB's policy does).
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from compute.site import CANONICAL_UNIT, RATE_UNIT, RATE_UNITS, load_site
from deploy import devstack
from deploy.grafana import build, overview
from deploy.grafana.macros import grafana_sql
from deploy.grafana.panels import SQL_DS, SqlQuery
from deploy.grafana.sites import store_site_models
from deploy.procs import log_path
from ingest.db import connect
from ingest.maintenance import refresh_aggregates
from ingest.migrate import migrate

ROOT = Path(__file__).resolve().parents[2]
SITE_FILE = ROOT / "deploy" / "sites" / "small.toml"

# compute's tables and ingest's, in an order that satisfies their references
TABLES = ("reading", "batch_event", "ingested_frame", "gateway_seq", "consumer_offset",
          "emission_factor", "compute_frame", "compute_batch", "compute_state_change",
          "energy_interval", "compute_meter_state", "compute_site_state", "allocation",
          "batch_footprint")


def copy_plant(src: str, dst: str) -> dict[str, int]:
    """Every row of TABLES from src into dst (migrated alike), as one INSERT per table:
    the TimescaleDB peer cannot take COPY FROM STDIN. Returns rows per table."""
    counts = {}
    with connect(src) as s, connect(dst) as d:
        for table in TABLES:
            row = s.execute(f"SELECT count(*), coalesce(json_agg(t), '[]')::text "
                            f"FROM {table} t").fetchone()
            assert row is not None
            # the seeded factor rows are already there, under the same ids
            override = "OVERRIDING SYSTEM VALUE " if table == "emission_factor" else ""
            d.execute(f"INSERT INTO {table} {override}SELECT * FROM "
                      f"json_populate_recordset(NULL::{table}, %s::json) ON CONFLICT DO NOTHING",
                      (row[1],))
            counts[table] = row[0]
    return counts


def prepare(dsn: str) -> None:
    """What a deployment does after migrating: the site model stored, aggregates refreshed."""
    model = load_site(SITE_FILE)
    store_site_models(dsn, {model.site: (model, "deploy/sites/small.toml")})
    refresh_aggregates(dsn)


def data_range(dsn: str) -> tuple[datetime, datetime]:
    with connect(dsn) as conn:
        row = conn.execute("SELECT min(ts), max(ts) FROM reading").fetchone()
    assert row is not None and row[0] is not None
    # from the hour the data starts to the minute after its newest reading: a user
    # watching live (the "now" panels look back 15 minutes from the range's end)
    start = row[0].replace(minute=0, second=0, microsecond=0)
    return start, row[1].replace(second=0, microsecond=0) + timedelta(minutes=1)


def every_query() -> list[tuple[str, str, SqlQuery]]:
    """(dashboard, panel title, query) of every SQL target of every dashboard."""
    found = []
    for name, model in build.models().items():
        for panel in model.panels or []:
            for target in getattr(panel, "targets", None) or []:
                if isinstance(target, SqlQuery):
                    found.append((name, panel.title or "", target))
    return found


def every_variable() -> dict[str, str]:
    """Every query variable's SQL, by dashboard and name."""
    found = {}
    for name, model in build.models().items():
        for var in model.templating.list_val or []:
            if var.datasource is not None and var.datasource.uid == SQL_DS.uid:
                assert isinstance(var.query, str)
                found[f"{name}: ${var.name}"] = var.query
    return found


def run_all(dsn: str, timescaledb: bool) -> dict[str, tuple[list[str], int]]:
    """Each query as Grafana sends it (``timescaledb``: the datasource's switch, which
    turns $__timeGroup into time_bucket), as plantprint_reader: panel → (columns, rows)."""
    start, end = data_range(dsn)
    variables: dict[str, str | list[str]] = {
        "site": "demo-site", "line": ["L1"], "product": ["brick-A", "brick-B"], "batch": "B-002"}
    results = {}
    with connect(dsn) as conn:
        conn.execute("SET ROLE plantprint_reader")
        for name, sql in every_variable().items():
            cur = conn.execute(grafana_sql(sql, start, end, variables, timescaledb))
            results[name] = ([d.name for d in cur.description or []], len(cur.fetchall()))
            assert len(results[name][0]) == 1, f"{name}: a variable's query returns one column"
        for board, title, query in every_query():
            try:
                cur = conn.execute(grafana_sql(query.raw_sql, start, end, variables,
                                              timescaledb))
            except psycopg.Error as exc:
                raise AssertionError(f"{board}: {title}: {exc}") from exc
            columns = [d.name for d in cur.description or []]
            results[f"{board}: {title}"] = (columns, len(cur.fetchall()))
            assert columns == list(query.columns), f"{board}: {title}: columns {columns}"
    return results


def site_electricity(dsn: str, timescaledb: bool) -> tuple[float, float]:
    """The overview's electricity figure beside the incomer's interval energy (M-INC is
    the top of the single-line diagram: the site's electricity, counted once)."""
    start, end = data_range(dsn)
    with connect(dsn) as conn:
        shown = dict(conn.execute(grafana_sql(overview.SITE_ENERGY, start, end,
                                              {"site": "demo-site"}, timescaledb)).fetchall())
        (incomer,) = conn.execute("SELECT sum(energy) FROM energy_interval "
                                  "WHERE meter = 'M-INC'").fetchone() or (None,)
    return shown["electricity (kWh)"], incomer


def check(results: dict[str, tuple[list[str], int]]) -> None:
    empty = [k for k, (_c, n) in results.items() if n == 0]
    assert not empty, f"no rows: {empty}"
    assert len(results) == len(every_query()) + len(every_variable())


@pytest.fixture(scope="module")
def pg_copy(services, small_plant) -> Iterator[str]:
    name = f"pp_test_grafana_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(services.pg_admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = devstack.with_dbname(services.pg_admin_dsn, name)
    try:
        migrate(dsn, "off")
        copy_plant(small_plant.dsn, dsn)
        prepare(dsn)
        yield dsn
    finally:
        with psycopg.connect(services.pg_admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def tsdb_copy(small_plant) -> Iterator[str]:
    from deploy.tsdb import TsdbPeer

    peer = TsdbPeer(f"tsdb-grafana-{uuid.uuid4().hex[:8]}")
    peer.start()
    try:
        assert migrate(peer.dsn, "require")
        copy_plant(small_plant.dsn, peer.dsn)
        prepare(peer.dsn)
        yield peer.dsn
    finally:
        peer.stop()
        shutil.rmtree(peer.data_dir, ignore_errors=True)
    log_path(peer.name).unlink(missing_ok=True)  # kept when the peer could not be set up


def test_every_panel_returns_its_columns_on_postgresql(pg_copy) -> None:
    results = run_all(pg_copy, timescaledb=False)
    check(results)
    shown, incomer = site_electricity(pg_copy, timescaledb=False)
    assert shown == pytest.approx(incomer, rel=1e-12) and incomer > 250  # kWh, small plant


def test_every_panel_returns_its_columns_on_timescaledb(tsdb_copy, pg_copy) -> None:
    with connect(tsdb_copy) as conn:  # the aggregates are continuous ones on the peer
        kinds = conn.execute("SELECT view_name FROM timescaledb_information.continuous_aggregates "
                             "ORDER BY 1").fetchall()
    assert [k for (k,) in kinds] == ["reading_15m", "reading_1d", "reading_1h"]
    on_tsdb, on_pg = run_all(tsdb_copy, timescaledb=True), run_all(pg_copy, timescaledb=False)
    check(on_tsdb)
    assert site_electricity(tsdb_copy, True) == pytest.approx(site_electricity(pg_copy, False),
                                                              rel=1e-12)
    assert on_tsdb == on_pg  # same columns and row counts on both backends


def test_unit_tables_mirror_compute(pg_copy) -> None:
    with connect(pg_copy) as conn:
        canonical = dict(conn.execute("SELECT carrier, energy_unit FROM carrier_unit").fetchall())
        rate = dict(conn.execute("SELECT carrier, rate_unit FROM carrier_unit").fetchall())
        conv = conn.execute("SELECT carrier, unit, to_rate_unit FROM rate_unit").fetchall()
    assert canonical == CANONICAL_UNIT and rate == RATE_UNIT
    assert {(c, u): f for c, u, f in conv} == {
        (c, u): f for c, units in RATE_UNITS.items() for u, f in units.items()}
