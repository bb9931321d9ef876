"""The service stack starts real processes, reports them, and leaves nothing behind."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import psycopg
import pytest

from deploy import devstack, mosquitto, procs
from deploy.tansu import TansuBroker


@pytest.fixture
def private_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PLANTPRINT_STATE", str(tmp_path / "state"))
    monkeypatch.delenv("PLANTPRINT_MQTT_URL", raising=False)
    return tmp_path / "state"


def test_up_status_down_leaves_no_process(private_state: Path) -> None:
    state = devstack.up(["kafka", "mqtt"])
    pids = [state["kafka"].pid, state["mqtt"].pid]
    assert all(procs.pid_alive(p) for p in pids)
    for name in ("kafka", "mqtt"):
        host, port = devstack._host_port(state[name].url)
        assert host == "127.0.0.1" and procs.port_open(host, port)
    # up again reuses what runs: same processes, same ports
    again = devstack.up(["kafka", "mqtt"])
    assert [again["kafka"].pid, again["mqtt"].pid] == pids
    assert (private_state / "services.json").exists()
    devstack.down(["kafka", "mqtt"])
    assert not any(procs.pid_alive(p) for p in pids)
    assert devstack.load_state() == {}


def test_every_service_including_fallbacks_stops_cleanly(
    private_state: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # pytest's tmp folder is private (mode 700): the embedded PostgreSQL, run as an
    # unprivileged user, must then keep its data elsewhere, which devstack decides
    state = private_state
    monkeypatch.delenv("PLANTPRINT_DSN", raising=False)
    try:
        up = devstack.up()
        assert all(ep.owned for ep in up.values())
        assert up["postgres"].extra["kind"] == "embedded"
        for name in ("postgres", "tsdb"):
            with psycopg.connect(up[name].url, connect_timeout=10) as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
        pids = {name: ep.pid for name, ep in up.items()}
        assert all(procs.pid_alive(pid) for pid in pids.values())
    finally:
        devstack.down()
    assert not [name for name, pid in pids.items() if procs.pid_alive(pid)]
    shutil.rmtree(devstack.embedded_pg_dir(), ignore_errors=True)
    assert state.exists()


def test_missing_mosquitto_names_service_and_fix(
    private_state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mosquitto.shutil, "which", lambda *a, **k: None)
    with pytest.raises(devstack.ServiceError, match=r"mqtt: .*mosquitto.*apt-get install"):
        devstack.up(["mqtt"])


def test_broker_on_taken_port_fails_with_reason(private_state: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        broker = TansuBroker("kafka-clash", port=taken.getsockname()[1])
        with pytest.raises(procs.ServiceError, match=r"kafka-clash: tansu exited"):
            broker.start(timeout=20)
        broker.stop()


def test_external_postgres_is_used_and_not_stopped(
    private_state: Path, monkeypatch: pytest.MonkeyPatch, services
) -> None:
    monkeypatch.setenv("PLANTPRINT_DSN", services.pg_admin_dsn)
    state = devstack.up(["postgres"])
    assert state["postgres"].url == services.pg_admin_dsn
    devstack.down(["postgres"])
    assert devstack.postgres_reachable(services.pg_admin_dsn)
