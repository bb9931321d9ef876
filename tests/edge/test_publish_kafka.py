"""Kafka output against a real tansu broker: acks, keys, topics, and a broker outage."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import REGISTRY

from edge import wire
from edge.forward import ForwardConfig, Forwarder, PublishError
from edge.publish_kafka import Compression, KafkaOutput, KafkaPublisher
from edge.spool import Spool, SpoolConfig
from tests.edge.kafka_helpers import append_batch, append_frame, consume

SITE = "plant-7"


def _decode_seqs(records: list[tuple[bytes, bytes]], key: Ed25519PrivateKey) -> list[int]:
    keys = {"gw1": key.public_key()}
    out = []
    for k, value in records:
        assert k == SITE.encode()
        out.append(wire.decode(value, keys).seq)
    return out


@pytest.mark.services
@pytest.mark.parametrize("compression", ["none", "gzip"])
async def test_every_frame_acknowledged_and_consumed_with_site_key(
    services, topic_prefix: str, tmp_path: Path, compression: Compression
) -> None:
    key = wire.generate_private_key()
    out = KafkaOutput(bootstrap_servers=[services.kafka_bootstrap], topic_prefix=topic_prefix,
                      compression=compression)
    publisher = KafkaPublisher(out, SITE)
    with Spool(SpoolConfig(path=tmp_path / "s.db"), "gw1") as spool:
        for i in range(50):
            append_frame(spool, key, SITE)
            if i % 10 == 0:
                append_batch(spool, key, SITE)
        await publisher.start()
        try:
            async with asyncio.timeout(30):
                await Forwarder(spool, [publisher]).drain()
        finally:
            await publisher.close()
        assert spool.depth == 0
    readings = await asyncio.to_thread(consume, services.kafka_bootstrap,
                                       f"{topic_prefix}readings", 50)
    batches = await asyncio.to_thread(consume, services.kafka_bootstrap,
                                      f"{topic_prefix}batches", 5)
    assert _decode_seqs(readings, key) == list(range(50))
    assert _decode_seqs(batches, key) == list(range(5))


@pytest.mark.services
async def test_oversize_frame_is_refused_for_good_and_does_not_wedge_the_queue(
    services, topic_prefix: str, tmp_path: Path
) -> None:
    key = wire.generate_private_key()
    out = KafkaOutput(bootstrap_servers=[services.kafka_bootstrap], topic_prefix=topic_prefix,
                      max_request_bytes=64 * 1024)
    publisher = KafkaPublisher(out, SITE)
    with Spool(SpoolConfig(path=tmp_path / "s.db"), "gw1") as spool:
        append_frame(spool, key, SITE)
        append_frame(spool, key, SITE, n_readings=2000)  # ~200 kB
        append_frame(spool, key, SITE)
        try:
            async with asyncio.timeout(30):
                await Forwarder(spool, [publisher]).drain()
        finally:
            await publisher.close()
    readings = await asyncio.to_thread(consume, services.kafka_bootstrap,
                                       f"{topic_prefix}readings", 2)
    assert _decode_seqs(readings, key) == [0, 2]


async def test_publish_raises_publish_error_when_broker_is_down(broker_factory, tmp_path) -> None:
    broker = broker_factory()
    broker.stop()
    out = KafkaOutput(bootstrap_servers=[broker.bootstrap], delivery_timeout_s=1.0)
    publisher = KafkaPublisher(out, SITE, name="kafka-down")
    key = wire.generate_private_key()
    with Spool(SpoolConfig(path=tmp_path / "s.db"), "gw1") as spool:
        append_frame(spool, key, SITE)
        await publisher.start()  # logs "not reachable at start", counts it
        t0 = time.monotonic()
        with pytest.raises(PublishError, match=broker.bootstrap):
            await publisher.publish(spool.peek(10))
        assert time.monotonic() - t0 < 15
        assert spool.depth == 1  # nothing acked
    await publisher.close()
    # every failed attempt to reach the broker is visible, by kind
    errors = REGISTRY.get_sample_value("edge_publish_errors_total",
                                       {"output": "kafka-down", "kind": "connect"})
    assert errors == 2


async def test_giving_up_with_batches_in_flight_closes_the_producer(broker_factory) -> None:
    # kafka-python's close(0) raises while batches are in flight, before it stops its
    # sender thread: giving up on a publish then escaped as KafkaTimeoutError (the
    # forwarder's run loop died; the agent stopped forwarding) and leaked the thread
    broker = broker_factory()
    publisher = KafkaPublisher(KafkaOutput(bootstrap_servers=[broker.bootstrap],
                                           delivery_timeout_s=30.0), SITE)
    producer = await publisher._ensure_producer()
    # metadata now, while the broker is up: later sends then queue instead of blocking
    await asyncio.to_thread(lambda: producer.send("readings", value=b"first").get(30))
    await asyncio.to_thread(broker.stop)
    for i in range(5):  # in flight: the broker is gone and the delivery timeout is long
        producer.send("readings", value=b"frame-%d" % i, key=SITE.encode())
    sender = producer._sender
    assert sender.is_alive()
    async with asyncio.timeout(15):
        await publisher._discard_producer()  # raises nothing
    assert not sender.is_alive()


@pytest.mark.timeout(120)
async def test_broker_outage_loses_nothing_and_keeps_order(broker_factory, tmp_path) -> None:
    """60 poll cycles (1 s each, run 25x faster) spooled while the broker is down."""
    broker = broker_factory()
    key = wire.generate_private_key()
    out = KafkaOutput(bootstrap_servers=[broker.bootstrap], delivery_timeout_s=1.5,
                      topic_prefix="drill.")
    publisher = KafkaPublisher(out, SITE)
    fwd_cfg = ForwardConfig(backoff_initial_s=0.05, backoff_max_s=0.5, idle_poll_s=0.05)
    with Spool(SpoolConfig(path=tmp_path / "s.db"), "gw1") as spool:
        forwarder = Forwarder(spool, [publisher], fwd_cfg)
        runner = asyncio.create_task(forwarder.run())
        try:
            for _ in range(20):
                append_frame(spool, key, SITE)
                forwarder.notify()
                await asyncio.sleep(0.01)
            async with asyncio.timeout(30):
                await forwarder.drained()
            # memory storage: what the broker holds is gone once it stops, so read it now
            before = await asyncio.to_thread(consume, broker.bootstrap, "drill.readings", 20)
            await asyncio.to_thread(broker.stop)
            for _ in range(60):
                append_frame(spool, key, SITE)
                forwarder.notify()
                await asyncio.sleep(0.04)
            assert spool.depth >= 55, "frames left the spool while the broker was down"
            await asyncio.to_thread(broker.start)
            async with asyncio.timeout(60):
                await forwarder.drained()
        finally:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
            await publisher.close()
        assert forwarder.failures > 0
    after = await asyncio.to_thread(consume, broker.bootstrap, "drill.readings", 60)
    seqs = _decode_seqs(before, key) + _decode_seqs(after, key)
    first_seen = list(dict.fromkeys(seqs))
    assert first_seen == list(range(80)), "a frame is missing or out of order"
    # duplicates only as redelivery of a seq already seen, never a seq from elsewhere
    assert set(seqs) == set(range(80))
