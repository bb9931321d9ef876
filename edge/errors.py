"""The edge's error family, and the start checks that raise it.

::

    EdgeError               anything the agent reports instead of a traceback
    └── AgentError          the agent cannot start or run (a loop died)
        └── StartError      a start failure a config edit fixes; names the key

A config that does not validate is :class:`edge.settings.ConfigError` (the
config root every package shares), raised at load. What only shows when the
agent takes its resources — the spool file, the metrics port, the signing key,
the outputs' host names — is checked here, before anything is polled or
logged, and fails as one :class:`StartError` whose message starts with the key:
``[spool] path: /tmp is a directory, expected a file path``. ``python -m edge``
prints it as one line on stderr and exits 1.

Fatal at start, because nothing but an edit helps: a spool path that is a
folder or cannot be created or opened; a metrics address or port that cannot
be bound; a signing key that is missing, unreadable or not Ed25519; an output
host name DNS says does not exist. Everything the other end can fix — a broker
down or not there yet, TLS or a login refused, DNS not answering — is retried
while the agent polls and spools (docs/edge.md, "What happens when…").
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge import metrics, wire
from edge.spool import Spool, SpoolConfig, SpoolError

logger = logging.getLogger(__name__)

__all__ = [
    "AgentError", "EdgeError", "StartError", "check_host", "load_signing_key", "open_spool",
    "serve_metrics",
]

# DNS answers meaning "this name does not exist" (a typo), not "try again later"
_UNKNOWN_NAME = frozenset({socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)})


class EdgeError(RuntimeError):
    """Root of the edge's errors: reported as one line, never a traceback."""


class AgentError(EdgeError):
    """The agent cannot start or run (bad key, no output, a loop that died)."""


class StartError(AgentError):
    """A start failure that a config edit fixes; ``key`` is the config key to look at."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """The gateway's signing key, or StartError naming ``signing_key``."""
    if not path.exists():
        raise StartError("signing_key", f"{path} does not exist (create it with --init-key)")
    if path.is_dir():
        raise StartError("signing_key", f"{path} is a directory, expected a PEM key file")
    try:
        return wire.load_private_key(path)
    except ValueError as exc:
        raise StartError("signing_key", str(exc).removeprefix("signing key ")) from exc


def open_spool(config: SpoolConfig, gateway: str) -> Spool:
    """The opened spool, or StartError naming ``[spool] path`` (blocking: run in a thread)."""
    path = config.path
    if path.is_dir():
        raise StartError("[spool] path", f"{path} is a directory, expected a file path "
                                         f"(e.g. {path / 'spool.db'})")
    folder = _nearest_existing(path.parent)
    if not folder.is_dir():
        raise StartError("[spool] path", f"{path}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise StartError("[spool] path", f"{path}: folder {folder} is not writable by this "
                                         "user")
    try:
        return Spool(config, gateway)
    except (SpoolError, OSError) as exc:
        # SpoolError's text repeats the path: SQLite's own words (its cause) suffice
        cause = exc.__cause__ if isinstance(exc, SpoolError) else None
        why = str(cause or (exc.strerror if isinstance(exc, OSError) else None) or exc)
        raise StartError("[spool] path", f"{path}: cannot create or open the spool: "
                                         f"{why}") from exc


def _nearest_existing(folder: Path) -> Path:
    """``folder`` or its closest ancestor that exists (the spool creates the rest)."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def serve_metrics(port: int, addr: str) -> metrics.MetricsServer:
    """The running /metrics endpoint, or StartError naming ``[metrics] port`` or ``addr``."""
    try:
        return metrics.serve_metrics(port, addr)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise StartError("[metrics] port", f"{addr}:{port} is already in use by another "
                             "process (choose a free port, or 0 to switch /metrics off)") from exc
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise StartError("[metrics] port", f"{addr}:{port}: not allowed to listen "
                             f"there ({exc.strerror})") from exc
        raise StartError("[metrics] addr", f"cannot listen on {addr}:{port} "
                         f"({exc.strerror or exc})") from exc


def check_host(key: str, host: str, port: int) -> None:
    """StartError naming ``key`` if DNS says ``host`` does not exist (blocking).

    A resolver that does not answer (EAI_AGAIN: DNS not up yet after a power
    cut) is only logged: the output's own retries will resolve it later.
    """
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        if exc.errno in _UNKNOWN_NAME:
            raise StartError(key, f"host name {host!r} is unknown to DNS ({exc.strerror}); "
                             "check the spelling") from exc
        logger.warning("%s: cannot resolve %r now (%s); the output will retry",
                       key, host, exc.strerror)
