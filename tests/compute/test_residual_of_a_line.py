"""A site incomer's residual takes its line incomers' energy as their feeders spread it.

The plant demo under load: a line incomer's reading was dropped as too slow, so one
of its intervals lasted minutes and held a big machine stopping at a lot's end. The
site incomer's residual (site − Σ line incomers) took the line's energy spread
evenly over that interval: a few minutes of the machine's power moved across the
lot's end, and the site's residual there swung by hundreds of kW either way (most
of L1-CRUSHER-002's −0.75 % in a CI run of the faults demo). The line's feeders
know when the machine stopped (their intervals are split at the lot's end by their
power channel); the line's own interval only knows its total.

Here SITE ⊃ LINE ⊃ {FEED_A, FEED_B}: FEED_A drops from 500 to 20 kW when lot A1 ends
at 3000 s, read every 60 s (30 s off the minute, so an interval straddles the end);
LINE is read every 240 s with 3000 s in the middle of an interval. The lot's share of
both residuals is exact.
"""

from __future__ import annotations

import numpy as np
import pytest

from compute.footprint import Factor
from compute.series import Readings
from compute.site import SiteModel
from compute.site_state import SiteState
from compute.sitespec import site_view
from tests.compute.two_asset_site import two_asset_model

S = 10**9
T0 = 1_764_000_000 * S
STOP = 3000  # s: lot A1 ends, FEED_A's machine stops
RESIDUAL_KW = {"SITE": 60.0, "LINE": 40.0}  # unmetered loads of each incomer
READ = {"SITE": (0, 60), "LINE": (0, 240), "FEED_A": (30, 60), "FEED_B": (30, 60)}


def _model() -> SiteModel:
    parent = {"role": "parent", "assets": ["A", "B"], "rule": "equal"}
    return two_asset_model("line-residual", {
        "SITE": {**parent, "children": ["LINE"]},
        "LINE": {**parent, "children": ["FEED_A", "FEED_B"]},
        "FEED_A": {"asset": "A"},
        "FEED_B": {"asset": "B"},
    })


def _kw(meter: str, t: np.ndarray) -> np.ndarray:
    feed_a = np.where(t < STOP, 500.0, 20.0)
    feed_b = np.full(t.shape, 100.0)
    line = feed_a + feed_b + RESIDUAL_KW["LINE"]
    return {"FEED_A": feed_a, "FEED_B": feed_b, "LINE": line,
            "SITE": line + RESIDUAL_KW["SITE"]}[meter]


def _kwh(meter: str, t: np.ndarray) -> np.ndarray:
    """The meter's true counter at ``t`` s: its power integrated exactly."""
    before, after = np.minimum(t, STOP), np.maximum(t - STOP, 0)
    at = np.array([0.0, float(STOP)])
    k_before, k_after = _kw(meter, at)
    return 1000.0 + (k_before * before + k_after * after) / 3600


def _readings(lo_s: int, hi_s: int) -> dict[str, Readings]:
    out = {}
    for meter, (offset, every) in READ.items():
        t = np.arange(offset, hi_s, every, dtype=np.int64)
        t = t[t >= lo_s]
        ts = T0 + t * S
        out[meter] = Readings((ts, _kwh(meter, t.astype(float))), (ts, _kw(meter, t)))
    return out


def test_the_lot_gets_its_exact_share_of_both_residuals_across_the_machine_stop() -> None:
    state = SiteState(site_view(_model(), 300.0), lambda c, k, at: Factor(1, 0.5, "t"), 300.0)
    for asset, lot, (start, end) in (("A", "A1", (600, STOP)), ("B", "B1", (600, 6000))):
        state.apply_event(asset, lot, "p", "start", T0 + start * S, None, None)
        state.apply_event(asset, lot, "p", "end", T0 + end * S, 10.0, "t")
    final = {}
    for lo in range(0, 9000, 300):
        state.note_batch_marks({"gw": T0 + (lo + 300) * S})
        state.apply_readings(_readings(lo, lo + 300), {})
        for _rev, status, fp in state.evaluate().footprints:
            if status == "final":
                final[fp.batch.batch_id] = fp
    hours = (STOP - 600) / 3600
    # A1: its feeder, and half of each residual (B1 runs beside it, rule "equal")
    expected = {"FEED_A": 500.0 * hours, "LINE": RESIDUAL_KW["LINE"] / 2 * hours,
                "SITE": RESIDUAL_KW["SITE"] / 2 * hours}
    got = final["A1"].per_meter
    assert set(got) == set(expected)
    for meter, energy in expected.items():
        # before, the site's residual took LINE spread evenly over 2880-3120 s: 240 kW
        # too much before the stop and too little after, smoothed across the lot's end
        assert got[meter] == pytest.approx(energy, rel=1e-6), meter
