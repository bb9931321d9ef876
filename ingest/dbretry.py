"""Whose fault is a database error, and the retry loop around landing transactions.

Every psycopg error of a landing transaction is one of three kinds (``classify``):

- ``connection``: the database is gone or going (SQLSTATE class 08, shutdowns
  57P01–57P03, a broken socket; errors without SQLSTATE from the connection),
  or a transient conflict (class 40 serialization failure/deadlock, 55P03 lock
  not available). Reconnect and retry.
- ``environment``: the database works but refuses *anything* ingest writes —
  a missing grant (42501) or table/column (42P01, 42703: class 42), a read-only
  server (25006), disk full or out of memory (class 53), operator intervention
  (57, e.g. a cancelled statement), system errors (58), unknown database
  (3D000), authorization (28), and every SQLSTATE not listed below. Never the
  messages' fault: nothing is dead-lettered, no offset moves; one ERROR names
  the database and the SQLSTATE, and the batch is retried (capped backoff)
  until the operator fixes the cause, exactly like a lost database.
- ``data``: this batch's content — class 22 (data exception: NUL in text,
  numeric out of range), class 23 (integrity violation; the expected duplicates
  never raise, ON CONFLICT DO NOTHING absorbs them) and class 54 (program limit
  exceeded, e.g. a meter name too long for the primary key index). Only these
  raise StoreError, which the consumer answers by landing message by message
  and dead-lettering the one the database refuses (``store_rejected``).

Unknown SQLSTATEs count as environment on purpose: a stalled partition is
visible and recoverable, a dead-lettered stream of good data is not.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Literal, Protocol

import psycopg

from edge.backoff import Backoff
from ingest import metrics
from ingest.db import describe_dsn
from ingest.errors import StoreError, StoreUnavailable

logger = logging.getLogger(__name__)

Kind = Literal["connection", "environment", "data"]
CONNECTION_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError)
_DATA_CLASSES = frozenset({"22", "23", "54"})
_CONNECTION_STATES = frozenset({"57P01", "57P02", "57P03", "55P03"})
_REMIND_EVERY_S = 60.0
FIRST_DELAY_S = 0.1  # the first retry's ceiling; doubles up to [database] reconnect_max_s


class Closable(Protocol):
    def close(self) -> None: ...


def classify(exc: psycopg.Error) -> Kind:
    """The kind of a psycopg error (see the module docstring); pure."""
    state = exc.sqlstate
    if state is None:  # raised by the client: a lost connection, or a value it cannot send
        if isinstance(exc, CONNECTION_ERRORS):
            return "connection"
        return "data" if isinstance(exc, psycopg.DataError) else "environment"
    if state[:2] in _DATA_CLASSES:
        return "data"
    if state[:2] in ("08", "40") or state in _CONNECTION_STATES:
        return "connection"
    return "environment"


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class _Refusals:
    """Logs an environment refusal once, again when its SQLSTATE changes, and every minute."""

    def __init__(self, where: str) -> None:
        self._where = where
        self._state: str | None = None
        self._since = self._logged = 0.0

    def report(self, exc: psycopg.Error, delay: float) -> None:
        state, now = exc.sqlstate or "?", time.monotonic()
        metrics.DB_REFUSALS.labels(state).inc()
        if state == self._state and now - self._logged < _REMIND_EVERY_S:
            return
        if state != self._state:
            self._state, self._since = state, now
        self._logged = now
        logger.error(
            "database %s refuses ingest's writes: SQLSTATE %s (%s): %s. This is a database "
            "problem, not the messages' fault (grant, missing table or column, read-only "
            "server, disk full, ...): nothing is dead-lettered and no offset moves; the batch "
            "is retried every %.1f s or less until the cause is fixed (refused for %.0f s)",
            self._where, state, type(exc).__name__, first_line(exc), delay, now - self._since)

    def resolved(self) -> None:
        if self._state is not None:
            logger.warning("database %s accepts ingest's writes again (was SQLSTATE %s)",
                           self._where, self._state)
            self._state = None


def with_reconnect(store: Closable, action: Callable[[], object], *, dsn: str,
                   max_backoff_s: float, stopping: Callable[[], bool],
                   on_retry: Callable[[], None]) -> object:
    """Run ``action`` until it succeeds or fails for the data's sake.

    Connection and environment errors are retried with capped exponential backoff
    (``edge.backoff``, reconnecting each time); when ``stopping`` meanwhile,
    StoreUnavailable. Data errors raise StoreError (the caller isolates the
    message at fault).
    """
    backoff = Backoff(FIRST_DELAY_S, max(max_backoff_s, FIRST_DELAY_S))
    refusals = _Refusals(describe_dsn(dsn))
    while True:
        try:
            result = action()
        except psycopg.Error as exc:
            store.close()
            kind = classify(exc)
            if kind == "data":
                raise StoreError(f"database refused the batch: {exc}") from exc
            if stopping():
                what = "unavailable" if kind == "connection" else "refusing writes"
                raise StoreUnavailable(
                    f"database {describe_dsn(dsn)} {what} while stopping "
                    f"(SQLSTATE {exc.sqlstate or '-'}): {first_line(exc)}; nothing was lost"
                ) from exc
            delay = backoff.next_delay()
            if kind == "connection":
                logger.warning("database unavailable (%s); retrying in %.1f s",
                               first_line(exc), delay)
            else:
                refusals.report(exc, max_backoff_s)
            on_retry()
            time.sleep(delay)
            continue
        refusals.resolved()
        return result
