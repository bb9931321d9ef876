"""A private Mosquitto broker for tests and the demo.

Debian's ``mosquitto`` binary, on a free loopback port, anonymous, no
persistence, and ``max_queued_messages 0`` (unlimited): with the default
limit a QoS 1 burst to a slow subscriber silently loses messages.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from deploy.procs import ManagedService, ServiceError, state_dir


def mosquitto_binary() -> str:
    # Debian installs it in /usr/sbin, which is not on every user's PATH
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/sbin")
    if not found:
        raise ServiceError(
            "mqtt: the mosquitto binary is not installed; "
            "install Debian's package: apt-get install mosquitto"
        )
    return found


class MosquittoBroker(ManagedService):
    """One Mosquitto on 127.0.0.1:PORT with a generated config under the state folder."""

    kind = "mosquitto"

    def __init__(self, name: str = "mqtt", port: int | None = None) -> None:
        super().__init__(name, port)

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def config_path(self) -> Path:
        return state_dir() / f"{self.name}.conf"

    def before_start(self) -> None:
        self.config_path.parent.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "max_queued_messages 0\n"
            "max_inflight_messages 0\n"
            "log_dest stdout\n"
        )

    def argv(self) -> list[str]:
        return [mosquitto_binary(), "-c", str(self.config_path)]
