"""Fault injection: the scenario's faults and pure look-ups by meter and time.

Counter faults (rollover, reset, spike) change what the meter's counter shows
and are accounted in the ground truth; transport faults (dropout, busy, stuck,
clock skew, OPC UA restart) change only what a client sees; ``late_end``
delays the publication of a batch end event, never the batch's true end.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Fault(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Rollover(_Fault):
    """The counter starts ``margin`` (counter unit) below its wrap, so it rolls over."""

    kind: Literal["rollover"]
    meter: str
    margin: Annotated[float, Field(gt=0)]


class Reset(_Fault):
    """Reset or replacement at ``at_s``: the counter restarts from ``new_counter``."""

    kind: Literal["reset"]
    meter: str
    at_s: Annotated[int, Field(ge=0)]
    new_counter: Annotated[float, Field(ge=0)] = 0.0


class Spike(_Fault):
    """At ``at_s`` the counter jumps by ``amount`` (counter unit) that is not energy."""

    kind: Literal["spike"]
    meter: str
    at_s: Annotated[int, Field(ge=0)]
    amount: Annotated[float, Field(gt=0)]


class _Window(_Fault):
    meter: str
    start_s: Annotated[int, Field(ge=0)]
    end_s: Annotated[int, Field(gt=0)]

    def active(self, t: float) -> bool:
        return self.start_s <= t < self.end_s


class Dropout(_Window):
    """No answer (a port whose every unit drops out refuses connections)."""

    kind: Literal["dropout"]


class Busy(_Window):
    """Modbus exception 06 (server device busy) with ``probability`` per request."""

    kind: Literal["busy"]
    probability: Annotated[float, Field(gt=0, le=1)] = 1.0


class Stuck(_Window):
    """Every register / variable of the meter keeps its value from ``start_s``."""

    kind: Literal["stuck"]


class ClockSkew(_Window):
    """Device clock and OPC UA source timestamps run ``skew_s`` off true time."""

    kind: Literal["clock_skew"]
    skew_s: float


class OpcuaRestart(_Fault):
    """The OPC UA server stops at ``at_s`` and is back ``down_s`` later (simulated s)."""

    kind: Literal["opcua_restart"]
    at_s: Annotated[int, Field(ge=0)]
    down_s: Annotated[int, Field(ge=0)] = 30


class LateEnd(_Fault):
    """The batch's end event is published ``delay_s`` after its true end."""

    kind: Literal["late_end"]
    batch: str
    delay_s: Annotated[int, Field(gt=0)]


Fault = Annotated[
    Rollover | Reset | Spike | Dropout | Busy | Stuck | ClockSkew | OpcuaRestart | LateEnd,
    Field(discriminator="kind"),
]


class FaultBook:
    """Faults indexed for fast look-up by meter and simulated time."""

    def __init__(self, faults: Iterable[object]) -> None:
        self.windows: dict[str, list[_Window]] = {}
        self.resets: dict[tuple[str, int], Reset] = {}
        self.spikes: dict[tuple[str, int], float] = {}
        self.rollovers: dict[str, float] = {}
        self.late_ends: dict[str, int] = {}
        self.restarts: list[OpcuaRestart] = []
        for f in faults:
            self._add(f)

    def _add(self, f: object) -> None:
        if isinstance(f, _Window):
            self.windows.setdefault(f.meter, []).append(f)
        elif isinstance(f, Reset):
            self.resets[(f.meter, f.at_s)] = f
        elif isinstance(f, Spike):
            key = (f.meter, f.at_s)
            self.spikes[key] = self.spikes.get(key, 0.0) + f.amount
        elif isinstance(f, Rollover):
            self.rollovers[f.meter] = f.margin
        elif isinstance(f, LateEnd):
            self.late_ends[f.batch] = f.delay_s
        elif isinstance(f, OpcuaRestart):
            self.restarts.append(f)

    def _find(self, meter: str, kind: str, t: float) -> _Window | None:
        for w in self.windows.get(meter, ()):
            if w.kind == kind and w.active(t):  # type: ignore[attr-defined]
                return w
        return None

    def dropout(self, meter: str, t: float) -> bool:
        return self._find(meter, "dropout", t) is not None

    def stuck(self, meter: str, t: float) -> bool:
        return self._find(meter, "stuck", t) is not None

    def busy_probability(self, meter: str, t: float) -> float:
        w = self._find(meter, "busy", t)
        return w.probability if isinstance(w, Busy) else 0.0

    def skew_s(self, meter: str, t: float) -> float:
        w = self._find(meter, "clock_skew", t)
        return w.skew_s if isinstance(w, ClockSkew) else 0.0

    def opcua_down(self, t: float) -> bool:
        return any(r.at_s <= t < r.at_s + r.down_s for r in self.restarts)

    def transport_flags(self, meter: str, start: float, end: float) -> list[str]:
        """Names of the transport faults overlapping ``[start, end)`` for a meter."""
        return sorted({w.kind for w in self.windows.get(meter, ())  # type: ignore[attr-defined]
                       if w.start_s < end and w.end_s > start})
