"""Emission factors: selection (pure, golden cases), the seeded table, ``factors list|add``.

The selection cases are the questions an accountant asks: the North China grid
in 2023; a 2025 batch when the newest published factor is 2023's; a site
without green-electricity contracts in a market-based report; a PPA; a
correction of a row already used. The database tests run on the real
PostgreSQL, as the writer role the services use.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import urlparse

import psycopg
import pytest

from compute.errors import FactorError
from compute.factors import FactorRow, load_factors, region_chain, select_factor
from compute.factors_cli import factors_main
from ingest.db import connect
from ingest.migrate import migrate

ADDED = datetime(2025, 1, 1, tzinfo=UTC)
FactorDb = tuple[str, Callable[[], str]]  # owner DSN, factory of writer-role DSNs
PLANT_BATCH = datetime(2025, 3, 3, 1, 0, tzinfo=UTC)  # the plant scenario's first lots


def row(id_: int, region: str, year: int | None, value: float, kind: str = "location",
        variant: str = "average", carrier: str = "electricity", **kw: object) -> FactorRow:
    """A factor row for data year ``year`` (None: open-ended default from 2013)."""
    start, end = ((date(year, 1, 1), date(year, 12, 31)) if year
                  else (date(2013, 1, 1), date(9999, 12, 31)))
    fields: dict[str, object] = dict(
        id=id_, carrier=carrier, region=region, period_start=start, period_end=end,
        value=value, unit="kgCO2/kWh", kind=kind, variant=variant, gas_basis="CO2",
        source="test", publication="test", valid_from=start, valid_to=None, note=None,
        supersedes=None, added_by="seed", added_at=ADDED)
    fields.update(kw)
    return FactorRow(**fields)  # type: ignore[arg-type]


SEED = [
    row(1, "CN", 2021, 0.5568), row(2, "CN", 2021, 0.8426, variant="fossil"),
    row(3, "CN", 2022, 0.5366), row(4, "CN", 2022, 0.5856, "market", "residual_mix"),
    row(6, "CN-North", 2022, 0.6776), row(13, "CN-SX", 2022, 0.7096),
    row(14, "CN", 2023, 0.5306), row(15, "CN", 2023, 0.6096, "market", "residual_mix"),
    row(16, "CN", 2023, 0.8273, variant="fossil"), row(17, "CN-North", 2023, 0.6361),
    row(19, "CN-East", 2023, 0.5500),
    row(24, "CN", 2023, 0.6205, "life_cycle"), row(25, "CN", 2024, 0.5777, "life_cycle"),
    row(26, "CN", None, 2.16502, carrier="natural_gas", variant="default", unit="kgCO2/Nm3"),
]


def pick(region: str, at: datetime | date, kind: str = "location",
         carrier: str = "electricity", rows: list[FactorRow] = SEED,
         site: str | None = None) -> tuple[float, tuple[str, ...]] | None:
    got = select_factor(rows, carrier, region, at, kind, site)  # type: ignore[arg-type]
    return None if got is None else (got.value, got.flags)


def test_regions_fall_back_province_to_grid_to_country() -> None:
    assert region_chain("CN-SX") == ("CN-SX", "CN-North", "CN")
    assert region_chain("CN-North") == ("CN-North", "CN")
    assert region_chain("CN-JS") == ("CN-JS", "CN-East", "CN")
    assert region_chain("CN") == ("CN",)


def test_location_based_golden_cases() -> None:
    assert pick("CN-North", date(2023, 6, 1)) == (0.6361, ())
    assert pick("CN-North", date(2022, 12, 31)) == (0.6776, ())
    assert pick("CN-SX", date(2022, 3, 1)) == (0.7096, ())  # the province's own figure
    # a 2025 batch: nothing published for 2025 yet: the latest period, flagged
    assert pick("CN-North", PLANT_BATCH) == (0.6361, ("period_before",))
    # no 2021 figure for the grid: the national one, flagged; never the fossil-fired one
    assert pick("CN-North", date(2021, 7, 1)) == (0.5568, ("region_fallback",))
    assert pick("CN", date(2023, 1, 1)) == (0.5306, ())
    assert pick("CN-North", date(2020, 12, 31)) is None  # before any published period
    assert pick("CN-North", PLANT_BATCH, "life_cycle") == (
        0.5777, ("region_fallback", "period_before"))
    assert pick("CN-North", PLANT_BATCH, carrier="natural_gas") == (
        2.16502, ("region_fallback",))
    assert pick("CN-North", PLANT_BATCH, carrier="heat") is None


def test_market_based_falls_back_to_residual_mix_then_location() -> None:
    # no contract of the site: the national factor excluding market-traded non-fossil
    assert pick("CN-North", date(2023, 5, 1), "market") == (
        0.6096, ("residual_mix", "region_fallback"))
    assert pick("CN-North", PLANT_BATCH, "market") == (
        0.6096, ("residual_mix", "region_fallback", "period_before"))
    # natural gas has no market instruments: the location row is the market-based one
    assert pick("CN-North", PLANT_BATCH, "market", "natural_gas") == (
        2.16502, ("location_fallback", "region_fallback"))
    # a PPA filed under the site id: wins for its year, only for that site
    ppa = row(40, "cement-works", 2025, 0.0, "market", "contract", added_by="user")
    rows = [*SEED, ppa]
    assert pick("CN-North", PLANT_BATCH, "market", rows=rows, site="cement-works") == (0.0, ())
    residual = (0.6096, ("residual_mix", "region_fallback", "period_before"))
    assert pick("CN-North", PLANT_BATCH, "market", rows=rows, site="demo-site") == residual
    assert pick("CN-North", date(2024, 6, 1), "market", rows=rows,
                site="cement-works") == residual  # the PPA starts in 2025
    assert pick("CN-North", PLANT_BATCH, "location", rows=rows,
                site="cement-works") == (0.6361, ("period_before",))  # contracts ignored


def test_corrections_validity_and_newest_row() -> None:
    later = datetime(2025, 6, 1, tzinfo=UTC)
    fix = row(50, "CN-North", 2023, 0.6360, supersedes=17, added_by="user", added_at=later)
    assert pick("CN-North", date(2023, 6, 1), rows=[*SEED, fix]) == (0.6360, ())
    # the same period entered again later (no supersedes): the newest row wins
    again = row(51, "CN-North", 2023, 0.6365, added_by="user", added_at=later)
    assert pick("CN-North", date(2023, 6, 1), rows=[*SEED, again]) == (0.6365, ())
    # a row whose validity ended is not used for accounting dates after it
    ended = row(52, "CN-North", 2023, 0.9, added_at=later, valid_to=date(2023, 3, 31))
    assert pick("CN-North", date(2023, 6, 1), rows=[*SEED, ended]) == (0.6361, ())
    assert pick("CN-North", date(2023, 2, 1), rows=[*SEED, ended]) == (0.9, ())
    # a narrower period inside an open-ended default covers the day more specifically
    supplier = row(53, "CN", 2025, 2.0, carrier="natural_gas", variant="supplier")
    assert pick("CN", PLANT_BATCH, carrier="natural_gas", rows=[*SEED, supplier]) == (2.0, ())
    with pytest.raises(FactorError, match="needs a UTC offset"):
        select_factor(SEED, "electricity", "CN", datetime(2023, 1, 1), "location")


# --- the table on PostgreSQL --------------------------------------------------------


@pytest.fixture
def factor_db(services: Any, new_database: Any) -> Iterator[tuple[str, Callable[[], str]]]:
    """A migrated database's owner DSN and a factory of writer-role DSNs on it."""
    dsn = new_database()
    migrate(dsn)
    users: list[str] = []

    def writer() -> str:
        user = f"pp_writer_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(services.pg_admin_dsn, autocommit=True) as conn:
            conn.execute(f'CREATE ROLE "{user}" LOGIN IN ROLE plantprint_writer')
        users.append(user)
        url = urlparse(dsn)
        return str(url._replace(netloc=f"{user}@{url.hostname}:{url.port}").geturl())

    yield dsn, writer
    with psycopg.connect(services.pg_admin_dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE usename = ANY(%s)", (users,))
        for user in users:
            conn.execute(f'DROP ROLE IF EXISTS "{user}"')


@pytest.mark.services
def test_migration_seeds_official_factors_with_their_sources(factor_db: FactorDb) -> None:
    dsn, _ = factor_db
    with connect(dsn) as conn:
        rows = load_factors(conn)
    assert len(rows) == 28 and all(r.added_by == "seed" for r in rows)
    assert all(r.source.strip() and r.publication.strip() for r in rows)
    by = {(r.carrier, r.region, r.period_start.year, r.kind, r.variant): r for r in rows}
    north = by["electricity", "CN-North", 2023, "location", "average"]
    assert north.value == 0.6361 and "生态环境部" in north.source and north.unit == "kgCO2/kWh"
    assert by["electricity", "CN", 2023, "market", "residual_mix"].value == 0.6096
    assert by["electricity", "CN", 2021, "location", "fossil"].value == 0.8426
    assert by["electricity", "CN-SX", 2022, "location", "average"].value == 0.7096
    life = by["electricity", "CN", 2024, "life_cycle", "average"]
    assert (life.value, life.unit, life.gas_basis) == (0.5777, "kgCO2e/kWh", "CO2e")
    gas = by["natural_gas", "CN", 2013, "location", "default"]
    assert gas.value == pytest.approx(389.31e-4 * 15.32e-3 * 0.99 * 44 / 12 * 1000)
    assert gas.value == pytest.approx(2.16502, abs=1e-5) and "1722" in gas.source
    steam = by["steam", "CN", 2013, "location", "default"]
    assert steam.value == pytest.approx(296.27, abs=0.01) and "ASSUMPTION" in (steam.note or "")
    assert by["heat", "CN", 2013, "location", "default"].value == 110.0
    electricity = [r for r in rows if r.carrier == "electricity" and r.kind != "life_cycle"]
    assert all("not confirmed" in (r.note or "") for r in electricity)
    # the seeds answer the plant's questions
    chosen = select_factor(rows, "electricity", "CN-North", PLANT_BATCH, "location")
    assert chosen is not None and (chosen.id, chosen.flags) == (north.id, ("period_before",))


@pytest.mark.services
def test_factors_add_then_list_as_the_writer(
    factor_db: FactorDb, capsys: pytest.CaptureFixture[str]
) -> None:
    _, writer = factor_db
    dsn = writer()
    ppa = ["add", "--carrier", "electricity", "--region", "cement-works",
           "--from", "2025-01-01", "--to", "2025-12-31", "--value", "0", "--unit", "kgCO2/kWh",
           "--kind", "market", "--source", "wind PPA with Shanxi Wind Co.",
           "--publication", "contract SX-2024-117, 2024-12-01", "--note", "100 % of supply"]
    out = io.StringIO()
    assert factors_main(ppa, dsn, out) == 0
    assert "cement-works" in out.getvalue() and "market (contract)" in out.getvalue()
    listed = io.StringIO()
    assert factors_main(["list", "--region", "cement-works"], dsn, listed) == 0
    text = listed.getvalue()
    assert "emission factors (1)" in text and "2025-01-01 .. 2025-12-31" in text
    assert "wind PPA with Shanxi Wind Co." in text and "kgCO2/kWh" in text
    everything = io.StringIO()
    assert factors_main(["list"], dsn, everything) == 0
    assert "emission factors (29)" in everything.getvalue()
    assert "0.6361" in everything.getvalue() and "2013-01-01 .. open" in everything.getvalue()
    with connect(dsn) as conn:
        rows = load_factors(conn)
    added = rows[-1]
    assert (added.added_by, added.variant, added.gas_basis, added.valid_from) == (
        "user", "contract", "CO2", date(2025, 1, 1))
    chosen = select_factor(rows, "electricity", "CN-North", PLANT_BATCH, "market",
                           site="cement-works")
    assert chosen is not None and chosen.id == added.id
    # refused: tCO2/MWh is not the canonical unit; a missing argument; a bad date
    bad_unit = [a if a != "kgCO2/kWh" else "tCO2/MWh" for a in ppa]
    assert factors_main(bad_unit, dsn, io.StringIO()) == 2
    assert "unit 'tCO2/MWh' for electricity: kgCO2/kWh" in capsys.readouterr().err
    assert factors_main(["add", "--carrier", "electricity"], dsn, io.StringIO()) == 2
    assert "required" in capsys.readouterr().err
    assert factors_main([*ppa[:6], "2025-13-01", *ppa[7:]], dsn, io.StringIO()) == 2
    assert "is not a date" in capsys.readouterr().err
    assert factors_main(["list"], "postgresql://127.0.0.1:1/none", io.StringIO()) == 2
    assert "cannot reach the database 127.0.0.1:1/none" in capsys.readouterr().err


@pytest.mark.services
def test_factor_rows_are_append_only(factor_db: FactorDb) -> None:
    owner, writer = factor_db
    with psycopg.connect(writer(), autocommit=True) as conn:
        for sql in ("UPDATE emission_factor SET value = 0 WHERE id = 17",
                    "DELETE FROM emission_factor WHERE id = 17",
                    "TRUNCATE emission_factor"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(sql)
    with connect(owner) as conn:  # not even the owner: corrections are new rows
        for sql in ("UPDATE emission_factor SET value = 0 WHERE id = 17",
                    "DELETE FROM emission_factor WHERE id = 17",
                    "TRUNCATE emission_factor"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
                conn.execute(sql)
        assert conn.execute("SELECT value FROM emission_factor WHERE id = 17").fetchone() == (
            0.6361,)
    supersede = ["add", "--carrier", "electricity", "--region", "CN-North", "--from",
                 "2023-01-01", "--to", "2023-12-31", "--value", "0.6360", "--unit",
                 "kgCO2/kWh", "--kind", "location", "--source", "MEE/NBS erratum",
                 "--publication", "erratum", "--supersedes", "17"]
    dsn = writer()
    assert factors_main(supersede, dsn, io.StringIO()) == 0
    with connect(dsn) as conn:
        rows = load_factors(conn)
    chosen = select_factor(rows, "electricity", "CN-North", date(2023, 6, 1), "location")
    assert chosen is not None and (chosen.value, chosen.supersedes) == (0.6360, 17)
    assert factors_main([*supersede[:-1], "9999"], dsn, io.StringIO()) == 2
