"""What compute takes from Kafka: exactly what ingest lands, grouped per site and meter.

Each record goes through ingest's own acceptance: ``edge.wire.decode`` (format,
signature by the gateway's key, schema) and ``ingest.screen.screen`` (time
limits per reading, storability). What ingest dead-letters never reaches an
allocation; the dead letter itself is ingest's to write. Frames are then
keyed by (gateway, stream, seq) with the digest of their signed body, so the
store can skip redeliveries and refuse sequence conflicts as ingest does.

:func:`group_readings` turns accepted frames into per-site, per-meter arrays:
the counter channel (in the meter's configured unit), the power channel (in
the carrier's rate unit), a carbon meter's CO2 counter, and the assets'
machine-state changes. Timestamps are cut to microseconds, the database's
resolution, so a worker restored from the database computes exactly what an
uninterrupted one did.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from compute.model import f64, i64
from compute.series import Readings
from compute.site import SiteModel
from compute.store import FrameKey
from edge.wire import BatchFrame, Frame, Message, WireError, decode
from ingest.screen import Limits, screen
from ingest.store import body_digest

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Accepted:
    message: Message
    keep: list[int] | None  # reading/event indices that passed the screen; None = all
    key: FrameKey


def accept(record: Any, keys: Mapping[str, Any], max_bytes: int, limits: Limits
           ) -> Accepted | str:
    """An accepted message, or the reason ingest refuses it."""
    value: bytes = record.value or b""
    try:
        msg = decode(value, keys, max_bytes)
    except WireError as exc:
        return exc.reason
    verdict = screen(msg, limits)
    if verdict.reason is not None and verdict.rejects_all:
        return verdict.reason
    key = FrameKey(msg.gateway, msg.stream, msg.seq, msg.site, body_digest(value),
                   record.partition, record.offset)
    return Accepted(msg, verdict.keep, key)


@dataclass
class SiteInput:
    """One site's share of a micro-batch."""

    events: list[tuple[str, str, str, str, int, float | None, str | None]] = field(
        default_factory=list)
    readings: dict[str, Readings] = field(default_factory=dict)
    states: dict[str, tuple[list[int], list[int]]] = field(default_factory=dict)
    unknown_meters: set[str] = field(default_factory=set)
    # gateway -> send time of its newest batch frame: every event before it has been sent
    batch_marks: dict[str, int] = field(default_factory=dict)


def _us(ts_ns: int) -> int:
    return ts_ns // 1000 * 1000


class _Columns:
    def __init__(self) -> None:
        self.ts: list[int] = []
        self.value: list[float] = []

    def arrays(self) -> tuple[Any, Any]:
        ts, value = i64(self.ts), f64(self.value)
        order = np.argsort(ts, kind="stable")
        return ts[order], value[order]


def group_readings(frames: list[Accepted], models: Mapping[str, SiteModel]
                   ) -> dict[str, SiteInput]:
    """Accepted frames of a micro-batch → per site: events, meter readings, state changes."""
    out: dict[str, SiteInput] = {}
    cols: dict[tuple[str, str, str], _Columns] = {}
    for a in frames:
        model = models.get(a.message.site)
        if model is None:
            continue
        site_in = out.setdefault(model.site, SiteInput())
        if isinstance(a.message, BatchFrame):
            gw, sent = a.message.gateway, _us(a.message.sent_ns)
            site_in.batch_marks[gw] = max(site_in.batch_marks.get(gw, sent), sent)
            for i, ev in enumerate(a.message.events):
                if a.keep is None or i in a.keep:
                    site_in.events.append((ev.asset, ev.batch_id, ev.product, ev.kind,
                                           _us(ev.ts_ns), ev.quantity, ev.unit))
            continue
        _collect(a.message, a.keep, model, site_in, cols)
    for (site, meter, role), c in cols.items():
        _place(out[site], meter, role, c.arrays())
    return out


def _channel_role(model: SiteModel, meter: str, channel: str) -> str | None:
    m = model.meters.get(meter)
    if m is None:
        return "state" if channel == "state" and meter in model.assets else None
    if channel == m.channel:
        return "counter"
    if channel == m.power_channel:
        return "power"
    if m.carbon is not None and channel == m.carbon.co2_channel:
        return "co2"
    return None


def _collect(frame: Frame, keep: list[int] | None, model: SiteModel, site_in: SiteInput,
             cols: dict[tuple[str, str, str], _Columns]) -> None:
    idx = range(len(frame)) if keep is None else keep
    for i in idx:
        if frame.quality[i] == "bad":
            continue  # not a value: a counter or power reading the meter could not give
        meter, channel = frame.meter[i], frame.channel[i]
        role = _channel_role(model, meter, channel)
        if role is None:
            if meter not in model.meters and meter not in model.assets:
                site_in.unknown_meters.add(meter)
            continue
        value = float(frame.value[i])
        unit = frame.unit[i]
        if role == "counter":
            value *= model.canonical_factor(meter, unit) / model.canonical_factor(meter)
        elif role == "power":
            value = model.rate_to_canonical(meter, value, unit)
        c = cols.setdefault((model.site, meter, role), _Columns())
        c.ts.append(_us(frame.ts_ns[i]))
        c.value.append(value)


def _place(site_in: SiteInput, meter: str, role: str, arrays: tuple[Any, Any]) -> None:
    if role == "state":
        ts, value = arrays
        site_in.states[meter] = (ts.tolist(), value.astype(np.int64).tolist())
        return
    old = site_in.readings.get(meter, Readings((i64(), f64())))
    if role == "counter":
        site_in.readings[meter] = Readings(arrays, old.power, old.co2)
    elif role == "power":
        site_in.readings[meter] = Readings(old.counter, arrays, old.co2)
    else:
        site_in.readings[meter] = Readings(old.counter, old.power, arrays)


__all__ = ["Accepted", "SiteInput", "WireError", "accept", "group_readings"]
