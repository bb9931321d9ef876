"""Kafka over real TLS: the edge publishes, ingest lands, a wrong CA is refused and told why.

tansu has no TLS listener, so each test runs a private tansu that advertises a
TLS-terminating proxy (``tls_helpers.tls_kafka``): every connection a client
makes, bootstrap and broker, is TLS, and the proxy records refused handshakes.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pydantic import SecretStr
from tls_helpers import KEY_PASSWORD, Pki, read_records, spool_frames, tls_kafka

from edge import wire
from edge.forward import Forwarder, PublishError
from edge.publish_kafka import KafkaOutput, KafkaPublisher
from edge.spool import Spool, SpoolConfig
from ingest.config import KafkaConfig, ServerConfig, load_config
from ingest.consumer import IngestConsumer
from ingest.migrate import migrate
from tests.ingest.ingest_helpers import Gateway, binding

pytestmark = pytest.mark.services
SITE = "plant-tls"
FRAMES = 20


async def _publish_all(out: KafkaOutput, spool: Spool) -> None:
    publisher = KafkaPublisher(out, SITE)
    try:
        async with asyncio.timeout(20):
            await Forwarder(spool, [publisher]).drain()
    finally:
        await publisher.close()


async def test_edge_publishes_signed_frames_over_tls_and_they_arrive_intact(
    pki: Pki, tmp_path: Path, topic_prefix: str
) -> None:
    key = wire.generate_private_key()
    with tls_kafka("kafka-tls-edge", pki, require_client_cert=False) as kafka, \
            Spool(SpoolConfig(path=tmp_path / "s.db"), "gw1") as spool:
        sent = spool_frames(spool, key, SITE, FRAMES)
        out = KafkaOutput(bootstrap_servers=[kafka.bootstrap], topic_prefix=topic_prefix,
                          security_protocol="SSL", ssl_cafile=pki.ca)
        await _publish_all(out, spool)
        assert spool.depth == 0  # every frame acknowledged through TLS
        # read back through TLS too, with the client settings ingest builds
        reader = KafkaConfig(bootstrap_servers=[kafka.bootstrap], security_protocol="SSL",
                             ssl_cafile=pki.ca).client_config()
        readings = await asyncio.to_thread(read_records, reader, f"{topic_prefix}readings",
                                           FRAMES)
        batches = await asyncio.to_thread(read_records, reader, f"{topic_prefix}batches", 2)
        assert kafka.proxy.refusals == []
        assert kafka.proxy.sessions >= 2  # the edge's and the reader's
    got = [r.value for r in readings + batches]
    assert sorted(got) == sorted(sent)  # byte for byte
    assert all(r.key == SITE.encode() for r in readings + batches)
    keys = {"gw1": key.public_key()}
    assert [wire.decode(r.value, keys).seq for r in readings] == list(range(FRAMES))
    assert [wire.decode(r.value, keys).seq for r in batches] == [0, 1]


async def test_ingest_lands_frames_from_mutual_tls_kafka_in_postgresql(
    pki: Pki, tmp_path: Path, topic_prefix: str, new_database: Callable[[], str],
    make_config: Callable[..., Path],
) -> None:
    """The broker requires a client certificate; the edge's and ingest's key is encrypted."""
    key = wire.generate_private_key()
    dsn = new_database()
    migrate(dsn)
    with tls_kafka("kafka-tls-ingest", pki, require_client_cert=True) as kafka, \
            Spool(SpoolConfig(path=tmp_path / "s.db"), "gw1") as spool:
        spool_frames(spool, key, SITE, FRAMES)
        out = KafkaOutput(bootstrap_servers=[kafka.bootstrap], topic_prefix=topic_prefix,
                          security_protocol="SSL", ssl_cafile=pki.ca,
                          ssl_certfile=pki.client_cert, ssl_keyfile=pki.client_key_encrypted,
                          ssl_password=SecretStr(KEY_PASSWORD))
        await _publish_all(out, spool)
        # file names relative to the config file's folder, as an operator writes them
        gw = Gateway("gw1", site=SITE, key=key)  # bound to the spooled frames' site and meters
        tls = {
            "bootstrap_servers": [kafka.bootstrap], "security_protocol": "SSL",
            "ssl_cafile": "pki/ca.pem", "ssl_certfile": "pki/client.crt",
            "ssl_keyfile": "pki/client-enc.key", "ssl_password": KEY_PASSWORD,
        }
        cfg = load_config(make_config(dsn, [gw], kafka=tls,
                                      gateways={"gw1": binding(gw, meters=["m*"])}))
        assert cfg.kafka.ssl_keyfile == pki.client_key_encrypted
        rows = await asyncio.to_thread(_land, cfg, dsn, FRAMES * 3)
        assert kafka.proxy.refusals == []
    # every reading of every frame, with the value the gateway put in (its seq)
    assert rows == [(f"m{i}", seq, seq) for seq in range(FRAMES) for i in range(3)]


def _land(cfg: ServerConfig, dsn: str, readings: int, timeout_s: float = 20.0,
          ) -> list[tuple[Any, ...]]:
    consumer = IngestConsumer(cfg)
    query = ("SELECT meter, seq, value::bigint FROM reading WHERE gateway = 'gw1' "
             "ORDER BY seq, meter")
    try:
        assert consumer.start()
        deadline = time.monotonic() + timeout_s
        rows: list[tuple[Any, ...]] = []
        while len(rows) < readings and time.monotonic() < deadline:
            consumer.poll_once(200)
            consumer.flush()
            with psycopg.connect(dsn) as conn:
                rows = conn.execute(query).fetchall()
        with psycopg.connect(dsn) as conn:
            events = conn.execute("SELECT count(*) FROM batch_event").fetchone()
        assert events == (2,)
        return rows
    finally:
        consumer.close()


async def test_edge_with_the_wrong_ca_is_refused_and_delivers_nothing(
    pki: Pki, tmp_path: Path, topic_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    key = wire.generate_private_key()
    with tls_kafka("kafka-tls-wrong-ca", pki, require_client_cert=True) as kafka, \
            Spool(SpoolConfig(path=tmp_path / "s.db"), "gw1") as spool:
        spool_frames(spool, key, SITE, 1)
        out = KafkaOutput(bootstrap_servers=[kafka.bootstrap], topic_prefix=topic_prefix,
                          security_protocol="SSL", ssl_cafile=pki.wrong_ca,
                          ssl_certfile=pki.client_cert, ssl_keyfile=pki.client_key,
                          delivery_timeout_s=1.0)
        publisher = KafkaPublisher(out, SITE, name="kafka-wrong-ca")
        try:
            with pytest.raises(PublishError, match=kafka.bootstrap):
                await publisher.publish(spool.peek(10))
        finally:
            await publisher.close()
        assert spool.depth == 2  # kept for a retry once the CA file is fixed
        # the agent's log says why: kafka-python's handshake error, which the operator sees
        assert "certificate verify failed" in caplog.text
        assert "CERTIFICATE_VERIFY_FAILED" in caplog.text
        assert kafka.proxy.sessions == 0
        assert set(kafka.proxy.refusals) == {"TLSV1_ALERT_UNKNOWN_CA"}
        # a client that trusts the right CA finds nothing there
        trusted = KafkaConfig(bootstrap_servers=[kafka.bootstrap], security_protocol="SSL",
                              ssl_cafile=pki.ca, ssl_certfile=pki.client_cert,
                              ssl_keyfile=pki.client_key).client_config()
        assert await asyncio.to_thread(read_records, trusted, f"{topic_prefix}readings", 1,
                                       1.0) == []


@pytest.mark.parametrize("mistake", ["wrong_ca", "no_client_cert"])
def test_ingest_refused_by_tls_says_why_and_keeps_waiting(
    pki: Pki, mistake: str, caplog: pytest.LogCaptureFixture,
    new_database: Callable[[], str], make_config: Callable[..., Path],
) -> None:
    """No Traceback, no "not reachable": a log line that names TLS and the keys to check."""
    dsn = new_database()
    with tls_kafka(f"kafka-tls-{mistake}", pki, require_client_cert=True) as kafka:
        client = ({"ssl_cafile": "pki/wrong-ca.pem", "ssl_certfile": "pki/client.crt",
                   "ssl_keyfile": "pki/client.key"} if mistake == "wrong_ca"
                  else {"ssl_cafile": "pki/ca.pem"})
        cfg = load_config(make_config(dsn, [], kafka={
            "bootstrap_servers": [kafka.bootstrap], "security_protocol": "SSL",
            "connect_timeout_s": 1.0,
            **client}))
        consumer = IngestConsumer(cfg)
        started: list[bool] = []
        runner = threading.Thread(target=lambda: started.append(consumer.start()),
                                  name="ingest-start")
        runner.start()
        try:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and not any(
                    r.name == "ingest.kafka_wait" for r in caplog.records):
                time.sleep(0.1)
        finally:
            consumer.stop()
            runner.join(15)
            consumer.close()
        assert started == [False]  # it never connected, and stopped when told
        assert kafka.proxy.sessions == 0  # the proxy never let a session through
    waits = [r.getMessage() for r in caplog.records if r.name == "ingest.kafka_wait"]
    assert waits, caplog.text
    line = waits[0]
    assert f"Kafka at bootstrap servers {kafka.bootstrap}: TLS with {kafka.bootstrap} failed: " \
        in line
    assert "ssl_cafile" in line
    if mistake == "wrong_ca":
        assert "certificate verification failed (self-signed certificate in certificate chain)" \
            in line
    else:
        assert "requires a client certificate it trusts" in line
    assert "Traceback" not in caplog.text
