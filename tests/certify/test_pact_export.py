"""PACT v3 exports of the `small` plant's real final footprints (read-only database).

What a buyer relies on: every export validates against the shipped v3
ProductFootprint schema, its pCF is the stored kgCO2e ÷ declared units, its
primary data share is the metered share, its reference period is the first
and last interval whose energy went into it, and a product over a period is
the production-weighted aggregate of its batches.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import psycopg
import pytest

from compute.__main__ import main as compute_main
from compute.pact.mapping import decimal
from compute.pact.schema import schema_problems

ROOT = Path(__file__).resolve().parents[2]
SITE_FILE = ROOT / "deploy" / "sites" / "small.toml"
COMPANY = "urn:plantprint:test:company:brick-works"


def server_toml(folder: Path, dsn: str, basis: str = "market") -> Path:
    path = folder / f"server-{basis}.toml"
    path.write_text(f'[database]\ndsn = "{dsn}"\n\n[compute]\n'
                    f'sites = {{ "demo-site" = "{SITE_FILE}" }}\n\n[pact]\n'
                    f'company_name = "Test Brick Works"\ncompany_ids = ["{COMPANY}"]\n'
                    f'electricity_basis = "{basis}"\n')
    return path


def export(config: Path, out: Path, *args: str) -> list[dict]:
    assert compute_main(["--config", str(config), "export", "pact", *args,
                         "--out", str(out)]) == 0
    return [orjson.loads(p.read_bytes()) for p in sorted(out.glob("*.json"))]


def stored(dsn: str) -> dict[str, dict]:
    with psycopg.connect(dsn) as conn:
        cur = conn.execute(
            "SELECT f.batch_id, f.revision, f.product, f.declared_units, f.kgco2e_location, "
            "f.kgco2e_market, f.primary_data_share, f.status, "
            "(SELECT min(i.start_ts) FROM allocation a JOIN energy_interval i "
            " USING (site, meter, end_ts) WHERE a.site = f.site AND a.batch_id = f.batch_id "
            " AND a.energy <> 0), "
            "(SELECT max(i.end_ts) FROM allocation a JOIN energy_interval i "
            " USING (site, meter, end_ts) WHERE a.site = f.site AND a.batch_id = f.batch_id "
            " AND a.energy <> 0) FROM batch_footprint_latest f ORDER BY f.batch_id")
        names = [d.name for d in cur.description or []]
        names[-2:] = ["first", "last"]
        return {r[0]: dict(zip(names, r, strict=True)) for r in cur.fetchall()}


@pytest.fixture(scope="module")
def rows(small_plant) -> dict[str, dict]:
    found = stored(small_plant.dsn)
    assert found and all(r["status"] in ("final", "revised") for r in found.values())
    return found


@pytest.mark.parametrize("basis", ["market", "location"])
def test_each_batch_export_is_schema_valid_and_carries_the_stored_number(
        small_plant, rows, tmp_path: Path, basis: str) -> None:
    config = server_toml(tmp_path, small_plant.dsn, basis)
    for batch, row in rows.items():
        (pf,) = export(config, tmp_path / batch, "--batch", batch)
        assert schema_problems(pf) == []
        pcf = pf["pcf"]
        kg = row[f"kgco2e_{basis}"]
        assert float(pcf["pcfExcludingBiogenicUptake"]) == kg / row["declared_units"]
        assert pcf["pcfIncludingBiogenicUptake"] == pcf["pcfExcludingBiogenicUptake"]
        assert pcf["fossilGhgEmissions"] == pcf["pcfExcludingBiogenicUptake"]
        if basis == "location":  # the stored share is weighted by the location factors
            assert float(pcf["primaryDataShare"]) == pytest.approx(
                100 * row["primary_data_share"], abs=1e-6)
        assert pcf["referencePeriodStart"] == row["first"].isoformat().replace("+00:00", "Z")
        assert pcf["referencePeriodEnd"] == row["last"].isoformat().replace("+00:00", "Z")
        assert pcf["geographyCountrySubdivision"] == "CN-JS"
        assert pcf["declaredUnitOfMeasurement"] == "kilogram"
        assert pf["status"] == "Active" and pf["companyIds"] == [COMPANY]
        assert f"urn:plantprint:batch:demo-site:{batch}" in pf["productIds"]
        assert "ISO14067" in pcf["crossSectoralStandards"]
        assert "GB/T 24067-2024" in pcf["productOrSectorSpecificRules"][0]["ruleNames"][0]
        assert all(1 <= float(v) <= 5 for v in pcf["dqi"].values())
        assert pcf["secondaryEmissionFactorSources"]


def test_the_id_is_stable_per_revision(small_plant, rows, tmp_path: Path) -> None:
    config = server_toml(tmp_path, small_plant.dsn)
    batch = next(iter(rows))
    (a,) = export(config, tmp_path / "a", "--batch", batch)
    (b,) = export(config, tmp_path / "b", "--batch", batch)
    assert a == b  # same revision: same id, same created, same numbers


def test_a_product_over_a_period_is_the_production_weighted_sum_of_its_batches(
        small_plant, rows, tmp_path: Path) -> None:
    config = server_toml(tmp_path, small_plant.dsn)
    product = "brick-A"
    mine = {b: r for b, r in rows.items() if r["product"] == product}
    assert len(mine) >= 2
    batches = {b: export(config, tmp_path / b, "--batch", b)[0] for b in mine}
    (agg,) = export(config, tmp_path / "agg", "--product", product, "--from", "2020-01-01",
                    "--to", "2035-12-31")
    assert schema_problems(agg) == []
    units = {b: r["declared_units"] for b, r in mine.items()}
    weighted = sum(float(pf["pcf"]["pcfExcludingBiogenicUptake"]) * units[b]
                   for b, pf in batches.items()) / sum(units.values())
    assert float(agg["pcf"]["pcfExcludingBiogenicUptake"]) == pytest.approx(weighted,
                                                                              rel=1e-12)
    assert float(agg["pcf"]["pcfExcludingBiogenicUptake"]) == pytest.approx(
        sum(r["kgco2e_market"] for r in mine.values()) / sum(units.values()), rel=1e-12)
    assert agg["pcf"]["referencePeriodStart"] == min(
        pf["pcf"]["referencePeriodStart"] for pf in batches.values())
    assert agg["pcf"]["referencePeriodEnd"] == max(
        pf["pcf"]["referencePeriodEnd"] for pf in batches.values())
    assert all(b in agg["comment"] for b in mine)


def test_a_period_without_final_batches_is_refused(small_plant, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    config = server_toml(tmp_path, small_plant.dsn)
    assert compute_main(["--config", str(config), "export", "pact", "--product", "brick-A",
                         "--from", "2001-01-01", "--to", "2001-01-31"]) == 2
    assert "no final footprint of a batch that ended from 2001-01-01" in capsys.readouterr().err


def test_decimals_read_back_exactly() -> None:
    for x in (0.1, 1e-9, 123456789.123, 2.5e-17, 0.0, 7.0):
        text = decimal(x)
        assert "e" not in text.lower() and float(text) == x


def test_all_writes_every_final_batch_and_every_product(small_plant, rows,
                                                       tmp_path: Path) -> None:
    config = server_toml(tmp_path, small_plant.dsn)
    found = export(config, tmp_path / "all", "--all")
    products = {r["product"] for r in rows.values()}
    assert len(found) == len(rows) + len(products)
    assert all(schema_problems(pf) == [] for pf in found)
    assert len({pf["id"] for pf in found}) == len(found)


def test_all_leaves_out_and_names_a_batch_pact_cannot_carry(
        small_plant, rows, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # brick-B without product ids: PACT cannot identify it, so its batches (and its
    # product aggregate) are left out and named, and every other export still happens
    site = tmp_path / "small-no-ids.toml"
    text = SITE_FILE.read_text()
    line = 'product_ids = ["urn:plantprint:demo:article:brick-B"]\n'
    assert line in text
    site.write_text(text.replace(line, ""))
    config = server_toml(tmp_path, small_plant.dsn)
    config.write_text(config.read_text().replace(str(SITE_FILE), str(site)))
    found = export(config, tmp_path / "all", "--all")
    b_batches = sorted(b for b, r in rows.items() if r["product"] == "brick-B")
    a_batches = sorted(b for b, r in rows.items() if r["product"] == "brick-A")
    assert b_batches and a_batches
    err = capsys.readouterr().err
    for b in b_batches:
        assert f"left out batch {b} (site demo-site, revision " in err, err
    assert err.count("products.brick-B.product_ids: PACT needs") == len(b_batches)
    assert err.count("left out") == len(b_batches)
    assert len(found) == len(a_batches) + 1  # brick-A's batches and its product
    assert all(schema_problems(pf) == [] for pf in found)
    assert not any("brick-B" in orjson.dumps(pf).decode() for pf in found)
