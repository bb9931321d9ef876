"""MQTT output through a real Mosquitto: QoS 1, order, topics, persistent session."""

from __future__ import annotations

import asyncio
import threading
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import REGISTRY

from deploy.mosquitto import MosquittoBroker
from deploy.procs import free_port
from edge import wire
from edge.forward import ForwardConfig, Forwarder, PublishError
from edge.publish_mqtt import MqttOutput, MqttPublisher
from edge.spool import Spool, SpoolConfig
from tests.edge.kafka_helpers import append_batch, append_frame


class Collector:
    """A QoS 1 subscriber on its own paho thread."""

    def __init__(self, host: str, port: int, topic: str) -> None:
        self.got: list[tuple[str, bytes]] = []
        self.arrived = threading.Condition()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"c-{uuid.uuid4().hex}")
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_disconnect = lambda *_: self.subscribed.clear()
        self.client.reconnect_delay_set(0.1, 0.5)  # type: ignore[arg-type]
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.loop_start()
        assert self.subscribed.wait(10)

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self.arrived:
            self.got.append((msg.topic, msg.payload))
            self.arrived.notify_all()

    def wait_for(self, count: int, timeout: float) -> None:
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.got) >= count, timeout)

    def wait_resubscribed(self, timeout: float) -> None:
        assert self.subscribed.wait(timeout), "subscriber did not come back"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.mark.services
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_qos1_frames_arrive_in_order_on_site_gateway_topics(
    services, tmp_path: Path, protocol: str
) -> None:
    site = f"site-{uuid.uuid4().hex[:8]}"
    key = wire.generate_private_key()
    collector = Collector(services.mqtt_host, services.mqtt_port, f"plantprint/{site}/#")
    out = MqttOutput(url=f"mqtt://{services.mqtt_host}:{services.mqtt_port}",
                     protocol=protocol)  # type: ignore[arg-type]
    publisher = MqttPublisher(out, site, "gw1")
    try:
        with Spool(SpoolConfig(path=tmp_path / "s.db"), "gw1") as spool:
            for i in range(300):
                append_frame(spool, key, site)
                if i % 100 == 0:
                    append_batch(spool, key, site)
            await publisher.start()
            async with asyncio.timeout(30):
                await Forwarder(spool, [publisher]).drain()
            assert spool.depth == 0
        await asyncio.to_thread(collector.wait_for, 303, 10)
    finally:
        await publisher.close()
        collector.close()
    keys = {"gw1": key.public_key()}
    by_topic: dict[str, list[int]] = {}
    for topic, payload in collector.got:
        by_topic.setdefault(topic, []).append(wire.decode(payload, keys).seq)
    assert by_topic == {
        f"plantprint/{site}/gw1/readings": list(range(300)),
        f"plantprint/{site}/gw1/batches": [0, 1, 2],
    }


@pytest.mark.services
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_session_is_persistent_across_reconnects(services, protocol: str) -> None:
    out = MqttOutput(url=f"mqtt://{services.mqtt_host}:{services.mqtt_port}",
                     protocol=protocol,  # type: ignore[arg-type]
                     client_id=f"pp-test-{uuid.uuid4().hex[:10]}")
    for expected in (False, True):
        publisher = MqttPublisher(out, "s", "gw1")
        await publisher.start()
        assert publisher.session_present is expected
        await publisher.close()


async def test_unreachable_broker_raises_publish_error(tmp_path: Path) -> None:
    out = MqttOutput(url=f"mqtt://127.0.0.1:{free_port()}", connect_timeout_s=1)
    publisher = MqttPublisher(out, "s", "gw1")
    key = wire.generate_private_key()
    with Spool(SpoolConfig(path=tmp_path / "s.db"), "gw1") as spool:
        append_frame(spool, key, "s")
        with pytest.raises(PublishError, match="cannot connect"):
            await publisher.publish(spool.peek(5))
    await publisher.close()


@pytest.mark.services
async def test_stopped_broker_counts_connect_errors(tmp_path: Path) -> None:
    broker = MosquittoBroker(f"mqtt-stopped-{uuid.uuid4().hex[:6]}")
    broker.start()
    broker.stop()
    out = MqttOutput(url=broker.url, connect_timeout_s=1)
    publisher = MqttPublisher(out, "s", "gw1", name="mqtt-down")
    key = wire.generate_private_key()
    try:
        with Spool(SpoolConfig(path=tmp_path / "s.db"), "gw1") as spool:
            append_frame(spool, key, "s")
            await publisher.start()
            for _ in range(2):
                with pytest.raises(PublishError, match="cannot connect"):
                    await publisher.publish(spool.peek(5))
            assert spool.depth == 1
    finally:
        await publisher.close()
    errors = REGISTRY.get_sample_value("edge_publish_errors_total",
                                       {"output": "mqtt-down", "kind": "connect"})
    assert errors == 3


@pytest.mark.services
@pytest.mark.timeout(60)
async def test_broker_outage_loses_nothing_and_keeps_order(tmp_path: Path) -> None:
    """A private Mosquitto stopped for 60 poll cycles (run 25x faster), then restarted."""
    broker = MosquittoBroker(f"mqtt-outage-{uuid.uuid4().hex[:6]}")
    broker.start()
    site = "outage"
    key = wire.generate_private_key()
    out = MqttOutput(url=broker.url, publish_timeout_s=2, connect_timeout_s=1)
    publisher = MqttPublisher(out, site, "gw1")
    collector = Collector("127.0.0.1", broker.port, f"plantprint/{site}/#")
    fwd_cfg = ForwardConfig(backoff_initial_s=0.05, backoff_max_s=0.5, idle_poll_s=0.05)
    try:
        with Spool(SpoolConfig(path=tmp_path / "s.db"), "gw1") as spool:
            forwarder = Forwarder(spool, [publisher], fwd_cfg)
            runner = asyncio.create_task(forwarder.run())
            try:
                for _ in range(20):
                    append_frame(spool, key, site)
                    forwarder.notify()
                async with asyncio.timeout(20):
                    await forwarder.drained()
                await asyncio.to_thread(collector.wait_for, 20, 10)
                await asyncio.to_thread(broker.stop)
                for _ in range(60):
                    append_frame(spool, key, site)
                    forwarder.notify()
                    await asyncio.sleep(0.04)
                assert spool.depth == 60, "frames left the spool while the broker was down"
                # hold the forwarder until the test's subscriber is back (it has no session
                # on the restarted broker, so it would miss what comes before)
                runner.cancel()
                await asyncio.gather(runner, return_exceptions=True)
                await asyncio.to_thread(broker.start)
                await asyncio.to_thread(collector.wait_resubscribed, 15)
                runner = asyncio.create_task(forwarder.run())
                async with asyncio.timeout(30):
                    await forwarder.drained()
            finally:
                runner.cancel()
                await asyncio.gather(runner, return_exceptions=True)
        await asyncio.to_thread(collector.wait_for, 80, 10)
    finally:
        await publisher.close()
        collector.close()
        broker.stop()
    assert forwarder.failures > 0
    keys = {"gw1": key.public_key()}
    seqs = [wire.decode(payload, keys).seq for _topic, payload in collector.got]
    assert list(dict.fromkeys(seqs)) == list(range(80)), "a frame is missing or out of order"
