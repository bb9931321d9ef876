"""Device clocks the gateway can see are wrong are not passed on (Modbus clock, OPC UA source).

Golden cases for the pure decision (``edge.clock.judge_device_time``), then the
per-meter metrics and warnings, the ``[clock] device_tolerance_s`` key, and the
two protocols against real servers: pymodbus's own server with a device clock
register, and an in-process asyncua server sending source timestamps.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import struct
import time
from pathlib import Path
from typing import Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from edge import wire
from edge.agent import Agent
from edge.clock import (
    DEVICE_TOLERANCE_S,
    ClockConfig,
    DeviceClocks,
    DeviceStamp,
    DeviceTime,
    Verdict,
    judge_device_time,
)
from edge.config import ConfigError
from edge.modbus import ModbusPoller
from edge.opcua import OpcUaSubscriber
from edge.profiles import Profile
from tests.edge.opcua_helpers import PlantServer
from tests.edge.test_agent import MemoryOutput, write_key
from tests.edge.test_clock import load_with
from tests.edge.test_modbus import device, pymodbus_peer
from tests.edge.test_opcua import Sink, _running, server_config

S = 10**9  # ns per second
T = 1_741_000_000 * S  # a gateway time, epoch ns (2025-03-03)
TOL = 10 * S


# ------------------------------------------------------------------ the decision

# (case, device minus gateway in s, kind) -> (stamp: "device" | "gateway", verdict); the
# gateway time is an instant (a Modbus answer as fast as its request: ms in a plant)
GOLDEN: list[tuple[str, float, DeviceTime, Literal["device", "gateway"], Verdict]] = [
    ("in_step", 0.0, "clock", "device", "within"),
    ("whole_second_clock_behind", -0.999, "clock", "device", "within"),
    ("at_tolerance_ahead_is_within", 10.0, "clock", "device", "within"),
    ("at_tolerance_behind_is_within", -10.0, "clock", "device", "within"),
    ("just_past_tolerance_ahead", 10.000000001, "clock", "gateway", "ahead"),
    ("gas_meter_clock_95s_ahead", 95.0, "clock", "gateway", "ahead"),
    ("plc_clock_42_5s_behind", -42.5, "clock", "gateway", "behind"),
    ("unset_clock_a_year_behind", -365 * 86400.0, "clock", "gateway", "behind"),
    ("source_in_step", 0.0, "source", "device", "within"),
    ("source_sampled_a_publish_ago", -1.0, "source", "device", "within"),
    ("source_95s_ahead_is_impossible", 95.0, "source", "gateway", "ahead"),
    ("source_just_past_tolerance_ahead", 10.000000001, "source", "gateway", "ahead"),
    ("source_42_5s_behind_may_be_an_old_value", -42.5, "source", "device", "behind"),
    ("source_unchanged_for_an_hour", -3600.0, "source", "device", "behind"),
]


@pytest.mark.parametrize(("offset_s", "kind", "stamp", "verdict"),
                         [g[1:] for g in GOLDEN], ids=[g[0] for g in GOLDEN])
def test_golden_device_time_decisions(
    offset_s: float, kind: DeviceTime, stamp: str, verdict: Verdict
) -> None:
    device_ns = T + round(offset_s * S)
    got = judge_device_time(device_ns, T, TOL, kind)
    want_ts = device_ns if stamp == "device" else T
    assert got == DeviceStamp(want_ts, device_ns - T, verdict, stamp == "gateway")


# Modbus: the clock register was read between the request (T) and its answer (T + 25 s: a
# 0.25 s stall of the gateway's event loop at a drill's 100x); offsets from the nearer end
# (case, device minus request time in s) -> (stamp, offset in s, verdict)
WINDOW: list[tuple[str, float, Literal["device", "gateway"], float, Verdict]] = [
    ("read_at_the_request", 0.0, "device", 0.0, "within"),
    ("read_during_a_stall", 20.0, "device", 0.0, "within"),
    ("read_at_the_answer_plus_tolerance", 35.0, "device", 10.0, "within"),
    ("ahead_of_the_answer", 36.0, "gateway", 11.0, "ahead"),
    ("behind_the_request", -11.0, "gateway", -11.0, "behind"),
    ("gas_meter_95s_ahead_of_a_stalled_read", 95.0, "gateway", 70.0, "ahead"),
]


@pytest.mark.parametrize(("offset_s", "stamp", "off_s", "verdict"),
                         [g[1:] for g in WINDOW], ids=[g[0] for g in WINDOW])
def test_golden_modbus_clock_read_within_request_and_answer(
    offset_s: float, stamp: str, off_s: float, verdict: Verdict
) -> None:
    device_ns = T + round(offset_s * S)
    got = judge_device_time(device_ns, T, TOL, "clock", gateway_until_ns=T + 25 * S)
    want_ts = device_ns if stamp == "device" else T  # restamped: the request's time
    assert got == DeviceStamp(want_ts, round(off_s * S), verdict, stamp == "gateway")


@given(offset=st.integers(-(10**15), 10**15), tol=st.integers(1, 10**12),
       kind=st.sampled_from(["clock", "source"]), window=st.integers(0, 10**12))
def test_a_stamp_is_the_device_time_or_the_gateway_time_never_a_third(
    offset: int, tol: int, kind: DeviceTime, window: int
) -> None:
    until = T + (window if kind == "clock" else 0)
    got = judge_device_time(T + offset, T, tol, kind, until)
    assert got.ts_ns == (T if got.restamped else T + offset)
    ahead, behind = T + offset - until, offset
    assert got.restamped == (ahead > tol or (kind == "clock" and behind < -tol))
    # whatever is sent is never further ahead of the gateway's answer time than the tolerance
    assert got.ts_ns - until <= tol


# ------------------------------------------------------------ metrics and warnings


def sample(name: str, meter: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"meter": meter})


def test_warned_once_when_off_and_once_when_back_with_offset_and_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clocks = DeviceClocks(10.0, "clock")
    caplog.set_level(logging.WARNING, logger="edge.clock")
    meter = "CLK-WARN-1"
    stamps = [clocks.stamp(meter, T + d * S, T, readings=5) for d in (1, 95, 96, 97, 2, 3)]
    assert stamps == [T + S, T, T, T, T + 2 * S, T + 3 * S]
    assert sample("edge_device_clock_restamped_total", meter) == 15  # 3 cycles x 5 readings
    assert sample("edge_device_clock_offset_seconds", meter) == 3.0
    assert not clocks.is_off(meter)
    lines = [r.getMessage() for r in caplog.records if meter in r.getMessage()]
    assert lines == [
        f"meter {meter}: device clock +95.0 s off the gateway clock, more than the 10 s "
        "tolerance: its readings get the gateway time of each request until it is back "
        "within tolerance",
        f"meter {meter}: device clock back within the 10 s tolerance (+2.0 s off the gateway "
        "clock): its readings carry the device's time again",
    ]
    assert all(r.levelname == "WARNING" for r in caplog.records)


def test_old_opcua_values_neither_count_nor_end_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clocks = DeviceClocks(10.0, "source")
    caplog.set_level(logging.WARNING, logger="edge.clock")
    meter = "CLK-OLD-1"
    assert clocks.stamp(meter, T - 3600 * S, T) == T - 3600 * S  # an old value: no evidence
    assert sample("edge_device_clock_offset_seconds", meter) is None
    assert clocks.stamp(meter, T + 95 * S, T) == T
    assert clocks.stamp(meter, T - 3600 * S, T) == T - 3600 * S  # still off: no "back"
    assert clocks.is_off(meter)
    assert sample("edge_device_clock_offset_seconds", meter) == 95.0
    assert sample("edge_device_clock_restamped_total", meter) == 1
    lines = [r.getMessage() for r in caplog.records if meter in r.getMessage()]
    assert len(lines) == 1 and "OPC UA source timestamps +95.0 s" in lines[0]
    assert "the gateway's receive time" in lines[0]


# ----------------------------------------------------------------------- config


def test_tolerance_defaults_to_10_s_and_is_set_in_either_mode(tmp_path: Path) -> None:
    assert ClockConfig().device_tolerance_s == DEVICE_TOLERANCE_S == 10.0
    assert load_with(tmp_path, "").clock.device_tolerance_s == 10.0
    config = load_with(tmp_path, "[clock]\ndevice_tolerance_s = 2.5\n")
    assert config.clock == ClockConfig(mode="system", device_tolerance_s=2.5)
    scaled = load_with(tmp_path, """
        [clock]
        mode = "scaled"
        origin = "2025-01-06T06:00:00Z"
        origin_real_unix_ns = 1
        speed = 100.0
        device_tolerance_s = 30.0
    """)
    assert scaled.clock.device_tolerance_s == 30.0


@pytest.mark.parametrize(("value", "expected"), [
    ("0.0", "greater than 0"), ("-5.0", "greater than 0"), ("1e9", "less than or equal"),
    ("nan", "finite"), ('"10 s"', "valid number"),
])
def test_bad_tolerances_name_the_file_and_key(tmp_path: Path, value: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=rf"clock\.device_tolerance_s: .*{expected}") as err:
        load_with(tmp_path, f"[clock]\ndevice_tolerance_s = {value}\n")
    assert str(tmp_path / "site.toml") in str(err.value)


def test_agent_hands_the_tolerance_to_every_poller_and_subscriber(tmp_path: Path) -> None:
    key = write_key(tmp_path)
    config = load_with(tmp_path, "[clock]\ndevice_tolerance_s = 25.0\n")
    config = config.model_copy(update={"opcua": (server_config("opc.tcp://127.0.0.1:4840/x"),)})
    agent = Agent(config, signing_key=key, publishers=[MemoryOutput()])
    assert [p.device_clocks.tolerance_s for p in agent.pollers] == [25.0]
    assert [s.device_clocks.tolerance_s for s in agent.subscribers] == [25.0]


# -------------------------------------------------- Modbus: pymodbus's own server


class SetClock:
    """A gateway clock the test sets (an NTP-synchronised gateway, frozen)."""

    def __init__(self, now_ns: int) -> None:
        self.now = now_ns

    def now_ns(self) -> int:
        return self.now


# a gas meter: volume (float32) and its own clock in epoch ms (uint64), as carbon.toml
GAS = Profile.model_validate({"family": "gas", "points": [
    {"channel": "volume", "address": 0, "type": "float32", "unit": "m3"},
    {"channel": "clock", "address": 2, "type": "uint64", "scale": 0.001, "unit": "s",
     "kind": "clock"},
]})
DEVICE_MS = 1_741_000_000_250  # the meter's clock register: 2025-03-03T11:06:40.250Z


def gas_registers(volume: float, clock_ms: int) -> list[int]:
    return list(struct.unpack(">2H", struct.pack(">f", volume))
                + struct.unpack(">4H", struct.pack(">Q", clock_ms)))


async def test_modbus_device_clock_off_either_way_is_replaced_by_gateway_time(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="edge.clock")
    device_ns = DEVICE_MS * 1_000_000
    # the gateway clock against the device's: device ahead 95 s, 42.5 s behind, 3 s ahead
    timeline = [("ahead", device_ns - 95 * S), ("behind", device_ns + 42_500_000_000),
                ("within", device_ns - 3 * S)]
    clock = SetClock(timeline[0][1])
    got: dict[str, list[int]] = {}
    async with pymodbus_peer(gas_registers(4711.5, DEVICE_MS)) as (_, port):
        poller = ModbusPoller(device(GAS, port, meter="CLK-GAS"), clock,
                              device_tolerance_s=10.0)
        await poller.start()
        try:
            for name, gateway_ns in timeline:
                clock.now = gateway_ns
                result = await poller.poll()
                assert not result.errors and result.value == [4711.5]
                got[name] = result.ts_ns
        finally:
            await poller.close()
    assert got == {"ahead": [device_ns - 95 * S], "behind": [device_ns + 42_500_000_000],
                   "within": [device_ns]}
    assert sample("edge_device_clock_restamped_total", "CLK-GAS") == 2
    assert sample("edge_device_clock_offset_seconds", "CLK-GAS") == 3.0
    lines = [r.getMessage() for r in caplog.records if "CLK-GAS" in r.getMessage()]
    assert len(lines) == 2  # off (+95 s; still off at -42.5 s: no second warning), back
    assert "device clock +95.0 s off" in lines[0] and "back within" in lines[1]


async def test_modbus_clock_gateway_mode_never_judges_the_device_clock() -> None:
    clock = SetClock(DEVICE_MS * 1_000_000 - 95 * S)
    async with pymodbus_peer(gas_registers(1.0, DEVICE_MS)) as (_, port):
        poller = ModbusPoller(device(GAS, port, meter="CLK-GWMODE", clock="gateway"), clock)
        await poller.start()
        try:
            result = await poller.poll()
        finally:
            await poller.close()
    assert result.ts_ns == [clock.now]
    assert sample("edge_device_clock_offset_seconds", "CLK-GWMODE") is None


# ----------------------------------------------------- OPC UA: an asyncua server


def utc(ns: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC)


@pytest.mark.slow
async def test_opcua_source_timestamp_ahead_gets_receive_time_and_old_values_keep_theirs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="edge.clock")
    restamped_before = sample("edge_device_clock_restamped_total", "M1") or 0.0
    server = PlantServer()
    await server.start()
    sink = Sink()
    sub = OpcUaSubscriber(server_config(server.url), sink.on_readings, sink.on_batch_events,
                          device_tolerance_s=10.0)

    async def sent(meter: str, value: float, ts_ns: int) -> tuple[int, int, wire.Reading]:
        before = time.time_ns()
        await server.write(f"{meter}.Energy", value, utc(ts_ns))
        await sink.until(lambda: any(r.value == value for r in sink.readings))
        reading = next(r for r in sink.readings if r.value == value)
        return before, time.time_ns(), reading

    try:
        async for _ in _running(sub):
            await asyncio.wait_for(sub.connected.wait(), 10)
            ahead = await sent("M1", 1.5, time.time_ns() + 95 * S)
            old = await sent("M2", 2.5, time.time_ns() - 3600 * S)
            near = await sent("M1", 3.5, time.time_ns() + 2 * S)
    finally:
        await server.stop()
    before, after, reading = ahead  # impossible: from the future -> the receive time
    assert before <= reading.ts_ns <= after
    _, _, reading = old  # an hour old: kept, the meter's word
    assert round((reading.ts_ns - old[0]) / S) == -3600
    _, _, reading = near  # 2 s ahead: within tolerance, kept
    assert round((reading.ts_ns - near[0]) / S) == 2
    assert sample("edge_device_clock_restamped_total", "M1") == restamped_before + 1
    assert sample("edge_device_clock_offset_seconds", "M1") == pytest.approx(2.0, abs=0.5)
    # M2's gauge shows its initial value's offset, not the hour-old value's (no evidence)
    assert abs(sample("edge_device_clock_offset_seconds", "M2") or 0.0) < 10
    lines = [r.getMessage() for r in caplog.records if r.name == "edge.clock"]
    assert len(lines) == 2, lines
    assert re.match(r"meter M1: OPC UA source timestamps \+9[45]\.\d s off the gateway clock",
                    lines[0]), lines[0]
    assert lines[1].startswith("meter M1: OPC UA source timestamps back within the 10 s")
