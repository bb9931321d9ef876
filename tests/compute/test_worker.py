"""The compute worker against real Kafka and PostgreSQL, on a synthetic signed stream.

The stream (tests/compute/plant_stream.py) follows deploy/sites/small.toml and
knows its exact per-batch energies; readings every 7 s put every batch
boundary inside an interval, so the boundary split is exercised throughout.
"""

from __future__ import annotations

import random
import time

import psycopg
import pytest

from ingest.migrate import migrate
from tests.compute.plant_stream import (
    ROOT,
    Stream,
    footprints,
    produce,
    server_toml,
    site_copy,
    start_worker,
    stop,
    wait_consumed,
)

pytestmark = [pytest.mark.services, pytest.mark.timeout(400)]
SMALL = ROOT / "deploy/sites/small.toml"


def _finals(dsn: str) -> dict[str, dict]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT batch_id, status, energy, uncertainty, flags, revision "
            "FROM batch_footprint_latest").fetchall()
    return {r[0]: {"status": r[1], "energy": r[2], "uncertainty": r[3], "flags": r[4],
                   "revision": r[5]} for r in rows}


@pytest.fixture
def stream() -> Stream:
    return Stream(poll_s=7)


def test_footprints_match_the_exact_energy_and_balance_per_interval(
        tmp_path, services, new_database, topic_prefix, stream) -> None:
    dsn = new_database()
    migrate(dsn)
    frames, _ = stream.frames()
    produce(services.kafka_bootstrap, topic_prefix, stream.site, frames)
    config = server_toml(tmp_path / "server.toml", dsn, services.kafka_bootstrap, topic_prefix,
                         f"{topic_prefix}g-exact", {"demo-site": SMALL},
                         {stream.gateway: stream.public_key})
    worker = start_worker(config, tmp_path / "worker.log")
    try:
        wait_consumed(dsn, f"{topic_prefix}g-exact", len(frames), [worker])
    finally:
        stop(worker)
    got = _finals(dsn)
    truth = stream.truth()
    assert set(got) == set(truth)
    for batch, carriers in truth.items():
        assert got[batch]["status"] == "final", (batch, got[batch])
        for carrier, energy in carriers.items():
            ours = got[batch]["energy"][carrier]
            # exact but for the counters' 6-decimal rounding
            assert ours == pytest.approx(energy, rel=1e-5), (batch, carrier, ours, energy)
            assert abs(ours - energy) <= got[batch]["uncertainty"][carrier]
    with psycopg.connect(dsn) as conn:
        unbalanced = conn.execute(
            "SELECT i.meter, i.end_ts, i.energy, sum(a.energy) FROM energy_interval i "
            "JOIN allocation a USING (site, meter, end_ts) GROUP BY 1, 2, 3 "
            "HAVING abs(i.energy - sum(a.energy)) > 1e-9 * greatest(1, i.energy)").fetchall()
        missing = conn.execute(
            "SELECT count(*) FROM energy_interval i WHERE i.end_ts <= "
            "(SELECT max(end_ts) FROM compute_batch) AND NOT EXISTS (SELECT 1 FROM allocation "
            "a WHERE (a.site, a.meter, a.end_ts) = (i.site, i.meter, i.end_ts))").fetchone()
        total = conn.execute("SELECT count(*) FROM energy_interval").fetchone()
    assert unbalanced == []
    assert missing == (0,) and total[0] > 5000


def test_readings_far_ahead_of_the_batch_events_wait_for_them(
        tmp_path, services, new_database, topic_prefix, stream) -> None:
    """Readings and batch events travel on two topics: a worker catching up may read hours
    of readings before the batch frames of that time. Nothing is settled past the batch
    stream's watermark (the edge's batch frame every flush), so the result is the same."""
    dsn = new_database()
    migrate(dsn)
    frames, _ = stream.frames()
    readings = [f for f in frames if f[0] == "readings"]
    batches = [f for f in frames if f[0] == "batches"]
    config = server_toml(tmp_path / "server.toml", dsn, services.kafka_bootstrap, topic_prefix,
                         f"{topic_prefix}g-skew", {"demo-site": SMALL},
                         {stream.gateway: stream.public_key})
    produce(services.kafka_bootstrap, topic_prefix, stream.site, readings)
    worker = start_worker(config, tmp_path / "worker.log")
    try:
        wait_consumed(dsn, f"{topic_prefix}g-skew", len(readings), [worker])
        assert _finals(dsn) == {}  # no batch known yet: nothing can be allocated
        produce(services.kafka_bootstrap, topic_prefix, stream.site, batches)
        wait_consumed(dsn, f"{topic_prefix}g-skew", len(frames), [worker])
    finally:
        stop(worker)
    got, truth = _finals(dsn), stream.truth()
    for batch, carriers in truth.items():
        assert got[batch]["status"] == "final"
        for carrier, energy in carriers.items():
            assert got[batch]["energy"][carrier] == pytest.approx(energy, rel=1e-5)


def test_sigkilled_three_times_gives_the_uninterrupted_result_row_for_row(
        tmp_path, services, new_database, topic_prefix, stream) -> None:
    frames, _ = stream.frames()
    produce(services.kafka_bootstrap, topic_prefix, stream.site, frames)
    keys = {stream.gateway: stream.public_key}
    calm, killed = new_database(), new_database()
    for dsn in (calm, killed):
        migrate(dsn)
    config = server_toml(tmp_path / "calm.toml", calm, services.kafka_bootstrap, topic_prefix,
                         f"{topic_prefix}g-calm", {"demo-site": SMALL}, keys)
    worker = start_worker(config, tmp_path / "calm.log")
    try:
        wait_consumed(calm, f"{topic_prefix}g-calm", len(frames), [worker])
    finally:
        stop(worker)

    config = server_toml(tmp_path / "killed.toml", killed, services.kafka_bootstrap,
                         topic_prefix, f"{topic_prefix}g-killed", {"demo-site": SMALL}, keys)
    rng = random.Random(7)
    log = tmp_path / "killed.log"
    for n in range(1, 4):
        worker = start_worker(config, log)
        # killed mid-stream: once it holds its partitions, at a random moment after
        deadline = time.monotonic() + 60
        while log.read_text().count("assigned") < n and time.monotonic() < deadline:
            assert worker.poll() is None, log.read_text()[-2000:]
            time.sleep(0.05)
        time.sleep(rng.uniform(0.2, 2.0))
        worker.kill()
        worker.wait()
    worker = start_worker(config, tmp_path / "killed.log")
    try:
        wait_consumed(killed, f"{topic_prefix}g-killed", len(frames), [worker])
    finally:
        stop(worker)
    # provisional rows depend on where micro-batches fall; final ones must not
    finals = [[r for r in footprints(dsn) if r[3] != "provisional"] for dsn in (killed, calm)]
    assert finals[0] == finals[1]
    assert [r[1] for r in finals[1]] == ["B-001", "B-002", "B-003"]


def test_two_workers_share_two_sites_and_one_takes_over(
        tmp_path, services, new_database, topic_prefix) -> None:
    one, two = Stream(poll_s=7, gateway="gw-a"), Stream(poll_s=7, site="site-b", gateway="gw-b")
    frames_a, _ = one.frames()
    frames_b, _ = two.frames()
    dsn = new_database()
    migrate(dsn)
    sites = {"demo-site": SMALL, "site-b": site_copy(tmp_path, "site-b")}
    keys: dict[str, str | tuple[str, str]] = {one.gateway: (one.public_key, one.site),
                                              two.gateway: (two.public_key, two.site)}
    config = server_toml(tmp_path / "server.toml", dsn, services.kafka_bootstrap, topic_prefix,
                         f"{topic_prefix}g-pair", sites, keys)
    first = start_worker(config, tmp_path / "w1.log")
    second = start_worker(config, tmp_path / "w2.log")
    try:
        half = len(frames_a) // 2
        produce(services.kafka_bootstrap, topic_prefix, one.site, frames_a[:half])
        produce(services.kafka_bootstrap, topic_prefix, two.site, frames_b[:half])
        wait_consumed(dsn, f"{topic_prefix}g-pair", 2 * half, [first, second])
        stop(first)  # the other worker takes its partitions over
        produce(services.kafka_bootstrap, topic_prefix, one.site, frames_a[half:])
        produce(services.kafka_bootstrap, topic_prefix, two.site, frames_b[half:])
        wait_consumed(dsn, f"{topic_prefix}g-pair", len(frames_a) + len(frames_b), [second])
    finally:
        stop(first)
        stop(second)
    rows = [r for r in footprints(dsn) if r[3] != "provisional"]
    by_site = {s: [r[1:] for r in rows if r[0] == s] for s in ("demo-site", "site-b")}
    assert len(by_site["demo-site"]) >= 3
    assert by_site["demo-site"] == by_site["site-b"]  # same plant, same numbers
    truth = one.truth()
    for r in rows:
        if r[3] == "final":
            assert r[4]["electricity"] == pytest.approx(truth[r[1]]["electricity"], rel=1e-5)


def test_late_meter_data_revises_a_final_footprint_and_keeps_the_first(
        tmp_path, services, new_database, topic_prefix, stream) -> None:
    dsn = new_database()
    migrate(dsn)
    on_time, late = stream.frames(hold_back={"M-DRIVE"})
    produce(services.kafka_bootstrap, topic_prefix, stream.site, on_time)
    config = server_toml(tmp_path / "server.toml", dsn, services.kafka_bootstrap, topic_prefix,
                         f"{topic_prefix}g-late", {"demo-site": SMALL},
                         {stream.gateway: stream.public_key})
    worker = start_worker(config, tmp_path / "worker.log")
    try:
        wait_consumed(dsn, f"{topic_prefix}g-late", len(on_time), [worker])
        before = _finals(dsn)
        assert before["B-001"]["status"] == "final"
        assert "missing:M-DRIVE" in before["B-001"]["flags"]
        produce(services.kafka_bootstrap, topic_prefix, stream.site, late)
        wait_consumed(dsn, f"{topic_prefix}g-late", len(on_time) + len(late), [worker])
    finally:
        stop(worker)
    after = _finals(dsn)
    truth = stream.truth()
    # one revision per micro-batch that brought late data: at least one
    assert after["B-001"]["status"] == "revised" and after["B-001"]["revision"] >= 2
    assert after["B-001"]["energy"]["electricity"] == pytest.approx(
        truth["B-001"]["electricity"], rel=1e-5)
    with psycopg.connect(dsn) as conn:
        revisions = conn.execute(
            "SELECT revision, status, (energy->>'electricity')::float8 FROM batch_footprint "
            "WHERE batch_id = 'B-001' ORDER BY revision").fetchall()
    assert [r[:2] for r in revisions[:2]] == [(0, "provisional"), (1, "final")]
    assert [r[1] for r in revisions[2:]] == ["revised"] * (len(revisions) - 2)
    assert revisions[1][2] == pytest.approx(before["B-001"]["energy"]["electricity"])
    assert revisions[1][2] < revisions[-1][2]  # the drive's energy was missing from the final
    with psycopg.connect(dsn) as conn:
        # the late intervals, and the incomer's that waited for them, have their allocation
        # rows too: every settled interval adds up
        unbalanced = conn.execute(
            "SELECT i.meter, i.end_ts FROM energy_interval i JOIN allocation a "
            "USING (site, meter, end_ts) GROUP BY i.meter, i.end_ts, i.energy "
            "HAVING abs(i.energy - sum(a.energy)) > 1e-9 * greatest(1, i.energy)").fetchall()
        without = conn.execute(
            "SELECT i.meter, count(*) FROM energy_interval i, compute_site_state s "
            "WHERE i.site = s.site AND i.end_ts <= 'epoch'::timestamptz + "
            "s.settled_until / 1000 * interval '1 microsecond' AND NOT EXISTS (SELECT 1 "
            "FROM allocation a WHERE (a.site, a.meter, a.end_ts) = (i.site, i.meter, i.end_ts))"
            " GROUP BY 1").fetchall()
    assert unbalanced == [] and without == []


def test_a_carbon_meter_with_another_embedded_factor_is_flagged(
        tmp_path, services, new_database, topic_prefix) -> None:
    flagged = {}
    # the site's factor (CN-East 2023), and a meter set up with North China's (2023)
    for factor in (0.5500, 0.6361):
        dsn = new_database()
        migrate(dsn)
        stream = Stream(poll_s=10, carbon_factor=factor, gateway=f"gw-{int(factor * 1e4)}")
        prefix = f"{topic_prefix}{int(factor * 1e4)}."
        frames, _ = stream.frames()
        produce(services.kafka_bootstrap, prefix, stream.site, frames)
        config = server_toml(tmp_path / f"{factor}.toml", dsn, services.kafka_bootstrap, prefix,
                             f"{topic_prefix}g-carbon", {"demo-site": SMALL},
                             {stream.gateway: stream.public_key})
        worker = start_worker(config, tmp_path / "worker.log")
        try:
            wait_consumed(dsn, f"{topic_prefix}g-carbon", len(frames), [worker])
        finally:
            stop(worker)
        flagged[factor] = {b: f["flags"] for b, f in _finals(dsn).items()}
    assert all("carbon_meter_deviation:M-AIR" not in f for f in flagged[0.55].values())
    assert all("carbon_meter_deviation:M-AIR" in f for f in flagged[0.6361].values())
