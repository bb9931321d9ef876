"""PLC batch registers over Modbus TCP, against pymodbus's own server.

The test plays the PLC program: it writes the batch number, product code,
quantity and running coil with a Modbus client, as a PLC's logic would set
them, and restarts the server (a PLC power cycle) on the same port.
"""

from __future__ import annotations

import asyncio
import struct

import pytest
from pydantic import ValidationError
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from deploy.procs import free_port
from edge import wire
from edge.modbus_batches import PlcBatchSource
from edge.modbus_batches_config import PlcBatches

S = 1_000_000_000
T = 1_736_150_400 * S


class StepClock:
    """Gateway time set by the test: the poll that sees a change stamps it."""

    def __init__(self) -> None:
        self.now = T

    def now_ns(self) -> int:
        return self.now


class Plc:
    """A PLC image on pymodbus's server: holding 100.. and coils; restartable."""

    def __init__(self) -> None:
        self.port = free_port()
        self.holding = [0] * 120
        self.coils = [False] * 16
        self.server: ModbusTcpServer | None = None

    async def start(self) -> None:
        hr = [SimData(0, values=list(self.holding), datatype=DataType.REGISTERS)]
        bits = [SimData(0, values=list(self.coils), datatype=DataType.BITS)]
        device = SimDevice(id=1, simdata=(bits, bits, hr, hr))
        self.server = ModbusTcpServer(device, address=("127.0.0.1", self.port))
        await self.server.serve_forever(background=True)

    async def stop(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            await server.shutdown()

    async def set(self, number: int | None = None, product: int | None = None,
                  quantity: float | None = None, running: bool | None = None) -> None:
        """What the PLC program writes; kept for a restart."""
        if number is not None:
            self.holding[100:102] = [number >> 16, number & 0xFFFF]
        if product is not None:
            self.holding[102] = product
        if quantity is not None:
            self.holding[103:105] = list(struct.unpack(">HH", struct.pack(">f", quantity)))
        if running is not None:
            self.coils[5] = running
        if self.server is None:
            return
        client = AsyncModbusTcpClient("127.0.0.1", port=self.port)
        await client.connect()
        try:
            await client.write_registers(100, self.holding[100:105], device_id=1)
            await client.write_coil(5, self.coils[5], device_id=1)
        finally:
            client.close()


def config(port: int, **kw: object) -> PlcBatches:
    base: dict[str, object] = {
        "asset": "L2-kiln", "host": "127.0.0.1", "port": port,
        "batch_number": {"address": 100, "type": "uint32"},
        "batch_id_format": "K-{number:05d}",
        "product_code": {"address": 102}, "products": {"1": "clinker", "2": "cement"},
        "quantity": {"address": 103, "type": "float32"}, "unit": "t",
        "running": {"address": 5, "table": "coil"},
        "timeout_s": 0.5, "reconnect_delay_s": 0.05, "reconnect_delay_max_s": 0.1,
    }
    base.update(kw)
    return PlcBatches.model_validate(base)


def ev(batch: str, product: str, kind: str, at_s: int, qty: float | None = None,
       ) -> wire.BatchEvent:
    return wire.BatchEvent("L2-kiln", batch, product, kind, T + at_s * S,  # type: ignore[arg-type]
                           qty, "t" if qty is not None else None)


@pytest.mark.timeout(60)
async def test_plc_batch_registers_give_start_and_end_across_a_plc_restart(caplog) -> None:
    plc = Plc()
    await plc.start()
    clock = StepClock()
    src = PlcBatchSource(config(plc.port), lambda _e: None, clock)
    events: list[wire.BatchEvent] = []

    async def poll_at(at_s: int) -> list[wire.BatchEvent]:
        clock.now = T + at_s * S
        got = await src.poll()
        events.extend(got)
        return got

    try:
        await src.start()
        assert await poll_at(0) == [] and src.live  # number 0: no batch
        await plc.set(number=17, product=1, running=True)
        assert await poll_at(10) == [ev("K-00017", "clinker", "start", 10)]
        await plc.set(quantity=41.5)
        assert await poll_at(20) == []
        # the next batch without a clear: number, product and a reset quantity at once
        await plc.set(number=18, product=2, quantity=0.0)
        assert await poll_at(30) == [ev("K-00017", "clinker", "end", 30, 41.5),
                                     ev("K-00018", "cement", "start", 30)]
        # PLC power cycle: unreachable, then back with the batch finished and cleared
        await plc.stop()
        assert await poll_at(40) == [] and not src.live
        await plc.set(number=0, quantity=12.0, running=False)
        await plc.start()
        for at_s in range(50, 60):  # reconnect backoff: a few polls
            if got := await poll_at(at_s):
                break
            await asyncio.sleep(0.1)
        # ended at the first poll that read the PLC again, with the quantity it shows
        assert got == [ev("K-00018", "cement", "end", at_s, 12.0)]
        assert src.live
        # the running coil: the number is set first, the batch runs when the coil is on
        await plc.set(number=19, product=7, quantity=0.0)
        assert await poll_at(100) == []
        await plc.set(running=True)
        with caplog.at_level("WARNING", logger="edge.modbus_batches"):
            assert await poll_at(110) == [ev("K-00019", "7", "start", 110)]
        await plc.set(quantity=3.25)
        await poll_at(120)
        await plc.set(running=False)
        assert await poll_at(130) == [ev("K-00019", "7", "end", 130, 3.25)]
    finally:
        await src.close()
        await plc.stop()
    assert any("product code 7 is not in products" in r.getMessage() for r in caplog.records)
    assert [(e.batch_id, e.kind) for e in events] == [
        ("K-00017", "start"), ("K-00017", "end"), ("K-00018", "start"), ("K-00018", "end"),
        ("K-00019", "start"), ("K-00019", "end")]


async def test_a_batch_running_when_the_agent_starts_is_not_restarted(caplog) -> None:
    plc = Plc()
    await plc.set(number=5, product=1, running=True)
    await plc.start()
    src = PlcBatchSource(config(plc.port), lambda _e: None, StepClock())
    try:
        await src.start()
        with caplog.at_level("WARNING", logger="edge.modbus_batches"):
            assert await src.poll() == []
        await plc.set(number=6)
        got = await src.poll()
    finally:
        await src.close()
        await plc.stop()
    assert [(e.batch_id, e.kind) for e in got] == [("K-00005", "end"), ("K-00006", "start")]
    assert any("batch K-00005 was already running when the agent started" in r.getMessage()
               for r in caplog.records)


def test_config_refuses_a_float_batch_number_and_a_bad_format() -> None:
    with pytest.raises(ValidationError, match="batch number or product code is an integer"):
        config(502, batch_number={"address": 1, "type": "float32"})
    with pytest.raises(ValidationError, match="batch_id_format"):
        config(502, batch_id_format="K-{nr}")
    assert config(502, batch_id_format="{asset}/{number}").batch_id(3) == "L2-kiln/3"
    assert config(502).batch_id(0) == ""


async def test_check_reads_the_batch_registers_and_says_the_batch_state(tmp_path) -> None:
    import io

    from edge.check import check
    from edge.config import AgentConfig

    plc = Plc()
    await plc.set(number=5, product=1, quantity=7.5, running=True)
    await plc.start()
    cfg = AgentConfig.model_validate({
        "site": "s", "gateway": "g", "signing_key": tmp_path / "k.pem",
        "spool": {"path": tmp_path / "spool.db"}, "modbus_batches": [config(plc.port)]})
    out = io.StringIO()
    try:
        code = await asyncio.to_thread(check, cfg, out)
    finally:
        await plc.stop()
    text = out.getvalue()
    assert code == 0, text
    assert "batch_number" in text and "0000 0005" in text and "7.5" in text
    assert (f"batch state plc L2-kiln at 127.0.0.1:{plc.port}: batch K-00005 (clinker) "
            "running first seen at") in text
