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

A profile may ``extends = "<name>"`` another (a shipped one, found like any
profile): it inherits the base's points and read limits, a point with a
channel the base has replaces that point, other points are added, and any of
``family``, ``description``, ``max_gap``, ``max_registers`` it sets win. So
an integrator adds a register the shipped map lacks without copying the map,
and the added point is grouped with its neighbours under the base's
``max_gap``, which is known to suit that device family.
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

    family: str = ""  # required unless it extends another profile (then: the base's)
    description: str = ""
    # devices that refuse reads spanning unmapped registers need max_gap 0
    max_gap: Annotated[int, Field(ge=0, le=MAX_REGISTERS)] = 0
    max_registers: Annotated[int, Field(ge=1, le=MAX_REGISTERS)] = MAX_REGISTERS
    extends: str | None = None  # a base profile, by name or path (resolve_extends)
    points: tuple[PointSpec, ...] = ()

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
        if self.extends is None and not self.family:
            raise ValueError("family is required (unless the profile extends another)")
        if self.extends is None and not self.points:
            raise ValueError("points: at least one point is required (unless the profile "
                             "extends another)")
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


_EXTENDS_DEPTH = 8  # a chain longer than this is a loop


def resolve_extends(profile: Profile, search: tuple[Path, ...], base_dir: Path | None,
                    depth: int = 0) -> Profile:
    """``profile`` with its base's points and limits merged in (see the module docstring)."""
    if profile.extends is None:
        return profile
    if depth >= _EXTENDS_DEPTH:
        raise ConfigError(f"extends {profile.extends!r}: more than {_EXTENDS_DEPTH} levels "
                          "(a profile that extends itself?)")
    path = find_profile(profile.extends, search, base_dir)
    base = resolve_extends(load_profile(path), search, path.parent, depth + 1)
    points = {p.channel: p for p in base.points}
    for p in profile.points:  # replaced in place, or added
        points[p.channel] = _inherit(p, points.get(p.channel), base.points)
    data = base.model_dump()
    data.update({k: getattr(profile, k) for k in profile.model_fields_set
                 if k in ("family", "description", "max_gap", "max_registers")})
    data["points"] = [p.model_dump() for p in points.values()]
    data["extends"] = None
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"extends {profile.extends!r}: {describe_validation(exc)}") from exc


def _inherit(point: PointSpec, replaced: PointSpec | None,
             base: tuple[PointSpec, ...]) -> PointSpec:
    """``table``/``word_order`` a point does not give: the replaced point's, else the
    base's when every base point agrees (a uniform device)."""
    update: dict[str, Any] = {}
    for key in ("table", "word_order"):
        if key in point.model_fields_set:
            continue
        if replaced is not None:
            update[key] = getattr(replaced, key)
        elif len({getattr(b, key) for b in base}) == 1:
            update[key] = getattr(base[0], key)
    return point.model_copy(update=update) if update else point


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
