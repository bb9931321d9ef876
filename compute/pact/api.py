"""The PACT v3 REST API (Technical Specifications 3.0.3) over the stored footprints.

    POST /auth/token          OAuth2 client credentials (RFC 6749 §4.4), HTTP Basic
    GET  /3/footprints        ListFootprints: filters, limit, Link rel="next" pages
    GET  /3/footprints/{id}   GetFootprint
    POST /3/events            Action Events: CloudEvents, validated, recorded

Read-only on the footprints: :class:`FootprintSource` hands out what the
export would write (same mapping, validated against the shipped schema) and
records received events. Errors are PACT's ``{"code", "message"}``: a missing,
malformed or unknown token is BadRequest (400), an expired one TokenExpired
(401), a token without the scope AccessDenied (403), an unknown id NotFound
(404); the token endpoint answers in RFC 6749 §5.2 terms (``invalid_client``).
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlencode

import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from compute.pact import filters
from compute.pact.auth import Grant, TokenStore, authenticate
from compute.pact.schema import schema_problems

logger = logging.getLogger(__name__)
__all__ = ["FootprintSource", "create_app"]

EVENT_SCHEMAS = ("RequestCreatedEvent", "RequestFulfilledEvent", "RequestRejectedEvent",
                 "PublishedEvent")
EVENT_MEDIA = ("application/cloudevents+json", "application/json")


class FootprintSource(Protocol):
    def footprints(self) -> Sequence[dict[str, Any]]:
        """Every exchangeable ProductFootprint, in a stable order."""
        ...

    def record_event(self, client_id: str, event: dict[str, Any]) -> None:
        """Keep a received CloudEvent (for the operator to act on)."""
        ...


@dataclass(frozen=True)
class ApiError(Exception):
    status: int
    code: str  # PACT Error.code
    message: str

    def response(self) -> JSONResponse:
        return JSONResponse({"code": self.code, "message": self.message}, self.status)


def _bad(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


class PactApi:
    """The handlers; ``clients``: client id → (secret hash, scopes)."""

    def __init__(self, source: FootprintSource,
                 clients: Mapping[str, tuple[str, frozenset[str]]], tokens: TokenStore) -> None:
        self.source = source
        self.clients = clients
        self.tokens = tokens

    # --- authentication -------------------------------------------------------

    async def token(self, request: Request) -> Response:
        client = _basic(request.headers.get("authorization", ""))
        # RFC 6749 §4.4.2: application/x-www-form-urlencoded (stdlib parse: no multipart)
        form = {k: v[0] for k, v in
                parse_qs((await request.body()).decode("utf-8", "replace")).items()}
        if client is None and "client_id" in form:  # RFC 6749 §2.3.1 body credentials
            client = (str(form["client_id"]), str(form.get("client_secret", "")))
        if client is None:
            return _oauth_error(401, "invalid_client", "client authentication missing "
                                "(HTTP Basic client_id:client_secret)", challenge=True)
        if form.get("grant_type") != "client_credentials":
            return _oauth_error(400, "unsupported_grant_type" if "grant_type" in form else
                                "invalid_request", "grant_type must be client_credentials")
        scopes = await run_in_threadpool(authenticate, self.clients, *client)
        if scopes is None:
            return _oauth_error(401, "invalid_client", "client authentication failed",
                                challenge=True)
        wanted = set(str(form.get("scope", "")).split()) or set(scopes)
        if not wanted <= scopes:
            return _oauth_error(400, "invalid_scope", f"not granted: {sorted(wanted - scopes)}")
        token, _ = self.tokens.issue(client[0], frozenset(wanted))
        return JSONResponse({"access_token": token, "token_type": "bearer",
                             "expires_in": int(self.tokens.ttl_s),
                             "scope": " ".join(sorted(wanted))},
                            headers={"cache-control": "no-store"})

    def _grant(self, request: Request, scope: str | None) -> Grant:
        kind, _, token = request.headers.get("authorization", "").partition(" ")
        if kind.lower() != "bearer" or not token.strip():
            raise _bad("a bearer access token is required (POST /auth/token first)")
        grant = self.tokens.check(token.strip())
        if grant is None:
            raise _bad("invalid access token")
        if self.tokens.expired(grant):
            raise ApiError(401, "TokenExpired", "the access token has expired")
        if scope is not None and scope not in grant.scopes:
            raise ApiError(403, "AccessDenied", f"the token lacks the scope {scope}")
        return grant

    # --- footprints -----------------------------------------------------------

    async def list_footprints(self, request: Request) -> Response:
        self._grant(request, "footprint:list")
        try:
            query = filters.parse(request.query_params.multi_items())
        except filters.QueryError as exc:
            raise _bad(str(exc)) from exc
        found = [pf for pf in await run_in_threadpool(self.source.footprints)
                 if query.matches(pf)]
        page = found[query.offset:] if query.limit is None else \
            found[query.offset:query.offset + query.limit]
        headers = {}
        if query.offset + len(page) < len(found):  # limit=0: the next page has no limit
            link = _next_url(request, query.offset + len(page), drop_limit=query.limit == 0)
            headers["link"] = f'<{link}>; rel="next"'
        return _json({"data": page}, headers=headers)

    async def get_footprint(self, request: Request) -> Response:
        self._grant(request, "footprint:read")
        pf_id = str(request.path_params["id"]).lower()
        if not filters.is_uuid(pf_id):
            raise _bad(f"not a footprint id (a UUID): {pf_id!r}")
        for pf in await run_in_threadpool(self.source.footprints):
            if pf["id"] == pf_id:
                return _json({"data": pf})
        raise ApiError(404, "NotFound", f"no footprint {pf_id}")

    # --- events ---------------------------------------------------------------

    async def events(self, request: Request) -> Response:
        grant = self._grant(request, "events")
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media not in EVENT_MEDIA:
            raise _bad(f"events are application/cloudevents+json, not {media or 'untyped'}")
        try:
            event = orjson.loads(await request.body())
        except orjson.JSONDecodeError as exc:
            raise _bad(f"the body is not JSON: {exc}") from exc
        problem = event_problem(event)
        if problem:
            raise _bad(problem)
        await run_in_threadpool(self.source.record_event, grant.client_id, event)
        return Response(status_code=200)


def event_problem(event: object) -> str | None:
    """Why ``event`` is not one of the four v3 events; None when it is one."""
    if not isinstance(event, dict):
        return "an event is a JSON object (CloudEvents structured mode)"
    kind = event.get("type")
    name = next((n for n in EVENT_SCHEMAS if kind == f"org.wbcsd.pact.ProductFootprint.{n}.3"),
                None)
    if name is None:
        return (f"unknown event type {kind!r}: expected org.wbcsd.pact.ProductFootprint."
                f"<{'|'.join(EVENT_SCHEMAS)}>.3")
    try:
        problems = schema_problems(event, name)
    except Exception as exc:  # a key the schema cannot judge (e.g. "$ref"): not an event
        return f"{name}: cannot be validated: {exc.__class__.__name__}"
    if event.get("specversion") != "1.0":
        problems.append(f"specversion: CloudEvents 1.0 expected, got {event.get('specversion')!r}")
    problems += [f"{k}: CloudEvents needs a non-empty string" for k in ("id", "source")
                 if not event.get(k)]
    return f"{name}: {'; '.join(problems)}" if problems else None


def _basic(header: str) -> tuple[str, str] | None:
    kind, _, value = header.partition(" ")
    if kind.lower() != "basic":
        return None
    try:
        user, sep, secret = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (unquote(user), unquote(secret)) if sep else None


def _oauth_error(status: int, error: str, description: str, challenge: bool = False,
                 ) -> JSONResponse:
    headers = {"www-authenticate": 'Basic realm="pact"'} if challenge else {}
    return JSONResponse({"error": error, "error_description": description}, status, headers)


def _json(body: object, headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), media_type="application/json", headers=headers)


def _next_url(request: Request, offset: int, drop_limit: bool = False) -> str:
    """Absolute, on the host the client called (PACT: host of the original request)."""
    dropped = {"offset", "limit"} if drop_limit else {"offset"}
    params = [(k, v) for k, v in request.query_params.multi_items() if k not in dropped]
    host = request.headers.get("host") or request.url.netloc
    return f"{request.url.scheme}://{host}{request.url.path}?" + urlencode(
        [*params, ("offset", str(offset))])


def _handled(fn: Callable[[Request], Any]) -> Callable[[Request], Any]:
    async def endpoint(request: Request) -> Response:
        try:
            response: Response = await fn(request)
            return response
        except ApiError as err:
            return err.response()
        except Exception:
            logger.exception("PACT API: %s %s failed", request.method, request.url.path)
            return ApiError(500, "InternalError", "an internal error has occurred").response()
    return endpoint


def create_app(source: FootprintSource, clients: Mapping[str, tuple[str, frozenset[str]]],
               tokens: TokenStore) -> Starlette:
    api = PactApi(source, clients, tokens)
    return Starlette(routes=[
        Route("/auth/token", _handled(api.token), methods=["POST"]),
        Route("/3/footprints", _handled(api.list_footprints), methods=["GET"]),
        Route("/3/footprints/{id}", _handled(api.get_footprint), methods=["GET"]),
        Route("/3/events", _handled(api.events), methods=["POST"]),
    ])
