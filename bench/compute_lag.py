"""Reading-to-footprint lag of ``python -m compute`` at 10k readings/s (issue 9).

Real time against the local Kafka (tansu) and PostgreSQL: a fresh database,
migrated; a site of 66 copies of the small line (462 meters, the small site's
settings) behind one gateway that polls every 0.1 s and sends per poll a frame
of ~990 readings (9,900 readings/s in 10 frames/s) and a batch frame, the plan
played at 100x so batches start and end during the run; the worker as a
subprocess (``python -m compute``), its micro-batch times read from its
metrics endpoint for the notes.

A frame's lag is from its send (the producer handed it to the Kafka client)
to the first moment the worker's transaction with it is visible: its row in
``compute_frame``, written in the transaction that stores its intervals, the
allocations and the footprints it changed. That is watched from outside every
10 ms (so lags are rounded up by up to 10 ms). Baseline, same frames, same
run: the time a plain consumer in this process takes to receive them (Kafka's
own produce → fetch latency, the floor for any consumer).
"""

from __future__ import annotations

import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import psycopg
import tomli_w
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from bench.compute_plant import ROOT, PlantStream, scaled_site
from bench.harness import BenchContext, Figure
from compute.site import load_site
from edge.wire import peek_header, public_key_b64

WARM_S = 5.0  # real time after the group join: the window fills, the kernels are loaded
WATCH_S = 0.01
Key = tuple[str, int]  # gateway, seq


def _services() -> tuple[Any, list[str]]:
    from deploy import devstack

    before = {n for n, ep in devstack.load_state().items() if devstack.reachable(ep)}
    state = devstack.up(("kafka", "postgres"))
    return state, [n for n in ("kafka", "postgres") if n not in before]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _micro_batches(port: int) -> tuple[int, float]:
    """(count, total seconds) of the worker's micro-batches, from its metrics endpoint."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    got = {}
    for line in text.decode().splitlines():
        for name in ("_count", "_sum"):
            if line.startswith(f"plantprint_compute_micro_batch_seconds{name} "):
                got[name] = float(line.split()[1])
    return int(got.get("_count", 0)), got.get("_sum", 0.0)


def _server_toml(path: Path, dsn: str, bootstrap: str, prefix: str, site: Path,
                 stream: PlantStream, metrics_port: int) -> Path:
    path.write_text(tomli_w.dumps({
        "kafka": {"bootstrap_servers": [bootstrap], "topic_prefix": prefix,
                  "session_timeout_s": 6.0},
        "database": {"dsn": dsn}, "metrics": {"port": 0},
        "gateways": {stream.gateway(g): {"public_key": public_key_b64(k), "site": stream.site,
                                         "meters": ["*"], "assets": ["*"]}
                     for g, k in enumerate(stream.keys)},
        "compute": {"group": f"{prefix}compute", "metrics_port": metrics_port,
                    "sites": {stream.site: str(site)}},
    }))
    return path


class _Watch(threading.Thread):
    """Records when each readings frame first shows in ``compute_frame``, and when a
    plain consumer first receives it (the baseline)."""

    def __init__(self, dsn: str, bootstrap: str, topic: str) -> None:
        super().__init__(daemon=True)
        self.dsn, self.bootstrap, self.topic = dsn, bootstrap, topic
        self.committed: dict[Key, float] = {}
        self.received: dict[Key, float] = {}
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self._consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                       enable_auto_commit=False)
        tps = [TopicPartition(topic, p) for p in
               sorted(self._consumer.partitions_for_topic(topic) or {0})]
        self._consumer.assign(tps)
        self._consumer.seek_to_end(*tps)

    def run(self) -> None:
        receiver = threading.Thread(target=self._receive, daemon=True)
        receiver.start()
        try:
            hi = 0
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                while not self.stop.is_set():
                    # the newest frames only (gateways' frames may commit a little out of
                    # order, never 100 polls apart), so the watch stays cheap all run
                    rows = conn.execute("SELECT gateway, seq FROM compute_frame WHERE "
                                        "stream = 'readings' AND seq > %s", (hi - 100,)
                                        ).fetchall()
                    now = time.time()
                    for gw, seq in rows:
                        self.committed.setdefault((str(gw), int(seq)), now)
                        hi = max(hi, int(seq))
                    self.stop.wait(WATCH_S)
        except BaseException as exc:  # re-raised by the bench
            self.error = exc
        receiver.join(5)

    def _receive(self) -> None:
        try:
            while not self.stop.is_set():
                for recs in self._consumer.poll(timeout_ms=50).values():
                    now = time.time()
                    for rec in recs:
                        key = peek_header(rec.value)
                        if key is not None:
                            self.received.setdefault((key.gateway, key.seq), now)
        finally:
            self._consumer.close()


def _play(producer: KafkaProducer, prefix: str, stream: PlantStream, start: float,
          polls: int, poll_s: float, sent: dict[Key, float]) -> None:
    """Polls in real time from ``start`` (epoch s); send times of the readings frames."""
    for k in range(polls):
        t = start + k * poll_s
        time.sleep(max(0.0, t - time.time()))
        frames = stream.poll(int(t * 1e9))
        now = time.time()
        for topic, data in frames:
            producer.send(f"{prefix}{topic}", value=data, key=stream.site.encode())
            if topic == "readings":
                key = peek_header(data)
                assert key is not None
                sent[(key.gateway, key.seq)] = now


def _start_worker(config: Path, log: Path) -> tuple[subprocess.Popen[bytes], float]:
    """The worker, and seconds from spawning it to its 'computing … as group' line."""
    t0 = time.perf_counter()
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "compute", "--config", str(config)],
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    while b"computing" not in log.read_bytes():
        if proc.poll() is not None or time.perf_counter() - t0 > 60:
            raise AssertionError(f"worker did not start: {log.read_text()[-2000:]}")
        time.sleep(0.005)
    return proc, time.perf_counter() - t0


def _quantiles(lags: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(lags, n=100, method="inclusive")
    return q[49], q[98]


def _measure(ctx: BenchContext, dsn: str, bootstrap: str, scratch: Path
             ) -> tuple[list[Figure], float]:
    # 66 lines x 15 readings every 0.1 s: 9,900 readings/s in 10 frames/s (quick: 2,500)
    copies, gateways, poll_s, measured_s = (33, 1, 0.2, 8.0) if ctx.quick else (66, 1, 0.1, 40.0)
    stream = PlantStream(copies, gateways, speed=100.0)
    prefix = f"benchc{uuid.uuid4().hex[:8]}."
    site = scaled_site(scratch / "bench-lag.toml", copies)
    site_model = load_site(site)
    port = _free_port()
    config = _server_toml(scratch / "server.toml", dsn, bootstrap, prefix, site, stream, port)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0,
                             max_request_size=8 << 20)
    sent: dict[Key, float] = {}
    _play(producer, prefix, stream, time.time(), 1, poll_s, sent)  # creates the topics
    producer.flush()
    watch = _Watch(dsn, bootstrap, f"{prefix}readings")
    watch.start()
    proc: subprocess.Popen[bytes] | None = None
    try:
        proc, ready_s = _start_worker(config, scratch / "worker.log")
        # real time until the worker has joined its group, then a few polls of warm-up
        start, warm, joined, log = time.time(), 0, 0, scratch / "worker.log"
        while b"assigned" not in log.read_bytes() or warm < joined + WARM_S / poll_s:
            if b"assigned" not in log.read_bytes():
                joined = warm + 1
            if time.time() > start + 60:
                raise AssertionError(f"worker never joined: {log.read_text()[-2000:]}")
            _play(producer, prefix, stream, start + warm * poll_s, 1, poll_s, sent)
            warm += 1
        first = len(sent)
        mb_before = _micro_batches(port)
        polls = int(measured_s / poll_s)
        _play(producer, prefix, stream, time.time() + poll_s, polls, poll_s, sent)
        producer.flush()
        keys = list(sent)[first:]
        wait_until = time.time() + 30
        while time.time() < wait_until and not all(k in watch.committed for k in keys):
            time.sleep(0.05)
        mb_after = _micro_batches(port)
    finally:
        watch.stop.set()
        watch.join(10)
        if proc is not None:
            proc.terminate()
            proc.wait(30)
        producer.close(timeout=5)
    if watch.error is not None:
        raise watch.error
    n_mb = mb_after[0] - mb_before[0]
    mb_s = (mb_after[1] - mb_before[1]) / n_mb if n_mb else float("nan")
    missing = [k for k in keys if k not in watch.committed]
    lags = [watch.committed.get(k, float("inf")) - sent[k] for k in keys]
    base = [watch.received[k] - sent[k] for k in keys if k in watch.received]
    p50, p99 = _quantiles(lags)
    b50, b99 = _quantiles(base)
    rate = copies * 15 / poll_s
    shape = (f"{rate / 1000:.0f}k readings/s: {copies * 7:,} meters polled every {poll_s:g} s "
             f"by {gateways} gateway(s), frames of ~{copies * 15 // gateways} readings")
    note = (f"{len(keys)} frames over {measured_s:g} s after the group join and a "
            f"{warm - joined}-poll warm-up, "
            f"{len(missing)} not committed within 30 s; commit watched every "
            f"{WATCH_S * 1e3:.0f} ms in compute_frame; baseline p99 {b99:.3f} s; "
            f"{n_mb} micro-batches, {mb_s:.2f} s each on average; the site's window "
            f"(event_delay_s {site_model.event_delay_s:g} s) grows all run")
    goal = 1.0 + poll_s
    return [
        Figure("compute", f"worker reading-to-footprint lag p50 ({shape})", p50, "s",
               "plain Kafka consumer, same frames (p50)", b50, "", "lower", None, note),
        Figure("compute", f"worker reading-to-footprint lag p99 ({shape})", p99, "s",
               "plain Kafka consumer, same frames (p99)", b99,
               f"≤ 1 s + poll interval ({goal:g} s)", "lower", p99 <= goal, note),
    ], ready_s


def lag_figures(ctx: BenchContext, scratch: Path) -> tuple[list[Figure], float]:
    """The lag figures, and seconds from spawning the worker to its ready line."""
    from urllib.parse import urlparse

    from deploy import devstack
    from ingest.migrate import migrate

    state, started = _services()
    admin = state["postgres"].url
    dbname = f"pp_bench_{uuid.uuid4().hex[:8]}"
    try:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{dbname}"')
        dsn = urlparse(admin)._replace(path=f"/{dbname}").geturl()
        migrate(dsn)
        return _measure(ctx, dsn, state["kafka"].url, scratch)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        devstack.down(started)
