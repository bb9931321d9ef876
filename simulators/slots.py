"""Which OPC UA batch slot shows each batch, and from when to when (pure).

An asset has ``slots`` MES batch slots (docs/simulators.md). A batch takes the
lowest free slot in the step it starts and frees it in the step its end is
*published*, which a ``late_end`` fault puts after the true end, as real MES
do. So a batch may start while every slot of its asset still shows a batch
whose end is not out yet. It then waits: the slot shows it from the step after
one frees, with its true ``StartTime``, and the ground truth says when
(``start_published``). The physics and the truth's energy never wait.

Within a step, starts take slots before ends free them: a slot never shows an
end and a new batch at the same simulated second, so a client reading the
slot when ``Running`` turns false still finds the batch that ended. A batch
whose end falls due before it had a slot shows its start for one step, then
its end.

Times are simulated seconds at step starts (``t`` = 0, step_s, 2·step_s, ...),
the times at which the publisher writes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from simulators.config import Batch, Scenario


@dataclass(frozen=True)
class SlotUse:
    """One batch on one slot: ``shown_s`` its start goes out, ``ended_s`` its end."""

    batch: Batch
    slot: int
    shown_s: int
    ended_s: int
    waited: bool  # no slot was free in the step it started


def plan_slots(sc: Scenario, late_ends: Mapping[str, int]) -> dict[str, SlotUse]:
    """Every batch's slot use, by batch id; ``late_ends`` maps a batch to its delay (s)."""
    step = sc.scenario.step_s
    plan: dict[str, SlotUse] = {}
    for asset in sc.assets:
        batches = [b for b in sc.batches if b.asset == asset.id]
        for use in _plan_asset(batches, asset.slots, late_ends, step):
            plan[use.batch.id] = use
    return plan


def step_of(t: int, step: int) -> int:
    """The first step start at or after ``t``: the step in which the physics reaches ``t``."""
    return -(-t // step) * step


def _plan_asset(batches: Iterable[Batch], slots: int, late_ends: Mapping[str, int],
                step: int) -> list[SlotUse]:
    # the order the schedule starts them in: start time, then batch id
    starts = deque(sorted(batches, key=lambda b: (step_of(b.start_s, step), b.start_s, b.id)))
    waiting: deque[tuple[Batch, int]] = deque()  # batch, step it started
    free = set(range(slots))
    held: dict[str, tuple[Batch, int, int, bool]] = {}  # id: batch, slot, shown_s, waited
    out: list[SlotUse] = []
    t = -step

    def end_step(b: Batch, shown_s: int) -> int:
        due = step_of(b.end_s + late_ends.get(b.id, 0), step)
        return max(due, shown_s + step)

    while starts or waiting or held:
        nexts = [end_step(b, shown) for b, _, shown, _ in held.values()]
        if starts:
            nexts.append(step_of(starts[0].start_s, step))
        if waiting and free:
            nexts.append(t + step)
        t = min(nexts)
        while starts and step_of(starts[0].start_s, step) <= t:
            waiting.append((starts.popleft(), t))
        while waiting and free:
            b, started = waiting.popleft()
            k = min(free)
            free.discard(k)
            held[b.id] = (b, k, t, t > started)
        for b, k, shown, waited in [h for h in held.values() if end_step(h[0], h[2]) <= t]:
            del held[b.id]
            out.append(SlotUse(b, k, shown, t, waited))
            free.add(k)  # taken by a start from the next step on
    return out
