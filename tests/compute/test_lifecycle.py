"""When a batch becomes final (compute.lifecycle.finality), golden cases.

What an energy manager relies on: a batch is final as soon as everything its
number depends on is in; a batch sharing a meter that is still running is
waited for a day (its quantity weighs the split), one that has ended without a
quantity only ``final_timeout_s``; what was still unknown is named.
"""

from __future__ import annotations

from compute.lifecycle import WEIGHTS_TIMEOUT_NS, Finality, finality
from compute.model import Batch

S = 10**9
TIMEOUT = 900 * S
MINE = Batch("B-1", "kiln", "clinker", 0, 3600 * S, 40.0, "t")
COVERED = {"M-KILN": 4000 * S, "M-SITE": 4000 * S}
METERS = ("M-KILN", "M-SITE")


def decide(others: list[Batch], now_s: float, coverage: dict[str, int] = COVERED,
           ) -> Finality:
    return finality(MINE, coverage, METERS, others, int(now_s * S), TIMEOUT,
                    events_until=4000 * S)


def test_final_once_meters_events_and_weights_are_in() -> None:
    mill = Batch("B-2", "mill", "cement", 600 * S, 3000 * S, 12.0, "t")
    assert decide([mill], 3700) == Finality(True)


def test_running_neighbour_is_waited_for_a_day() -> None:
    mill = Batch("B-2", "mill", "cement", 600 * S)
    assert decide([mill], 3600 + 86_000) == Finality(False)
    assert decide([mill], 3600 + WEIGHTS_TIMEOUT_NS / S) == Finality(True, (), ("B-2",))


def test_ended_neighbour_without_quantity_is_waited_for_the_timeout_only() -> None:
    mill = Batch("B-2", "mill", "cement", 600 * S, 3000 * S)  # end came, quantity did not
    assert decide([mill], 3600 + 899) == Finality(False)
    assert decide([mill], 3600 + 900) == Finality(True, (), ("B-2",))


def test_silent_meter_is_named_after_the_timeout() -> None:
    coverage = {"M-KILN": 4000 * S, "M-SITE": 3500 * S}
    assert decide([], 3700, coverage) == Finality(False)
    assert decide([], 4500, coverage) == Finality(True, ("M-SITE",))


def test_running_batch_is_never_final() -> None:
    running = Batch("B-1", "kiln", "clinker", 0)
    assert finality(running, COVERED, METERS, [], 10**6 * S, TIMEOUT, 10**6 * S) == \
        Finality(False)
