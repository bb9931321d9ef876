"""Golden cases of the macro and variable expansion the panel tests rely on, written
from Grafana's PostgreSQL datasource (macros.go) and its SQL variable formatting."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from deploy.grafana.macros import MacroError, grafana_sql, rfc3339

START = datetime(2025, 1, 6, 5, 0, tzinfo=UTC)
END = datetime(2025, 1, 6, 7, 45, 0, 120000, tzinfo=UTC)


@pytest.mark.parametrize(("sql", "timescaledb", "expected"), [
    ("WHERE $__timeFilter(ts)", False,
     "WHERE ts BETWEEN '2025-01-06T05:00:00Z' AND '2025-01-06T07:45:00.12Z'"),
    ("SELECT $__timeFrom(), $__timeTo()", False,
     "SELECT '2025-01-06T05:00:00Z', '2025-01-06T07:45:00.12Z'"),
    ("SELECT $__timeGroupAlias(ts, 1h)", False,
     'SELECT floor(extract(epoch from ts)/3600)*3600 AS "time"'),
    ("SELECT $__timeGroupAlias(ts, '15m')", True,
     "SELECT time_bucket('900.000s',ts) AS \"time\""),
    ("SELECT $__timeGroup(ts, $__interval), v", False,  # a ',' after it: aliased
     'SELECT floor(extract(epoch from ts)/60)*60 AS "time", v'),
    ("GROUP BY $__timeGroup(ts, 5m)", True, "GROUP BY time_bucket('300.000s',ts)"),
    ("SELECT $__time(ts), $__timeEpoch(ts)", False,
     'SELECT ts AS "time", extract(epoch from ts) as "time"'),
])
def test_macros_expand_as_grafana_does(sql: str, timescaledb: bool, expected: str) -> None:
    assert grafana_sql(sql, START, END, {}, timescaledb) == expected


def test_variables_single_escaped_multi_quoted() -> None:
    sql = "site = '$site' AND line IN ($line) AND p IN (${product})"
    got = grafana_sql(sql, START, END, {"site": "o'hare", "line": ["L1", "L'2"],
                                        "product": ["a"]}, False)
    assert got == "site = 'o''hare' AND line IN ('L1','L''2') AND p IN ('a')"
    assert grafana_sql("$__interval_ms $__interval", START, END, {}, False,
                       timedelta(minutes=5)) == "300000 300s"


def test_unknown_macros_and_variables_are_errors() -> None:
    with pytest.raises(MacroError, match="timeShift"):
        grafana_sql("$__timeShift(ts)", START, END, {}, False)
    with pytest.raises(MacroError, match=r"\$batch"):
        grafana_sql("batch_id = '$batch'", START, END, {"site": "s"}, False)
    assert rfc3339(datetime(2025, 1, 1, tzinfo=UTC)) == "2025-01-01T00:00:00Z"
