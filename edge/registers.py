"""Pure Modbus register decoding: every numeric type and word order, with scale and offset.

Word orders name the byte layout of a 32-bit value ``ABCD`` (A most
significant) as it appears in consecutive 16-bit registers, and generalise to
16 and 64 bits the way Telegraf's ``byte_order`` does:

========  ===============================  ======================================
order     registers (first → last)         64-bit equivalent
========  ===============================  ======================================
ABCD      big-endian words, big-endian     ABCDEFGH
CDAB      little-endian words ("swapped")  GHEFCDAB
BADC      big-endian words, bytes swapped  BADCFEHG
DCBA      fully little-endian              HGFEDCBA
========  ===============================  ======================================

The trick that keeps a whole block to a handful of C calls: pack the block's
registers once big-endian (``be``) and once byte-swapped (``le``). Then

* ABCD = ``be`` read big-endian,     * DCBA = ``be`` read little-endian,
* BADC = ``le`` read big-endian,     * CDAB = ``le`` read little-endian,

so a block needs at most four ``struct.Struct.unpack_from`` calls (one per
word order present, pad bytes skipping the other points), whatever its size.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Final, Literal

DataType = Literal["int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64"]
WordOrder = Literal["ABCD", "CDAB", "BADC", "DCBA"]
DATA_TYPES: Final[tuple[DataType, ...]] = (
    "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64",
)
WORD_ORDERS: Final[tuple[WordOrder, ...]] = ("ABCD", "CDAB", "BADC", "DCBA")

REGISTER_COUNT: Final[dict[DataType, int]] = {
    "int16": 1, "uint16": 1, "int32": 2, "uint32": 2,
    "int64": 4, "uint64": 4, "float32": 2, "float64": 4,
}
_CODE: Final[dict[DataType, str]] = {
    "int16": "h", "uint16": "H", "int32": "i", "uint32": "I",
    "int64": "q", "uint64": "Q", "float32": "f", "float64": "d",
}
# word order -> (use the byte-swapped packing, read little-endian)
_LAYOUT: Final[dict[WordOrder, tuple[bool, bool]]] = {
    "ABCD": (False, False),
    "DCBA": (False, True),
    "BADC": (True, False),
    "CDAB": (True, True),
}

Value = int | float


class RegisterError(ValueError):
    """Registers that cannot be decoded as asked (wrong count, bad layout)."""


def is_float(data_type: DataType) -> bool:
    return data_type.startswith("float")


def bit_width(data_type: DataType) -> int:
    return REGISTER_COUNT[data_type] * 16


def wrap_modulus(counter_bits: int, scale: float) -> float:
    """Where a counter of ``counter_bits`` wraps, in the point's (scaled) unit."""
    return float(2**counter_bits) * scale


def _pack(registers: Sequence[int], swapped: bool) -> bytes:
    return struct.pack(f"{'<' if swapped else '>'}{len(registers)}H", *registers)


def decode_raw(registers: Sequence[int], data_type: DataType, word_order: WordOrder) -> Value:
    """One value from exactly the registers of its type (no scale, no offset)."""
    need = REGISTER_COUNT[data_type]
    if len(registers) != need:
        raise RegisterError(f"{data_type} needs {need} registers, got {len(registers)}")
    swapped, little = _LAYOUT[word_order]
    fmt = ("<" if little else ">") + _CODE[data_type]
    value: Value = struct.unpack(fmt, _pack(registers, swapped))[0]
    return value


def decode_value(
    registers: Sequence[int],
    data_type: DataType,
    word_order: WordOrder = "ABCD",
    scale: float = 1,
    offset: float = 0,
) -> Value:
    """One engineering value: ``raw * scale + offset`` (ints stay ints at scale 1, offset 0)."""
    raw = decode_raw(registers, data_type, word_order)
    if scale == 1 and offset == 0:
        return raw
    return raw * scale + offset


def encode_registers(raw: Value, data_type: DataType, word_order: WordOrder = "ABCD") -> list[int]:
    """The registers a device holds for ``raw`` (the inverse of :func:`decode_raw`)."""
    swapped, little = _LAYOUT[word_order]
    data = struct.pack(("<" if little else ">") + _CODE[data_type], raw)
    return list(struct.unpack(f"{'<' if swapped else '>'}{len(data) // 2}H", data))


@dataclass(frozen=True, slots=True)
class Field:
    """One value inside a register block: where it starts and how to read it."""

    start: int  # register offset from the start of the block
    data_type: DataType
    word_order: WordOrder = "ABCD"
    scale: float = 1
    offset: float = 0

    @property
    def end(self) -> int:
        return self.start + REGISTER_COUNT[self.data_type]


def _lanes(fields: Sequence[tuple[int, Field]]) -> list[list[tuple[int, Field]]]:
    """Split same-layout fields into non-overlapping runs (a struct cannot step back)."""
    lanes: list[list[tuple[int, Field]]] = []
    for item in sorted(fields, key=lambda p: p[1].start):
        lane = next((ln for ln in lanes if ln[-1][1].end <= item[1].start), None)
        if lane is None:
            lanes.append([item])
        else:
            lane.append(item)
    return lanes


def _lane_struct(lane: Sequence[tuple[int, Field]], little: bool) -> struct.Struct:
    parts = ["<" if little else ">"]
    pos = 0
    for _, f in lane:
        gap = (f.start - pos) * 2
        if gap:
            parts.append(f"{gap}x")
        parts.append(_CODE[f.data_type])
        pos = f.end
    return struct.Struct("".join(parts))


class BlockDecoder:
    """Decodes every field of one register block with a few C-level struct calls.

    Built once per request (the plan is fixed by the config); ``decode`` then
    runs per poll. Values come back in the order ``fields`` were given.
    """

    __slots__ = ("_be_lanes", "_count", "_le_lanes", "_offsets", "_restore", "_scales", "fields")

    def __init__(self, count: int, fields: Sequence[Field]) -> None:
        if not fields:
            raise RegisterError("a register block needs at least one field")
        for f in fields:
            if f.start < 0 or f.end > count:
                raise RegisterError(f"field at {f.start} ({f.data_type}) outside {count} registers")
        self.fields = tuple(fields)
        self._count = count
        order: list[int] = []
        self._be_lanes: list[struct.Struct] = []
        self._le_lanes: list[struct.Struct] = []
        for word_order in WORD_ORDERS:
            swapped, little = _LAYOUT[word_order]
            same = [(i, f) for i, f in enumerate(fields) if f.word_order == word_order]
            for lane in _lanes(same):
                order.extend(i for i, _ in lane)
                (self._le_lanes if swapped else self._be_lanes).append(_lane_struct(lane, little))
        # decode order is be-lanes then le-lanes; restore the caller's order
        be_first = [i for i in order if not _LAYOUT[fields[i].word_order][0]]
        le_next = [i for i in order if _LAYOUT[fields[i].word_order][0]]
        position = {field_index: pos for pos, field_index in enumerate(be_first + le_next)}
        self._restore = itemgetter(*(position[i] for i in range(len(fields))))
        # exact 1 and 0 keep integer counters integers (v * 1 + 0 is still an int)
        self._scales = [1 if f.scale == 1 else f.scale for f in self.fields]
        self._offsets = [0 if f.offset == 0 else f.offset for f in self.fields]

    @property
    def count(self) -> int:
        return self._count

    def decode_raw(self, registers: Sequence[int]) -> list[Value]:
        """Raw values (before scale and offset), in field order."""
        if len(registers) < self._count:
            raise RegisterError(f"block needs {self._count} registers, got {len(registers)}")
        values: list[Value] = []
        if self._be_lanes:
            be = struct.pack(f">{len(registers)}H", *registers)
            for lane in self._be_lanes:
                values.extend(lane.unpack_from(be))
        if self._le_lanes:
            le = struct.pack(f"<{len(registers)}H", *registers)
            for lane in self._le_lanes:
                values.extend(lane.unpack_from(le))
        if len(values) == 1:
            return values
        return list(self._restore(values))

    def decode(self, registers: Sequence[int]) -> list[Value]:
        """Engineering values ``raw * scale + offset``, in field order."""
        raw = self.decode_raw(registers)
        return [v * s + o for v, s, o in zip(raw, self._scales, self._offsets, strict=True)]


def finite(value: Value) -> bool:
    """False for NaN and infinities (meters send NaN for "not available")."""
    return not isinstance(value, float) or math.isfinite(value)
