"""The ASGI layer in front of every route of the service.

In order, for each request:

1. Open routes (:data:`~bespoke.serving.api.OPEN_ROUTES`, matched exactly) pass without a
   key; ``/docs.json`` is answered here with :func:`~bespoke.serving.api.openapi_document`.
2. Every other route needs a valid API key: ``Authorization: Bearer <key>`` or
   ``X-API-Key: <key>``. When both are sent the Bearer key is the one checked; a blank
   header counts as absent. 401 without a key, 403 with an unknown or revoked one.
   A *publishable* key (``bpk_``, meant for web pages; it may also come as ``?key=`` for
   ``navigator.sendBeacon``, which cannot set headers) works only from a page of an origin
   it lists (403 otherwise; answers carry the CORS headers for that origin, and preflight
   requests are answered for the origins of active publishable keys), only on
   :data:`PUBLISHABLE_ROUTES`, only about the browser's own anonymous id (no ``user_id``
   to personalize or consent for, no forced variant: 403 naming the field), within its
   rate per client and in all (429 with ``Retry-After``). Its events may come as
   ``text/plain`` (a beacon's type).
3. A POST body of a route that takes one must be ``application/json`` (415) and at most
   ``BESPOKE_SERVING_MAX_BODY_BYTES`` (413, naming the limit): it is read here, up to the
   limit, before any route sees it.
4. BentoML's answer to an invalid body (400) becomes 422 with an
   :class:`~bespoke.serving.api.ErrorResponse` naming each field, never its value.
5. The ``direct`` routes (the service's model routes, unless tracing is on) are answered
   here from the body already read, without the framework's per-request dispatch.

Every answer carries ``X-Request-ID`` (the caller's when it is a plain token of at most
100 characters, a new one otherwise), and each request is one JSON line in the access log
(:mod:`bespoke.serving.logs`): request id, method, route template, status, duration, key
name. Never a user id: ``/v1/profiles/{id}`` is logged as that template.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import Any
from urllib.parse import parse_qsl

from cachetools import TTLCache

from bespoke.serving.api import (
    BODY_ROUTES,
    OPEN_PREFIXES,
    OPEN_ROUTES,
    ROUTE_PATHS,
    openapi_document,
)
from bespoke.serving.keys import (
    CLIENT_RATE_PER_MINUTE,
    KEY_RATE_PER_MINUTE,
    PUBLISHABLE_PREFIX,
    ApiKeys,
    KeyInfo,
)
from bespoke.serving.logs import access_log
from bespoke.serving.shared_state import MemoryRequestCounts, RequestCounts, request_counts
from bespoke.settings import Settings, get_settings

#: How long a verified key is trusted without asking the store again (a revoked key stops
#: working within this many seconds).
KEY_TTL_S = 5.0
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,100}$")
_PROFILE_PREFIX = "/v1/profiles/"
_DELETION_PREFIX = "/v1/privacy/deletions/"

#: The name of the API key the current request presented (for the audit log's actor).
CALLER: ContextVar[str | None] = ContextVar("bespoke_caller", default=None)

#: The routes a publishable key may call.
PUBLISHABLE_ROUTES = frozenset({"/v1/events", "/v1/identify", "/v1/consent", "/v1/personalize"})
#: How long the origins of publishable keys are trusted for preflights without asking again.
ORIGINS_TTL_S = 5.0
_ALLOWED_HEADERS = b"content-type, x-api-key, authorization, x-request-id"


class RateLimits:
    """Requests counted in one-minute windows per publishable key and per (key, client):
    in this worker's memory (each worker counts its own share), or once across every
    replica when ``counts`` is shared (:mod:`bespoke.serving.shared_state`)."""

    def __init__(self, counts: RequestCounts | None = None) -> None:
        self.counts = counts if counts is not None else MemoryRequestCounts()

    def take(
        self, key: str, client: str, client_rate: int, key_rate: int, now: float | None = None
    ) -> float | None:
        """Count one request; the seconds to wait when it is over a limit (not counted)."""
        return self.counts.take({f"{key}\x1f{client}": client_rate, key: key_rate}, 60, now)


class Gateway:
    """The ASGI middleware described in the module docstring."""

    def __init__(
        self,
        app: Any,
        settings: Settings | None = None,
        direct: Mapping[str, Callable[[bytes], Any]] | None = None,
    ) -> None:
        settings = settings or get_settings()
        self.app = app
        #: Body routes answered here, past the checks: path → a function from the body
        #: to the route's complete ASGI response (see the service's model routes).
        self.direct = dict(direct or {})
        self.keys = ApiKeys(settings.control_store_url or "")
        self.verified: TTLCache = TTLCache(maxsize=1024, ttl=KEY_TTL_S)
        self.origins: TTLCache = TTLCache(maxsize=1, ttl=ORIGINS_TTL_S)
        self.limits = RateLimits(request_counts(settings))
        self.max_body = settings.serving_max_body_bytes
        self.log = access_log() if settings.access_log else None
        self._document: bytes | None = None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path, method = scope["path"], scope.get("method", "GET")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        given = headers.get("x-request-id", "")
        request_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        answer: dict[str, Any] = {"status": 500}

        async def tagged(message: dict) -> None:
            if message["type"] == "http.response.start":
                answer["status"] = message["status"]
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"x-request-id", request_id.encode())]}  # fmt: skip
            await send(message)

        name: str | None = None
        try:
            if path in OPEN_ROUTES or path.startswith(OPEN_PREFIXES):
                if path == "/docs.json" and method == "GET":
                    await _respond(tagged, 200, self.document())
                else:
                    await self.app(scope, receive, tagged)
                return
            if method == "OPTIONS" and "access-control-request-method" in headers:
                await self._preflight(tagged, headers.get("origin", ""))
                return
            key = presented_key(headers) or _query_key(scope)
            info = None if key is None else self._key_info(key)
            name = None if info is None else info.name
            if key is None:
                await _error(tagged, 401, "an API key is required (Authorization: Bearer …)")
            elif info is None:
                await _error(tagged, 403, "this API key is not valid")
            elif info.publishable:
                await self._publishable(scope, receive, tagged, headers, info)
            else:
                CALLER.set(name)  # the routes name the caller in the audit log
                await self._checked(scope, receive, tagged, headers)
        except _Disconnected:
            answer["status"] = 499  # the client went away before sending its body
        finally:
            if self.log is not None:
                self.log.info(json.dumps({
                    "request_id": request_id, "method": method, "route": route_of(path),
                    "status": answer["status"], "key": name or None,
                    "duration_ms": round(1000 * (time.perf_counter() - started), 3),
                }))  # fmt: skip

    async def _checked(
        self,
        scope: dict,
        receive: Any,
        tagged: Any,
        headers: dict,
        inspect: Callable[[bytes], tuple[int, str, str] | None] | None = None,
    ) -> None:
        """A request with a valid key: its media type and size checked (and its body by
        ``inspect``: a refusal's status, message and field), then answered."""
        path, method = scope["path"], scope.get("method", "GET")
        if method != "POST" or path not in BODY_ROUTES:  # the app answers 404 or 405
            await self.app(scope, receive, _validation_is_422(tagged))
        elif not is_json(headers.get("content-type", "")):
            # The API speaks JSON only; BentoML would try other body parsers (and 500).
            await _error(tagged, 415, "send the body as application/json")
        elif (body := await _read_body(receive, headers, self.max_body)) is None:
            await _error(
                tagged,
                413,
                f"the request body is larger than {self.max_body} bytes",
                limit=self.max_body,
            )
        elif inspect is not None and (refused := inspect(body)) is not None:
            status, message, field = refused
            await _error(tagged, status, message, field=field)
        elif (direct := self.direct.get(path)) is not None:
            await direct(body)(scope, receive, tagged)
        else:
            await self.app(scope, _replay(body, receive), _validation_is_422(tagged))

    async def _publishable(
        self, scope: dict, receive: Any, tagged: Any, headers: dict, info: KeyInfo
    ) -> None:
        """A publishable key's request: from an allowed origin, to an allowed route,
        within its rates, about the browser's own anonymous id."""
        path = scope["path"]
        origin = headers.get("origin", "")
        if not origin:
            await _error(tagged, 403, "a publishable key works from a web page of an allowed "
                         "origin; this request names no Origin")  # fmt: skip
            return
        if origin.lower() not in info.origins:
            await _error(tagged, 403, f"origin {origin!r} is not allowed for this key")
            return
        send = _with_cors(tagged, origin)
        if path not in PUBLISHABLE_ROUTES:
            await _error(send, 403, f"a publishable key cannot call {route_of(path)}")
            return
        client = (scope.get("client") or ("unknown", 0))[0]
        wait = self.limits.take(info.name, client, info.client_rate or CLIENT_RATE_PER_MINUTE,
                                info.key_rate or KEY_RATE_PER_MINUTE)  # fmt: skip
        if wait is not None:
            await _respond(send, 429, json.dumps({
                "error": "too many requests for this key from this client; retry later",
                "retry_after_s": round(wait, 1)}).encode(),
                extra=[(b"retry-after", str(int(wait) + 1).encode())])  # fmt: skip
            return
        CALLER.set(info.name)
        if path == "/v1/events" and headers.get("content-type", "").startswith("text/plain"):
            # navigator.sendBeacon's body: JSON all the same
            headers = {**headers, "content-type": "application/json"}
            scope = {**scope, "headers": [
                (k, v) for k, v in scope["headers"] if k.lower() != b"content-type"
            ] + [(b"content-type", b"application/json")]}  # fmt: skip
        await self._checked(scope, receive, send, headers, inspect=_own_anonymous_id(path))

    async def _preflight(self, send: Any, origin: str) -> None:
        """A browser asking whether a page of ``origin`` may call: yes for the origins of
        active publishable keys (the preflight carries no key)."""
        allowed = self.origins.get("all")
        if allowed is None:
            allowed = self.origins["all"] = self.keys.origins()
        if origin.lower() not in allowed:
            await _error(send, 403, f"origin {origin!r} is not allowed")
            return
        await send({"type": "http.response.start", "status": 204, "headers": [
            (b"access-control-allow-origin", origin.encode()),
            (b"access-control-allow-methods", b"POST, GET, OPTIONS"),
            (b"access-control-allow-headers", _ALLOWED_HEADERS),
            (b"access-control-max-age", b"600"),
            (b"vary", b"Origin"),
        ]})  # fmt: skip
        await send({"type": "http.response.body", "body": b""})

    def document(self) -> bytes:
        if self._document is None:
            self._document = json.dumps(openapi_document()).encode()
        return self._document

    def _key_info(self, key: str) -> KeyInfo | None:
        """The key's information; None when it is not valid."""
        digest = hashlib.sha256(key.encode()).hexdigest()
        info = self.verified.get(digest)
        if info is None:
            info = self.keys.verify(key)
            if info is not None:
                self.verified[digest] = info
        return info


def _query_key(scope: dict) -> str | None:
    """A publishable key sent as ``?key=`` (a beacon cannot set headers); a secret key is
    never taken from a URL (URLs end up in logs)."""
    for name, value in parse_qsl(scope.get("query_string", b"").decode("latin-1")):
        if name == "key" and value.startswith(PUBLISHABLE_PREFIX):
            return value
    return None


def _own_anonymous_id(path: str) -> Callable[[bytes], tuple[int, str, str] | None]:
    """What a publishable key may send to ``path``: requests about the browser's own
    anonymous id (refusals: status, message, field)."""

    def inspect(body: bytes) -> tuple[int, str, str] | None:
        try:
            document = json.loads(body)
        except ValueError:
            return None  # the route's validation names what is wrong
        if not isinstance(document, dict):
            return None
        if path in ("/v1/personalize", "/v1/consent"):
            if document.get("force"):
                return 403, "a publishable key cannot force a variant", "force"
            if document.get("user_id") is not None:
                return (403, "a publishable key acts only for the browser's own anonymous_id, "
                        "not a user_id", "user_id")  # fmt: skip
        # personalize without one is a stranger's answer; these record something of theirs
        if path in ("/v1/consent", "/v1/identify") and not document.get("anonymous_id"):
            return 422, "anonymous_id is required with a publishable key", "anonymous_id"
        if path == "/v1/events" and isinstance(document.get("events"), list):
            for index, event in enumerate(document["events"]):
                if isinstance(event, dict) and not event.get("anonymous_id"):
                    return (422, "every event sent with a publishable key carries the "
                            "browser's anonymous_id", f"events[{index}].anonymous_id")  # fmt: skip
        return None

    return inspect


def _with_cors(send: Any, origin: str) -> Any:
    """``send`` with the CORS headers that let a page of ``origin`` read the answer."""

    async def wrapped(message: dict) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []),
                (b"access-control-allow-origin", origin.encode()), (b"vary", b"Origin"),
                (b"access-control-expose-headers", b"x-request-id, retry-after")]}  # fmt: skip
        await send(message)

    return wrapped


def presented_key(headers: dict[str, str]) -> str | None:
    """The API key a request presents: the Bearer key when there is one, else
    ``X-API-Key``; blank values count as absent."""
    scheme, _, bearer = headers.get("authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer" and bearer.strip():
        return bearer.strip()
    return headers.get("x-api-key", "").strip() or None


def is_json(content_type: str) -> bool:
    """Whether a Content-Type is ``application/json`` (parameters such as charset allowed)."""
    return content_type.split(";", 1)[0].strip().lower() == "application/json"


def route_of(path: str) -> str:
    """The route template a path belongs to, for the log (never a person's id)."""
    if path in ROUTE_PATHS:
        return path
    if path.startswith(_PROFILE_PREFIX):
        return _PROFILE_PREFIX + "{id}"
    if path.startswith(_DELETION_PREFIX):
        return _DELETION_PREFIX + "{id}"
    if path.startswith("/v1/webhooks/"):
        return "/v1/webhooks/{source}"
    if path.startswith(OPEN_PREFIXES):
        return path.split("?", 1)[0][:100]
    return "(unknown)"


class _Disconnected(Exception):
    """The client disconnected before its body was read."""


async def _read_body(receive: Any, headers: dict[str, str], limit: int) -> bytes | None:
    """The request body, or ``None`` as soon as it is known to exceed ``limit`` bytes
    (from Content-Length, or while reading a body sent in chunks)."""
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise _Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Any) -> Any:
    """A ``receive`` that hands the app the body already read, then the client's own."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> dict:
        return pending.pop() if pending else await receive()

    return replayed


def _validation_is_422(send: Any) -> Any:
    """BentoML answers a body it cannot validate with 400, and its other refusals with a
    JSON list: the contract is 422 with one :class:`~bespoke.serving.api.ErrorResponse`
    object (the field paths and messages kept, no value sent)."""
    held: dict[str, Any] = {}

    async def wrapped(message: dict) -> None:
        if message["type"] == "http.response.start" and message["status"] == 400:
            held["start"] = message
            return
        if "start" in held and message["type"] == "http.response.body":
            held["body"] = held.get("body", b"") + message.get("body", b"")
            if message.get("more_body", False):
                return
            start, body = held.pop("start"), held.pop("body")
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = {"error": body.decode(errors="replace")}
            if isinstance(parsed, list):
                parsed = parsed[0] if parsed and isinstance(parsed[0], dict) else {}
            error = {"error": str(parsed.get("error") or "invalid request")}
            if isinstance(parsed.get("detail"), list):
                error["detail"] = parsed["detail"]
            payload = json.dumps(error).encode()
            headers = [
                (k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"
            ]
            headers.append((b"content-length", str(len(payload)).encode()))
            await send({**start, "status": 422, "headers": headers})
            await send({"type": "http.response.body", "body": payload})
            return
        await send(message)

    return wrapped


async def _error(send: Any, status: int, message: str, **extra: Any) -> None:
    await _respond(send, status, json.dumps({"error": message, **extra}).encode())


async def _respond(
    send: Any, status: int, payload: bytes, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
