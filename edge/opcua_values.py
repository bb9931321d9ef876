"""Pure conversions from OPC UA data values to wire readings and batch events.

No I/O: the subscriber hands notification items and slot values in, tests feed
hand-made ``ua`` objects.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from asyncua import ua

from edge import wire

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_US: Final = timedelta(microseconds=1)
# the order in which a batch slot's variables are read
BATCH_SLOT_FIELDS: Final = ("BatchId", "Product", "StartTime", "EndTime", "Quantity", "Unit")
_QUALITY: Final[tuple[wire.Quality, ...]] = ("good", "uncertain", "bad", "bad")


def quality_of(status: ua.StatusCode | None) -> wire.Quality:
    """OPC UA severity (top two bits of the status code): 00 good, 01 uncertain, 1x bad."""
    return "good" if status is None else _QUALITY[(status.value >> 30) & 3]


def epoch_ns(ts: datetime | None) -> int | None:
    """UTC epoch nanoseconds of an OPC UA timestamp (None for none or the 1601 minimum)."""
    if ts is None:
        return None
    if ts.tzinfo is None:  # asyncua gives aware UTC datetimes; be lenient with naive ones
        ts = ts.replace(tzinfo=UTC)
    if ts <= _EPOCH:
        return None
    return ((ts - _EPOCH) // _US) * 1000


def numeric(value: Any) -> float | int | None:
    """A finite number for a reading, or None (strings, arrays, NaN are not readings)."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return None


def readings_of_items(
    items: Sequence[ua.MonitoredItemNotification],
    points: Mapping[int, tuple[str, str, str]],
    now_ns: int,
) -> list[wire.Reading]:
    """One reading per item of a monitored point (other handles are skipped).

    The device's source timestamp wins, then the server's, then ``now_ns``. A
    value that is not a finite number is reported as quality bad with value 0
    (the frame records that the point was not usable at that instant).
    """
    out: list[wire.Reading] = []
    for item in items:
        point = points.get(item.ClientHandle)
        if point is None:
            continue
        dv = item.Value
        ts = epoch_ns(dv.SourceTimestamp) or epoch_ns(dv.ServerTimestamp) or now_ns
        quality = quality_of(dv.StatusCode)
        value = numeric(dv.Value.Value if dv.Value is not None else None)
        if value is None:
            value, quality = 0, "bad"
        out.append(wire.Reading(point[0], point[1], ts, value, point[2], quality))
    return out


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def batch_events_of_slot(
    asset: str, running: bool, values: Sequence[Any], now_ns: int
) -> list[wire.BatchEvent]:
    """The batch event a slot's ``Running`` change means (``values`` in BATCH_SLOT_FIELDS order).

    Running true: a start at ``StartTime``. Running false on a slot that held a
    batch: an end at ``EndTime`` with the produced quantity and unit. An empty
    slot (no BatchId yet) means nothing.
    """
    batch_id, product, start, end, quantity, unit = values
    batch_id, product, unit = _text(batch_id), _text(product), _text(unit)
    if not batch_id:
        return []
    if running:
        return [wire.BatchEvent(asset, batch_id, product, "start", epoch_ns(start) or now_ns)]
    end_ns = epoch_ns(end)
    if end_ns is None:  # a slot that held a batch but was never ended: nothing to report
        return []
    qty = numeric(quantity)
    return [
        wire.BatchEvent(
            asset, batch_id, product, "end", end_ns,
            quantity=None if qty is None else float(qty), unit=unit or None,
        )
    ]
