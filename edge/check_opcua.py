"""The OPC UA part of ``--check``: every configured node of every server read once.

One session per server (same security, user and timeouts as the agent's
subscriber), namespaces resolved, all nodes read in one Read request. Rows:
meter nodes as ``meter``/``channel``, an asset's state code as
``<asset>``/``state``, each MES batch slot's ``Running`` flag as
``<asset>``/``<slot>.Running``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from asyncua import ua
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.uaerrors import UaError

from edge.opcua import OpcUaError, describe_error, new_client, resolve_node, status_name
from edge.opcua_config import OpcUaServer
from edge.opcua_values import numeric, quality_of


@dataclass(frozen=True, slots=True)
class NodeRow:
    meter: str
    point: str
    node: str
    value: Any
    unit: str
    quality: str  # "good", "uncertain", or "bad: <why>"

    @property
    def ok(self) -> bool:
        return not self.quality.startswith("bad")


@dataclass(frozen=True, slots=True)
class _Wanted:
    meter: str
    point: str
    node: str
    unit: str


def wanted_nodes(server: OpcUaServer) -> list[_Wanted]:
    """Every node the agent would subscribe to, in config order (pure)."""
    out = [_Wanted(n.meter, n.channel, n.node, n.unit) for n in server.nodes]
    for asset in server.mes:
        if asset.state is not None:
            out.append(_Wanted(asset.asset, "state", asset.state, "state"))
        for prefix in asset.slots:
            slot = prefix.rsplit(";s=", 1)[-1].rsplit(".", 1)[-1]
            out.append(_Wanted(asset.asset, f"{slot}.Running", f"{prefix}.Running", ""))
    return out


def row_of(want: _Wanted, dv: ua.DataValue) -> NodeRow:
    """A read result as a row: status severity as quality, a number or why not (pure)."""
    raw = dv.Value.Value if dv.Value is not None else None
    status = dv.StatusCode
    quality = quality_of(status)
    if quality == "bad":
        name = status_name(status) if status is not None else "bad"
        return NodeRow(want.meter, want.point, want.node, None, want.unit, f"bad: {name}")
    value = numeric(raw)
    if value is None:
        return NodeRow(want.meter, want.point, want.node, raw, want.unit, "bad: not a number")
    return NodeRow(want.meter, want.point, want.node, value, want.unit, quality)


def _failed(wanted: Sequence[_Wanted], why: str) -> list[NodeRow]:
    return [NodeRow(w.meter, w.point, w.node, None, w.unit, f"bad: {why}") for w in wanted]


async def _read_all(server: OpcUaServer, wanted: list[_Wanted]) -> tuple[list[NodeRow], list[str]]:
    client = await new_client(server)
    try:
        async with asyncio.timeout(server.timeout_s * 3):
            await client.connect()
    except (OSError, TimeoutError, UaError) as exc:
        msg = f"opcua {server.name} at {server.endpoint}: cannot connect: {describe_error(exc)}"
        return _failed(wanted, "connect"), [msg]
    try:
        namespaces = await client.get_namespace_array()
        rows: list[NodeRow | None] = [None] * len(wanted)
        errors: list[str] = []
        ids: list[tuple[int, ua.NodeId]] = []
        for i, w in enumerate(wanted):
            try:
                ids.append((i, resolve_node(w.node, namespaces, server.name)))
            except (OpcUaError, ValueError) as exc:
                rows[i] = _failed([w], "unknown namespace")[0]
                errors.append(str(exc))
        values = await client.uaclient.read_attributes([n for _, n in ids], AttributeIds.Value)
        for (i, _), dv in zip(ids, values, strict=True):
            rows[i] = row_of(wanted[i], dv)
        return [r for r in rows if r is not None], errors
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.disconnect(), server.timeout_s)


async def check_server(server: OpcUaServer) -> tuple[list[NodeRow], list[str]]:
    """One server's rows and error lines; never raises for what the server does."""
    wanted = wanted_nodes(server)
    try:
        return await _read_all(server, wanted)
    except OpcUaError as exc:
        return _failed(wanted, "security"), [str(exc)]
    except (OSError, TimeoutError, UaError) as exc:
        return _failed(wanted, "read"), [
            f"opcua {server.name}: read failed: {describe_error(exc)}"
        ]


async def run_opcua_check(servers: Sequence[OpcUaServer]) -> tuple[list[NodeRow], list[str]]:
    """Every server checked concurrently; rows plus error lines."""
    results = await asyncio.gather(*(check_server(s) for s in servers))
    return [r for rows, _ in results for r in rows], [e for _, errs in results for e in errs]


OPCUA_COLUMNS = ("meter", "point", "node id", "value", "unit", "quality")


def opcua_cells(rows: Sequence[NodeRow]) -> list[tuple[str, ...]]:
    cells: list[tuple[str, ...]] = []
    for r in rows:
        if r.value is None:
            value = "—"
        elif isinstance(r.value, float):
            value = f"{r.value:.15g}"
        elif isinstance(r.value, int):
            value = str(r.value)
        else:  # what a bad "not a number" node holds
            value = repr(r.value)[:40]
        cells.append((r.meter, r.point, r.node, value, r.unit, r.quality))
    return cells
