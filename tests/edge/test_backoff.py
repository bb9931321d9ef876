"""The one backoff schedule (edge.backoff): golden delays, bounds, growth and reset."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.backoff import Backoff


def delays(backoff: Backoff, n: int) -> list[float]:
    return [backoff.next_delay() for _ in range(n)]


def test_golden_delays_double_up_to_the_cap_and_reset_starts_over() -> None:
    b = Backoff(0.1, 2.0, jitter="none")
    assert delays(b, 8) == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0])
    assert b.attempts == 8
    b.reset()
    assert b.attempts == 0 and delays(b, 3) == pytest.approx([0.1, 0.2, 0.4])


def test_equal_jitter_spans_the_upper_half_of_the_ceiling() -> None:
    low = Backoff(1.0, 8.0, rng=lambda: 0.0)
    high = Backoff(1.0, 8.0, rng=lambda: 1.0)
    assert delays(low, 5) == pytest.approx([0.5, 1.0, 2.0, 4.0, 4.0])
    assert delays(high, 5) == pytest.approx([1.0, 2.0, 4.0, 8.0, 8.0])


def test_full_jitter_spans_zero_to_the_ceiling() -> None:
    b = Backoff(1.0, 4.0, jitter="full", rng=lambda: 0.25)
    assert delays(b, 4) == pytest.approx([0.25, 0.5, 1.0, 1.0])


def test_an_rng_outside_0_1_cannot_break_the_cap() -> None:
    assert delays(Backoff(1.0, 2.0, rng=lambda: 7.0), 3) == pytest.approx([1.0, 2.0, 2.0])
    assert delays(Backoff(1.0, 2.0, rng=lambda: -3.0), 2) == pytest.approx([0.5, 1.0])


def test_a_week_of_failures_neither_overflows_nor_passes_the_cap() -> None:
    b = Backoff(0.5, 30.0, jitter="none")
    assert delays(b, 100_000)[-1] == 30.0  # 0.5 * 2**99999 would overflow a float


@pytest.mark.parametrize(("initial", "cap", "factor", "jitter"), [
    (0.0, 1.0, 2.0, "equal"), (2.0, 1.0, 2.0, "equal"), (1.0, 2.0, 0.5, "equal"),
    (1.0, 2.0, 2.0, "sometimes"),
])
def test_nonsense_schedules_are_refused(initial, cap, factor, jitter) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(initial, cap, factor=factor, jitter=jitter)


@given(
    initial=st.floats(1e-3, 10.0), spread=st.floats(1.0, 1000.0), factor=st.floats(1.0, 4.0),
    jitter=st.sampled_from(["equal", "full", "none"]), seed=st.integers(0, 2**32),
    n=st.integers(1, 80),
)
def test_delays_stay_under_the_cap_and_their_ceiling_grows(
    initial: float, spread: float, factor: float, jitter, seed: int, n: int,
) -> None:
    cap = initial * spread
    b = Backoff(initial, cap, factor=factor, jitter=jitter, rng=random.Random(seed).random)
    ceilings = []
    for _ in range(n):
        ceiling = b.ceiling
        delay = b.next_delay()
        ceilings.append(ceiling)
        assert 0.0 <= delay <= ceiling <= cap
        if jitter == "equal":
            assert delay >= ceiling / 2
    assert ceilings == sorted(ceilings), "the ceiling never shrinks without a reset"
    assert ceilings[0] == initial
    b.reset()
    assert b.ceiling == initial and b.attempts == 0
