"""Connections: one place that opens them the same way for every ingest command."""

from __future__ import annotations

import psycopg
from psycopg.conninfo import conninfo_to_dict

# The WASM TimescaleDB peer serves every client from one backend, so session
# state (search_path included) leaks between connections there: set it explicitly.
_SEARCH_PATH = 'SET search_path = "$user", public'


def connect(dsn: str, *, autocommit: bool = True, timeout_s: float = 5.0) -> psycopg.Connection:
    """A connection with server-side prepares off (the peer and poolers need that)."""
    conn = psycopg.connect(
        dsn, autocommit=autocommit, prepare_threshold=None, connect_timeout=max(1, int(timeout_s))
    )
    conn.execute(_SEARCH_PATH)
    if not autocommit:
        conn.commit()
    return conn


def reset_search_path(conn: psycopg.Connection) -> None:
    conn.execute(_SEARCH_PATH)


def describe_dsn(dsn: str) -> str:
    """``host:port/dbname`` of a DSN, for messages: user and password left out."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparseable DSN>"
    host = str(params.get("host") or params.get("hostaddr") or "localhost")
    port = str(params.get("port") or 5432)
    return f"{host}:{port}/{params.get('dbname') or params.get('user') or '?'}"
