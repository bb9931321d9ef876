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
calls ``on_readings`` once. Batch sources (``[[opcua.batches]]`` mappings and
MES slots, ``edge.opcua_batches``) are monitored field by field and turned into
start and end ``wire.BatchEvent``s by their trackers, which outlive sessions:
the first values after a reconnect are compared with what was sent, so a batch
that ended while the server was away is ended then (marked as inferred when the
server no longer shows its end). Batch fields have a subscription of their own,
published as often as they are sampled: a server drops the notifications still
queued in a subscription when it stops, and an MES end queued behind the
meters' publishing interval at a restart would be lost with them. An asset's state code is
reported as a reading ``<asset>/state``; the wire has no machine-state event.
A node that cannot be monitored, or whose value has the wrong type, is logged
with the node as configured and what it is for, and shown by the
``edge_opcua_node_problem`` gauge.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, Final

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.subscription import Subscription
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.uaerrors import UaError, UaStatusCodeError

from edge import metrics, wire
from edge.backoff import Backoff
from edge.clock import DEVICE_TOLERANCE_S, DeviceClocks
from edge.opcua_batches import BatchSources
from edge.opcua_config import MesAsset, MonitoredNode, OpcUaServer, split_node_ref
from edge.opcua_values import readings_of_items

logger = logging.getLogger(__name__)

__all__ = [
    "MesAsset", "MonitoredNode", "OpcUaError", "OpcUaServer", "OpcUaSubscriber",
    "batch_publishing_interval_ms", "describe_error", "new_client", "resolve_node",
    "status_name",
]

ReadingsSink = Callable[[list[wire.Reading]], None]
BatchSink = Callable[[list[wire.BatchEvent]], None]

# a batch subscription never publishes faster than this (ms): batch fields change
# rarely, so it mostly carries keep-alives, but each one is a round trip
BATCH_PUBLISHING_FLOOR_MS: Final = 50.0

_MODES: Final = {
    "Sign": ua.MessageSecurityMode.Sign,
    "SignAndEncrypt": ua.MessageSecurityMode.SignAndEncrypt,
}


class OpcUaError(RuntimeError):
    """A session with an OPC UA server failed (connect, security, nodes)."""


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
        device_tolerance_s: float = DEVICE_TOLERANCE_S,
    ) -> None:
        self.config = config
        self.device_clocks = DeviceClocks(device_tolerance_s, "source")  # see edge.clock
        self._on_readings = on_readings
        self._on_batch_events = on_batch_events
        self._clock = clock
        self.connected = asyncio.Event()  # set while a session with subscriptions is up
        self.sessions = 0  # sessions that got their subscription created
        self._points: dict[int, tuple[str, str, str]] = {}
        self._refs: list[tuple[str, str]] = []  # per request: node as configured, its role
        self.batches = BatchSources(config.name, config.batch_mappings)
        self._lost = asyncio.Event()

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
            subs = await self._subscribe(client)
            self.sessions += 1
            self.connected.set()
            logger.info("opcua %s: subscribed to %s items at %s", self.name,
                        len(self._refs), self.config.endpoint)
            await self._until_lost(subs)
            raise OpcUaError(f"opcua {self.name}: connection to {self.config.endpoint} lost")
        finally:
            self.connected.clear()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.disconnect(), self.config.timeout_s)

    async def _until_lost(self, subs: list[Subscription]) -> None:
        """Return when the transport is lost, or the server stopped publishing to us.

        A subscription the server dropped without closing the connection goes
        silent (no data, no keep-alive): after 3 keep-alive periods it counts
        as lost too, and the next session re-creates them all.
        """
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), self.config.watchdog_s)
                return
            if any(sub.is_stale(3.0) for sub in subs):
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

    async def _subscribe(self, client: Client) -> list[Subscription]:
        """The meters' and states' subscription and the batch fields', each if configured."""
        cfg = self.config
        namespaces = await client.get_namespace_array()
        readings, batches = self._build_requests(namespaces)
        subs: list[Subscription] = []
        created: dict[int, list[Any]] = {}
        # the meters' last: as with one subscription, the meters' first values of a
        # session follow its count (``sessions``) rather than race it
        for group, requests, interval_ms in ((1, batches, batch_publishing_interval_ms(cfg)),
                                             (0, readings, cfg.publishing_interval_ms)):
            if requests:
                sub = await self._new_subscription(client, interval_ms)
                subs.append(sub)
                created[group] = await sub.create_monitored_items(requests)
        results = created.get(0, []) + created.get(1, [])  # in handle order, as self._refs
        bad = 0
        for (ref, role), res in zip(self._refs, results, strict=True):
            problem = metrics.OPCUA_NODE_PROBLEM.labels(server=self.name, node=ref)
            if isinstance(res, ua.StatusCode):
                bad += 1
                problem.set(1)
                logger.warning("opcua %s: cannot monitor node %s: %s (%s)", self.name, ref,
                               status_name(res), role)
            elif ref not in self.batches.problems:  # a first value may already be wrong
                problem.set(0)
        if bad == len(results):
            raise OpcUaError(f"opcua {cfg.name}: no configured node could be monitored")
        return subs

    async def _new_subscription(self, client: Client, interval_ms: float) -> Subscription:
        params = ua.CreateSubscriptionParameters()
        params.RequestedPublishingInterval = interval_ms
        params.RequestedLifetimeCount = 10_000
        params.RequestedMaxKeepAliveCount = client.get_keepalive_count(interval_ms)
        params.MaxNotificationsPerPublish = 0  # no limit
        params.PublishingEnabled = True
        sub = _NotifyingSubscription(client.uaclient.session, params, self._items_changed,
                                     self._status_changed)
        await sub.init()
        return sub

    def _build_requests(self, namespaces: list[str]) -> tuple[list[ua.MonitoredItemCreateRequest],
                                                               list[ua.MonitoredItemCreateRequest]]:
        """Monitored items with our own client handles: (points and states, batch fields).

        Handles count up over both lists in order, as ``self._refs`` does.
        """
        self._points.clear()
        self._refs.clear()
        self.batches.new_session()
        out: list[ua.MonitoredItemCreateRequest] = []
        for node in self.config.nodes:
            handle = len(out) + 1
            self._points[handle] = (node.meter, node.channel, node.unit)
            self._refs.append((node.node, f"meter {node.meter} channel {node.channel}"))
            out.append(_item_request(self._node_id(node.node, namespaces), handle,
                                     node.sampling_interval_ms, _deadband(node), 1))
        for asset in self.config.mes:
            if asset.state is not None:
                handle = len(out) + 1
                self._points[handle] = (asset.asset, "state", "state")
                self._refs.append((asset.state, f"state of asset {asset.asset}"))
                out.append(_item_request(self._node_id(asset.state, namespaces), handle,
                                         asset.sampling_interval_ms, None, 10))
        readings = len(out)
        for index, mapping in enumerate(self.batches.mappings):
            for field, ref in mapping.field_nodes():
                handle = len(out) + 1
                self.batches.watch(handle, index, field, ref)
                role = f"{field} of {mapping.name}"
                if field in ("batch_id", "running"):
                    role += ": no batch events from it until this is fixed"
                self._refs.append((ref, role))
                # queue: every change of a publishing interval, so a slot ended and
                # reused within one interval is still seen in order
                out.append(_item_request(self._node_id(ref, namespaces), handle,
                                         mapping.sampling_interval_ms, None, 100))
        return out[:readings], out[readings:]

    def _node_id(self, ref: str, namespaces: list[str]) -> ua.NodeId:
        return resolve_node(ref, namespaces, self.name)

    # -------------------------------------------------------------- notifications

    def _items_changed(self, items: list[ua.MonitoredItemNotification]) -> None:
        metrics.OPCUA_NOTIFICATIONS.labels(server=self.name).inc(len(items))
        now = self._clock()
        readings = readings_of_items(items, self._points, now, self._not_a_number,
                                     self.device_clocks)
        events = self.batches.observe(items, now)
        if readings:
            self._on_readings(readings)
        if events:
            self._on_batch_events(events)

    def _not_a_number(self, handle: int, what: str) -> None:
        """A meter node holding text: no reading, a warning per value type, the gauge."""
        ref, role = self._refs[handle - 1]
        self.batches.report(ref, f"{role} holds {what}, not a number: text is not a "
                                 "meter reading; map it in [[opcua.batches]] (batch_id, "
                                 "product, unit) or remove it from [[opcua.nodes]]",
                            kind=what.split(" ", 1)[0])  # once per value type a session


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


def batch_publishing_interval_ms(cfg: OpcUaServer) -> float:
    """How often the batch fields' subscription publishes (ms): as its fastest field is sampled.

    Never slower than the meters' publishing interval, never faster than
    ``BATCH_PUBLISHING_FLOOR_MS``. An MES end written just before a server
    restart is then out of the server's queue before the restart drops it,
    unless the restart follows within one sampling interval.
    """
    fastest = min((m.sampling_interval_ms for m in cfg.batch_mappings),
                  default=cfg.publishing_interval_ms)
    return min(cfg.publishing_interval_ms, max(fastest, BATCH_PUBLISHING_FLOOR_MS))


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

