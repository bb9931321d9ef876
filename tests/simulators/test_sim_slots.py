"""A late batch end on a full asset: the end goes out on its slot, the next batch waits.

Real MES publish batch ends late. When every slot of an asset still shows a
batch whose end is not out yet, the next batch to start waits for a slot: the
slot shows it from the step after the end went out, with its true start time.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from simulators.check import check_ground_truth
from simulators.config import Scenario
from simulators.physics import PlantModel
from simulators.slots import plan_slots
from simulators.truth import TruthAccountant, iso


def truth_of(sc: Scenario, seconds: int) -> list[dict]:
    model = PlantModel(sc, 1)
    acc = TruthAccountant(sc, model, 1)
    records = [acc.header()]
    for _ in range(seconds // sc.scenario.step_s):
        records += acc.on_step(model.step())
    return records + acc.finish()


def test_the_end_goes_out_on_its_slot_and_the_next_batch_takes_it_a_step_later(
    late_end_small: Callable[[int], Scenario],
) -> None:
    sc = late_end_small(300)  # B-002's end goes out at 4500, the very second B-004 starts
    plan = plan_slots(sc, {"B-002": 300})
    b2, b3, b4 = plan["B-002"], plan["B-003"], plan["B-004"]
    assert (b2.slot, b2.shown_s, b2.ended_s) == (0, 1200, 4500)
    assert (b3.slot, b3.shown_s, b3.ended_s, b3.waited) == (1, 3000, 5400, False)
    assert (b4.slot, b4.shown_s, b4.ended_s, b4.waited) == (0, 4501, 6000, True)


def test_an_end_published_after_the_next_start_makes_it_wait_until_then(
    late_end_small: Callable[[int], Scenario],
) -> None:
    # formerly refused at load ("slots >= 3"); one more slot is not what the plant has
    sc = late_end_small(700)
    plan = plan_slots(sc, {"B-002": 700})
    assert plan["B-002"].ended_s == 4900
    assert (plan["B-004"].slot, plan["B-004"].shown_s) == (0, 4901)


def test_a_batch_ending_before_it_had_a_slot_shows_its_start_then_its_end(
    late_end_small: Callable[[int], Scenario],
) -> None:
    sc = late_end_small(300)
    short = sc.batches[-1].model_copy(update={"end_s": 4500})  # B-004 over before 4501
    plan = plan_slots(sc.model_copy(update={"batches": [*sc.batches[:-1], short]}),
                      {"B-002": 300})
    assert (plan["B-004"].shown_s, plan["B-004"].ended_s) == (4501, 4502)


@pytest.mark.parametrize("name", ["small", "plant", "faults", "stress"])
def test_no_shipped_scenario_makes_a_batch_wait(name: str, scenario) -> None:
    sc = scenario(name)
    late = {f.batch: f.delay_s for f in sc.faults if f.kind == "late_end"}
    assert not [u.batch.id for u in plan_slots(sc, late).values() if u.waited]


def test_the_ground_truth_says_when_the_slots_showed_the_late_end_and_the_wait(
    late_end_small: Callable[[int], Scenario], scenario,
) -> None:
    sc = late_end_small(300)
    records = truth_of(sc, 6600)
    assert check_ground_truth(records) == []
    start = sc.scenario.start
    shown = [(r["kind"], r["at"], r["batch"]) for r in records
             if r["type"] == "event" and r["kind"].endswith("_published")]
    assert shown == [("end_published", iso(start, 4500), "B-002"),
                     ("start_published", iso(start, 4501), "B-004")]
    published = next(r for r in records if r.get("kind") == "start_published")
    assert (published["true_start"], published["slot"]) == (iso(start, 4500), 0)
    # the plant does not wait: B-004's true start and energy are what they are without the fault
    starts = [r for r in records if r.get("kind") == "batch_start" and r["batch"] == "B-004"]
    assert [r["at"] for r in starts] == [iso(start, 4500)]
    on_time = sc.model_copy(update={"faults": []})
    assert records[-1] == truth_of(on_time, 6600)[-1]
