"""Pure register encoding: engineering values to 16-bit Modbus registers.

Word orders name the bytes of the big-endian encoding of a value, A being the
most significant byte (for 64-bit values the pattern extends over four words):

- ``ABCD``: words most significant first, bytes big-endian in each word;
- ``CDAB``: words least significant first ("word swap"), bytes big-endian;
- ``BADC``: words most significant first, bytes swapped in each word;
- ``DCBA``: words least significant first, bytes swapped (fully little-endian).

For 16-bit types only the byte swap matters (``ABCD``/``CDAB`` = AB,
``BADC``/``DCBA`` = BA). This module is deliberately separate from any
decoder in ``edge``: it is the yardstick, not a shared helper.
"""

from __future__ import annotations

import math
import struct
from typing import Literal

DType = Literal["int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64"]
WordOrder = Literal["ABCD", "CDAB", "BADC", "DCBA"]

WORDS: dict[str, int] = {
    "int16": 1, "uint16": 1, "int32": 2, "uint32": 2,
    "int64": 4, "uint64": 4, "float32": 2, "float64": 4,
}
_STRUCT: dict[str, str] = {
    "int16": ">h", "uint16": ">H", "int32": ">i", "uint32": ">I",
    "int64": ">q", "uint64": ">Q", "float32": ">f", "float64": ">d",
}
_BITS: dict[str, int] = {"int16": 16, "uint16": 16, "int32": 32, "uint32": 32,
                         "int64": 64, "uint64": 64}


def is_float(dtype: DType) -> bool:
    return dtype.startswith("float")


def int_range(dtype: DType) -> tuple[int, int]:
    """Inclusive range of an integer type."""
    bits = _BITS[dtype]
    if dtype.startswith("u"):
        return 0, (1 << bits) - 1
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def raw_from_value(value: float, dtype: DType, scale: float) -> int | float:
    """Engineering value to the raw number stored (``value = raw * scale``).

    Integers are rounded to nearest and saturate at the type's range, as
    meters clamp rather than wrap their instantaneous quantities; counters
    are wrapped by the caller, which knows the counter width.
    """
    if is_float(dtype):
        return value / scale
    if not math.isfinite(value):
        return 0
    # integers pass exactly: a float detour would lose the low bits of 64-bit values
    raw = value if isinstance(value, int) and scale == 1.0 else round(value / scale)
    lo, hi = int_range(dtype)
    return min(max(raw, lo), hi)


def encode_raw(raw: int | float, dtype: DType, word_order: WordOrder) -> bytes:
    """Raw number to the register bytes as they travel on the wire."""
    big = struct.pack(_STRUCT[dtype], raw)
    return reorder(big, word_order)


def reorder(big: bytes, word_order: WordOrder) -> bytes:
    """Big-endian value bytes to the bytes of the given word order."""
    words = [big[i:i + 2] for i in range(0, len(big), 2)]
    if word_order in ("CDAB", "DCBA"):
        words.reverse()
    if word_order in ("BADC", "DCBA"):
        words = [w[::-1] for w in words]
    return b"".join(words)


def encode_value(value: float, dtype: DType, word_order: WordOrder, scale: float = 1.0) -> bytes:
    """Engineering value to wire bytes (``len == 2 * WORDS[dtype]``)."""
    return encode_raw(raw_from_value(value, dtype, scale), dtype, word_order)


def registers_of(data: bytes) -> list[int]:
    """Wire bytes to the list of 16-bit register values a client sees."""
    return [int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2)]
