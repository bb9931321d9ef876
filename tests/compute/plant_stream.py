"""A synthetic stream of signed frames for the `small` site model, and a worker harness.

Not the simulator: a small deterministic generator whose meters follow the
site model (deploy/sites/small.toml) — piecewise-constant rates per asset
state, a parent incomer = children + 20 kW of unmetered load, a smart carbon
meter counting kgCO2 at a given factor — so the worker tests can replay the
same frames into Kafka as often as they like (kills, restarts, two workers)
and compare the results, and the exact per-batch energies are known.
"""

from __future__ import annotations

import math
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import tomli_w
from kafka import KafkaProducer

from bench.compute_plant import ASSET_METERS, PLAN, UNITS
from edge.wire import BatchEvent, BatchFrame, Frame, Reading, encode, generate_private_key
from edge.wire import public_key_b64 as pub_b64

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_736_143_200 * 10**9  # 2025-01-06T06:00:00Z
S = 10**9

# the small scenario's plan and meters, as the compute bench streams them
BATCHES = list(PLAN)
UNMETERED_KW = 20.0
AIR_BASE_KW, AIR_PER_RUNNING_KW = 4.0, 9.0


def running(asset: str, t: int) -> list[tuple[str, float]]:
    return [(b, q) for b, a, _p, s, e, q in BATCHES if a == asset and s <= t < e]


def rate(meter: str, t: int) -> float:
    if meter in ASSET_METERS:
        asset, idle, prod = ASSET_METERS[meter]
        return prod if running(asset, t) else idle
    if meter == "M-AIR":
        return AIR_BASE_KW + AIR_PER_RUNNING_KW * sum(
            bool(running(a, t)) for a in ("L1-press", "L1-oven"))
    children = ("M-PRESS", "M-OVEN", "M-AIR", "M-DRIVE")
    return sum(rate(c, t) for c in children) + UNMETERED_KW


@dataclass
class Stream:
    site: str = "demo-site"
    gateway: str = "gw-synth-1"
    poll_s: int = 10
    duration_s: int = 6600  # the last batch ends at 5400 s: its finality needs the
    # watermark (less event_delay_s, 300 s) past its end by the residual margin (~310 s)
    carbon_factor: float = 0.5500  # kgCO2/kWh the carbon meter has embedded
    key: object = field(default_factory=generate_private_key)

    @property
    def public_key(self) -> str:
        return pub_b64(self.key)  # type: ignore[arg-type]

    def frames(self, hold_back: set[str] = frozenset()) -> tuple[list[tuple[str, bytes]],
                                                                  list[tuple[str, bytes]]]:
        """(stream, envelope) in send order, and those of ``hold_back`` meters sent late."""
        counters = {m: 1000.0 for m in UNITS}
        co2 = 500.0
        on_time: list[tuple[str, bytes]] = []
        late: list[tuple[str, bytes]] = []
        seq = {"readings": 0, "batches": 0}
        pending: list[BatchEvent] = []
        states = {"L1-press": -1, "L1-oven": -1}
        for t in range(0, self.duration_s + 1):
            if t > 0:
                for m in counters:
                    counters[m] += rate(m, t - 1) / 3600.0
                co2 += rate("M-AIR", t - 1) / 3600.0 * self.carbon_factor
            pending += [BatchEvent(a, b, p, kind, T0 + at * S, q if kind == "end" else None,
                                   "t" if kind == "end" else None)
                        for b, a, p, s, e, q in BATCHES
                        for kind, at in (("start", s), ("end", e)) if at == t]
            if t % self.poll_s:
                continue
            # as the edge: every flush a batch frame, empty when nothing happened (a watermark)
            seq["batches"] += 1
            on_time.append(("batches", encode(BatchFrame(
                self.site, self.gateway, seq["batches"], T0 + t * S, tuple(pending)),
                self.key)))  # type: ignore[arg-type]
            pending = []
            readings, held = [], []
            for m, value in counters.items():
                unit, rate_unit = UNITS[m]
                rows = [Reading(m, "energy", T0 + t * S, round(value, 6), unit, "good"),
                        Reading(m, "power", T0 + t * S, rate(m, t), rate_unit, "good")]
                if m == "M-AIR":
                    rows.append(Reading(m, "co2", T0 + t * S, math.floor(co2 * 10) / 10, "kg",
                                        "good"))
                (held if m in hold_back else readings).extend(rows)
            for asset in states:  # changes since the last poll, at their own (source) time
                for at in range(max(0, t - self.poll_s + 1), t + 1):
                    code = 3 if running(asset, at) else 1
                    if code != states[asset]:
                        states[asset] = code
                        readings.append(Reading(asset, "state", T0 + at * S, code, "state",
                                                "good"))
            for rows, out in ((readings, on_time), (held, late)):
                if rows:
                    seq["readings"] += 1
                    out.append(("readings", encode(Frame.from_readings(
                        self.site, self.gateway, seq["readings"], T0 + t * S, rows),
                        self.key)))  # type: ignore[arg-type]
        return on_time, late

    def truth(self) -> dict[str, dict[str, float]]:
        """Per batch and carrier under the site model's conventions (small: unallocated idle)."""
        out: dict[str, dict[str, float]] = {b[0]: {} for b in BATCHES}
        carrier = {"M-GAS": "natural_gas", "M-STEAM": "steam"}
        for t in range(self.duration_s):
            for m in ASSET_METERS:
                asset = ASSET_METERS[m][0]
                run = running(asset, t)
                total_q = sum(q for _, q in run)
                for b, q in run:
                    share = q / total_q if asset == "L1-oven" else 1 / len(run)
                    c = carrier.get(m, "electricity")
                    out[b][c] = out[b].get(c, 0.0) + rate(m, t) / 3600 * share
            run_all = [(b, q) for a in ("L1-press", "L1-oven") for b, q in running(a, t)]
            for b, _q in run_all:  # M-AIR by machine hours
                out[b]["electricity"] += rate("M-AIR", t) / 3600 / len(run_all)
            mass = {b: q / (e - s) for b, _a, _p, s, e, q in BATCHES}
            total = sum(mass[b] for b, _ in run_all)
            for b, _q in run_all:  # M-INC residual by production rate
                out[b]["electricity"] += UNMETERED_KW / 3600 * mass[b] / total
        return out


def produce(bootstrap: str, prefix: str, site: str, frames: list[tuple[str, bytes]]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    try:
        for stream, data in frames:
            producer.send(f"{prefix}{stream}", value=data, key=site.encode())
        producer.flush(timeout=30)
    finally:
        producer.close(timeout=5)


def server_toml(path: Path, dsn: str, bootstrap: str, prefix: str, group: str,
                sites: dict[str, Path], keys: dict[str, str | tuple[str, str]]) -> Path:
    """``keys``: gateway -> its public key, or (key, site); ingest's binding is that site
    (else the first of ``sites``), all its meters and assets."""
    def binding(k: str | tuple[str, str]) -> dict[str, object]:
        key, site = k if isinstance(k, tuple) else (k, next(iter(sites), "demo-site"))
        return {"public_key": key, "site": site, "meters": ["*"], "assets": ["*"]}

    path.write_text(tomli_w.dumps({
        "kafka": {"bootstrap_servers": [bootstrap], "topic_prefix": prefix,
                  "session_timeout_s": 6.0},
        "database": {"dsn": dsn}, "metrics": {"port": 0},
        "gateways": {gw: binding(k) for gw, k in keys.items()},
        "compute": {"group": group, "metrics_port": 0, "gap_s": 120.0,
                    "micro_batch_s": 0.5, "sites": {s: str(p) for s, p in sites.items()}},
    }))
    return path


def site_copy(tmp: Path, site: str) -> Path:
    """deploy/sites/small.toml under another site name (a second plant for group tests)."""
    text = (ROOT / "deploy/sites/small.toml").read_text().replace(
        'site = "demo-site"', f'site = "{site}"', 1)
    out = tmp / f"{site}.toml"
    out.write_text(text)
    return out


def start_worker(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "compute", "--config", str(config)],
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)


def stored_offsets(dsn: str, group: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT coalesce(sum(next_offset), 0) FROM consumer_offset "
                           "WHERE consumer_group = %s", (group,)).fetchone()
    return int(row[0]) if row else 0


def wait_consumed(dsn: str, group: str, total: int, procs: list[subprocess.Popen[bytes]],
                  timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for p in procs:
            assert p.poll() in (None, 0, -9), f"worker exited with {p.returncode}"
        if stored_offsets(dsn, group) >= total:
            return
        time.sleep(0.3)
    raise AssertionError(f"worker stored {stored_offsets(dsn, group)} of {total} offsets")


def footprints(dsn: str) -> list[tuple[object, ...]]:
    """Every footprint row, without the time it was computed."""
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT site, batch_id, revision, status, energy, uncertainty, kgco2e_location, "
            "kgco2e_market, primary_data_share, flags, factor_ids, inputs_sha256, detail "
            "FROM batch_footprint ORDER BY site, batch_id, revision").fetchall()


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
