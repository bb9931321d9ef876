"""Pure conversions from OPC UA data values to wire readings and batch events.

No I/O: the subscriber hands notification items in, tests feed hand-made ``ua``
objects (the device clock check it may hand over keeps metrics and logs its
warnings, ``edge.clock``). Batch fields are converted in ``edge.opcua_batches``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from asyncua import ua

from edge import wire
from edge.clock import DeviceClocks

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_US: Final = timedelta(microseconds=1)
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


def not_a_number(dv: ua.DataValue) -> str | None:
    """Why a usable (good or uncertain) value cannot be a reading: ``String 'B-17'``.

    None when it is a finite number (or a boolean), or when the status is bad
    (a bad value carries no value, and is reported as such).
    """
    if quality_of(dv.StatusCode) == "bad":
        return None
    raw = dv.Value.Value if dv.Value is not None else None
    if numeric(raw) is not None:
        return None
    kind = dv.Value.VariantType.name if dv.Value is not None else "no value"
    return f"{kind} {raw!r:.40}" if raw is not None else kind


def readings_of_items(
    items: Sequence[ua.MonitoredItemNotification],
    points: Mapping[int, tuple[str, str, str]],
    now_ns: int,
    on_not_a_number: Callable[[int, str], None] | None = None,
    device_clocks: DeviceClocks | None = None,
) -> list[wire.Reading]:
    """One reading per item of a monitored point (other handles are skipped).

    The device's source timestamp wins, then the server's, then ``now_ns`` (the
    receive time). With ``device_clocks``, a timestamp ahead of ``now_ns`` by
    more than its tolerance is replaced by ``now_ns`` (``edge.clock``). A
    bad status is reported as quality bad with value 0 (the frame records that
    the point was not usable at that instant). A good value that is not a
    finite number (text, an array, NaN) is no reading at all: it is handed to
    ``on_not_a_number(handle, what)`` and left out, since a text node belongs
    in a batch mapping, not among meter points.
    """
    out: list[wire.Reading] = []
    for item in items:
        point = points.get(item.ClientHandle)
        if point is None:
            continue
        dv = item.Value
        why = not_a_number(dv)
        if why is not None:
            if on_not_a_number is not None:
                on_not_a_number(item.ClientHandle, why)
            continue
        stamped = epoch_ns(dv.SourceTimestamp) or epoch_ns(dv.ServerTimestamp)
        if stamped is None:
            ts = now_ns
        elif device_clocks is not None:
            ts = device_clocks.stamp(point[0], stamped, now_ns)
        else:
            ts = stamped
        quality = quality_of(dv.StatusCode)
        value = numeric(dv.Value.Value if dv.Value is not None else None)
        if value is None:
            value, quality = 0, "bad"
        out.append(wire.Reading(point[0], point[1], ts, value, point[2], quality))
    return out
