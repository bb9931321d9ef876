"""Grafana's PostgreSQL macros and template variables, expanded as Grafana expands them.

Grafana's frontend replaces template variables (``$site``; a multi-value or
All variable as a list of quoted literals; ``$__interval``), then the
PostgreSQL datasource's backend expands the ``$__`` macros with the time range
(``$__timeFilter(col)`` → ``col BETWEEN '<from>' AND '<to>'``, RFC 3339 in UTC;
``$__timeGroup`` → ``time_bucket(...)`` when the datasource has ``timescaledb``
on, ``floor(extract(epoch ...))`` otherwise), following
``pkg/tsdb/grafana-postgresql-datasource/macros.go``. The tests run every
panel's SQL through this, so what reaches the database is what Grafana would send.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta

_MACRO = re.compile(r"\$([_a-zA-Z0-9]+)\(([^)]*)\)")  # Grafana's own pattern
_INTERVAL = re.compile(r"^'?(\d+)(ms|s|m|h|d|w)'?$")
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class MacroError(ValueError):
    """A macro or variable Grafana would not expand either."""


def rfc3339(t: datetime) -> str:
    """Go's time.RFC3339Nano of a UTC time: no trailing zeros in the fraction."""
    base = t.strftime("%Y-%m-%dT%H:%M:%S")
    frac = f"{t.microsecond:06d}".rstrip("0")
    return f"{base}.{frac}Z" if frac else f"{base}Z"


def interval_seconds(text: str) -> float:
    match = _INTERVAL.match(text.strip())
    if not match:
        raise MacroError(f"interval {text!r}: expected e.g. 1m, 15m, 1h")
    return int(match[1]) * _UNIT_S[match[2]]


def quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _literal(text: str) -> Callable[[re.Match[str]], str]:
    return lambda _match: text  # a function, so backslashes in the value stay as they are


def substitute_variables(sql: str, variables: Mapping[str, str | Sequence[str]],
                         interval: timedelta) -> str:
    """Template variables as Grafana's SQL datasources format them."""
    seconds = interval.total_seconds()
    sql = sql.replace("$__interval_ms", str(int(seconds * 1000)))
    sql = sql.replace("$__interval", f"{int(seconds)}s" if seconds >= 1 else "1s")
    for name in sorted(variables, key=len, reverse=True):  # $product before $prod
        value = variables[name]
        if isinstance(value, str):
            text = value.replace("'", "''")  # single value: escaped, not quoted
        else:
            if not value:
                raise MacroError(f"variable ${name} has no value")
            text = ",".join(quote(v) for v in value)
        sql = re.sub(rf"\$(?:{name}\b|\{{{name}\}})", _literal(text), sql)
    left = re.search(r"\$(?!__)\{?[A-Za-z_]\w*", sql)
    if left:
        raise MacroError(f"variable {left[0]} has no value")
    return sql


def expand_macros(sql: str, start: datetime, end: datetime, timescaledb: bool) -> str:
    """The backend's $__ macros of grafana-postgresql-datasource (``timescaledb``: the
    datasource's TimescaleDB switch, jsonData.timescaledb)."""
    def one(match: re.Match[str]) -> str:
        name, args = match[1].removeprefix("__"), [a.strip() for a in match[2].split(",")]
        if not match[1].startswith("__"):
            raise MacroError(f"${match[1]}(…) is not a macro")
        if name == "timeGroup" and sql[match.end():match.end() + 1] == ",":
            name = "timeGroupAlias"  # Grafana's pre-5.3 compatibility: a ',' follows
        if name == "timeFilter":
            return f"{args[0]} BETWEEN '{rfc3339(start)}' AND '{rfc3339(end)}'"
        if name == "timeFrom":
            return f"'{rfc3339(start)}'"
        if name == "timeTo":
            return f"'{rfc3339(end)}'"
        if name == "time":
            return f'{args[0]} AS "time"'
        if name == "timeEpoch":
            return f'extract(epoch from {args[0]}) as "time"'
        if name in ("timeGroup", "timeGroupAlias"):
            n = interval_seconds(args[1])
            if timescaledb:
                group = f"time_bucket('{n:.3f}s',{args[0]})"
            else:
                group = f"floor(extract(epoch from {args[0]})/{n:g})*{n:g}"
            return group + (' AS "time"' if name == "timeGroupAlias" else "")
        if name == "unixEpochFilter":
            return (f"{args[0]} >= {int(start.timestamp())} AND "
                    f"{args[0]} <= {int(end.timestamp())}")
        raise MacroError(f"macro $__{name} is not one grafana-postgresql-datasource knows")
    return _MACRO.sub(one, sql)


def grafana_sql(sql: str, start: datetime, end: datetime,
                variables: Mapping[str, str | Sequence[str]], timescaledb: bool,
                interval: timedelta = timedelta(minutes=1)) -> str:
    """The SQL Grafana sends for a panel: variables first (frontend), then macros (backend)."""
    return expand_macros(substitute_variables(sql, variables, interval), start, end,
                         timescaledb)
