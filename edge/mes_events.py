"""Batch events an MES hands over itself (HTTP endpoint, drop folder): parsed and validated.

One event, as JSON (an object, or a list of them) or as a CSV row with a header::

    {"asset": "L1-press", "batch_id": "B-0001", "product": "clinker",
     "kind": "end", "ts": "2025-01-06T08:00:00Z", "quantity": 41.5, "unit": "t"}

    asset,batch_id,product,kind,ts,quantity,unit
    L1-press,B-0001,clinker,end,2025-01-06T08:00:00Z,41.5,t

``ts`` is ISO 8601 with ``Z`` or an offset (a naive time is refused: whose
local time would it be?); ``quantity`` and ``unit`` are optional for ``start``
and ``end``, required for ``quantity``. A request or file is taken whole or
refused whole: ``MesEventError`` carries a reason code and names each bad
event by its position, so the sender can fix it and send again.
"""

from __future__ import annotations

import csv
import io
import math
import unicodedata
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final, Literal

import orjson
from pydantic import AwareDatetime, Field, ValidationError, model_validator

from edge import wire
from edge.settings import Frozen, describe_validation

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_US: Final = timedelta(microseconds=1)
CSV_COLUMNS: Final = ("asset", "batch_id", "product", "kind", "ts", "quantity", "unit")
MAX_EVENTS: Final = 10_000  # per request or file

Reason = Literal["malformed_json", "malformed_csv", "invalid_event", "too_many"]
# no control characters: ingest refuses a frame with a NUL whole (ingest.screen)
Text = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f]+$")]
Unit = Annotated[str, Field(min_length=1, max_length=50, pattern=r"^[^\x00-\x1f]+$")]


class MesEventError(ValueError):
    """A request or file of MES events that is refused as a whole, with the reason."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason: Reason = reason


class MesEvent(Frozen):
    asset: Text
    batch_id: Text
    product: Annotated[str, Field(max_length=200, pattern=r"^[^\x00-\x1f]*$")] = ""
    kind: Literal["start", "end", "quantity"]
    ts: AwareDatetime
    quantity: float | None = None
    unit: Unit | None = None

    @model_validator(mode="after")
    def _check(self) -> MesEvent:
        for name in ("asset", "batch_id", "product", "unit"):
            text = getattr(self, name)
            if text is not None and not unicodedata.is_normalized("NFC", text):
                # the wire takes NFC only (one spelling per name): a frame with another
                # would be refused whole downstream, taking the other events with it
                raise ValueError(f"{name} {text!r} is not Unicode NFC; send it normalised")
        if self.quantity is not None and not math.isfinite(self.quantity):
            raise ValueError("quantity must be a finite number")
        if self.kind == "quantity" and (self.quantity is None or self.unit is None):
            raise ValueError("a quantity event needs quantity and unit")
        if self.ts <= _EPOCH:
            raise ValueError("ts must be after 1970-01-01")
        return self

    def to_wire(self) -> wire.BatchEvent:
        ts_ns = ((self.ts - _EPOCH) // _US) * 1000  # exact to the microsecond
        return wire.BatchEvent(self.asset, self.batch_id, self.product, self.kind, ts_ns,
                               self.quantity, self.unit)


def validate_events(raw: Sequence[Any]) -> list[wire.BatchEvent]:
    """Every item as a wire event, or MesEventError naming each bad one (at most 5)."""
    if len(raw) > MAX_EVENTS:
        raise MesEventError("too_many", f"{len(raw)} events, at most {MAX_EVENTS} at once")
    events: list[wire.BatchEvent] = []
    bad: list[str] = []
    for i, item in enumerate(raw):
        try:
            events.append(MesEvent.model_validate(item).to_wire())
        except ValidationError as exc:
            bad.append(describe_validation(exc, prefix=f"event[{i}]"))
    if bad:
        more = f"; and {len(bad) - 5} more bad events" if len(bad) > 5 else ""
        raise MesEventError("invalid_event", "; ".join(bad[:5]) + more)
    return events


def events_of_json(data: bytes) -> list[wire.BatchEvent]:
    """A JSON object or list of objects as events."""
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise MesEventError("malformed_json", f"not JSON: {exc}") from exc
    items = parsed if isinstance(parsed, list) else [parsed]
    if not items:
        raise MesEventError("invalid_event", "no event in the list")
    return validate_events(items)


def events_of_csv(text: str) -> list[wire.BatchEvent]:
    """CSV with a header naming at least asset, batch_id, kind, ts; empty cells are absent."""
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    missing = [c for c in ("asset", "batch_id", "kind", "ts") if c not in header]
    unknown = [c for c in header if c not in CSV_COLUMNS]
    if missing or unknown:
        raise MesEventError("malformed_csv", f"header {','.join(header)!r}: expected the "
                            f"columns {','.join(CSV_COLUMNS)} (missing {missing}, "
                            f"unknown {unknown})")
    try:
        rows = [{k: v for k, v in row.items() if v not in ("", None)} for row in reader]
    except csv.Error as exc:
        raise MesEventError("malformed_csv", f"line {reader.line_num}: {exc}") from exc
    if not rows:
        raise MesEventError("invalid_event", "no event in the file")
    return validate_events(rows)
