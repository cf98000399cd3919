"""The BentoML personalization service: ``bentoml serve bespoke.serving.service:Personalization``.

Thin by design (DESIGN.md): each route parses its typed request (:mod:`bespoke.serving.api`),
calls the library (:mod:`bespoke.serving.engine`, :mod:`bespoke.serving.store`) and
formats the answer. BentoML itself serves ``/healthz``, ``/readyz``, ``/livez`` and
Prometheus ``/metrics``. In front of every route, :class:`~bespoke.serving.middleware.Gateway`
checks API keys (``bespoke keys create``), media types and body sizes, tags request ids
and writes the access log; ``/docs.json`` is the OpenAPI document.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import bentoml
from _bentoml_sdk import IODescriptor

from bespoke.serving.api import (
    MAX_EVENTS,
    EventsRequest,
    EventsResponse,
    PersonalizeRequest,
    PersonalizeResponse,
    ProfileRequest,
    RecommendedItem,
    RecommendRequest,
    RecommendResponse,
    SlotOut,
)
from bespoke.serving.middleware import Gateway
from bespoke.settings import get_settings


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


def _json(body: dict[str, Any], status: int = 200) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse(body, status_code=status)


def _profile(person: str, anonymous: bool) -> Any:
    """The person as the store knows them, the same for ``GET`` and ``POST``: 404 when it
    knows nothing of them (the answer does not repeat the id)."""
    service = bentoml.get_current_service()
    view = service.store.profile(person, service.dataset, anonymous=anonymous)
    if not view.known:
        return _json({"error": "no profile for this person"}, 404)
    return _json(view.model_dump(mode="json"))


async def _get_profile(request: Any) -> Any:
    """``GET /v1/profiles/{id}[?anonymous=true]``: checked as ``POST /v1/profiles`` is."""
    from pydantic import ValidationError

    try:
        query = ProfileRequest.model_validate(
            {"user_id": request.path_params["person"],
             "anonymous": request.query_params.get("anonymous", "false")},
            strict=False,  # a query string carries text: "true", "false", "1", "0"
        )  # fmt: skip
    except ValidationError as error:
        where = {"user_id": ["path", "id"], "anonymous": ["query", "anonymous"]}
        detail = [
            {**e, "loc": where.get(str(e["loc"][0]), list(e["loc"]))}
            for e in error.errors(include_input=False, include_context=False, include_url=False)
        ]
        return _json({"error": "invalid request", "detail": detail}, 422)
    return _profile(query.user_id, query.anonymous)


def _profiles_app() -> Any:
    from starlette.applications import Starlette
    from starlette.routing import Route

    return Starlette(routes=[Route("/{person:path}", _get_profile, methods=["GET"])])


_SETTINGS = get_settings()
# Per-request overheads off by default, each one setting away: BentoML's access log (ours,
# BESPOKE_ACCESS_LOG, is structured and carries request ids), and OpenTelemetry's
# per-request instrumentation (BESPOKE_TRACING=true turns it back on; set
# OTEL_SDK_DISABLED=false and an exporter in BENTOML_CONFIG to ship the spans).
# Prometheus /metrics stays on. BESPOKE_SERVING_WORKERS sets the worker processes.
_SERVICE_CONFIG: dict[str, Any] = {
    "traffic": {"timeout": 30},
    "workers": _SETTINGS.serving_workers,
    "logging": {"access": {"enabled": _SETTINGS.bentoml_access_log}},
    **({} if _SETTINGS.tracing else {"tracing": {"excluded_urls": [".*"]}}),
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
        from bespoke.serving.logs import configure_service_logging
        from bespoke.serving.rules import SHIPPED_RULES_DIR, RulesFile
        from bespoke.serving.store import open_store
        from bespoke.serving.watchdog import exit_with_parent
        from bespoke.training.data import load_catalog

        configure_service_logging()
        exit_with_parent()  # a kill -9 of the server must not leave this worker serving
        settings = get_settings()
        self.dataset = settings.serving_dataset
        self.store = open_store(settings)
        self.watcher: Any = None
        # Inside a built Bento the packaged models serve (frozen with it); from source,
        # the registry's @champions, followed as they move.
        self.model_source = model_source(settings, in_bento=Personalization.bento is not None)
        if self.model_source == "bento":
            models = load_from_bento(self.dataset)
        else:
            uri = settings.mlflow_tracking_uri or ""
            versions = champion_versions(uri, self.dataset)
            models = load_from_registry(uri, self.dataset, versions)
            interval = settings.model_poll_s
            if interval > 0:
                self.watcher = ChampionWatcher(
                    uri, self.dataset, versions, self._swap, interval
                ).start()
        catalog = load_catalog(Lake(settings.lake_url), self.dataset)
        categories = {
            str(item): [str(g) for g in (genres if genres is not None else [])]
            for item, genres in zip(catalog["item_id"], catalog["genres"], strict=True)
        }
        rules = RulesFile(settings.rules_path or SHIPPED_RULES_DIR)
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
    def events(self, **request: Any) -> Any:
        batch = EventsRequest(**request).events
        if len(batch) > MAX_EVENTS:  # nothing of it is applied
            return _json(
                {"error": f"at most {MAX_EVENTS} events per request, got {len(batch)}",
                 "limit": MAX_EVENTS},
                413,
            )  # fmt: skip
        result = self.store.accept_events(batch, self.dataset)
        return EventsResponse(
            accepted=result.accepted,
            rejected=result.rejected,
            duplicates=result.duplicates,
            errors=[e.model_dump() for e in result.errors],
        )

    @bentoml.api(route="/v1/profiles", input_spec=ProfileRequest)
    def profiles(self, **request: Any) -> Any:
        query = ProfileRequest(**request)
        return _profile(query.user_id, query.anonymous)


Personalization.add_asgi_middleware(Gateway)
