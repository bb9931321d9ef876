"""``python -m compute`` as an operator runs it: start-up refusals, ``footprints``, ``factors``.

Every test runs the real command in a subprocess. The start-up refusals need no
service (the site models are checked before anything connects); ``footprints``
and ``factors`` read a real, migrated PostgreSQL database.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
import tomli_w

from ingest.migrate import migrate

ROOT = Path(__file__).resolve().parents[2]
SMALL = ROOT / "deploy/sites/small.toml"
UNREACHABLE = "postgresql://127.0.0.1:1/nowhere"


def compute(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "compute", "--config", str(config), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


def server_toml(path: Path, dsn: str = UNREACHABLE,
                sites: dict[str, str] | None = None) -> Path:
    config: dict[str, Any] = {"database": {"dsn": dsn}, "metrics": {"port": 0},
                              "compute": {"metrics_port": 0}}
    if sites is not None:
        config["compute"]["sites"] = sites
    path.write_text(tomli_w.dumps(config))
    return path


def one_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


# --- start-up refusals: exit 1, one line naming the file and the key ------------------


def test_a_missing_site_model_file_is_named_with_its_key(tmp_path: Path) -> None:
    config = server_toml(tmp_path / "server.toml", sites={"demo-site": "sites/small.toml"})
    proc = compute(config)
    assert proc.returncode == 1
    line = one_line(proc)
    assert "compute.sites.demo-site" in line
    assert str(tmp_path / "sites/small.toml") in line  # relative to server.toml's folder


def test_a_site_model_with_a_misspelt_key_is_named_with_file_and_key(tmp_path: Path) -> None:
    text = SMALL.read_text().replace("rated = 110.0", "ratd = 110.0", 1)
    (tmp_path / "small.toml").write_text(text)
    config = server_toml(tmp_path / "server.toml", sites={"demo-site": "small.toml"})
    proc = compute(config)
    assert proc.returncode == 1
    line = one_line(proc)
    assert str(tmp_path / "small.toml") in line
    assert "meters.M-PRESS.ratd" in line and "meters.M-PRESS.rated" in line  # typo and gap


def test_a_site_model_inconsistent_with_itself_names_the_key(tmp_path: Path) -> None:
    text = SMALL.read_text().replace('asset = "L1-oven"', 'asset = "L1-ovn"', 1)
    (tmp_path / "small.toml").write_text(text)
    config = server_toml(tmp_path / "server.toml", sites={"demo-site": "small.toml"})
    proc = compute(config)
    assert proc.returncode == 1
    line = one_line(proc)
    assert str(tmp_path / "small.toml") in line
    assert "meters.M-OVEN.asset: unknown asset 'L1-ovn'" in line


def test_a_site_model_listed_under_another_site_is_refused(tmp_path: Path) -> None:
    config = server_toml(tmp_path / "server.toml", sites={"cement-works": str(SMALL)})
    proc = compute(config)
    assert proc.returncode == 1
    assert one_line(proc) == (f"compute: compute.sites.cement-works: {SMALL} describes site "
                              "'demo-site', not 'cement-works'")


def test_no_site_configured_is_refused_with_a_hint(tmp_path: Path) -> None:
    config = server_toml(tmp_path / "server.toml")
    proc = compute(config)
    assert proc.returncode == 1
    assert one_line(proc) == (
        f"compute: {config}: [compute] sites: no site model configured "
        '(e.g. sites = { "demo-site" = "sites/small.toml" })')


def test_a_bad_server_toml_is_named_with_its_key(tmp_path: Path) -> None:
    config = tmp_path / "server.toml"
    config.write_text('[compute]\nmicro_batch = 1.0\n')
    proc = compute(config)
    assert proc.returncode == 1
    line = one_line(proc)
    assert str(config) in line and "compute.micro_batch" in line


def test_unknown_arguments_and_an_unreachable_database_end_in_one_line(
        tmp_path: Path) -> None:
    config = server_toml(tmp_path / "server.toml")
    proc = compute(config, "footprints", "--jsn")
    assert proc.returncode == 2 and one_line(proc) == "compute: unknown arguments --jsn"
    proc = compute(config, "footprints", "--json")
    assert proc.returncode == 2 and proc.stdout == ""
    assert one_line(proc).startswith("python -m compute footprints: error: cannot reach the "
                                     "database 127.0.0.1:1/nowhere: ")


# --- footprints and factors against a real database --------------------------------------

_INSERT = """INSERT INTO batch_footprint (site, batch_id, revision, status, asset, product,
    start_ts, end_ts, quantity, unit, declared_units, energy, energy_unit, uncertainty,
    kgco2e_location, kgco2e_market, kgco2e_uncertainty, per_unit_location, per_unit_market,
    primary_data_share, flags, factor_ids, detail, inputs_sha256)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,
        %s, %s, %s)"""


def _footprint(batch: str, revision: int, status: str, kwh: float, start: str,
               end: str | None, flags: list[str]) -> tuple[object, ...]:
    energy = {"electricity": kwh, "natural_gas": 31.5}
    kg = kwh * 0.55 + 31.5 * 2.16502
    return ("demo-site", batch, revision, status, "L1-oven", "brick-A", start, end,
            12.0 if end else None, "t" if end else None, 12000.0 if end else None,
            orjson.dumps(energy).decode(),
            orjson.dumps({"electricity": "kWh", "natural_gas": "Nm3"}).decode(),
            orjson.dumps({"electricity": 0.25, "natural_gas": 0.01}).decode(),
            kg, kg * 1.1, 0.2, kg / 12000.0 if end else None, kg * 1.1 / 12000.0 if end else None,
            0.98, flags, [19, 26], orjson.dumps({"methods": ["power"]}).decode(),
            "ab" * 32)


@pytest.fixture
def footprint_db(new_database: Any) -> str:
    dsn = str(new_database())
    migrate(dsn)
    with psycopg.connect(dsn) as conn:
        for row in (
            _footprint("B-001", 1, "final", 120.0, "2025-01-06T06:10:00Z",
                       "2025-01-06T06:40:00Z", ["missing:M-STEAM"]),
            _footprint("B-001", 2, "revised", 121.5, "2025-01-06T06:10:00Z",
                       "2025-01-06T06:40:00Z", ["late_data:M-STEAM"]),
            _footprint("B-002", 0, "provisional", 40.0, "2025-01-06T06:45:00Z", None, []),
        ):
            conn.execute(_INSERT, row)
    return dsn


def test_footprints_json_prints_the_newest_revision_of_each_batch(
        tmp_path: Path, footprint_db: str) -> None:
    config = server_toml(tmp_path / "server.toml", footprint_db)
    proc = compute(config, "footprints", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = orjson.loads(proc.stdout)
    assert [(r["batch_id"], r["revision"], r["status"]) for r in rows] == [
        ("B-001", 2, "revised"), ("B-002", 0, "provisional")]
    revised = rows[0]
    assert revised["energy"] == {"electricity": 121.5, "natural_gas": 31.5}
    assert revised["energy_unit"] == {"electricity": "kWh", "natural_gas": "Nm3"}
    assert revised["uncertainty"] == {"electricity": 0.25, "natural_gas": 0.01}
    assert revised["kgco2e_location"] == pytest.approx(121.5 * 0.55 + 31.5 * 2.16502)
    assert revised["start_ts"] == "2025-01-06T06:10:00Z"
    assert revised["end_ts"] == "2025-01-06T06:40:00Z"
    assert revised["flags"] == ["late_data:M-STEAM"]
    assert revised["factor_ids"] == [19, 26] and revised["inputs_sha256"] == "ab" * 32
    assert revised["declared_units"] == 12000.0 and revised["site"] == "demo-site"
    assert rows[1]["end_ts"] is None and rows[1]["per_unit_location"] is None


def test_footprints_of_one_batch_print_every_revision(
        tmp_path: Path, footprint_db: str) -> None:
    config = server_toml(tmp_path / "server.toml", footprint_db)
    proc = compute(config, "footprints", "--batch", "B-001", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = orjson.loads(proc.stdout)
    assert [(r["revision"], r["status"], r["energy"]["electricity"]) for r in rows] == [
        (1, "final", 120.0), (2, "revised", 121.5)]
    table = compute(config, "footprints", "--batch", "B-001")
    assert table.returncode == 0, table.stderr
    assert "B-001" in table.stdout and "revised" in table.stdout and "final" in table.stdout
    assert "B-002" not in table.stdout


def test_footprints_of_an_empty_database_say_so(tmp_path: Path, new_database: Any) -> None:
    dsn = str(new_database())
    migrate(dsn)
    config = server_toml(tmp_path / "server.toml", dsn)
    proc = compute(config, "footprints", "--json")
    assert proc.returncode == 0 and orjson.loads(proc.stdout) == []
    proc = compute(config, "footprints")
    assert proc.returncode == 0 and one_line(proc) == "no footprints yet"


def test_footprints_on_an_unmigrated_database_say_what_to_run(
        tmp_path: Path, new_database: Any) -> None:
    config = server_toml(tmp_path / "server.toml", str(new_database()))
    proc = compute(config, "footprints")
    assert proc.returncode == 2
    assert "has no batch_footprint table: run `python -m ingest migrate`" in one_line(proc)


def test_factors_list_and_add_through_the_command_line(
        tmp_path: Path, new_database: Any) -> None:
    dsn = str(new_database())
    migrate(dsn)
    config = server_toml(tmp_path / "server.toml", dsn)
    proc = compute(config, "factors", "list", "--region", "CN-North")
    assert proc.returncode == 0, proc.stderr
    assert "0.6776" in proc.stdout and "0.6361" in proc.stdout  # 2022 and 2023, North grid
    assert "0.5306" not in proc.stdout  # the national figure is another region
    ppa = ["factors", "add", "--carrier", "electricity", "--region", "demo-site",
           "--from", "2025-01-01", "--to", "2025-12-31", "--value", "0.05",
           "--unit", "kgCO2/kWh", "--kind", "market", "--source", "PPA with a wind farm",
           "--publication", "contract 2024-117, 2024-12-01"]
    proc = compute(config, *ppa)
    assert proc.returncode == 0, proc.stderr
    assert "PPA with a wind farm" in proc.stdout
    proc = compute(config, "factors", "list", "--region", "demo-site", "--kind", "market")
    assert proc.returncode == 0, proc.stderr
    assert "0.05" in proc.stdout and "market (contract)" in proc.stdout
    refused = compute(config, *[a if a != "kgCO2/kWh" else "kgCO2/Nm3" for a in ppa])
    assert refused.returncode == 2
    assert "unit 'kgCO2/Nm3' for electricity" in one_line(refused)
