"""Pure request grouping: merge a meter's registers into as few Modbus reads as possible.

Like Telegraf's ``request.go``: points are sorted by table and address and a
read grows while the next point starts within ``max_gap`` registers of the
current end and the whole read stays within ``max_registers`` (125 is the
protocol's limit for function codes 3 and 4; some devices refuse long reads or
reads that span unmapped registers, hence both knobs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Generic, Literal, Protocol, TypeVar

Table = Literal["holding", "input"]
MAX_REGISTERS: Final = 125  # Modbus limit per read of holding/input registers


class Addressed(Protocol):
    """What grouping needs from a point: its table, first register and width."""

    @property
    def table(self) -> Table: ...

    @property
    def address(self) -> int: ...

    @property
    def registers(self) -> int: ...


P = TypeVar("P", bound=Addressed)


class RequestPlanError(ValueError):
    """A point that no allowed request can read."""


@dataclass(frozen=True, slots=True)
class ReadRequest(Generic[P]):
    """One read: ``count`` registers of ``table`` from ``address``, covering ``points``."""

    table: Table
    address: int
    count: int
    points: tuple[P, ...]

    @property
    def end(self) -> int:
        return self.address + self.count


def plan_requests(
    points: Sequence[P], max_gap: int = 0, max_registers: int = MAX_REGISTERS
) -> list[ReadRequest[P]]:
    """Group points into reads; every point lies wholly inside exactly one read.

    ``max_gap`` is how many unused registers a read may span between points
    (0: only adjacent or overlapping points share a read). Reads come back
    ordered by table, then address.
    """
    if not 1 <= max_registers <= MAX_REGISTERS:
        raise RequestPlanError(f"max_registers {max_registers} is not within 1..{MAX_REGISTERS}")
    if max_gap < 0:
        raise RequestPlanError(f"max_gap {max_gap} is negative")
    out: list[ReadRequest[P]] = []
    ordered = sorted(points, key=lambda p: (p.table, p.address, -p.registers))
    group: list[P] = []
    start = end = 0
    for point in ordered:
        if point.registers > max_registers:
            raise RequestPlanError(
                f"point at {point.table} {point.address} spans {point.registers} registers,"
                f" more than max_registers {max_registers}"
            )
        p_end = point.address + point.registers
        fits = (
            group
            and group[0].table == point.table
            and point.address - end <= max_gap
            and max(end, p_end) - start <= max_registers
        )
        if fits:
            group.append(point)
            end = max(end, p_end)
            continue
        if group:
            out.append(ReadRequest(group[0].table, start, end - start, tuple(group)))
        group, start, end = [point], point.address, p_end
    if group:
        out.append(ReadRequest(group[0].table, start, end - start, tuple(group)))
    return out


def registers_read(requests: Sequence[ReadRequest[P]]) -> int:
    return sum(r.count for r in requests)
