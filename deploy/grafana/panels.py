"""Typed pieces every dashboard uses: the SQL query, the datasources, the variables.

grafana-foundation-sdk has builders for panels and dashboards but no type for
the PostgreSQL datasource's query, so :class:`SqlQuery` is one: it serialises
as Grafana's own query editor saves a raw SQL query, and keeps the columns the
panel expects beside it (never written to the JSON) for the tests that run
every query against a real database.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import prometheus
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.models.dashboard import (
    DashboardLinkType,
    DataSourceRef,
    VariableOption,
    VariableRefresh,
    VariableSort,
)

# The datasources as provisioned (provisioning/datasources/plantprint.yaml) and pushed.
SQL_DS = DataSourceRef(type_val="grafana-postgresql-datasource", uid="plantprint-db")
PROM_DS = DataSourceRef(type_val="prometheus", uid="plantprint-prometheus")
FOLDER_UID = "plantprint"
FOLDER_TITLE = "plantprint"

Format = Literal["table", "time_series"]

# Stat and bar gauge panels over a table query: one value per row, named by the
# row's text columns (e.g. `metric`).
EVERY_ROW = common_builders.ReduceDataOptions().values(True).calcs(["lastNotNull"])


@dataclass
class SqlQuery(cogvariants.Dataquery):
    """One raw SQL query of a panel, with the columns its panel reads."""

    ref_id: str
    raw_sql: str
    format: Format
    columns: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, object]:
        return {
            "refId": self.ref_id,
            "datasource": SQL_DS.to_json(),
            "editorMode": "code",
            "format": self.format,
            "rawQuery": True,
            "rawSql": self.raw_sql.strip(),
        }


class Sql(cogbuilder.Builder[SqlQuery]):
    def __init__(self, raw_sql: str, columns: tuple[str, ...], fmt: Format = "table",
                 ref_id: str = "A") -> None:
        self._query = SqlQuery(ref_id, raw_sql, fmt, columns)

    def build(self) -> SqlQuery:
        return self._query


def table_sql(raw_sql: str, *columns: str) -> Sql:
    return Sql(raw_sql, columns, "table")


def series_sql(raw_sql: str, *columns: str) -> Sql:
    """A time series: a `time` column first, then `metric` (series name) and values."""
    if columns[0] != "time":
        raise ValueError(f"a time series query returns `time` first, not {columns[0]!r}")
    return Sql(raw_sql, columns, "time_series")


def promql(expr: str, legend: str) -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend).range().ref_id("A")


# ------------------------------------------------------------------ variables
# Single-valued $site is written '$site' in SQL (Grafana escapes quotes in it);
# $line and $product are multi-valued with All and go in IN ($line) lists.

SITE_SQL = "SELECT site FROM compute_site_state UNION SELECT site FROM site_model ORDER BY 1"
LINE_SQL = ("SELECT line FROM site_asset WHERE site = '$site' "
            "UNION SELECT line FROM site_meter WHERE site = '$site' ORDER BY 1")
PRODUCT_SQL = ("SELECT product FROM compute_batch WHERE site = '$site' "
               "UNION SELECT product FROM site_product WHERE site = '$site' ORDER BY 1")

# Filters on the variables, shared by the panels' SQL.
ASSETS_ON_LINES = "SELECT asset FROM site_asset WHERE site = '$site' AND line IN ($line)"
# A batch (alias b) that ran at some time in the range; end_ts is NULL while it runs.
BATCH_OVERLAPS = "b.start_ts <= $__timeTo() AND (b.end_ts IS NULL OR b.end_ts >= $__timeFrom())"
METERS_ON_LINES = "SELECT meter FROM site_meter WHERE site = '$site' AND line IN ($line)"


def query_variable(name: str, label: str, sql: str, multi: bool) -> dash.QueryVariable:
    var = (dash.QueryVariable(name).label(label).datasource(SQL_DS).query(sql)
           .refresh(VariableRefresh.ON_DASHBOARD_LOAD).sort(VariableSort.ALPHABETICAL_ASC))
    if multi:
        var = var.multi(True).include_all(True).current(
            VariableOption(selected=True, text="All", value="$__all"))
    return var


def site_line_product(board: dash.Dashboard, product: bool = True) -> dash.Dashboard:
    board = board.with_variable(query_variable("site", "Site", SITE_SQL, multi=False))
    board = board.with_variable(query_variable("line", "Line", LINE_SQL, multi=True))
    if product:
        board = board.with_variable(query_variable("product", "Product", PRODUCT_SQL, multi=True))
    return board


def new_dashboard(uid: str, title: str, description: str, time_from: str = "now-24h",
                  ) -> dash.Dashboard:
    """A dashboard of the plantprint folder, linked to the others by tag."""
    return (dash.Dashboard(title).uid(uid).description(description).tags(["plantprint"])
            .time(time_from, "now").refresh("1m").timezone("browser").editable()
            .link(dash.DashboardLink("plantprint").type(DashboardLinkType.DASHBOARDS)
                  .tags(["plantprint"]).as_dropdown(True).include_vars(True)
                  .keep_time(True)))
