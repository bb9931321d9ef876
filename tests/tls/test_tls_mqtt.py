"""MQTT over real TLS: a private Mosquitto with a TLS listener that requires a client
certificate and a login; the edge publishes, the bridge forwards to Kafka (itself behind
mutual TLS), and clients trusting the wrong CA or without a certificate are told why."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from kafka import KafkaProducer
from prometheus_client import REGISTRY
from pydantic import SecretStr
from tls_helpers import Pki, read_records, spool_frames, tls_kafka

from deploy.mosquitto import MosquittoBroker, MosquittoTls
from edge import wire
from edge.forward import Forwarder, PublishError
from edge.publish_mqtt import MqttOutput, MqttPublisher
from edge.spool import Spool, SpoolConfig
from ingest.bridge import Bridge, message_key
from ingest.bridge_ledger import BridgeLedger
from ingest.config import ServerConfig, load_config

pytestmark = pytest.mark.services
SITE = "plant-mqtts"
FRAMES = 20
USERS = {"gw-tls-01": "gateway-secret", "bridge": "bridge-secret"}


@pytest.fixture
def mqtts(pki: Pki) -> Iterator[MosquittoBroker]:
    """Mosquitto with only a TLS listener: client certificate and login required."""
    broker = MosquittoBroker(
        f"mqtt-tls-{uuid.uuid4().hex[:8]}", users=USERS,
        tls=MosquittoTls(pki.ca, pki.server_cert, pki.server_key, require_certificate=True))
    broker.start()
    yield broker
    broker.stop()


def _edge_output(broker: MosquittoBroker, pki: Pki, root: str, ca: Path) -> MqttOutput:
    return MqttOutput(url=broker.url, topic_root=root, ca_file=ca, cert_file=pki.client_cert,
                      key_file=pki.client_key, username="gw-tls-01",
                      password=SecretStr(USERS["gw-tls-01"]),
                      client_id=f"gw-{uuid.uuid4().hex[:8]}", connect_timeout_s=3)


def _bridge_config(make_config: Callable[..., Path], broker: MosquittoBroker, root: str,
                   tmp_path: Path, kafka: Mapping[str, object],
                   gateways: Mapping[str, object] | None = None, **bridge: object,
                   ) -> ServerConfig:
    """TLS files named relative to the config file, as an operator writes them; the
    bridge forwards only frames of ``gateways`` (it verifies their signatures)."""
    return load_config(make_config("postgresql://127.0.0.1/unused", [], kafka=kafka,
                                   gateways=dict(gateways or {}), bridge={
        "url": f"mqtts://127.0.0.1:{broker.port}",
        "username": "bridge", "password": USERS["bridge"], "topic_root": root,
        "client_id": f"bridge-{uuid.uuid4().hex[:8]}", "readback_idle_s": 0.5,
        "state_file": str(tmp_path / "bridge.sqlite"), **bridge}))


def _wait_for_log(caplog: pytest.LogCaptureFixture, logger: str, text: str,
                  level: int = logging.INFO, timeout_s: float = 10) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for r in caplog.records:
            if r.name == logger and r.levelno >= level and text in r.getMessage():
                return r.getMessage()
        time.sleep(0.05)
    raise AssertionError(f"no {logger} line with {text!r} within {timeout_s} s:\n{caplog.text}")


async def test_edge_to_bridge_to_kafka_all_over_mutual_tls(
    pki: Pki, mqtts: MosquittoBroker, tmp_path: Path, topic_prefix: str,
    make_config: Callable[..., Path], caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="ingest.bridge")
    root = f"pp{topic_prefix.rstrip('.')}"
    key = wire.generate_private_key()
    with tls_kafka("kafka-tls-bridge", pki, require_client_cert=True) as kafka:
        kafka_tls = {"bootstrap_servers": [kafka.bootstrap], "security_protocol": "SSL",
                     "ssl_cafile": "pki/ca.pem", "ssl_certfile": "pki/client.crt",
                     "ssl_keyfile": "pki/client.key"}
        binding = {"public_key": wire.public_key_b64(key), "site": SITE, "meters": ["*"],
                   "assets": ["*"]}
        cfg = _bridge_config(make_config, mqtts, root, tmp_path, kafka_tls,
                             {"gw-tls-01": binding}, ca_file="pki/ca.pem",
                             cert_file="pki/client.crt",
                             key_file="pki/client.key")
        bridge = Bridge(cfg)
        try:
            assert bridge.start()
            await asyncio.to_thread(_wait_for_log, caplog, "ingest.bridge", "bridging")
            await asyncio.sleep(0.2)  # the SUBSCRIBE reaches Mosquitto before our PUBLISHes
            with Spool(SpoolConfig(path=tmp_path / "s.db"), "gw-tls-01") as spool:
                sent = spool_frames(spool, key, SITE, FRAMES)
                publisher = MqttPublisher(_edge_output(mqtts, pki, root, pki.ca), SITE,
                                          "gw-tls-01")
                try:
                    async with asyncio.timeout(15):
                        await Forwarder(spool, [publisher]).drain()
                finally:
                    await publisher.close()
                assert spool.depth == 0  # every frame PUBACKed over TLS
            client = cfg.kafka.client_config()
            readings = await asyncio.to_thread(read_records, client, f"{topic_prefix}readings",
                                               FRAMES)
            batches = await asyncio.to_thread(read_records, client, f"{topic_prefix}batches", 2)
        finally:
            bridge.stop()
            bridge.close()
        got = readings + batches
        assert sorted(r.value for r in got) == sorted(sent)  # byte for byte, signed
        assert all(r.key == SITE.encode() for r in got)
        keys = {"gw-tls-01": key.public_key()}
        assert [wire.decode(r.value, keys).seq for r in readings] == list(range(FRAMES))

        # crash recovery reads Kafka back through mutual TLS too: a frame Kafka has but
        # the ledger only knows as pending (the bridge died before Kafka's ack reached it)
        late = spool_frames_after(tmp_path, key, FRAMES)
        producer = KafkaProducer(**client, acks="all")
        try:
            producer.send(f"{topic_prefix}readings", value=late, key=SITE.encode()).get(10)
        finally:
            producer.close(5)
        ledger = BridgeLedger(cfg.bridge.state_file)
        ledger.begin(("gw-tls-01", "readings", FRAMES))
        ledger.close()
        again = Bridge(cfg)
        try:
            assert again.start()
        finally:
            again.stop()
            again.close()
        assert kafka.proxy.refusals == []
    assert "recovery: 1 pending messages, 1 already in Kafka" in caplog.text
    assert message_key(late) == ("gw-tls-01", "readings", FRAMES)


def spool_frames_after(tmp_path: Path, key: Ed25519PrivateKey, seq: int) -> bytes:
    """The signed readings frame number ``seq`` of the same gateway (a spool of its own)."""
    with Spool(SpoolConfig(path=tmp_path / "late.db"), "gw-tls-01") as spool:
        frames = spool_frames(spool, key, SITE, seq + 1)
    return next(f for f in frames if message_key(f) == ("gw-tls-01", "readings", seq))


async def test_edge_with_the_wrong_ca_is_refused_and_told_why(
    pki: Pki, mqtts: MosquittoBroker, tmp_path: Path
) -> None:
    key = wire.generate_private_key()
    publisher = MqttPublisher(_edge_output(mqtts, pki, "pp-wrong", pki.wrong_ca), SITE,
                              "gw-tls-01")
    with Spool(SpoolConfig(path=tmp_path / "s.db"), "gw-tls-01") as spool:
        spool_frames(spool, key, SITE, 1)
        try:
            with pytest.raises(PublishError, match="certificate verify failed") as refused:
                await publisher.publish(spool.peek(10))
        finally:
            await publisher.close()
        assert spool.depth == 2  # nothing acknowledged: kept for after the fix
    assert f"127.0.0.1:{mqtts.port}" in str(refused.value)
    assert "CERTIFICATE_VERIFY_FAILED" in str(refused.value)


@pytest.mark.parametrize("mistake", ["wrong_ca", "no_client_cert", "wrong_password"])
def test_bridge_refused_by_the_broker_says_why(
    pki: Pki, mqtts: MosquittoBroker, mistake: str, tmp_path: Path,
    make_config: Callable[..., Path], caplog: pytest.LogCaptureFixture,
) -> None:
    """Kafka is the shared plain broker here; the MQTT side is what is wrong."""
    good = {"ca_file": "pki/ca.pem", "cert_file": "pki/client.crt", "key_file": "pki/client.key"}
    client: Mapping[str, object] = {
        "wrong_ca": {**good, "ca_file": "pki/wrong-ca.pem"},
        "no_client_cert": {"ca_file": "pki/ca.pem"},
        "wrong_password": {**good, "password": "not-the-password"},
    }[mistake]
    cfg = _bridge_config(make_config, mqtts, "pp-refused", tmp_path, {}, **client)
    bridge = Bridge(cfg)
    try:
        assert bridge.start()
        line = _wait_for_log(caplog, "ingest.bridge", "MQTT ", logging.ERROR)
        assert REGISTRY.get_sample_value("plantprint_bridge_mqtt_connected") == 0
    finally:
        bridge.stop()
        bridge.close()
    where = f"127.0.0.1:{mqtts.port}"
    if mistake == "wrong_password":  # TLS is fine: the broker says so in its CONNACK
        assert line == f"MQTT connect to {where} refused: Not authorized"
        return
    assert line.startswith(f"MQTT broker {where}: TLS with {where} failed: ")
    assert "[bridge] ca_file" in line
    if mistake == "wrong_ca":
        assert "certificate verification failed (self-signed certificate in certificate chain)" \
            in line
    else:
        assert "requires a client certificate it trusts" in line
    assert "Traceback" not in caplog.text
