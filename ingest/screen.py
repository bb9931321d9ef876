"""Pure checks of decoded messages beyond the wire contract: time limits and storability.

``edge.wire.decode`` proves a message is well-formed and signed; this module
decides what of it may land: readings too far in the future (gateway clock
wrong) or older than their meter's commissioning are rejected *per reading* —
the rest of the frame still lands, and the frame goes to the DLQ as well with
the count and reason. Values the database cannot store reject the whole message
(``bad_value``) before it reaches the database: a NUL character in any text, and
a ``seq`` beyond bigint. That is the only integer needing a check: the wire's JSON
decoder turns integers above 2^64 − 1 into floats (and refuses those beyond
double precision), reading values and quantities go into float8 columns, and
timestamps beyond now + skew or before 2000 are cut by the time limits. Anything
else the database refuses for its data goes to the DLQ as ``store_rejected``
(``ingest.dbretry``), so one poison message never stalls a partition.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from edge.wire import BatchFrame, Frame, Message

BIGINT_MAX: Final = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Limits:
    now_ns: int
    future_skew_ns: int
    earliest_ns: int  # floor for meters without a commissioning date
    commissioning_ns: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to land of one message: ``keep`` indices (None = all) and why others were cut."""

    keep: list[int] | None
    reason: str | None = None  # DLQ reason when anything was rejected
    detail: str = ""

    @property
    def rejects_all(self) -> bool:
        return self.keep == [] or (self.keep is None and self.reason is not None)


ACCEPT_ALL: Final = Verdict(keep=None)


def _unstorable_text(values: Iterable[str]) -> str | None:
    return next((v for v in set(values) if "\x00" in v), None)


def _storable(msg: Message) -> str | None:
    if msg.seq > BIGINT_MAX:
        return f"seq {msg.seq} exceeds bigint"
    texts: list[str] = [msg.site, msg.gateway]
    if isinstance(msg, Frame):
        for col in (msg.meter, msg.channel, msg.unit):
            bad = _unstorable_text(col)
            if bad is not None:
                return f"text {bad!r} contains NUL"
    else:
        for ev in msg.events:
            texts += [ev.asset, ev.batch_id, ev.product, ev.unit or ""]
    bad = _unstorable_text(texts)
    return None if bad is None else f"text {bad!r} contains NUL"


def screen(msg: Message, limits: Limits) -> Verdict:
    """Decide what of a decoded message lands; pure."""
    unstorable = _storable(msg)
    if unstorable is not None:
        return Verdict([], "bad_value", f"gateway {msg.gateway} seq {msg.seq}: {unstorable}")
    if isinstance(msg, BatchFrame):
        pairs = [(e.batch_id, e.ts_ns) for e in msg.events]
    else:
        pairs = list(zip(msg.meter, msg.ts_ns, strict=True))
    return _screen_times(msg, pairs, limits)


def _screen_times(msg: Message, pairs: list[tuple[str, int]], limits: Limits) -> Verdict:
    latest = limits.now_ns + limits.future_skew_ns
    floor, commissioning = limits.earliest_ns, limits.commissioning_ns
    is_frame = isinstance(msg, Frame)
    future: list[int] = []
    early: list[int] = []
    for i, (name, ts) in enumerate(pairs):
        if ts > latest:
            future.append(i)
        elif ts < (commissioning.get(name, floor) if is_frame else floor):
            early.append(i)
    if not future and not early:
        return ACCEPT_ALL
    cut = set(future) | set(early)
    keep = [i for i in range(len(pairs)) if i not in cut]
    reason = "future_timestamp" if len(future) >= len(early) else "before_commissioning"
    first = pairs[(future or early)[0]]
    detail = (
        f"gateway {msg.gateway} seq {msg.seq}: {len(future)} of {len(pairs)} items beyond "
        f"now + skew, {len(early)} before commissioning (first: {first[0]} at {first[1]} ns)"
    )
    return Verdict(keep, reason, detail)
