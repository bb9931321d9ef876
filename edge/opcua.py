"""OPC UA subscriber: meter values, machine states and MES batch slots, resilient to restarts.

One ``OpcUaSubscriber`` per configured server. Its ``run`` is a connection
supervisor: it opens a fresh asyncua ``Client`` (security set up again, since a
restarted server may present a new certificate), resolves node ids (``nsu=``
namespace URIs are looked up on every session, since indexes may move), creates
one subscription with all monitored items and waits until the session is lost;
then it backs off (``edge.backoff``: capped exponential with jitter) and starts
over, so subscriptions come back by themselves after a server restart. Server
status codes are logged by name (``BadNodeIdUnknown``) with the configured node.

Data changes are not dispatched one task per item as asyncua's handler mode
does: the subscription's publish callback turns each notification message into
one list of ``wire.Reading`` (source timestamp, status mapped to quality) and
calls ``on_readings`` once. MES batch slots (docs/simulators.md): a change of a
slot's ``Running`` reads the slot and becomes a start or end ``wire.BatchEvent``
(the end carries the produced quantity and unit). An asset's state code is
reported as a reading ``<asset>/state``; the wire has no machine-state event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, Final, NamedTuple

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.subscription import Subscription
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.uaerrors import UaError, UaStatusCodeError

from edge import metrics, wire
from edge.backoff import Backoff
from edge.opcua_config import MesAsset, MonitoredNode, OpcUaServer, split_node_ref
from edge.opcua_values import BATCH_SLOT_FIELDS, batch_events_of_slot, readings_of_items

logger = logging.getLogger(__name__)

__all__ = [
    "MesAsset", "MonitoredNode", "OpcUaError", "OpcUaServer", "OpcUaSubscriber",
    "describe_error", "new_client", "resolve_node", "status_name",
]

ReadingsSink = Callable[[list[wire.Reading]], None]
BatchSink = Callable[[list[wire.BatchEvent]], None]

_MODES: Final = {
    "Sign": ua.MessageSecurityMode.Sign,
    "SignAndEncrypt": ua.MessageSecurityMode.SignAndEncrypt,
}


MAX_PENDING_SLOT_CHANGES: Final = 10_000


class OpcUaError(RuntimeError):
    """A session with an OPC UA server failed (connect, security, nodes)."""


class _Slot(NamedTuple):
    asset: str
    fields: tuple[ua.NodeId, ...]  # BATCH_SLOT_FIELDS, in order


class _NotifyingSubscription(Subscription):
    """A subscription whose publish callback hands whole notification lists over."""

    def __init__(
        self,
        session: Any,
        params: ua.CreateSubscriptionParameters,
        on_items: Callable[[list[ua.MonitoredItemNotification]], None],
        on_status: Callable[[ua.StatusChangeNotification], None],
    ) -> None:
        super().__init__(session, params, None, queue_maxsize=1)
        self._on_items = on_items
        self._on_status = on_status

    async def publish_callback(self, publish_result: ua.PublishResult) -> None:
        self.last_publish_at = time.monotonic()
        message = publish_result.NotificationMessage
        if not message.NotificationData:
            return
        self.last_sequence_number = int(message.SequenceNumber)
        for notification in message.NotificationData:
            if isinstance(notification, ua.DataChangeNotification):
                self._on_items(notification.MonitoredItems)
            elif isinstance(notification, ua.StatusChangeNotification):
                self._on_status(notification)


class OpcUaSubscriber:
    """Subscribes to one server's meters and MES nodes; re-subscribes after any loss."""

    def __init__(
        self,
        config: OpcUaServer,
        on_readings: ReadingsSink,
        on_batch_events: BatchSink,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.config = config
        self._on_readings = on_readings
        self._on_batch_events = on_batch_events
        self._clock = clock
        self.connected = asyncio.Event()  # set while a session with subscriptions is up
        self.sessions = 0  # sessions that got their subscription created
        self._points: dict[int, tuple[str, str, str]] = {}
        self._slots: dict[int, _Slot] = {}
        self._refs: list[str] = []
        self._emitted: dict[tuple[str, int], tuple[str, str]] = {}  # (asset, handle) -> last
        # overflow policy: drop the newest change, logged and counted
        self._slot_changes: asyncio.Queue[tuple[int, bool]] = asyncio.Queue(
            maxsize=MAX_PENDING_SLOT_CHANGES
        )
        self._lost = asyncio.Event()
        self._slot_overflow = False  # an overflow of _slot_changes was logged

    @property
    def name(self) -> str:
        return self.config.name

    async def start(self) -> None:
        """Nothing to take before ``run``: the session is opened (and retried) there."""

    async def close(self) -> None:
        """Nothing to release: cancelling ``run`` disconnects the session."""

    async def run(self) -> None:
        """Keep a session with subscriptions up until cancelled."""
        cfg = self.config
        backoff = Backoff(cfg.reconnect_initial_s, max(cfg.reconnect_max_s,
                                                       cfg.reconnect_initial_s))
        while True:
            before = self.sessions
            try:
                await self._session()
            except (OSError, TimeoutError, UaError, OpcUaError) as exc:
                logger.warning("opcua %s at %s: session failed: %s", cfg.name, cfg.endpoint,
                               describe_error(exc))
            if self.sessions > before:  # it was up: start the backoff over
                metrics.OPCUA_RECONNECTS.labels(server=cfg.name).inc()
                backoff.reset()
            await asyncio.sleep(backoff.next_delay())

    # ----------------------------------------------------------------- session

    async def _session(self) -> None:
        client = await self._new_client()
        self._lost.clear()
        try:
            async with asyncio.timeout(self.config.timeout_s * 3):
                await client.connect()
            sub = await self._subscribe(client)
            self.sessions += 1
            self.connected.set()
            logger.info("opcua %s: subscribed to %s items at %s", self.name,
                        len(self._points) + len(self._slots), self.config.endpoint)
            mes = asyncio.create_task(self._mes_loop(client))
            try:
                await self._until_lost(sub)
            finally:
                mes.cancel()
                await asyncio.gather(mes, return_exceptions=True)
            raise OpcUaError(f"opcua {self.name}: connection to {self.config.endpoint} lost")
        finally:
            self.connected.clear()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.disconnect(), self.config.timeout_s)

    async def _until_lost(self, sub: Subscription) -> None:
        """Return when the transport is lost, or the server stopped publishing to us.

        A subscription the server dropped without closing the connection goes
        silent (no data, no keep-alive): after 3 keep-alive periods it counts
        as lost too, and the next session re-creates it.
        """
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), self.config.watchdog_s)
                return
            if sub.is_stale(3.0):
                logger.warning("opcua %s: subscription went silent", self.name)
                return

    async def _new_client(self) -> Client:
        client = await new_client(self.config)
        client.connection_lost_callback = self._connection_lost
        return client

    async def _connection_lost(self, exc: Exception) -> None:
        logger.warning("opcua %s: connection lost: %s", self.name, describe_error(exc))
        self._lost.set()

    def _status_changed(self, status: ua.StatusChangeNotification) -> None:
        if not status.Status.is_good():
            logger.warning("opcua %s: subscription status %s", self.name,
                           status_name(status.Status))
            self._lost.set()

    async def _subscribe(self, client: Client) -> Subscription:
        cfg = self.config
        namespaces = await client.get_namespace_array()
        requests = self._build_requests(namespaces)
        params = ua.CreateSubscriptionParameters()
        params.RequestedPublishingInterval = cfg.publishing_interval_ms
        params.RequestedLifetimeCount = 10_000
        params.RequestedMaxKeepAliveCount = client.get_keepalive_count(cfg.publishing_interval_ms)
        params.MaxNotificationsPerPublish = 0  # no limit
        params.PublishingEnabled = True
        sub = _NotifyingSubscription(client.uaclient.session, params, self._items_changed,
                                     self._status_changed)
        await sub.init()
        results = await sub.create_monitored_items(requests)
        bad = [(ref, res) for ref, res in zip(self._refs, results, strict=True)
               if isinstance(res, ua.StatusCode)]
        for ref, status in bad:
            logger.warning("opcua %s: cannot monitor node %s: %s", self.name, ref,
                           status_name(status))
        if len(bad) == len(requests):
            raise OpcUaError(f"opcua {cfg.name}: no configured node could be monitored")
        return sub

    def _build_requests(self, namespaces: list[str]) -> list[ua.MonitoredItemCreateRequest]:
        """Monitored items with our own client handles (points first, then MES nodes)."""
        self._points.clear()
        self._slots.clear()
        self._refs.clear()  # the configured reference of each request, for messages
        out: list[ua.MonitoredItemCreateRequest] = []
        for node in self.config.nodes:
            handle = len(out) + 1
            self._points[handle] = (node.meter, node.channel, node.unit)
            self._refs.append(node.node)
            out.append(_item_request(self._node_id(node.node, namespaces), handle,
                                     node.sampling_interval_ms, _deadband(node), 1))
        for asset in self.config.mes:
            if asset.state is not None:
                handle = len(out) + 1
                self._points[handle] = (asset.asset, "state", "state")
                self._refs.append(asset.state)
                out.append(_item_request(self._node_id(asset.state, namespaces), handle,
                                         asset.sampling_interval_ms, None, 10))
            for prefix in asset.slots:
                handle = len(out) + 1
                fields = tuple(self._node_id(f"{prefix}.{f}", namespaces)
                               for f in BATCH_SLOT_FIELDS)
                self._slots[handle] = _Slot(asset.asset, fields)
                self._refs.append(f"{prefix}.Running")
                running = self._node_id(f"{prefix}.Running", namespaces)
                out.append(_item_request(running, handle, asset.sampling_interval_ms, None, 10))
        return out

    def _node_id(self, ref: str, namespaces: list[str]) -> ua.NodeId:
        return resolve_node(ref, namespaces, self.name)

    # -------------------------------------------------------------- notifications

    def _items_changed(self, items: list[ua.MonitoredItemNotification]) -> None:
        metrics.OPCUA_NOTIFICATIONS.labels(server=self.name).inc(len(items))
        readings = readings_of_items(items, self._points, self._clock())
        for item in items:
            if item.ClientHandle in self._slots:
                value = item.Value.Value.Value if item.Value and item.Value.Value else None
                try:
                    self._slot_changes.put_nowait((item.ClientHandle, bool(value)))
                except asyncio.QueueFull:
                    self._slot_change_dropped(item.ClientHandle)
        if readings:
            self._on_readings(readings)

    def _slot_change_dropped(self, handle: int) -> None:
        """Count every drop; log the first of each overflow (until the queue drains)."""
        metrics.OPCUA_SLOT_CHANGES_DROPPED.labels(server=self.name).inc()
        if self._slot_overflow:
            return
        self._slot_overflow = True
        slot = self._slots.get(handle)
        logger.error(
            "opcua %s at %s: %s batch-slot changes already waiting to be read, dropped a "
            "Running change of asset %s: its batch event may be missing (further drops "
            "are counted in edge_opcua_slot_changes_dropped_total)",
            self.name, self.config.endpoint, self._slot_changes.maxsize,
            slot.asset if slot else "?",
        )

    async def _mes_loop(self, client: Client) -> None:
        """Read a slot when its Running flag changed and emit its batch events, in order."""
        while True:
            handle, running = await self._slot_changes.get()
            if self._slot_changes.empty():
                self._slot_overflow = False
            slot = self._slots.get(handle)
            if slot is None:
                continue
            values = await client.read_values([client.get_node(n) for n in slot.fields])
            events = [
                ev for ev in batch_events_of_slot(slot.asset, running, values, self._clock())
                if self._emitted.get((slot.asset, handle)) != (ev.batch_id, ev.kind)
            ]
            if events:
                self._emitted[(slot.asset, handle)] = (events[-1].batch_id, events[-1].kind)
                self._on_batch_events(events)


async def new_client(cfg: OpcUaServer) -> Client:
    """An unconnected asyncua client for ``cfg``: timeouts, probe interval, user, security.

    ``watchdog_s`` is asyncua's connection probe: every ``watchdog_s`` it reads the
    server state, and a read not answered within ``watchdog_s`` counts as a lost
    connection.
    """
    client = Client(cfg.endpoint, timeout=cfg.timeout_s, watchdog_intervall=cfg.watchdog_s)
    client.application_uri = cfg.application_uri
    if cfg.user is not None:
        client.set_user(cfg.user)
        client.set_password(cfg.password.get_secret_value() if cfg.password else "")
    if cfg.security_policy == "Basic256Sha256":
        assert cfg.certificate is not None and cfg.private_key is not None
        try:
            await client.set_security(
                SecurityPolicyBasic256Sha256,
                certificate=str(cfg.certificate),
                private_key=str(cfg.private_key),
                server_certificate=(
                    str(cfg.server_certificate) if cfg.server_certificate else None
                ),
                mode=_MODES[cfg.security_mode],
            )
        except (OSError, ValueError, UaError) as exc:
            raise OpcUaError(
                f"opcua {cfg.name}: security setup failed: {describe_error(exc)}"
            ) from exc
    return client


def status_name(status: ua.StatusCode | int) -> str:
    """An OPC UA status code by name (``BadNodeIdUnknown``), not a number or a repr.

    The low 16 bits are info bits (overflow, limits): the name is the code's
    without them. A code outside the standard table (a vendor's) is its
    severity and hex value, e.g. ``Bad 0x80AB0000``.
    """
    value = status.value if isinstance(status, ua.StatusCode) else int(status)
    code = value & 0xFFFF0000
    name, _doc = ua.status_codes.get_name_and_doc(code)
    if code in ua.status_codes.code_to_name_doc:
        return str(name)
    return f"{name} 0x{value:08X}"


def describe_error(exc: BaseException) -> str:
    """An error as one readable line: a server's status code by name, then its meaning.

    asyncua raises ``UaStatusCodeError`` subclasses whose ``repr`` is only the
    class (``BadNodeIdUnknown(None)``) and whose text ends in the name; others
    keep their type, so a bare ``TimeoutError()`` still says what happened.
    """
    if isinstance(exc, UaStatusCodeError):
        code = exc.code & 0xFFFF0000
        if code not in ua.status_codes.code_to_name_doc:
            return status_name(exc.code)
        _name, doc = ua.status_codes.get_name_and_doc(code)
        return f"{status_name(code)} ({doc.rstrip('.')})"
    text = str(exc)
    if isinstance(exc, OpcUaError):  # ours: the text already names server and endpoint
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def resolve_node(ref: str, namespaces: list[str], server: str) -> ua.NodeId:
    """The node id of a configured reference; ``nsu=`` URIs looked up in ``namespaces``."""
    uri, rest = split_node_ref(ref)
    if uri is None:
        return ua.NodeId.from_string(rest)
    try:
        index = namespaces.index(uri)
    except ValueError:
        raise OpcUaError(
            f"opcua {server}: namespace {uri!r} of node {ref!r} is not on the server"
        ) from None
    return ua.NodeId.from_string(f"ns={index};{rest}")


def _deadband(node: MonitoredNode) -> ua.DataChangeFilter | None:
    if node.deadband_type == "none":
        return None
    flt = ua.DataChangeFilter()
    flt.Trigger = ua.DataChangeTrigger.StatusValue
    flt.DeadbandType = 1 if node.deadband_type == "absolute" else 2
    flt.DeadbandValue = node.deadband
    return flt


def _item_request(
    node: ua.NodeId, handle: int, sampling_ms: float, mfilter: ua.DataChangeFilter | None,
    queue_size: int,
) -> ua.MonitoredItemCreateRequest:
    rv = ua.ReadValueId()
    rv.NodeId = node
    rv.AttributeId = AttributeIds.Value
    params = ua.MonitoringParameters()
    params.ClientHandle = handle
    params.SamplingInterval = sampling_ms
    params.QueueSize = queue_size
    params.DiscardOldest = True
    if mfilter is not None:
        params.Filter = mfilter
    request = ua.MonitoredItemCreateRequest()
    request.ItemToMonitor = rv
    request.MonitoringMode = ua.MonitoringMode.Reporting
    request.RequestedParameters = params
    return request

