"""Fixtures of the TLS tests (the helpers live in tls_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tls_helpers import Pki, make_pki

from tests.ingest.ingest_helpers import make_config

__all__ = ["make_config", "pki"]


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    """A fresh test CA with server and client certificates, under ``tmp_path/pki``."""
    return make_pki(tmp_path / "pki")
