"""The wire contract: exact round trips, signatures that catch any change, clear errors."""

from __future__ import annotations

import dataclasses
import math
import stat
import unicodedata

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge import wire

KEY = wire.generate_private_key()
OTHER_KEY = wire.generate_private_key()
KEYS = {"gw-kiln-1": KEY.public_key()}

# meters and channels follow the name pattern; other text is any NFC string (canonical form)
names = st.text(alphabet="abcXYZ019_.:-", min_size=1, max_size=24)
texts = st.text(min_size=1, max_size=24).map(lambda t: unicodedata.normalize("NFC", t))
ts_ns = st.integers(min_value=0, max_value=2**63 - 1)
finite = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
)
readings = st.lists(
    st.builds(
        wire.Reading, names, names, ts_ns, finite, texts, st.sampled_from(sorted(wire.QUALITIES))
    ),
    max_size=40,
)
events = st.lists(
    st.builds(
        wire.BatchEvent, texts, texts, texts, st.sampled_from(["start", "end"]), ts_ns,
        st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False)),
        st.one_of(st.none(), texts),
    ),
    max_size=5,
)


def _frame(n: int = 3, **over: object) -> wire.Frame:
    rows = [
        wire.Reading("EM-101", "energy_active_import", 1_764_000_000_000_000_000 + i, 1234.5 + i,
                     "kWh", "good")
        for i in range(n)
    ]
    frame = wire.Frame.from_readings("shanxi-cement-1", "gw-kiln-1", 17, 1_764_000_001_000_000_000,
                                     rows)
    return dataclasses.replace(frame, **over)  # type: ignore[arg-type]


def _resign(body: dict[str, object]) -> bytes:
    raw = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    return wire.MAGIC + KEY.sign(raw) + raw


@given(rows=readings, seq=st.integers(min_value=0, max_value=2**63 - 1), sent=ts_ns)
@settings(max_examples=150, deadline=None)
def test_readings_round_trip_is_exact(rows: list[wire.Reading], seq: int, sent: int) -> None:
    frame = wire.Frame.from_readings("site-a", "gw-kiln-1", seq, sent, rows)
    back = wire.decode(wire.encode(frame, KEY), KEYS)
    assert isinstance(back, wire.Frame)
    assert (back.site, back.gateway, back.seq, back.sent_ns) == ("site-a", "gw-kiln-1", seq, sent)
    decoded = list(back.readings())
    assert decoded == rows
    # exact also in type: an integer counter stays an integer, a float a float
    assert [type(r.value) for r in decoded] == [type(r.value) for r in rows]


@given(evs=events, seq=st.integers(min_value=0, max_value=2**40))
@settings(max_examples=100, deadline=None)
def test_batch_round_trip_is_exact(evs: list[wire.BatchEvent], seq: int) -> None:
    frame = wire.BatchFrame("site-a", "gw-kiln-1", seq, 5, tuple(evs))
    assert wire.decode(wire.encode(frame, KEY), KEYS) == frame


def test_encoding_is_canonical() -> None:
    assert wire.encode(_frame(), KEY)[wire.HEADER_BYTES:] == wire.canonical_bytes(_frame())
    assert wire.canonical_bytes(_frame()) == wire.canonical_bytes(_frame())


@given(position=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
@settings(max_examples=200, deadline=None)
def test_any_flipped_bit_is_refused(position: int, bit: int) -> None:
    data = bytearray(wire.encode(_frame(), KEY))
    position %= len(data)
    data[position] ^= 1 << bit
    with pytest.raises(wire.WireError):
        wire.decode(bytes(data), KEYS)


def test_flipped_value_byte_fails_signature() -> None:
    data = wire.encode(_frame(), KEY)
    i = data.index(b"1234.5")
    tampered = data[:i] + b"9" + data[i + 1 :]  # still valid JSON, different energy
    with pytest.raises(wire.WireError) as err:
        wire.decode(tampered, KEYS)
    assert err.value.reason == "bad_signature"
    assert "gw-kiln-1" in str(err.value)


def test_signed_by_another_key_fails() -> None:
    with pytest.raises(wire.WireError, match="bad_signature"):
        wire.decode(wire.encode(_frame(), OTHER_KEY), KEYS)


def test_unknown_gateway_is_named() -> None:
    with pytest.raises(wire.WireError, match="unknown_gateway: gateway 'gw-kiln-1'"):
        wire.decode(wire.encode(_frame(), KEY), {})


def _body() -> dict[str, object]:
    return orjson.loads(wire.canonical_bytes(_frame()))


@pytest.mark.parametrize(
    ("mutate", "reason", "names"),
    [
        (lambda b: b.update(v=2), "unknown_version", "version 2"),
        (lambda b: b.pop("v"), "unknown_version", "None"),
        (lambda b: b.pop("seq"), "missing_field", "'seq'"),
        (lambda b: b.pop("site"), "missing_field", "'site'"),
        (lambda b: b["readings"].pop("unit"), "missing_field", "'unit'"),
        (lambda b: b.update(seq="17"), "wrong_type", "'seq' is str"),
        (lambda b: b.update(seq=True), "wrong_type", "'seq' is bool"),
        (lambda b: b.update(seq=-1), "bad_value", "negative"),
        (lambda b: b["readings"]["value"].__setitem__(0, "12"), "wrong_type", "readings.value"),
        (lambda b: b["readings"]["ts"].__setitem__(1, 1.5), "wrong_type", "readings.ts"),
        (lambda b: b["readings"]["quality"].__setitem__(0, "great"), "bad_value", "great"),
        (lambda b: b["readings"]["meter"].pop(), "bad_value", "differ in length"),
        (lambda b: b.update(stream="alarms"), "bad_value", "alarms"),
    ],
)
def test_malformed_body_gets_its_clear_error(mutate, reason: str, names: str) -> None:
    body = _body()
    mutate(body)
    with pytest.raises(wire.WireError) as err:
        wire.decode(_resign(body), KEYS)
    assert err.value.reason == reason
    assert names in str(err.value)


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"1e400", b"-1e999"])
def test_nan_and_infinity_on_the_wire_are_refused(literal: bytes) -> None:
    raw = wire.canonical_bytes(_frame()).replace(b"1234.5", literal, 1)
    with pytest.raises(wire.WireError) as err:
        wire.decode(wire.MAGIC + KEY.sign(raw) + raw, KEYS)
    assert err.value.reason == "non_finite"


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_and_infinity_are_refused_at_encode(bad: float) -> None:
    frame = _frame(value=[1.0, bad, 2.0])
    with pytest.raises(wire.WireError, match="non_finite: frame gw-kiln-1#17"):
        wire.encode(frame, KEY)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "bad_envelope"),
        (b"PPW1", "bad_envelope"),
        (b"XXXX" + bytes(64) + b"{}", "bad_envelope"),
        (wire.MAGIC + bytes(64) + b'{"v":1', "malformed_json"),
        (wire.MAGIC + bytes(64) + b"[1,2]", "wrong_type"),
    ],
)
def test_truncated_and_foreign_envelopes(data: bytes, reason: str) -> None:
    with pytest.raises(wire.WireError) as err:
        wire.decode(data, KEYS)
    assert err.value.reason == reason


def test_truncated_real_frame_is_refused_at_every_length() -> None:
    data = wire.encode(_frame(), KEY)
    for cut in range(0, len(data), 7):
        with pytest.raises(wire.WireError):
            wire.decode(data[:cut], KEYS)


def test_oversized_message_refused_before_parsing() -> None:
    with pytest.raises(wire.WireError, match="too_large: message of 1001 bytes"):
        wire.decode(b"x" * 1001, KEYS, max_bytes=1000)


def test_quantity_event_needs_quantity_and_unit() -> None:
    body = orjson.loads(wire.canonical_bytes(wire.BatchFrame("s", "gw-kiln-1", 1, 1, (
        wire.BatchEvent("kiln-1", "B-17", "clinker", "quantity", 10, 412.6, "t"),
    ))))
    body["events"][0]["unit"] = None
    with pytest.raises(wire.WireError, match=r"missing_field: .*batch B-17"):
        wire.decode(_resign(body), KEYS)


def test_peek_gateway_for_dead_letters() -> None:
    assert wire.peek_gateway(wire.encode(_frame(), KEY)) == "gw-kiln-1"
    assert wire.peek_gateway(b"garbage") is None
    # a damaged magic still names its sender in the dead letter
    assert wire.peek_gateway(b"XXXX" + GOLDEN_SIG + GOLDEN_BODY) == "gw-kiln-1"


# Golden envelopes, written byte by byte rather than by encode(), so the layout the
# relays (the MQTT bridge) and ledgers (the store) rely on is pinned on its own.
GOLDEN_SIG = bytes(range(64))
GOLDEN_BODY = (b'{"gateway":"gw-kiln-1","readings":{},"sent_ns":1,"seq":17,'
               b'"site":"s","stream":"readings","v":1}')


def _golden(body: bytes, magic: bytes = b"PPW1", sig: bytes = GOLDEN_SIG) -> bytes:
    return magic + sig + body


@pytest.mark.parametrize(("data", "header"), [
    (_golden(GOLDEN_BODY), ("gw-kiln-1", "readings", 17)),
    (_golden(b'{"gateway":"gw-2","seq":0,"stream":"batches"}'), ("gw-2", "batches", 0)),
    (_golden(GOLDEN_BODY, magic=b"PPW2"), None),
    (_golden(GOLDEN_BODY, sig=GOLDEN_SIG[:63]), None),  # the body would start inside it
    (_golden(b""), None),
    (b"PPW1", None),
    (_golden(b'{"gateway":"gw-2","seq":0,"stream":"power"}'), None),
    (_golden(b'{"gateway":"gw-2","seq":true,"stream":"readings"}'), None),
    (_golden(b'{"gateway":"gw-2","seq":-1,"stream":"readings"}'), None),
    (_golden(b'{"gateway":"gw-2","seq":"17","stream":"readings"}'), None),
    (_golden(b'{"gateway":7,"seq":17,"stream":"readings"}'), None),
    (_golden(b'{"gateway":"gw-2","stream":"readings"}'), None),
    (_golden(b'["gw-2","readings",17]'), None),
    (_golden(b'{"gateway":"gw-2",'), None),
], ids=["readings", "batches", "foreign-magic", "short-signature", "no-body", "magic-only",
        "unknown-stream", "bool-seq", "negative-seq", "text-seq", "number-gateway",
        "no-seq", "not-an-object", "cut-json"])
def test_peek_header_golden(data: bytes, header: tuple[str, str, int] | None) -> None:
    assert wire.peek_header(data) == header


def test_peek_header_reads_what_encode_wrote_without_the_keys() -> None:
    batch = wire.BatchFrame("s", "gw-kiln-1", 4, 1, (
        wire.BatchEvent("kiln-1", "B-17", "clinker", "start", 10),))
    assert wire.peek_header(wire.encode(_frame(), OTHER_KEY)) == ("gw-kiln-1", "readings", 17)
    assert wire.peek_header(wire.encode(batch, OTHER_KEY)) == ("gw-kiln-1", "batches", 4)
    assert wire.peek_header(memoryview(wire.encode(batch, KEY))) == ("gw-kiln-1", "batches", 4)


def test_signed_body_is_what_the_signature_covers() -> None:
    assert bytes(wire.signed_body(_golden(GOLDEN_BODY))) == GOLDEN_BODY
    data = wire.encode(_frame(), KEY)
    assert bytes(wire.signed_body(data)) == wire.canonical_bytes(_frame())
    KEY.public_key().verify(data[4:68], bytes(wire.signed_body(data)))  # layout: magic, sig
    for bad in (b"", b"PPW1", _golden(b""), _golden(GOLDEN_BODY, magic=b"PPW0")):
        with pytest.raises(wire.WireError) as err:
            wire.signed_body(bad)
        assert err.value.reason == "bad_envelope"


def test_keys_round_trip(tmp_path) -> None:
    path = tmp_path / "keys" / "gw.pem"
    wire.write_private_key(path, KEY)
    assert (stat.S_IMODE(path.parent.stat().st_mode), stat.S_IMODE(path.stat().st_mode)) == (
        0o700, 0o600)
    with pytest.raises(FileExistsError):
        wire.write_private_key(path, OTHER_KEY)  # never overwritten
    loaded = wire.load_private_key(path)
    b64 = wire.public_key_b64(loaded)
    assert wire.decode(wire.encode(_frame(), loaded), {"gw-kiln-1": wire.public_key_from_b64(b64)})
    with pytest.raises(ValueError, match=r"signing key .*gw-missing\.pem"):
        wire.load_private_key(tmp_path / "gw-missing.pem")


def test_a_key_file_others_may_read_is_refused(tmp_path) -> None:
    path = tmp_path / "gw.pem"
    wire.write_private_key(path, KEY)
    for mode in (0o640, 0o604, 0o660):
        path.chmod(mode)
        with pytest.raises(ValueError, match=rf"gw\.pem: mode {mode:04o} lets group or others "
                                             rf"read it; .*chmod 600"):
            wire.load_private_key(path)
    path.chmod(0o400)
    assert wire.public_key_b64(wire.load_private_key(path)) == wire.public_key_b64(KEY)


def _signed(body: bytes, key=KEY) -> bytes:
    return wire.MAGIC + key.sign(body) + body


def _reason(data: bytes, keys=KEYS) -> str:
    with pytest.raises(wire.WireError) as err:
        wire.decode(data, keys)
    return err.value.reason


CANONICAL = wire.canonical_bytes(_frame())


@pytest.mark.parametrize("body", [
    # a duplicate key: the decoder keeps the last, so two readers could disagree
    CANONICAL[:-1] + b',"site":"other-site"}',
    CANONICAL.replace(b'"seq":17', b'"seq": 17'),  # whitespace
    CANONICAL.replace(b"{", b"{ ", 1),
    # keys out of order
    b'{"v":1,' + CANONICAL[1:].replace(b',"v":1', b""),
    CANONICAL.replace(b"kWh", b"k\\u0057h"),  # an escape where the character belongs
    # NFD: "é" as e + combining accent; NFC would be one code point
    CANONICAL.replace(b"kWh", "ke\u0301".encode()),
])
def test_a_signed_body_not_in_canonical_form_is_refused(body: bytes) -> None:
    assert body != CANONICAL
    assert _reason(_signed(body)) == "not_canonical"


def test_the_canonical_body_with_non_ascii_text_decodes() -> None:
    body = CANONICAL.replace(b"kWh", "kWh·é".encode())
    frame = wire.decode(_signed(body), KEYS)
    assert isinstance(frame, wire.Frame) and frame.unit[0] == "kWh·é"


@pytest.mark.parametrize(("over", "field"), [
    ({"meter": ["EM 101"] * 3}, "meter"), ({"channel": ["a/b"] * 3}, "channel"),
    ({"site": "plant a"}, "site"), ({"meter": ["M" * 201] * 3}, "meter"),
    ({"meter": ["EM-101\n"] * 3}, "meter"),
])
def test_names_outside_the_name_pattern_are_refused(over: dict[str, object], field: str) -> None:
    data = wire.encode(_frame(**over), KEY)
    with pytest.raises(wire.WireError, match=rf"bad_name: .*{field} ") as err:
        wire.decode(data, KEYS)
    assert err.value.reason == "bad_name"
    assert wire.valid_name("L2-kiln_1.a:b") and not wire.valid_name("")


T_ROTATE = 1_764_000_001_000_000_000  # _frame()'s sent_ns


def _ring(revoked: bool = False) -> dict[str, list[wire.GatewayKey]]:
    # the old key until T + 10 s, the new one from T - 10 s: a 20 s overlap around T
    return {"gw-kiln-1": [
        wire.GatewayKey(KEY.public_key(), None, T_ROTATE + 10**10, revoked, "old"),
        wire.GatewayKey(OTHER_KEY.public_key(), T_ROTATE - 10**10, None, False, "new")]}


def test_rotation_both_keys_verify_in_the_overlap_and_each_only_in_its_period() -> None:
    ring = _ring()
    for key in (KEY, OTHER_KEY):
        assert wire.decode(wire.encode(_frame(), key), ring).seq == 17
    late = _frame(sent_ns=T_ROTATE + 10**10)  # the old key's period has ended
    assert wire.decode(wire.encode(late, OTHER_KEY), ring).seq == 17
    assert _reason(wire.encode(late, KEY), ring) == "key_not_valid"
    early = _frame(sent_ns=T_ROTATE - 10**10 - 1)  # before the new key's period
    assert _reason(wire.encode(early, OTHER_KEY), ring) == "key_not_valid"
    stranger = wire.generate_private_key()
    assert _reason(wire.encode(_frame(), stranger), ring) == "bad_signature"


def test_a_revoked_key_verifies_nothing_whatever_the_time() -> None:
    ring = _ring(revoked=True)
    for sent in (0, T_ROTATE):
        assert _reason(wire.encode(_frame(sent_ns=sent), KEY), ring) == "revoked_key"
    assert wire.decode(wire.encode(_frame(), OTHER_KEY), ring).seq == 17
    assert _reason(wire.encode(_frame(), KEY), {"gw-kiln-1": []}) == "unknown_gateway"
