"""The site model: assets, meters, products and accounting settings of one site.

One TOML file per site (``deploy/sites/<name>.toml``), named from server.toml's
``[compute] sites`` table. It is what a plant engineer writes from the
single-line diagram and the meter list: which meter serves which asset, which
meters are sub-meters of which incomer, how shared energy is split, what unit
and counter width each meter's readings carry. compute never reads the
simulator's files or ground truth; this file is its only knowledge of the plant.

Everything is checked at load and every error names the file and the key
(:class:`~compute.errors.SiteModelError`). Units: readings keep the unit the
edge reports (``unit``); compute works in one canonical unit per carrier
(:data:`CANONICAL_UNIT`), reached with :meth:`SiteModel.to_canonical`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from compute.errors import SiteModelError
from edge.settings import ConfigError, Frozen, describe_validation, read_toml

__all__ = [
    "CANONICAL_UNIT", "RATE_UNIT", "Asset", "CarbonChannels", "Carrier", "Meter", "Product",
    "SiteModel", "load_site", "load_sites",
]

Carrier = Literal["electricity", "natural_gas", "steam", "heat"]

# The unit compute computes in, per carrier; emission factors are per this unit.
CANONICAL_UNIT: dict[str, str] = {
    "electricity": "kWh", "natural_gas": "Nm3", "steam": "t", "heat": "GJ",
}
# The rate unit of `rated` and of the power channel after conversion (canonical unit per hour).
RATE_UNIT: dict[str, str] = {
    "electricity": "kW", "natural_gas": "Nm3/h", "steam": "t/h", "heat": "GJ/h",
}
# Reading units a meter of each carrier may carry → canonical units per reading unit.
UNITS: dict[str, dict[str, float]] = {
    "electricity": {"Wh": 1e-3, "kWh": 1.0, "MWh": 1e3},
    "natural_gas": {"Nm3": 1.0, "kNm3": 1e3},
    "steam": {"kg": 1e-3, "t": 1.0},
    "heat": {"MJ": 1e-3, "GJ": 1.0, "kWh": 3.6e-3, "MWh": 3.6},  # 1 kWh = 3.6 MJ
}
RATE_UNITS: dict[str, dict[str, float]] = {
    "electricity": {"W": 1e-3, "kW": 1.0, "MW": 1e3},
    "natural_gas": {"Nm3/h": 1.0},
    "steam": {"kg/h": 1e-3, "t/h": 1.0},
    "heat": {"kW": 3.6e-3, "MW": 3.6, "GJ/h": 1.0},
}
# PACT (Pathfinder Technical Specifications v2) declaredUnit values. There is no
# "ton": a per-tonne figure is 1000 × the per-kilogram one.
DeclaredUnit = Literal[
    "liter", "kilogram", "cubic meter", "kilowatt hour", "megajoule", "ton kilometer",
    "square meter",
]
BATCH_MASS_UNITS: dict[str, float] = {"kg": 1.0, "t": 1e3}  # batch event unit → kg


def _utc(v: datetime) -> datetime:
    if v.tzinfo is None:
        raise ValueError("needs a UTC offset, e.g. 2024-01-01T00:00:00Z")
    return v.astimezone(UTC)


def _zero_is_none(v: int | None) -> int | None:
    return v or None  # TOML has no null: 0 means "no integer counter"


def _blank_is_none(v: str | None) -> str | None:
    return v or None  # TOML has no null: "" means "no such channel"


def _float_ulp(value: float, bits: int) -> float:
    """Spacing of float32/float64 numbers at ``value``: a float counter's resolution there."""
    if value == 0.0 or not math.isfinite(value):
        return 0.0
    _, exp = math.frexp(abs(value))  # |value| = m · 2**exp, 0.5 ≤ m < 1
    return math.ldexp(1.0, exp - (24 if bits == 32 else 53))


def _counter_width(bits: int | None, resolution: float, key: str) -> list[str]:
    if bits is None and resolution != 0:
        return [f"{key}: a float counter (no counter_bits) has resolution 0, got {resolution:g}"]
    if bits is not None and resolution <= 0:
        return [f"{key}: an integer counter of {bits} bits needs resolution > 0 "
                "(counter unit per count)"]
    return []


class CarbonChannels(Frozen):
    """Channels of a smart carbon meter: its own kgCO2 counter and embedded factor."""

    co2_channel: str = "co2"  # kg, cumulative
    co2_counter_bits: int | None = Field(default=None, ge=0, le=64)  # None/0: float counter
    co2_resolution: float = Field(default=0.0, ge=0)  # kg per count
    factor_channel: str = "factor"  # kgCO2/kWh embedded in the meter

    _no_bits = field_validator("co2_counter_bits")(_zero_is_none)

    @property
    def co2_wrap(self) -> float | None:
        """kg at which the CO2 counter rolls over; None for a float counter."""
        bits = self.co2_counter_bits
        return None if bits is None else 2.0**bits * self.co2_resolution


class Asset(Frozen):
    line: str = Field(min_length=1)
    split: Literal["equal", "quantity"] = "equal"  # concurrent batches on the asset
    # the most batches it can run at once (a kiln 1, a packer with two spouts 2): one more
    # starting ends the earliest still open, flagged end_inferred. Absent: no limit
    max_concurrent: int | None = Field(default=None, ge=1)


class Meter(Frozen):
    """One meter as the edge reports it (channel, unit, counter) and where it sits."""

    carrier: Carrier
    unit: str  # unit of the counter channel's readings
    role: Literal["asset", "shared", "parent"] = "asset"
    asset: str | None = None  # role asset
    assets: tuple[str, ...] = ()  # shared: served assets; parent: residual scope (empty = all)
    children: tuple[str, ...] = ()  # parent: its direct sub-meters
    rule: Literal["mass", "machine_hours", "equal"] | None = None  # shared and parent
    channel: str = "energy"  # the cumulative counter
    counter_bits: int | None = Field(default=None, ge=0, le=64)  # None/0: float counter
    resolution: float = Field(default=0.0, ge=0)  # reading unit per count; 0 for floats
    float_bits: Literal[32, 64] = 64  # float counters: register width (float32 loses digits)
    rated: float = Field(gt=0)  # max rate, RATE_UNIT of the carrier: spike cap
    power_channel: str | None = "power"  # "" = the meter reports no rate
    commissioned: datetime
    carbon: CarbonChannels | None = None
    description: str = ""

    _no_bits = field_validator("counter_bits")(_zero_is_none)
    _no_power = field_validator("power_channel")(_blank_is_none)
    _aware = field_validator("commissioned")(_utc)

    @property
    def wrap(self) -> float | None:
        """Reading units at which the counter rolls over (em24: 2**32 × 0.1 kWh); None: float."""
        return None if self.counter_bits is None else 2.0**self.counter_bits * self.resolution

    def quantum(self, value: float) -> float:
        """Counter resolution at ``value`` in reading units: the count for integer counters,
        the float spacing for float counters (a float32 kWh counter at 60 000 kWh: ~0.004)."""
        if self.counter_bits is not None:
            return self.resolution
        return _float_ulp(value, self.float_bits)

    def problems(self, mid: str, assets: Mapping[str, Asset]) -> Iterator[str]:
        """What is wrong with this meter on its own, each as 'meters.<id>.<key>: …'."""
        key = f"meters.{mid}"
        if self.unit not in UNITS[self.carrier]:
            yield (f"{key}.unit: {self.unit!r} is not a {self.carrier} unit "
                   f"(one of {', '.join(UNITS[self.carrier])})")
        yield from _counter_width(self.counter_bits, self.resolution, f"{key}.resolution")
        yield from self._role_problems(key, assets)
        channels = [self.channel, self.power_channel]
        if self.carbon is not None:
            if self.carrier != "electricity":
                yield f"{key}.carbon: a smart carbon meter meters electricity, not {self.carrier}"
            c = self.carbon
            yield from _counter_width(c.co2_counter_bits, c.co2_resolution,
                                      f"{key}.carbon.co2_resolution")
            channels += [c.co2_channel, c.factor_channel]
        named = [c for c in channels if c]
        if len(set(named)) != len(named):
            yield f"{key}: channels {named} must differ"

    def _role_problems(self, key: str, assets: Mapping[str, Asset]) -> Iterator[str]:
        if self.role == "asset":
            if self.asset is None:
                yield f"{key}.asset: an asset meter names its asset"
            elif self.asset not in assets:
                yield f"{key}.asset: unknown asset {self.asset!r}"
        elif self.asset is not None:
            yield f"{key}.asset: only asset meters have one ({self.role} meters use assets)"
        for name, value, allowed in (("assets", self.assets, ("shared", "parent")),
                                     ("children", self.children, ("parent",)),
                                     ("rule", self.rule, ("shared", "parent"))):
            if value and self.role not in allowed:
                yield f"{key}.{name}: {self.role} meters have no {name}"
        if self.role in ("shared", "parent") and self.rule is None:
            yield f"{key}.rule: a {self.role} meter needs a rule (mass, machine_hours, equal)"
        if self.role == "shared" and not self.assets:
            yield f"{key}.assets: a shared meter names the assets it serves"
        if self.role == "parent" and not self.children:
            yield f"{key}.children: a parent meter names its sub-meters"
        for a in self.assets:
            if a not in assets:
                yield f"{key}.assets: unknown asset {a!r}"


# A URN (RFC 8141) as PACT wants product ids and classifications: urn:<nid>:<nss>
_URN = r"^urn:[A-Za-z0-9][A-Za-z0-9-]{0,31}:\S+$"


class CbamGoods(Frozen):
    """What the EU CBAM calls the product (Regulation (EU) 2023/956, Annex I): the goods
    category decides which embedded emissions count in the definitive period (iron and
    steel, aluminium, hydrogen: direct only; cement, fertilisers: direct and indirect)."""

    category: Literal["cement", "fertilisers", "iron_steel", "aluminium", "hydrogen"]
    cn_code: str = Field(pattern=r"^\d{4}( ?\d{2}){0,2}$")  # e.g. "2523 10 00" (clinker)


class Product(Frozen):
    name: str = ""
    declared_unit: DeclaredUnit = "kilogram"
    mass_per_declared_unit_kg: float = Field(default=1.0, gt=0)
    target_kgco2e_per_unit: float | None = Field(default=None, ge=0)
    # CBAM goods (compute/cbam.py); absent: not CBAM goods, no CBAM figures
    cbam: CbamGoods | None = None
    # PACT export (compute/pact): the product's ids (GTIN, article number …) and
    # classifications (UN CPC, CN code …) as URNs, e.g. "urn:gtin:5695872369587",
    # "urn:pact:productclassification:un-cpc:3744"; at least one id to export
    product_ids: tuple[Annotated[str, Field(pattern=_URN)], ...] = ()
    classifications: tuple[Annotated[str, Field(pattern=_URN)], ...] = ()
    # kgC of fossil origin in one declared unit of product (PACT fossilCarbonContent:
    # 0 for mineral products such as brick or cement); absent = unknown, no export
    fossil_carbon_content_kg: float | None = Field(default=None, ge=0)


class SiteModel(Frozen):
    site: str = Field(min_length=1)
    geography: str = Field(pattern=r"^[A-Z]{2}(-[A-Z0-9]{1,3})?$")  # ISO 3166-2, e.g. CN-SX
    grid_region: str = Field(min_length=1)  # emission factor region key, e.g. CN-North
    idle_policy: Literal["unallocated", "next_batch"]
    final_timeout_s: float = Field(gt=0)  # after a batch end: finalise with missing meters flagged
    carbon_tolerance: float = Field(default=0.02, gt=0, lt=1)  # relative, carbon-meter check
    # a parent's residual (incomer − Σ sub-meters) is averaged over this window (seconds,
    # centred) before allocation: the unmetered loads it measures change slowly, the
    # timing noise of subtracting large counters does not; 0 = no smoothing
    residual_smoothing_s: float = Field(default=600.0, ge=0, le=86_400)
    # how late an MES event may reach the gateway after its source time (OPC UA publishing,
    # MES buffering): allocations are settled, and batches finalised, only this far behind
    # the gateways' batch-stream watermark
    event_delay_s: float = Field(default=300.0, ge=0, le=86_400)
    assets: dict[str, Asset] = Field(min_length=1)
    meters: dict[str, Meter] = Field(min_length=1)
    products: dict[str, Product] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> SiteModel:
        problems = [p for mid, m in self.meters.items() for p in m.problems(mid, self.assets)]
        problems += self._tree_problems()
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _tree_problems(self) -> list[str]:
        problems: list[str] = []
        parent_of: dict[str, str] = {}
        for pid, parent in self.meters.items():
            for child in parent.children:
                key = f"meters.{pid}.children"
                if child not in self.meters:
                    problems.append(f"{key}: unknown meter {child!r}")
                elif child == pid:
                    problems.append(f"{key}: a meter is not its own child")
                elif child in parent_of:
                    problems.append(f"{key}: {child!r} is already a child of "
                                    f"{parent_of[child]!r} (one parent per meter)")
                elif self.meters[child].carrier != parent.carrier:
                    problems.append(f"{key}: {child!r} meters {self.meters[child].carrier}, "
                                    f"its parent {parent.carrier}")
                else:
                    parent_of[child] = pid
        for mid in self.meters:  # walk up: a cycle returns to where it started
            seen, up = [mid], parent_of.get(mid)
            while up is not None and up not in seen:
                seen.append(up)
                up = parent_of.get(up)
            if up == mid:
                problems.append(f"meters.{mid}.children: cycle {' → '.join([*seen, mid])}")
                break
        return problems

    # --- look-ups the worker needs --------------------------------------------

    @cached_property
    def _parent_of(self) -> dict[str, str]:
        return {c: pid for pid, m in self.meters.items() for c in m.children}

    def meter(self, meter: str) -> Meter:
        try:
            return self.meters[meter]
        except KeyError:
            raise SiteModelError(f"site {self.site}: unknown meter {meter!r}") from None

    def to_canonical(self, meter: str, value: float, unit: str | None = None) -> float:
        """``value`` (in ``unit``, default the meter's) in the carrier's canonical unit."""
        return value * self.canonical_factor(meter, unit)

    def canonical_factor(self, meter: str, unit: str | None = None) -> float:
        """Canonical units per reading unit (Wh → kWh: 0.001), for whole arrays at once."""
        m = self.meter(meter)
        factor = UNITS[m.carrier].get(unit or m.unit)
        if factor is None:
            raise SiteModelError(f"site {self.site}: meter {meter} reports {unit!r}, not a "
                                 f"{m.carrier} unit ({', '.join(UNITS[m.carrier])})")
        return factor

    def rate_to_canonical(self, meter: str, value: float, unit: str) -> float:
        """A power-channel reading (W, kW, Nm3/h, t/h …) in the carrier's RATE_UNIT."""
        m = self.meter(meter)
        factor = RATE_UNITS[m.carrier].get(unit)
        if factor is None:
            raise SiteModelError(f"site {self.site}: meter {meter} rate unit {unit!r} is not "
                                 f"one of {', '.join(RATE_UNITS[m.carrier])}")
        return value * factor

    def max_increase(self, meter: str, seconds: float) -> float:
        """The most the meter can count in ``seconds`` at its rated rate, canonical units."""
        return self.meter(meter).rated * seconds / 3600.0

    def meters_of_asset(self, asset: str) -> tuple[str, ...]:
        """The asset meters (role asset) of ``asset``."""
        return tuple(mid for mid, m in self.meters.items()
                     if m.role == "asset" and m.asset == asset)

    def scope(self, meter: str) -> tuple[str, ...]:
        """Assets the meter's energy is allocated to: an asset meter's asset, a shared
        meter's served assets, a parent's residual scope (every asset when empty)."""
        m = self.meter(meter)
        if m.role == "asset":
            return (m.asset,) if m.asset else ()
        if m.role == "parent" and not m.assets:
            return tuple(self.assets)
        return m.assets

    def parent_of(self, meter: str) -> str | None:
        return self._parent_of.get(meter)

    def meters_for_asset(self, asset: str) -> tuple[str, ...]:
        """Every meter a batch on ``asset`` needs data from: those whose scope holds the
        asset and, for a parent among them, its children (the residual is parent − Σ them),
        their children in turn (a child that is a parent counts as its own residual is
        computable, which needs all of its children), and so on down."""
        direct = [mid for mid in self.meters if asset in self.scope(mid)]
        needed = dict.fromkeys(direct)
        todo = list(direct)
        while todo:
            for child in self.meters[todo.pop()].children:
                if child not in needed:
                    needed[child] = None
                    todo.append(child)
        return tuple(needed)

    def lines(self) -> dict[str, tuple[str, ...]]:
        """Line → its assets, in file order."""
        out: dict[str, list[str]] = {}
        for aid, a in self.assets.items():
            out.setdefault(a.line, []).append(aid)
        return {line: tuple(ids) for line, ids in out.items()}

    def declared_units(self, product: str, quantity: float, unit: str) -> float:
        """A batch's ``quantity`` (batch-event unit, kg or t) in the product's declared units."""
        p = self.products.get(product)
        if p is None:
            raise SiteModelError(f"site {self.site}: unknown product {product!r} "
                                 f"(add it under [products])")
        if unit not in BATCH_MASS_UNITS:
            raise SiteModelError(f"site {self.site}: product {product}: batch unit {unit!r} "
                                 f"is not one of {', '.join(BATCH_MASS_UNITS)}")
        return quantity * BATCH_MASS_UNITS[unit] / p.mass_per_declared_unit_kg


def _describe(exc: ValidationError) -> str:
    """The site-wide checks' own 'key: problem' text; pydantic's for field errors."""
    errors = exc.errors()
    if all(not e["loc"] and e["type"] == "value_error" for e in errors):
        return "; ".join(str(e["ctx"]["error"]) for e in errors)
    return describe_validation(exc)


def load_site(path: Path) -> SiteModel:
    """Read and check one site file; errors name the file and every offending key."""
    try:
        data = read_toml(path)
    except ConfigError as exc:  # unreadable or not TOML: the message names the file
        raise SiteModelError(str(exc)) from exc
    try:
        return SiteModel.model_validate(data, context={"base": path.absolute().parent})
    except ValidationError as exc:
        raise SiteModelError(f"{path}: {_describe(exc)}") from exc


def load_sites(mapping: Mapping[str, str | Path], base: Path) -> dict[str, SiteModel]:
    """server.toml's ``[compute] sites = { site = "file.toml" }``, paths relative to ``base``
    (the folder of server.toml); each file must describe the site it is listed under."""
    sites: dict[str, SiteModel] = {}
    for name, rel in mapping.items():
        path = base / rel
        if not path.is_file():
            raise SiteModelError(f"compute.sites.{name}: no site file {path}")
        model = load_site(path)
        if model.site != name:
            raise SiteModelError(f"compute.sites.{name}: {path} describes site "
                                 f"{model.site!r}, not {name!r}")
        sites[name] = model
    return sites
