"""The startup check of the consumer and the bridge: is the database's schema this code's?

``python -m ingest migrate`` records every applied migration in ``schema_migration``.
A service started against a database that was never migrated, or migrated by an
older release (behind), would fail later and obscurely (a missing column in the
middle of a landing transaction); one migrated by a newer release (ahead) may
have changed what the old code writes. Both are refused at startup with one
message naming the database (host, port and name: never the password), the
highest applied and the expected migration, and what to do.

The comparison is a pure function (``schema_problem``); ``check_schema`` is the
shell that reads the ledger, waiting for a database that is not reachable yet
(capped backoff, like a lost database mid-stream) until told to stop.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping

import psycopg

from edge.backoff import Backoff
from ingest.db import connect, describe_dsn
from ingest.errors import SchemaMismatch, StoreError
from ingest.migrate import load_migrations

logger = logging.getLogger(__name__)
__all__ = ["check_schema", "describe_dsn", "schema_problem"]
FIRST_DELAY_S = 0.5  # the first retry's ceiling; doubles up to [database] reconnect_max_s
MIGRATE_HINT = "`python -m ingest migrate --config <server.toml>` (as the database owner)"


def _label(version: int, names: Mapping[int, str]) -> str:
    return f"{version:04d}_{names[version]}"


def schema_problem(where: str, applied: Mapping[int, str] | None,
                   known: Mapping[int, str]) -> str | None:
    """Why a database with these applied migrations (version → name; None: no ledger)
    cannot be used by code that packages ``known`` ones; None when it can."""
    expected = _label(max(known), known)
    if not applied:
        return (f"database {where} has no plantprint migrations applied (no schema_migration "
                f"rows); this ingest expects migration {expected}. Run {MIGRATE_HINT} first.")
    highest = _label(max(applied), applied)
    unknown = sorted(set(applied) - set(known))
    if unknown:
        return (f"database {where} is ahead of this ingest: its highest applied migration is "
                f"{highest}, unknown to this code (expected {expected}; unknown: "
                f"{', '.join(_label(v, applied) for v in unknown)}). It was migrated by a newer "
                "release: run that release of ingest, never an older one against it.")
    missing = sorted(set(known) - set(applied))
    if missing:
        return (f"database {where} is behind this ingest: highest applied migration "
                f"{highest}, expected {expected} (missing: "
                f"{', '.join(_label(v, known) for v in missing)}). Run {MIGRATE_HINT} first.")
    return None


def _read_ledger(conn: psycopg.Connection) -> dict[int, str] | None:
    try:
        with conn.transaction():
            rows = conn.execute("SELECT version, name FROM schema_migration").fetchall()
    except psycopg.errors.UndefinedTable:
        return None
    return {int(v): str(n) for v, n in rows}


def check_schema(dsn: str, *, stop: threading.Event, connect_timeout_s: float = 5.0,
                 reconnect_max_s: float = 10.0) -> bool:
    """Raise SchemaMismatch unless the database holds exactly the packaged migrations.

    An unreachable database is waited for (logged, capped backoff); returns False
    when ``stop`` is set meanwhile, True once the schema matched.
    """
    where = describe_dsn(dsn)
    known = {v: next(iter(variants.values())).name for v, variants in load_migrations().items()}
    backoff = Backoff(FIRST_DELAY_S, max(reconnect_max_s, FIRST_DELAY_S))
    while not stop.is_set():
        try:
            with connect(dsn, timeout_s=connect_timeout_s) as conn:
                applied = _read_ledger(conn)
        except psycopg.OperationalError as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
            delay = backoff.next_delay()
            logger.error("database %s is not reachable (%s); retrying in %.1f s (SIGTERM stops)",
                         where, reason, delay)
            stop.wait(delay)
            continue
        except psycopg.Error as exc:
            raise StoreError(f"database {where}: cannot read schema_migration: {exc}") from exc
        problem = schema_problem(where, applied, known)
        if problem is not None:
            raise SchemaMismatch(problem)
        logger.info("database %s is at migration %s, as this ingest expects",
                    where, _label(max(known), known))
        return True
    logger.info("stopped before database %s became reachable", where)
    return False
