"""asyncua's client reads the OPC UA address space of docs/simulators.md."""

from __future__ import annotations

import dataclasses
import math
from datetime import UTC, datetime, timedelta

import pytest
from asyncua import Client, ua

from simulators.opcua_server import MIN_DATETIME
from simulators.runner import PlantRunner

URI = "urn:plantprint:simulator"


async def _read(client: Client, idx: int, node: str) -> ua.DataValue:
    return await client.get_node(ua.NodeId(node, idx)).read_data_value(raise_on_bad_status=False)


def _at(runner: PlantRunner, seconds: float) -> datetime:
    return runner.sc.scenario.start + timedelta(seconds=seconds)


def _utc(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


async def test_states_batches_and_meters(plant_factory) -> None:
    async with plant_factory("small", duration_s=3300) as runner:
        url = runner.endpoints()["opcua"]["url"]
        async with Client(url, timeout=5) as client:
            idx = await client.get_namespace_index(URI)
            # browse path Objects/Plant/Assets/L1-oven/State
            state = await client.nodes.objects.get_child(
                [f"{idx}:Plant", f"{idx}:Assets", f"{idx}:L1-oven", f"{idx}:State"])
            assert await state.read_value() == "production"
            assert (await _read(client, idx, "L1-oven.StateCode")).Value.Value == 3
            assert (await _read(client, idx, "L1-press.State")).Value.Value == "idle"
            # two concurrent batches on the oven, one ended on the press
            slots = {}
            for slot in ("L1-oven.Batch0", "L1-oven.Batch1", "L1-press.Batch0"):
                slots[slot] = {n: (await _read(client, idx, f"{slot}.{n}")).Value.Value
                               for n in ("BatchId", "Running", "StartTime", "EndTime",
                                         "Quantity", "Unit", "Product")}
            assert slots["L1-oven.Batch0"]["BatchId"] == "B-002"
            assert slots["L1-oven.Batch0"]["Running"] is True
            assert _utc(slots["L1-oven.Batch0"]["StartTime"]) == _at(runner, 1200)
            assert slots["L1-oven.Batch1"]["BatchId"] == "B-003"
            assert slots["L1-oven.Batch1"]["Product"] == "brick-B"
            press = slots["L1-press.Batch0"]
            assert (press["BatchId"], press["Running"], press["Quantity"], press["Unit"]) == (
                "B-001", False, 12.0, "t")
            assert _utc(press["EndTime"]) == _at(runner, 2400)
            # an energy counter and a flow meter, with source timestamps and status
            ms = runner.model.by_id["M-DRIVE"]
            dv = await _read(client, idx, "M-DRIVE.Energy")
            assert math.isclose(dv.Value.Value, ms.cfg.counter_start + ms.energy, rel_tol=1e-12)
            assert dv.StatusCode.is_good()
            assert _utc(dv.SourceTimestamp) == _at(runner, 3300)
            flow = runner.model.by_id["M-STEAM"]
            dv = await _read(client, idx, "M-STEAM.Flow")
            assert math.isclose(dv.Value.Value, flow.rate, rel_tol=1e-12)
            vol = (await _read(client, idx, "M-STEAM.Volume")).Value.Value
            assert math.isclose(vol, flow.cfg.counter_start + flow.energy, rel_tol=1e-12)


async def test_dropout_skew_and_late_end(plant_factory) -> None:
    async with plant_factory("faults", duration_s=3700) as runner:
        url = runner.endpoints()["opcua"]["url"]
        async with Client(url, timeout=5) as client:
            idx = await client.get_namespace_index(URI)
            dv = await _read(client, idx, "L2-COOLER-FANS-PLC.Energy")
            assert dv.StatusCode.value == ua.StatusCodes.BadNoCommunication
            dv = await _read(client, idx, "L2-KILN-DRIVE-PLC.Energy")
            assert dv.StatusCode.is_good()
            assert _utc(dv.SourceTimestamp) == _at(runner, 3700 - 42.5)  # skewed device clock
        # the kiln's first batch truly ends at 3960 but its end event is 480 s late
        runner.opt = dataclasses.replace(runner.opt, duration_s=4200)
        await runner.run()
        assert runner.model.schedule.state["L2-kiln"] != "production"
        async with Client(url, timeout=5) as client:
            idx = await client.get_namespace_index(URI)
            assert (await _read(client, idx, "L2-kiln.Batch0.Running")).Value.Value is True
        runner.opt = dataclasses.replace(runner.opt, duration_s=4460)
        await runner.run()
        async with Client(url, timeout=5) as client:
            idx = await client.get_namespace_index(URI)
            assert (await _read(client, idx, "L2-kiln.Batch0.Running")).Value.Value is False
            end = (await _read(client, idx, "L2-kiln.Batch0.EndTime")).Value.Value
            assert _utc(end) == _at(runner, 3960)  # the true end, published late


async def test_server_restart_comes_back_on_the_same_port(plant_factory) -> None:
    async with plant_factory("faults", duration_s=4560) as runner:
        url = runner.endpoints()["opcua"]["url"]
        with pytest.raises((OSError, TimeoutError)):
            async with Client(url, timeout=2):
                pass
        runner.opt = dataclasses.replace(runner.opt, duration_s=4700)
        await runner.run()
        async with Client(url, timeout=5) as client:
            idx = await client.get_namespace_index(URI)
            assert (await _read(client, idx, "L2-kiln.Line")).Value.Value == "L2"
            dv = await _read(client, idx, "L2-KILN-DRIVE-PLC.Energy")
            assert _utc(dv.SourceTimestamp) == _at(runner, 4700 - 42.5)  # fresh, still skewed


async def _slot(client: Client, idx: int, slot: str) -> dict[str, ua.DataValue]:
    return {n: await _read(client, idx, f"{slot}.{n}")
            for n in ("BatchId", "Running", "StartTime", "EndTime", "Quantity")}


async def test_late_end_on_a_full_asset_then_the_waiting_batch_on_its_slot(
    plant_factory, late_end_small,
) -> None:
    """B-002's end goes out 300 s late, the second B-004 starts with both oven slots taken:
    no crash; the end shows on B-002's slot, then B-004 takes that slot a step later."""
    async with plant_factory(late_end_small(300), duration_s=4501) as runner:  # t <= 4500
        url = runner.endpoints()["opcua"]["url"]
        async with Client(url, timeout=5) as client:
            idx = await client.get_namespace_index(URI)
            ended = await _slot(client, idx, "L1-oven.Batch0")
            assert ended["BatchId"].Value.Value == "B-002"
            assert ended["Running"].Value.Value is False
            assert _utc(ended["EndTime"].Value.Value) == _at(runner, 4200)  # the true end
            assert _utc(ended["Running"].SourceTimestamp) == _at(runner, 4500)  # published late
            assert ended["Quantity"].Value.Value == 12.0
            other = await _slot(client, idx, "L1-oven.Batch1")
            assert (other["BatchId"].Value.Value, other["Running"].Value.Value) == ("B-003", True)
        runner.opt = dataclasses.replace(runner.opt, duration_s=4502)
        await runner.run()
        async with Client(url, timeout=5) as client:
            idx = await client.get_namespace_index(URI)
            waited = await _slot(client, idx, "L1-oven.Batch0")
            assert waited["BatchId"].Value.Value == "B-004"
            assert waited["Running"].Value.Value is True
            assert _utc(waited["StartTime"].Value.Value) == _at(runner, 4500)  # the true start
            assert _utc(waited["Running"].SourceTimestamp) == _at(runner, 4501)  # shown then
            assert _utc(waited["EndTime"].Value.Value) == MIN_DATETIME  # not ended yet
            assert waited["Quantity"].Value.Value == 0.0
            other = await _slot(client, idx, "L1-oven.Batch1")
            assert other["BatchId"].Value.Value == "B-003"
        # and on to B-004's end, on the slot it got
        runner.opt = dataclasses.replace(runner.opt, duration_s=6001)
        await runner.run()
        async with Client(url, timeout=5) as client:
            idx = await client.get_namespace_index(URI)
            done = await _slot(client, idx, "L1-oven.Batch0")
            assert (done["BatchId"].Value.Value, done["Running"].Value.Value) == ("B-004", False)
            assert _utc(done["EndTime"].Value.Value) == _at(runner, 6000)
