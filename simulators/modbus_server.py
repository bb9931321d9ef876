"""A Modbus TCP server (asyncio) serving device images by unit id, with faults.

Written here rather than borrowed so that faults (no answer, device busy,
refused connections) are exact and a read costs one slice of a bytearray.
Function codes 3 and 4; see docs/simulators.md for exception codes.
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from simulators.devices import DeviceImage

logger = logging.getLogger(__name__)

ILLEGAL_FUNCTION = 0x01
ILLEGAL_DATA_ADDRESS = 0x02
ILLEGAL_DATA_VALUE = 0x03
DEVICE_BUSY = 0x06
GATEWAY_TARGET_FAILED = 0x0B
_MBAP = struct.Struct(">HHHB")
_TABLES = {3: "holding", 4: "input"}


@dataclass
class UnitSlot:
    """One device behind a port, and its transport fault mode."""

    meter: str
    image: DeviceImage
    mode: str = "ok"  # ok | drop | busy
    busy_probability: float = 0.0


@dataclass
class PortStats:
    requests: int = 0
    exceptions: int = 0
    dropped: int = 0
    per_unit: dict[int, int] = field(default_factory=dict)


def answer(units: dict[int, UnitSlot], frame: bytes, rng: random.Random,
           stats: PortStats) -> bytes | None:
    """The response to one complete ADU, or None for no answer (pure but for rng)."""
    tid, pid, _, unit = _MBAP.unpack_from(frame)
    if pid != 0 or len(frame) < 8:
        return None
    fc = frame[7]
    stats.requests += 1
    slot = units.get(unit)
    if slot is None:
        return _exception(tid, unit, fc, GATEWAY_TARGET_FAILED, stats)
    if slot.mode == "drop":
        stats.dropped += 1
        return None
    if slot.mode == "busy" and rng.random() < slot.busy_probability:
        return _exception(tid, unit, fc, DEVICE_BUSY, stats)
    table = _TABLES.get(fc)
    if table is None:
        return _exception(tid, unit, fc, ILLEGAL_FUNCTION, stats)
    if len(frame) < 12:
        return _exception(tid, unit, fc, ILLEGAL_DATA_VALUE, stats)
    address, count = struct.unpack_from(">HH", frame, 8)
    if not 1 <= count <= 125:
        return _exception(tid, unit, fc, ILLEGAL_DATA_VALUE, stats)
    data = slot.image.tables[table]  # type: ignore[index]
    if 2 * (address + count) > len(data):
        return _exception(tid, unit, fc, ILLEGAL_DATA_ADDRESS, stats)
    payload = data[2 * address: 2 * (address + count)]
    return _MBAP.pack(tid, 0, 3 + 2 * count, unit) + bytes((fc, 2 * count)) + payload


def _exception(tid: int, unit: int, fc: int, code: int, stats: PortStats) -> bytes:
    stats.exceptions += 1
    return _MBAP.pack(tid, 0, 3, unit) + bytes((fc | 0x80, code))


class _Protocol(asyncio.Protocol):
    def __init__(self, port: ModbusPort) -> None:
        self.port = port
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.port.connections.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.port.connections.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while len(self.buf) >= 7:
            length = int.from_bytes(self.buf[4:6], "big")
            if length < 2 or length > 254:  # not Modbus TCP: drop the connection
                assert self.transport is not None
                self.transport.close()
                return
            if len(self.buf) < 6 + length:
                return
            frame = bytes(self.buf[:6 + length])
            del self.buf[:6 + length]
            slot = self.port.units.get(frame[6])
            if self.port.before_answer is not None and slot is not None:
                self.port.before_answer(slot)
            reply = answer(self.port.units, frame, self.port.rng, self.port.stats)
            if reply is not None and self.transport is not None:
                self.transport.write(reply)


class ModbusPort:
    """One listening TCP port with its units (one device or a gateway)."""

    def __init__(self, host: str, port: int, units: dict[int, UnitSlot], seed: int = 0) -> None:
        self.host = host
        self.port = port
        self.units = units
        self.rng = random.Random(seed)
        self.stats = PortStats()
        self.connections: set[asyncio.Transport] = set()
        self._server: asyncio.Server | None = None
        # called with the unit's slot before each request to it is answered (the runner
        # brings that device's registers to the instant of the read, as a real meter's)
        self.before_answer: Callable[[UnitSlot], None] | None = None

    @property
    def listening(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        """Listen; a port of 0 becomes the bound port (kept for restarts)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Protocol(self), self.host, self.port,
                                                reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        logger.info("modbus port %s:%s serves units %s", self.host, self.port,
                    sorted(self.units))

    async def close(self) -> None:
        """Stop listening and drop every connection (clients see a refusal)."""
        server, self._server = self._server, None
        for transport in list(self.connections):
            transport.abort()
        self.connections.clear()
        if server is not None:
            server.close()
            await server.wait_closed()
