"""Capped exponential backoff with jitter: the one retry schedule of every package.

Every loop that waits for something to come back uses a :class:`Backoff`: the
edge's forwarder (an output down), the Modbus reconnect (a meter down), the
OPC UA session supervisor (a server down), and ingest's waits for Kafka and for
the database. The edge is installed in every role, so ingest and compute import
it from here.

The schedule is pymodbus' and asyncua's: the n-th delay's ceiling is
``min(max_s, initial_s * factor**n)``, and a good attempt starts it over
(``reset``). Jitter spreads the attempts of many clients that lost the same
server at the same moment, so they do not all come back in one burst:

* ``"equal"`` (default): uniform in [ceiling / 2, ceiling]. Never less than
  half the ceiling, so a logged "retrying in X s" stays meaningful.
* ``"full"``: uniform in [0, ceiling] (AWS' "full jitter"): the widest spread,
  for many clients of one server.
* ``"none"``: exactly the ceiling (golden tests, reproducible logs).

The class is pure: no clock, no sleeping; the caller sleeps how it must
(``asyncio.sleep``, ``threading.Event.wait``). The random source is injectable
so tests can pin it.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Literal, get_args

__all__ = ["Backoff", "Jitter"]

Jitter = Literal["equal", "full", "none"]


class Backoff:
    """The delays between attempts; ``next_delay`` after a failure, ``reset`` after success."""

    def __init__(
        self,
        initial_s: float,
        max_s: float,
        *,
        factor: float = 2.0,
        jitter: Jitter = "equal",
        rng: Callable[[], float] = random.random,
    ) -> None:
        if not initial_s > 0:
            raise ValueError(f"backoff initial_s must be > 0, got {initial_s}")
        if not max_s >= initial_s:
            raise ValueError(f"backoff max_s ({max_s}) must be >= initial_s ({initial_s})")
        if not factor >= 1:
            raise ValueError(f"backoff factor must be >= 1, got {factor}")
        if jitter not in get_args(Jitter):
            raise ValueError(f"backoff jitter must be one of {get_args(Jitter)}, got {jitter!r}")
        self.initial_s = initial_s
        self.max_s = max_s
        self.factor = factor
        self.jitter: Jitter = jitter
        self._rng = rng
        self._ceiling = initial_s
        self.attempts = 0  # delays handed out since the last reset

    @property
    def ceiling(self) -> float:
        """The largest value the next ``next_delay`` may return (seconds)."""
        return self._ceiling

    def next_delay(self) -> float:
        """Seconds to wait before the next attempt; the ceiling grows for the one after."""
        ceiling = self._ceiling
        # grown by multiplication and capped at once: no factor**n overflow after
        # thousands of attempts (a meter that stays down for a week)
        self._ceiling = min(self.max_s, ceiling * self.factor)
        self.attempts += 1
        if self.jitter == "none":
            return ceiling
        share = min(1.0, max(0.0, self._rng()))  # a custom rng outside [0, 1) stays in bounds
        if self.jitter == "full":
            return ceiling * share
        return ceiling / 2 + ceiling / 2 * share

    def reset(self) -> None:
        """The attempt succeeded: the next failure waits ``initial_s`` (ceiling) again."""
        self._ceiling = self.initial_s
        self.attempts = 0

    def __repr__(self) -> str:
        return (f"Backoff({self.initial_s} s x{self.factor} up to {self.max_s} s, "
                f"{self.jitter} jitter, next ceiling {self._ceiling} s)")
