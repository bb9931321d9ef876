"""The edge's Kafka output refused by TLS says why, in the line its operator reads.

kafka-python reports a refused handshake only as "Unable to bootstrap"; the
edge repeats the handshake and puts what TLS refused, and the
``[outputs.kafka]`` keys to check, into the ``PublishError`` the forwarder logs.
The broker sits behind a TLS proxy (``tls_helpers.tls_kafka``) that counts
sessions, so "nothing delivered" is measured where the bytes would pass.
"""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

import pytest
from tls_helpers import Pki, spool_frames, tls_kafka

from edge import wire
from edge.forward import Forwarder, PublishError
from edge.publish_kafka import KafkaOutput, KafkaPublisher
from edge.spool import Spool, SpoolConfig

pytestmark = pytest.mark.services
SITE = "plant-edge-tls"
KEYS = "(see [outputs.kafka] ssl_cafile, ssl_certfile, ssl_keyfile, ssl_check_hostname)"


async def _first_forward_failure(forwarder: Forwarder,
                                 caplog: pytest.LogCaptureFixture) -> str:
    """The forwarder's first "output failed" line, then the forwarder stopped."""
    task = asyncio.create_task(forwarder.run())
    try:
        async with asyncio.timeout(15):
            while True:
                lines = [r.getMessage() for r in caplog.records
                         if r.name == "edge.forward" and r.levelno >= logging.WARNING]
                if lines:
                    return lines[0]
                await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_wrong_ca_is_named_in_the_agent_log_and_nothing_is_delivered(
    pki: Pki, tmp_path: Path, topic_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    key = wire.generate_private_key()
    with tls_kafka("kafka-tls-edge-wrong-ca", pki, require_client_cert=False) as kafka, \
            Spool(SpoolConfig(path=tmp_path / "s.db"), "gw1") as spool:
        spool_frames(spool, key, SITE, 1)
        out = KafkaOutput(bootstrap_servers=[kafka.bootstrap], topic_prefix=topic_prefix,
                          security_protocol="SSL", ssl_cafile=pki.wrong_ca,
                          delivery_timeout_s=1.0)
        publisher = KafkaPublisher(out, SITE)
        try:
            line = await _first_forward_failure(Forwarder(spool, [publisher]), caplog)
        finally:
            await publisher.close()
        assert spool.depth == 2  # the frame and its batch event: kept for after the fix
        assert kafka.proxy.sessions == 0  # no TLS session: not one byte reached the broker
        assert set(kafka.proxy.refusals) == {"TLSV1_ALERT_UNKNOWN_CA"}
    assert line.startswith("gateway gw1: output kafka failed, frames kept in spool (depth 2): ")
    # the detail is OpenSSL's: "unable to get local issuer certificate" here, where the
    # proxy sends only its own certificate; "self-signed certificate in certificate
    # chain" from servers that send their CA too
    assert re.search(
        rf"TLS with {kafka.bootstrap} failed: certificate verification failed \(unable to get "
        r"local issuer certificate\): the CA file does not vouch for the server's "
        rf"certificate {re.escape(KEYS)}", line), line
    assert "Unable to bootstrap" in line  # kafka-python's own words follow ours


async def test_a_broker_requiring_a_client_certificate_is_named_too(
    pki: Pki, tmp_path: Path, topic_prefix: str
) -> None:
    """TLS 1.3: the handshake completes and the broker's refusal comes after it, so
    kafka-python sees only a dropped connection; the probe reads what follows."""
    with tls_kafka("kafka-tls-edge-no-cert", pki, require_client_cert=True) as kafka, \
            Spool(SpoolConfig(path=tmp_path / "s.db"), "gw1") as spool:
        spool_frames(spool, wire.generate_private_key(), SITE, 1)
        out = KafkaOutput(bootstrap_servers=[kafka.bootstrap], topic_prefix=topic_prefix,
                          security_protocol="SSL", ssl_cafile=pki.ca, delivery_timeout_s=1.0)
        publisher = KafkaPublisher(out, SITE)
        try:
            with pytest.raises(PublishError) as refused:
                await publisher.publish(spool.peek(10))
        finally:
            await publisher.close()
        assert spool.depth == 2
        assert kafka.proxy.sessions == 0
    message = str(refused.value)
    assert f"TLS with {kafka.bootstrap} failed: " in message
    assert f"requires a client certificate it trusts {KEYS}" in message
