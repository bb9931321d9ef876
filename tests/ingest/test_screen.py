"""Pure parts of ingest: screening, COPY text, classification of arbitrary bytes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from ingest_helpers import T0_NS, Gateway, binding

from edge.wire import MAGIC, encode
from ingest.config import ServerConfig
from ingest.consumer import IngestConsumer
from ingest.screen import Limits, screen
from ingest.store import copy_text

NS = 10**9


def limits(**commissioning: int) -> Limits:
    return Limits(now_ns=T0_NS, future_skew_ns=300 * NS, earliest_ns=0,
                  commissioning_ns=commissioning)


def test_future_readings_are_cut_and_the_rest_kept() -> None:
    f = Gateway("gw1", meters=3).frame(t_ns=T0_NS)
    ts = [T0_NS, T0_NS + 301 * NS, T0_NS + 299 * NS]
    f = type(f)(**{**{k: getattr(f, k) for k in f.__slots__ if k != "version"}, "ts_ns": ts})
    v = screen(f, limits())
    assert v.keep == [0, 2] and v.reason == "future_timestamp"
    assert "1 of 3 items beyond now + skew" in v.detail and "gw1-m1" in v.detail


def test_readings_before_commissioning_are_cut() -> None:
    f = Gateway("gw1", meters=2).frame(t_ns=T0_NS - 10 * NS)
    v = screen(f, limits(**{"gw1-m1": T0_NS}))
    assert v.keep == [0] and v.reason == "before_commissioning"
    assert screen(Gateway("gw1").frame(t_ns=T0_NS), limits()).reason is None


def test_unstorable_text_rejects_the_whole_frame() -> None:
    g = Gateway("gw1", meters=1)
    f = g.frame(t_ns=T0_NS)
    f = type(f)(f.site, f.gateway, f.seq, f.sent_ns, ["bad\x00meter"], f.channel, f.ts_ns,
                f.value, f.unit, f.quality)
    v = screen(f, limits())
    assert v.rejects_all and v.reason == "bad_value" and "NUL" in v.detail


def test_copy_text_escapes_and_round_trips_through_a_copy_parser() -> None:
    f = Gateway("gw1", meters=2).frame(t_ns=T0_NS)
    odd = ["tab\there", "back\\slash\nnew"]
    f = type(f)(f.site, f.gateway, f.seq, f.sent_ns, odd, f.channel, f.ts_ns, [0.1, 2],
                f.unit, f.quality)
    text = copy_text([(f, None), (f, [1])])
    rows = text.splitlines()
    assert len(rows) == 3
    fields = [r.split("\t") for r in rows]
    unescape = {"\\t": "\t", "\\n": "\n", "\\\\": "\\"}

    def un(s: str) -> str:
        out, i = [], 0
        while i < len(s):
            if s[i] == "\\":
                out.append(unescape[s[i : i + 2]])
                i += 2
            else:
                out.append(s[i])
                i += 1
        return "".join(out)

    assert [un(r[2]) for r in fields] == [*odd, odd[1]]
    assert fields[0][4] == "2026-01-01 00:00:00.000000+00" and fields[0][8] == "0"
    assert [float(r[5]) for r in fields] == [0.1, 2.0, 2.0]


GW = Gateway("gw1", meters=3)
CFG = ServerConfig.model_validate({"gateways": {"gw1": binding(GW)}})
VALID = encode(GW.frame(t_ns=T0_NS), GW.key)


class _Rec:
    def __init__(self, value: bytes) -> None:
        self.value, self.key, self.topic, self.partition, self.offset = value, b"k", "t", 0, 7


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.binary(max_size=300),
    st.binary(max_size=200).map(lambda b: MAGIC + b),
    st.tuples(st.integers(0, len(VALID) - 1), st.integers(1, 255)).map(
        lambda t: VALID[: t[0]] + bytes([VALID[t[0]] ^ t[1]]) + VALID[t[0] + 1 :]),
    st.integers(0, len(VALID) - 1).map(lambda n: VALID[:n]),
))
def test_any_bytes_are_either_landed_or_dead_lettered_with_a_reason(data: bytes) -> None:
    consumer = IngestConsumer(CFG, clock_ns=lambda: T0_NS)
    accepted: list = []
    dead: list = []
    consumer._classify_one(_Rec(data), limits(), accepted, dead)
    assert len(accepted) + len(dead) >= 1
    if data == VALID:
        assert len(accepted) == 1 and not dead
    for d in dead:
        assert d.reason and d.value == data and (d.topic, d.partition, d.offset) == ("t", 0, 7)
    if accepted:  # a mutation that still verifies can only be the original message
        assert data[len(MAGIC) + 64 :] == VALID[len(MAGIC) + 64 :]
