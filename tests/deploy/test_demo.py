"""`make demo` end to end: every frame lands, and compute's batch footprints match the truth.

The demo runs the simulated plant, the edge agent, ingest and the compute
worker; compute never reads the simulator's ground truth, the demo and these
tests do, to grade it. Figures measured on this machine (python -m deploy.demo):
small, 7 batch x carrier rows: median |error| 0.007-0.009 %, max 0.014-0.041 %;
plant, 39 rows: median 0.007 %, max 0.087 % on a calm machine (every row within
0.1 %), 0.107 % with a second demo beside it; faults: max 0.15-0.21 %. What is
left is mostly timing: a parent's residual is a difference of counters read by
other gateway tasks at other instants (at 100x, 1 ms of scheduling is 0.1
simulated s). The truth was inside the reported uncertainty in every row. The
tolerances below leave room for a loaded CI machine.
"""

from __future__ import annotations

import datetime as dt
import os
import statistics
import subprocess
import sys
import tomllib
from pathlib import Path

import orjson
import psycopg
import pytest

from compute.pact.schema import schema_problems
from deploy import devstack

pytestmark = [pytest.mark.services, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
HOLD_S, SPEED = 10.0, 100.0  # deploy.demo: the plant waits 10 real s at t = 0; 100x


def _run_demo(services, tmp_path: Path, scenario: str, database: str) -> tuple[str, str]:
    env = {**os.environ, "PLANTPRINT_DSN": services.pg_admin_dsn}
    proc = subprocess.run(
        [sys.executable, "-m", "deploy.demo", "--scenario", scenario, "--database", database,
         "--out", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "batch footprints from the meters" in proc.stdout
    return devstack.with_dbname(services.pg_admin_dsn, database), proc.stdout


def _graded(tmp_path: Path) -> list[tuple[str, str, float, float, float, str]]:
    """(batch, carrier, computed, truth, uncertainty, status) from demo-out's two files."""
    ours = {r["batch_id"]: r for r in orjson.loads((tmp_path / "footprints.json").read_bytes())}
    truth = orjson.loads((tmp_path / "ground_truth.json").read_bytes())
    rows = []
    for t in truth:
        assert t["batch_id"] in ours, f"{t['batch_id']}: no footprint"
        r = ours[t["batch_id"]]
        assert r["product"] == t["product"]
        for carrier, amount in t["energy"].items():
            rows.append((t["batch_id"], carrier, r["energy"][carrier], amount,
                         r["uncertainty"][carrier], r["status"]))
    return rows


def _balance(dsn: str) -> tuple[list[tuple[object, ...]], int]:
    """Intervals whose allocation rows do not add up to their energy, and how many have rows."""
    with psycopg.connect(dsn) as conn:
        bad = conn.execute(
            "SELECT i.meter, i.end_ts, i.energy, sum(a.energy) FROM energy_interval i "
            "JOIN allocation a USING (site, meter, end_ts) GROUP BY 1, 2, 3 "
            "HAVING abs(i.energy - sum(a.energy)) > 1e-6 * greatest(1, i.energy)").fetchall()
        row = conn.execute("SELECT count(DISTINCT (meter, end_ts)) FROM allocation").fetchone()
    return bad, int(row[0]) if row else 0


def _unsettled_footprints(dsn: str) -> list[tuple[str, str, float, float]]:
    """(batch, meter, footprint, allocation rows) where a batch's stored footprint is not
    the sum of its stored allocation rows, for every batch that ended before every
    asset's last batch started (idle energy after an asset's last batch waits for a
    next one under ``next_batch``, so the run's last batches are not settled yet)."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT f.batch_id, m.key, m.value::float8, coalesce((SELECT sum(a.energy) "
            " FROM allocation a WHERE a.site = f.site AND a.batch_id = f.batch_id "
            " AND a.meter = m.key), 0) FROM batch_footprint_latest f, "
            " jsonb_each_text(f.detail -> 'per_meter') m "
            "WHERE f.end_ts <= (SELECT min(last) FROM (SELECT max(start_ts) AS last "
            " FROM batch_footprint_latest GROUP BY asset) AS per_asset) "
            "ORDER BY 1, 2").fetchall()
    assert rows, "no settled batch"
    # a final batch is re-examined until its last shares are settled, and revised when they
    # move, so its newest revision is its rows' sum; 1e-4 leaves room for float sums in
    # another order and a share settled just before a residual's smoothing moved it (a
    # stale final number, as the faults demo once left one, is off by percent)
    return [r for r in rows if abs(r[2] - r[3]) > 1e-4 * max(1.0, abs(r[2]))]


def _certified(out: Path, stdout: str) -> int:
    """The demo's certification step: a schema-valid PACT file per final batch (and more
    per product), each bundled batch confirmed by verify from the archive alone and given
    its certificate and label. Returns how many batches were bundled."""
    ours = orjson.loads((out / "footprints.json").read_bytes())
    files = sorted((out / "pact").glob("*.json"))
    for path in files:
        assert schema_problems(orjson.loads(path.read_bytes())) == [], path.name
    names = {p.name for p in files}
    for r in ours:
        assert any(n.endswith(f"_{r['batch_id']}_r{r['revision']}.json") for n in names), r
    assert len(files) > len(ours)  # and the products over the run's days
    bundles = sorted(p.name.split(".")[0] for p in (out / "evidence").glob("*.evidence.tar.gz"))
    assert bundles and set(bundles) <= {r["batch_id"] for r in ours}
    for b in bundles:
        assert (out / "certificates" / f"{b}.html").exists(), b
        assert (out / "certificates" / f"{b}.label.png").exists(), b
    assert stdout.count("confirmed") == len(bundles)
    return len(bundles)


def _drop(services, database: str) -> None:
    with psycopg.connect(services.pg_admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def test_demo_small_lands_every_frame_and_footprints_match_the_truth(small_plant):
    # the session's one run of the small demo (tests/conftest.py small_plant)
    dsn, tmp_path = small_plant.dsn, small_plant.out
    assert "batch footprints from the meters" in small_plant.stdout
    truth_header = orjson.loads(small_plant.truth.read_bytes().splitlines()[0])
    scenario = tomllib.loads((ROOT / "deploy" / "scenarios" / "small.toml").read_text())
    with psycopg.connect(dsn) as conn:
        seq = conn.execute("SELECT stream, frames, missing_count FROM gateway_seq "
                           "ORDER BY stream").fetchall()
        events = conn.execute("SELECT batch_id, kind, ts FROM batch_event "
                              "ORDER BY ts, batch_id, kind").fetchall()
        first, last = conn.execute("SELECT min(ts), max(ts) FROM reading").fetchone()
    bad, balanced = _balance(dsn)
    # every frame of both streams landed, none missing (the batch stream carries the
    # watermark frames compute needs, so it has many more frames than events)
    assert [(s, m) for s, _n, m in seq] == [("batches", 0), ("readings", 0)]
    assert all(n > 10 for _s, n, _m in seq)
    # the MES batch lifecycle arrives over OPC UA at the scenario's exact times
    start = dt.datetime.fromisoformat(truth_header["start"])
    expected = [(b["id"], kind, start + dt.timedelta(seconds=b[f"{kind}_s"]))
                for b in scenario["batches"] for kind in ("start", "end")]
    assert sorted(events) == sorted(expected)
    # one time base: the agent polls from before t = 0 (the plant holds at t = 0 for
    # HOLD_S real seconds, stamped in the scaled clock) and the run lasts until every
    # batch has ended plus 900 s; nothing lands outside that window
    held = dt.timedelta(seconds=HOLD_S * SPEED + 60)
    last_end = max(b["end_s"] for b in scenario["batches"])
    assert start - held <= first and last <= start + dt.timedelta(seconds=last_end + 960)
    # compute, graded against the truth it never read
    rows = _graded(tmp_path)
    assert {r[0] for r in rows} == {b["id"] for b in scenario["batches"]}
    errors = []
    for batch, carrier, ours, true, unc, status in rows:
        assert status == "final", (batch, status)
        assert abs(ours - true) <= unc, (batch, carrier, ours, true, unc)
        errors.append(abs(ours - true) / true)
        assert errors[-1] <= 0.002, (batch, carrier, ours, true)  # measured <= 0.041 %
    # measured 0.007-0.009 % (0.012-0.055 % while simulated registers lagged the physics)
    assert statistics.median(errors) <= 0.0003
    assert bad == [] and balanced > 500  # Σ allocation = interval energy, every interval
    assert _certified(tmp_path, small_plant.stdout) == 3  # a small run: every batch


def test_demo_plant_footprints_match_the_truth(services, tmp_path):
    dsn, out = _run_demo(services, tmp_path, "plant", "pp_test_demo_plant")
    try:
        bad, balanced = _balance(dsn)
        unsettled = _unsettled_footprints(dsn)
        with psycopg.connect(dsn) as conn:
            flags = conn.execute("SELECT DISTINCT unnest(flags) FROM batch_footprint_latest"
                                 ).fetchall()
    finally:
        _drop(services, "pp_test_demo_plant")
    rows = _graded(tmp_path)
    assert len({r[0] for r in rows}) == 30 and len(rows) >= 39
    errors = []
    for batch, carrier, ours, true, unc, status in rows:
        assert status == "final", (batch, status)
        assert abs(ours - true) <= unc, (batch, carrier, ours, true, unc)
        errors.append(abs(ours - true) / true)
        # measured <= 0.087 % on a calm machine; 0.33 % in one CI run, where the suite's
        # load delays the edge's and the simulator's loops (seconds simulated at 100x)
        assert errors[-1] <= 0.005, (batch, carrier, ours, true)
    assert statistics.median(errors) <= 0.0003  # measured 0.007 % calm, 0.007-0.010 % loaded
    assert bad == [] and balanced > 5_000  # ~8,400 intervals of 39 meters
    assert unsettled == []  # a final number is its allocation rows' sum
    # the plant's carbon meters embed 0.5703 kgCO2/kWh, the site's grid (CN-North) differs
    assert ("carbon_meter_deviation:M-AIR",) in flags
    # the certification step: 30 batches, the first of each of the 4 products certified
    assert _certified(tmp_path, out) == 4
    assert sorted(p.name for p in (tmp_path / "cbam").glob("*.csv")) == [
        "CEM-I-42.5R.csv", "CEM-II-A-LL-42.5N.csv", "clinker.csv"]  # the site's CBAM goods
    assert "L2-KILN-001" in out


# faults.toml: what each injected fault must leave on the batches it touches
FAULT_FLAGS = {
    "L1-CRUSHER-001": {"rollover:L1-CRUSHER-DRIVE", "gap:M-SITE"},  # em24 wraps; HV drop-out
    "L1-RAWMILL-001": {"spike:L1-RAWMILL-MAIN"},  # 5,000 kWh never consumed
    "L2-KILN-001": {"reset:L2-KILN-MAIN"},  # meter replaced at 1,800 s
    "L2-COOLER-001": {"gap:L2-COOLER-MAIN"},  # one gateway unit silent 1,200-1,800 s
    "L3-CEMENTMILL-001": {"rollover:L3-INC"},  # the L3 incomer's uint32 wraps
    "L3-SEPARATOR-002": {"reset:L3-SEPARATOR-MAIN"},  # replacement starts at 12.5 kWh
}


def test_demo_faults_every_batch_is_within_the_faults_rule(services, tmp_path):
    """The cement works with every fault the simulator can inject (faults.toml). Each
    batch × carrier is within 0.5 % of the truth, or the truth is inside its stated
    uncertainty and that uncertainty is at most 2 %; every fault is named on the
    batches it touched; the late end of L2-KILN-001 (published 480 s late, just before
    the OPC UA server restarts) arrives with its true time and quantity."""
    dsn, out = _run_demo(services, tmp_path, "faults", "pp_test_demo_faults")
    try:
        bad, balanced = _balance(dsn)
        unsettled = _unsettled_footprints(dsn)
        with psycopg.connect(dsn) as conn:
            flags = {b: set(f) for b, f in conn.execute(
                "SELECT batch_id, flags FROM batch_footprint_latest")}
            kiln_end = conn.execute(
                "SELECT ts, quantity FROM batch_event WHERE batch_id = 'L2-KILN-001' "
                "AND kind = 'end'").fetchall()
    finally:
        _drop(services, "pp_test_demo_faults")
    plant = tomllib.loads((ROOT / "deploy" / "scenarios" / "plant.toml").read_text())
    kiln = next(b for b in plant["batches"] if b["id"] == "L2-KILN-001")  # faults extends it
    start = dt.datetime.fromisoformat(plant["scenario"]["start"])
    assert kiln_end == [(start + dt.timedelta(seconds=kiln["end_s"]), kiln["quantity"])]
    rows = _graded(tmp_path)
    assert len({r[0] for r in rows}) == 30 and len(rows) >= 39
    for batch, carrier, ours, true, unc, status in rows:
        assert status in ("final", "revised"), (batch, status)
        err = abs(ours - true)
        assert err <= 0.005 * true or (err <= unc and unc <= 0.02 * true), (
            batch, carrier, ours, true, unc)
    for batch, expected in FAULT_FLAGS.items():
        assert expected <= flags[batch], (batch, sorted(flags[batch]))
    assert bad == [] and balanced > 5_000
    assert unsettled == []  # a final number is its allocation rows' sum
    assert _certified(tmp_path, out) == 4  # every batch mapped to PACT, none left out
