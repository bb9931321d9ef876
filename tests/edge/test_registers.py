"""Register decoding: hypothesis round trips, block decoding, golden classic mistakes."""

from __future__ import annotations

import itertools
import math
import struct
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.registers import (
    DATA_TYPES,
    REGISTER_COUNT,
    WORD_ORDERS,
    BlockDecoder,
    DataType,
    Field,
    RegisterError,
    WordOrder,
    decode_raw,
    decode_value,
    encode_registers,
    wrap_modulus,
)

GOLDEN = Path(__file__).parent / "golden"

_INT_RANGE = {
    "int16": (-(2**15), 2**15 - 1), "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1), "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1), "uint64": (0, 2**64 - 1),
}


def values_of(data_type: DataType) -> st.SearchStrategy[int | float]:
    if data_type == "float32":
        return st.floats(width=32, allow_nan=False)
    if data_type == "float64":
        return st.floats(allow_nan=False)
    lo, hi = _INT_RANGE[data_type]
    return st.integers(lo, hi)


typed_values = st.sampled_from(DATA_TYPES).flatmap(lambda t: st.tuples(st.just(t), values_of(t)))


@given(typed_values, st.sampled_from(WORD_ORDERS))
def test_every_type_and_word_order_round_trips(tv: tuple[DataType, int | float], order: WordOrder):
    data_type, value = tv
    regs = encode_registers(value, data_type, order)
    assert len(regs) == REGISTER_COUNT[data_type]
    assert all(0 <= r <= 0xFFFF for r in regs)
    assert decode_raw(regs, data_type, order) == value


@pytest.mark.parametrize(
    ("order", "regs"),
    [
        ("ABCD", [0x0102, 0x0304]),
        ("CDAB", [0x0304, 0x0102]),
        ("BADC", [0x0201, 0x0403]),
        ("DCBA", [0x0403, 0x0201]),
    ],
)
def test_word_orders_match_their_names_for_32_bits(order: WordOrder, regs: list[int]):
    assert decode_raw(regs, "uint32", order) == 0x01020304


@pytest.mark.parametrize(
    ("order", "regs"),
    [
        ("ABCD", [0x0102, 0x0304, 0x0506, 0x0708]),
        ("CDAB", [0x0708, 0x0506, 0x0304, 0x0102]),  # GHEFCDAB
        ("BADC", [0x0201, 0x0403, 0x0605, 0x0807]),
        ("DCBA", [0x0807, 0x0605, 0x0403, 0x0201]),
    ],
)
def test_word_orders_generalise_to_64_bits_like_telegraf(order: WordOrder, regs: list[int]):
    assert decode_raw(regs, "uint64", order) == 0x0102030405060708


def test_16_bit_values_swap_bytes_only_for_badc_and_dcba():
    assert decode_raw([0xFF38], "int16", "ABCD") == -200
    assert decode_raw([0xFF38], "int16", "CDAB") == -200
    assert decode_raw([0x38FF], "int16", "BADC") == -200
    assert decode_raw([0x38FF], "int16", "DCBA") == -200


def test_scale_and_offset_apply_to_every_type():
    assert decode_value([0x4640, 0xE400], "float32", scale=0.001) == pytest.approx(12.345)
    assert decode_value([100], "int16", scale=0.1, offset=-40) == pytest.approx(-30.0)
    big = decode_value(encode_registers(2**63 + 5, "uint64"), "uint64")
    assert big == 2**63 + 5 and isinstance(big, int)  # no float rounding at scale 1


def test_wrong_register_count_is_an_error():
    with pytest.raises(RegisterError, match="needs 2 registers"):
        decode_raw([1], "float32", "ABCD")


fields_strategy = st.lists(
    st.tuples(
        st.integers(0, 100), st.sampled_from(DATA_TYPES), st.sampled_from(WORD_ORDERS),
        st.sampled_from([1.0, 0.1, 0.001, 10.0]), st.sampled_from([0.0, -40.0]),
    ),
    min_size=1,
    max_size=30,
)


@given(fields_strategy, st.randoms(use_true_random=False))
def test_block_decoder_equals_point_by_point_decoding(specs, rnd):
    """Any mix of types, orders and overlaps decodes like one-at-a-time decoding."""
    regs = [rnd.randrange(0, 0x10000) for _ in range(125)]
    fields = [Field(start, t, o, s, off) for start, t, o, s, off in specs]
    block = BlockDecoder(125, fields)
    got = block.decode(regs)
    for f, value in zip(fields, got, strict=True):
        want = decode_value(regs[f.start : f.end], f.data_type, f.word_order, f.scale, f.offset)
        assert value == want or (math.isnan(value) and math.isnan(want))


def test_block_decoder_keeps_field_order_and_types():
    regs = [0] * 10
    regs[0:2] = encode_registers(230.5, "float32", "CDAB")
    regs[2:4] = encode_registers(4_000_000_000, "uint32", "ABCD")
    regs[4] = 0xFF38  # -200 int16
    regs[5:9] = encode_registers(-(2**40), "int64", "DCBA")
    fields = [
        Field(5, "int64", "DCBA"), Field(0, "float32", "CDAB"),
        Field(2, "uint32", "ABCD", scale=0.001), Field(4, "int16", "BADC"), Field(4, "int16"),
    ]
    got = BlockDecoder(10, fields).decode(regs)
    assert got[0] == -(2**40) and isinstance(got[0], int)
    assert got[1] == 230.5
    assert got[2] == pytest.approx(4_000_000.0)
    assert got[3] == struct.unpack("<h", struct.pack(">H", 0xFF38))[0]
    assert got[4] == -200


def test_block_decoder_refuses_fields_outside_the_block():
    with pytest.raises(RegisterError, match="outside"):
        BlockDecoder(3, [Field(2, "float32")])


# ------------------------------------------------------------------ golden cases


def _cases() -> list[Path]:
    return sorted(p for p in GOLDEN.iterdir() if (p / "case.toml").exists())


def _decode_case(point: dict, regs: list[int], **override) -> float | int:
    spec = {**point, **override}
    return decode_value(regs, spec["type"], spec["word_order"], spec["scale"], spec["offset"])


@pytest.mark.parametrize("case", _cases(), ids=lambda p: p.name)
def test_golden_case(case: Path):
    """Each folder pins a classic decoding mistake: the right reading, and that the
    mistaken configuration would indeed give a different (wrong) number."""
    spec = tomllib.loads((case / "case.toml").read_text())
    point, inp, expected = spec["point"], spec["input"], spec["expected"]
    samples = inp.get("samples", [inp.get("registers")])
    values = [_decode_case(point, regs) for regs in samples]
    want = expected.get("values", [expected.get("value")])
    assert values == pytest.approx(want, rel=1e-9)
    wrong = [_decode_case(point, regs, **spec["mistake"]) for regs in samples]
    assert wrong != pytest.approx(want, rel=1e-6), f"{case.name}: the mistake is not visible"
    if "wrap" in expected:
        wrap = wrap_modulus(point["counter_bits"], point["scale"])
        assert wrap == pytest.approx(expected["wrap"])
        deltas = [(b - a) % wrap for a, b in itertools.pairwise(values)]
        assert deltas == pytest.approx(expected["deltas"], abs=1e-6)


def test_golden_cases_exist_for_the_classic_mistakes():
    names = {p.name for p in _cases()}
    assert {"cdab_float_read_as_abcd", "scale_ignored_on_float", "counter_rollover_uint32"} <= names
