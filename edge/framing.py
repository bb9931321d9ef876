"""Readings into frame columns, and frames cut to fit every output (pure).

A frame that an output cannot carry is lost for good (Kafka refuses records
over ``max_request_bytes``; an MQTT broker drops packets over its maximum), so
the agent never spools one. Each part of a flush is encoded once, with its
real sequence number, inside the spool's append; a part whose encoding is over
the *frame budget* is refused there (its number is not consumed) and split into
halves, each of which becomes its own frame. The budget is the smallest limit
of the configured outputs, the spool and the server's default frame limit,
minus some headroom.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final, TypeVar

from edge import wire
from edge.modbus import PollResult

logger = logging.getLogger(__name__)

# a margin kept below every output's limit (bytes)
FRAME_HEADROOM_BYTES: Final = 1024
# below this a budget is a misconfiguration, not a limit to split for
MIN_FRAME_BUDGET: Final = 4096

Columns = tuple[list[str], list[str], list[int], list[Any], list[str], list[wire.Quality]]


def frame_columns(results: Sequence[PollResult], readings: Sequence[wire.Reading]) -> Columns:
    """Poll results and subscriber readings as the six columns of a frame."""
    meter: list[str] = []
    channel: list[str] = []
    ts_ns: list[int] = []
    value: list[Any] = []
    unit: list[str] = []
    quality: list[wire.Quality] = []
    for r in results:
        n = len(r.value)
        meter.extend([r.meter] * n)
        channel.extend(r.channel)
        ts_ns.extend(r.ts_ns)
        value.extend(r.value)
        unit.extend(r.unit)
        quality.extend(["good"] * n)
    for row in readings:
        meter.append(row.meter)
        channel.append(row.channel)
        ts_ns.append(row.ts_ns)
        value.append(row.value)
        unit.append(row.unit)
        quality.append(row.quality)
    return meter, channel, ts_ns, value, unit, quality


def frame_budget(limits: Iterable[int | None]) -> int:
    """Largest encoded frame every destination takes: min of the limits minus headroom.

    ``wire.DEFAULT_MAX_BYTES`` (ingest's default ``max_frame_bytes``) always counts.
    """
    smallest = min(x for x in (*limits, wire.DEFAULT_MAX_BYTES) if x is not None)
    return max(MIN_FRAME_BUDGET, smallest - FRAME_HEADROOM_BYTES)


def _halves(cols: Columns) -> tuple[Columns, Columns]:
    mid = len(cols[0]) // 2
    first = tuple(c[:mid] for c in cols)
    second = tuple(c[mid:] for c in cols)
    return first, second  # type: ignore[return-value]


R = TypeVar("R")


class OverBudget(Exception):
    """Raised by an emitter when a part encodes larger than the frame budget."""

    def __init__(self, size: int) -> None:
        super().__init__(f"frame of {size} bytes is over the frame budget")
        self.size = size


def emit_within_budget(cols: Columns, emit: Callable[[Columns, bool], R]) -> list[R]:
    """Emit ``cols`` as consecutive parts, halving every part ``emit`` refuses.

    ``emit(part, may_refuse)`` encodes the part once and raises OverBudget when
    ``may_refuse`` and the encoding is over the budget; the part is then halved,
    order kept. A single reading cannot be halved: it is emitted with
    ``may_refuse`` False, and the emitter logs it if it is over.
    """
    out: list[R] = []
    todo = [cols]
    while todo:
        part = todo.pop()
        if not part[0]:
            continue
        try:
            out.append(emit(part, len(part[0]) > 1))
        except OverBudget:
            first, second = _halves(part)
            todo.extend((second, first))  # first is popped next: order is kept
    return out
