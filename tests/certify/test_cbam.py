"""CBAM figures of the small plant's bricks, declared CBAM goods in a test site model.

The shipped small.toml rightly declares no CBAM category (fired clay bricks are
not CBAM goods); these tests declare one in a copy, to check the arithmetic and
the definitive-period rule against the footprint records themselves.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime
from pathlib import Path

import orjson
import psycopg
import pytest

from compute.__main__ import main as compute_main
from compute.cbam import batch_figures
from compute.factors import FactorRow

ROOT = Path(__file__).resolve().parents[2]
SMALL = ROOT / "deploy" / "sites" / "small.toml"


def config(folder: Path, dsn: str, categories: dict[str, str]) -> Path:
    """server.toml and a copy of small.toml whose products carry the given CBAM category."""
    text = SMALL.read_text()
    for product, category in categories.items():
        head = f'[products.{product}]\n'
        assert head in text
        text = text.replace(head, head + f'cbam = {{ category = "{category}", '
                                         f'cn_code = "2523 29 00" }}\n')
    site = folder / "site.toml"
    site.write_text(text)
    path = folder / "server.toml"
    path.write_text(f'[database]\ndsn = "{dsn}"\n[compute]\n'
                    f'sites = {{ "demo-site" = "{site.as_posix()}" }}\n')
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = compute_main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def expected(dsn: str, product: str) -> dict[str, float]:
    """From the footprint records and factor rows, by hand: t, MWh, direct and indirect t."""
    with psycopg.connect(dsn) as conn:
        factors = {int(i): (str(c), str(k), float(v)) for i, c, k, v in conn.execute(
            "SELECT id, carrier, kind, value FROM emission_factor")}
        rows = conn.execute(
            "SELECT quantity, unit, energy, factor_ids FROM batch_footprint_latest "
            "WHERE product = %s AND status <> 'provisional'", (product,)).fetchall()
    out = {"t": 0.0, "mwh": 0.0, "direct": 0.0, "indirect": 0.0}
    for q, unit, energy, fids in rows:
        assert unit == "t"
        out["t"] += q
        out["mwh"] += energy["electricity"] / 1e3
        loc = {factors[i][0]: factors[i][2] for i in fids if factors[i][1] == "location"}
        out["direct"] += sum(e * loc[c] for c, e in energy.items()
                             if c in ("natural_gas", "steam")) / 1e3
        out["indirect"] += energy["electricity"] * loc["electricity"] / 1e3
    return out


def test_cement_counts_direct_and_indirect(small_plant, tmp_path: Path,  # type: ignore[no-untyped-def]
                                           capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config(tmp_path, small_plant.dsn, {"brick-A": "cement"})
    rc, out, err = run(capsys, "--config", str(cfg), "cbam", "--product", "brick-A",
                       "--from", "2000-01-01", "--to", "2099-12-31", "--format", "json")
    assert rc == 0, err
    (rec,) = orjson.loads(out)
    want = expected(small_plant.dsn, "brick-A")
    assert rec["production_t"] == pytest.approx(want["t"], rel=1e-12)
    # SEC = the batches' electricity / their production in t
    assert rec["sec_mwh_per_t"] == pytest.approx(want["mwh"] / want["t"], rel=1e-12)
    assert rec["see_direct_tco2e_per_t"] == pytest.approx(want["direct"] / want["t"], rel=1e-12)
    assert rec["see_indirect_tco2e_per_t"] == pytest.approx(want["indirect"] / want["t"],
                                                            rel=1e-12)
    assert rec["indirect_counted"] is True
    assert rec["see_counted_tco2e_per_t"] == pytest.approx(
        (want["direct"] + want["indirect"]) / want["t"], rel=1e-12)
    assert rec["electricity_factor_type"] == "default"  # the grid average, no contract
    assert "MEE" in rec["electricity_factor_source"]
    assert any("process emissions" in n for n in rec["not_covered"])
    # the CSV carries the same figures
    rc, text, _ = run(capsys, "--config", str(cfg), "cbam", "--product", "brick-A",
                      "--from", "2000-01-01", "--to", "2099-12-31", "--format", "csv")
    (row,) = list(csv.DictReader(io.StringIO(text)))
    assert float(row["sec_mwh_per_t"]) == rec["sec_mwh_per_t"]
    assert row["cbam_category"] == "cement" and row["batches"] == str(rec["batches"])


def test_iron_and_steel_count_direct_only(small_plant, tmp_path: Path,  # type: ignore[no-untyped-def]
                                          capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config(tmp_path, small_plant.dsn, {"brick-B": "iron_steel"})
    out = tmp_path / "cbam.json"
    rc, _, err = run(capsys, "--config", str(cfg), "cbam", "--product", "brick-B",
                     "--from", "2000-01-01", "--to", "2099-12-31", "--format", "json",
                     "--out", str(out))
    assert rc == 0, err
    (rec,) = orjson.loads(out.read_bytes())
    assert rec["indirect_counted"] is False
    assert rec["see_indirect_tco2e_per_t"] > 0  # reported, not counted
    assert rec["see_counted_tco2e_per_t"] == rec["see_direct_tco2e_per_t"]


def test_a_product_without_a_category_is_refused_not_guessed(
        small_plant, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    cfg = config(tmp_path, small_plant.dsn, {})
    rc, out, err = run(capsys, "--config", str(cfg), "cbam", "--product", "brick-A",
                       "--from", "2000-01-01", "--to", "2099-12-31")
    assert rc == 2 and out == ""
    assert "products.brick-A.cbam: not set" in err
    rc, _, err = run(capsys, "--config", str(cfg), "cbam", "--product", "brick-A",
                     "--from", "2030-01-01", "--to", "2020-01-01")
    assert rc == 2 and "before --from" in err


def _row(fid: int, carrier: str, kind: str, variant: str, value: float) -> FactorRow:
    d = date(2025, 1, 1)
    return FactorRow(fid, carrier, "CN-East", d, d, value, f"kgCO2/{'kWh'}", kind, variant,
                     "CO2", f"source {fid}", f"publication {fid}", d, None, None, None,
                     "user", datetime(2025, 1, 1, tzinfo=UTC))


def test_a_contract_factor_is_actual_the_grid_average_default() -> None:
    rows = {1: _row(1, "electricity", "location", "average", 0.55),
            2: _row(2, "electricity", "market", "contract", 0.05),
            3: _row(3, "electricity", "market", "residual_mix", 0.61)}
    ppa = batch_figures("B", 2.0, "t", {"electricity": 1000.0}, [1, 2], rows, 1.0, [])
    grid = batch_figures("B", 2000.0, "kg", {"electricity": 1000.0}, [1, 3], rows, 1.0, [])
    assert ppa.indirect_t == pytest.approx(0.05) and ppa.electricity_rows[0].id == 2
    # the residual mix is no actual figure: the grid average stands
    assert grid.indirect_t == pytest.approx(0.55) and grid.electricity_rows[0].id == 1
    assert grid.tonnes == 2.0 and grid.electricity_mwh == 1.0
