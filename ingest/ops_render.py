"""Tables of the operator commands (``dlq``, ``ledger``), printed with rich."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

from rich.console import Console
from rich.table import Table as RichTable

WIDTH_NOT_A_TERMINAL = 200  # columns when piped or captured (rich would assume 80)


@dataclass(frozen=True, slots=True)
class Table:
    title: str
    columns: tuple[str, ...]
    rows: Sequence[tuple[str, ...]]


def render(tables: Sequence[Table], notes: Sequence[str], out: TextIO) -> None:
    """The tables, then one line per note. Cells are plain text: no rich markup, so a
    detail such as ``[3/4 items cut]`` or a gateway id prints as it is."""
    console = Console(file=out, markup=False, highlight=False, emoji=False,
                      width=None if out.isatty() else WIDTH_NOT_A_TERMINAL)
    for t in tables:
        table = RichTable(title=t.title, title_justify="left")
        for col in t.columns:
            table.add_column(col, overflow="fold",
                             justify="right" if col in ("size", "count") else "left")
        for row in t.rows:
            table.add_row(*row)
        console.print(table)
    for note in notes:
        console.print(note)
