"""Fixtures of the ingest tests (the helpers live in ingest_helpers.py)."""

from ingest_helpers import ingest_process, make_config, producer, writer_login

__all__ = ["ingest_process", "make_config", "producer", "writer_login"]
