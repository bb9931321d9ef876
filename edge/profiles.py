"""Meter profiles: reusable register maps, one TOML file per device family.

A profile names the points of a meter (channel, table, address, type, word
order, scale, offset, unit) and what kind of value each is: a ``gauge``
(power, voltage), a cumulative ``counter`` (with the width it wraps at, so
compute can unwrap), the device's ``clock`` (epoch seconds after scale, whose
time then stamps the cycle's readings) or a ``status`` word. Table and word
order defaults sit at the top of the file; a point may override them::

    family = "em24"
    table = "holding"
    word_order = "CDAB"

    [[points]]
    channel = "energy"
    address = 0x34
    type = "uint32"
    scale = 0.1
    unit = "kWh"
    kind = "counter"     # counter_bits defaults to the type's width (32)
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, model_validator

from edge.registers import REGISTER_COUNT, DataType, WordOrder, bit_width, is_float
from edge.requests import MAX_REGISTERS, Table
from edge.settings import ConfigError, describe_validation, read_toml
from edge.settings import Frozen as _Frozen

PointKind = Literal["gauge", "counter", "clock", "status"]




class PointSpec(_Frozen):
    """One point of a register map (addresses are 0-based PDU addresses, as on the wire)."""

    channel: Annotated[str, Field(min_length=1)]
    address: Annotated[int, Field(ge=0, le=65535)]
    type: DataType
    table: Table = "holding"
    word_order: WordOrder = "ABCD"
    scale: float = 1.0
    offset: float = 0.0
    unit: str = ""
    kind: PointKind = "gauge"
    # integer counters wrap at 2**counter_bits counts (may be narrower than the type)
    counter_bits: Annotated[int, Field(ge=1, le=64)] | None = None

    @property
    def registers(self) -> int:
        return REGISTER_COUNT[self.type]

    @model_validator(mode="after")
    def _check(self) -> PointSpec:
        if self.address + self.registers > 65536:
            raise ValueError(f"{self.type} at {self.address} runs past register 65535")
        if self.scale == 0:
            raise ValueError("scale must not be 0")
        if self.kind == "counter" and not is_float(self.type):
            if self.counter_bits is None:
                object.__setattr__(self, "counter_bits", bit_width(self.type))
            elif self.counter_bits > bit_width(self.type):
                raise ValueError(f"counter_bits {self.counter_bits} wider than {self.type}")
        elif self.counter_bits is not None:
            raise ValueError("counter_bits is only for integer points of kind 'counter'")
        return self


class Profile(_Frozen):
    """A device family's register map with its read limits."""

    family: Annotated[str, Field(min_length=1)]
    description: str = ""
    # devices that refuse reads spanning unmapped registers need max_gap 0
    max_gap: Annotated[int, Field(ge=0, le=MAX_REGISTERS)] = 0
    max_registers: Annotated[int, Field(ge=1, le=MAX_REGISTERS)] = MAX_REGISTERS
    points: Annotated[tuple[PointSpec, ...], Field(min_length=1)]

    @model_validator(mode="before")
    @classmethod
    def _apply_defaults(cls, data: Any) -> Any:
        """Top-level ``table`` and ``word_order`` are defaults for every point."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        defaults = {k: data.pop(k) for k in ("table", "word_order") if k in data}
        points = data.get("points")
        if defaults and isinstance(points, list):
            data["points"] = [
                {**defaults, **p} if isinstance(p, dict) else p for p in points
            ]
        return data

    @model_validator(mode="after")
    def _unique_channels(self) -> Profile:
        seen: set[str] = set()
        for p in self.points:
            if p.channel in seen:
                raise ValueError(f"channel {p.channel!r} appears twice")
            seen.add(p.channel)
        if sum(p.kind == "clock" for p in self.points) > 1:
            raise ValueError("at most one point may be of kind 'clock'")
        return self

    def select(self, channels: tuple[str, ...]) -> Profile:
        """The same profile restricted to ``channels`` (all when empty)."""
        if not channels:
            return self
        known = {p.channel for p in self.points}
        unknown = sorted(set(channels) - known)
        if unknown:
            raise ValueError(f"profile {self.family} has no channel {', '.join(unknown)}")
        points = tuple(p for p in self.points if p.channel in channels)
        return self.model_copy(update={"points": points})


def load_profile(path: Path) -> Profile:
    """Load one profile file; errors name the file and the key."""
    data = read_toml(path)
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {describe_validation(exc)}") from exc


def find_profile(name: str, search: tuple[Path, ...], base: Path | None = None) -> Path:
    """A profile given by name (``<dir>/<name>.toml`` in ``search``) or by path.

    A path (ending in ``.toml`` or containing ``/``) is relative to ``base``, the
    folder of the config file naming it (the working directory when None); a
    relative path is then also tried in each profile dir.
    """
    if name.endswith(".toml") or "/" in name:
        path = Path(name)
        if path.is_absolute():
            candidates = [path]
        else:
            candidates = [base / path if base is not None else path, *(d / path for d in search)]
    else:
        candidates = [d / f"{name}.toml" for d in search]
    for c in candidates:
        if c.is_file():
            return c
    looked = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(f"profile {name!r} not found (looked at {looked})")
