"""The consumer and the bridge refuse a database whose migrations are missing, behind or
ahead of the packaged ones: exit 2, one message naming the database (never its password),
the highest applied and the expected migration, and what to run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import psycopg
import pytest
from ingest_helpers import ROOT, Gateway, wait_for

from ingest.migrate import load_migrations, migrate
from ingest.schema_check import describe_dsn, schema_problem

PASSWORD = "s3cret-never-logged"
KNOWN = {v: next(iter(m.values())).name for v, m in load_migrations().items()}
LATEST = f"{max(KNOWN):04d}_{KNOWN[max(KNOWN)]}"  # 0006_frame_digest today


def test_schema_problem_names_highest_and_expected_migration() -> None:
    known = {1: "core", 2: "roles", 3: "views"}
    assert schema_problem("h:5432/db", {1: "core", 2: "roles", 3: "views"}, known) is None
    missing = schema_problem("h:5432/db", None, known)
    assert missing and "no plantprint migrations applied" in missing
    assert "expects migration 0003_views" in missing and "python -m ingest migrate" in missing
    behind = schema_problem("h:5432/db", {1: "core"}, known)
    assert behind and "behind" in behind and "highest applied migration 0001_core" in behind
    assert "expected 0003_views (missing: 0002_roles, 0003_views)" in behind
    gap = schema_problem("h:5432/db", {1: "core", 3: "views"}, known)
    assert gap and "missing: 0002_roles)" in gap
    ahead = schema_problem("h:5432/db", {1: "core", 2: "roles", 3: "views", 4: "next"}, known)
    assert ahead and "ahead" in ahead and "0004_next" in ahead and "expected 0003_views" in ahead
    assert "python -m ingest migrate" not in ahead  # migrating cannot fix an older code


def test_describe_dsn_leaves_credentials_out() -> None:
    where = describe_dsn(f"postgresql://ingest:{PASSWORD}@db.example:6543/plant")
    assert where == "db.example:6543/plant"
    assert describe_dsn("host=10.0.0.5 dbname=pp user=x password=y") == "10.0.0.5:5432/pp"


def with_password(dsn: str) -> str:
    """The same DSN with a password (trust auth ignores it): it must never be printed."""
    url = urlparse(dsn)
    return url._replace(netloc=f"{url.username}:{PASSWORD}@{url.hostname}:{url.port}").geturl()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PLANTPRINT_DSN"}
    return subprocess.run([sys.executable, "-m", "ingest", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def refused(cfg: Path, command: tuple[str, ...]) -> str:
    done = run_cli(*command, "--config", str(cfg))
    out = done.stdout + done.stderr
    assert done.returncode == 2, out
    assert "Traceback" not in out and PASSWORD not in out
    errors = [line for line in out.splitlines() if " ERROR " in line]
    assert len(errors) == 1, out  # one clear message
    return errors[0]


COMMANDS = [pytest.param((), id="consumer"), pytest.param(("bridge",), id="bridge")]


@pytest.mark.services
@pytest.mark.parametrize("command", COMMANDS)
def test_unmigrated_and_outdated_databases_are_refused(
    new_database, make_config, command: tuple[str, ...]
) -> None:
    dsn = new_database()
    where = describe_dsn(dsn)
    cfg = make_config(with_password(dsn), [Gateway("gw-s")])

    empty = refused(cfg, command)
    assert f"database {where} has no plantprint migrations applied" in empty
    assert f"expects migration {LATEST}" in empty and "python -m ingest migrate" in empty

    migrate(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:  # as an older release left it
        conn.execute("DELETE FROM schema_migration WHERE version >= 5")
    behind = refused(cfg, command)
    assert f"database {where} is behind" in behind
    assert f"highest applied migration 0004_{KNOWN[4]}, expected {LATEST}" in behind
    assert "python -m ingest migrate" in behind


@pytest.mark.services
@pytest.mark.parametrize("command", COMMANDS)
def test_database_ahead_of_the_code_is_refused(
    new_database, make_config, command: tuple[str, ...]
) -> None:
    dsn = new_database()
    migrate(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:  # a newer release migrated it
        conn.execute("INSERT INTO schema_migration (version, name, variant, checksum) "
                     "VALUES (%s, 'future_columns', 'all', 'x')", (max(KNOWN) + 1,))
    future = f"{max(KNOWN) + 1:04d}_future_columns"
    message = refused(make_config(with_password(dsn), [Gateway("gw-s")]), command)
    assert f"database {describe_dsn(dsn)} is ahead of this ingest" in message
    assert f"highest applied migration is {future}" in message and f"expected {LATEST}" in message


@pytest.mark.services
def test_unreachable_database_is_waited_for_and_sigterm_ends_the_wait(
    make_config, ingest_process
) -> None:
    cfg = make_config(f"postgresql://ingest:{PASSWORD}@127.0.0.1:1/plantprint", [Gateway("g")],
                      database={"connect_timeout_s": 1.0, "reconnect_max_s": 1.0})
    proc = ingest_process("--config", str(cfg))
    proc.start()
    waiting = "database 127.0.0.1:1/plantprint is not reachable"
    wait_for(lambda: proc.log.read_text().count(waiting) >= 2, 20, "two logged retries")
    assert proc.stop() == 0
    log = proc.log.read_text()
    assert "stopped before database 127.0.0.1:1/plantprint" in log
    assert "Traceback" not in log and PASSWORD not in log
