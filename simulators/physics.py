"""Plant physics (pure): states, rates, true energy and counters per step.

Driven only by the step count and the seed, never by real time, so a run is
reproducible to the byte.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from simulators.config import Batch, Meter, Scenario
from simulators.counters import CounterModel
from simulators.devices import FAMILIES
from simulators.faults import FaultBook
from simulators.schedule import Schedule


@dataclass
class MeterState:
    """Mutable physics state of one meter."""

    cfg: Meter
    counter: CounterModel
    co2: CounterModel | None = None
    rate: float = 0.0  # carrier rate unit (kW, Nm3/h, t/h)
    energy: float = 0.0  # cumulative true energy since t = 0, counter unit
    step_energy: float = 0.0
    step_unmetered: float = 0.0  # parent meters only
    step_spike: float = 0.0


@dataclass
class StepResult:
    """What happened in the step ``[t, t + step_s)``."""

    t: int
    started: list[Batch]
    ended: list[Batch]
    events: list[dict[str, object]] = field(default_factory=list)


def topological(meters: tuple[Meter, ...]) -> list[Meter]:
    """Meters ordered children before parents."""
    by_id = {m.id: m for m in meters}
    out: list[Meter] = []
    seen: set[str] = set()

    def visit(m: Meter) -> None:
        if m.id in seen:
            return
        seen.add(m.id)
        for c in m.children:
            visit(by_id[c])
        out.append(m)

    for m in meters:
        visit(m)
    return out


class PlantModel:
    """The whole plant, advanced one fixed step at a time."""

    def __init__(self, scenario: Scenario, seed: int) -> None:
        self.scenario = scenario
        self.step_s = scenario.scenario.step_s
        self.schedule = Schedule(scenario)
        self.faults = FaultBook(scenario.faults)
        self.rng = random.Random(seed)
        self.t = 0  # start of the next step, simulated seconds
        self.meters = [self._meter_state(m) for m in topological(scenario.meters)]
        self.by_id = {m.cfg.id: m for m in self.meters}
        start = scenario.scenario.start
        self._day_offset = start.hour * 3600 + start.minute * 60 + start.second

    def _meter_state(self, m: Meter) -> MeterState:
        family = FAMILIES[m.family]
        margin = self.faults.rollovers.get(m.id)
        counter = CounterModel(family.counter("energy"), m.counter_start, 1.0, margin)
        co2 = None
        if m.family == "carbon":
            co2_start = m.counter_start * m.co2_factor
            co2 = CounterModel(family.counter("co2"), co2_start, m.co2_factor)
        return MeterState(m, counter, co2)

    def step(self) -> StepResult:
        """Advance the plant by one step and return what happened in it."""
        t = self.t
        started, ended = self.schedule.advance(t)
        result = StepResult(t, started, ended)
        for ms in self.meters:
            self._apply_counter_faults(ms, t, result)
        for ms in self.meters:
            ms.rate = self._rate(ms, t)
            ms.step_energy = ms.rate * self.step_s / 3600.0
            ms.energy += ms.step_energy
            for c in (ms.counter, ms.co2):
                if c is not None:
                    c.sync_float(ms.energy, ms.step_energy)
                    c.advance(ms.energy)
        self.t = t + self.step_s
        return result

    def _noisy(self, value: float, noise: float) -> float:
        if value <= 0.0:
            return 0.0
        return max(0.0, value * (1.0 + noise * self.rng.gauss(0.0, 1.0)))

    def _rate(self, ms: MeterState, t: int) -> float:
        cfg = ms.cfg
        states = self.schedule.state
        if cfg.role == "asset":
            return self._noisy(cfg.rates.of(states[cfg.asset or ""]), cfg.noise)
        if cfg.role == "shared":
            raw = cfg.base + sum(cfg.rates.of(states[a]) for a in cfg.assets)
            return self._noisy(raw, cfg.noise)
        children = sum(self.by_id[c].rate for c in cfg.children)
        day = 2.0 * math.pi * ((self._day_offset + t) % 86400) / 86400.0
        unmetered = sum(self._noisy(u.kw * (1.0 + u.daily_amplitude * math.sin(day)), cfg.noise)
                        for u in cfg.unmetered)
        ms.step_unmetered = unmetered * self.step_s / 3600.0
        return children + unmetered

    def _apply_counter_faults(self, ms: MeterState, t: int, result: StepResult) -> None:
        ms.step_spike = 0.0
        mid = ms.cfg.id
        reset = self.faults.resets.get((mid, t))
        if reset is not None:
            before = ms.counter.raw(ms.energy)
            ms.counter.reset(reset.new_counter, ms.energy)
            if ms.co2 is not None:
                ms.co2.reset(reset.new_counter * ms.cfg.co2_factor, ms.energy)
            result.events.append({"kind": "reset", "meter": mid, "counter_before": before,
                                  "counter_after": ms.counter.raw(ms.energy)})
        amount = self.faults.spikes.get((mid, t))
        if amount is not None:
            if ms.counter.bits is not None:
                amount = round(amount / ms.counter.resolution) * ms.counter.resolution
            ms.counter.spike(amount, ms.energy)
            ms.step_spike = amount
            result.events.append({"kind": "spike", "meter": mid, "amount": amount})

    def readings(self, ms: MeterState, rng: random.Random, at_s: float | None = None,
                 ) -> dict[str, float]:
        """What the device shows now, or at simulated ``at_s`` inside the last step (its
        energy interpolated at the step's constant rate); auxiliary noise from ``rng``,
        not the seed."""
        cfg = ms.cfg
        energy = ms.energy
        if at_s is not None:  # the last step ran [t - step_s, t) at one rate
            back = min(max(self.t - at_s, 0.0), float(self.step_s))
            energy -= ms.step_energy * back / self.step_s
        out: dict[str, float] = {"energy": ms.counter.raw(energy), "power": ms.rate,
                                 "status": 1.0, "energy_export": 0.0}
        if ms.co2 is not None:
            out["co2"] = ms.co2.raw(energy)
            out["factor"] = cfg.co2_factor
        if cfg.carrier == "electricity":
            out.update(_electrical(ms.rate, rng))
        else:
            out["temperature"] = 180.0 if cfg.carrier == "steam" else 15.0
            out["pressure"] = 10.0 if cfg.carrier == "steam" else 4.0
        return out


def _electrical(kw: float, rng: random.Random) -> dict[str, float]:
    pf = 0.92 + 0.01 * rng.uniform(-1.0, 1.0)
    out = {"frequency": 50.0 + 0.02 * rng.uniform(-1.0, 1.0), "power_factor": pf}
    for i, share in enumerate((0.34, 0.33, 0.33), start=1):
        volts = 230.0 + 2.0 * rng.uniform(-1.0, 1.0)
        out[f"voltage_l{i}"] = volts
        out[f"power_l{i}"] = kw * share
        out[f"current_l{i}"] = kw * share * 1000.0 / (volts * pf)
    return out
