"""A gzip bomb among the readings (200 MiB expanded from about 200 kB): the compute worker
expands it no further than ``[limits] max_expanded_bytes``, stores the offset past it, and
computes every footprint from the frames around it; a restart does not meet it again.
Ingest dead-letters the same record batch (tests/ingest/test_gzip_bomb.py)."""

from __future__ import annotations

import time
import tomllib

import psycopg
import pytest
import tomli_w
from kafka import KafkaProducer

from ingest.migrate import migrate
from tests.compute.plant_stream import (
    ROOT,
    Stream,
    produce,
    server_toml,
    start_worker,
    stop,
    wait_consumed,
)
from tests.logcheck import our_tracebacks

pytestmark = [pytest.mark.services, pytest.mark.timeout(300)]
BOMB_BYTES = 200 * 1024 * 1024
BOUND = 8 * 1024 * 1024


def test_a_gzip_bomb_is_skipped_and_every_footprint_still_computed(
        tmp_path, services, new_database, topic_prefix) -> None:
    dsn = new_database()
    migrate(dsn)
    stream = Stream(poll_s=7)
    frames, _ = stream.frames()
    half = len(frames) // 2
    group = f"{topic_prefix}g-bomb"
    config = server_toml(tmp_path / "server.toml", dsn, services.kafka_bootstrap, topic_prefix,
                         group, {"demo-site": ROOT / "deploy/sites/small.toml"},
                         {stream.gateway: stream.public_key})
    settings = tomllib.loads(config.read_text())
    settings["limits"] = {"max_expanded_bytes": BOUND}
    config.write_text(tomli_w.dumps(settings))

    produce(services.kafka_bootstrap, topic_prefix, stream.site, frames[:half])
    bomber = KafkaProducer(bootstrap_servers=services.kafka_bootstrap, compression_type="gzip",
                           max_request_size=BOMB_BYTES + (1 << 20), batch_size=1 << 20)
    try:
        bomber.send(f"{topic_prefix}readings", value=bytes(BOMB_BYTES),
                    key=stream.site.encode()).get(timeout=120)
    finally:
        bomber.close(timeout=10)
    produce(services.kafka_bootstrap, topic_prefix, stream.site, frames[half:])

    log = tmp_path / "worker.log"
    worker = start_worker(config, log)
    try:
        wait_consumed(dsn, group, len(frames) + 1, [worker])
        assert worker.poll() is None, log.read_text()[-3000:]
    finally:
        stop(worker)
    first_run = log.read_text()
    assert first_run.count("skipped") == 1 and "expands past 8388608 bytes" in first_run
    assert our_tracebacks(first_run) == []
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT batch_id, status, energy FROM batch_footprint_latest"
                            ).fetchall()
    truth = stream.truth()
    assert {r[0] for r in rows} == set(truth)
    for batch, status, energy in rows:
        assert status == "final", batch
        for carrier, amount in truth[batch].items():
            assert energy[carrier] == pytest.approx(amount, rel=1e-5), (batch, carrier)

    # a restart resumes past the bomb: it joins, polls a few micro-batches, skips nothing
    worker = start_worker(config, log)
    try:
        deadline = time.monotonic() + 60
        while "computing" not in log.read_text()[len(first_run):]:
            assert time.monotonic() < deadline and worker.poll() is None, log.read_text()
            time.sleep(0.2)
        time.sleep(3.0)  # six micro-batches of 0.5 s
        assert worker.poll() is None
    finally:
        stop(worker)
    second_run = log.read_text()[len(first_run):]
    assert "skipped" not in second_run and our_tracebacks(second_run) == []
