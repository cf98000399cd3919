"""The ASGI layer in front of every route of the service.

In order, for each request:

1. Open routes (:data:`~bespoke.serving.api.OPEN_ROUTES`, matched exactly) pass without a
   key; ``/docs.json`` is answered here with :func:`~bespoke.serving.api.openapi_document`.
2. Every other route needs a valid API key: ``Authorization: Bearer <key>`` or
   ``X-API-Key: <key>``. When both are sent the Bearer key is the one checked; a blank
   header counts as absent. 401 without a key, 403 with an unknown or revoked one.
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

from cachetools import TTLCache

from bespoke.serving.api import BODY_ROUTES, OPEN_ROUTES, ROUTE_PATHS, openapi_document
from bespoke.serving.keys import ApiKeys
from bespoke.serving.logs import access_log
from bespoke.settings import Settings, get_settings

#: How long a verified key is trusted without asking the store again (a revoked key stops
#: working within this many seconds).
KEY_TTL_S = 5.0
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,100}$")
_PROFILE_PREFIX = "/v1/profiles/"
_DELETION_PREFIX = "/v1/privacy/deletions/"

#: The name of the API key the current request presented (for the audit log's actor).
CALLER: ContextVar[str | None] = ContextVar("bespoke_caller", default=None)


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
        self.keys = ApiKeys(settings.online_store_url or "")
        self.verified: TTLCache = TTLCache(maxsize=1024, ttl=KEY_TTL_S)
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
            if path in OPEN_ROUTES:
                if path == "/docs.json" and method == "GET":
                    await _respond(tagged, 200, self.document())
                else:
                    await self.app(scope, receive, tagged)
                return
            key = presented_key(headers)
            name = None if key is None else self._key_name(key)
            if key is None:
                await _error(tagged, 401, "an API key is required (Authorization: Bearer …)")
            elif not name:
                await _error(tagged, 403, "this API key is not valid")
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

    async def _checked(self, scope: dict, receive: Any, tagged: Any, headers: dict) -> None:
        """A request with a valid key: its media type and size checked, then answered."""
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
        elif (direct := self.direct.get(path)) is not None:
            await direct(body)(scope, receive, tagged)
        else:
            await self.app(scope, _replay(body, receive), _validation_is_422(tagged))

    def document(self) -> bytes:
        if self._document is None:
            self._document = json.dumps(openapi_document()).encode()
        return self._document

    def _key_name(self, key: str) -> str:
        """The key's name; ``""`` when it is not valid."""
        digest = hashlib.sha256(key.encode()).hexdigest()
        name = self.verified.get(digest)
        if name is None:
            info = self.keys.verify(key)
            name = info.name if info is not None else ""
            if name:
                self.verified[digest] = name
        return name


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


async def _respond(send: Any, status: int, payload: bytes) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
