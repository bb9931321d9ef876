"""A reading stamped at the very second a batch ends still has a timing uncertainty.

Seen in CI: the plant's kiln gas meter stamps its readings with its own clock,
in whole seconds. One poll fell on the kiln lot's end (3960 s): no interval
straddled the boundary, so no split bounded it, and the lot's gas uncertainty
was 2e-10 Nm3 (the float64 counter's spacing) while it was 0.049 Nm3 off the
truth: the value was read within that second, not at its start.
"""

from __future__ import annotations

import numpy as np
import pytest

from compute.allocate import READING_TIMING_S, allocate_site
from compute.model import Batch, Intervals
from tests.compute.one_asset_site import MeterStub, OneAssetSite

S = 1_000_000_000  # ns per second
KW = 2600.0  # the meter's steady rate (kiln gas: Nm3/h)


_SITE = OneAssetSite({"GAS": MeterStub("asset")})


def _gas(readings_s: list[int]) -> Intervals:
    t = np.array(readings_s, dtype=np.int64) * S
    energy = KW * np.diff(t) / 3.6e12
    n = len(energy)
    rate = np.full(n, KW)
    return Intervals(t[:-1], t[1:], energy, np.zeros(n), np.zeros(n, np.int64), rate, rate,
                     np.full(n, np.nan))


def _uncertainty(readings_s: list[int], start_s: int, end_s: int) -> float:
    alloc = allocate_site(_SITE, {"GAS": _gas(readings_s)},
                          [Batch("LOT", "A", "clinker", start_s * S, end_s * S)], {})
    return float(alloc.meters["GAS"].uncertainty.sum())


def test_readings_at_both_boundaries_are_uncertain_by_the_rate_over_their_timing() -> None:
    readings = [900, 950, 1000, 1050, 3910, 3960, 4010]
    per_edge = KW * READING_TIMING_S / 3600  # Nm3 the reading's timing may move across
    # both ends met by a reading (1000 s, 3960 s): each is its own term (it was 0 in all)
    assert _uncertainty(readings, 1000, 3960) == pytest.approx(2 * per_edge, rel=1e-12)
    # ends that intervals straddle are bounded by their splits, as before (steady rate:
    # a tenth of the smaller side, 5 s of gas, times twice the lot's share of the 50 s)
    side = KW * 5 / 3600
    assert _uncertainty(readings, 995, 3915) == pytest.approx(2 * 0.1 * side * 0.2, rel=1e-9)
