"""The OPC UA server for PLCs and the MES: asset states, batch slots, meters.

Every value also lives in a mirror, so an injected server restart rebuilds
the address space and comes back with the current values on the same port.
Address space: docs/simulators.md.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from asyncua import ua
from asyncua.server.server import Server
from asyncua.ua.status_codes import StatusCodes

from simulators.config import Scenario

logger = logging.getLogger(__name__)

MIN_DATETIME = datetime(1601, 1, 1, tzinfo=UTC)
_VT = ua.VariantType
# asyncua annotates with its own UA scalar aliases; plain str/int/datetime are what it takes
_NodeId: Any = ua.NodeId
_DataValue: Any = ua.DataValue
_StatusCode: Any = ua.StatusCode


async def close_client_sessions(server: Server) -> None:
    """Close the sessions clients left behind, as a PLC losing power does.

    asyncua keeps a session with live subscriptions after its connection drops,
    so the client can take it over on reconnect (OPC UA Part 4, 6.7), and its
    ``stop()`` leaves those sessions' timeout and publish tasks running for up to
    the session timeout (minutes). A stopped server must take them with it.
    """
    # asyncua 2.1 has no public registry of these sessions; an older or newer
    # one without the attribute keeps its own behaviour.
    sessions = getattr(server.iserver, "_external_sessions", {})
    for session in list(sessions.values()):
        await session.close_session(delete_subs=True)


@dataclass(frozen=True)
class VarDef:
    """A variable: its string node id, parent path, browse name and type."""

    node: str
    parent: str
    name: str
    vtype: ua.VariantType
    initial: Any


def address_space(sc: Scenario) -> tuple[list[tuple[str, str, str]], list[VarDef]]:
    """Objects ``(node id, parent node id, browse name)`` and variables to create."""
    objects = [("Plant", "", "Plant"), ("Assets", "Plant", "Assets"), ("Meters", "Plant", "Meters")]
    variables = [VarDef("Plant.Site", "Plant", "Site", _VT.String, sc.scenario.site)]
    for a in sc.assets:
        objects.append((a.id, "Assets", a.id))
        variables += [VarDef(f"{a.id}.State", a.id, "State", _VT.String, "idle"),
                      VarDef(f"{a.id}.StateCode", a.id, "StateCode", _VT.Int32, 1),
                      VarDef(f"{a.id}.Line", a.id, "Line", _VT.String, a.line)]
        for k in range(a.slots):
            slot = f"{a.id}.Batch{k}"
            objects.append((slot, a.id, f"Batch{k}"))
            variables += [
                VarDef(f"{slot}.BatchId", slot, "BatchId", _VT.String, ""),
                VarDef(f"{slot}.Product", slot, "Product", _VT.String, ""),
                VarDef(f"{slot}.Running", slot, "Running", _VT.Boolean, False),
                VarDef(f"{slot}.StartTime", slot, "StartTime", _VT.DateTime, MIN_DATETIME),
                VarDef(f"{slot}.EndTime", slot, "EndTime", _VT.DateTime, MIN_DATETIME),
                VarDef(f"{slot}.Quantity", slot, "Quantity", _VT.Double, 0.0),
                VarDef(f"{slot}.Unit", slot, "Unit", _VT.String, ""),
            ]
    for m in sc.meters:
        names = {"opcua_energy": ("Energy", "Power"), "opcua_flow": ("Volume", "Flow")}
        if m.family in names:
            objects.append((m.id, "Meters", m.id))
            variables += [VarDef(f"{m.id}.{n}", m.id, n, _VT.Double, 0.0)
                          for n in names[m.family]]
    return objects, variables


class OpcuaPlant:
    """Lifecycle: ``start`` builds and listens; ``write`` updates; ``stop``; ``close``."""

    def __init__(self, sc: Scenario, host: str, port: int) -> None:
        self.sc = sc
        self.host = host
        self.port = port
        self.path = sc.endpoints.opcua_path
        self.uri = sc.endpoints.namespace
        self.objects, self.vardefs = address_space(sc)
        self._types = {v.node: v.vtype for v in self.vardefs}
        self.mirror: dict[str, ua.DataValue] = {}
        self._server: Server | None = None
        self._idx = 0

    @property
    def url(self) -> str:
        return f"opc.tcp://{self.host}:{self.port}{self.path}"

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        """Build the address space and listen (port 0 becomes the bound port)."""
        server = Server()
        await server.init()
        server.set_endpoint(self.url)
        server.set_server_name("plantprint simulated plant")
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        self._idx = await server.register_namespace(self.uri)
        await self._build(server)
        # every node holds its current value before the first client can connect (a
        # restarted MES shows its batches, not empty slots); writes from here on go
        # to the server directly, so the copy takes each node's value at its turn
        self._server = server
        for node in list(self.mirror):
            await server.write_attribute_value(self._nodeid(node), self.mirror[node])
        await server.start()
        self.port = server.bserver.port if server.bserver else self.port
        logger.info("opcua server listening at %s", self.url)

    async def _build(self, server: Server) -> None:
        idx = self._idx
        nodes = {"": server.nodes.objects}
        for node, parent, name in self.objects:
            nodes[node] = await nodes[parent].add_object(_NodeId(node, idx),
                                                         ua.QualifiedName(name, idx))
        for v in self.vardefs:
            await nodes[v.parent].add_variable(_NodeId(v.node, idx),
                                               ua.QualifiedName(v.name, idx),
                                               ua.Variant(v.initial, v.vtype))

    def _nodeid(self, node: str) -> ua.NodeId:
        return _NodeId(node, self._idx)  # type: ignore[no-any-return]

    async def write(self, node: str, value: Any, ts: datetime, good: bool = True) -> None:
        """Set a variable with a source timestamp and status (Good or BadNoCommunication)."""
        status = _StatusCode(StatusCodes.Good if good else StatusCodes.BadNoCommunication)
        dv = _DataValue(ua.Variant(value, self._types[node]), StatusCode=status,
                          SourceTimestamp=ts, ServerTimestamp=datetime.now(UTC))
        self.mirror[node] = dv
        if self._server is not None:
            await self._server.write_attribute_value(self._nodeid(node), dv)

    async def write_status(self, node: str, good: bool, ts: datetime) -> None:
        """Keep the value, change the status (communication lost or back)."""
        old = self.mirror.get(node)
        value = old.Value.Value if old is not None and old.Value is not None else 0.0
        await self.write(node, value, ts, good)

    async def stop(self) -> None:
        """Stop listening (an injected restart); the mirror keeps the values."""
        server, self._server = self._server, None
        if server is not None:
            await close_client_sessions(server)
            await server.stop()
            logger.info("opcua server stopped")

    async def close(self) -> None:
        await self.stop()
