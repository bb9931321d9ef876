"""``[mes_http]``: the MES posts batch events to the gateway over HTTP (aiohttp).

``POST /batch-events`` with ``Authorization: Bearer <token>`` and a JSON body
(one event or a list, ``edge.mes_events``). The answer comes after the events
are signed and spooled, so a 200 means they are as durable as anything the
gateway read itself:

=====  ==============================================================
200    ``{"spooled": N}``
400    ``{"reason": "malformed_json" | "invalid_event" | "too_many", "error": ...}``:
       nothing of that request is kept; the sender fixes it and sends again
401    missing or wrong token (compared in constant time)
413    body over ``max_body_bytes``
=====  ==============================================================

Bound to 127.0.0.1 by default: an MES on another host needs ``addr`` set
explicitly (and then a TLS-terminating proxy in front, since the token travels
in the clear).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Final

from aiohttp import web
from pydantic import Field, SecretStr

from edge import metrics, wire
from edge.errors import StartError
from edge.mes_events import MesEventError, events_of_json
from edge.settings import Frozen

logger = logging.getLogger(__name__)

PATH: Final = "/batch-events"
Deliver = Callable[[Sequence[wire.BatchEvent]], Awaitable[None]]


class MesHttpConfig(Frozen):
    """``[mes_http]``: where the endpoint listens and the token the MES must send."""

    port: Annotated[int, Field(ge=1, le=65535)]
    addr: str = "127.0.0.1"  # loopback: only a process on the gateway can post
    token: Annotated[SecretStr, Field(min_length=16)]
    max_body_bytes: Annotated[int, Field(ge=1024, le=64 * 1024 * 1024)] = 1024 * 1024


class MesHttpEndpoint:
    """An agent input: ``start`` binds (a taken port is a StartError), ``close`` unbinds."""

    def __init__(self, config: MesHttpConfig, deliver: Deliver) -> None:
        self.config = config
        self._deliver = deliver
        self._runner: web.AppRunner | None = None
        self.port = config.port

    @property
    def name(self) -> str:
        return f"http {self.config.addr}:{self.config.port}"

    async def start(self) -> None:
        cfg = self.config
        app = web.Application(client_max_size=cfg.max_body_bytes)
        app.router.add_post(PATH, self._post)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, cfg.addr, cfg.port)
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise StartError("[mes_http] port", f"cannot listen on {cfg.addr}:{cfg.port} "
                             f"({exc.strerror or exc})") from exc
        self._runner = runner
        logger.info("MES batch events accepted on http://%s:%s%s", cfg.addr, cfg.port, PATH)

    async def run(self) -> None:
        await asyncio.Event().wait()  # aiohttp serves in its own tasks

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _post(self, request: web.Request) -> web.Response:
        if not self._authorized(request.headers.get("Authorization", "")):
            metrics.MES_EVENTS_REFUSED.labels(source="http", reason="unauthorized").inc()
            logger.warning("MES http: refused a post from %s: missing or wrong token",
                           request.remote)
            return web.json_response({"reason": "unauthorized"}, status=401)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            metrics.MES_EVENTS_REFUSED.labels(source="http", reason="too_large").inc()
            return web.json_response({"reason": "too_large", "error": (
                f"body over max_body_bytes {self.config.max_body_bytes}")}, status=413)
        try:
            events = events_of_json(body)
        except MesEventError as exc:
            metrics.MES_EVENTS_REFUSED.labels(source="http", reason=exc.reason).inc()
            logger.warning("MES http: refused a post from %s: %s", request.remote, exc)
            return web.json_response({"reason": exc.reason, "error": str(exc)}, status=400)
        await self._deliver(events)
        for ev in events:
            metrics.BATCH_EVENTS.labels(source="http", kind=ev.kind).inc()
        return web.json_response({"spooled": len(events)})

    def _authorized(self, header: str) -> bool:
        scheme, _, given = header.partition(" ")
        want = self.config.token.get_secret_value()
        return scheme.lower() == "bearer" and hmac.compare_digest(given.encode(),
                                                                   want.encode())
