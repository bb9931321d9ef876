"""On the TimescaleDB peer: landing without COPY, and continuous aggregates that give
the same numbers as the plain-PostgreSQL materialized views for the same data."""

from __future__ import annotations

import hashlib
import random
import uuid

import pytest
from ingest_helpers import T0_NS

from edge.wire import Frame
from ingest.db import connect
from ingest.maintenance import refresh_aggregates
from ingest.migrate import migrate
from ingest.store import Accepted, Store

pytestmark = pytest.mark.services
NS = 10**9


def counter_frames(site: str, seed: int = 7) -> list[Frame]:
    """Three meters' cumulative counters over ~30 h: irregular polls, a 2 h outage."""
    rng = random.Random(seed)
    frames, t, seq = [], T0_NS + 123 * NS, 0
    counters = [1000.0, 50.0, 7.5]
    while t < T0_NS + 30 * 3600 * NS:
        t += rng.randint(7, 900) * NS
        if 10 * 3600 * NS < t - T0_NS < 12 * 3600 * NS:
            continue  # outage: the counters keep the total, nothing is polled
        counters = [c + rng.uniform(0, 5) * (i + 1) for i, c in enumerate(counters)]
        meters = [f"{site}-m{i}" for i in range(3)]
        frames.append(Frame(site, f"{site}-gw", seq, t, meters, ["energy"] * 3, [t] * 3,
                            list(counters), ["kWh", "kWh", "MWh"], ["good"] * 3))
        seq += 1
    return frames


def land(dsn: str, frames: list[Frame], use_copy: bool) -> None:
    store = Store(dsn, "agg-test", use_copy=use_copy)
    try:
        for i in range(0, len(frames), 50):
            chunk = [Accepted(f, "t", 0, f.seq, digest=hashlib.sha256(repr(f).encode()).digest())
                     for f in frames[i : i + 50]]
            result = store.land(chunk, {("t", 0): frames[min(i + 50, len(frames)) - 1].seq + 1})
            assert result.conflicts == []  # a replay is a redelivery: same bodies
    finally:
        store.close()


def views(dsn: str, site: str) -> dict[str, list[tuple[object, ...]]]:
    out = {}
    with connect(dsn) as conn:
        for w in ("15m", "1h", "1d"):
            out[f"energy_{w}"] = conn.execute(
                f"SELECT bucket, meter, channel, unit, carrier, energy, from_ts, to_ts, readings "
                f"FROM energy_{w} WHERE site = %s ORDER BY meter, bucket", (site,)).fetchall()
            out[f"reading_{w}"] = [
                (*row[:-1], round(row[-1], 6)) for row in conn.execute(
                    f"SELECT bucket, meter, first_value, last_value, first_ts, last_ts, "
                    f"min_value, max_value, readings, sum_value FROM reading_{w} "
                    f"WHERE site = %s ORDER BY meter, bucket", (site,)).fetchall()
            ]
        out["gateway_seq"] = conn.execute(
            "SELECT stream, first_seq, highest_seq, frames, missing_count FROM gateway_seq "
            "WHERE gateway = %s", (f"{site}-gw",)).fetchall()
    return out


def test_continuous_aggregates_match_postgresql_views(services, new_database) -> None:
    site = f"agg{uuid.uuid4().hex[:8]}"
    frames = counter_frames(site)
    pg = new_database()
    migrate(pg)
    migrate(services.tsdb_dsn)
    land(pg, frames, use_copy=True)
    land(services.tsdb_dsn, frames, use_copy=False)  # the peer cannot COPY FROM STDIN
    land(services.tsdb_dsn, frames[:80], use_copy=False)  # a replay lands nothing twice
    assert refresh_aggregates(pg) == "postgresql"
    assert refresh_aggregates(services.tsdb_dsn) == "timescaledb"
    try:
        on_pg, on_tsdb = views(pg, site), views(services.tsdb_dsn, site)
        assert len(on_pg["energy_15m"]) > 100 and len(on_pg["energy_1d"]) == 6
        for name, rows in on_pg.items():
            assert on_tsdb[name] == rows, f"{name} differs between PostgreSQL and TimescaleDB"
        # energies telescope: per meter, the sum over buckets is the counter's increase
        for i in range(3):
            total = sum(r[5] for r in on_pg["energy_1h"] if r[1] == f"{site}-m{i}")
            first, last = frames[0].value[i], frames[-1].value[i]
            assert total == pytest.approx(last - first, rel=1e-12)
        assert on_pg["gateway_seq"] == [("readings", 0, len(frames) - 1, len(frames), 0)]
        with connect(services.tsdb_dsn) as conn:  # body digests are kept on the peer too
            digests = conn.execute("SELECT count(DISTINCT body_sha256) FROM ingested_frame "
                                   "WHERE site = %s", (site,)).fetchone()
        assert digests == (len(frames),)
    finally:
        with connect(services.tsdb_dsn) as conn:
            conn.execute("DELETE FROM reading WHERE site = %s", (site,))
            conn.execute("DELETE FROM ingested_frame WHERE site = %s", (site,))
            conn.execute("DELETE FROM gateway_seq WHERE gateway = %s", (f"{site}-gw",))


def test_policies_apply_and_late_data_lands_in_compressed_chunks(services) -> None:
    from ingest.config import StorageConfig
    from ingest.maintenance import apply_timescale_policies

    site = f"cmp{uuid.uuid4().hex[:8]}"
    frames = counter_frames(site, seed=11)[:120]
    migrate(services.tsdb_dsn)
    storage = StorageConfig(compress_after="7 days", retain_for="30 years",
                            expected_readings_per_second=50)
    try:
        land(services.tsdb_dsn, frames[:100], use_copy=False)
        with connect(services.tsdb_dsn) as conn:
            apply_timescale_policies(conn, storage)
            apply_timescale_policies(conn, storage)  # idempotent: one job of each kind
            jobs = conn.execute(
                "SELECT proc_name, count(*) FROM timescaledb_information.jobs "
                "WHERE hypertable_name IN ('reading') OR proc_name LIKE 'policy_refresh%%' "
                "GROUP BY 1 ORDER BY 1").fetchall()
            assert jobs == [("policy_compression", 1), ("policy_refresh_continuous_aggregate", 3),
                            ("policy_retention", 1)]
            interval = conn.execute(
                "SELECT time_interval FROM timescaledb_information.dimensions "
                "WHERE hypertable_name = 'reading'").fetchone()
            assert interval is not None and interval[0].days == 1  # 50 readings/s → daily
            (job,) = conn.execute(
                "SELECT job_id FROM timescaledb_information.jobs "
                "WHERE proc_name = 'policy_compression'").fetchone() or (None,)
            conn.execute(f"CALL run_job({int(job)})")  # the peer runs no background jobs
            compressed = conn.execute(
                "SELECT count(*) FROM timescaledb_information.chunks "
                "WHERE hypertable_name = 'reading' AND is_compressed").fetchone()
            assert compressed is not None and compressed[0] >= 1
        # late frames into compressed chunks, one replayed: new rows land, none doubles
        f = frames[50]
        resent = Frame(f.site, f.gateway, 10_000, f.sent_ns, f.meter, f.channel, f.ts_ns,
                       f.value, f.unit, f.quality)  # same readings under a new seq
        land(services.tsdb_dsn, [*frames[95:120], resent], use_copy=False)
        with connect(services.tsdb_dsn) as conn:
            n = conn.execute("SELECT count(*), count(DISTINCT (meter, ts)) FROM reading "
                             "WHERE site = %s", (site,)).fetchone()
        assert n == (360, 360)
    finally:
        with connect(services.tsdb_dsn) as conn:
            conn.execute("DELETE FROM reading WHERE site = %s", (site,))
            conn.execute("DELETE FROM ingested_frame WHERE site = %s", (site,))
            conn.execute("DELETE FROM gateway_seq WHERE gateway = %s", (f"{site}-gw",))


def with_bad_zeros(frames: list[Frame]) -> list[Frame]:
    """The series plus `bad` readings of value 0 (what edge sends for an OPC UA Bad status)
    on meter 0: between two polls, as the last reading of a bucket, and alone in a bucket
    of the outage; each in a frame of its own."""
    bucket = 900 * NS  # 15 min; the buckets' origin (2000-01-03) is a multiple of it
    ts = [f.ts_ns[0] for f in frames]
    ends = [k for k in range(len(ts) - 1)
            if ts[k] // bucket == (ts[k] + NS) // bucket < ts[k + 1] // bucket]
    bad_ts = [ts[40] + NS, ts[ends[len(ends) // 2]] + NS, T0_NS + 11 * 3600 * NS]
    f0, seq = frames[0], len(frames)
    bad = [Frame(f0.site, f0.gateway, seq + i, t, [f0.meter[0]], ["energy"], [t], [0.0],
                 ["kWh"], ["bad"]) for i, t in enumerate(bad_ts)]
    return sorted([*frames, *bad], key=lambda f: f.ts_ns[0])


def test_bad_readings_change_no_energy_on_either_backend(services, new_database) -> None:
    clean, dirty = f"q{uuid.uuid4().hex[:8]}", f"d{uuid.uuid4().hex[:8]}"
    good, bad = counter_frames(clean), with_bad_zeros(counter_frames(dirty))
    pg = new_database()
    migrate(pg)
    migrate(services.tsdb_dsn)
    land(pg, good, use_copy=True)
    land(pg, bad, use_copy=True)
    land(services.tsdb_dsn, good, use_copy=False)
    land(services.tsdb_dsn, bad, use_copy=False)
    refresh_aggregates(pg)
    refresh_aggregates(services.tsdb_dsn)

    def same_names(rows: dict[str, list[tuple[object, ...]]], site: str) -> dict[str, object]:
        return {name: [tuple(str(v).replace(site, "S") for v in row) for row in table]
                for name, table in rows.items() if name != "gateway_seq"}

    try:
        for dsn in (pg, services.tsdb_dsn):
            with connect(dsn) as conn:
                assert conn.execute("SELECT count(*) FROM reading WHERE site = %s AND "
                                    "quality = 'bad'", (dirty,)).fetchone() == (3,)
            expected = same_names(views(dsn, clean), clean)
            assert len(expected["energy_15m"]) > 100
            assert same_names(views(dsn, dirty), dirty) == expected, dsn
        assert views(services.tsdb_dsn, dirty) == views(pg, dirty)
    finally:
        with connect(services.tsdb_dsn) as conn:
            for site in (clean, dirty):
                conn.execute("DELETE FROM reading WHERE site = %s", (site,))
                conn.execute("DELETE FROM ingested_frame WHERE site = %s", (site,))
                conn.execute("DELETE FROM gateway_seq WHERE gateway = %s", (f"{site}-gw",))
