"""The committed dashboards are a fresh build of the Python definitions, and the
provisioning files point Grafana at the same datasources and folder."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from deploy.grafana import build
from deploy.grafana.panels import FOLDER_UID, PROM_DS, SQL_DS, SqlQuery
from deploy.grafana.push import DatabaseSettings, sql_datasource

GRAFANA = Path(build.__file__).resolve().parent


def test_committed_json_is_a_fresh_build() -> None:
    fresh = build.rendered()
    committed = {p.name: p.read_text(encoding="utf-8")
                 for p in build.DASHBOARDS_DIR.glob("*.json")}
    assert sorted(committed) == sorted(fresh), "run: python -m deploy.grafana build"
    for name, text in fresh.items():
        assert committed[name] == text, f"{name} is stale: run python -m deploy.grafana build"


def test_dashboards_have_the_issue_s_panels_and_variables() -> None:
    boards = {name.removesuffix(".json"): json.loads(text)
              for name, text in build.rendered().items()}
    titles = {name: [p["title"] for p in b["panels"] if p["type"] != "row"]
              for name, b in boards.items()}
    assert {b["uid"] for b in boards.values()} == {
        "plantprint-overview", "plantprint-batches", "plantprint-batch", "plantprint-quality",
        "plantprint-factors"}
    for name in ("plant-overview", "batches", "data-quality", "factors"):
        variables = [v["name"] for v in boards[name]["templating"]["list"]]
        assert variables[:2] == ["site", "line"], name
    assert "Power now per line and carrier" in titles["plant-overview"]
    assert "Intensity per product against target" in titles["plant-overview"]
    assert "Unallocated share" in titles["plant-overview"]
    assert "Energy timeline by meter (cumulative)" in titles["batch"]
    assert "Sequence gaps per gateway" in titles["data-quality"]
    assert "Factor rows in use" in titles["factors"]
    for board in boards.values():
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)) and 0 not in ids
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                uid = target.get("datasource", panel.get("datasource", {})).get("uid")
                assert uid in (SQL_DS.uid, PROM_DS.uid), panel["title"]


def test_today_and_month_panels_use_relative_time() -> None:
    board = build.models()["plant-overview"]
    froms = {p.title: getattr(p, "time_from", None) for p in board.panels or []}
    assert froms["Energy today"] == "now/d" and froms["Energy this month"] == "now/M"


def test_sql_queries_declare_their_columns() -> None:
    for board in build.models().values():
        for panel in board.panels or []:
            for target in getattr(panel, "targets", None) or []:
                if isinstance(target, SqlQuery):
                    assert target.columns, panel.title
                    if target.format == "time_series":
                        assert target.columns[0] == "time", panel.title


def test_provisioning_matches_the_dashboards_and_push() -> None:
    sources = yaml.safe_load((GRAFANA / "provisioning/datasources/plantprint.yaml").read_text())
    by_uid = {d["uid"]: d for d in sources["datasources"]}
    assert by_uid[SQL_DS.uid]["type"] == SQL_DS.type_val
    assert by_uid[PROM_DS.uid]["type"] == PROM_DS.type_val
    pushed = sql_datasource(DatabaseSettings("db:5432", "plantprint", "grafana", "x"))
    assert pushed["name"] == by_uid[SQL_DS.uid]["name"]
    assert set(pushed["jsonData"]) == set(by_uid[SQL_DS.uid]["jsonData"])
    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/plantprint.yaml").read_text())
    (provider,) = providers["providers"]
    assert provider["folderUid"] == FOLDER_UID and provider["type"] == "file"


def test_sites_command_refuses_a_bad_config_in_one_line(tmp_path, capsys) -> None:
    from deploy.grafana.__main__ import main

    bad = tmp_path / "server.toml"
    bad.write_text('[compute]\nsites = { "demo-site" = "nowhere.toml" }\n')
    assert main(["sites", "--config", str(bad), "--dsn", "postgresql://127.0.0.1:1/x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("python -m deploy.grafana sites: error:") and "nowhere.toml" in err
    assert len(err.splitlines()) == 1


def test_prometheus_panels_query_metrics_our_services_export() -> None:
    """The two panels Prometheus serves name a metric and label edge or ingest define
    (no Prometheus runs here to execute the PromQL itself)."""
    from deploy.grafana import quality
    from edge.metrics import SPOOL_DEPTH
    from ingest.metrics import DLQ

    assert SPOOL_DEPTH._name in quality.SPOOL_DEPTH and "by (gateway)" in quality.SPOOL_DEPTH
    assert SPOOL_DEPTH._labelnames == ("gateway",)
    # prometheus-client exposes a Counter with the _total suffix
    assert f"{DLQ._name}_total" in quality.DLQ_RATE and DLQ._labelnames == ("reason",)
    assert "by (reason)" in quality.DLQ_RATE
