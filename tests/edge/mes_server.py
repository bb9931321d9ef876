"""An OPC UA server laid out like a plant's MES, not like the simulator.

``Objects/Line1/MES`` with ``BatchId`` (String), ``Product`` (String),
``Quantity_t`` (Double), ``Unit`` (String), ``Running`` (Boolean) and
``LineState`` (Int32), plus ``Line1.Meter.Energy_kWh`` (Double) and
``Line1.Meter.Serial`` (a String, which is no meter reading). Node ids are
strings in namespace 1 (``ns=1;s=Line1.MES.BatchId``), as many vendor servers
put them. Values are kept across ``stop``/``start`` on the same port, with the
source timestamps they were written with, as a restarted MES shows them.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar

from asyncua import ua
from asyncua.server.server import Server

from deploy.procs import free_port
from simulators.opcua_server import close_client_sessions

UTC = dt.UTC


class MesServer:
    VARIABLES: ClassVar[dict[str, tuple[Any, ua.VariantType]]] = {
        "Line1.MES.BatchId": ("", ua.VariantType.String),
        "Line1.MES.Product": ("", ua.VariantType.String),
        "Line1.MES.Quantity_t": (0.0, ua.VariantType.Double),
        "Line1.MES.Unit": ("t", ua.VariantType.String),
        "Line1.MES.Running": (False, ua.VariantType.Boolean),
        "Line1.MES.LineState": (1, ua.VariantType.Int32),
        "Line1.Meter.Energy_kWh": (0.0, ua.VariantType.Double),
        "Line1.Meter.Serial": ("SN-0042-A", ua.VariantType.String),
    }

    def __init__(self) -> None:
        self.port = free_port()
        self.server: Server | None = None
        self.values: dict[str, ua.DataValue] = {}

    @property
    def url(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.port}/mes"

    async def start(self) -> None:
        server = Server()
        await server.init()
        server.set_endpoint(self.url)
        server.set_server_name("Line 1 MES")
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        objects: dict[str, Any] = {"": server.nodes.objects}
        for path, (initial, vtype) in self.VARIABLES.items():
            parent = ""
            for part in path.split(".")[:-1]:
                node = f"{parent}.{part}" if parent else part
                if node not in objects:
                    objects[node] = await objects[parent].add_object(
                        ua.NodeId(node, 1), ua.QualifiedName(part, 1))
                parent = node
            await objects[parent].add_variable(
                ua.NodeId(path, 1), ua.QualifiedName(path.split(".")[-1], 1),
                ua.Variant(initial, vtype))
        await server.start()
        self.server = server
        for path, dv in self.values.items():
            await server.write_attribute_value(ua.NodeId(path, 1), dv)

    async def write(self, path: str, value: Any, ts: dt.datetime) -> None:
        """Set a value with its source timestamp; kept for a restart."""
        dv = ua.DataValue(ua.Variant(value, self.VARIABLES[path][1]),
                          SourceTimestamp=ts, ServerTimestamp=dt.datetime.now(UTC))
        self.values[path] = dv
        if self.server is not None:
            await self.server.write_attribute_value(ua.NodeId(path, 1), dv)

    async def write_record(self, ts: dt.datetime, **fields: Any) -> None:
        """Fields of ``Line1.MES`` written in the order given, all at ``ts``."""
        for name, value in fields.items():
            await self.write(f"Line1.MES.{name}", value, ts)

    async def stop(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            await close_client_sessions(server)
            await server.stop()
