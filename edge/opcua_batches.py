"""OPC UA batch sources: each mapping's nodes as monitored items, their values as batch fields.

A mapping (``[[opcua.batches]]``, or an MES slot expanded into one) is watched
as one monitored item per field; every data change becomes an
``edge.batch_tracker.Observation`` (value converted to the field's type, the
node's source timestamp), and each mapping's tracker decides the events. No
node is read on a change: the values arrive in the notifications, so a slot
that ends and is reused within one publishing interval, or while a read would
be on its way, is still seen in order.

Values are checked against the field: a batch id or product may be text or an
integer (a PLC's batch number), a unit text, a quantity a number, running a
boolean or a state code, start and end times a DateTime. A value of another
type is refused (``FieldProblem``) and the field keeps its previous value; a
value with a bad status is ignored, so a communication loss never clears a
batch.
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from asyncua import ua

from edge import metrics, wire
from edge.batch_tracker import BatchTracker, Field, Observation, TrackedEvent
from edge.opcua_config import BatchMapping
from edge.opcua_values import epoch_ns, numeric, quality_of

logger = logging.getLogger("edge.opcua")

# what each field takes, for messages
EXPECTED: Final[dict[str, str]] = {
    "batch_id": "text or an integer", "product": "text or an integer", "unit": "text",
    "quantity": "a number", "running": "a Boolean or an integer state code",
    "start_time": "a DateTime", "end_time": "a DateTime",
}


class FieldProblem(ValueError):
    """A node's value does not fit its batch field (e.g. a Double as batch_id)."""


def variant_name(value: Any, dv: ua.DataValue | None = None) -> str:
    """The OPC UA type of a value, by name (``String``, ``Double``)."""
    if dv is not None and dv.Value is not None:
        return str(dv.Value.VariantType.name)
    return type(value).__name__


def _text(value: Any, field: str, type_name: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        # a PLC string padded with NULs ends at the first one (ingest refuses NULs); the
        # wire takes NFC text only: one spelling of an id, whatever the MES sent
        return unicodedata.normalize("NFC", value.split("\x00", 1)[0].strip())
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # a PLC's batch number or product code
    raise FieldProblem(f"{type_name}, expected {EXPECTED[field]}")


def field_value(field: str, value: Any, type_name: str,
                running_values: tuple[int, ...] = ()) -> Any:
    """A node's value converted for its batch field, or FieldProblem (pure)."""
    if field in ("batch_id", "product", "unit"):
        return _text(value, field, type_name)
    if field == "quantity":
        number = numeric(value)
        if number is None or isinstance(value, bool):
            raise FieldProblem(f"{type_name} {value!r:.40}, expected {EXPECTED[field]}")
        return number
    if field == "running":
        if isinstance(value, bool) and not running_values:
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return value in running_values if running_values else value != 0
        raise FieldProblem(f"{type_name}, expected {EXPECTED[field]}")
    if isinstance(value, datetime):  # start_time, end_time
        return epoch_ns(value)
    raise FieldProblem(f"{type_name}, expected {EXPECTED[field]}")


@dataclass(frozen=True, slots=True)
class WatchedField:
    """One monitored node of a mapping: which tracker and field it feeds."""

    mapping: int  # index into the subscriber's mappings / trackers
    field: Field
    ref: str  # the node as configured


class BatchSources:
    """The trackers of one server's mappings; they live as long as the subscriber.

    Each session registers the fields' client handles anew (``watch``); the
    trackers keep what was sent, so the first values of a new session are
    compared with it (``BatchTracker.reconnected``).
    """

    def __init__(self, server: str, mappings: Sequence[BatchMapping]) -> None:
        self.server = server
        self.mappings = list(mappings)
        self.trackers = [BatchTracker(m.asset, has_running=m.running is not None,
                                      unit=m.unit_constant) for m in self.mappings]
        self.fields: dict[int, WatchedField] = {}
        self._sessions = 0
        self.problems: dict[str, str] = {}  # node ref -> what is wrong (current)

    def new_session(self) -> None:
        self.fields.clear()
        self.problems.clear()  # found again, if still there, from this session's values
        if self._sessions:
            for tracker in self.trackers:
                tracker.reconnected()
        self._sessions += 1

    def watch(self, handle: int, mapping: int, field: str, ref: str) -> None:
        self.fields[handle] = WatchedField(mapping, field, ref)  # type: ignore[arg-type]

    def observe(self, items: Sequence[ua.MonitoredItemNotification],
                now_ns: int) -> list[wire.BatchEvent]:
        """The batch events one notification message means, mapping by mapping."""
        per_mapping: dict[int, list[Observation]] = {}
        for item in items:
            watched = self.fields.get(item.ClientHandle)
            if watched is None:
                continue
            obs = self._observation(watched, item.Value, now_ns)
            if obs is not None:
                per_mapping.setdefault(watched.mapping, []).append(obs)
        events: list[wire.BatchEvent] = []
        for index, observations in per_mapping.items():
            for tracked in self.trackers[index].observe(observations):
                self._log(self.mappings[index], tracked)
                metrics.BATCH_EVENTS.labels(source=f"opcua {self.server}",
                                            kind=tracked.event.kind).inc()
                events.append(tracked.event)
        return events

    def _observation(self, watched: WatchedField, dv: ua.DataValue,
                     now_ns: int) -> Observation | None:
        if quality_of(dv.StatusCode) == "bad":
            return None  # no value: the field keeps what it showed
        raw = dv.Value.Value if dv.Value is not None else None
        mapping = self.mappings[watched.mapping]
        try:
            value = field_value(watched.field, raw, variant_name(raw, dv),
                                mapping.running_values)
        except FieldProblem as exc:
            self.report(watched.ref, f"{watched.field} of {mapping.name}: {exc}; the field "
                                     "keeps its last value", variant_name(raw, dv))
            return None
        self.clear(watched.ref)
        ts = epoch_ns(dv.SourceTimestamp) or epoch_ns(dv.ServerTimestamp) or now_ns
        return Observation(watched.field, value, ts)

    def report(self, ref: str, problem: str, kind: str | None = None) -> bool:
        """Remember a node's problem, log it when its ``kind`` is new; True then.

        ``kind`` (default: the problem text) keeps a node whose text changes every
        second to one warning per session, not one per value.
        """
        kind = kind or problem
        new = self.problems.get(ref) != kind
        self.problems[ref] = kind
        metrics.OPCUA_NODE_PROBLEM.labels(server=self.server, node=ref).set(1)
        if new:
            logger.warning("opcua %s: node %s: %s", self.server, ref, problem)
        return new

    def clear(self, ref: str) -> None:
        if self.problems.pop(ref, None) is not None:
            metrics.OPCUA_NODE_PROBLEM.labels(server=self.server, node=ref).set(0)

    def _log(self, mapping: BatchMapping, tracked: TrackedEvent) -> None:
        ev = tracked.event
        if tracked.inferred:
            metrics.BATCH_ENDS_INFERRED.labels(source=f"opcua {self.server}",
                                               asset=mapping.asset).inc()
            quantity = ("quantity unknown" if ev.quantity is None
                        else f"quantity {ev.quantity:g} {ev.unit or ''}".rstrip())
            logger.warning(
                "opcua %s: %s: batch %s ended while the session was down and the server no "
                "longer shows its end (another batch took the slot): the end of batch %s is "
                "inferred at %s, the %s (the latest it can have been), %s",
                self.server, mapping.name, ev.batch_id, ev.batch_id, ev.ts_ns,
                tracked.time_from, quantity)
        elif tracked.reconciled and ev.kind == "end":
            logger.warning(
                "opcua %s: %s: batch %s ended while the session was down (the source now "
                "shows another batch or none); end sent at %s, taken from the %s",
                self.server, mapping.name, ev.batch_id, ev.ts_ns, tracked.time_from)
        else:
            logger.info("opcua %s: %s: batch %s %s at %s (from the %s)", self.server,
                        mapping.name, ev.batch_id, ev.kind, ev.ts_ns, tracked.time_from)
