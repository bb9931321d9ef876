"""``[[opcua]]`` config: one OPC UA server, its security, monitored nodes and batch sources.

Batch sources are of two shapes: ``[[opcua.batches]]``, a generic mapping in
which each field of an asset's batch record is its own node (what an
independent MES exposes, e.g. ``Line1.MES.BatchId``), and ``[[opcua.mes]]``
slots, the simulator's layout (``<prefix>.BatchId``, ``.Running``, ...), which
is expanded into the same mapping (``MesAsset.mappings``).

Node references are OPC UA text node ids, optionally with the namespace given
by URI instead of index (``nsu=urn:plantprint:simulator;s=M-OVEN.Energy``), which
is what a config should use: indexes may change when the server restarts.

Intervals are seconds in the config, as every duration in plantprint's configs;
the OPC UA services take milliseconds (the spec's ``Duration``), so the
``*_interval_ms`` properties convert where the subscription is requested.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from edge.settings import Frozen, Name

_NODE_REF: Final = re.compile(r"^(?:nsu=(?P<uri>[^;]+);|ns=\d+;)?(?P<id>(?:i=\d+|s=.+|g=.+|b=.+))$")


def split_node_ref(ref: str) -> tuple[str | None, str]:
    """``(namespace URI or None, the rest as ns=..;x=.. text)`` of a node reference."""
    match = _NODE_REF.match(ref)
    if match is None:
        raise ValueError(f"node id {ref!r}: expected [nsu=<uri>;|ns=<n>;](i=|s=|g=|b=)<id>")
    uri = match.group("uri")
    return (uri, match.group("id")) if uri else (None, ref)


def _check_ref(ref: str) -> str:
    split_node_ref(ref)
    return ref


def is_node_ref(text: str) -> bool:
    """Whether ``text`` is written as a node id (``unit`` may be a constant or a node)."""
    return _NODE_REF.match(text) is not None


# a slot object's variables, by the batch field each one is (docs/simulators.md)
SLOT_FIELDS: Final = {
    "batch_id": "BatchId", "product": "Product", "quantity": "Quantity", "unit": "Unit",
    "running": "Running", "start_time": "StartTime", "end_time": "EndTime",
}


class MonitoredNode(Frozen):
    """A variable read as a meter point: ``meter``/``channel`` name it in frames."""

    node: str
    # the name pattern of every meter and channel (Modbus ones too): ingest refuses others
    meter: Name
    channel: Name
    unit: str = ""
    # server-side sampling; 0: the server's fastest practical rate
    sampling_interval_s: float = Field(default=1.0, ge=0)
    deadband_type: Literal["none", "absolute", "percent"] = "none"
    deadband: float = Field(default=0.0, ge=0)

    @field_validator("node")
    @classmethod
    def _node_is_ref(cls, value: str) -> str:
        return _check_ref(value)

    @model_validator(mode="after")
    def _percent_range(self) -> MonitoredNode:
        if self.deadband_type == "percent" and self.deadband > 100:
            raise ValueError(f"deadband {self.deadband}: a percent deadband is 0..100")
        return self

    @property
    def sampling_interval_ms(self) -> float:
        return self.sampling_interval_s * 1000.0


class BatchMapping(Frozen):
    """``[[opcua.batches]]``: one asset's batch record, each field its own node.

    A batch starts when ``batch_id`` becomes non-empty or changes (or, with
    ``running``, when running turns true) and ends when the id is cleared,
    changes, or running turns false. Times are the nodes' source timestamps,
    or the ``start_time``/``end_time`` nodes when configured. ``unit`` is a
    constant (``"t"``) or, when written as a node id, a node.
    """

    asset: str = Field(min_length=1)
    batch_id: str
    product: str | None = None
    quantity: str | None = None  # its value at the end of the batch
    unit: str | None = None  # a constant, or a node id
    running: str | None = None  # a boolean (or state code) node marking start/end instead
    # state codes that mean running; empty: true / non-zero
    running_values: tuple[int, ...] = ()
    start_time: str | None = None
    end_time: str | None = None
    sampling_interval_s: float = Field(default=0.5, ge=0)
    label: str = ""  # how logs name it; default "<asset> batches"

    @field_validator("batch_id", "product", "quantity", "running", "start_time", "end_time")
    @classmethod
    def _field_is_ref(cls, value: str | None) -> str | None:
        return None if value is None else _check_ref(value)

    @model_validator(mode="after")
    def _running_values_need_running(self) -> BatchMapping:
        if self.running_values and self.running is None:
            raise ValueError("running_values needs a running node")
        return self

    @property
    def name(self) -> str:
        return self.label or f"{self.asset} batches"

    @property
    def unit_node(self) -> str | None:
        return self.unit if self.unit is not None and is_node_ref(self.unit) else None

    @property
    def unit_constant(self) -> str | None:
        return None if self.unit is None or is_node_ref(self.unit) else self.unit

    def field_nodes(self) -> list[tuple[str, str]]:
        """``(field, node id)`` of every configured node, batch_id first."""
        fields = {"batch_id": self.batch_id, "product": self.product,
                  "quantity": self.quantity, "unit": self.unit_node,
                  "running": self.running, "start_time": self.start_time,
                  "end_time": self.end_time}
        return [(f, ref) for f, ref in fields.items() if ref is not None]

    @property
    def sampling_interval_ms(self) -> float:
        return self.sampling_interval_s * 1000.0


class MesAsset(Frozen):
    """An asset's MES nodes: batch slot objects and, optionally, a numeric state code.

    Each slot prefix names an object with ``BatchId``, ``Product``, ``Running``,
    ``StartTime``, ``EndTime``, ``Quantity`` and ``Unit`` variables.
    """

    asset: str = Field(min_length=1)
    slots: tuple[str, ...] = ()
    state: str | None = None
    sampling_interval_s: float = Field(default=0.5, ge=0)  # of Running and state

    @field_validator("slots")
    @classmethod
    def _slots_are_refs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for ref in value:
            _check_ref(ref)
        return value

    @field_validator("state")
    @classmethod
    def _state_is_ref(cls, value: str | None) -> str | None:
        return None if value is None else _check_ref(value)

    def mappings(self) -> list[BatchMapping]:
        """Each slot as a batch mapping of its seven variables."""
        out = []
        for prefix in self.slots:
            slot = prefix.rsplit(";s=", 1)[-1].rsplit(".", 1)[-1]
            nodes: dict[str, object] = {f: f"{prefix}.{name}" for f, name in SLOT_FIELDS.items()}
            out.append(BatchMapping.model_validate({
                **nodes, "asset": self.asset, "label": f"{self.asset} slot {slot}",
                "sampling_interval_s": self.sampling_interval_s,
            }))
        return out

    @property
    def sampling_interval_ms(self) -> float:
        return self.sampling_interval_s * 1000.0


class OpcUaServer(Frozen):
    """``[[opcua]]``: one server, how to reach it safely, and what to subscribe to."""

    name: str = Field(min_length=1)
    endpoint: str = Field(pattern=r"^opc\.tcp://")
    security_policy: Literal["None", "Basic256Sha256"] = "None"
    security_mode: Literal["None", "Sign", "SignAndEncrypt"] = "None"
    certificate: Path | None = None  # our application instance certificate (DER or PEM)
    private_key: Path | None = None
    server_certificate: Path | None = None  # pin it; else taken from the endpoint list
    application_uri: str = "urn:plantprint:edge"  # must match the certificate's SAN URI
    user: str | None = None
    password: SecretStr | None = None
    publishing_interval_s: float = Field(default=1.0, gt=0)
    timeout_s: float = Field(default=10.0, gt=0)
    watchdog_s: float = Field(default=1.0, gt=0)
    reconnect_initial_s: float = Field(default=1.0, gt=0)
    reconnect_max_s: float = Field(default=60.0, gt=0)
    nodes: tuple[MonitoredNode, ...] = ()
    mes: tuple[MesAsset, ...] = ()
    batches: tuple[BatchMapping, ...] = ()

    @model_validator(mode="after")
    def _security_consistent(self) -> OpcUaServer:
        if (self.security_policy == "None") != (self.security_mode == "None"):
            raise ValueError(
                f"security_policy {self.security_policy} with security_mode "
                f"{self.security_mode}: None goes with None, Basic256Sha256 with Sign or "
                "SignAndEncrypt"
            )
        if self.security_policy != "None" and (self.certificate is None or not self.private_key):
            raise ValueError(f"security_policy {self.security_policy} needs certificate and "
                             "private_key")
        if not self.nodes and not self.mes and not self.batches:
            raise ValueError("an OPC UA server needs nodes, mes or batches to subscribe to")
        return self

    @property
    def batch_mappings(self) -> list[BatchMapping]:
        """Every batch source of this server: the MES slots, then ``[[opcua.batches]]``."""
        return [m for asset in self.mes for m in asset.mappings()] + list(self.batches)

    @property
    def publishing_interval_ms(self) -> float:
        return self.publishing_interval_s * 1000.0
