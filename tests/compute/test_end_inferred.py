"""A lost batch end: an asset that runs one batch at a time ends it where the next starts.

The faults scenario lost a kiln batch's end across an OPC UA restart: the batch
never ended, and its site's finals waited a day. With the asset's
``max_concurrent`` in the site model, the next start ends it (``end_inferred``).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from compute.footprint import Factor, Footprint
from compute.lifecycle import infer_ends
from compute.model import Batch
from compute.series import Readings
from compute.site import SiteModel
from compute.site_state import SiteState
from compute.sitespec import site_view

ROOT = Path(__file__).resolve().parents[2]

S = 10**9
T0 = 1_764_000_000 * S


def test_one_at_a_time_the_next_start_ends_the_open_batch() -> None:
    kiln = [Batch("K1", "kiln", "clinker", 0), Batch("K2", "kiln", "clinker", 50, 90),
            Batch("K3", "kiln", "clinker", 120)]
    got = infer_ends(kiln, {"kiln": 1})
    assert [(b.end_ns, b.end_inferred) for b in got] == [(50, True), (90, False), (None, False)]
    assert infer_ends(kiln, {}) == kiln  # no limit in the model: as the MES said


def test_a_real_end_wins_and_two_spouts_run_two_lots() -> None:
    lots = [Batch("P1", "packer", "c", 0), Batch("P2", "packer", "c", 10),
            Batch("P3", "packer", "c", 20, 30), Batch("P4", "packer", "c", 40),
            Batch("P5", "packer", "c", 50)]
    got = {b.batch_id: b for b in infer_ends(lots, {"packer": 2})}
    # P3 starts with P1 and P2 open: the earlier, P1, has ended. P4 runs beside P2 (P3
    # has ended); at P5, P2 has ended
    assert [got[k].end_ns for k in ("P1", "P2", "P3", "P4", "P5")] == [20, 50, 30, None, None]
    assert [got[k].end_inferred for k in ("P1", "P2", "P3")] == [True, True, False]
    ended = [Batch("A", "kiln", "c", 0, 70), Batch("B", "kiln", "c", 50)]
    assert infer_ends(ended, {"kiln": 1}) == ended  # overlapping real ends are kept


def _small(max_concurrent: int | None) -> SiteModel:
    data: dict[str, Any] = tomllib.loads((ROOT / "deploy/sites/small.toml").read_text())
    if max_concurrent is not None:
        data["assets"]["L1-press"]["max_concurrent"] = max_concurrent
    return SiteModel.model_validate(data)


def _run(model: SiteModel) -> tuple[SiteState, dict[str, tuple[str, Footprint]]]:
    """Press batch B1 starts and its end is lost; B2 starts at 2400 s and ends at 4000 s.
    Every meter counts at a steady rate, read every 60 s for 8000 s."""
    state = SiteState(site_view(model, 300.0), lambda c, k, at: Factor(1, 0.5, "test"), 300.0)
    for ev in (("L1-press", "B1", "brick-A", "start", T0 + 600 * S, None, None),
               ("L1-press", "B2", "brick-A", "start", T0 + 2400 * S, None, None),
               ("L1-press", "B2", "brick-A", "end", T0 + 4000 * S, 12.0, "t")):
        state.apply_event(*ev)
    state.note_batch_marks({"gw": T0 + 9000 * S})
    ts = T0 + np.arange(0, 8001, 60, dtype=np.int64) * S
    rate = {"M-INC": 200.0, "M-PRESS": 36.0, "M-OVEN": 60.0, "M-AIR": 18.0, "M-DRIVE": 7.2,
            "M-GAS": 10.0, "M-STEAM": 0.036}  # per hour
    hours = (ts - T0) / 3.6e12
    unit = {"M-GAS": 1.0, "M-STEAM": 1.0}
    state.apply_readings({m: Readings((ts, 100.0 + r * hours * unit.get(m, 1.0)))
                          for m, r in rate.items()}, {})
    out = state.evaluate()
    return state, {fp.batch.batch_id: (status, fp) for _rev, status, fp in out.footprints}


def test_the_press_batch_whose_end_was_lost_is_final_with_end_inferred() -> None:
    _state, got = _run(_small(1))
    status, fp = got["B1"]
    assert status == "final" and "end_inferred" in fp.flags
    assert fp.batch.end_ns == T0 + 2400 * S
    # the press meter's energy over the batch's 1800 s at 36 kW, to the counters' rounding
    assert fp.per_meter["M-PRESS"] == pytest.approx(36.0 * 1800 / 3600, rel=1e-9)
    assert got["B2"][0] == "final" and "end_inferred" not in got["B2"][1].flags


def test_without_the_limit_the_open_batch_holds_its_neighbours_too() -> None:
    # B2 shares the press's meters with B1, whose end (its weight) never comes: both
    # wait for WEIGHTS_TIMEOUT_NS, a day of data (the faults scenario's 24 h)
    state, _got = _run(_small(None))
    assert state.stored["B1"].status == "provisional"
    assert state.stored["B2"].status == "provisional"
