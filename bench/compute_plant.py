"""A plant of many lines for the compute worker benches: the small site, copied.

``scaled_site`` writes a site model with ``copies`` copies of
deploy/sites/small.toml's line (press, oven, seven meters each: incomer with
its residual, a shared carbon meter, counters of every width) under suffixed
names. :class:`PlantStream` plays the small scenario's batch plan on every
copy (each copy at its own phase, the plan repeating) and forms, per poll, the
signed frames an edge would send: per gateway one readings frame (counter and
power of every meter, the carbon meter's CO2, machine-state changes) and one
batch frame (the events since the last poll, empty otherwise: the watermark).

Not the simulator and not a truth: the benches measure time, not energy.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from edge.wire import BatchEvent, BatchFrame, Frame, Reading, encode, generate_private_key

ROOT = Path(__file__).resolve().parent.parent
PLAN_S = 6000.0  # the small scenario's plan: three batches in 100 min, then it repeats
# batch, asset, product, start s, end s, quantity t (the worker tests stream it too)
PLAN = (("B-001", "L1-press", "brick-A", 600, 2400, 12.0),
        ("B-002", "L1-oven", "brick-A", 1200, 4200, 12.0),
        ("B-003", "L1-oven", "brick-B", 3000, 5400, 8.0))
# meter -> asset, idle and production rate (carrier rate unit), counter and rate unit
ASSET_METERS = {"M-PRESS": ("L1-press", 6.0, 55.0), "M-DRIVE": ("L1-press", 1.0, 18.0),
                "M-OVEN": ("L1-oven", 20.0, 140.0), "M-GAS": ("L1-oven", 3.0, 35.0),
                "M-STEAM": ("L1-oven", 0.02, 0.3)}
UNITS = {"M-PRESS": ("kWh", "kW"), "M-DRIVE": ("kWh", "kW"), "M-OVEN": ("kWh", "kW"),
         "M-GAS": ("Nm3", "Nm3/h"), "M-STEAM": ("t", "t/h"), "M-AIR": ("kWh", "kW"),
         "M-INC": ("kWh", "kW")}
CO2_KG_PER_KWH = 0.55


def scaled_site(path: Path, copies: int, **settings: Any) -> Path:
    """deploy/sites/small.toml with its line copied ``copies`` times (names get ``-<k>``);
    ``settings`` override site-wide keys (event_delay_s, residual_smoothing_s …)."""
    base = tomllib.loads((ROOT / "deploy/sites/small.toml").read_text())
    assets: dict[str, Any] = {}
    meters: dict[str, Any] = {}
    for k in range(copies):
        sfx = f"-{k}"
        for aid, a in base["assets"].items():
            assets[aid + sfx] = {**a, "line": a["line"] + sfx}
        for mid, m in base["meters"].items():
            m = dict(m)
            if "asset" in m:
                m["asset"] += sfx
            for key in ("assets", "children"):
                if key in m:
                    m[key] = [x + sfx for x in m[key]]
            meters[mid + sfx] = m
    path.write_text(tomli_w.dumps({**base, **settings, "assets": assets, "meters": meters}))
    return path


def _running(asset: str, u: float) -> list[tuple[str, float]]:
    return [(b, q) for b, a, _p, s, e, q in PLAN if a == asset and s <= u < e]


def _rates(u: float) -> dict[str, float]:
    """Every meter's rate at plan time ``u`` (s into the plan)."""
    on = {a: bool(_running(a, u)) for a in ("L1-press", "L1-oven")}
    out = {m: (prod if on[a] else idle) for m, (a, idle, prod) in ASSET_METERS.items()}
    out["M-AIR"] = 4.0 + 9.0 * sum(on.values())
    out["M-INC"] = out["M-PRESS"] + out["M-OVEN"] + out["M-AIR"] + out["M-DRIVE"] + 20.0
    return out


@dataclass
class PlantStream:
    """Signed frames of ``copies`` lines, one poll at a time.

    ``speed``: plan seconds per second of data time (100 plays the 100-minute plan in
    a minute, as the demo does); rates stay those of the plan, so counters never spike.
    """

    copies: int
    gateways: int = 1
    speed: float = 1.0
    site: str = "demo-site"
    keys: list[Any] = field(default_factory=list)
    _counters: dict[tuple[int, str], float] = field(default_factory=dict)
    _co2: dict[int, float] = field(default_factory=dict)
    _states: dict[tuple[int, str], int] = field(default_factory=dict)
    seq: int = 0  # of the last poll (every gateway numbers its frames alike)
    _t0: int | None = None  # data time ns of the first poll
    _last: tuple[int, float] | None = None  # data time ns, plan time s of the last poll

    def __post_init__(self) -> None:
        self.keys = self.keys or [generate_private_key() for _ in range(self.gateways)]
        self._counters = {(k, m): 1000.0 + 7.0 * k for k in range(self.copies) for m in UNITS}
        self._co2 = dict.fromkeys(range(self.copies), 500.0)

    def gateway(self, g: int) -> str:
        return f"gw-bench-{g}"

    def _plan(self, k: int, plan_s: float) -> tuple[float, int]:
        """(time into the plan, plan cycle) of copy ``k``: copies start 130 s apart."""
        t = plan_s + (k * 130) % PLAN_S
        return t % PLAN_S, int(t // PLAN_S)

    def poll(self, ts_ns: int) -> list[tuple[str, bytes]]:
        """(stream, envelope) of every gateway for a poll at ``ts_ns`` (ns, increasing)."""
        if self._t0 is None:
            self._t0 = ts_ns
        plan_s = (ts_ns - self._t0) / 1e9 * self.speed
        hours = 0.0 if self._last is None else (ts_ns - self._last[0]) / 3.6e12
        prev_plan = None if self._last is None else self._last[1]
        self._last = (ts_ns, plan_s)
        self.seq += 1
        out: list[tuple[str, bytes]] = []
        for g in range(self.gateways):
            rows: list[Reading] = []
            events: list[BatchEvent] = []
            for k in range(g, self.copies, self.gateways):
                events += self._copy(k, ts_ns, plan_s, prev_plan, hours, rows)
            key = self.keys[g]
            out.append(("batches", encode(BatchFrame(
                self.site, self.gateway(g), self.seq, ts_ns, tuple(events)), key)))
            out.append(("readings", encode(Frame.from_readings(
                self.site, self.gateway(g), self.seq, ts_ns, rows), key)))
        return out

    def _copy(self, k: int, ts_ns: int, plan_s: float, prev_plan: float | None,
              hours: float, rows: list[Reading]) -> list[BatchEvent]:
        u, cycle = self._plan(k, plan_s)
        if prev_plan is not None:  # the rates held since the last poll
            rates = _rates(self._plan(k, prev_plan)[0])
            for m in UNITS:
                self._counters[(k, m)] += rates[m] * hours
            self._co2[k] += rates["M-AIR"] * hours * CO2_KG_PER_KWH
        now = _rates(u)
        for m, (unit, rate_unit) in UNITS.items():
            rows.append(Reading(f"{m}-{k}", "energy", ts_ns, round(self._counters[(k, m)], 6),
                                unit, "good"))
            rows.append(Reading(f"{m}-{k}", "power", ts_ns, now[m], rate_unit, "good"))
        rows.append(Reading(f"M-AIR-{k}", "co2", ts_ns, int(self._co2[k] * 10) / 10, "kg",
                            "good"))
        for asset in ("L1-press", "L1-oven"):
            code = 3 if _running(asset, u) else 1
            if self._states.get((k, asset)) != code:
                self._states[(k, asset)] = code
                rows.append(Reading(f"{asset}-{k}", "state", ts_ns, code, "state", "good"))
        if prev_plan is None:
            return []
        u0, cycle0 = self._plan(k, prev_plan)
        events = []
        for b, a, p, s, e, q in PLAN:
            for kind, at in (("start", s), ("end", e)):
                # plan instants passed since the last poll (the plan may wrap in between)
                if (cycle0 == cycle and u0 < at <= u) or (cycle0 < cycle and (
                        at > u0 or at <= u)):
                    c = cycle if cycle0 == cycle or at <= u else cycle0
                    events.append(BatchEvent(
                        f"{a}-{k}", f"{b}-{k}-{c}", p, kind, ts_ns,  # type: ignore[arg-type]
                        q if kind == "end" else None, "t" if kind == "end" else None))
        return events
