# grafana-client's element methods carry no annotations
# mypy: disable-error-code="no-untyped-call"
"""Push the folder, the datasources and the dashboards into an existing Grafana.

    GRAFANA_URL=https://grafana.example:3000 GRAFANA_TOKEN=glsa_… \\
    PLANTPRINT_GRAFANA_DSN=postgresql://grafana:…@db:5432/plantprint?sslmode=verify-full \\
        python -m deploy.grafana push

Idempotent: each object is read first and written only when it differs (a
second push sends no write), always to the same uid, so a push never makes a
duplicate. A dashboard someone edited in Grafana is put back to the committed
JSON (overwrite). The datasource's password is write-only in Grafana and cannot
be compared: it is sent when the datasource is created or changed, or with
``--update-password``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from grafana_client.api import GrafanaApi
from grafana_client.client import GrafanaClientError

from deploy.grafana.build import DASHBOARDS_DIR
from deploy.grafana.panels import FOLDER_TITLE, FOLDER_UID, PROM_DS, SQL_DS

logger = logging.getLogger(__name__)

SQL_DS_NAME = "plantprint"
PROM_DS_NAME = "plantprint-prometheus"


class PushError(Exception):
    """Push cannot start: a setting missing or malformed (names the variable)."""


@dataclass(frozen=True)
class DatabaseSettings:
    """Where Grafana's PostgreSQL datasource connects, as the plantprint_reader login."""

    host: str  # host:port
    database: str
    user: str
    password: str
    sslmode: str = "verify-full"
    timescaledb: bool = True

    @classmethod
    def from_dsn(cls, dsn: str, timescaledb: bool = True) -> DatabaseSettings:
        url = urlparse(dsn)
        if url.scheme not in ("postgresql", "postgres") or not url.hostname or not url.username:
            raise PushError("PLANTPRINT_GRAFANA_DSN: expected postgresql://user:password@host"
                            f"[:port]/database[?sslmode=…], got {url.scheme}://{url.hostname}…")
        query = dict(p.split("=", 1) for p in url.query.split("&") if "=" in p)
        return cls(host=f"{url.hostname}:{url.port or 5432}",
                   database=url.path.lstrip("/") or "plantprint",
                   user=unquote(url.username), password=unquote(url.password or ""),
                   sslmode=query.get("sslmode", "verify-full"), timescaledb=timescaledb)


def sql_datasource(db: DatabaseSettings) -> dict[str, Any]:
    """The PostgreSQL datasource as Grafana's API takes it (same as provisioning's file)."""
    return {
        "uid": SQL_DS.uid, "name": SQL_DS_NAME, "type": SQL_DS.type_val, "access": "proxy",
        "url": db.host, "user": db.user, "isDefault": True,
        "jsonData": {"database": db.database, "sslmode": db.sslmode, "postgresVersion": 1500,
                     "timescaledb": db.timescaledb, "maxOpenConns": 10, "maxIdleConns": 2,
                     "connMaxLifetime": 14400},
        "secureJsonData": {"password": db.password},
    }


def prometheus_datasource(url: str) -> dict[str, Any]:
    return {"uid": PROM_DS.uid, "name": PROM_DS_NAME, "type": PROM_DS.type_val,
            "access": "proxy", "url": url, "isDefault": False,
            "jsonData": {"httpMethod": "POST", "timeInterval": "15s"}}


@dataclass
class PushReport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


def _missing(exc: GrafanaClientError) -> bool:
    return bool(exc.status_code == 404)


def _differs(wanted: Mapping[str, Any], current: Mapping[str, Any]) -> bool:
    """Whether any key of ``wanted`` (nested dicts compared key by key) differs in ``current``."""
    for key, value in wanted.items():
        have = current.get(key)
        if isinstance(value, Mapping) and isinstance(have, Mapping):
            if _differs(value, have):
                return True
        elif have != value:
            return True
    return False


def push_folder(api: GrafanaApi, report: PushReport) -> None:
    try:
        folder = api.folder.get_folder(FOLDER_UID)
    except GrafanaClientError as exc:
        if not _missing(exc):
            raise
        api.folder.create_folder(FOLDER_TITLE, uid=FOLDER_UID)
        report.created.append(f"folder {FOLDER_UID}")
        return
    if folder.get("title") != FOLDER_TITLE:
        api.folder.update_folder(FOLDER_UID, title=FOLDER_TITLE, overwrite=True)
        report.updated.append(f"folder {FOLDER_UID}")
    else:
        report.unchanged.append(f"folder {FOLDER_UID}")


def push_datasource(api: GrafanaApi, body: dict[str, Any], report: PushReport,
                    update_secrets: bool = False) -> None:
    uid, what = body["uid"], f"datasource {body['uid']}"
    try:
        current = api.datasource.get_datasource_by_uid(uid)
    except GrafanaClientError as exc:
        if not _missing(exc):
            raise
        api.datasource.create_datasource(body)
        report.created.append(what)
        return
    visible = {k: v for k, v in body.items() if k != "secureJsonData"}
    if _differs(visible, current) or (update_secrets and "secureJsonData" in body):
        api.datasource.update_datasource_by_uid(uid, body)
        report.updated.append(what)
    else:
        report.unchanged.append(what)


def _comparable(board: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in board.items() if k not in ("id", "version")}


def push_dashboard(api: GrafanaApi, board: dict[str, Any], report: PushReport) -> None:
    uid, what = board["uid"], f"dashboard {board['uid']}"
    try:
        current = api.dashboard.get_dashboard(uid)
    except GrafanaClientError as exc:
        if not _missing(exc):
            raise
        current = None
    if current is not None and (
            _comparable(current.get("dashboard", {})) == _comparable(board)
            and current.get("meta", {}).get("folderUid") == FOLDER_UID):
        report.unchanged.append(what)
        return
    api.dashboard.update_dashboard({"dashboard": {**board, "id": None}, "folderUid": FOLDER_UID,
                                    "overwrite": True, "message": "python -m deploy.grafana push"})
    (report.updated if current is not None else report.created).append(what)


def load_dashboards(folder: Path = DASHBOARDS_DIR) -> list[dict[str, Any]]:
    boards = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*.json"))]
    if not boards:
        raise PushError(f"no dashboards in {folder}: run python -m deploy.grafana build")
    return boards


def push(api: GrafanaApi, db: DatabaseSettings, prometheus_url: str | None = None,
         update_secrets: bool = False, folder: Path = DASHBOARDS_DIR) -> PushReport:
    """Folder, datasources, then dashboards (they reference both by uid)."""
    report = PushReport()
    boards = load_dashboards(folder)
    push_folder(api, report)
    push_datasource(api, sql_datasource(db), report, update_secrets)
    if prometheus_url:
        push_datasource(api, prometheus_datasource(prometheus_url), report)
    for board in boards:
        push_dashboard(api, board, report)
    return report


def from_environment(env: Mapping[str, str] = os.environ) -> tuple[GrafanaApi, DatabaseSettings,
                                                                   str | None]:
    """GRAFANA_URL, GRAFANA_TOKEN (a service account token), PLANTPRINT_GRAFANA_DSN, and
    optionally PLANTPRINT_GRAFANA_TIMESCALEDB (true|false), PLANTPRINT_PROMETHEUS_URL."""
    missing = [k for k in ("GRAFANA_URL", "GRAFANA_TOKEN", "PLANTPRINT_GRAFANA_DSN")
               if not env.get(k)]
    if missing:
        raise PushError(f"environment variable(s) {', '.join(missing)} not set")
    tsdb = env.get("PLANTPRINT_GRAFANA_TIMESCALEDB", "true").lower()
    if tsdb not in ("true", "false"):
        raise PushError(f"PLANTPRINT_GRAFANA_TIMESCALEDB: expected true or false, got {tsdb!r}")
    api = GrafanaApi.from_url(env["GRAFANA_URL"], credential=env["GRAFANA_TOKEN"], timeout=10.0)
    db = DatabaseSettings.from_dsn(env["PLANTPRINT_GRAFANA_DSN"], timescaledb=tsdb == "true")
    return api, db, env.get("PLANTPRINT_PROMETHEUS_URL") or None
