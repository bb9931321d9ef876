"""Ground-truth accounting (pure): true energy per meter per batch, per interval.

Applies the allocation conventions of docs/simulators.md step by step and
returns JSON-ready records; the runner writes them as JSON lines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from simulators.devices import CARRIER_UNITS, FAMILIES
from simulators.slots import plan_slots, step_of

if TYPE_CHECKING:
    from simulators.config import Batch, Scenario
    from simulators.physics import MeterState, PlantModel, StepResult

Record = dict[str, object]


def iso(start: datetime, t: float) -> str:
    """Simulated second ``t`` as ISO 8601 UTC with ``Z``."""
    return (start + timedelta(seconds=t)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass
class _Acc:
    """One meter's interval (or whole-run) accumulator."""

    energy: float = 0.0
    batches: dict[str, float] = field(default_factory=dict)
    unallocated: float = 0.0
    children: float = 0.0
    unmetered: float = 0.0
    spike: float = 0.0
    resets: int = 0


class TruthAccountant:
    """Consumes plant steps, emits interval, event and summary records."""

    def __init__(self, scenario: Scenario, model: PlantModel, seed: int) -> None:
        self.sc = scenario
        self.model = model
        self.seed = seed
        self.start = scenario.scenario.start
        self.interval_s = scenario.scenario.interval_s
        self.policy = scenario.allocation.idle_policy
        self._assets = {a.id: a for a in scenario.assets}
        all_assets = tuple(a.id for a in scenario.assets)
        self._scope = {m.id: ((m.asset,) if m.role == "asset" and m.asset else
                              (m.assets or all_assets)) for m in scenario.meters}
        # what the MES slots show out of time: late ends, and starts that wait for a slot
        self._published: dict[int, list[Record]] = {}
        step = model.step_s
        for use in plan_slots(scenario, model.faults.late_ends).values():
            b = use.batch
            if use.waited:
                self._published.setdefault(use.shown_s, []).append({
                    "kind": "start_published", "batch": b.id,
                    "true_start": iso(self.start, b.start_s), "slot": use.slot})
            if use.ended_s > step_of(b.end_s, step):
                self._published.setdefault(use.ended_s, []).append({
                    "kind": "end_published", "batch": b.id,
                    "true_end": iso(self.start, b.end_s)})
        self._interval_start = 0
        self._acc = {ms.cfg.id: _Acc() for ms in model.meters}
        self._total: dict[str, Record] = {ms.cfg.id: {} for ms in model.meters}
        self._mark = {ms.cfg.id: self._counter_mark(ms) for ms in model.meters}
        self._end_t = 0

    def header(self) -> Record:
        sc = self.sc
        return {
            "type": "header", "scenario": sc.scenario.name, "site": sc.scenario.site,
            "seed": self.seed, "start": iso(self.start, 0), "step_s": sc.scenario.step_s,
            "interval_s": self.interval_s,
            "conventions": {"idle_policy": self.policy,
                            "split": {a.id: a.split for a in sc.assets},
                            "rules": {m.id: m.rule for m in sc.meters if m.role != "asset"}},
            "meters": [self._meter_header(ms) for ms in self.model.meters],
            "batches": [{"id": b.id, "asset": b.asset, "product": b.product,
                         "start": iso(self.start, b.start_s), "end": iso(self.start, b.end_s),
                         "quantity": b.quantity, "unit": b.unit} for b in sc.batches],
        }

    def _meter_header(self, ms: MeterState) -> Record:
        m = ms.cfg
        spec = FAMILIES[m.family].counter("energy")
        counter: Record = {"start": ms.counter.raw(0.0), "bits": ms.counter.bits,
                           "resolution": ms.counter.resolution}
        if spec is not None:
            counter.update(register=spec.address, table=spec.table, dtype=spec.dtype,
                           word_order=spec.word_order, scale=spec.scale,
                           register_unit=spec.unit)
        return {"id": m.id, "family": m.family, "carrier": m.carrier,
                "unit": CARRIER_UNITS[m.carrier][0], "role": m.role, "asset": m.asset,
                "assets": list(self._scope[m.id]), "children": list(m.children),
                "rule": m.rule, "rated": m.rated, "counter": counter,
                "co2_factor": m.co2_factor or None}

    def on_step(self, res: StepResult) -> list[Record]:
        """Account one step; returns the records it completes."""
        out = self._events(res)
        for ms in self.model.meters:
            self._allocate(ms, res.t)
        self._end_t = res.t + self.model.step_s
        if self._end_t % self.interval_s == 0:
            out += self._close_interval()
        return out

    def _events(self, res: StepResult) -> list[Record]:
        at = iso(self.start, res.t)
        out: list[Record] = [{"type": "event", "kind": "batch_start", "at": at, "batch": b.id,
                              "asset": b.asset} for b in res.started]
        out += [{"type": "event", "kind": "batch_end", "at": at, "batch": b.id,
                 "asset": b.asset, "quantity": b.quantity, "unit": b.unit} for b in res.ended]
        out += [{"type": "event", "kind": ev["kind"], "at": at, **ev}
                for ev in self._published.pop(res.t, [])]
        for r in self.model.faults.restarts:
            if res.t in (r.at_s, r.at_s + r.down_s):
                kind = "opcua_down" if res.t == r.at_s else "opcua_up"
                out.append({"type": "event", "kind": kind, "at": at})
        for ev in res.events:
            out.append({"type": "event", "at": at, **ev})
            if ev["kind"] == "reset":
                self._acc[str(ev["meter"])].resets += 1
        return out

    def _allocate(self, ms: MeterState, t: int) -> None:
        cfg = ms.cfg
        acc = self._acc[cfg.id]
        acc.energy += ms.step_energy
        acc.spike += ms.step_spike
        share = ms.step_energy
        if cfg.role == "parent":
            children = sum(self.model.by_id[c].step_energy for c in cfg.children)
            acc.children += children
            acc.unmetered += ms.step_unmetered
            share = ms.step_unmetered
        weights = self._weights(cfg.id, cfg.role, cfg.rule)
        if not weights:
            nxt = (self.model.schedule.next_of(self._scope[cfg.id], t)
                   if self.policy == "next_batch" else None)
            if nxt is None:
                acc.unallocated += share
                return
            weights = {nxt.id: 1.0}
        total = sum(weights.values())
        for b_id, w in weights.items():
            acc.batches[b_id] = acc.batches.get(b_id, 0.0) + share * w / total

    def _weights(self, meter: str, role: str, rule: str) -> dict[str, float]:
        running = self.model.schedule.running
        batches: list[Batch] = [b for a in self._scope[meter] for b in running[a]]
        if not batches:
            return {}
        if role == "asset":
            split = self._assets[batches[0].asset].split
            return {b.id: (b.quantity if split == "quantity" else 1.0) for b in batches}
        if rule == "mass":
            return {b.id: b.quantity / (b.end_s - b.start_s) for b in batches}
        return {b.id: 1.0 for b in batches}

    def _counter_mark(self, ms: MeterState) -> tuple[float, float, int, float]:
        co2 = ms.co2.increase if ms.co2 is not None else 0.0
        return (ms.counter.raw(ms.energy), ms.counter.increase, ms.counter.rollovers, co2)

    def _close_interval(self) -> list[Record]:
        out = []
        t0, t1 = self._interval_start, self._end_t
        for ms in self.model.meters:
            out.append(self._interval_record(ms, t0, t1))
        self._interval_start = t1
        return out

    def _interval_record(self, ms: MeterState, t0: int, t1: int) -> Record:
        from simulators.summary import add_interval, interval_record

        mid = ms.cfg.id
        acc, mark, now = self._acc[mid], self._mark[mid], self._counter_mark(ms)
        flags = self.model.faults.transport_flags(mid, t0, t1)
        rec = interval_record(ms, acc, mark, now, iso(self.start, t0), iso(self.start, t1),
                              flags)
        add_interval(self._total[mid], rec)
        self._acc[mid] = _Acc()
        self._mark[mid] = now
        return rec

    def finish(self) -> list[Record]:
        """Close the partial interval (if any) and return the summary record."""
        from simulators.summary import summary_record

        out = [] if self._end_t == self._interval_start else self._close_interval()
        out.append(summary_record(self.model, self._total, iso(self.start, self._end_t)))
        return out
