"""The BentoML personalization service: ``bentoml serve bespoke.serving.service:Personalization``.

Thin by design (DESIGN.md): each route parses its typed request, calls the library
(:mod:`bespoke.serving.engine`, :mod:`bespoke.serving.store`) and formats the answer.
BentoML itself serves ``/healthz``, ``/readyz``, ``/livez`` and Prometheus ``/metrics``.
Every other route needs an API key (``bespoke keys create``): 401 without one, 403 with
a wrong or revoked one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any, Literal

import bentoml
from _bentoml_sdk import IODescriptor
from pydantic import ConfigDict, Field

from bespoke.features.schema import EventIn

#: Largest batch ``/v1/events`` takes (the issue's contract): more is a 413.
MAX_EVENTS = 1000
#: Longest user or anonymous id.
MAX_ID_LENGTH = 200
#: Routes anyone may call (health, metrics, the API's own description).
OPEN_PATHS = ("/healthz", "/readyz", "/livez", "/metrics", "/docs.json", "/schema.json")
DATASET_ENV = "BESPOKE_SERVING_DATASET"
ACCESS_LOG_ENV = "BESPOKE_ACCESS_LOG"
_access = logging.getLogger("bespoke.serving.access")
RULES_ENV = "BESPOKE_RULES_PATH"
#: Seconds between two looks at the registry's @champion aliases (0: never look again).
MODEL_POLL_ENV = "BESPOKE_MODEL_POLL_S"


class RecommendRequest(IODescriptor):
    model_config = ConfigDict(extra="forbid")

    user_id: str | None = Field(default=None, max_length=200)
    anonymous_id: str | None = Field(default=None, max_length=200)
    k: int = Field(default=10, ge=1, le=100)
    context: dict[str, Any] = Field(default_factory=dict)
    exclude: list[str] = Field(default_factory=list, max_length=1000)
    categories: list[str] | None = Field(default=None, max_length=100)
    rank: bool = Field(
        default=False,
        description="Rerank the recommender's candidates with the @champion ranker "
        "(slower; /v1/personalize ranks its recommendation slots by default).",
    )


class RecommendedItem(IODescriptor):
    item_id: str
    score: float | None
    reason: str


class RecommendResponse(IODescriptor):
    user_id: str | None
    items: list[RecommendedItem]
    content: list[dict[str, Any]]
    rules: list[str]
    model_version: str


class SlotRequest(IODescriptor):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=100)
    kind: Literal["recommendations", "content"] = "recommendations"
    k: int = Field(default=10, ge=1, le=100)
    rank: bool = Field(default=True, description="Rerank with the @champion ranker.")


class PersonalizeRequest(IODescriptor):
    model_config = ConfigDict(extra="forbid")

    user_id: str | None = Field(default=None, max_length=200)
    anonymous_id: str | None = Field(default=None, max_length=200)
    slots: list[SlotRequest] = Field(min_length=1, max_length=20)
    context: dict[str, Any] = Field(default_factory=dict)
    exclude: list[str] = Field(default_factory=list, max_length=1000)


class SlotOut(IODescriptor):
    id: str
    kind: str
    items: list[RecommendedItem]
    content: list[dict[str, Any]]
    rules: list[str]


class PersonalizeResponse(IODescriptor):
    user_id: str | None
    variant: str | None = Field(description="The experiment variant (none run yet).")
    slots: list[SlotOut]
    model_version: str


class EventsRequest(IODescriptor):
    model_config = ConfigDict(extra="forbid")

    events: list[EventIn] = Field(min_length=1)


class EventsResponse(IODescriptor):
    accepted: int
    rejected: int
    duplicates: int
    errors: list[dict[str, Any]]


@dataclass
class Person:
    id: str | None
    version: str | None  # the latest event's time: part of the cache key
    profile: Any  # bespoke.features.build.Profile
    events: list[dict[str, Any]]


def _answer(body: bytes) -> Any:
    """The answer as one plain response (the bytes the cache keeps). A returned model
    would be serialized again by BentoML and sent as a streamed body: more ASGI messages
    through every middleware, on every request. The routes' output_spec still documents
    the shape."""
    from starlette.responses import Response

    return Response(body, media_type="application/json")


def _item(item: Any) -> RecommendedItem:
    return RecommendedItem(item_id=item.item_id, score=item.score, reason=item.reason)


class TooManyEvents(bentoml.exceptions.BentoMLException):
    """A batch over :data:`MAX_EVENTS`: 413, and nothing of it is applied."""

    error_code = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


class ApiKeyMiddleware:
    """ASGI middleware: every route outside :data:`OPEN_PATHS` needs a valid key, given as
    ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``; every answer carries an
    ``X-Request-ID`` (the caller's, or a new one), and each request is one JSON log line
    (request id, route, status, duration, key name: no user ids, no PII). Set
    ``BESPOKE_ACCESS_LOG=false`` to drop the log lines."""

    #: How long a verified key is trusted without asking the store again (a revoked key
    #: stops working within this many seconds).
    KEY_TTL_S = 5.0

    def __init__(self, app: Any) -> None:
        from cachetools import TTLCache

        from bespoke.serving.keys import ApiKeys
        from bespoke.settings import get_settings

        self.app = app
        self.keys = ApiKeys(get_settings().online_store_url or "")
        self.verified: TTLCache = TTLCache(maxsize=1024, ttl=self.KEY_TTL_S)
        self.log = os.environ.get(ACCESS_LOG_ENV, "true").lower() not in ("0", "false", "no")

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"].startswith(OPEN_PATHS):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        request_id = headers.get("x-request-id") or uuid.uuid4().hex
        answer: dict[str, Any] = {"status": 500}

        async def tagged(message: dict) -> None:
            if message["type"] == "http.response.start":
                answer["status"] = message["status"]
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"x-request-id", request_id.encode())]}  # fmt: skip
            await send(message)

        name = self._key_name(headers)
        try:
            if name is None:
                await _json(
                    tagged, 401, {"error": "an API key is required (Authorization: Bearer …)"}
                )
            elif name == "":
                await _json(tagged, 403, {"error": "this API key is not valid"})
            elif scope.get("method") == "POST" and not headers.get("content-type", "").startswith(
                "application/json"
            ):  # the API speaks JSON only; BentoML would try other body parsers (and 500)
                await _json(tagged, 415, {"error": "send the body as application/json"})
            else:
                await self.app(scope, receive, _validation_is_422(tagged))
        finally:
            if self.log:
                _access.info(json.dumps({
                    "request_id": request_id, "method": scope.get("method"),
                    "path": scope["path"], "status": answer["status"], "key": name or None,
                    "duration_ms": round(1000 * (time.perf_counter() - started), 3),
                }))  # fmt: skip

    def _key_name(self, headers: dict[str, str]) -> str | None:
        """The key's name; ``None`` when no key was given, ``""`` when it is not valid."""
        key = headers.get("x-api-key")
        bearer = headers.get("authorization", "")
        if key is None and bearer.lower().startswith("bearer "):
            key = bearer[7:].strip()
        if not key:
            return None
        digest = hashlib.sha256(key.encode()).hexdigest()
        name = self.verified.get(digest)
        if name is None:
            info = self.keys.verify(key)
            name = info.name if info is not None else ""
            if name:
                self.verified[digest] = name
        return name


def _validation_is_422(send: Any) -> Any:
    """BentoML answers a request that fails validation with 400; the contract is 422
    (the body, naming the field path, is kept). Other 400s stay as they are."""
    held: dict[str, Any] = {}

    async def wrapped(message: dict) -> None:
        if message["type"] == "http.response.start" and message["status"] == 400:
            held["start"] = message
            return
        if "start" in held and message["type"] == "http.response.body":
            start = held.pop("start")
            body = message.get("body", b"")
            if b"validation error" in body and b'"loc"' in body:
                start = {**start, "status": 422}
            await send(start)
        await send(message)

    return wrapped


async def _json(send: Any, status: int, body: dict) -> None:
    payload = json.dumps(body).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


async def _get_profile(request: Any) -> Any:
    """``GET /v1/profiles/{id}[?anonymous=true]``: the person as the store knows them;
    404 when it knows nothing of them."""
    from starlette.responses import JSONResponse

    person = request.path_params["person"]
    if not 1 <= len(person) <= MAX_ID_LENGTH:
        return JSONResponse(
            {"error": f"a person id is 1 to {MAX_ID_LENGTH} characters", "loc": ["path", "id"]},
            status_code=422,
        )
    flag = request.query_params.get("anonymous", "false").lower()
    if flag not in ("true", "false", "1", "0"):
        return JSONResponse(
            {"error": "anonymous is true or false", "loc": ["query", "anonymous"]},
            status_code=422,
        )
    service = bentoml.get_current_service()
    view = service.store.profile(person, service.dataset, anonymous=flag in ("true", "1"))
    if not view.known:
        return JSONResponse({"error": f"no profile for {person!r}"}, status_code=404)
    return JSONResponse(view.model_dump(mode="json"))


def _profiles_app() -> Any:
    from starlette.applications import Starlette
    from starlette.routing import Route

    return Starlette(routes=[Route("/{person:str}", _get_profile, methods=["GET"])])


def _flag(name: str, default: bool) -> bool:
    return os.environ.get(name, str(default)).strip().lower() in ("1", "true", "yes", "on")


# Per-request overheads off by default, each one setting away: BentoML's access log (ours,
# BESPOKE_ACCESS_LOG, is structured and carries request ids), and OpenTelemetry's
# per-request instrumentation (BESPOKE_TRACING=true turns it back on; set
# OTEL_SDK_DISABLED=false and an exporter in BENTOML_CONFIG to ship the spans).
# Prometheus /metrics stays on. BESPOKE_SERVING_WORKERS sets the worker processes.
_SERVICE_CONFIG: dict[str, Any] = {
    "traffic": {"timeout": 30},
    "workers": int(os.environ.get("BESPOKE_SERVING_WORKERS", "1")),
    "logging": {"access": {"enabled": _flag("BESPOKE_BENTOML_ACCESS_LOG", False)}},
    **({} if _flag("BESPOKE_TRACING", False) else {"tracing": {"excluded_urls": [".*"]}}),
}


# GET with the id in the path is a plain Starlette route mounted beside the BentoML
# routes (which are POST bodies); the API-key middleware guards it as the rest.
@bentoml.asgi_app(_profiles_app(), path="/v1/profiles")
@bentoml.service(name="bespoke", **_SERVICE_CONFIG)
class Personalization:
    def __init__(self) -> None:
        from cachetools import TTLCache

        from bespoke.features.lake import Lake
        from bespoke.serving.champions import (
            ChampionWatcher,
            champion_versions,
            load_from_bento,
            load_from_registry,
            model_source,
        )
        from bespoke.serving.engine import Engine, Experiments
        from bespoke.serving.rules import SHIPPED_RULES_DIR, RulesFile
        from bespoke.serving.store import open_store
        from bespoke.settings import get_settings
        from bespoke.training.data import load_catalog

        settings = get_settings()
        self.dataset = os.environ.get(DATASET_ENV, "ml-100k")
        self.store = open_store(settings)
        self.watcher: Any = None
        # Inside a built Bento the packaged models serve (frozen with it); from source,
        # the registry's @champions, followed as they move.
        self.model_source = model_source(in_bento=Personalization.bento is not None)
        if self.model_source == "bento":
            models = load_from_bento(self.dataset)
        else:
            uri = settings.mlflow_tracking_uri or ""
            versions = champion_versions(uri, self.dataset)
            models = load_from_registry(uri, self.dataset, versions)
            interval = float(os.environ.get(MODEL_POLL_ENV, "30"))
            if interval > 0:
                self.watcher = ChampionWatcher(
                    uri, self.dataset, versions, self._swap, interval
                ).start()
        catalog = load_catalog(Lake(settings.lake_url), self.dataset)
        categories = {
            str(item): [str(g) for g in (genres if genres is not None else [])]
            for item, genres in zip(catalog["item_id"], catalog["genres"], strict=True)
        }
        rules = RulesFile(os.environ.get(RULES_ENV) or SHIPPED_RULES_DIR)
        self.engine = Engine(models, categories, rules)
        self.experiments = Experiments()
        self.cache: TTLCache = TTLCache(maxsize=50_000, ttl=60)

    def _swap(self, models: Any) -> None:
        """New @champions (from the watcher's thread): one assignment, so each request
        sees the old or the new models, never a mix; cached answers carry the model
        version in their key, so none of the old ones is served again."""
        self.engine.models = models

    def _person(self, user_id: str | None, anonymous_id: str | None) -> Person:
        """What the store knows of the person a request is about (nothing: a stranger)."""
        from bespoke.features.build import Profile

        person = user_id or anonymous_id
        if person is None:
            return Person(None, None, Profile(user_id=""), [])
        # The latest event is part of every cache key: a new event changes the answer in
        # every worker, without cross-process invalidation.
        snapshot = self.store.snapshot(person, self.dataset, anonymous=user_id is None)
        return Person(person, snapshot.version, snapshot.profile, snapshot.events)

    def _cached(self, kind: str, person: Person, request: IODescriptor) -> tuple[str, Any]:
        key = hashlib.sha256(
            json.dumps([kind, person.id, person.version, request.model_dump(mode="json"),
                        self.engine.models.version], sort_keys=True).encode()
        ).hexdigest()  # fmt: skip
        return key, self.cache.get(key)

    # The model routes are coroutines that do their (short, CPU-bound) work inline on the
    # event loop, as a bare ASGI app would. As plain methods BentoML runs them in a thread
    # pool, and the hand-over of the GIL between that thread and the loop (Python's 5 ms
    # switch interval) tripled the median latency of a 1 ms call.
    @bentoml.api(route="/v1/recommend", input_spec=RecommendRequest, output_spec=RecommendResponse)
    async def recommend(self, **request: Any) -> Any:
        request = RecommendRequest(**request)
        person = self._person(request.user_id, request.anonymous_id)
        key, cached = self._cached("recommend", person, request)
        if cached is not None:
            return _answer(cached)
        answer = self.engine.recommend(
            person.profile,
            person.events,
            k=request.k,
            context=request.context,
            exclude=request.exclude,
            categories=request.categories,
            now=datetime.now(UTC),
            ranked=request.rank,
        )
        response = RecommendResponse(
            user_id=person.id,
            items=[_item(i) for i in answer.items],
            content=answer.content,
            rules=answer.rules,
            model_version=answer.model_version,
        )
        self.cache[key] = body = response.model_dump_json().encode()
        return _answer(body)

    @bentoml.api(
        route="/v1/personalize", input_spec=PersonalizeRequest, output_spec=PersonalizeResponse
    )
    async def personalize(self, **request: Any) -> Any:
        from bespoke.serving.engine import Slot

        request = PersonalizeRequest(**request)
        person = self._person(request.user_id, request.anonymous_id)
        key, cached = self._cached("personalize", person, request)
        if cached is not None:
            return _answer(cached)
        slots = self.engine.personalize(
            person.profile,
            person.events,
            [Slot(s.id, s.kind, s.k, s.rank) for s in request.slots],
            context=request.context,
            exclude=request.exclude,
            now=datetime.now(UTC),
        )
        response = PersonalizeResponse(
            user_id=person.id,
            variant=self.experiments.variant(person.id, request.context),
            slots=[
                SlotOut(
                    id=s.id,
                    kind=s.kind,
                    items=[_item(i) for i in s.items],
                    content=s.content,
                    rules=s.rules,
                )
                for s in slots
            ],
            model_version=self.engine.models.version,
        )
        self.cache[key] = body = response.model_dump_json().encode()
        return _answer(body)

    @bentoml.api(route="/v1/events", input_spec=EventsRequest, output_spec=EventsResponse)
    def events(self, **request: Any) -> EventsResponse:
        batch = EventsRequest(**request).events
        if len(batch) > MAX_EVENTS:
            raise TooManyEvents(f"at most {MAX_EVENTS} events per request, got {len(batch)}")
        result = self.store.accept_events(batch, self.dataset)
        return EventsResponse(
            accepted=result.accepted,
            rejected=result.rejected,
            duplicates=result.duplicates,
            errors=[e.model_dump() for e in result.errors],
        )

    @bentoml.api(route="/v1/profiles")
    def profiles(self, user_id: str, anonymous: bool = False) -> dict:
        view = self.store.profile(user_id, self.dataset, anonymous=anonymous)
        return view.model_dump(mode="json")


Personalization.add_asgi_middleware(ApiKeyMiddleware)
