"""--check: one read of every point, a readable table, non-zero exit when a point failed."""

from __future__ import annotations

import io
import re
import socket

import pytest
from test_modbus import INTENDED, PROFILES, simulator_port

from edge.check import check, rows_of, run_check
from edge.config import AgentConfig, ModbusDevice
from edge.modbus import ModbusPoller
from edge.profiles import load_profile


def _config(devices: list[ModbusDevice], tmp) -> AgentConfig:
    return AgentConfig.model_validate({
        "site": "s", "gateway": "g", "signing_key": tmp / "k.pem",
        "spool": {"path": tmp / "spool.db"}, "modbus": devices,
    })


def _device(meter: str, port: int, unit: int, profile: str) -> ModbusDevice:
    return ModbusDevice(meter=meter, host="127.0.0.1", port=port, unit_id=unit,
                        profile=load_profile(PROFILES / f"{profile}.toml"), timeout_s=0.3)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_rows_show_registers_value_unit_and_quality():
    port = simulator_port({1: ("em24", INTENDED["em24"]), 2: ("carbon", INTENDED["carbon"])})
    await port.start()
    try:
        em24, carbon = _device("M-OVEN", port.port, 1, "em24"), _device("M-AIR", port.port, 2,
                                                                         "carbon")
        rows = []
        for dev in (em24, carbon):
            poller = ModbusPoller(dev)
            await poller.start()
            rows += rows_of(await poller.poll(), dev)
            await poller.close()
    finally:
        await port.close()
    by = {(r.meter, r.point): r for r in rows}
    assert len(rows) == 13 + 7 and all(r.ok for r in rows)
    energy = by["M-OVEN", "energy"]
    # uint32 CDAB, 2^32 - 3 counts of 0.1 kWh: low word first
    assert energy.registers == (0xFFFD, 0xFFFF)
    assert energy.value == (2**32 - 3) * 0.1 and energy.unit == "kWh"
    assert by["M-AIR", "clock"].quality == "clock"


async def test_failed_points_are_bad_rows(tmp_path):
    dev = _device("M-GONE", _closed_port(), 1, "flow-gas")
    rows, errors = await run_check(_config([dev], tmp_path))
    assert [r.point for r in rows] == [p.channel for p in dev.points]
    assert all(r.quality == "bad: connect" and r.value is None for r in rows)
    # the connect failure itself, not the backoff wait that a second attempt would report
    # reconnect_delay_s 0.5 with equal jitter (edge.backoff): the first wait is 0.25-0.5 s
    assert len(errors) == 1 and re.fullmatch(
        rf"meter M-GONE: cannot connect to 127\.0\.0\.1:{dev.port} unit 1, "
        r"next try in 0\.[2-5] s", errors[0]), errors


def test_check_exit_code_and_table(tmp_path):
    import asyncio

    async def serve_and_check(devices_of):
        port = simulator_port({1: ("sdm630", INTENDED["sdm630"])})
        await port.start()
        try:
            out = io.StringIO()
            code = await asyncio.to_thread(check, _config(devices_of(port.port), tmp_path), out)
        finally:
            await port.close()
        return code, out.getvalue()

    code, text = asyncio.run(serve_and_check(lambda p: [_device("M-PRESS", p, 1, "sdm630")]))
    assert code == 0
    assert "M-PRESS" in text and "voltage_l1" in text and "231.2" in text
    assert "14 of 14 points good" in text
    code, text = asyncio.run(serve_and_check(lambda p: [
        _device("M-PRESS", p, 1, "sdm630"), _device("M-GONE", _closed_port(), 1, "sdm630"),
    ]))
    assert code == 1
    assert "14 of 28 points good" in text and "meter M-GONE" in text


# ------------------------------------------------------------------ OPC UA


@pytest.mark.slow
async def test_opcua_nodes_are_read_once_against_the_simulator(tmp_path):
    """The simulator's OPC UA server: every node a row; an unknown node fails the check."""
    import asyncio
    import tomllib

    from simulators.config import load_scenario
    from simulators.runner import PlantRunner, RunOptions
    from tests.edge.test_opcua import SMALL_OPCUA_TOML, SMALL_SCENARIO

    runner = PlantRunner(load_scenario(SMALL_SCENARIO),
                         RunOptions(speed=60, port_base=0, opcua_port=0, duration_s=60))
    await runner.start()
    try:
        url = runner.endpoints()["opcua"]["url"]  # type: ignore[index]
        server = {**tomllib.loads(SMALL_OPCUA_TOML)["opcua"][0], "endpoint": url}
        good = AgentConfig.model_validate({
            "site": "s", "gateway": "g", "signing_key": tmp_path / "k.pem",
            "spool": {"path": tmp_path / "spool.db"}, "opcua": [server],
        })
        out = io.StringIO()
        code = await asyncio.to_thread(check, good, out)
        text = out.getvalue()
        assert code == 0, text
        energy = next(line for line in text.splitlines() if "M-DRIVE.Energy" in line)
        assert "energy" in energy and "kWh" in energy and "good" in energy
        assert float(energy.split("│")[4]) > 0  # the scenario's counter start
        # 4 meter nodes, 2 state codes, 3 slots of 7 variables each
        assert "Batch1.Running" in text and "27 of 27 points good" in text
        assert "batch state opcua sim-plc L1-oven slot Batch1: " in text
        assert "OPC UA servers are not part of --check" not in text
        wrong = {**server, "nodes": [*server["nodes"], {
            "node": "nsu=urn:plantprint:simulator;s=M-NOPE.Energy", "meter": "M-NOPE",
            "channel": "energy", "unit": "kWh"}]}
        bad = good.model_copy(update={"opcua": (good.opcua[0].model_validate(wrong),)})
        out = io.StringIO()
        code = await asyncio.to_thread(check, bad, out)
        text = out.getvalue()
        assert code == 1
        assert "bad: BadNodeIdUnknown" in text and "27 of 28 points good" in text
    finally:
        await runner.close()
    # a server that is not there: every node a bad row and the connect error
    gone = good.model_copy(update={"opcua": (good.opcua[0].model_copy(
        update={"endpoint": f"opc.tcp://127.0.0.1:{_closed_port()}/x", "timeout_s": 1.0}),)})
    out = io.StringIO()
    assert await asyncio.to_thread(check, gone, out) == 1
    assert "0 of 27 points good" in out.getvalue() and "cannot connect" in out.getvalue()


# ------------------------------------------------- OPC UA batch mappings (an MES)


async def _mes_check(tmp_path, url: str, batches: list[dict],
                     nodes: list[dict] | None = None) -> tuple[int, str]:
    """--check against the MES test server: the exit code and the report (plain text)."""
    import asyncio
    from unittest import mock

    cfg = AgentConfig.model_validate({
        "site": "s", "gateway": "g", "signing_key": tmp_path / "k.pem",
        "spool": {"path": tmp_path / "spool.db"},
        "opcua": [{"name": "mes", "endpoint": url, "timeout_s": 2.0, "nodes": nodes or [],
                   "batches": batches}],
    })
    out = io.StringIO()
    with mock.patch.dict("sys.modules", {"rich.console": None}):  # the plain-text table
        code = await asyncio.to_thread(check, cfg, out)
    return code, out.getvalue()


def _line(text: str, *needles: str) -> str:
    return next(line for line in text.splitlines() if all(n in line for n in needles))


MES = "ns=1;s=Line1.MES."


@pytest.mark.slow
async def test_check_shows_source_times_and_the_batch_state_of_a_mapping(tmp_path):
    import datetime as dt

    from tests.edge.mes_server import MesServer

    server = MesServer()
    t = dt.datetime(2025, 1, 6, 6, 0, 0, 250000, tzinfo=dt.UTC)
    await server.start()
    try:
        await server.write_record(t, Product="clinker", BatchId="B-7", Quantity_t=12.5)
        code, text = await _mes_check(tmp_path, server.url, [{
            "asset": "L1-press", "batch_id": f"{MES}BatchId", "product": f"{MES}Product",
            "quantity": f"{MES}Quantity_t", "unit": "t"}])
    finally:
        await server.stop()
    assert code == 0, text
    row = _line(text, f"{MES}BatchId")
    assert "L1-press" in row and "batch_id" in row and "'B-7'" in row
    assert "2025-01-06T06:00:00.250Z" in row and row.rstrip().endswith("good")
    assert "12.5" in _line(text, f"{MES}Quantity_t") and " t " in _line(text, "Quantity_t")
    assert "'clinker'" in _line(text, f"{MES}Product")
    assert ("batch state opcua mes L1-press batches: batch B-7 (clinker) running since "
            "2025-01-06T06:00:00Z") in text


@pytest.mark.slow
async def test_check_fails_a_missing_node_a_wrong_type_and_text_among_meters(tmp_path):
    """Each failure names the node as configured and the status or the type, and says
    where text belongs; the exit code is 1."""
    from tests.edge.mes_server import MesServer

    server = MesServer()
    await server.start()
    try:
        code, text = await _mes_check(tmp_path, server.url, [
            {"asset": "L1-press", "batch_id": f"{MES}BatchNo", "product": f"{MES}Product",
             "running": f"{MES}Running"},
            {"asset": "L2-kiln", "batch_id": f"{MES}Quantity_t", "quantity": f"{MES}Product",
             "unit": "t"},
        ], nodes=[{"node": "ns=1;s=Line1.Meter.Serial", "meter": "M1", "channel": "serial"},
                  {"node": "ns=1;s=Line1.Meter.Energy_kWh", "meter": "M1",
                   "channel": "energy", "unit": "kWh"}])
    finally:
        await server.stop()
    assert code == 1, text
    missing = _line(text, f"{MES}BatchNo")
    assert "L1-press" in missing and missing.rstrip().endswith("bad: BadNodeIdUnknown")
    wrong = _line(text, "L2-kiln", f"{MES}Quantity_t")
    assert wrong.rstrip().endswith("bad: batch_id: Double, expected text or an integer")
    qty = _line(text, "L2-kiln", f"{MES}Product")
    assert "bad: quantity: String ''" in qty and "expected a number" in qty
    serial = _line(text, "Line1.Meter.Serial")
    assert serial.rstrip().endswith(
        "bad: String: text is not a meter reading: map it in [[opcua.batches]] "
        "(batch_id, product, unit)")
    assert "'SN-0042-A'" in serial
    assert _line(text, "Energy_kWh").rstrip().endswith("good")
    assert "batch state opcua mes L1-press batches: unknown (batch_id not usable)" in text
