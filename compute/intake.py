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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from compute.errors import SiteModelError
from compute.model import F64, I64, f64, i64
from compute.series import Readings
from compute.site import SiteModel
from compute.store import FrameKey
from edge.wire import BatchFrame, Frame, Message, WireError
from ingest.accept import Acceptance, Refused, admit
from ingest.screen import Limits
from ingest.store import body_digest

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Accepted:
    message: Message
    keep: list[int] | None  # reading/event indices that passed the screen; None = all
    key: FrameKey


def accept(record: Any, keys: Acceptance | Mapping[str, Any], max_bytes: int, limits: Limits
           ) -> Accepted | str:
    """An accepted message, or the reason ingest refuses it."""
    value: bytes = record.value or b""
    try:  # ingest's acceptance: wire, keys, binding, frame age, storability, time screen
        msg, verdict = admit(value, keys, max_bytes, limits)
    except Refused as exc:
        return exc.reason
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
    # readings in a unit their meter's carrier has not: skipped, never a reason to stop
    unit_errors: set[str] = field(default_factory=set)
    # gateway -> send time of its newest batch frame: every event before it has been sent
    batch_marks: dict[str, int] = field(default_factory=dict)


def _us(ts_ns: int) -> int:
    return ts_ns // 1000 * 1000


# a reading that is no column of the site: its meter or channel is not in the model
_SKIP: Final = -1


@dataclass
class _Route:
    """Where a (meter, channel, unit) goes: a (meter, role) column and its factor."""

    code: int  # index into _Routes.targets, or _SKIP
    factor: float = 1.0  # counter: unit → the meter's unit; power: → canonical rate unit
    unknown: str | None = None  # a meter the site model does not know (reported per batch)
    error: Exception | None = None  # a unit the carrier has not: its readings are skipped


class _Routes:
    """Per site model: each (meter, channel, unit) seen so far, routed once.

    The per-reading work of a micro-batch is then one dictionary look-up (to a
    route id); the conversion, grouping and sorting run on whole numpy columns.
    """

    def __init__(self, model: SiteModel) -> None:
        self.model = model
        self.ids: dict[tuple[str, str, str], int] = {}  # key -> route id
        self.routes: list[_Route] = []
        self.targets: list[tuple[str, str]] = []  # code -> (meter, role)
        self._codes: dict[tuple[str, str], int] = {}
        self.code = i64()  # per route id, for whole columns at once
        self.factor = f64()
        self.special = np.zeros(0, dtype=bool)  # skipped with a note, or refused
        # gateway -> its last frame's meters, channels, units and their route ids
        self._layouts: dict[str, tuple[list[str], list[str], list[str], I64]] = {}

    def layout_ids(self, gateway: str, meter: Sequence[str], channel: Sequence[str],
                   unit: Sequence[str]) -> I64:
        """Route ids of a frame's readings. A gateway sends the same meters, channels and
        units poll after poll: comparing them with its last frame's is cheaper than
        looking each reading up."""
        last = self._layouts.get(gateway)
        if last is not None and last[0] == meter and last[1] == channel and last[2] == unit:
            return last[3]
        rid = self.route_ids(list(zip(meter, channel, unit, strict=True)))
        self._layouts[gateway] = (list(meter), list(channel), list(unit), rid)
        return rid

    def route_ids(self, keys: list[tuple[str, str, str] | Any]) -> I64:
        """Route id of each key; keys seen for the first time are routed here."""
        got = list(map(self.ids.get, keys))
        if None in got:
            for i, r in enumerate(got):
                if r is None:
                    got[i] = self._add(keys[i])
            self.code = i64([r.code for r in self.routes])
            self.factor = f64([r.factor for r in self.routes])
            self.special = np.array([r.unknown is not None or r.error is not None
                                     for r in self.routes], dtype=bool)
        return i64(got)

    def _add(self, key: tuple[str, str, str]) -> int:
        rid = self.ids.get(key)
        if rid is None:
            rid = self.ids[key] = len(self.routes)
            self.routes.append(self._new(*key))
        return rid

    def _new(self, meter: str, channel: str, unit: str) -> _Route:
        model = self.model
        role = _channel_role(model, meter, channel)
        if role is None:
            unknown = meter if meter not in model.meters and meter not in model.assets else None
            return _Route(_SKIP, unknown=unknown)
        factor = 1.0
        try:
            if role == "counter":
                factor = model.canonical_factor(meter, unit) / model.canonical_factor(meter)
            elif role == "power":
                factor = model.rate_to_canonical(meter, 1.0, unit)
        except SiteModelError as exc:
            return _Route(_SKIP, error=exc)
        code = self._codes.setdefault((meter, role), len(self.targets))
        if code == len(self.targets):
            self.targets.append((meter, role))
        return _Route(code, factor)


# id(model) -> its routes; a worker holds a handful of site models for its whole life
_ROUTES: dict[int, _Routes] = {}


def _routes(model: SiteModel) -> _Routes:
    got = _ROUTES.get(id(model))
    if got is None or got.model is not model:
        got = _ROUTES[id(model)] = _Routes(model)
    return got


@dataclass
class _SiteColumns:
    """A site's readings of a micro-batch, in arrival order, frame by frame."""

    code: list[I64] = field(default_factory=list)
    ts: list[I64] = field(default_factory=list)
    value: list[F64] = field(default_factory=list)


def group_readings(frames: list[Accepted], models: Mapping[str, SiteModel]
                   ) -> dict[str, SiteInput]:
    """Accepted frames of a micro-batch → per site: events, meter readings, state changes."""
    out: dict[str, SiteInput] = {}
    cols: dict[str, _SiteColumns] = {}
    for a in frames:
        model = models.get(a.message.site)
        if model is None:
            continue
        site_in = out.setdefault(model.site, SiteInput())
        if isinstance(a.message, BatchFrame):
            gw, sent = a.message.gateway, _us(a.message.sent_ns)
            site_in.batch_marks[gw] = max(site_in.batch_marks.get(gw, sent), sent)
            keep = None if a.keep is None else set(a.keep)
            for i, ev in enumerate(a.message.events):
                if keep is None or i in keep:
                    site_in.events.append((ev.asset, ev.batch_id, ev.product, ev.kind,
                                           _us(ev.ts_ns), ev.quantity, ev.unit))
            continue
        _collect(a.message, a.keep, _routes(model), site_in,
                 cols.setdefault(model.site, _SiteColumns()))
    for site, c in cols.items():
        _place_all(out[site], _routes(models[site]), c)
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


def _collect(frame: Frame, keep: list[int] | None, routes: _Routes, site_in: SiteInput,
             into: _SiteColumns) -> None:
    meter, channel, unit, quality = frame.meter, frame.channel, frame.unit, frame.quality
    ts_in, value_in = frame.ts_ns, frame.value
    if keep is not None or "bad" in quality:
        # a bad reading is not a value: a counter or power reading the meter could not give
        idx = [i for i in (range(len(frame)) if keep is None else keep)
               if quality[i] != "bad"]
        meter, channel, unit = [meter[i] for i in idx], [channel[i] for i in idx], \
            [unit[i] for i in idx]
        ts_in, value_in = [ts_in[i] for i in idx], [value_in[i] for i in idx]
    rid = routes.layout_ids(frame.gateway, meter, channel, unit)
    if routes.special[rid].any():  # rare: readings the site model does not route
        for r in (routes.routes[k] for k in rid.tolist()):
            if r.error is not None:  # skipped (code _SKIP); the worker says why, once
                site_in.unit_errors.add(str(r.error))
            if r.unknown is not None:
                site_in.unknown_meters.add(r.unknown)
    code, factor = routes.code[rid], routes.factor[rid]
    ts = i64(ts_in) // 1000 * 1000  # the database keeps microseconds
    into.code.append(code)
    into.ts.append(ts)
    into.value.append(f64(value_in) * factor)


def _place_all(site_in: SiteInput, routes: _Routes, c: _SiteColumns) -> None:
    """Per (meter, role) of the site, its readings in the order they arrived (what
    arrives out of order is for ``compute.series`` to refuse, whatever the micro-batch;
    machine states are sorted by time), in the order the columns first appeared."""
    code, ts, value = np.concatenate(c.code), np.concatenate(c.ts), np.concatenate(c.value)
    used = code >= 0
    if not used.all():
        code, ts, value = code[used], ts[used], value[used]
    if len(code) == 0:
        return
    order = np.argsort(code, kind="stable")
    code, ts, value = code[order], ts[order], value[order]
    cut = np.flatnonzero(code[1:] != code[:-1]) + 1
    starts = np.concatenate([[0], cut])
    ends = np.concatenate([cut, [len(code)]])
    # first appearance of each column in arrival order: the minimum original position
    first = np.minimum.reduceat(order, starts)
    for k in np.argsort(first, kind="stable").tolist():
        lo, hi = int(starts[k]), int(ends[k])
        meter, role = routes.targets[int(code[lo])]
        _place(site_in, meter, role, (ts[lo:hi], value[lo:hi]))


def _place(site_in: SiteInput, meter: str, role: str, arrays: tuple[Any, Any]) -> None:
    if role == "state":  # changes with their source time stamps: kept in time order
        ts, value = arrays
        by_ts = np.argsort(ts, kind="stable")
        site_in.states[meter] = (ts[by_ts].tolist(), value[by_ts].astype(np.int64).tolist())
        return
    old = site_in.readings.get(meter, Readings((i64(), f64())))
    if role == "counter":
        site_in.readings[meter] = Readings(arrays, old.power, old.co2)
    elif role == "power":
        site_in.readings[meter] = Readings(old.counter, arrays, old.co2)
    else:
        site_in.readings[meter] = Readings(old.counter, old.power, arrays)


__all__ = ["Accepted", "SiteInput", "WireError", "accept", "group_readings"]
