"""The edge's MQTT output over real TLS: an encrypted client key, a refused login told
promptly with the broker's reason, and ``tls_insecure`` (host name unchecked, chain still
verified), against private Mosquitto brokers with TLS listeners."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import SecretStr
from tls_helpers import KEY_PASSWORD, MisnamedServer, Pki, make_misnamed_server, spool_frames

from deploy.mosquitto import MosquittoBroker, MosquittoTls
from edge import tls, wire
from edge.forward import Forwarder, PublishError
from edge.publish_mqtt import MqttOutput, MqttPublisher
from edge.spool import Spool, SpoolConfig

pytestmark = pytest.mark.services
SITE = "plant-edge-mqtts"
GATEWAY = "gw-tls-01"
USERS = {GATEWAY: "gateway-secret", "reader": "reader-secret"}


@pytest.fixture
def mutual(pki: Pki) -> Iterator[MosquittoBroker]:
    """Mosquitto with only a TLS listener: client certificate and login required."""
    broker = MosquittoBroker(
        f"mqtt-edge-tls-{uuid.uuid4().hex[:8]}", users=USERS,
        tls=MosquittoTls(pki.ca, pki.server_cert, pki.server_key, require_certificate=True))
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def misnamed(tmp_path: Path) -> Iterator[tuple[MosquittoBroker, MisnamedServer]]:
    """Anonymous TLS listener whose certificate names broker.plant.example, not 127.0.0.1."""
    server = make_misnamed_server(tmp_path / "misnamed")
    broker = MosquittoBroker(f"mqtt-edge-misnamed-{uuid.uuid4().hex[:8]}",
                             tls=MosquittoTls(server.ca, server.cert, server.key))
    broker.start()
    yield broker, server
    broker.stop()


class _Reader:
    """A subscriber of ``topic`` over mutual TLS (paho on its own thread; stopped by close)."""

    def __init__(self, broker: MosquittoBroker, pki: Pki, topic: str) -> None:
        self.payloads: list[bytes] = []
        self._subscribed = threading.Event()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                   client_id=f"reader-{uuid.uuid4().hex[:8]}")
        self._client.username_pw_set("reader", USERS["reader"])
        self._client.tls_set_context(tls.client_context(pki.ca, pki.client_cert,
                                                        pki.client_key, None, True))
        self._client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._client.on_message = lambda _c, _u, msg: self.payloads.append(msg.payload)
        self._client.connect("127.0.0.1", broker.port)
        self._client.loop_start()
        assert self._subscribed.wait(5), "reader not subscribed"

    def wait_for(self, count: int, timeout_s: float = 5.0) -> list[bytes]:
        deadline = time.monotonic() + timeout_s
        while len(self.payloads) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return list(self.payloads)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def _output(broker: MosquittoBroker, **settings: Any) -> MqttOutput:
    return MqttOutput(**{"url": broker.url, "topic_root": "pp-edge",
                         "client_id": f"gw-{uuid.uuid4().hex[:8]}", "connect_timeout_s": 10,
                         **settings})


async def _deliver(out: MqttOutput, spool: Spool) -> None:
    publisher = MqttPublisher(out, SITE, GATEWAY)
    try:
        async with asyncio.timeout(10):
            await Forwarder(spool, [publisher]).drain()
    finally:
        await publisher.close()


async def _refusal(out: MqttOutput, spool: Spool) -> tuple[str, float]:
    """The PublishError of one publish, and how long it took to come (seconds)."""
    publisher = MqttPublisher(out, SITE, GATEWAY)
    started = time.monotonic()
    try:
        with pytest.raises(PublishError) as refused:
            await publisher.publish(spool.peek(10))
    finally:
        await publisher.close()
    return str(refused.value), time.monotonic() - started


async def test_encrypted_client_key_with_key_password_delivers_over_mutual_tls(
    pki: Pki, mutual: MosquittoBroker, tmp_path: Path
) -> None:
    key = wire.generate_private_key()
    reader = await asyncio.to_thread(_Reader, mutual, pki, f"pp-edge/{SITE}/{GATEWAY}/#")
    try:
        with Spool(SpoolConfig(path=tmp_path / "s.db"), GATEWAY) as spool:
            sent = spool_frames(spool, key, SITE, 5)
            await _deliver(_output(
                mutual, ca_file=pki.ca, cert_file=pki.client_cert,
                key_file=pki.client_key_encrypted, key_password=SecretStr(KEY_PASSWORD),
                username=GATEWAY, password=SecretStr(USERS[GATEWAY])), spool)
            assert spool.depth == 0  # every frame PUBACKed over mutual TLS
        got = await asyncio.to_thread(reader.wait_for, len(sent))
    finally:
        await asyncio.to_thread(reader.close)
    assert sorted(got) == sorted(sent)  # byte for byte, still verifiable
    keys = {GATEWAY: key.public_key()}
    assert sorted(wire.decode(p, keys).seq for p in got) == [0, 0, 1, 2, 3, 4]


async def test_a_refused_login_names_the_brokers_reason_without_waiting_for_the_timeout(
    pki: Pki, mutual: MosquittoBroker, tmp_path: Path
) -> None:
    out = _output(mutual, ca_file=pki.ca, cert_file=pki.client_cert,
                  key_file=pki.client_key_encrypted, key_password=SecretStr(KEY_PASSWORD),
                  username=GATEWAY, password=SecretStr("not-the-password"))
    with Spool(SpoolConfig(path=tmp_path / "s.db"), GATEWAY) as spool:
        spool_frames(spool, wire.generate_private_key(), SITE, 1)
        message, took_s = await _refusal(out, spool)
        assert spool.depth == 2  # kept until the password is fixed
    assert message == (f"mqtt 127.0.0.1:{mutual.port} as {out.client_id}: cannot connect: "
                       "the broker refused the connection: Not authorized")
    assert took_s < 2.0 < out.connect_timeout_s  # the CONNACK's answer, not a timeout


async def test_tls_insecure_skips_only_the_host_name_check(
    pki: Pki, misnamed: tuple[MosquittoBroker, MisnamedServer], tmp_path: Path
) -> None:
    broker, server = misnamed
    with Spool(SpoolConfig(path=tmp_path / "s.db"), GATEWAY) as spool:
        spool_frames(spool, wire.generate_private_key(), SITE, 1)
        # without tls_insecure: refused, naming the host name check
        checked, _ = await _refusal(_output(broker, ca_file=server.ca), spool)
        # tls_insecure with a CA that did not sign the broker's certificate: still refused
        wrong_ca, _ = await _refusal(_output(broker, ca_file=pki.ca, tls_insecure=True), spool)
        assert spool.depth == 2
        await _deliver(_output(broker, ca_file=server.ca, tls_insecure=True), spool)
        assert spool.depth == 0
    assert ("certificate verification failed (IP address mismatch, certificate is not valid "
            "for '127.0.0.1'.): the server's certificate does not name this host (see "
            "[outputs.mqtt] ca_file, cert_file, key_file, tls_insecure)") in checked
    # Mosquitto sends its CA along: OpenSSL's detail names the self-signed root
    assert ("certificate verification failed (self-signed certificate in certificate chain): "
            "the CA file does not vouch for the server's certificate") in wrong_ca


async def test_a_broker_requiring_a_client_certificate_is_named(
    pki: Pki, mutual: MosquittoBroker, tmp_path: Path
) -> None:
    """TLS 1.3: Mosquitto refuses the missing certificate after the handshake, so the
    client sees only a dropped connection; the edge probes and says what TLS refused."""
    out = _output(mutual, ca_file=pki.ca, username=GATEWAY,
                  password=SecretStr(USERS[GATEWAY]))
    with Spool(SpoolConfig(path=tmp_path / "s.db"), GATEWAY) as spool:
        spool_frames(spool, wire.generate_private_key(), SITE, 1)
        message, took_s = await _refusal(out, spool)
    assert f"TLS with 127.0.0.1:{mutual.port} failed: " in message
    assert "requires a client certificate it trusts (see [outputs.mqtt]" in message
    assert took_s < 3.0 < out.connect_timeout_s
