"""Expand a compact ``[generate]`` table into assets, meters and batches.

The ``stress`` scenario describes 1,000 meters in a few lines; expansion is
deterministic, so the expanded scenario is the same on every machine.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

# families cycled over a line's asset meters, with their carrier
_CYCLE: tuple[tuple[str, str], ...] = (
    ("sdm630", "electricity"), ("pm5000", "electricity"), ("em24", "electricity"),
    ("carbon", "electricity"), ("flow", "natural_gas"),
)
_RATES = {"electricity": {"off": 0.0, "idle": 3.0, "setup": 8.0, "production": 30.0},
          "natural_gas": {"off": 0.0, "idle": 2.0, "setup": 4.0, "production": 20.0}}


class Generate(BaseModel):
    """Shape of a generated plant."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    lines: Annotated[int, Field(ge=1, le=200)]
    assets_per_line: Annotated[int, Field(ge=1, le=100)]
    meters_per_asset: Annotated[int, Field(ge=1, le=50)]
    units_per_port: Annotated[int, Field(ge=1, le=247)] = 100
    batch_s: Annotated[int, Field(ge=1)] = 3600
    gap_s: Annotated[int, Field(ge=0)] = 600
    horizon_s: Annotated[int, Field(ge=1)] = 86400
    co2_factor: float = 0.58


def expand(data: dict[str, object]) -> dict[str, object]:
    """Return ``data`` with its ``[generate]`` table turned into plain lists."""
    if "generate" not in data:
        return data
    out = dict(data)
    gen = Generate.model_validate(out.pop("generate"))
    assets: list[dict[str, object]] = []
    meters: list[dict[str, object]] = []
    batches: list[dict[str, object]] = []
    for li in range(gen.lines):
        line = f"L{li + 1:02d}"
        line_assets = [f"{line}-A{ai + 1:02d}" for ai in range(gen.assets_per_line)]
        assets += [{"id": a, "line": line, "setup_s": min(300, gen.gap_s)} for a in line_assets]
        children: list[str] = []
        for ai, asset in enumerate(line_assets):
            for mi in range(gen.meters_per_asset):
                family, carrier = _CYCLE[(ai + mi) % len(_CYCLE)]
                mid = f"{asset}-M{mi + 1:02d}"
                meters.append(_meter(mid, family, carrier, asset, gen))
                if carrier == "electricity":
                    children.append(mid)
            batches += _batches(asset, ai, gen)
        air = f"{line}-AIR"
        meters.append({"id": air, "family": "pm5000", "role": "shared", "assets": line_assets,
                       "base": 5.0, "rates": {"idle": 1.0, "setup": 2.0, "production": 4.0},
                       "rule": "machine_hours"})
        meters.append({"id": f"{line}-INC", "family": "pm5000", "role": "parent",
                       "children": [*children, air], "assets": line_assets, "rule": "mass",
                       "unmetered": [{"name": "lighting", "kw": 6.0},
                                     {"name": "hvac", "kw": 12.0, "daily_amplitude": 0.3}]})
    for i, m in enumerate(meters):
        m["modbus"] = {"port_offset": i // gen.units_per_port, "unit": i % gen.units_per_port + 1}
        m.setdefault("counter_start", 1000.0 + i)
    out.update(assets=assets, meters=meters, batches=batches)
    return out


def _meter(mid: str, family: str, carrier: str, asset: str, gen: Generate) -> dict[str, object]:
    meter: dict[str, object] = {"id": mid, "family": family, "carrier": carrier,
                                "asset": asset, "rates": _RATES[carrier]}
    if family == "carbon":
        meter["co2_factor"] = gen.co2_factor
    return meter


def _batches(asset: str, ai: int, gen: Generate) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    t = gen.gap_s + 60 * ai  # stagger assets so batch edges do not all coincide
    n = 0
    while t + gen.batch_s <= gen.horizon_s:
        n += 1
        out.append({"id": f"{asset}-B{n:03d}", "asset": asset, "product": f"P{ai % 3 + 1}",
                    "start_s": t, "end_s": t + gen.batch_s, "quantity": 10.0 + ai, "unit": "t"})
        t += gen.batch_s + gen.gap_s
    return out
