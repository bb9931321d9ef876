"""The gateway's clock: the time the agent stamps on what it reads and sends.

Every place the agent stamps *gateway* time goes through one
:class:`GatewayClock`: Modbus readings of meters without a device clock, the
OPC UA fallback when a value carries no timestamp, and each frame's ``sent_ns``.
The spool's own bookkeeping (``created_ns``, age metrics) stays on the system
clock.

Device clocks (a Modbus profile's ``clock`` point) and OPC UA source
timestamps are the device's word and are passed on, unless the gateway can see
they are wrong: it is the only party that compares them with a trusted
(NTP-synchronised) clock at the moment of reading; compute only sees the
stamps, so a meter running 95 s ahead would shift its energy into the wrong
batch unnoticed. :func:`judge_device_time` decides (pure), per kind of stamp:

* a Modbus device clock, read with the registers, that lies more than
  ``device_tolerance_s`` either way outside the gateway times the request was
  sent and its answer received (the register was read in between; a stalled
  event loop widens that window, which must not make a right clock look
  wrong): the cycle's readings keep the gateway stamps of their requests
  instead (halfway between each request and its answer, ``edge.modbus``);
* an OPC UA source (or server) timestamp *ahead* of the gateway's receive time
  by more than the tolerance: no real value comes from the future, so it gets
  the receive time. A timestamp *behind* is kept: it may be an old value, e.g.
  the first notification of a value that has not changed for an hour.

:class:`DeviceClocks` applies that per meter: the gauge
``edge_device_clock_offset_seconds``, the counter
``edge_device_clock_restamped_total``, and one warning when a meter's clock
goes out of tolerance and one when it is back.

The gateway clocks:

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
    device_tolerance_s = 10.0           # device clocks further off are not passed on
    max_answer_s = 2.0                  # Modbus answers slower than this: readings dropped

``device_tolerance_s`` (default 10 s, any mode) is in the gateway clock's time
base: simulated seconds with ``scaled``. It must exceed what a correct device
shows: clock resolution (whole seconds), the time between the device sampling
and the gateway reading, and the gateway's own NTP error.

``max_answer_s`` (default 2 s, gateway clock too) bounds how uncertain a
Modbus reading's time may be. A reading is stamped halfway between its
request's send and its answer, and the device sampled somewhere in between: an
answer that took longer (a device or gateway that stalled, a loop that could
not read the socket) leaves its readings' time unknown by more than half of
it, so they are not sent (``edge_read_errors{kind="slow_answer"}``; a meter's
first is also said in a warning). Counters are cumulative: the next reading in time
covers the interval, nothing is lost but resolution.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Final, Literal, Protocol

from prometheus_client import Counter, Gauge
from pydantic import AwareDatetime, Field, model_validator

from edge import metrics
from edge.settings import Frozen

__all__ = [
    "DEVICE_TOLERANCE_S",
    "MAX_ANSWER_S",
    "ClockConfig",
    "DeviceClocks",
    "DeviceStamp",
    "GatewayClock",
    "ScaledClock",
    "SystemClock",
    "epoch_ns_of",
    "gateway_clock",
    "judge_device_time",
]

logger = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SCALED_KEYS = ("origin", "origin_real_unix_ns", "speed")
# a correct device clock shows whole seconds and a value sampled up to a poll or publishing
# interval earlier; NTP keeps both ends within milliseconds: 10 s leaves ample room
DEVICE_TOLERANCE_S: Final = 10.0
# a Modbus TCP answer takes milliseconds, one through a serial gateway a few hundred: 2 s
# allows for both and bounds a reading's time to within a second
MAX_ANSWER_S: Final = 2.0


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
    # s, either mode: a device clock further off the gateway's is not passed on (module doc)
    device_tolerance_s: Annotated[float, Field(gt=0, le=86_400, allow_inf_nan=False)] = (
        DEVICE_TOLERANCE_S)
    # s, either mode: a Modbus answer slower than this leaves its readings' time unknown
    max_answer_s: Annotated[float, Field(gt=0, le=3_600, allow_inf_nan=False)] = MAX_ANSWER_S

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


# ----------------------------------------------------------------- device clocks

# "clock": a Modbus clock register read with the values, so it must match the gateway
# time of the request either way; "source": an OPC UA source (or server) timestamp, which
# may be an old value's and is wrong only when it lies ahead
DeviceTime = Literal["clock", "source"]
Verdict = Literal["within", "ahead", "behind"]


@dataclass(frozen=True, slots=True)
class DeviceStamp:
    """What :func:`judge_device_time` decided for one device time."""

    ts_ns: int  # the stamp to send: the device's time, or the gateway's
    offset_ns: int  # device time minus the nearest gateway time it may have been taken at
    verdict: Verdict  # where the device time lies against the tolerance
    restamped: bool  # ts_ns is the gateway's time

    @property
    def says_clock_is_off(self) -> bool | None:
        """True/False: the device's clock is off / within tolerance; None: no evidence.

        An OPC UA timestamp far behind is no evidence: it may be an old value's.
        """
        if self.verdict == "behind" and not self.restamped:
            return None
        return self.restamped


def judge_device_time(
    device_ns: int, gateway_ns: int, tolerance_ns: int, kind: DeviceTime,
    gateway_until_ns: int | None = None,
) -> DeviceStamp:
    """Keep a device's time, or stamp the gateway's (pure; see the module docstring).

    The device time was taken while the gateway clock went from ``gateway_ns``
    to ``gateway_until_ns`` (``clock``: request sent, answer received; None: an
    instant, as ``source``'s receive time); the offset is from the nearer end,
    0 inside. An offset of exactly ``tolerance_ns`` is still within. A
    restamped reading gets ``gateway_ns``.
    """
    until = gateway_ns if gateway_until_ns is None else max(gateway_ns, gateway_until_ns)
    offset = device_ns - min(max(device_ns, gateway_ns), until)
    if offset > tolerance_ns:
        return DeviceStamp(gateway_ns, offset, "ahead", True)
    if offset >= -tolerance_ns:
        return DeviceStamp(device_ns, offset, "within", False)
    if kind == "source":
        return DeviceStamp(device_ns, offset, "behind", False)
    return DeviceStamp(gateway_ns, offset, "behind", True)


@dataclass(slots=True)
class _MeterClock:
    offset: Gauge  # the meter's labelled children, looked up once
    restamped: Counter
    off: bool = False  # out of tolerance at the last evidence


_WHAT: Final[dict[DeviceTime, tuple[str, str]]] = {
    # kind: (what is compared, what the edge stamps meanwhile)
    "clock": ("device clock", "the gateway time of each request"),
    "source": ("OPC UA source timestamps", "the gateway's receive time"),
}


class DeviceClocks:
    """Device times of the meters one poller or subscriber reads, judged against the gateway.

    Applies :func:`judge_device_time` and keeps per meter the last offset
    (``edge_device_clock_offset_seconds``), the readings restamped
    (``edge_device_clock_restamped_total``) and whether the clock is off, so a
    warning is logged once when it goes out of tolerance and once when it is back.
    """

    def __init__(self, tolerance_s: float, kind: DeviceTime) -> None:
        if not (math.isfinite(tolerance_s) and tolerance_s > 0):
            raise ValueError(f"device clock tolerance must be > 0 s, got {tolerance_s!r}")
        self.tolerance_s = float(tolerance_s)
        self.tolerance_ns = round(tolerance_s * 1e9)
        self.kind: DeviceTime = kind
        self._meters: dict[str, _MeterClock] = {}

    def stamp(self, meter: str, device_ns: int, gateway_ns: int, readings: int = 1,
              gateway_until_ns: int | None = None) -> int:
        """The time to stamp ``readings`` readings of ``meter`` read with ``device_ns``.

        ``gateway_ns``, ``gateway_until_ns``: as :func:`judge_device_time`.
        """
        judged = judge_device_time(device_ns, gateway_ns, self.tolerance_ns, self.kind,
                                   gateway_until_ns)
        off = judged.says_clock_is_off
        if off is None:
            return judged.ts_ns
        state = self._meters.get(meter)
        if state is None:
            state = self._meters[meter] = _MeterClock(
                metrics.DEVICE_CLOCK_OFFSET.labels(meter=meter),
                metrics.DEVICE_CLOCK_RESTAMPED.labels(meter=meter))
        state.offset.set(judged.offset_ns / 1e9)
        if off:
            state.restamped.inc(readings)
        if off != state.off:
            state.off = off
            self._log_change(meter, judged)
        return judged.ts_ns

    def is_off(self, meter: str) -> bool:
        """Whether ``meter``'s clock was out of tolerance at the last evidence."""
        state = self._meters.get(meter)
        return state is not None and state.off

    def _log_change(self, meter: str, judged: DeviceStamp) -> None:
        what, instead = _WHAT[self.kind]
        offset_s = judged.offset_ns / 1e9
        if judged.restamped:
            logger.warning(
                "meter %s: %s %+.1f s off the gateway clock, more than the %g s tolerance: "
                "its readings get %s until it is back within tolerance",
                meter, what, offset_s, self.tolerance_s, instead)
        else:
            logger.warning(
                "meter %s: %s back within the %g s tolerance (%+.1f s off the gateway "
                "clock): its readings carry the device's time again",
                meter, what, self.tolerance_s, offset_s)
