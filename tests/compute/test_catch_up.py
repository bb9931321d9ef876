"""A frozen register's catch-up, spread back over the freeze, and what it costs in certainty.

The case the faults demo showed: the Modbus registers of a plant froze for a few
minutes (a stalled device server), then caught up. The catch-up's total is
measured, its spread in time is not: it is spread evenly over the frozen
stretch and counted as estimated; a batch boundary inside the stretch is split
linearly (the power channel froze too) and bounded like a gap's; and a
parent's residual over such a stretch, the difference of two estimates, widens
the uncertainty of the batches it goes to.
"""

from __future__ import annotations

import numpy as np

from compute import kernels as K
from compute.allocate import READING_TIMING_S, allocate_site, respread_catch_ups
from compute.model import Batch, Intervals
from tests.compute.one_asset_site import MeterStub, OneAssetSite

S = 1_000_000_000  # ns per second
FREEZE = (150, 330)  # s: the registers hold their value from 150 s until 330 s


def _meter(kw: float, first_s: int, step_s: int = 60, until_s: int = 600) -> Intervals:
    """A meter drawing ``kw`` steadily, read every ``step_s`` from ``first_s``; its
    register (and power channel) frozen during FREEZE."""
    t = np.arange(first_s, until_s, step_s)
    seen = np.where((t >= FREEZE[0]) & (t < FREEZE[1]), FREEZE[0], t)
    out = K.unwrap_counter(t.astype(np.int64) * S, 1000.0 + kw * seen / 3600, K.CounterState(),
                           wrap=0.0, rated_per_h=kw * 3, resolution=0.0, gap_ns=600 * S)
    n = len(out.end)
    power = np.full(n, kw)
    return Intervals(out.start, out.end, out.energy, out.estimated, out.flags, power, power,
                     np.full(n, np.nan))


def test_the_catch_up_is_spread_evenly_over_the_frozen_stretch():
    iv = _meter(100.0, 0)
    assert (iv.flags & K.CATCH_UP).sum() == K.CATCH_UP  # one catch-up, at 360 s
    out = respread_catch_ups(iv)
    assert abs(out.energy.sum() - iv.energy.sum()) < 1e-9  # the total is exact
    stretch = (out.start >= 180 * S) & (out.end <= 360 * S)  # the zero intervals + catch-up
    assert stretch.sum() == 3
    np.testing.assert_allclose(out.energy[stretch], out.energy[stretch][0], rtol=1e-12)
    assert ((out.flags[stretch] & K.CATCH_UP) != 0).all()
    np.testing.assert_allclose(out.estimated[stretch], out.energy[stretch], rtol=1e-12)
    assert (out.estimated[~stretch] == 0).all()


# an incomer over one feeder of asset A
_SITE = OneAssetSite({"FEED": MeterStub("asset"),
                      "INC": MeterStub("parent", ("FEED",), "equal")})


def _allocated(batch_start_s: int) -> tuple[float, float, float]:
    """(energy, uncertainty) of the batch from the feeder and the incomer's residual, and
    the truth of both: the incomer = feeder + 10 kW unmetered."""
    series = {"FEED": _meter(100.0, 0), "INC": _meter(110.0, 0)}
    batch = Batch("B", "A", "p", batch_start_s * S, 540 * S)
    alloc = allocate_site(_SITE, series, [batch], {})
    energy = sum(float(ma.energy.sum()) for ma in alloc.meters.values())
    unc = sum(float(ma.uncertainty.sum()) for ma in alloc.meters.values())
    return energy, unc, 110.0 * (540 - batch_start_s) / 3600


def test_a_batch_starting_inside_the_freeze_is_uncertain_by_what_could_not_be_placed():
    energy, unc, true = _allocated(250)
    # the register froze at 150 s, inside the interval before the stretch, so the stretch
    # carries a bit more than its share: the batch's start inside it gets too much, and
    # its uncertainty (the stretch split as a gap's, the residual there) covers that
    assert 0.3 < energy - true <= unc
    whole = _allocated(0)  # the stretch wholly inside the batch: exact, but the residual
    assert abs(whole[0] - whole[2]) < 1e-9  # over it is still two estimates' difference
    # half the residual (10 kW x 240 s), and the feeder's readings met at both of the
    # batch's ends (0 s and 540 s): 100 kW over each one's timing
    assert 0.0 < whole[1] <= 0.5 * 10.0 * 240 / 3600 + 2 * 100.0 * READING_TIMING_S / 3600
