"""The site model (compute/site.py) and the shipped site files (deploy/sites/).

The site files are written by hand from the plant documentation; these tests
hold them to that documentation (the scenarios' meter lists, read here by the
test only — compute never opens them) and to the edge profiles that decide the
unit and counter width each reading arrives with.
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from compute.errors import ComputeError, SiteModelError
from compute.site import SiteModel, load_site, load_sites
from edge.settings import ConfigError

ROOT = Path(__file__).resolve().parents[2]
SITES = ROOT / "deploy/sites"
PROFILES = ROOT / "deploy/edge/profiles"


@pytest.fixture(scope="module")
def small() -> SiteModel:
    return load_site(SITES / "small.toml")


@pytest.fixture(scope="module")
def plant() -> SiteModel:
    return load_site(SITES / "plant.toml")


def test_small_site_file_loads(small: SiteModel) -> None:
    assert (small.site, small.idle_policy, small.grid_region) == (
        "demo-site", "unallocated", "CN-East")
    assert len(small.meters) == 7 and set(small.assets) == {"L1-press", "L1-oven"}
    assert small.lines() == {"L1": ("L1-press", "L1-oven")}
    assert small.assets["L1-oven"].split == "quantity"
    assert set(small.meters_of_asset("L1-oven")) == {"M-OVEN", "M-GAS", "M-STEAM"}
    assert small.scope("M-AIR") == ("L1-press", "L1-oven")
    assert small.parent_of("M-DRIVE") == "M-INC" and small.parent_of("M-GAS") is None
    assert set(small.products) == {"brick-A", "brick-B"}
    air = small.meters["M-AIR"]
    assert air.carbon is not None and air.carbon.co2_wrap == pytest.approx(2**32 * 0.1)


def test_plant_site_file_loads(plant: SiteModel) -> None:
    assert (plant.site, plant.geography, plant.grid_region, plant.idle_policy) == (
        "cement-works", "CN-SX", "CN-North", "next_batch")
    assert len(plant.meters) == 39 and len(plant.assets) == 9
    assert set(plant.lines()) == {"L1", "L2", "L3"}
    assert plant.scope("M-SITE") == tuple(plant.assets)  # empty assets: the whole site
    assert plant.scope("L2-INC") == ("L2-kiln", "L2-cooler", "L2-coalmill")
    parents = [m for m in plant.meters.values() if m.role == "parent"]
    assert len(parents) == 4
    for parent in parents:  # every child exists and meters the same carrier
        assert all(plant.meters[c].carrier == parent.carrier for c in parent.children)
    children = [c for p in parents for c in p.children]
    assert len(children) == len(set(children))  # one parent per meter
    assert {"raw-meal", "clinker", "CEM-I-42.5R", "CEM-II-A-LL-42.5N"} == set(plant.products)


def test_units_counters_and_scopes(small: SiteModel, plant: SiteModel) -> None:
    oven = small.meters["M-OVEN"]
    assert oven.wrap == pytest.approx(429_496_729.6) and oven.quantum(88_000.0) == 0.1
    assert small.meters["M-PRESS"].wrap is None
    assert small.meters["M-PRESS"].quantum(15_234.5) == 2.0**-10  # float32 near 15 000 kWh
    assert small.meters["M-GAS"].quantum(45_000.0) < 1e-11  # float64 totalizer
    assert small.to_canonical("M-INC", 1500.0, "Wh") == pytest.approx(1.5)
    assert small.to_canonical("M-INC", 2.0, "MWh") == pytest.approx(2000.0)
    assert small.to_canonical("M-GAS", 12.5) == 12.5
    assert small.rate_to_canonical("M-PRESS", 55_000.0, "W") == pytest.approx(55.0)
    assert small.max_increase("M-OVEN", 60.0) == pytest.approx(250.0 / 60)
    with pytest.raises(SiteModelError, match="M-GAS reports 'kWh'"):
        small.to_canonical("M-GAS", 1.0, "kWh")
    with pytest.raises(SiteModelError, match="unknown meter 'M-NONE'"):
        small.scope("M-NONE")
    # a batch on the packer needs its feeders, the line incomer and its sub-meters
    # (residual = incomer − Σ children), the site incomer and its children, the air
    needed = set(plant.meters_for_asset("L3-packer"))
    assert {"L3-PACKER-MAIN", "L3-INC", "L3-CEMENTMILL-MAIN", "M-SITE", "L1-INC",
            "M-AIR"} <= needed
    assert "L2-KILN-GAS" not in needed
    assert plant.declared_units("clinker", 120.0, "t") == pytest.approx(120_000.0)
    with pytest.raises(SiteModelError, match="unknown product 'CEM-III'"):
        plant.declared_units("CEM-III", 1.0, "t")


def _scenario_meters(name: str) -> dict[str, dict[str, Any]]:
    doc = tomllib.loads((ROOT / f"deploy/scenarios/{name}.toml").read_text())
    return {m["id"]: m for m in doc["meters"]}


def _profile_point(family: str, carrier: str, channel: str) -> dict[str, Any] | None:
    """The edge profile's point for a Modbus family; None for OPC UA (a Double)."""
    if family.startswith("opcua"):
        return None
    file = {"flow": "flow-gas" if carrier == "natural_gas" else "flow-steam"}.get(family, family)
    profile = tomllib.loads((PROFILES / f"{file}.toml").read_text())
    point: dict[str, Any] = next(p for p in profile["points"] if p["channel"] == channel)
    return point


@pytest.mark.parametrize("name", ["small", "plant"])
def test_site_files_agree_with_the_plant_documentation(name: str) -> None:
    site = load_site(SITES / f"{name}.toml")
    documented = _scenario_meters(name)
    assert set(site.meters) == set(documented)
    for mid, doc in documented.items():
        m = site.meters[mid]
        assert (m.carrier, m.role, m.asset, m.rule) == (
            doc.get("carrier", "electricity"), doc.get("role", "asset"), doc.get("asset"),
            doc.get("rule")), mid
        assert (m.children, m.assets) == (tuple(doc.get("children", ())),
                                          tuple(doc.get("assets", ()))), mid
        assert math.isclose(m.rated, doc["rated"]), mid
        assert (m.carbon is not None) == (doc["family"] == "carbon"), mid
        point = _profile_point(doc["family"], m.carrier, m.channel)
        if point is None:  # OPC UA Double counter in kWh | t
            assert (m.counter_bits, m.float_bits) == (None, 64), mid
            continue
        assert m.unit == point["unit"], mid
        if point["type"].startswith("float"):
            assert (m.counter_bits, m.float_bits) == (None, int(point["type"][5:])), mid
        else:
            assert m.counter_bits == point.get("counter_bits", int(point["type"][-2:])), mid
            assert m.resolution == pytest.approx(point.get("scale", 1.0)), mid


# --- refused files -------------------------------------------------------------


def _write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(tomli_w.dumps(data))
    return path


def _small() -> dict[str, Any]:
    return tomllib.loads((SITES / "small.toml").read_text())


def _unknown_asset(d: dict[str, Any]) -> None:
    d["meters"]["M-PRESS"]["asset"] = "L9-nowhere"


def _two_parents(d: dict[str, Any]) -> None:
    d["meters"]["M-AIR"] = {**d["meters"]["M-AIR"], "role": "parent", "assets": [],
                            "children": ["M-DRIVE"]}
    del d["meters"]["M-AIR"]["carbon"]


def _cycle(d: dict[str, Any]) -> None:
    d["meters"]["M-PRESS"] = {**d["meters"]["M-PRESS"], "role": "parent", "rule": "mass",
                              "children": ["M-INC"]}
    del d["meters"]["M-PRESS"]["asset"]


CASES = {
    "unknown asset": (_unknown_asset, r"meters\.M-PRESS\.asset: unknown asset 'L9-nowhere'"),
    "unit of another carrier": (lambda d: d["meters"]["M-GAS"].update(unit="kWh"),
                                r"meters\.M-GAS\.unit: 'kWh' is not a natural_gas unit"),
    "shared without rule": (lambda d: d["meters"]["M-AIR"].pop("rule"),
                            r"meters\.M-AIR\.rule: a shared meter needs a rule"),
    "integer counter without resolution": (
        lambda d: d["meters"]["M-OVEN"].pop("resolution"),
        r"meters\.M-OVEN\.resolution: an integer counter of 32 bits needs resolution > 0"),
    "unknown child": (lambda d: d["meters"]["M-INC"]["children"].append("M-LIGHTS"),
                      r"meters\.M-INC\.children: unknown meter 'M-LIGHTS'"),
    "child of two parents": (_two_parents,
                             r"meters\.M-AIR\.children: 'M-DRIVE' is already a child of 'M-INC'"),
    "cycle": (_cycle, r"meters\.\S+\.children: cycle"),
    "rule on an asset meter": (lambda d: d["meters"]["M-OVEN"].update(rule="mass"),
                               r"meters\.M-OVEN\.rule: asset meters have no rule"),
    "carbon channels on a gas meter": (
        lambda d: d["meters"]["M-GAS"].update(carbon={"co2_channel": "co2"}),
        r"meters\.M-GAS\.carbon: a smart carbon meter meters electricity"),
    "commissioning without offset": (
        lambda d: d["meters"]["M-PRESS"].update(commissioned="2022-09-12T00:00:00"),
        r"meters\.M-PRESS\.commissioned: .*needs a UTC offset"),
    "idle policy": (lambda d: d.update(idle_policy="spread"), r"idle_policy: Input should be"),
    "unknown key": (lambda d: d["assets"]["L1-oven"].update(slots=2),
                    r"assets\.L1-oven\.slots: Extra inputs are not permitted"),
    "negative counter width": (lambda d: d["meters"]["M-OVEN"].update(counter_bits=-1),
                               r"meters\.M-OVEN\.counter_bits: Input should be greater"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_site_file_is_refused_naming_the_key(tmp_path: Path, case: str) -> None:
    mutate, expected = CASES[case]
    data = _small()
    mutate(data)
    path = _write(tmp_path, data)
    with pytest.raises(SiteModelError, match=expected) as caught:
        load_site(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert isinstance(caught.value, ConfigError) and isinstance(caught.value, ComputeError)


def test_unreadable_site_file_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.toml"
    bad.write_text("site = \n")
    with pytest.raises(SiteModelError, match=r"broken\.toml: not valid TOML"):
        load_site(bad)


def test_sites_of_server_toml_resolve_against_its_folder(tmp_path: Path) -> None:
    (tmp_path / "sites").mkdir()
    (tmp_path / "sites/small.toml").write_text((SITES / "small.toml").read_text())
    sites = load_sites({"demo-site": "sites/small.toml"}, tmp_path)
    assert list(sites) == ["demo-site"] and len(sites["demo-site"].meters) == 7
    with pytest.raises(SiteModelError, match=r"compute\.sites\.cement-works: .* describes "
                                             r"site 'demo-site'"):
        load_sites({"cement-works": "sites/small.toml"}, tmp_path)
    with pytest.raises(SiteModelError, match=r"compute\.sites\.x: no site file .*nope\.toml"):
        load_sites({"x": "sites/nope.toml"}, tmp_path)
