"""The agent end to end: simulator `small` → agent → spool → Kafka → wire.decode, every sequence."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from edge import wire
from edge.agent import Agent, AgentError, StartError
from edge.config import config_from_dict
from edge.spool import Spool, SpooledMessage
from tests.edge.sim_process import small_simulator

ROOT = Path(__file__).resolve().parents[2]
SMALL = ROOT / "deploy" / "edge" / "small.toml"
SMALL_METERS = {"M-PRESS", "M-OVEN", "M-GAS", "M-INC", "M-AIR"}


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The `small` scenario at 60x speed on free ports, in its own process (independent peer)."""
    with small_simulator(tmp_path, 60) as endpoints:
        yield endpoints


def site_config(tmp_path: Path, endpoints: dict[str, Any], **outputs: Any) -> dict[str, Any]:
    """deploy/edge/small.toml, pointed at the simulator's actual ports and a private spool."""
    data = tomllib.loads(SMALL.read_text())
    ports = {m["meter"]: (m["port"], m["unit"]) for m in endpoints["modbus"]}
    for dev in data["modbus"]:
        dev["port"], dev["unit_id"] = ports[dev["meter"]]
        dev["poll_interval_s"] = 0.2
        dev["timeout_s"] = 1.0
    data["profile_dirs"] = [str(SMALL.parent / "profiles")]
    data["signing_key"] = str(tmp_path / "gw.pem")
    data["spool"] = {"path": str(tmp_path / "spool.db"), "synchronous": "NORMAL"}
    data["metrics"] = {"port": 0}
    data["outputs"] = outputs
    return data


def write_key(tmp_path: Path) -> wire.Ed25519PrivateKey:
    key = wire.generate_private_key()
    wire.write_private_key(tmp_path / "gw.pem", key)  # owner-only: the agent refuses others
    return key


class MemoryOutput:
    """An output that keeps what it acknowledged (for tests without a broker)."""

    name = "memory"
    max_frame_bytes = None  # no limit of its own

    def __init__(self) -> None:
        self.got: list[SpooledMessage] = []

    async def start(self) -> None: ...

    async def publish(self, msgs: Sequence[SpooledMessage]) -> None:
        self.got.extend(msgs)

    async def close(self) -> None: ...


def decode_all(datas: Sequence[bytes], key: wire.Ed25519PrivateKey, gateway: str) -> list[Any]:
    keys = {gateway: key.public_key()}
    return [wire.decode(d, keys) for d in datas]


def check_frames(frames: Sequence[Any], meters: set[str]) -> None:
    """Every sequence once from 0, every meter present, counters never go backwards."""
    seqs = sorted(f.seq for f in frames)
    assert seqs == list(range(len(seqs))), "sequence numbers missing or repeated"
    seen: set[str] = set()
    last: dict[str, float] = {}
    for frame in sorted(frames, key=lambda f: f.seq):
        assert isinstance(frame, wire.Frame) and frame.site == "demo-site"
        for r in frame.readings():
            seen.add(r.meter)
            assert r.quality == "good"
            if r.channel == "energy":
                assert r.value >= last.get(r.meter, 0.0), r
                last[r.meter] = r.value
    assert seen == meters
    assert last["M-OVEN"] > 88000.0 and last["M-INC"] > 1_234_567.0  # scenario counter starts


async def test_agent_spools_signed_frames_in_sequence(tmp_path, simulator):
    key = write_key(tmp_path)
    config = config_from_dict(site_config(tmp_path, simulator), tmp_path / "site.toml")
    out = MemoryOutput()
    before = time.time_ns()
    async with Agent(config, publishers=[out]) as agent:
        await asyncio.sleep(2.0)
        assert agent.pollers and all(p.connected for p in agent.pollers)
    after = time.time_ns()
    messages = decode_all([m.data for m in out.got], key, config.gateway)
    frames = [m for m in messages if isinstance(m, wire.Frame)]
    assert len(frames) >= 5
    check_frames(frames, SMALL_METERS)
    # the MES (OPC UA) is not reachable here: no batch frame claims the batch stream is
    # complete (the watermark heartbeats go out only while every MES session is up)
    assert not [m for m in messages if isinstance(m, wire.BatchFrame)]
    # the device clocks show simulated time (2025-01-06), far off this gateway's system
    # clock: not passed on, the flow and carbon meters get the gateway's request times
    gas = [r.ts_ns for f in frames for r in f.readings() if r.meter == "M-GAS"]
    assert gas and all(before <= ts <= after for ts in gas)
    with Spool(config.spool, config.gateway) as spool:
        assert spool.depth == 0 and spool.next_seq("readings") == len(frames)


@pytest.mark.slow
async def test_agent_sends_a_batch_frame_every_flush_while_the_mes_is_up(tmp_path):
    """The batch stream's watermark: with the MES (OPC UA) connected, every flush sends a
    batch frame, empty when nothing happened, so compute knows no event is still missing."""
    key = write_key(tmp_path)
    with small_simulator(tmp_path, 1, opcua=True) as endpoints:
        data = site_config(tmp_path, endpoints)
        data["opcua"][0]["endpoint"] = endpoints["opcua"]["url"]
        config = config_from_dict(data, tmp_path / "site.toml")
        out = MemoryOutput()
        async with Agent(config, publishers=[out]) as agent:
            await asyncio.wait_for(agent.subscribers[0].connected.wait(), 15)
            await asyncio.sleep(1.5)
    messages = decode_all([m.data for m in out.got], key, config.gateway)
    batches = [m for m in messages if isinstance(m, wire.BatchFrame)]
    assert len(batches) >= 3, "a batch frame per flush while the MES is up"
    assert sorted(b.seq for b in batches) == list(range(len(batches)))
    assert all(b.events == () for b in batches)  # the first batch starts at 600 s
    sent = [b.sent_ns for b in sorted(batches, key=lambda b: b.seq)]
    assert sent == sorted(sent)


async def test_agent_validates_before_touching_anything(tmp_path):
    data = site_config(tmp_path, {"modbus": [
        {"meter": m, "port": 1, "unit": 1} for m in SMALL_METERS]})
    config = config_from_dict(data, tmp_path / "site.toml")
    with pytest.raises(StartError, match=r"^signing_key: .*gw\.pem does not exist") as missing:
        Agent(config, publishers=[MemoryOutput()])
    assert missing.value.key == "signing_key" and isinstance(missing.value, AgentError)
    write_key(tmp_path)
    with pytest.raises(StartError, match=r"no \[outputs.kafka\]"):
        Agent(config)
    assert not (tmp_path / "spool.db").exists()


async def test_poll_queue_is_bounded_oldest_first(tmp_path):
    from edge.modbus import PollResult

    write_key(tmp_path)
    data = site_config(tmp_path, {"modbus": [
        {"meter": m, "port": 1, "unit": 1} for m in SMALL_METERS]})
    data["queue_frames"] = 3
    agent = Agent(config_from_dict(data, tmp_path / "s.toml"), publishers=[MemoryOutput()])
    for i in range(5):
        agent.on_poll(PollResult(f"M{i}", i))
    assert [r.meter for r in agent._results] == ["M2", "M3", "M4"]


# ------------------------------------------------------------------ real broker


def consume(bootstrap: str, topic: str, want: int, timeout_s: float = 30.0) -> list[Any]:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             auto_offset_reset="earliest", consumer_timeout_ms=1000)
    try:
        deadline = time.monotonic() + timeout_s
        parts: set[int] | None = None
        while parts is None and time.monotonic() < deadline:
            parts = consumer.partitions_for_topic(topic)
            if parts is None:
                time.sleep(0.2)
        assert parts, f"topic {topic} never appeared"
        consumer.assign([TopicPartition(topic, p) for p in parts])
        consumer.seek_to_beginning()
        records: list[Any] = []
        while len(records) < want and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


@pytest.mark.services
async def test_simulator_to_agent_to_kafka(tmp_path, simulator, services, topic_prefix):
    key = write_key(tmp_path)
    kafka = {"bootstrap_servers": [services.kafka_bootstrap], "topic_prefix": topic_prefix}
    config = config_from_dict(site_config(tmp_path, simulator, kafka=kafka), tmp_path / "s.toml")
    async with Agent(config):
        await asyncio.sleep(3.0)
    with Spool(config.spool, config.gateway) as spool:
        sent, left = spool.next_seq("readings"), spool.depth
    assert sent >= 8 and left == 0
    records = await asyncio.to_thread(
        consume, services.kafka_bootstrap, f"{topic_prefix}readings", sent
    )
    assert {r.key for r in records} == {b"demo-site"}
    frames = decode_all([r.value for r in records], key, config.gateway)
    check_frames(frames, SMALL_METERS)
    assert len(frames) == sent


@pytest.mark.services
@pytest.mark.timeout(120)
async def test_broker_outage_while_polling_loses_no_frame(tmp_path, simulator, broker_factory):
    """The broker stops for 6 s while the agent polls every 200 ms (the 60 s drill with time
    compressed: 30 frames pile up): afterwards every frame arrives, in sequence order."""
    from edge.forward import ForwardConfig

    broker = broker_factory()
    key = write_key(tmp_path)
    kafka = {"bootstrap_servers": [broker.bootstrap], "topic_prefix": "drill.",
             "delivery_timeout_s": 1.5}
    config = config_from_dict(site_config(tmp_path, simulator, kafka=kafka), tmp_path / "s.toml")
    fast = ForwardConfig(backoff_initial_s=0.05, backoff_max_s=0.5, idle_poll_s=0.05)
    async with Agent(config, forward_config=fast) as agent:
        assert agent.forwarder is not None and agent.spool is not None
        await asyncio.sleep(1.5)
        async with asyncio.timeout(30):
            await agent.forwarder.drained()
        await asyncio.to_thread(broker.stop)
        await asyncio.sleep(0.5)  # an ack already in flight reaches the spool
        # memory storage: frames the broker acked before it stopped are gone with it (the
        # broker's loss, not ours); every frame still in the spool must arrive afterwards
        first_unacked = (await asyncio.to_thread(agent.spool.peek, 1) or [None])[0]
        await asyncio.sleep(5.5)
        assert agent.spool.depth >= 20, "frames left the spool while the broker was down"
        assert all(p.connected for p in agent.pollers)  # polling went on
        await asyncio.to_thread(broker.start)
        async with asyncio.timeout(60):
            await agent.forwarder.drained()
        assert agent.forwarder.failures > 0
    with Spool(config.spool, config.gateway) as spool:
        total, left = spool.next_seq("readings"), spool.depth
    assert left == 0
    start = first_unacked.seq if first_unacked is not None else total
    assert start < total - 20
    records = await asyncio.to_thread(consume, broker.bootstrap, "drill.readings", total - start)
    frames = decode_all([r.value for r in records], key, config.gateway)
    first_seen = list(dict.fromkeys(f.seq for f in frames))
    assert first_seen == list(range(start, total)), "a frame is missing or out of order"
    readings = [r for f in frames for r in f.readings()]
    assert {r.meter for r in readings} == SMALL_METERS


@pytest.mark.services
@pytest.mark.timeout(120)
async def test_kafka_down_at_start_readings_spooled_from_the_first_cycle(
    tmp_path, broker_factory
):
    """The broker is not there when the agent starts: start returns at once, the first
    readings are in the spool within one poll interval, and once the broker comes up
    every frame is forwarded from seq 0, in order."""
    from edge.forward import ForwardConfig
    from tests.edge.test_modbus import pymodbus_peer

    broker = broker_factory()
    broker.stop()  # nothing listens on its port until broker.start()
    key = write_key(tmp_path)
    interval = 0.5  # s, the meter's poll interval (and so the frame interval)
    loop = asyncio.get_running_loop()
    async with pymodbus_peer([7, 8]) as (_peer, port):
        data = {
            "site": "demo-site", "gateway": "gw-down", "signing_key": "gw.pem",
            "spool": {"path": "spool.db", "synchronous": "NORMAL"}, "metrics": {"port": 0},
            "outputs": {"kafka": {"bootstrap_servers": [broker.bootstrap],
                                  "topic_prefix": "down.", "delivery_timeout_s": 1.5}},
            "modbus": [{"meter": "M1", "host": "127.0.0.1", "port": port,
                        "poll_interval_s": interval, "clock": "gateway", "profile": {
                            "family": "f", "points": [
                                {"channel": "energy", "address": 0, "type": "uint16"},
                                {"channel": "power", "address": 1, "type": "uint16"}]}}],
        }
        config = config_from_dict(data, tmp_path / "site.toml")
        fast = ForwardConfig(backoff_initial_s=0.05, backoff_max_s=0.5, idle_poll_s=0.05)
        began = loop.time()
        async with Agent(config, forward_config=fast) as agent:
            assert agent.spool is not None and agent.forwarder is not None
            assert loop.time() - began < interval, "start waited for the broker"
            # one poll interval, plus scheduling slack for the flush's thread and fsync
            async with asyncio.timeout(began + interval + 0.25 - loop.time()):
                while True:  # the spool has no event to wait on: poll it
                    if agent.spool.next_seq("readings") > 0:
                        break
                    await asyncio.sleep(0.01)
            await asyncio.sleep(4 * interval)
            spooled = agent.spool.next_seq("readings")
            assert spooled >= 4 and agent.spool.depth == spooled, "nothing may leave yet"
            await asyncio.to_thread(broker.start)
            async with asyncio.timeout(60):
                await agent.forwarder.drained()
    with Spool(config.spool, config.gateway) as spool:
        total, left = spool.next_seq("readings"), spool.depth
    assert left == 0 and total > spooled
    records = await asyncio.to_thread(consume, broker.bootstrap, "down.readings", total)
    frames = decode_all([r.value for r in records], key, config.gateway)
    assert list(dict.fromkeys(f.seq for f in frames)) == list(range(total))
    first = [(r.meter, r.channel, r.value) for r in frames[0].readings()]
    assert first == [("M1", "energy", 7), ("M1", "power", 8)]


def _start_agent(site: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "edge", "--config", str(site), "--log-level", "WARNING"],
            cwd=ROOT, stdout=fh, stderr=fh,
        )


@pytest.mark.services
async def test_sigkill_mid_run_then_restart_loses_no_frame(
    tmp_path, simulator, services, topic_prefix
):
    """kill -9 the agent process while it polls; the restarted one sends what was spooled."""
    key = write_key(tmp_path)
    kafka = {"bootstrap_servers": [services.kafka_bootstrap], "topic_prefix": topic_prefix}
    data = site_config(tmp_path, simulator, kafka=kafka)
    data["spool"]["synchronous"] = "FULL"
    site, log = tmp_path / "site.toml", tmp_path / "agent.log"
    _write_toml(data, site)
    config = config_from_dict(data, site)

    first = _start_agent(site, log)
    # on a busy machine the interpreter alone may take seconds to start: wait for frames
    await _until_spooled(config.spool.path, 3, first, log)
    os.kill(first.pid, signal.SIGKILL)
    assert first.wait(10) == -signal.SIGKILL
    with Spool(config.spool, config.gateway) as spool:
        before_kill = spool.next_seq("readings")
    assert before_kill >= 3, log.read_text()

    second = _start_agent(site, log)
    await _until_spooled(config.spool.path, before_kill + 3, second, log)
    second.send_signal(signal.SIGTERM)
    assert second.wait(20) == 0, log.read_text()
    with Spool(config.spool, config.gateway) as spool:
        total, left = spool.next_seq("readings"), spool.depth
    assert total > before_kill and left == 0

    records = await asyncio.to_thread(
        consume, services.kafka_bootstrap, f"{topic_prefix}readings", total
    )
    frames = decode_all([r.value for r in records], key, config.gateway)
    by_seq: dict[int, bytes] = {}
    for frame, rec in zip(frames, records, strict=True):
        # at-least-once: a re-sent sequence number carries the very same signed bytes
        assert by_seq.setdefault(frame.seq, rec.value) == rec.value
    assert sorted(by_seq) == list(range(total)), f"missing {set(range(total)) - set(by_seq)}"


def _spooled(path: Path) -> int:
    """Readings frames spooled so far, read-only while the agent writes (WAL)."""
    import sqlite3

    if not path.exists():
        return 0
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT next_seq FROM sequence WHERE stream = 'readings'").fetchone()
    except sqlite3.OperationalError:  # the agent has not created the tables yet
        return 0
    finally:
        db.close()
    return int(row[0]) if row is not None else 0


async def _until_spooled(
    path: Path, frames: int, agent: subprocess.Popen[bytes], log: Path, within_s: float = 60.0
) -> None:
    """Until the agent process has spooled ``frames`` readings frames."""
    async with asyncio.timeout(within_s):
        while await asyncio.to_thread(_spooled, path) < frames:
            assert agent.poll() is None, f"the agent exited ({agent.returncode}): see {log}"
            await asyncio.sleep(0.1)


def _write_toml(data: dict[str, Any], path: Path) -> None:
    """Tiny TOML writer for the test's site config (strings, numbers, lists, tables)."""

    def value(v: Any) -> str:
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        return repr(v)

    lines = []
    for k, v in data.items():
        tables = isinstance(v, dict) or (isinstance(v, list) and v and isinstance(v[0], dict))
        if not tables:
            lines.append(f"{k} = {value(v)}")
    for k, v in data.items():
        if isinstance(v, dict):
            lines.append(f"[{k}]")
            lines.extend(f"{kk} = {value(vv)}" for kk, vv in v.items())
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            for item in v:
                lines.append(f"[[{k}]]")
                lines.extend(f"{kk} = {value(vv)}" for kk, vv in item.items())
    path.write_text("\n".join(lines) + "\n")


async def test_metrics_port_0_switches_the_endpoint_off(tmp_path):
    """TOML has no null: `[metrics] port = 0` is the off switch; a port serves /metrics."""
    import urllib.request

    from deploy.procs import free_port
    from edge.config import load_config

    write_key(tmp_path)
    site = tmp_path / "site.toml"
    base = (
        'site = "s"\ngateway = "gw-m"\nsigning_key = "gw.pem"\n'
        '[[modbus]]\nmeter = "M"\nhost = "127.0.0.1"\nport = 1\n'
        '[modbus.profile]\nfamily = "f"\n'
        'points = [{ channel = "p", address = 0, type = "uint16" }]\n'
        '[spool]\npath = "spool.db"\n'
    )
    site.write_text(base + "[metrics]\nport = 0\n")
    async with Agent(load_config(site), publishers=[MemoryOutput()]) as agent:
        assert agent._metrics is None
    port = free_port()
    site.write_text(base + f"[metrics]\nport = {port}\n")
    async with Agent(load_config(site), publishers=[MemoryOutput()]):
        url = f"http://127.0.0.1:{port}/metrics"
        text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
        assert b"edge_frames_spooled_total" in text
