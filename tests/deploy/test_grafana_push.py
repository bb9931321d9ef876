"""`python -m deploy.grafana push` against a local HTTP server standing in for Grafana's
API (no Grafana server can be installed here): the requests it sends, and that a
second push writes nothing while a changed object is written back once."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from deploy.grafana import __main__ as cli
from deploy.grafana.push import PushError, from_environment, push

TOKEN = "glsa_test_token"


class FakeGrafana:
    """The few endpoints push uses, with Grafana's status codes and shapes."""

    def __init__(self) -> None:
        self.folders: dict[str, dict[str, Any]] = {}
        self.datasources: dict[str, dict[str, Any]] = {}
        self.dashboards: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        self.bodies: list[tuple[str, str, Any]] = []

    def writes(self) -> list[tuple[str, str]]:
        return [(m, p) for m, p in self.requests if m != "GET"]

    def handle(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        self.requests.append((method, path))
        self.bodies.append((method, path, body))
        parts = path.strip("/").split("/")[1:]  # after "api"
        if parts[0] == "folders":
            if method == "POST":
                self.folders[body["uid"]] = {"uid": body["uid"], "title": body["title"]}
                return 200, self.folders[body["uid"]]
            folder = self.folders.get(parts[1])
            if folder is None:
                return 404, {"message": "folder not found"}
            if method == "PUT":
                folder["title"] = body["title"]
            return 200, folder
        if parts[0] == "datasources":
            if method == "POST":
                self.datasources[body["uid"]] = {k: v for k, v in body.items()
                                                 if k != "secureJsonData"}
                return 200, {"message": "Datasource added"}
            ds = self.datasources.get(parts[2])
            if ds is None:
                return 404, {"message": "Data source not found"}
            if method == "PUT":
                ds.update({k: v for k, v in body.items() if k != "secureJsonData"})
            return 200, {**ds, "id": 7, "orgId": 1, "readOnly": False}
        if parts[0] == "dashboards":
            if method == "POST":
                board = dict(body["dashboard"])
                old = self.dashboards.get(board["uid"])
                board["id"], board["version"] = 11, (old["dashboard"]["version"] + 1 if old else 1)
                self.dashboards[board["uid"]] = {"dashboard": board,
                                                 "meta": {"folderUid": body["folderUid"]}}
                return 200, {"status": "success", "uid": board["uid"]}
            found = self.dashboards.get(parts[2])
            return (200, found) if found else (404, {"message": "Dashboard not found"})
        return 404, {"message": "not found"}


@pytest.fixture
def grafana() -> Iterator[tuple[FakeGrafana, str]]:
    fake = FakeGrafana()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                status, reply = 401, {"message": "Unauthorized"}
            else:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                status, reply = fake.handle(self.command, self.path, body)
            data = json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = _serve

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def env(url: str, **extra: str) -> dict[str, str]:
    return {"GRAFANA_URL": url, "GRAFANA_TOKEN": TOKEN,
            "PLANTPRINT_GRAFANA_DSN": "postgresql://grafana:s%3Dcret@db:5432/plantprint"
                                      "?sslmode=verify-full",
            "PLANTPRINT_PROMETHEUS_URL": "http://prometheus:9090", **extra}


BOARDS = ["plantprint-batch", "plantprint-batches", "plantprint-quality", "plantprint-factors",
          "plantprint-overview"]


def test_first_push_creates_everything_and_the_second_writes_nothing(grafana) -> None:
    fake, url = grafana
    report = push(*from_environment(env(url)))
    assert fake.writes() == [
        ("POST", "/api/folders"),
        ("POST", "/api/datasources"), ("POST", "/api/datasources"),
        *[("POST", "/api/dashboards/db")] * 5]
    assert sorted(report.created) == sorted(
        ["folder plantprint", "datasource plantprint-db", "datasource plantprint-prometheus",
         *[f"dashboard {uid}" for uid in BOARDS]])
    ds_body = next(b for m, p, b in fake.bodies if p == "/api/datasources"
                   and b["uid"] == "plantprint-db")
    assert ds_body["url"] == "db:5432" and ds_body["user"] == "grafana"
    assert ds_body["jsonData"]["database"] == "plantprint"
    assert ds_body["jsonData"]["sslmode"] == "verify-full" and ds_body["jsonData"]["timescaledb"]
    assert ds_body["secureJsonData"] == {"password": "s=cret"}  # URL-decoded
    board_body = next(b for m, p, b in fake.bodies if p == "/api/dashboards/db")
    assert board_body["folderUid"] == "plantprint" and board_body["overwrite"] is True
    assert board_body["dashboard"]["id"] is None

    fake.requests.clear()
    again = push(*from_environment(env(url)))
    assert fake.writes() == []  # idempotent: only reads
    assert not again.created and not again.updated and len(again.unchanged) == 8
    assert ("GET", "/api/dashboards/uid/plantprint-overview") in fake.requests


def test_push_puts_back_what_changed_and_only_that(grafana) -> None:
    fake, url = grafana
    push(*from_environment(env(url)))
    fake.dashboards["plantprint-factors"]["dashboard"]["title"] = "edited in the UI"
    fake.datasources["plantprint-db"]["url"] = "old-db:5432"
    fake.folders["plantprint"]["title"] = "renamed"
    fake.requests.clear()
    report = push(*from_environment(env(url)))
    assert sorted(fake.writes()) == sorted([
        ("PUT", "/api/folders/plantprint"), ("PUT", "/api/datasources/uid/plantprint-db"),
        ("POST", "/api/dashboards/db")])
    assert fake.dashboards["plantprint-factors"]["dashboard"]["title"] == "Factors"
    assert fake.datasources["plantprint-db"]["url"] == "db:5432"
    assert sorted(report.updated) == ["dashboard plantprint-factors", "datasource plantprint-db",
                                      "folder plantprint"]
    fake.requests.clear()
    push(*from_environment(env(url)), update_secrets=True)  # a password rotation
    assert fake.writes() == [("PUT", "/api/datasources/uid/plantprint-db")]


def test_cli_push_prints_what_it_did_and_refuses_bad_settings(grafana, monkeypatch, capsys,
                                                              ) -> None:
    _fake, url = grafana
    for key, value in env(url).items():
        monkeypatch.setenv(key, value)
    assert cli.main(["push"]) == 0
    assert "created   dashboard plantprint-overview" in capsys.readouterr().out
    monkeypatch.setenv("GRAFANA_TOKEN", "wrong")
    assert cli.main(["push"]) == 2
    assert "Unauthorized" in capsys.readouterr().err
    with pytest.raises(PushError, match="GRAFANA_TOKEN"):
        from_environment({k: v for k, v in env(url).items() if k != "GRAFANA_TOKEN"})
    with pytest.raises(PushError, match="PLANTPRINT_GRAFANA_DSN"):
        from_environment(env(url, PLANTPRINT_GRAFANA_DSN="db:5432"))
