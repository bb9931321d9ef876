"""Process and port helpers for the local service stack (deploy/devstack.py)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent


class ServiceError(RuntimeError):
    """A service could not be started or reached; the message says which and why."""


@dataclass
class Endpoint:
    """Where one running service answers, and whether this project owns its process."""

    name: str
    url: str
    pid: int | None = None
    owned: bool = False
    extra: dict[str, str] = field(default_factory=dict)


def state_dir() -> Path:
    return Path(os.environ.get("PLANTPRINT_STATE", ROOT / ".state")).resolve()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    # a zombie child still answers kill(0); treat it as gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def wait_until(
    check: Callable[[], bool], timeout: float, what: str, log: Path | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    tail = ""
    if log and log.exists():
        tail = "\n  last log lines:\n    " + "\n    ".join(log.read_text().splitlines()[-15:])
    raise ServiceError(f"{what} did not become ready within {timeout:.0f} s{tail}")


def spawn(name: str, argv: Sequence[str], cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """Start a service process in its own session, its output in .state/logs/NAME.log."""
    logs = state_dir() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = (logs / f"{name}.log").open("ab")
    try:
        return subprocess.Popen(
            list(argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=cwd, start_new_session=True,
        )
    except OSError as exc:
        raise ServiceError(f"{name}: cannot run {argv[0]}: {exc}") from exc
    finally:
        log.close()


def stop_pid(pid: int | None, name: str, timeout: float = 10.0) -> None:
    """SIGTERM the service's process group, then SIGKILL what is left after ``timeout``."""
    if not pid or not pid_alive(pid):
        return
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:  # reap it if it is our child
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    return
            except ChildProcessError:
                pass
            if not pid_alive(pid):
                return
            time.sleep(0.05)
        logger.warning("%s (pid %s) ignored %s", name, pid, sig.name)


def log_path(name: str) -> Path:
    return state_dir() / "logs" / f"{name}.log"


class ManagedService:
    """A service process on 127.0.0.1:PORT that this project starts and stops.

    Subclasses give the command line (``argv``) and the readiness probe
    (``answers``); the port stays fixed across restarts so clients can reconnect.
    """

    kind = "service"  # what the process is, for messages: "tansu", "mosquitto", ...
    stop_timeout = 10.0

    def __init__(self, name: str, port: int | None = None) -> None:
        self.name = name
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None

    def argv(self) -> list[str]:
        raise NotImplementedError

    def answers(self) -> bool:
        return port_open("127.0.0.1", self.port)

    def before_start(self) -> None:
        """Hook for preparation (config files, installs); runs before spawning."""

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise ServiceError(
                f"{self.name}: {self.kind} exited with {self.proc.returncode}; "
                f"see {log_path(self.name)}"
            )
        return self.answers()

    def start(self, timeout: float = 30.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        self.before_start()
        self.proc = spawn(self.name, self.argv())
        self.pid = self.proc.pid
        wait_until(self._ready, timeout, f"{self.name}: {self.kind} on port {self.port}",
                   log_path(self.name))

    def stop(self) -> None:
        stop_pid(self.pid, self.name, timeout=self.stop_timeout)
        if self.proc is not None:
            self.proc.wait(timeout=5)
        self.proc = None
