"""What the server accepts of one record: the one acceptance path of ingest and compute.

In this order, each refusal a reason code that becomes the DLQ reason:

==================  =========  ======================================================
check               scope      reason
==================  =========  ======================================================
``edge.wire``       whole      every ``WireReason``: size, envelope, JSON, fields,
``decode``                     key (unknown, revoked, outside its validity),
                               signature, canonical form, name pattern
site binding        whole      ``not_bound``: the frame claims a site that is not its
                               gateway's ``[gateways.<id>] site``
frame age           whole      ``too_old``: ``sent_ns`` older than ``[limits]
                               max_frame_age_s`` (when set)
storability         whole      ``bad_value`` (``ingest.screen``): NUL, seq > bigint
meter/asset         items      ``not_bound``: readings of meters (batch events of
binding                        assets) outside the gateway's ``meters`` / ``assets``
                               globs; the rest of the frame lands
time limits         items      ``future_timestamp`` / ``before_commissioning``
                               (``ingest.screen``)
==================  =========  ======================================================

A machine state is a reading under its asset's name (channel ``state``): it is
bound when the name matches ``meters`` or ``assets``.

What needs the database — a replay of a frame retired by ``ledger reset``
(``replayed``), a sequence conflict (``seq_conflict``), a reading whose key holds
another gateway's or another value (``reading_conflict``) — is decided in the
landing transaction (``ingest.store``), after this.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, get_args

from edge.wire import BatchFrame, Frame, KeyRing, Message, WireError, WireReason, decode
from ingest.config import ServerConfig
from ingest.screen import Limits, Verdict, screen

# Reasons of the server's own beyond the wire's: here (acceptance), the time screen
# (ingest.screen), the landing transaction (ingest.store) and the Kafka intake
# (ingest.kafka_bounds). Every pp.reason ingest and its bridge write is one of DLQ_REASONS.
ServerReason = Literal[
    "not_bound", "too_old", "future_timestamp", "before_commissioning", "replayed",
    "seq_conflict", "reading_conflict", "store_rejected", "unreadable_batch"]
DLQ_REASONS: Final = (*get_args(WireReason), *get_args(ServerReason))


class Refused(ValueError):
    """A whole message the server does not accept; ``reason`` is the DLQ reason."""

    def __init__(self, reason: str, detail: str, gateway: str | None = None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.gateway = gateway


@dataclass(frozen=True)
class Binding:
    """``[gateways.<id>]`` site, meters and assets: what the gateway may report."""

    site: str
    meters: Sequence[str]
    assets: Sequence[str]
    _meter_re: re.Pattern[str] = field(init=False, repr=False)
    _asset_re: re.Pattern[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_meter_re", _globs(self.meters))
        object.__setattr__(self, "_asset_re", _globs(self.assets))

    def meter_bound(self, meter: str, channel: str) -> bool:
        if self._meter_re.fullmatch(meter) is not None:
            return True
        return channel == "state" and self._asset_re.fullmatch(meter) is not None

    def asset_bound(self, asset: str) -> bool:
        return self._asset_re.fullmatch(asset) is not None


def _globs(patterns: Sequence[str]) -> re.Pattern[str]:
    """Glob patterns (``*``, ``?``, ``[...]``, case-sensitive) as one regex; none: nothing."""
    if not patterns:
        return re.compile(r"(?!)")
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


@dataclass(frozen=True)
class Acceptance:
    """The server's keys, bindings and frame age limit (from ``server.toml``)."""

    keys: Mapping[str, KeyRing]
    bindings: Mapping[str, Binding]
    max_bytes: int
    max_age_ns: int = 0  # 0: no limit

    @classmethod
    def from_config(cls, cfg: ServerConfig) -> Acceptance:
        return cls(
            keys=cfg.public_keys(),
            bindings={gw: Binding(g.site, tuple(g.meters), tuple(g.assets))
                      for gw, g in cfg.gateways.items()},
            max_bytes=cfg.limits.max_frame_bytes,
            max_age_ns=int(cfg.limits.max_frame_age_s * 1e9),
        )

    def admit(self, data: bytes, limits: Limits) -> tuple[Message, Verdict]:
        """The decoded message and what of it lands; Refused when nothing of it may."""
        try:
            msg = decode(data, self.keys, self.max_bytes)
        except WireError as exc:  # its message starts with the reason, as a DLQ detail
            raise Refused(exc.reason, str(exc)) from exc
        where = f"gateway {msg.gateway} seq {msg.seq}"
        binding = self.bindings[msg.gateway]  # decode found its key: it is configured
        if msg.site != binding.site:
            raise Refused("not_bound", f"{where}: claims site {msg.site!r}; the gateway is "
                                       f"bound to site {binding.site!r}", msg.gateway)
        if self.max_age_ns and msg.sent_ns < limits.now_ns - self.max_age_ns:
            age_s = (limits.now_ns - msg.sent_ns) / 1e9
            raise Refused("too_old", f"{where}: sealed {age_s:.0f} s ago, beyond [limits] "
                                     f"max_frame_age_s = {self.max_age_ns / 1e9:g}", msg.gateway)
        verdict = screen(msg, limits)
        if verdict.reason == "bad_value" and verdict.rejects_all:
            raise Refused("bad_value", verdict.detail, msg.gateway)
        return msg, _with_binding(msg, binding, verdict, where)


def _unbound(msg: Message, binding: Binding) -> list[int]:
    if isinstance(msg, BatchFrame):
        return [i for i, e in enumerate(msg.events) if not binding.asset_bound(e.asset)]
    pairs = set(zip(msg.meter, msg.channel, strict=True))
    if all(binding.meter_bound(m, c) for m, c in pairs):  # the usual case: one pass per name
        return []
    return [i for i, (m, c) in enumerate(zip(msg.meter, msg.channel, strict=True))
            if not binding.meter_bound(m, c)]


def _with_binding(msg: Message, binding: Binding, verdict: Verdict, where: str) -> Verdict:
    """The time screen's verdict with the readings/events outside the binding cut too."""
    unbound = _unbound(msg, binding)
    if not unbound:
        return verdict
    total = len(msg) if isinstance(msg, Frame) else len(msg.events)
    cut = set(unbound)
    keep = [i for i in (range(total) if verdict.keep is None else verdict.keep) if i not in cut]
    first = (msg.events[unbound[0]].asset if isinstance(msg, BatchFrame)
             else msg.meter[unbound[0]])
    kind = "events of assets" if isinstance(msg, BatchFrame) else "readings of meters"
    detail = (f"{where}: {len(unbound)} of {total} {kind} outside the gateway's binding "
              f"(first: {first!r})" + (f"; {verdict.detail}" if verdict.detail else ""))
    return Verdict(keep, "not_bound", detail)


def admit(data: bytes, keys: Acceptance | Mapping[str, KeyRing], max_bytes: int,
          limits: Limits) -> tuple[Message, Verdict]:
    """``Acceptance.admit``; a plain key mapping (tools, tests) checks no binding or age."""
    if isinstance(keys, Acceptance):
        return keys.admit(data, limits)
    try:
        msg = decode(data, keys, max_bytes)
    except WireError as exc:
        raise Refused(exc.reason, str(exc)) from exc
    verdict = screen(msg, limits)
    if verdict.reason == "bad_value" and verdict.rejects_all:
        raise Refused("bad_value", verdict.detail, msg.gateway)
    return msg, verdict
