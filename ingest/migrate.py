"""Numbered SQL migrations, applied once each and recorded in ``schema_migration``.

Files are ``ingest/migrations/NNNN_name.sql`` (one file for every backend) or a
pair ``NNNN_name.pg.sql`` / ``NNNN_name.tsdb.sql`` when PostgreSQL and
TimescaleDB need different DDL: one numbered sequence, the variant chosen by
extension detection. Each migration runs in its own transaction together with
its ``schema_migration`` row (version, name, variant, checksum, applied_at).
An applied migration whose file changed since (checksum) is an error, never
silently re-applied. A session advisory lock serialises concurrent runs.

Nothing here needs COPY, so it runs on the WASM TimescaleDB test peer too.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources
from typing import Literal

import psycopg

from ingest.db import connect, reset_search_path
from ingest.errors import MigrationError

logger = logging.getLogger(__name__)

Backend = Literal["postgresql", "timescaledb"]
_FILE = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+?)(?:\.(?P<variant>pg|tsdb))?\.sql$")
_LOCK_KEY = 0x706C616E74  # "plant": one migrator per database at a time
_VARIANT: dict[Backend, str] = {"postgresql": "pg", "timescaledb": "tsdb"}

_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migration (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    variant    text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    variant: str  # "all", "pg" or "tsdb"
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations() -> dict[int, dict[str, Migration]]:
    """All packaged migrations: version → {variant: Migration}, checked for shape."""
    found: dict[int, dict[str, Migration]] = {}
    for entry in resources.files("ingest.migrations").iterdir():
        match = _FILE.match(entry.name)
        if not match:
            if entry.name.endswith(".sql"):
                raise MigrationError(
                    f"migration file {entry.name}: expected NNNN_name[.pg|.tsdb].sql"
                )
            continue
        version, variant = int(match["version"]), match["variant"] or "all"
        mig = Migration(version, match["name"], variant, entry.read_text(encoding="utf-8"))
        found.setdefault(version, {})[variant] = mig
    for version, variants in found.items():
        names = {m.name for m in variants.values()}
        ok_shape = set(variants) in ({"all"}, {"pg", "tsdb"})
        if len(names) != 1 or not ok_shape:
            raise MigrationError(
                f"migration {version:04d}: needs one .sql or a .pg.sql/.tsdb.sql pair "
                f"of one name, found {sorted(f'{m.name}.{v}' for v, m in variants.items())}"
            )
    return dict(sorted(found.items()))


def pick(variants: dict[str, Migration], backend: Backend) -> Migration:
    return variants.get("all") or variants[_VARIANT[backend]]


def detect_backend(conn: psycopg.Connection, mode: str = "auto") -> Backend:
    """TimescaleDB when the extension is installed (or installable, unless mode is "off")."""
    installed = conn.execute(
        "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
    ).fetchone()
    if installed and mode != "off":
        logger.info("TimescaleDB %s is installed: using the timescaledb variant", installed[0])
        return "timescaledb"
    available = conn.execute(
        "SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb'"
    ).fetchone()
    if mode != "off" and available:
        try:
            with conn.transaction():
                conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
            logger.info("created extension timescaledb %s: timescaledb variant", available[0])
            return "timescaledb"
        except psycopg.Error as exc:
            logger.warning("timescaledb %s available, cannot be created: %s", available[0], exc)
    if mode == "require":
        raise MigrationError("timescaledb is required by config but not installed or installable")
    version = conn.execute("SHOW server_version_num").fetchone()
    if version is None or int(version[0]) < 140000:
        raise MigrationError(f"PostgreSQL ≥ 14 needed, server is {version and version[0]}")
    logger.info("no TimescaleDB (mode %s): using the plain PostgreSQL variant", mode)
    return "postgresql"


def _applied(conn: psycopg.Connection) -> dict[int, tuple[str, str, str]]:
    rows = conn.execute("SELECT version, name, variant, checksum FROM schema_migration").fetchall()
    return {v: (n, var, c) for v, n, var, c in rows}


def _check_applied(
    applied: dict[int, tuple[str, str, str]], known: dict[int, dict[str, Migration]]
) -> None:
    for version, (name, variant, checksum) in sorted(applied.items()):
        mig = known.get(version, {}).get(variant)
        if mig is None:
            raise MigrationError(
                f"migration {version:04d}_{name} ({variant}) is applied but not known to this "
                "version of ingest: the database is newer than the code"
            )
        if mig.checksum != checksum:
            raise MigrationError(
                f"migration {version:04d}_{name} ({variant}) changed after it was applied "
                f"(checksum {checksum[:12]} in the database, {mig.checksum[:12]} in the file); "
                "add a new migration instead of editing an applied one"
            )


def migrate(dsn: str, timescaledb: str = "auto") -> list[str]:
    """Apply pending migrations; returns the names applied (empty when up to date)."""
    try:
        conn = connect(dsn)
    except psycopg.OperationalError as exc:
        raise MigrationError(f"cannot connect to the database to migrate: {exc}") from exc
    with conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            return _migrate_locked(conn, timescaledb)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))


def _migrate_locked(conn: psycopg.Connection, timescaledb: str) -> list[str]:
    conn.execute(_LEDGER)
    backend = detect_backend(conn, timescaledb)
    known = load_migrations()
    applied = _applied(conn)
    _check_applied(applied, known)
    done: list[str] = []
    for version, variants in known.items():
        if version in applied:
            continue
        mig = pick(variants, backend)
        label = f"{version:04d}_{mig.name} ({mig.variant})"
        reset_search_path(conn)
        try:
            with conn.transaction():
                conn.execute(mig.sql)  # trusted packaged SQL
                conn.execute(
                    "INSERT INTO schema_migration (version, name, variant, checksum) "
                    "VALUES (%s, %s, %s, %s)",
                    (version, mig.name, mig.variant, mig.checksum),
                )
        except psycopg.Error as exc:
            raise MigrationError(f"migration {label} failed: {exc}") from exc
        logger.info("applied migration %s", label)
        done.append(label)
    if not done:
        logger.info("database is up to date (%d migrations, %s)", len(known), backend)
    return done
