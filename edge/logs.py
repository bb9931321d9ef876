"""Log setup of the command-line tools (``python -m edge``, ``python -m ingest``).

Our loggers log at ``--log-level``; the client libraries' own chatter is off
by default and on with ``--verbose``. They log connection attempts, endpoint
dumps and session-timeout negotiations at INFO and WARNING (asyncua), and
every failed connection attempt at ERROR (kafka-python, pymodbus): during an
outage that buries the one line per retry our code writes, which names the
endpoint, the config key and what waits meanwhile.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Final

__all__ = ["EDGE_LIBRARIES", "FORMAT", "INGEST_LIBRARIES", "configure_logging"]

FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# The edge reports every outage itself (edge.forward, edge.modbus, edge.opcua).
EDGE_LIBRARIES: Final[Mapping[str, int]] = {
    "asyncua": logging.ERROR,  # endpoint dumps (INFO), session timeout revised (WARNING)
    "kafka": logging.CRITICAL,  # an ERROR per failed connect; edge.forward says it once
    "pymodbus": logging.CRITICAL,  # an ERROR per failed connect; edge.modbus names the meter
}
# Ingest's consumer has no line of its own for a broker lost while running: kafka-python's
# ERRORs are that sign, so only its INFO connection lines are hidden.
INGEST_LIBRARIES: Final[Mapping[str, int]] = {"kafka": logging.ERROR}


def configure_logging(level: str, *, verbose: bool, libraries: Mapping[str, int]) -> None:
    """Log to stderr at ``level``; ``libraries`` at their quiet level unless ``verbose``."""
    logging.basicConfig(level=level.upper(), format=FORMAT)
    for name, quiet in libraries.items():
        # verbose: NOTSET, i.e. the libraries log at --log-level like our own loggers
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else quiet)
