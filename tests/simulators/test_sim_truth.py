"""Ground truth: self-consistent, faults accounted, reproducible for a seed."""

from __future__ import annotations

import asyncio
import math
import sys
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulators.check import check_ground_truth, load_ground_truth
from simulators.config import load_scenario
from simulators.physics import PlantModel
from simulators.truth import TruthAccountant

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "deploy" / "scenarios"


def run_truth(name: str, seconds: int, seed: int = 1) -> list[dict]:
    """The ground truth of a run, through JSON as a reader gets it."""
    sc = load_scenario(SCENARIOS / f"{name}.toml")
    model = PlantModel(sc, seed)
    acc = TruthAccountant(sc, model, seed)
    records = [acc.header()]
    for _ in range(seconds // sc.scenario.step_s):
        records += acc.on_step(model.step())
    records += acc.finish()
    return [orjson.loads(orjson.dumps(r)) for r in records]


def test_small_is_consistent_and_allocates_by_the_conventions() -> None:
    recs = run_truth("small", 6000)
    assert check_ground_truth(recs) == []
    summary = recs[-1]
    press = summary["meters"]["M-PRESS"]
    # press: B-001 runs 600..2400; idle_policy unallocated keeps the rest as overhead
    assert set(press["batches"]) == {"B-001"}
    assert math.isclose(sum(press["batches"].values()) + press["unallocated"], press["energy"])
    # oven: B-002 (12 t) and B-003 (8 t) overlap 3000..4200 and split 12:8 by quantity
    overlap = [r for r in recs if r["type"] == "interval" and r["meter"] == "M-OVEN"
               and "T06:55" <= r["start"][10:16] < "T07:05"]
    assert overlap
    for r in overlap:
        assert math.isclose(r["batches"]["B-002"] / r["batches"]["B-003"], 1.5)
        assert r["unallocated"] == 0.0
    # incomer = children + unmetered, its residual equals the unmetered loads
    bal = summary["balance"]["M-INC"]
    assert math.isclose(bal["energy"], bal["children"] + bal["unmetered"], rel_tol=1e-12)
    kids = sum(summary["meters"][m]["energy"] for m in ("M-PRESS", "M-OVEN", "M-AIR", "M-DRIVE"))
    assert math.isclose(bal["children"], kids, rel_tol=1e-12)
    inc = summary["meters"]["M-INC"]
    assert math.isclose(sum(inc["batches"].values()) + inc["unallocated"], bal["unmetered"])
    # carbon meter: kgCO2 per batch = energy x embedded factor
    air = summary["meters"]["M-AIR"]
    for b, kwh in air["batches"].items():
        assert math.isclose(air["co2_batches"][b], kwh * 0.5703)


@pytest.mark.slow
def test_faults_are_accounted() -> None:
    recs = run_truth("faults", 6000)
    assert check_ground_truth(recs) == []
    header = recs[0]
    meters = {m["id"]: m for m in header["meters"]}
    ivs = [r for r in recs if r["type"] == "interval"]
    rolled = [r for r in ivs if r["meter"] == "L3-INC" and r["rollovers"]]
    assert len(rolled) == 1 and rolled[0]["counter_end"] < rolled[0]["counter_start"]
    width = 1 << meters["L3-INC"]["counter"]["bits"]
    r = rolled[0]
    unwrapped = (r["counter_end"] + width - r["counter_start"]) * 0.1
    assert math.isclose(unwrapped, r["counter_increase"])
    reset = next(r for r in ivs if r["meter"] == "L3-SEPARATOR-MAIN" and r["resets"])
    assert "reset" in reset["flags"] and reset["counter_end"] < 1000  # new meter from 12.5 kWh
    spike = next(r for r in ivs if r["meter"] == "L1-RAWMILL-MAIN" and r["spike"])
    assert spike["spike"] == 5000.0
    assert math.isclose(spike["counter_increase"] - spike["spike"], spike["energy"], abs_tol=0.1)
    summary = recs[-1]
    for mid, t in summary["meters"].items():  # per meter over the run
        allocated = sum(t["batches"].values()) + t["unallocated"] + t.get("children", 0.0)
        assert math.isclose(allocated, t["energy"], rel_tol=1e-9), mid
        res = meters[mid]["counter"]["resolution"]
        slack = res * (1 + t["resets"]) + (0.05 if meters[mid]["family"] == "sdm630" else 1e-6)
        assert abs(t["counter_increase"] - t["spike"] - t["energy"]) <= slack, mid
    flags = {f for r in ivs for f in r["flags"]}
    assert {"rollover", "reset", "spike", "dropout", "busy", "stuck", "clock_skew"} <= flags
    kinds = {r["kind"] for r in recs if r["type"] == "event"}
    assert {"end_published", "opcua_down", "opcua_up", "reset", "spike"} <= kinds


@pytest.mark.slow
def test_idle_policy_next_batch_leaves_only_the_tail_unallocated() -> None:
    recs = run_truth("plant", 3600)
    assert recs[0]["conventions"]["idle_policy"] == "next_batch"
    assert check_ground_truth(recs) == []
    first = next(r for r in recs if r["type"] == "interval" and r["meter"] == "L2-KILN-MAIN")
    assert first["unallocated"] == 0.0 and list(first["batches"]) == ["L2-KILN-001"]


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**31), seconds=st.integers(1, 1500))
def test_energy_balance_holds_for_any_seed_and_stop(seed: int, seconds: int) -> None:
    assert check_ground_truth(run_truth("small", seconds, seed)) == []


def test_checker_catches_a_broken_truth() -> None:
    recs = run_truth("small", 300)
    iv = next(r for r in recs if r["type"] == "interval" and r["meter"] == "M-OVEN")
    iv["unallocated"] += 0.5
    assert any("M-OVEN" in p for p in check_ground_truth(recs))


async def _cli(tmp: Path, seed: int, name: str) -> bytes:
    out = tmp / name
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "simulators", "--scenario", str(SCENARIOS / "small.toml"),
        "--speed", "0", "--seed", str(seed), "--duration-s", "2400", "--ground-truth", str(out),
        "--port-base", "0", "--opcua-port", "0", "--no-opcua",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        cwd=ROOT)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return out.read_bytes()


@pytest.mark.slow
async def test_same_seed_same_bytes_through_the_cli(tmp_path: Path) -> None:
    a, b, c = await asyncio.gather(_cli(tmp_path, 7, "a"), _cli(tmp_path, 7, "b"),
                                   _cli(tmp_path, 8, "c"))
    assert a == b
    assert a != c
    assert check_ground_truth(load_ground_truth(tmp_path / "a")) == []


@pytest.mark.slow
async def test_paced_run_gives_the_same_truth_as_a_fast_one(tmp_path: Path) -> None:
    from simulators.runner import PlantRunner, RunOptions

    sc = load_scenario(SCENARIOS / "small.toml")
    paths = []
    for speed in (0.0, 1200.0):
        path = tmp_path / f"gt-{speed}.jsonl"
        opts = RunOptions(speed=speed, seed=3, duration_s=900, ground_truth=path, port_base=0,
                          opcua=False)
        async with PlantRunner(sc, opts) as runner:
            await runner.run()
        paths.append(path)
    assert paths[0].read_bytes() == paths[1].read_bytes()


@pytest.mark.parametrize("name", ["small", "plant", "faults", "stress"])
def test_shipped_scenarios_load(name: str) -> None:
    sc = load_scenario(SCENARIOS / f"{name}.toml")
    assert sc.scenario.name == name
    if name == "stress":
        assert len(sc.meters) == 1000
    if name == "plant":
        assert 35 <= len(sc.meters) <= 45 and len({a.line for a in sc.assets}) == 3
