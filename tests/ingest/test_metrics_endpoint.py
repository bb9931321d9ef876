"""A metrics port that is already taken stops the process with the key to change."""

from __future__ import annotations

import socket

import pytest

from ingest import metrics
from ingest.errors import IngestError


def test_taken_metrics_port_names_the_config_key() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(IngestError, match=rf"127\.0\.0\.1:{port} \(\[bridge\] metrics_port"):
            metrics.serve(port, "127.0.0.1", "[bridge] metrics_port")
