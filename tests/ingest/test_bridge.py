"""The MQTT → Kafka bridge delivers every QoS 1 message exactly once to Kafka, across
a SIGKILL of the bridge mid-stream and its restart (real Mosquitto, real broker)."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from ingest_helpers import Gateway, publisher, read_topic, wait_for

from deploy.procs import free_port
from ingest.bridge import message_key
from ingest.migrate import migrate

pytestmark = pytest.mark.services
N = 400


def scrape(port: int) -> dict[str, float]:
    """The bridge's /metrics as {series: value} (series with its labels, as exposed)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


def test_bridge_forwards_each_qos1_message_once_across_a_crash(
    services, tmp_path: Path, make_config, topic_prefix, ingest_process, new_database
) -> None:
    g = Gateway("gw-mqtt", site="s9", meters=3)
    dsn = new_database()
    migrate(dsn)  # the bridge only checks the schema is this release's
    cfg = make_config(dsn, [g], bridge={
        "url": f"mqtt://{services.mqtt_host}:{services.mqtt_port}",
        "client_id": f"bridge-{topic_prefix}", "topic_root": f"pp{topic_prefix.rstrip('.')}",
        "state_file": str(tmp_path / "bridge.sqlite"), "readback_idle_s": 1.0,
    })
    root = f"pp{topic_prefix.rstrip('.')}"
    bridge = ingest_process("bridge", "--config", str(cfg))
    bridge.start()
    wait_for(lambda: "bridging" in bridge.log.read_text(), 30, "bridge subscribed")
    pub = publisher(services.mqtt_host, services.mqtt_port)
    payloads = [g.frame_bytes() for _ in range(N)]
    batch_payloads = [g.batch_bytes(f"B{i}") for i in range(20)]
    try:
        def publish() -> None:
            for i, p in enumerate(payloads):
                pub.publish(f"{root}/s9/gw-mqtt/readings", p, qos=1).wait_for_publish(10)
                if i % 20 == 0:
                    pub.publish(f"{root}/s9/gw-mqtt/batches", batch_payloads[i // 20],
                                qos=1).wait_for_publish(10)
                time.sleep(0.004)

        sender = threading.Thread(target=publish, name="mqtt-publisher")
        sender.start()
        time.sleep(0.6)  # mid-stream
        bridge.kill()
        time.sleep(0.5)  # Mosquitto queues for the persistent session meanwhile
        bridge.start()
        sender.join()
        records = read_topic(services.kafka_bootstrap, f"{topic_prefix}readings", N, 60)
        batches = read_topic(services.kafka_bootstrap, f"{topic_prefix}batches", 20, 30)
        time.sleep(1.5)  # give a would-be duplicate time to show up
        records = read_topic(services.kafka_bootstrap, f"{topic_prefix}readings", N + 1, 3)
    finally:
        pub.loop_stop()
        pub.disconnect()
        assert bridge.stop() == 0
    seqs = Counter(message_key(r.value)[2] for r in records)  # type: ignore[index]
    assert sorted(seqs) == list(range(N)), "every message forwarded"
    assert max(seqs.values()) == 1, f"duplicates: {[s for s, n in seqs.items() if n > 1]}"
    assert sorted(r.value for r in records) == sorted(payloads)  # byte for byte
    assert all(r.key == b"s9" for r in records)
    assert sorted(message_key(r.value)[2] for r in batches) == list(range(20))  # type: ignore[index]
    log = bridge.log.read_text()
    assert log.count("bridging") == 2


def test_bridge_waits_for_kafka_and_mqtt_started_after_it(
    services, tmp_path: Path, make_config, topic_prefix, ingest_process, new_database,
    broker_factory,
) -> None:
    """A site powers up in any order: the bridge waits for both brokers, then forwards."""
    from deploy.mosquitto import MosquittoBroker

    kafka = broker_factory()
    kafka.stop()  # a known port with nothing listening yet
    mosquitto = MosquittoBroker(f"mqtt-{topic_prefix.rstrip('.')}")
    metrics_port = free_port()
    g = Gateway("gw-late", site="s8", meters=2)
    dsn = new_database()
    migrate(dsn)
    root = f"pp{topic_prefix.rstrip('.')}"
    cfg = make_config(dsn, [g], kafka={"bootstrap_servers": [kafka.bootstrap]}, bridge={
        "url": f"mqtt://127.0.0.1:{mosquitto.port}",
        "client_id": f"bridge-{topic_prefix}", "topic_root": root,
        "state_file": str(tmp_path / "bridge.sqlite"), "metrics_port": metrics_port,
    })
    bridge = ingest_process("bridge", "--config", str(cfg))
    bridge.start()
    try:
        wait_for(lambda: "Kafka is not reachable" in bridge.log.read_text(), 30, "retry logged")
        assert scrape(metrics_port)["plantprint_bridge_mqtt_connected"] == 0
        assert kafka.bootstrap in bridge.log.read_text()
        kafka.start()
        mosquitto.start()
        wait_for(lambda: "bridging" in bridge.log.read_text(), 30, "bridge subscribed")
        pub = publisher("127.0.0.1", mosquitto.port)
        payloads = [g.frame_bytes() for _ in range(10)]
        try:
            for p in payloads:
                pub.publish(f"{root}/s8/gw-late/readings", p, qos=1).wait_for_publish(10)
        finally:
            pub.loop_stop()
            pub.disconnect()
        records = read_topic(kafka.bootstrap, f"{topic_prefix}readings", 10, 30)
        seen = scrape(metrics_port)
    finally:
        assert bridge.stop() == 0
        mosquitto.stop()
    assert sorted(r.value for r in records) == sorted(payloads)
    # what an operator's Prometheus sees: all 10 forwarded, none waiting, session held
    assert seen['plantprint_bridge_forwarded_total{stream="readings"}'] == 10
    assert seen["plantprint_bridge_inflight"] == 0
    assert seen["plantprint_bridge_mqtt_connected"] == 1
    assert seen.get("plantprint_bridge_kafka_errors_total") == 0
    assert "Traceback" not in bridge.log.read_text()
