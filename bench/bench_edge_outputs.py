"""Edge outputs: OPC UA notifications handled per second; framed readings published to Kafka.

* OPC UA: the binary PublishResponse of a subscription with 1,000 monitored
  items is decoded by asyncua and handed to our subscription's publish callback
  (readings with source timestamp and quality, one ``on_readings`` call per
  message). Baseline, same bytes, same run: asyncua's own ``Subscription`` in
  handler mode with a no-op ``datachange_notification`` (the raw asyncua
  callback, no processing). Goal ≥ 10k notifications/s (asyncua users report
  lag past ~3k–6k items/s).
* Kafka: readings per second per core of this process (all threads: the
  kafka-python sender included) for the full path: frame of 1,000 readings →
  canonical JSON + Ed25519 signature → SQLite WAL spool (``synchronous=FULL``)
  → Forwarder → KafkaProducer (acks=all, idempotent) → ack → spool delete.
  Baseline: a bare KafkaProducer sending the same frame bodies unframed
  (no signature, no spool), acks=all. Against a private tansu broker.
  Goal ≥ 200k readings/s per core.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import tempfile
import time
from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.common.subscription import Subscription
from asyncua.common.utils import Buffer
from asyncua.ua.ua_binary import struct_from_binary, struct_to_binary

from bench.harness import BenchContext, Figure, cpu_seconds
from edge import wire

ITEMS = 1000
READINGS_PER_FRAME = 1000
BASE_TS = 1_764_000_000_000_000_000


# ---------------------------------------------------------------------- OPC UA


def _publish_response_bytes(n_items: int) -> bytes:
    ts = dt.datetime(2025, 11, 24, 12, 0, tzinfo=dt.UTC)
    items = []
    for handle in range(1, n_items + 1):
        dv = ua.DataValue(ua.Variant(1000.0 + handle, ua.VariantType.Double),
                          SourceTimestamp=ts, ServerTimestamp=ts)  # type: ignore[arg-type]
        items.append(ua.MonitoredItemNotification(ClientHandle=handle, Value=dv))
    change = ua.DataChangeNotification(MonitoredItems=items)
    message = ua.NotificationMessage(SequenceNumber=1, PublishTime=ts,
                                     NotificationData=[change])
    response = ua.PublishResponse()
    response.Parameters.SubscriptionId = 1
    response.Parameters.NotificationMessage = message
    return bytes(struct_to_binary(response))


class _NoOpHandler:
    def __init__(self) -> None:
        self.count = 0

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        self.count += 1


async def _opcua_rates(messages: int) -> tuple[float, float]:
    from edge.opcua import OpcUaSubscriber, _NotifyingSubscription
    from edge.opcua_config import MonitoredNode, OpcUaServer

    data = _publish_response_bytes(ITEMS)
    nodes = [MonitoredNode(node=f"ns=2;s=M{i}.Energy", meter=f"M{i}", channel="energy_kwh",
                           unit="kWh") for i in range(ITEMS)]
    got: list[int] = []
    subscriber = OpcUaSubscriber(
        OpcUaServer(name="bench", endpoint="opc.tcp://127.0.0.1:1", nodes=tuple(nodes)),
        lambda readings: got.append(len(readings)), lambda events: None,
    )
    subscriber._build_requests(["http://opcfoundation.org/UA/", "urn:x", "urn:y"])
    params = ua.CreateSubscriptionParameters()
    ours = _NotifyingSubscription(None, params, subscriber._items_changed, lambda s: None)

    t0 = cpu_seconds()
    for _ in range(messages):
        response = struct_from_binary(ua.PublishResponse, Buffer(data))
        await ours.publish_callback(response.Parameters)
    ours_s = cpu_seconds() - t0
    assert sum(got) == messages * ITEMS, "not every notification became a reading"

    handler = _NoOpHandler()
    raw = Subscription(None, params, handler)  # type: ignore[arg-type]
    raw.server = _NoObserver()  # type: ignore[assignment]
    for handle in range(1, ITEMS + 1):
        item = _item_data(handle)
        raw._monitored_items[handle] = item
    t0 = cpu_seconds()
    for _ in range(messages):
        response = struct_from_binary(ua.PublishResponse, Buffer(data))
        await raw.publish_callback(response.Parameters)
        await asyncio.gather(*raw._dispatch_tasks)  # one task per notification
    raw_s = cpu_seconds() - t0
    assert handler.count == messages * ITEMS
    return messages * ITEMS / ours_s, messages * ITEMS / raw_s


class _NoObserver:
    class observer:
        @staticmethod
        def on_notification(*_: Any) -> None:
            return None


def _item_data(handle: int) -> Any:
    from asyncua.common.node import Node
    from asyncua.common.subscription import SubscriptionItemData

    item = SubscriptionItemData()
    item.client_handle = handle
    item.node = Node(None, ua.NodeId(f"M{handle}.Energy", 2))  # type: ignore[arg-type]
    return item


def _opcua_figure(ctx: BenchContext) -> Figure:
    messages = 20 if ctx.quick else 200
    ours, raw = asyncio.run(_opcua_rates(messages))
    return Figure(
        area="edge", name="opcua data changes handled (1,000-item publish, decode included)",
        value=ours, unit="notifications/s/core",
        baseline_name="asyncua handler mode, no-op callback, same bytes", baseline_value=raw,
        goal=">= 10k notifications/s (asyncua users: lag past 3k-6k/s)", better="higher",
        met=ours >= 10_000, notes=f"{messages} publish responses of {ITEMS} items",
    )


# ----------------------------------------------------------------------- Kafka


def _frame_readings(i: int) -> list[wire.Reading]:
    return [wire.Reading(f"EM-{j % 40:03d}", "energy_active_import",
                         BASE_TS + i * 1_000_000_000 + j, 123_456.789 + j, "kWh", "good")
            for j in range(READINGS_PER_FRAME)]


async def _framed_cpu(bootstrap: str, frames: int, scratch: Path, compression: str) -> float:
    from edge.forward import ForwardConfig, Forwarder
    from edge.publish_kafka import KafkaOutput, KafkaPublisher
    from edge.spool import Spool, SpoolConfig

    key = wire.generate_private_key()
    rows = _frame_readings(0)
    publisher = KafkaPublisher(KafkaOutput(bootstrap_servers=[bootstrap],
                                           topic_prefix=f"bench-{compression}.",
                                           compression=compression), "bench-site")  # type: ignore[arg-type]
    with Spool(SpoolConfig(path=scratch / f"spool-{compression}.db"), "gw-bench") as spool:
        forwarder = Forwarder(spool, [publisher], ForwardConfig(batch_frames=50))
        await publisher.start()
        t0 = cpu_seconds()
        for _ in range(frames):
            spool.append("readings", lambda seq: wire.encode(wire.Frame.from_readings(
                "bench-site", "gw-bench", seq, time.time_ns(), rows), key))
            if spool.depth >= 50:
                await forwarder.forward_once()
        await forwarder.drain()
        used = cpu_seconds() - t0
        await publisher.close()
    return used


def _bare_cpu(bootstrap: str, frames: int) -> float:
    from kafka import KafkaProducer

    body = wire.canonical_bytes(wire.Frame.from_readings(
        "bench-site", "gw-bench", 0, time.time_ns(), _frame_readings(0)))
    producer = KafkaProducer(bootstrap_servers=[bootstrap], acks="all", linger_ms=5)
    try:
        producer.send("bench-bare.readings", value=body, key=b"bench-site").get(30)
        t0 = cpu_seconds()
        futures = [producer.send("bench-bare.readings", value=body, key=b"bench-site")
                   for _ in range(frames)]
        producer.flush(60)
        for future in futures:
            future.get(0)
        return cpu_seconds() - t0
    finally:
        producer.close(10)


def _kafka_figures(ctx: BenchContext) -> list[Figure]:
    from deploy.tansu import TansuBroker

    frames = 50 if ctx.quick else 400
    broker = TansuBroker("kafka-bench-outputs")
    broker.start()
    try:
        with tempfile.TemporaryDirectory(dir=Path(ctx.scratch).resolve()) as tmp:
            bare = _bare_cpu(broker.bootstrap, frames)
            wall0 = time.perf_counter()
            framed = asyncio.run(_framed_cpu(broker.bootstrap, frames, Path(tmp), "none"))
            wall = time.perf_counter() - wall0
            gzip = asyncio.run(_framed_cpu(broker.bootstrap, frames, Path(tmp), "gzip"))
    finally:
        broker.stop()
    readings = frames * READINGS_PER_FRAME
    base = readings / bare
    figures = []
    for name, cpu in (("none", framed), ("gzip", gzip)):
        value = readings / cpu
        figures.append(Figure(
            area="edge",
            name=f"kafka publish with framing (spool FULL + Ed25519 + acks=all, {name})",
            value=value, unit="readings/s/core",
            baseline_name="bare KafkaProducer, same bodies unframed", baseline_value=base,
            goal=">= 200k readings/s per core", better="higher", met=value >= 200_000,
            notes=(f"{frames} frames of {READINGS_PER_FRAME} readings, tansu, CPU of all "
                   f"threads; wall {readings / wall:,.0f} readings/s" if name == "none" else
                   f"{frames} frames of {READINGS_PER_FRAME} readings, compression gzip-9"),
        ))
    return figures


def run(ctx: BenchContext) -> list[Figure]:
    return [_opcua_figure(ctx), *_kafka_figures(ctx)]
