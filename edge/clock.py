"""The gateway's clock: the time the agent stamps on what it reads and sends.

Every place the agent stamps *gateway* time goes through one
:class:`GatewayClock`: Modbus readings of meters without a device clock, the
OPC UA fallback when a value carries no timestamp, and each frame's ``sent_ns``.
Device clocks and OPC UA source timestamps are the device's word and are never
touched; the spool's own bookkeeping (``created_ns``, age metrics) stays on the
system clock.

* :class:`SystemClock` (the default, and the only one for production): UTC
  epoch ns from ``time.time_ns()``.
* :class:`ScaledClock`: **for simulation drills and commissioning against a
  simulator only, never in production.** A simulator running ``speed``× faster
  than real time stamps its device clocks and OPC UA values in *simulated*
  time; a gateway stamping real time would give compute two time bases. The
  scaled clock maps real time onto the simulator's::

      now = origin_ns + (time.time_ns() - origin_real_ns) * speed

  in integer arithmetic (``speed`` as the exact ratio of its float), so
  simulated time ``t`` seconds after ``origin`` is read at real
  ``origin_real_ns + t / speed``. The simulator publishes the three values in
  its endpoints file (docs/simulators.md, ``"clock"``).

Config, optional (``mode = "system"`` when absent)::

    [clock]
    mode = "scaled"                     # "system" | "scaled"
    origin = "2025-01-06T06:00:00Z"     # ISO 8601 with Z or an offset
    origin_real_unix_ns = 1767225600000000000
    speed = 300.0                       # simulated seconds per real second, > 0
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal, Protocol

from pydantic import AwareDatetime, Field, model_validator

from edge.settings import Frozen

__all__ = [
    "ClockConfig",
    "GatewayClock",
    "ScaledClock",
    "SystemClock",
    "epoch_ns_of",
    "gateway_clock",
]

logger = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SCALED_KEYS = ("origin", "origin_real_unix_ns", "speed")


class GatewayClock(Protocol):
    """What the agent stamps gateway time with."""

    def now_ns(self) -> int:
        """Now, as UTC epoch nanoseconds."""
        ...


class SystemClock:
    """The gateway's system time (``time.time_ns()``)."""

    def now_ns(self) -> int:
        return time.time_ns()

    def __repr__(self) -> str:
        return "SystemClock()"


class ScaledClock:
    """Simulated time of a simulator paced at ``speed``× real time (drills only, see module).

    ``origin_ns`` (simulated time, epoch ns) is what the clock reads at the real
    instant ``origin_real_ns`` (epoch ns); ``real_ns`` is the real time source
    (``time.time_ns``; injectable for tests).
    """

    def __init__(
        self,
        origin_ns: int,
        origin_real_ns: int,
        speed: float,
        real_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        if not (math.isfinite(speed) and speed > 0):
            raise ValueError(f"scaled clock: speed must be a finite number > 0, got {speed!r}")
        self.origin_ns = int(origin_ns)
        self.origin_real_ns = int(origin_real_ns)
        self.speed = float(speed)
        # exact: every finite float is a ratio of integers
        self._num, self._den = self.speed.as_integer_ratio()
        self._real_ns = real_ns

    def at(self, real_ns: int) -> int:
        """The scaled time at real epoch ns ``real_ns`` (pure; floors to whole ns)."""
        return self.origin_ns + (real_ns - self.origin_real_ns) * self._num // self._den

    def now_ns(self) -> int:
        return self.at(self._real_ns())

    def __repr__(self) -> str:
        return (f"ScaledClock(origin_ns={self.origin_ns}, "
                f"origin_real_ns={self.origin_real_ns}, speed={self.speed!r})")


def epoch_ns_of(when: datetime) -> int:
    """An aware datetime as UTC epoch ns, exactly (no float seconds)."""
    return (when - _EPOCH) // timedelta(microseconds=1) * 1000


class ClockConfig(Frozen):
    """The agent config's optional ``[clock]`` table (see the module docstring)."""

    mode: Literal["system", "scaled"] = "system"
    origin: AwareDatetime | None = None  # naive times are rejected: UTC must be explicit
    origin_real_unix_ns: Annotated[int, Field(gt=0, lt=2**63)] | None = None
    speed: Annotated[float, Field(gt=0, le=1e6, allow_inf_nan=False)] | None = None

    @model_validator(mode="after")
    def _check_mode(self) -> ClockConfig:
        given = [k for k in _SCALED_KEYS if getattr(self, k) is not None]
        if self.mode == "system" and given:
            raise ValueError(
                f'{", ".join(given)} only apply to mode = "scaled" (mode is "system")'
            )
        if self.mode == "scaled":
            missing = [k for k in _SCALED_KEYS if getattr(self, k) is None]
            if missing:
                raise ValueError(f'mode = "scaled" needs {", ".join(missing)}')
        return self

    @property
    def origin_ns(self) -> int | None:
        return None if self.origin is None else epoch_ns_of(self.origin)


def gateway_clock(config: ClockConfig) -> GatewayClock:
    """The clock a ``[clock]`` table asks for."""
    if config.mode == "system":
        return SystemClock()
    assert config.origin_ns is not None and config.origin_real_unix_ns is not None
    assert config.speed is not None
    return ScaledClock(config.origin_ns, config.origin_real_unix_ns, config.speed)
