"""The real brokers behave as the pipeline needs: groups, committed offsets, QoS 1."""

from __future__ import annotations

import threading
import time

import paho.mqtt.client as mqtt
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

pytestmark = pytest.mark.services

GROUP_TIMEOUTS = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}


def _consume(consumer: KafkaConsumer, want: int, timeout_s: float = 30.0) -> list[tuple]:
    """(partition, offset, value) of the next ``want`` records, one at a time."""
    got: list[tuple] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < want and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500, max_records=want - len(got)).values():
            got.extend((r.partition, r.offset, r.value) for r in records)
    return got


def test_kafka_group_commits_and_resumes(services, topic_prefix: str) -> None:
    topic = f"{topic_prefix}readings"
    producer = KafkaProducer(bootstrap_servers=services.kafka_bootstrap, acks="all")
    for i in range(20):
        producer.send(topic, key=b"site-1", value=f"m{i}".encode()).get(timeout=10)
    producer.close()

    group = f"{topic_prefix}group"
    first = KafkaConsumer(
        topic, bootstrap_servers=services.kafka_bootstrap, group_id=group,
        auto_offset_reset="earliest", enable_auto_commit=False, **GROUP_TIMEOUTS,
    )
    got = _consume(first, 10)
    assert [value for _p, _o, value in got] == [f"m{i}".encode() for i in range(10)]
    # one key, so one partition (auto-created topics have several here)
    tp = TopicPartition(topic, got[0][0])
    first.commit({tp: OffsetAndMetadata(got[-1][1] + 1, "", -1)})
    assert first.committed(tp) == got[-1][1] + 1
    first.close()

    # a new member of the same group starts at the committed offset, not at 0
    second = KafkaConsumer(
        topic, bootstrap_servers=services.kafka_bootstrap, group_id=group,
        auto_offset_reset="earliest", enable_auto_commit=False, **GROUP_TIMEOUTS,
    )
    rest = _consume(second, 10)
    second.close()
    assert [value for _p, _o, value in rest] == [f"m{i}".encode() for i in range(10, 20)]


def test_mqtt_qos1_burst_arrives_whole(services, topic_prefix: str) -> None:
    topic = f"plantprint/{topic_prefix.rstrip('.')}/gw-1/readings"
    n = 2000
    received: list[bytes] = []
    subscribed = threading.Event()
    done = threading.Event()

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        received.append(msg.payload)
        if len(received) == n:
            done.set()

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{topic_prefix}sub")
    sub.on_message = on_message
    sub.on_subscribe = lambda *_a: subscribed.set()
    sub.connect(services.mqtt_host, services.mqtt_port)
    sub.loop_start()
    sub.subscribe(topic, qos=1)
    assert subscribed.wait(10)

    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{topic_prefix}pub")
    pub.max_inflight_messages_set(100)
    pub.connect(services.mqtt_host, services.mqtt_port)
    pub.loop_start()
    infos = [pub.publish(topic, f"r{i}".encode(), qos=1) for i in range(n)]
    for info in infos:
        info.wait_for_publish(timeout=20)
    assert all(info.is_published() for info in infos)
    try:
        assert done.wait(30), f"only {len(received)} of {n} QoS 1 messages arrived"
        assert sorted(received) == sorted(f"r{i}".encode() for i in range(n))
    finally:
        for client in (pub, sub):
            client.disconnect()
            client.loop_stop()
