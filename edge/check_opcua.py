"""The OPC UA part of ``--check``: every configured node of every server read once.

One session per server (same security, user and timeouts as the agent's
subscriber), namespaces resolved, all nodes read in one Read request. Rows:
meter nodes as ``meter``/``channel``, an asset's state code as
``<asset>``/``state``, each batch field as ``<asset>``/``<field>`` (an MES
slot's as ``<slot>.<variable>``), each with the value's source timestamp. A
node whose value does not fit what it is configured for is a bad row that says
why: text among meter points names the table it belongs in, a batch field of
the wrong type names the type it expects. Then, per batch mapping, the batch
state as the agent would interpret the values read (``BatchState``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from asyncua import ua
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.uaerrors import UaError

from edge.batch_tracker import BatchTracker, Observation
from edge.opcua import OpcUaError, describe_error, new_client, resolve_node, status_name
from edge.opcua_batches import FieldProblem, field_value, variant_name
from edge.opcua_config import SLOT_FIELDS, BatchMapping, OpcUaServer
from edge.opcua_values import epoch_ns, numeric, quality_of

# what a meter node holding text is told
TEXT_IS_NO_READING = ("text is not a meter reading: map it in [[opcua.batches]] "
                      "(batch_id, product, unit)")


@dataclass(frozen=True, slots=True)
class NodeRow:
    meter: str
    point: str
    node: str
    value: Any
    unit: str
    quality: str  # "good", "uncertain", or "bad: <why>"
    source_ns: int | None = None  # the value's source timestamp

    @property
    def ok(self) -> bool:
        return not self.quality.startswith("bad")


@dataclass(frozen=True, slots=True)
class _Wanted:
    meter: str
    point: str
    node: str
    unit: str
    field: str | None = None  # the batch field it feeds; None: a number (meter, state)
    mapping: int | None = None  # index into the server's batch mappings


def _field_label(mapping: BatchMapping, field: str) -> str:
    if mapping.label and " slot " in mapping.label:  # an MES slot: its variable's name
        return f"{mapping.label.rsplit(' slot ', 1)[1]}.{SLOT_FIELDS[field]}"
    return field


def wanted_nodes(server: OpcUaServer) -> list[_Wanted]:
    """Every node the agent would subscribe to, in config order (pure)."""
    out = [_Wanted(n.meter, n.channel, n.node, n.unit) for n in server.nodes]
    for asset in server.mes:
        if asset.state is not None:
            out.append(_Wanted(asset.asset, "state", asset.state, "state"))
    for index, mapping in enumerate(server.batch_mappings):
        for field, ref in mapping.field_nodes():
            unit = (mapping.unit_constant or "") if field == "quantity" else ""
            out.append(_Wanted(mapping.asset, _field_label(mapping, field), ref, unit,
                               field, index))
    return out


def row_of(want: _Wanted, dv: ua.DataValue, mapping: BatchMapping | None = None) -> NodeRow:
    """A read result as a row: status severity as quality, a value or why not (pure)."""
    raw = dv.Value.Value if dv.Value is not None else None
    status = dv.StatusCode
    quality = quality_of(status)
    source = epoch_ns(dv.SourceTimestamp)

    def row(value: Any, why: str) -> NodeRow:
        return NodeRow(want.meter, want.point, want.node, value, want.unit, why, source)

    if quality == "bad":
        return row(None, f"bad: {status_name(status) if status is not None else 'bad'}")
    if want.field is not None:
        try:
            field_value(want.field, raw, variant_name(raw, dv),
                        mapping.running_values if mapping else ())
        except FieldProblem as exc:
            return row(raw, f"bad: {want.field}: {exc}")
        return row(raw, quality)
    value = numeric(raw)
    if value is None:
        kind = variant_name(raw, dv)
        if isinstance(raw, str):
            return row(raw, f"bad: {kind}: {TEXT_IS_NO_READING}")
        return row(raw, f"bad: {kind}: not a number")
    return row(value, quality)


def batch_states(server: OpcUaServer, wanted: Sequence[_Wanted],
                 values: Sequence[ua.DataValue | None]) -> list[str]:
    """Each mapping's batch state as the agent would read these values (pure)."""
    out = []
    for index, mapping in enumerate(server.batch_mappings):
        tracker = BatchTracker(mapping.asset, has_running=mapping.running is not None,
                               unit=mapping.unit_constant)
        observations = []
        missing = []
        for want, dv in zip(wanted, values, strict=True):
            if want.mapping != index or want.field is None:
                continue
            raw = dv.Value.Value if dv is not None and dv.Value is not None else None
            if dv is None or quality_of(dv.StatusCode) == "bad":
                missing.append(want.field)
                continue
            try:
                value = field_value(want.field, raw, variant_name(raw, dv),
                                    mapping.running_values)
            except FieldProblem:
                missing.append(want.field)
                continue
            ts = epoch_ns(dv.SourceTimestamp) or epoch_ns(dv.ServerTimestamp) or 0
            observations.append(Observation(want.field, value, ts))  # type: ignore[arg-type]
        tracker.observe(observations)
        state = tracker.describe()
        if "batch_id" in missing or "running" in missing:
            state = f"unknown ({' and '.join(missing)} not usable)"
        out.append(f"batch state opcua {server.name} {mapping.name}: {state}")
    return out


def _failed(wanted: Sequence[_Wanted], why: str) -> list[NodeRow]:
    return [NodeRow(w.meter, w.point, w.node, None, w.unit, f"bad: {why}") for w in wanted]


Checked = tuple[list[NodeRow], list[str], list[str]]  # rows, error lines, batch states


async def _read_all(server: OpcUaServer, wanted: list[_Wanted]) -> Checked:
    client = await new_client(server)
    try:
        async with asyncio.timeout(server.timeout_s * 3):
            await client.connect()
    except (OSError, TimeoutError, UaError) as exc:
        msg = f"opcua {server.name} at {server.endpoint}: cannot connect: {describe_error(exc)}"
        return _failed(wanted, "connect"), [msg], []
    try:
        namespaces = await client.get_namespace_array()
        rows: list[NodeRow | None] = [None] * len(wanted)
        read: list[ua.DataValue | None] = [None] * len(wanted)
        errors: list[str] = []
        ids: list[tuple[int, ua.NodeId]] = []
        for i, w in enumerate(wanted):
            try:
                ids.append((i, resolve_node(w.node, namespaces, server.name)))
            except (OpcUaError, ValueError) as exc:
                rows[i] = _failed([w], "unknown namespace")[0]
                errors.append(str(exc))
        values = await client.uaclient.read_attributes([n for _, n in ids], AttributeIds.Value)
        mappings = server.batch_mappings
        for (i, _), dv in zip(ids, values, strict=True):
            index = wanted[i].mapping
            rows[i] = row_of(wanted[i], dv, mappings[index] if index is not None else None)
            read[i] = dv
        states = batch_states(server, wanted, read)
        return [r for r in rows if r is not None], errors, states
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.disconnect(), server.timeout_s)


async def check_server(server: OpcUaServer) -> Checked:
    """One server's rows, error lines and batch states; never raises for the server."""
    wanted = wanted_nodes(server)
    try:
        return await _read_all(server, wanted)
    except OpcUaError as exc:
        return _failed(wanted, "security"), [str(exc)], []
    except (OSError, TimeoutError, UaError) as exc:
        return _failed(wanted, "read"), [
            f"opcua {server.name}: read failed: {describe_error(exc)}"
        ], []


async def run_opcua_check(servers: Sequence[OpcUaServer]) -> Checked:
    """Every server checked concurrently; rows, error lines and batch states."""
    results = await asyncio.gather(*(check_server(s) for s in servers))
    return ([r for rows, _, _ in results for r in rows],
            [e for _, errs, _ in results for e in errs],
            [b for _, _, states in results for b in states])


OPCUA_COLUMNS = ("meter", "point", "node id", "value", "unit", "source time", "quality")


def _iso(ts_ns: int | None) -> str:
    if ts_ns is None:
        return "—"
    return datetime.fromtimestamp(ts_ns / 1e9, UTC).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


def opcua_cells(rows: Sequence[NodeRow]) -> list[tuple[str, ...]]:
    cells: list[tuple[str, ...]] = []
    for r in rows:
        if r.value is None:
            value = "—"
        elif isinstance(r.value, float):
            value = f"{r.value:.15g}"
        elif isinstance(r.value, bool):
            value = str(int(r.value))
        elif isinstance(r.value, int):
            value = str(r.value)
        elif isinstance(r.value, datetime):
            value = _iso(epoch_ns(r.value))
        else:  # text: a batch field, or what a bad "not a number" node holds
            value = repr(r.value)[:40]
        cells.append((r.meter, r.point, r.node, value, r.unit, _iso(r.source_ns), r.quality))
    return cells
