"""Register encoding checked by an independent struct-based decoder."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from simulators.devices import FAMILIES, DeviceImage
from simulators.registers import encode_value, registers_of

FMT = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "int64": "q", "uint64": "Q",
       "float32": "f", "float64": "d"}


def decode(regs: list[int], dtype: str, order: str) -> float:
    """Independent decoder: registers as received, word order as in docs/simulators.md."""
    words = [r.to_bytes(2, "big") for r in regs]
    if order in ("BADC", "DCBA"):
        words = [w[::-1] for w in words]
    if order in ("CDAB", "DCBA"):
        words = words[::-1]
    return struct.unpack(">" + FMT[dtype], b"".join(words))[0]


@pytest.mark.parametrize("order", ["ABCD", "CDAB", "BADC", "DCBA"])
def test_known_patterns(order: str) -> None:
    # 0x11223344 as uint32 in each order, written out by hand
    expected = {"ABCD": [0x1122, 0x3344], "CDAB": [0x3344, 0x1122],
                "BADC": [0x2211, 0x4433], "DCBA": [0x4433, 0x2211]}[order]
    assert registers_of(encode_value(0x11223344, "uint32", order)) == expected
    big64 = {"ABCD": [0x0102, 0x0304, 0x0506, 0x0708], "CDAB": [0x0708, 0x0506, 0x0304, 0x0102],
             "BADC": [0x0201, 0x0403, 0x0605, 0x0807], "DCBA": [0x0807, 0x0605, 0x0403, 0x0201]}
    assert registers_of(encode_value(0x0102030405060708, "uint64", order)) == big64[order]


@pytest.mark.parametrize("dtype", list(FMT))
@pytest.mark.parametrize("order", ["ABCD", "CDAB", "BADC", "DCBA"])
@given(x=st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
       scale=st.sampled_from([1.0, 0.1, 0.01, 0.001]))
def test_roundtrip_every_type_and_order(dtype: str, order: str, x: float, scale: float) -> None:
    data = encode_value(x, dtype, order, scale)
    raw = decode(registers_of(data), dtype, order)
    value = raw * scale
    if dtype == "float32":
        assert math.isclose(value, x, rel_tol=1e-6, abs_tol=1e-30)
    elif dtype == "float64":
        assert math.isclose(value, x, rel_tol=1e-12, abs_tol=1e-300)
    else:
        lo, hi = {"int16": (-2**15, 2**15 - 1), "uint16": (0, 2**16 - 1),
                  "int32": (-2**31, 2**31 - 1), "uint32": (0, 2**32 - 1),
                  "int64": (-2**63, 2**63 - 1), "uint64": (0, 2**64 - 1)}[dtype]
        assert raw == min(max(round(x / scale), lo), hi)  # rounded, saturated at the range


# The register maps as docs/simulators.md states them: (family, table, address, type,
# order, scale, quantity). Kept here by hand so a drift between code and doc fails.
DOC_MAP = [
    ("sdm630", "input", 0x48, "float32", "ABCD", 1.0, "energy"),
    ("sdm630", "input", 0x34, "float32", "ABCD", 1.0, "power"),
    ("pm5000", "holding", 3203, "int64", "ABCD", 1.0, "energy"),
    ("pm5000", "holding", 3059, "float32", "ABCD", 1.0, "power"),
    ("em24", "holding", 0x34, "uint32", "CDAB", 0.1, "energy"),
    ("em24", "holding", 0x28, "int32", "CDAB", 0.1, "power"),
    ("em24", "holding", 0x31, "int16", "ABCD", 0.001, "power_factor"),
    ("em24", "holding", 0x33, "uint16", "ABCD", 0.1, "frequency"),
    ("flow", "input", 0, "float32", "BADC", 1.0, "power"),
    ("flow", "input", 2, "int16", "BADC", 0.1, "temperature"),
    ("flow", "input", 4, "float64", "DCBA", 1.0, "energy"),
    ("flow", "input", 9, "uint32", "ABCD", 1.0, "clock"),
    ("carbon", "holding", 0, "uint64", "CDAB", 1.0, "energy"),
    ("carbon", "holding", 4, "uint32", "BADC", 0.1, "co2"),
    ("carbon", "holding", 6, "float32", "DCBA", 1.0, "power"),
    ("carbon", "holding", 8, "float64", "ABCD", 1.0, "factor"),
    ("carbon", "holding", 12, "uint64", "ABCD", 1.0, "clock"),
    ("carbon", "holding", 17, "int16", "BADC", 0.001, "power_factor"),
]


@pytest.mark.parametrize(("family", "table", "address", "dtype", "order", "scale", "qty"), DOC_MAP)
def test_device_image_matches_the_documented_map(family: str, table: str, address: int,
                                                 dtype: str, order: str, scale: float,
                                                 qty: str) -> None:
    spec = FAMILIES[family].spec(qty)
    assert (spec.table, spec.address, spec.dtype, spec.word_order, spec.scale) == (
        table, address, dtype, order, scale)
    image = DeviceImage(FAMILIES[family])
    raw_value = {"energy": 123456789, "co2": 7654321, "clock": 1736143200}.get(qty, -12.5)
    if qty in ("power", "factor", "frequency", "temperature", "power_factor"):
        raw_value = {"power": 42.25, "factor": 0.5703, "frequency": 50.1, "temperature": -12.5,
                     "power_factor": -0.875}[qty]
    if family in ("sdm630", "flow") and qty == "energy":
        raw_value = 15234.5
    image.write({qty: raw_value})
    words = 4 if dtype.endswith("64") else 1 if dtype.endswith("16") else 2
    regs = registers_of(bytes(image.tables[table][2 * address: 2 * (address + words)]))
    got = decode(regs, dtype, order) * scale
    factor = {"W": 1000.0, "Wh": 1000.0, "ms": 1000.0}.get(spec.unit, 1.0)
    if spec.counter_bits is not None:  # counters hold raw counts
        assert decode(regs, dtype, order) == raw_value
    else:
        assert math.isclose(got, raw_value * factor, rel_tol=1e-6, abs_tol=scale / 2)
