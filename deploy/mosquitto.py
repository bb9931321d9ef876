"""A private Mosquitto broker for tests and the demo.

Debian's ``mosquitto`` binary, on a free loopback port, anonymous, no
persistence, and ``max_queued_messages 0`` (unlimited): with the default
limit a QoS 1 burst to a slow subscriber silently loses messages.

Optionally (tests of TLS) the listener speaks TLS (``MosquittoTls``), may
require a client certificate, and clients may have to log in (``users``:
a password file in Mosquitto's salted SHA-512 ``$6$`` format).
"""

from __future__ import annotations

import base64
import hashlib
import os
import pwd
import shutil
from dataclasses import dataclass
from pathlib import Path

from deploy.procs import ManagedService, ServiceError, state_dir


@dataclass(frozen=True)
class MosquittoTls:
    """PEM files of a TLS listener; ``require_certificate``: clients must present one
    signed by ``cafile``."""

    cafile: Path
    certfile: Path
    keyfile: Path
    require_certificate: bool = False

    def config_lines(self) -> list[str]:
        return [
            f"cafile {self.cafile}",
            f"certfile {self.certfile}",
            f"keyfile {self.keyfile}",
            f"require_certificate {'true' if self.require_certificate else 'false'}",
        ]


def password_line(user: str, password: str) -> str:
    """One ``password_file`` line: ``$6$`` = base64 salt, base64 SHA-512(password + salt)."""
    salt = os.urandom(12)
    digest = hashlib.sha512(password.encode() + salt).digest()
    return f"{user}:$6${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


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

    def __init__(
        self, name: str = "mqtt", port: int | None = None, tls: MosquittoTls | None = None,
        users: dict[str, str] | None = None,
    ) -> None:
        super().__init__(name, port)
        self.tls = tls
        self.users = users  # user -> password; None: anonymous clients allowed

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    @property
    def config_path(self) -> Path:
        return state_dir() / f"{self.name}.conf"

    @property
    def password_path(self) -> Path:
        return state_dir() / f"{self.name}.passwd"

    def before_start(self) -> None:
        self.config_path.parent.mkdir(parents=True, exist_ok=True)
        lines = [f"listener {self.port} 127.0.0.1"]
        if self.tls is not None or self.users is not None:
            # started as root, Mosquitto switches to user "mosquitto", which cannot read
            # private keys and password files kept in the caller's private folders
            lines.append(f"user {pwd.getpwuid(os.getuid()).pw_name}")
        if self.tls is not None:
            lines += self.tls.config_lines()
        if self.users is None:
            lines.append("allow_anonymous true")
        else:
            self.password_path.write_text(
                "".join(password_line(u, p) + "\n" for u, p in self.users.items()))
            self.password_path.chmod(0o600)
            lines += ["allow_anonymous false", f"password_file {self.password_path}"]
        lines += [
            "persistence false",
            "max_queued_messages 0",
            "max_inflight_messages 0",
            "log_dest stdout",
        ]
        self.config_path.write_text("\n".join(lines) + "\n")

    def argv(self) -> list[str]:
        return [mosquitto_binary(), "-c", str(self.config_path)]
