"""A grandchild meter falls silent past a batch's end, and comes back after its finality.

The faults demo in CI: the OPC UA server restarted 240 s (simulated) after the
packer's lot ended, and the edge took ~7 real seconds to reconnect. The PLC
meters behind it (children of a line incomer, grandchildren of the site
incomer) were silent past the lot's final timeout. Two things went wrong:

* the site incomer's residual (site − Σ line incomers) went on past where the
  line incomer's own residual could be computed, so it held the whole line's
  load; smoothed over ±300 s, that leaked into the lot's last minutes (+11 %);
* when the PLCs came back, the settled rows were right, but the lot was final
  and no longer re-examined: its footprint stayed wrong for good.

Here a site of three levels (SITE ⊃ LINE ⊃ {FEED, PLC}) shows both fixed: the
lot's final number is right although the PLC is silent, and every share that
moves after finality revises it, so the latest revision is its rows' sum.
"""

from __future__ import annotations

import numpy as np
import pytest

from compute.footprint import Factor
from compute.series import Readings
from compute.site import SiteModel
from compute.site_state import Outcome, SiteState
from compute.sitespec import site_view
from tests.compute.two_asset_site import two_asset_model

S = 10**9
T0 = 1_764_000_000 * S
KW = {"SITE": 300.0, "LINE": 250.0, "FEED": 60.0, "PLC": 150.0}  # residuals 50 and 40 kW
LOT = (600, 3000)  # s: the lot on asset A
SILENT = (2900, 5040)  # s: the PLC's outage (read again from 5040 s)
# (its ends are sent in advance: end events only weigh the split, and A runs one lot)


def _model() -> SiteModel:
    parent = {"role": "parent", "assets": ["A", "B"], "rule": "equal"}
    return two_asset_model("three-levels", {
        "SITE": {**parent, "children": ["LINE"]},
        "LINE": {**parent, "children": ["FEED", "PLC"]},
        "FEED": {"asset": "A"},
        "PLC": {"asset": "B"},
    })


def _readings(lo_s: int, hi_s: int) -> dict[str, Readings]:
    """Every meter's counter read every 60 s in [lo_s, hi_s), steady at its rate; the
    PLC says nothing during its outage."""
    out = {}
    for meter, kw in KW.items():
        t = np.arange(lo_s, hi_s, 60, dtype=np.int64)
        if meter == "PLC":
            t = t[(t < SILENT[0]) | (t >= SILENT[1])]
        out[meter] = Readings((T0 + t * S, 1000.0 + kw * t / 3600))
    return out


def _feed(state: SiteState, until_s: int, step_s: int = 300) -> list[Outcome]:
    """The site's data in micro-batches of ``step_s``, as the worker takes them."""
    outs = []
    for lo in range(0, until_s, step_s):
        state.note_batch_marks({"gw": T0 + (lo + step_s) * S})
        state.apply_readings(_readings(lo, lo + step_s), {})
        outs.append(state.evaluate())
    return outs


def test_the_lot_is_right_when_final_and_revised_to_its_rows_when_the_plc_returns() -> None:
    state = SiteState(site_view(_model(), 300.0), lambda c, k, at: Factor(1, 0.5, "t"), 300.0)
    # the next lot on A (3300-8000 s) holds the window open, as the plant's next lots did
    for lot, (start, end) in (("LOT", LOT), ("NEXT", (3300, 8000))):
        state.apply_event("A", lot, "p", "start", T0 + start * S, None, None)
        state.apply_event("A", lot, "p", "end", T0 + end * S, 10.0, "t")
    outs = _feed(state, 10800)
    revisions = [(rev, status, fp) for out in outs for rev, status, fp in out.footprints
                 if status != "provisional" and fp.batch.batch_id == "LOT"]
    # the lot: its feeder, and all of the line's residual (40 kW) and the site's (50 kW):
    # it is the only batch running
    hours = (LOT[1] - LOT[0]) / 3600
    truth = (KW["FEED"] + (KW["LINE"] - KW["FEED"] - KW["PLC"])
             + (KW["SITE"] - KW["LINE"])) * hours
    first = revisions[0]
    assert first[1] == "final" and "missing:PLC" in first[2].flags  # by the timeout
    # final while the PLC is silent: the residuals are computable only up to its last
    # reading (2880 s), so the lot lacks them for its last 120 s, and says so (missing);
    # before, the site's residual went on and took the line's whole 250 kW for them
    residuals_kw = KW["SITE"] - KW["FEED"] - KW["PLC"]
    assert first[2].energy["electricity"] == pytest.approx(
        truth - residuals_kw * (LOT[1] - 2880) / 3600, rel=1e-6)
    latest = revisions[-1][2]
    rows: dict[str, float] = {}
    for out in outs:
        for settled in out.allocations:
            picked = np.array([b == "LOT" for b in settled.batch_id], dtype=bool)
            rows[settled.meter] = rows.get(settled.meter, 0.0) + float(
                settled.energy[picked].sum())
    assert {m for m, e in rows.items() if e} == set(latest.per_meter)
    # the window settled the line's and the site's intervals of 2880-3000 s before their
    # residuals could be computed, without rows; when the PLC's first interval (which
    # reaches back into settled time) comes, the worker has compute.revise write those
    # rows from the database (tests/compute/test_worker.py, late data)
    by_revise = {"LINE": KW["LINE"] - KW["FEED"] - KW["PLC"], "SITE": KW["SITE"] - KW["LINE"]}
    for meter, energy in latest.per_meter.items():
        expected = energy - by_revise.get(meter, 0.0) * (LOT[1] - 2880) / 3600
        assert rows[meter] == pytest.approx(expected, rel=1e-9, abs=1e-9), meter
    late = [out.late["PLC"] for out in outs if "PLC" in out.late]
    assert [(int(iv.start[0]), int(iv.end[0])) for iv in late] == [
        (T0 + 2880 * S, T0 + SILENT[1] * S)]
    # revised when the PLC's data came: right, and its rows' sum
    assert revisions[-1][1] == "revised"
    assert latest.energy["electricity"] == pytest.approx(truth, rel=1e-6)
