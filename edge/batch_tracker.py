"""Batch boundaries from what an MES or PLC shows, as a pure state machine.

Every batch source (OPC UA batch mappings and slots, PLC batch registers over
Modbus) reports *observations*: a field of one asset's batch record (the batch
id, product, quantity, unit, a running flag, explicit start and end times)
with the value it now holds and the source timestamp of that value. A
``BatchTracker`` turns them into start and end ``wire.BatchEvent``s by
comparing what the source shows with what it last *sent*:

* the shown batch is the batch id, when it is not empty (and, with a running
  field, while running is true);
* a shown batch other than the active one starts it (at its start time node
  if it has one, else the source timestamp of the change that showed it);
* an active batch that is no longer shown has ended: a cleared id, a changed
  id (the next batch began without a clear) or running gone false. Its end is
  the end time node when that holds a time after the batch's start, else the
  source timestamp of the change that revealed the end. The quantity is the
  quantity field's value if it was written no later than the end (strictly
  before a next id's appearance, since a new batch's record may reset it).

Within one notification, observations are applied in source-time order, and at
one instant the data fields before the batch id, the id before running: a
record written in one go is complete when its trigger is evaluated. A field's
own values keep the order the source queued them in, even where their source
times go back (a server's first values stamped when it started, then an MES
record stamped with the MES's older clock, in one notification). Because
the tracker remembers what it sent, a reconnect needs no special path: the
current values that a new subscription delivers are observations like any
other, and a batch that ended (or was replaced) while the edge was away is
ended then, with the best time the source still holds (``TrackedEvent.time_from``
says which). When the source no longer holds the end at all (a next batch took
the record while the edge was away, and no end time node still shows the
ended batch's end), the end is *inferred*: sent at the next batch's appearance,
the latest the end can have been, and marked ``TrackedEvent.inferred`` so that
its source says so (log, metric) rather than passing it off as the MES's end.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal

from edge import wire

Field = Literal["batch_id", "product", "quantity", "unit", "running", "start_time", "end_time"]
FIELDS: Final[tuple[Field, ...]] = (
    "batch_id", "product", "quantity", "unit", "running", "start_time", "end_time",
)
# at one source instant: the record's data first, then the id, then running
_RANK: Final = {"batch_id": 1, "running": 2}


@dataclass(frozen=True, slots=True)
class Observation:
    """A field's value as the source now shows it, with its source time (epoch ns).

    Values: text for ``batch_id``/``product``/``unit`` (``""`` when empty), a
    finite number or None for ``quantity``, a bool for ``running``, epoch ns or
    None for ``start_time``/``end_time``.
    """

    field: Field
    value: Any
    ts_ns: int


@dataclass(frozen=True, slots=True)
class TrackedEvent:
    """A batch event and how its time was obtained (for logs; the wire has no field)."""

    event: wire.BatchEvent
    time_from: str  # e.g. "end time node", "source timestamp of batch_id"
    reconciled: bool  # found on a reconnect: the end happened while the edge was away
    # an end the source no longer shows: its time is the next batch's appearance and its
    # quantity is known only if it was written before that
    inferred: bool = False


@dataclass(frozen=True, slots=True)
class _Active:
    batch_id: str
    product: str
    start_ns: int
    seen_only: bool = False  # found running, start not known: start_ns is when it was seen


@dataclass
class BatchTracker:
    """One asset's batch record (one mapping, slot or register set) and what was sent.

    ``unit`` is a constant unit, used when the source has no unit field.
    ``has_running``: the source marks start and end by a running field.
    """

    asset: str
    has_running: bool = False
    unit: str | None = None
    values: dict[str, Observation] = field(default_factory=dict)
    active: _Active | None = None
    # a batch already running when first seen is started (a source with source times);
    # False: not sent (a PLC without timestamps: its start time is not known here)
    start_at_first_sight: bool = True
    _previous_quantity: Observation | None = None
    unsent_start: str | None = None  # a batch found running at first sight, start not sent
    _first: bool = True  # nothing observed yet in this process
    _reconnect: bool = False  # the next observations are a fresh session's current values

    def reconnected(self) -> None:
        """The source's session was renewed: its next values may reveal missed ends."""
        self._reconnect = True

    def observe(self, observations: Iterable[Observation]) -> list[TrackedEvent]:
        """Apply one notification's observations; the events they mean, in order."""
        out: list[TrackedEvent] = []
        ordered = _in_order(observations)
        for obs in ordered:
            if obs.field == "quantity":
                self._previous_quantity = self.values.get("quantity")
            self.values[obs.field] = obs
            if obs.field in ("batch_id", "running"):
                out.extend(self._evaluate(obs))
        if ordered:
            if self._first:
                out.extend(self._ended_before_we_came())
            self._first = False
            self._reconnect = False
        return out

    # ------------------------------------------------------------------ state

    def _value(self, name: str) -> Any:
        obs = self.values.get(name)
        return None if obs is None else obs.value

    def _shown(self) -> str | None:
        batch_id = self._value("batch_id")
        if not batch_id:
            return None
        if self.has_running and self._value("running") is not True:
            return None
        return str(batch_id)

    def _evaluate(self, trigger: Observation) -> list[TrackedEvent]:
        shown = self._shown()
        out: list[TrackedEvent] = []
        active = self.active
        if active is not None and shown != active.batch_id:
            replaced = shown is not None and trigger.field == "batch_id"
            out.append(self._end(active, trigger, replaced))
        if shown is not None and (self.active is None or shown != self.active.batch_id):
            if self._first and not self.start_at_first_sight:
                self.active = _Active(shown, str(self._value("product") or ""), trigger.ts_ns,
                                      seen_only=True)
                self.unsent_start = shown
            else:
                out.append(self._start(shown, trigger))
        return out

    def _start(self, batch_id: str, trigger: Observation) -> TrackedEvent:
        product = str(self._value("product") or "")
        start = self._value("start_time")
        if isinstance(start, int):
            ts, time_from = start, "start time node"
        else:
            ts, time_from = trigger.ts_ns, f"source timestamp of {trigger.field}"
        self.active = _Active(batch_id, product, ts)
        event = wire.BatchEvent(self.asset, batch_id, product, "start", ts)
        return TrackedEvent(event, time_from, self._reconnect)

    def _end(self, active: _Active, trigger: Observation, replaced: bool) -> TrackedEvent:
        end = self._value("end_time")
        if isinstance(end, int) and end >= active.start_ns:
            ts, time_from = end, "end time node"
        else:
            # never before its start: a source clock that stepped back
            ts = max(trigger.ts_ns, active.start_ns)
            time_from = f"source timestamp of {trigger.field}"
        quantity, unit = self._quantity_at(active, trigger, replaced)
        self.active = None
        event = wire.BatchEvent(self.asset, active.batch_id, active.product, "end", ts,
                                quantity=quantity, unit=unit)
        # live, a next id without a clear is the source's own end mark; after a gap in
        # the session it only bounds an end that the source showed while we were away
        inferred = self._reconnect and replaced and time_from != "end time node"
        return TrackedEvent(event, time_from, self._reconnect, inferred)

    def _quantity_at(self, active: _Active, trigger: Observation,
                     replaced: bool) -> tuple[float | None, str | None]:
        """The ended batch's quantity: written after its start, no later than its end.

        A next batch's id may come with its record reset (quantity 0): a value
        written at that instant belongs to the next batch, so the one before it
        is taken if it was written while the batch ran. None when neither fits.
        """
        for obs in (self.values.get("quantity"), self._previous_quantity):
            if obs is None or obs.value is None or obs.ts_ns <= active.start_ns:
                continue
            if obs.ts_ns < trigger.ts_ns or (obs.ts_ns == trigger.ts_ns and not replaced):
                unit = self._value("unit") if "unit" in self.values else self.unit
                return float(obs.value), (str(unit) if unit else None)
        return None, None

    def _ended_before_we_came(self) -> list[TrackedEvent]:
        """A running-flag source first seen ended (running false, id and end time set).

        What the slot layout always did: an agent that restarts after a batch
        ended still reports that end (ingest drops it if it had landed).
        """
        batch_id, end = self._value("batch_id"), self._value("end_time")
        if (self.active is not None or not self.has_running or not batch_id
                or self._value("running") is not False or not isinstance(end, int)):
            return []
        start = self._value("start_time")
        active = _Active(str(batch_id), str(self._value("product") or ""),
                         start if isinstance(start, int) else end)
        return [self._end(active, self.values["running"], replaced=False)]

    def describe(self) -> str:
        """The state as the edge interprets it, for ``--check``."""
        shown = self._shown()
        if shown is not None:
            assert self.active is not None
            since = "first seen at" if self.active.seen_only else "since"
            return (f"batch {shown} ({self.active.product or 'no product'}) running {since} "
                    f"{_iso(self.active.start_ns)}")
        batch_id = self._value("batch_id")
        if batch_id:
            return f"no batch running (shows batch {batch_id}, not running)"
        return "no batch running (batch id empty)"


def _in_order(observations: Iterable[Observation]) -> list[Observation]:
    """Source-time order across fields, then data before id before running (pure).

    A field's later value never goes before its earlier one: it is ordered at
    the latest source time its field has shown so far in this notification.
    """
    latest: dict[str, int] = {}
    keyed: list[tuple[tuple[int, int, int], Observation]] = []
    for index, obs in enumerate(observations):
        ts = max(obs.ts_ns, latest.get(obs.field, obs.ts_ns))
        latest[obs.field] = ts
        keyed.append(((ts, _RANK.get(obs.field, 0), index), obs))
    keyed.sort(key=lambda pair: pair[0])
    return [obs for _key, obs in keyed]


def _iso(ts_ns: int) -> str:
    return datetime.fromtimestamp(ts_ns / 1e9, UTC).isoformat(timespec="seconds").replace(
        "+00:00", "Z")
