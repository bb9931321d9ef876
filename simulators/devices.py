"""Device families: the register maps of the meters the simulator imitates.

Each family imitates the map style of a real device line (documented in
``docs/simulators.md``). Addresses are Modbus PDU addresses (0-based, as on
the wire); vendor manuals and ``mbpoll -r`` count from 1.

Quantities are given in canonical units (power kW or Nm3/h or t/h, energy
kWh or Nm3 or t, CO2 kg, voltage V, current A, frequency Hz, clock epoch s);
``unit`` is what the register holds, ``value = raw * scale`` in that unit.
Counter registers hold raw counts prepared by the physics (wrapped at the
counter width), not canonical values.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from simulators.registers import WORDS, DType, WordOrder, encode_raw, raw_from_value

Table = Literal["input", "holding"]

# how many register units one canonical unit is (W per kW, ms per s ...)
UNIT_FACTORS: dict[str, float] = {"W": 1000.0, "Wh": 1000.0, "kg/h": 1000.0, "ms": 1000.0}


@dataclass(frozen=True)
class RegisterSpec:
    """One value in a device's register map."""

    quantity: str
    address: int
    dtype: DType
    word_order: WordOrder
    scale: float
    unit: str
    table: Table
    counter_bits: int | None = None  # integer counters: wraps at 2**bits counts

    @property
    def words(self) -> int:
        return WORDS[self.dtype]

    @property
    def factor(self) -> float:
        return UNIT_FACTORS.get(self.unit, 1.0)


@dataclass(frozen=True)
class Family:
    """A device family: what it imitates, its map and the blocks a poller reads."""

    name: str
    imitates: str
    registers: tuple[RegisterSpec, ...]
    blocks: tuple[tuple[Table, int, int], ...]  # (table, first address, count)

    def spec(self, quantity: str) -> RegisterSpec:
        for reg in self.registers:
            if reg.quantity == quantity:
                return reg
        raise KeyError(f"family {self.name} has no register for {quantity}")

    def counter(self, quantity: str = "energy") -> RegisterSpec | None:
        """The register of a cumulative counter, None for OPC UA-only families."""
        return next((r for r in self.registers if r.quantity == quantity), None)

    def table_size(self, table: Table) -> int:
        ends = [r.address + r.words for r in self.registers if r.table == table]
        ends += [a + n for t, a, n in self.blocks if t == table]
        return max(ends, default=0)


def _regs(table: Table, rows: list[tuple[str, int, DType, WordOrder, float, str]],
          counters: Mapping[str, int] | None = None) -> tuple[RegisterSpec, ...]:
    counters = counters or {}
    return tuple(RegisterSpec(q, a, d, w, s, u, table, counters.get(q))
                 for q, a, d, w, s, u in rows)


SDM630 = Family(
    "sdm630", "three-phase DIN-rail meter, Eastron SDM630 style (float32 input registers)",
    _regs("input", [
        ("voltage_l1", 0x00, "float32", "ABCD", 1.0, "V"),
        ("voltage_l2", 0x02, "float32", "ABCD", 1.0, "V"),
        ("voltage_l3", 0x04, "float32", "ABCD", 1.0, "V"),
        ("current_l1", 0x06, "float32", "ABCD", 1.0, "A"),
        ("current_l2", 0x08, "float32", "ABCD", 1.0, "A"),
        ("current_l3", 0x0A, "float32", "ABCD", 1.0, "A"),
        ("power_l1", 0x0C, "float32", "ABCD", 1.0, "W"),
        ("power_l2", 0x0E, "float32", "ABCD", 1.0, "W"),
        ("power_l3", 0x10, "float32", "ABCD", 1.0, "W"),
        ("power", 0x34, "float32", "ABCD", 1.0, "W"),
        ("power_factor", 0x3E, "float32", "ABCD", 1.0, "1"),
        ("frequency", 0x46, "float32", "ABCD", 1.0, "Hz"),
        ("energy", 0x48, "float32", "ABCD", 1.0, "kWh"),
        ("energy_export", 0x4A, "float32", "ABCD", 1.0, "kWh"),
    ]),
    (("input", 0x00, 76),),
)

PM5000 = Family(
    "pm5000", "power meter with 64-bit integer Wh counters, Schneider PowerLogic PM5xxx style",
    _regs("holding", [
        ("current_l1", 2999, "float32", "ABCD", 1.0, "A"),
        ("current_l2", 3001, "float32", "ABCD", 1.0, "A"),
        ("current_l3", 3003, "float32", "ABCD", 1.0, "A"),
        ("voltage_l1", 3027, "float32", "ABCD", 1.0, "V"),
        ("voltage_l2", 3029, "float32", "ABCD", 1.0, "V"),
        ("voltage_l3", 3031, "float32", "ABCD", 1.0, "V"),
        ("power_l1", 3053, "float32", "ABCD", 1.0, "kW"),
        ("power_l2", 3055, "float32", "ABCD", 1.0, "kW"),
        ("power_l3", 3057, "float32", "ABCD", 1.0, "kW"),
        ("power", 3059, "float32", "ABCD", 1.0, "kW"),
        ("power_factor", 3083, "float32", "ABCD", 1.0, "1"),
        ("frequency", 3109, "float32", "ABCD", 1.0, "Hz"),
        ("energy", 3203, "int64", "ABCD", 1.0, "Wh"),
        ("energy_export", 3207, "int64", "ABCD", 1.0, "Wh"),
    ], {"energy": 64}),
    (("holding", 2999, 112), ("holding", 3203, 8)),
)

EM24 = Family(
    "em24", "meter with 32-bit counters that roll over, Carlo Gavazzi EM24 style (LSW first)",
    _regs("holding", [
        ("voltage_l1", 0x00, "int32", "CDAB", 0.1, "V"),
        ("voltage_l2", 0x02, "int32", "CDAB", 0.1, "V"),
        ("voltage_l3", 0x04, "int32", "CDAB", 0.1, "V"),
        ("current_l1", 0x0C, "int32", "CDAB", 0.001, "A"),
        ("current_l2", 0x0E, "int32", "CDAB", 0.001, "A"),
        ("current_l3", 0x10, "int32", "CDAB", 0.001, "A"),
        ("power_l1", 0x12, "int32", "CDAB", 0.1, "W"),
        ("power_l2", 0x14, "int32", "CDAB", 0.1, "W"),
        ("power_l3", 0x16, "int32", "CDAB", 0.1, "W"),
        ("power", 0x28, "int32", "CDAB", 0.1, "W"),
        ("power_factor", 0x31, "int16", "ABCD", 0.001, "1"),
        ("frequency", 0x33, "uint16", "ABCD", 0.1, "Hz"),
        ("energy", 0x34, "uint32", "CDAB", 0.1, "kWh"),
    ], {"energy": 32}),
    (("holding", 0x00, 0x36),),
)

FLOW = Family(
    "flow", "gas or steam vortex flow meter, Endress+Hauser Prowirl style map",
    _regs("input", [
        ("power", 0, "float32", "BADC", 1.0, "rate"),  # Nm3/h (gas) or t/h (steam)
        ("temperature", 2, "int16", "BADC", 0.1, "°C"),
        ("pressure", 3, "uint16", "ABCD", 0.01, "bar"),
        ("energy", 4, "float64", "DCBA", 1.0, "total"),  # totalizer: Nm3 (gas) or t (steam)
        ("status", 8, "uint16", "ABCD", 1.0, "1"),
        ("clock", 9, "uint32", "ABCD", 1.0, "s"),  # device clock, epoch seconds
    ]),
    (("input", 0, 11),),
)

CARBON = Family(
    "carbon", "smart carbon meter: cumulative energy and kgCO2 with an embedded factor",
    _regs("holding", [
        ("energy", 0, "uint64", "CDAB", 1.0, "Wh"),
        ("co2", 4, "uint32", "BADC", 0.1, "kg"),
        ("power", 6, "float32", "DCBA", 1.0, "kW"),
        ("factor", 8, "float64", "ABCD", 1.0, "kg/kWh"),
        ("clock", 12, "uint64", "ABCD", 1.0, "ms"),  # device clock, epoch milliseconds
        ("status", 16, "uint16", "ABCD", 1.0, "1"),
        ("power_factor", 17, "int16", "BADC", 0.001, "1"),
    ], {"energy": 64, "co2": 32}),
    (("holding", 0, 18),),
)

# OPC UA-only devices: no register map, variables documented in docs/simulators.md
OPCUA_ENERGY = Family("opcua_energy", "PLC energy counter exposed as OPC UA variables", (), ())
OPCUA_FLOW = Family("opcua_flow", "PLC flow meter exposed as OPC UA variables", (), ())

FAMILIES: dict[str, Family] = {
    f.name: f for f in (SDM630, PM5000, EM24, FLOW, CARBON, OPCUA_ENERGY, OPCUA_FLOW)
}
MODBUS_FAMILIES = frozenset({"sdm630", "pm5000", "em24", "flow", "carbon"})
CARRIER_UNITS: dict[str, tuple[str, str]] = {  # carrier: (counter unit, rate unit)
    "electricity": ("kWh", "kW"),
    "natural_gas": ("Nm3", "Nm3/h"),
    "steam": ("t", "t/h"),
}


class DeviceImage:
    """The registers of one device (one unit id), updated from readings.

    Tables are bytearrays of big-endian registers so a read is one slice.
    """

    __slots__ = ("_slots", "family", "tables")

    def __init__(self, family: Family) -> None:
        self.family = family
        self.tables: dict[Table, bytearray] = {
            t: bytearray(2 * family.table_size(t)) for t in ("input", "holding")
        }
        self._slots = [
            (self.tables[r.table], 2 * r.address, r) for r in family.registers
        ]

    def write(self, readings: Mapping[str, float]) -> None:
        """Write every quantity present in ``readings`` into the tables."""
        for buf, offset, reg in self._slots:
            value = readings.get(reg.quantity)
            if value is None:
                continue
            if reg.counter_bits is not None:
                raw: int | float = int(value)
            else:
                raw = raw_from_value(value * reg.factor, reg.dtype, reg.scale)
            if reg.word_order == "ABCD":
                struct.pack_into(_BIG[reg.dtype], buf, offset, raw)
            else:
                data = encode_raw(raw, reg.dtype, reg.word_order)
                buf[offset:offset + len(data)] = data


_BIG: dict[str, str] = {
    "int16": ">h", "uint16": ">H", "int32": ">i", "uint32": ">I",
    "int64": ">q", "uint64": ">Q", "float32": ">f", "float64": ">d",
}
