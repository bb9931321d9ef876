"""MQTT output: spooled frames to ``plantprint/<site>/<gateway>/readings|batches``, QoS 1.

paho-mqtt (callback API v2) runs its network loop on its own thread
(``loop_start``). ``publish`` registers every message id with an
``AckTally``; a PUBACK that arrives before its id is registered (paho may call
``on_publish`` before ``publish`` returns) is kept until it is. The call returns
when every PUBACK came back. A disconnect fails the pending publish; after any
failure the client is discarded (with paho's in-memory queue: the spool is the queue) and
re-created on the next publish, and the forwarder re-sends the same frames.

The session is persistent: MQTT 5 with ``clean_start=False`` and a session
expiry interval, or MQTT 3.1.1 with ``clean_session=False``; the client id
must then be stable, so it defaults to ``plantprint-edge-<gateway>``.

The broker URL, TLS and login keys are ``edge.tls.MqttSecurity``, the same keys
and load-time checks as ingest's bridge. Connecting fails promptly and says why:
a refused TLS handshake names what TLS refused (``edge.tls.describe``), a
CONNACK refusal its reason ("Not authorized"), a broker that drops the session
before its CONNACK is probed for a TLS refusal (a client certificate it does
not accept).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
import time
from collections.abc import Sequence
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import Field

from edge import metrics, tls
from edge.forward import AckTally, PublishError
from edge.spool import SpooledMessage

logger = logging.getLogger(__name__)

# PUBLISH fixed header (<= 5), topic length (2), packet id (2), MQTT 5 properties: generous
_PACKET_OVERHEAD = 64
_TLS_KEYS = f"[outputs.mqtt] {tls.MQTT_TLS_KEYS}"


class MqttOutput(tls.MqttSecurity):
    """``[outputs.mqtt]``: a site broker for MQTT-only gateways (url, TLS, login: the base)."""

    qos: Literal[1] = 1
    protocol: Literal["5", "3.1.1"] = "5"
    client_id: str | None = None  # default plantprint-edge-<gateway>
    session_expiry_s: int = Field(default=7 * 24 * 3600, ge=0)  # MQTT 5 only
    keepalive_s: int = Field(default=30, ge=5)
    publish_timeout_s: float = Field(default=30.0, gt=0)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    max_inflight: int = Field(default=100, ge=1)
    # largest PUBLISH packet the broker takes (Mosquitto message_size_limit, EMQX
    # max_packet_size = 1 MB); the bridge re-produces frames into Kafka, whose
    # default maximum message is also about 1 MiB. Frames are split to fit.
    max_packet_bytes: int = Field(default=1024 * 1024, ge=16 * 1024, le=268_435_455)
    topic_root: str = "plantprint"


class _ConnectFailed(RuntimeError):
    """The broker ended a connection attempt: a CONNACK refusal, or a drop before it."""

    def __init__(self, why: str, dropped: bool) -> None:
        super().__init__(why)
        self.dropped = dropped  # no CONNACK came: maybe TLS refused our certificate late


def _settle_connect(userdata: Any, exc: _ConnectFailed | None) -> None:
    """From paho's thread: resolve the connect attempt's future in the loop (first call wins)."""
    loop, connected = userdata

    def settle() -> None:
        if connected.done():
            return
        if exc is None:
            connected.set_result(None)
        else:
            connected.set_exception(exc)

    with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
        loop.call_soon_threadsafe(settle)


class MqttPublisher:
    """Publishes spooled frames with QoS 1; ``publish`` returns once every PUBACK arrived."""

    def __init__(self, config: MqttOutput, site: str, gateway: str, name: str = "mqtt") -> None:
        self.config = config
        self.name = name
        self.client_id = config.client_id or f"plantprint-edge-{gateway}"
        root = f"{config.topic_root}/{site}/{gateway}"
        self._topics = {s: f"{root}/{s}" for s in ("readings", "batches")}
        self._where = f"mqtt {config.host}:{config.port} as {self.client_id}"
        self._lock = threading.Lock()
        self._pending: dict[int, AckTally] = {}
        # PUBACKs that arrived before publish() returned their mid (this client only)
        self._early: dict[int, Any] = {}
        self._client: mqtt.Client | None = None
        self.session_present: bool | None = None  # from the last CONNACK

    def topic(self, stream: str) -> str:
        return self._topics[stream]

    @property
    def max_frame_bytes(self) -> int:
        """Largest frame that fits one PUBLISH packet (fixed header, topic, id, properties)."""
        topic = max(len(t.encode()) for t in self._topics.values())
        return self.config.max_packet_bytes - topic - _PACKET_OVERHEAD

    async def start(self) -> None:
        try:
            await self._ensure_client()
        except PublishError as exc:
            logger.warning("%s: not reachable at start, will retry: %s", self._where, exc)

    # ------------------------------------------------------------- client setup

    def _new_client(self) -> mqtt.Client:
        cfg = self.config
        if cfg.protocol == "5":
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                 protocol=mqtt.MQTTv5, reconnect_on_failure=False)
        else:
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                 clean_session=False, protocol=mqtt.MQTTv311,
                                 reconnect_on_failure=False)
        cfg.secure(client)
        client.max_inflight_messages_set(cfg.max_inflight)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        return client

    async def _ensure_client(self) -> mqtt.Client:
        if self._client is not None and self._client.is_connected():
            return self._client
        await self._discard_client()
        loop = asyncio.get_running_loop()
        # settled by on_connect (CONNACK) or on_disconnect (dropped before it)
        connected: asyncio.Future[None] = loop.create_future()
        with self._lock:
            self._early.clear()
        try:
            client = self._new_client()
            client.user_data_set((loop, connected))
            await asyncio.to_thread(self._connect, client)  # TCP and the TLS handshake
            client.loop_start()
            self._client = client
            await asyncio.wait_for(connected, self.config.connect_timeout_s)
        except (OSError, ValueError, TimeoutError, _ConnectFailed) as exc:
            metrics.PUBLISH_ERRORS.labels(output=self.name, kind="connect").inc()
            await self._discard_client()
            why = await self._explain(exc)
            raise PublishError(f"{self._where}: cannot connect: {why}") from exc
        return client

    async def _explain(self, exc: BaseException) -> str:
        """Why connecting failed, in words an integrator can act on."""
        if isinstance(exc, ssl.SSLError):  # the handshake itself, in connect()
            return f"{tls.describe(exc)} (see {_TLS_KEYS}); {exc!r}"
        if isinstance(exc, TimeoutError):
            why = f"no CONNACK within connect_timeout_s {self.config.connect_timeout_s} s"
        elif isinstance(exc, _ConnectFailed):
            why = str(exc)
            if not exc.dropped:
                return why
        else:
            return repr(exc)
        if not self.config.tls:
            return why
        try:
            ctx = self.config.ssl_context()
        except (ssl.SSLError, OSError):  # files gone since load: connect() said so already
            return why
        # TLS 1.3 servers refuse a client certificate after the handshake: ask again
        problem = await asyncio.to_thread(tls.tls_problem, self.config.host, self.config.port,
                                          ctx, self.config.connect_timeout_s)
        return why if problem is None else f"{problem} (see {_TLS_KEYS}); {why}"

    def _connect(self, client: mqtt.Client) -> None:
        cfg = self.config
        if cfg.protocol == "5":
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = cfg.session_expiry_s
            client.connect(cfg.host, cfg.port, cfg.keepalive_s, clean_start=False,
                           properties=props)
        else:
            client.connect(cfg.host, cfg.port, cfg.keepalive_s)

    async def _discard_client(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        self._fail_pending(PublishError(f"{self._where}: client discarded"))
        client.disconnect()
        await asyncio.to_thread(client.loop_stop)

    # ------------------------------------------------- callbacks (paho's thread)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        if reason.is_failure:
            _settle_connect(userdata, _ConnectFailed(
                f"the broker refused the connection: {reason}", dropped=False))
            return
        self.session_present = bool(flags.session_present)
        _settle_connect(userdata, None)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        logger.warning("%s: disconnected: %s", self._where, reason)
        self._fail_pending(PublishError(f"{self._where}: disconnected ({reason})"))
        # no effect once connected; before the CONNACK it ends the connect attempt now
        _settle_connect(userdata, _ConnectFailed(
            f"the broker closed the connection before its CONNACK ({reason})", dropped=True))

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any,
                    properties: Any) -> None:
        with self._lock:
            tally = self._pending.pop(mid, None)
            if tally is None:
                self._early[mid] = reason
        if tally is not None:
            self._settle(tally, mid, reason)

    def _settle(self, tally: AckTally, mid: int, reason: Any) -> None:
        if reason.is_failure:
            tally.failed(PublishError(f"{self._where}: broker refused message {mid}: {reason}"))
        else:
            tally.acked(mid)

    def _fail_pending(self, exc: Exception) -> None:
        with self._lock:
            tallies = set(self._pending.values())
            self._pending.clear()
        for tally in tallies:
            tally.failed(exc)

    # ---------------------------------------------------------------- publish

    async def publish(self, msgs: Sequence[SpooledMessage]) -> None:
        """Send ``msgs`` in order with QoS 1; return when all are PUBACKed, else PublishError."""
        if not msgs:
            return
        client = await self._ensure_client()
        tally = AckTally(asyncio.get_running_loop(), len(msgs))
        started = time.perf_counter()
        try:
            self._send_all(client, msgs, tally)
            await asyncio.wait_for(tally.done, self.config.publish_timeout_s)
        except (PublishError, OSError, ValueError, TimeoutError) as exc:
            metrics.PUBLISH_ERRORS.labels(output=self.name, kind="publish").inc()
            await self._discard_client()
            first = msgs[0]
            raise PublishError(
                f"{self._where}: {len(msgs)} frames from {first.stream}#{first.seq} "
                f"not acknowledged: {exc!r}"
            ) from exc
        metrics.PUBLISH_LATENCY.labels(output=self.name).observe(time.perf_counter() - started)
        metrics.PUBLISHED.labels(output=self.name).inc(len(msgs))

    def _send_all(self, client: mqtt.Client, msgs: Sequence[SpooledMessage],
                  tally: AckTally) -> None:
        # Never call into paho while holding self._lock: paho calls on_publish with
        # its own message mutex held, and on_publish takes self._lock.
        for msg in msgs:
            info = client.publish(self._topics[msg.stream], msg.data, qos=self.config.qos)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                reason = mqtt.error_string(info.rc)
                raise PublishError(f"{self._where}: publish refused: {reason}")
            with self._lock:
                early = self._early.pop(info.mid, None)
                if early is None:
                    self._pending[info.mid] = tally
            if early is not None:  # the PUBACK beat us to the registration
                self._settle(tally, info.mid, early)

    async def close(self) -> None:
        await self._discard_client()
