"""The MQTT bridge against hostile publishers (real Mosquitto, real Kafka, real ingest):
it verifies before it remembers, and one huge message neither kills it nor stops it."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import psycopg
import pytest
from ingest_helpers import Gateway, IngestProcess, publisher, read_topic, wait_for

from edge.wire import MAGIC, canonical_bytes, encode
from ingest.bridge import message_key
from ingest.migrate import migrate

pytestmark = pytest.mark.services


def headers(record: Any) -> dict[str, str]:
    return {k: v.decode() for k, v in record.headers}


def _bridge_config(make_config: Callable[..., Path], services: Any, tmp_path: Path,
                   topic_prefix: str, dsn: str, gateways: list[Gateway]) -> tuple[Path, str]:
    root = f"pp{topic_prefix.rstrip('.')}"
    cfg = make_config(dsn, gateways, kafka={"dlq_max_bytes": 1 << 20}, bridge={
        "url": f"mqtt://{services.mqtt_host}:{services.mqtt_port}",
        "client_id": f"bridge-{topic_prefix}", "topic_root": root,
        "state_file": str(tmp_path / "bridge.sqlite"), "readback_idle_s": 1.0,
    })
    return cfg, root


def _publish(pub: mqtt.Client, topic: str, payloads: list[bytes]) -> None:
    for p in payloads:
        pub.publish(topic, p, qos=1).wait_for_publish(30)


def _start(bridge: IngestProcess) -> None:
    bridge.start()
    wait_for(lambda: bridge.log.read_text().count("bridging") >= 1, 30, "bridge subscribed")


def test_forged_envelopes_never_make_the_bridge_skip_the_genuine_frames(
    services, tmp_path: Path, make_config, topic_prefix, ingest_process, new_database,
    writer_login,
) -> None:
    gw_b = Gateway("gw-b", site="site-b", meters=2)
    gw_a = Gateway("gw-a", site="site-a", meters=2)
    dsn = new_database()
    migrate(dsn)
    cfg, root = _bridge_config(make_config, services, tmp_path, topic_prefix,
                               writer_login(dsn), [gw_a, gw_b])
    genuine = [gw_b.frame_bytes() for _ in range(10)]
    # what an attacker on the site broker sends first: gw-b's seq 7 and 8 with a zero
    # signature, and gw-a's own validly signed frame under gw-b's topic and site
    forged = [MAGIC + bytes(64) + canonical_bytes(gw_b.frame(seq=s)) for s in (7, 8)]
    misnamed = encode(dataclasses.replace(gw_a.frame(seq=0), site="site-b"), gw_a.key)
    bridge = ingest_process("bridge", "--config", str(cfg))
    consumer = ingest_process("--config", str(cfg))
    _start(bridge)
    consumer.start()
    pub = publisher(services.mqtt_host, services.mqtt_port)
    try:
        _publish(pub, f"{root}/site-b/gw-b/readings", [*forged, misnamed, *genuine])
        records = read_topic(services.kafka_bootstrap, f"{topic_prefix}readings", 10, 60)
        dead = read_topic(services.kafka_bootstrap, f"{topic_prefix}dlq", 3, 30)

        def landed() -> int:
            with psycopg.connect(dsn) as conn:
                row = conn.execute("SELECT highest_seq, frames, missing_count FROM gateway_seq "
                                   "WHERE gateway = 'gw-b'").fetchone()
            return row == (9, 10, 0)  # type: ignore[return-value]

        wait_for(landed, 60, "gw-b's ten genuine frames landed")
    finally:
        pub.loop_stop()
        pub.disconnect()
        assert bridge.stop() == 0
        consumer.stop()
    assert sorted(r.value for r in records) == sorted(genuine)  # forwarded: only these
    assert sorted(message_key(r.value)[2] for r in records) == list(range(10))  # type: ignore[index]
    reasons = sorted((headers(d)["pp.reason"], headers(d)["pp.source_topic"]) for d in dead)
    topic = f"mqtt:{root}/site-b/gw-b/readings"
    assert reasons == [("bad_signature", topic)] * 2 + [("not_bound", topic)]
    assert sorted(d.value for d in dead) == sorted([*forged, misnamed])
    with psycopg.connect(dsn) as conn:
        readings = conn.execute("SELECT count(*), count(DISTINCT gateway) FROM reading "
                                "WHERE site = 'site-b'").fetchone()
    assert readings == (20, 1)  # 10 frames x 2 meters, all from gw-b


def test_an_18_mib_message_is_dead_lettered_and_the_frames_after_it_flow_across_restarts(
    services, tmp_path: Path, make_config, topic_prefix, ingest_process, new_database,
) -> None:
    g = Gateway("gw-big", site="s7", meters=2)
    dsn = new_database()
    migrate(dsn)
    cfg, root = _bridge_config(make_config, services, tmp_path, topic_prefix, dsn, [g])
    topic = f"{root}/s7/gw-big/readings"
    huge = MAGIC + bytes(64) + orjson.dumps({"pad": "x" * (18 * 1024 * 1024)})
    bridge = ingest_process("bridge", "--config", str(cfg))
    _start(bridge)
    pub = publisher(services.mqtt_host, services.mqtt_port)
    sent: list[bytes] = []
    try:
        for round_ in range(2):  # before and after a restart of the bridge
            batch = [g.frame_bytes() for _ in range(3)]
            later = [g.frame_bytes() for _ in range(3)]
            _publish(pub, topic, [*batch, huge, *later])
            sent += batch + later
            records = read_topic(services.kafka_bootstrap, f"{topic_prefix}readings",
                                 len(sent), 60)
            assert sorted(r.value for r in records) == sorted(sent), f"round {round_}"
            assert bridge.alive(), bridge.log.read_text()[-2000:]
            if round_ == 0:
                assert bridge.stop() == 0
                _start(bridge)
        dead = read_topic(services.kafka_bootstrap, f"{topic_prefix}dlq", 2, 30)
        time.sleep(1.0)  # a would-be redelivery of the huge message would show up by now
        records = read_topic(services.kafka_bootstrap, f"{topic_prefix}readings",
                             len(sent) + 1, 3)
    finally:
        pub.loop_stop()
        pub.disconnect()
        assert bridge.stop() == 0
    assert sorted(r.value for r in records) == sorted(sent)
    assert [(headers(d)["pp.reason"], int(headers(d)["pp.truncated"]), len(d.value))
            for d in dead] == [("too_large", len(huge), 1 << 20)] * 2
    assert "Kafka refused" not in bridge.log.read_text()
