"""Meter counters as a device shows them (pure): resolution, wrap, reset, spike.

A counter shows ``base + floor(energy since baseline × multiplier / resolution)
+ spikes`` counts, wrapped at ``2**bits``; float counters show the value itself.
``increase`` accumulates what a reader should compute: rollovers unwrapped,
resets counted from their new baseline, spikes included.
"""

from __future__ import annotations

import math

from simulators.devices import RegisterSpec


class CounterModel:
    """One cumulative counter of one meter."""

    __slots__ = (
        "_base_energy", "_seg_counts", "_seg_spike", "base", "bits", "increase",
        "multiplier", "resolution", "rollovers",
    )

    def __init__(self, spec: RegisterSpec | None, start: float, multiplier: float = 1.0,
                 margin: float | None = None) -> None:
        self.bits = spec.counter_bits if spec is not None else None
        # counter unit per count (kWh per Wh count = 0.001); 0 for float counters
        self.resolution = spec.scale / spec.factor if self.bits is not None and spec else 0.0
        self.multiplier = multiplier
        self._base_energy = 0.0
        self._seg_counts = 0  # counts since baseline, spikes included (integer counters)
        self._seg_spike = 0.0  # spike in counter unit since baseline
        self.increase = 0.0 if self.bits is None else 0  # unwrapped increase (counts or unit)
        self.rollovers = 0
        if self.bits is not None and margin is not None:
            self.base: float = (1 << self.bits) - math.ceil(margin / self.resolution)
        elif self.bits is not None:
            self.base = round(start / self.resolution)
        else:
            self.base = start

    def raw(self, energy: float) -> float:
        """The register value: counts (integer counters) or the value (float ones)."""
        if self.bits is None:
            return self.base + (energy - self._base_energy) * self.multiplier + self._seg_spike
        # the counts ``advance`` would hold at ``energy`` (the same at the step's end),
        # so a read inside a step shows the counts reached by then
        seg = math.floor((energy - self._base_energy) * self.multiplier / self.resolution)
        seg += round(self._seg_spike / self.resolution)
        return (int(self.base) + seg) % (1 << self.bits)

    def advance(self, energy: float) -> None:
        """Account the meter's cumulative true ``energy`` after a step."""
        if self.bits is None:
            return
        seg = math.floor((energy - self._base_energy) * self.multiplier / self.resolution)
        seg += round(self._seg_spike / self.resolution)
        before = int(self.base) + self._seg_counts
        self.increase = int(self.increase) + seg - self._seg_counts
        self._seg_counts = seg
        self.rollovers += (before >> self.bits) != ((int(self.base) + seg) >> self.bits)

    def spike(self, amount: float, energy: float) -> None:
        """A jump of ``amount`` counter units that is not energy."""
        self._seg_spike += amount
        if self.bits is None:
            self.increase = float(self.increase) + amount
        else:
            self.advance(energy)

    def reset(self, new_counter: float, energy: float) -> None:
        """Replacement or reset: a new baseline at ``new_counter`` (counter unit)."""
        self._base_energy = energy
        self._seg_counts = 0
        self._seg_spike = 0.0
        self.base = new_counter if self.bits is None else round(new_counter / self.resolution)

    def sync_float(self, energy: float, step_energy: float) -> None:
        """Float counters: add a step's energy to the increase."""
        if self.bits is None:
            self.increase = float(self.increase) + step_energy * self.multiplier
