"""Scenario configuration: TOML loaded with tomllib into frozen pydantic models.

A bad scenario fails at load with the file, the key and what was expected.
Times in a scenario are simulated seconds from the scenario start.
"""

from __future__ import annotations

import tomllib
from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from simulators.errors import ScenarioError
from simulators.faults import Fault

State = Literal["off", "idle", "setup", "production"]
Carrier = Literal["electricity", "natural_gas", "steam"]
Rule = Literal["machine_hours", "mass"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ScenarioInfo(_Frozen):
    name: str
    site: str
    start: datetime  # simulated clock at t = 0, UTC
    step_s: Annotated[int, Field(ge=1, le=60)] = 1
    interval_s: Annotated[int, Field(ge=1)] = 60
    description: str = ""


class Endpoints(_Frozen):
    host: str = "127.0.0.1"
    modbus_port_base: Annotated[int, Field(ge=0, le=65535)] = 15020
    opcua_port: Annotated[int, Field(ge=0, le=65535)] = 14840
    opcua_path: str = "/plantprint/sim"
    namespace: str = "urn:plantprint:simulator"


class Allocation(_Frozen):
    """Conventions the ground truth assumes (see docs/simulators.md)."""

    idle_policy: Literal["unallocated", "next_batch"] = "unallocated"


class Asset(_Frozen):
    id: str
    line: str
    split: Literal["equal", "quantity"] = "equal"  # concurrent batches on this asset
    setup_s: Annotated[int, Field(ge=0)] = 0  # state is setup this long before a batch
    slots: Annotated[int, Field(ge=1, le=8)] = 1  # OPC UA batch slots (max concurrency)
    off_windows: tuple[tuple[int, int], ...] = ()


class ModbusAddress(_Frozen):
    port_offset: Annotated[int, Field(ge=0, le=999)] = 0
    unit: Annotated[int, Field(ge=1, le=247)] = 1


class Rates(_Frozen):
    """Rate by asset state, in the carrier's rate unit (kW, Nm3/h, t/h)."""

    off: Annotated[float, Field(ge=0)] = 0.0
    idle: Annotated[float, Field(ge=0)] = 0.0
    setup: Annotated[float, Field(ge=0)] = 0.0
    production: Annotated[float, Field(ge=0)] = 0.0

    def of(self, state: State) -> float:
        return float(getattr(self, state))


class Unmetered(_Frozen):
    name: str
    kw: Annotated[float, Field(ge=0)]
    daily_amplitude: Annotated[float, Field(ge=0, le=1)] = 0.0  # HVAC: ±share over a day


class Meter(_Frozen):
    id: str
    family: str
    carrier: Carrier = "electricity"
    role: Literal["asset", "shared", "parent"] = "asset"
    asset: str | None = None  # role asset
    assets: tuple[str, ...] = ()  # role shared: served assets; parent: residual batches
    children: tuple[str, ...] = ()  # role parent
    rule: Rule = "machine_hours"  # shared / parent residual rule
    rates: Rates = Rates()  # role asset: by state; role shared: per served asset
    base: Annotated[float, Field(ge=0)] = 0.0  # shared: rate whatever the states
    unmetered: tuple[Unmetered, ...] = ()  # parent: loads no child measures
    noise: Annotated[float, Field(ge=0, le=0.5)] = 0.02  # relative, gaussian per step
    rated: Annotated[float, Field(gt=0)] = 1000.0  # rated rate, bound for spike detection
    counter_start: Annotated[float, Field(ge=0)] = 0.0  # counter at t = 0, counter unit
    co2_factor: Annotated[float, Field(ge=0)] = 0.0  # carbon meter: kgCO2 per kWh
    modbus: ModbusAddress | None = None
    description: str = ""


class Batch(_Frozen):
    id: str
    asset: str
    product: str
    start_s: Annotated[int, Field(ge=0)]
    end_s: Annotated[int, Field(gt=0)]
    quantity: Annotated[float, Field(gt=0)]
    unit: str = "t"


class Scenario(_Frozen):
    scenario: ScenarioInfo
    endpoints: Endpoints = Endpoints()
    allocation: Allocation = Allocation()
    assets: tuple[Asset, ...]
    meters: tuple[Meter, ...]
    batches: tuple[Batch, ...] = ()
    faults: tuple[Fault, ...] = ()

    def meter(self, meter_id: str) -> Meter:
        for m in self.meters:
            if m.id == meter_id:
                return m
        raise KeyError(meter_id)


def load_scenario(path: str | Path) -> Scenario:
    """Read, expand (``[generate]``) and validate a scenario file."""
    path = Path(path)
    data = _read_toml(path)
    base_name = data.pop("extends", None)
    if base_name is not None:
        if not isinstance(base_name, str):
            raise ScenarioError(f"{path}: extends: expected a scenario file name")
        base = _read_toml(path.parent / base_name)
        base.pop("extends", None)
        data = merge_scenarios(base, data)
    return scenario_from_dict(data, str(path))


def _read_toml(path: Path) -> dict[str, object]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read scenario: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: not valid TOML: {exc}") from exc


def merge_scenarios(base: dict[str, object], over: dict[str, object]) -> dict[str, object]:
    """``extends``: tables merge key by key, ``faults`` append, other arrays replace."""
    out = dict(base)
    for key, value in over.items():
        old = out.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            out[key] = {**old, **value}
        elif key == "faults" and isinstance(old, list) and isinstance(value, list):
            out[key] = old + value
        else:
            out[key] = value
    return out


def scenario_from_dict(data: dict[str, object], source: str = "<scenario>") -> Scenario:
    """Validate a parsed scenario; ``source`` names it in errors."""
    from simulators.generate import expand
    from simulators.validate import check_references

    try:
        data = expand(data)
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(f"{source}: {_describe(exc)}") from exc
    except ValueError as exc:
        raise ScenarioError(f"{source}: {exc}") from exc
    problems = check_references(scenario)
    if problems:
        raise ScenarioError(f"{source}: " + "; ".join(problems))
    return scenario


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ""
        for item in err["loc"]:
            loc += f"[{item}]" if isinstance(item, int) else (f".{item}" if loc else str(item))
        parts.append(f"{loc or '(root)'}: {err['msg']} (got {err.get('input')!r:.60})")
    more = len(exc.errors()) - 5
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")
