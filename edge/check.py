"""``python -m edge --config site.toml --check``: read every configured point once.

What an integrator runs first: one table of meter, point, raw registers,
decoded value, unit and quality, so a wrong word order or scale shows as an
absurd number next to its registers; and one of every OPC UA node (meter,
point, node id, value, unit, quality; ``edge.check_opcua``). Exits non-zero if
any point failed.
"""

from __future__ import annotations

import asyncio
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TextIO

from edge.check_opcua import OPCUA_COLUMNS, NodeRow, opcua_cells, run_opcua_check
from edge.config import AgentConfig, ModbusDevice
from edge.modbus import ModbusPoller, PollResult
from edge.modbus_batches_config import PlcBatches
from edge.registers import Value


@dataclass(frozen=True, slots=True)
class CheckRow:
    meter: str
    point: str
    registers: tuple[int, ...] | None
    value: Value | None
    unit: str
    quality: str  # "good", "clock", or "bad: <why>"
    digits: int = 10  # significant digits worth showing (float32 carries about 7)

    @property
    def ok(self) -> bool:
        return not self.quality.startswith("bad")


def rows_of(result: PollResult, device: ModbusDevice) -> list[CheckRow]:
    """One row per configured point, in profile order (pure)."""
    found: dict[str, CheckRow] = {}
    for block in result.blocks:
        req = block.read.request
        for i, p in enumerate(req.points):
            if block.error is not None or block.registers is None or block.values is None:
                why = block.error.kind if block.error else "not read"
                found[p.channel] = CheckRow(
                    device.meter, p.channel, None, None, p.unit, f"bad: {why}"
                )
                continue
            start = p.address - req.address
            regs = tuple(block.registers[start : start + p.registers])
            value = block.values[i]
            quality = "clock" if p.kind == "clock" else "good"
            if isinstance(value, float) and not math.isfinite(value):
                quality = "bad: not finite"
            digits = {"float32": 7, "float64": 15}.get(p.type, 12)
            found[p.channel] = CheckRow(
                device.meter, p.channel, regs, value, p.unit, quality, digits
            )
    first = result.errors[0].kind if result.errors else "not read"
    return [
        found.get(p.channel)
        or CheckRow(device.meter, p.channel, None, None, p.unit, f"bad: {first}")
        for p in device.points
    ]


async def check_device(device: ModbusDevice) -> tuple[list[CheckRow], list[str]]:
    poller = ModbusPoller(device)
    try:
        # no start(): its failed connect would make poll() report the backoff wait
        # instead of the connect failure itself
        result = await poller.poll()
    finally:
        await poller.close()
    return rows_of(result, device), [str(e) for e in result.errors]


async def check_plc_batches(cfg: PlcBatches) -> tuple[list[CheckRow], list[str], str]:
    """A PLC's batch registers read once: rows, errors and the batch state they show."""
    from edge.modbus_batches import PlcBatchSource, plc_device

    src = PlcBatchSource(cfg, lambda _events: None)
    try:
        await src.poll()
    finally:
        await src.close()
    assert src.last_result is not None
    rows = rows_of(src.last_result, plc_device(cfg))
    state = f"batch state plc {cfg.asset} at {cfg.host}:{cfg.port}: {src.describe()}"
    return rows, [str(e) for e in src.last_result.errors], state


async def run_check(config: AgentConfig) -> tuple[list[CheckRow], list[str]]:
    """Every device polled once, concurrently; rows plus error messages."""
    results = await asyncio.gather(*(check_device(d) for d in config.modbus))
    rows = [row for r, _ in results for row in r]
    errors = [msg for _, e in results for msg in e]
    return rows, errors


def _format_value(value: Value | None, digits: int) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


COLUMNS = ("meter", "point", "raw registers", "value", "unit", "quality")


def table_cells(rows: Sequence[CheckRow]) -> list[tuple[str, ...]]:
    cells: list[tuple[str, ...]] = []
    for r in rows:
        regs = " ".join(f"{x:04X}" for x in r.registers) if r.registers is not None else "—"
        value = _format_value(r.value, r.digits)
        cells.append((r.meter, r.point, regs, value, r.unit, r.quality))
    return cells


class _Ok(Protocol):
    @property
    def ok(self) -> bool: ...


def _summary(rows: Sequence[_Ok]) -> str:
    bad = sum(not r.ok for r in rows)
    return f"{len(rows) - bad} of {len(rows)} points good"


@dataclass(frozen=True, slots=True)
class Table:
    """One table of the report: its title, columns, cells and which rows are good."""

    title: str
    columns: tuple[str, ...]
    cells: list[tuple[str, ...]]
    ok: list[bool]


def tables_of(rows: Sequence[CheckRow], opcua_rows: Sequence[NodeRow]) -> list[Table]:
    out = []
    if rows or not opcua_rows:
        out.append(Table("plantprint edge --check: Modbus", COLUMNS, table_cells(rows),
                         [r.ok for r in rows]))
    if opcua_rows:
        out.append(Table("plantprint edge --check: OPC UA", OPCUA_COLUMNS,
                         opcua_cells(opcua_rows), [r.ok for r in opcua_rows]))
    return out


def render(tables: Sequence[Table], errors: Sequence[str], summary: str, out: TextIO,
           notes: Sequence[str] = ()) -> None:
    """The tables with rich when installed (the edge extra), else as aligned plain text.

    ``notes`` (the batch states) follow the tables, before the errors.
    """
    try:
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table as RichTable
    except ImportError:
        _render_plain(tables, [*notes, *(f"error {e}" for e in errors)], summary, out)
        return
    console = Console(file=out, width=200)
    for t in tables:
        table = RichTable(title=t.title)
        for col in t.columns:
            table.add_column(col, justify="right" if col == "value" else "left")
        for ok, cells in zip(t.ok, t.cells, strict=True):
            table.add_row(*cells, style=None if ok else "red")
        console.print(table)
    for note in notes:
        console.print(escape(note), markup=True)
    for msg in errors:
        console.print(f"[red]error[/red] {escape(msg)}", markup=True)
    all_ok = all(ok for t in tables for ok in t.ok)
    console.print(summary, style="green" if all_ok else "red")


def _render_plain(tables: Sequence[Table], lines: Sequence[str], summary: str,
                  out: TextIO) -> None:
    for t in tables:
        out.write(t.title + "\n")
        cells = [t.columns, *t.cells]
        widths = [max(len(c[i]) for c in cells) for i in range(len(t.columns))]
        for c in cells:
            out.write("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)).rstrip())
            out.write("\n")
    for line in lines:
        out.write(line + "\n")
    out.write(summary + "\n")


async def run_all(config: AgentConfig) -> tuple[list[CheckRow], list[NodeRow], list[str],
                                                list[str]]:
    """Modbus meters and OPC UA servers checked concurrently; rows, errors, batch states."""
    (rows, errors), (opcua_rows, opcua_errors, states), plcs = await asyncio.gather(
        run_check(config), run_opcua_check(config.opcua),
        asyncio.gather(*(check_plc_batches(b) for b in config.modbus_batches)),
    )
    for plc_rows, plc_errors, plc_state in plcs:
        rows, errors, states = rows + plc_rows, errors + plc_errors, [*states, plc_state]
    return rows, opcua_rows, errors + opcua_errors, states


def check(config: AgentConfig, out: TextIO | None = None) -> int:
    """Run the check and print the tables; the exit code (1 if any point failed or none)."""
    out = out or sys.stdout
    rows, opcua_rows, errors, states = asyncio.run(run_all(config))
    everything: list[_Ok] = [*rows, *opcua_rows]
    render(tables_of(rows, opcua_rows), errors, _summary(everything), out, states)
    return 0 if everything and all(r.ok for r in everything) else 1
