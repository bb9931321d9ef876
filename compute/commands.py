"""How an operator command ends: its work, or one line on stderr naming what refused, exit 2.

The certification commands (``bundle``, ``certificate``, ``cbam``) read the
database and refuse in their own words (no final footprint, unknown product);
both kinds of failure end the same way, with the command's name first so a
line in a cron mail or CI log says which command it was.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import psycopg

from ingest.db import describe_dsn


def run_command(prog: str, dsn: str, work: Callable[[], int],
                refusals: tuple[type[Exception], ...]) -> int:
    """``work()``'s exit code; a refusal or a database that cannot answer: one line, 2."""
    try:
        return work()
    except refusals as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"{prog}: database {describe_dsn(dsn)}: {first}", file=sys.stderr)
    return 2
