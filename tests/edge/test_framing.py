"""Frames always fit the outputs: flushes are split by encoded size, every part its own seq."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from edge import wire
from edge.agent import Agent
from edge.config import config_from_dict
from edge.framing import (
    FRAME_HEADROOM_BYTES,
    OverBudget,
    emit_within_budget,
    frame_budget,
    frame_columns,
)
from edge.publish_kafka import KafkaOutput, KafkaPublisher
from edge.publish_mqtt import MqttOutput, MqttPublisher
from tests.edge.kafka_helpers import consume

SITE = "plant-size"
T0 = 1_736_143_200_000_000_000


def long_named_readings(n: int) -> list[wire.Reading]:
    """Readings of 200 meters with long hierarchical names: ~200 bytes each encoded."""
    return [
        wire.Reading(
            f"plant-a:building-7:line-3:kiln-zone-{i % 200:03d}:" + "x" * 60,
            "energy_import_active_total_wh", T0 + i, i * 0.25, "kWh",
            "good" if i % 7 else "uncertain",
        )
        for i in range(n)
    ]


def test_split_keeps_order_and_every_part_fits() -> None:
    cols = frame_columns([], long_named_readings(1000))

    def measure(part: Any) -> int:
        frame = wire.Frame(SITE, "gw", 0, T0, *part)
        return len(wire.canonical_bytes(frame)) + wire.HEADER_BYTES

    budget = 20_000

    def emit(part: Any, may_refuse: bool) -> Any:
        if may_refuse and measure(part) > budget:
            raise OverBudget(measure(part))
        return part

    parts = emit_within_budget(cols, emit)
    assert len(parts) > 8 and all(measure(p) <= budget for p in parts)
    for i in range(6):
        assert [x for p in parts for x in p[i]] == cols[i]


def test_budget_is_the_smallest_output_limit_minus_headroom() -> None:
    kafka = KafkaPublisher(KafkaOutput(bootstrap_servers=["x:1"], max_request_bytes=500_000), SITE)
    mqtt = MqttPublisher(MqttOutput(url="mqtt://x", max_packet_bytes=300_000), SITE, "gw")
    assert kafka.max_frame_bytes == 500_000 - 128 - len(SITE)
    assert mqtt.max_frame_bytes < 300_000 - len(f"plantprint/{SITE}/gw/readings")
    budget = frame_budget([8 * 1024**3, kafka.max_frame_bytes, mqtt.max_frame_bytes])
    assert budget == mqtt.max_frame_bytes - FRAME_HEADROOM_BYTES
    assert frame_budget([]) == wire.DEFAULT_MAX_BYTES - FRAME_HEADROOM_BYTES


def _errors(kind: str) -> float:
    value = REGISTRY.get_sample_value("edge_publish_errors_total",
                                      {"output": "kafka", "kind": kind})
    return value or 0.0


@pytest.mark.services
@pytest.mark.timeout(90)
async def test_40000_long_named_readings_land_in_kafka_without_a_gap(
    tmp_path: Path, services: Any, topic_prefix: str
) -> None:
    """Default max_request_bytes (1 MiB): 20 000-reading frames (~4 MB) were refused."""
    key = wire.generate_private_key()
    wire.write_private_key(tmp_path / "gw.pem", key)  # owner-only: the agent refuses others
    data = {
        "site": SITE, "gateway": "gw-big", "signing_key": "gw.pem",
        "spool": {"path": "spool.db", "synchronous": "NORMAL"}, "metrics": {"port": 0},
        "outputs": {"kafka": {"bootstrap_servers": [services.kafka_bootstrap],
                              "topic_prefix": topic_prefix}},
        # one meter that is not there; the readings come in as subscriber readings
        "modbus": [{"meter": "M-NONE", "host": "127.0.0.1", "port": 1,
                    "poll_interval_s": 3600,
                    "profile": {"family": "f", "points": [
                        {"channel": "p", "address": 0, "type": "uint16"}]}}],
    }
    config = config_from_dict(data, tmp_path / "site.toml")
    readings = long_named_readings(40_000)
    oversize_before = _errors("oversize")
    async with Agent(config) as agent:
        limit = 1024 * 1024 - 128 - len(SITE)
        assert agent.frame_budget == limit - FRAME_HEADROOM_BYTES
        agent.on_readings(readings)
        seqs = await agent.flush()
        assert agent.forwarder is not None
        async with asyncio.timeout(60):
            await agent.forwarder.drained()
    assert seqs == list(range(len(seqs))) and len(seqs) >= 8
    records = await asyncio.to_thread(
        consume, services.kafka_bootstrap, f"{topic_prefix}readings", len(seqs), 40.0
    )
    assert all(len(v) <= limit for _k, v in records)
    frames = [wire.decode(v, {"gw-big": key.public_key()}) for _k, v in records]
    assert sorted(f.seq for f in frames) == seqs  # every seq landed once, no gap
    got = [r for f in sorted(frames, key=lambda f: f.seq) for r in f.readings()]
    assert got == readings
    assert _errors("oversize") == oversize_before
