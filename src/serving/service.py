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
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import bentoml
from pydantic import BaseModel, ValidationError
from pydantic_core import to_json
from starlette.responses import Response

from bespoke.channels.web import demo_app, sdk_app
from bespoke.experiments.runtime import treatment
from bespoke.features.schema import person_id_of
from bespoke.privacy.audit import audit_log, person_pseudonym
from bespoke.privacy.stores import AnswerCaches
from bespoke.serving.api import (
    CATALOG_FIELDS,
    DELETION_ID_PATTERN,
    MAX_EVENTS,
    ConsentRequest,
    ConsentResponse,
    DeletionCall,
    DeletionOut,
    EventsRequest,
    EventsResponse,
    IdentifyRequest,
    IdentifyResponse,
    PersonalizeRequest,
    PersonalizeResponse,
    ProfileRequest,
    RecommendRequest,
    RecommendResponse,
)
from bespoke.serving.middleware import CALLER, Gateway
from bespoke.settings import get_settings

#: Seconds between two looks at the webhook outbox.
WEBHOOK_POLL_S = 1.0


def _answer(body: bytes) -> Any:
    """The answer as one plain response (the bytes the cache keeps). A returned model
    would be serialized again by BentoML and sent as a streamed body: more ASGI messages
    through every middleware, on every request. The routes' output_spec still documents
    the shape."""
    return Response(body, media_type="application/json")


def _encode(answer: dict[str, Any]) -> bytes:
    """An answer as JSON, in its response model's field order. The engine's answers are
    already plain values, so building and validating the response models again (a model
    per item) only to serialize them cost more than the JSON itself; non-finite scores
    are ``null``, as the models write them."""
    return to_json(answer, inf_nan_mode="null")


def _items(
    items: Any, catalog: dict[str, dict[str, Any]], fields: list[str] | None
) -> list[dict[str, Any]]:
    """The engine's items as ``RecommendedItem`` fields, with the catalog ``fields`` asked
    (None: all it has) that the catalog holds for each item."""
    wanted = CATALOG_FIELDS if fields is None else fields
    out = []
    for item in items:
        known = catalog.get(item.item_id, {})
        out.append({"item_id": item.item_id, "score": item.score, "reason": item.reason,
                    **{f: known[f] for f in wanted if f in known}})  # fmt: skip
    return out


#: Where BentoML logs a route's exception (the logs module redacts validation inputs there).
_ROUTE_ERRORS = logging.getLogger("bentoml._internal.server.http_app")
_SERVER_HEADER = "BentoML Service/bespoke"


def _direct(route: str, spec: type[BaseModel], method: str) -> Callable[[bytes], Response]:
    """A model route as the Gateway answers it (``direct``), as BentoML would: the body
    validated into the route's ``input_spec`` once, the answer of the instance's method,
    a 422 naming each field or a 500 otherwise (logged as BentoML logs them), and
    BentoML's ``Server`` header. It skips BentoML's per-request dispatch (routing, request
    context, a signature bound per call, dependency-injected response headers, background
    tasks), which cost as much CPU as the route's own answer on a cache hit; BentoML's
    metrics, tracing, access log and timeout middlewares are in front of the Gateway and
    still see every request."""

    def answer(body: bytes) -> Response:
        try:
            request = spec.model_validate_json(body or b"{}")
            response = getattr(bentoml.get_current_service(), method)(request)
        except ValidationError as error:
            _ROUTE_ERRORS.error("Exception on %s [POST]", route, exc_info=True)
            detail = error.errors(include_context=False, include_input=False)
            text = f"{error.error_count()} validation error for {error.title}"
            response = Response(
                json.dumps({"error": text, "detail": detail}).encode(),
                status_code=422,
                media_type="application/json",
            )
        except Exception:
            _ROUTE_ERRORS.error("Exception on %s [POST]", route, exc_info=True)
            message = "An unexpected error has occurred, please check the server log."
            response = _json({"error": message}, 500)
        response.headers["server"] = _SERVER_HEADER
        return response

    return answer


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
    named = f"{'anonymous_id' if anonymous else 'user_id'}:{person}"
    service.audit.append("profile.read", actor=CALLER.get() or "", person=person_pseudonym(
        service.settings.pseudonym_key(), service.dataset, named))  # fmt: skip
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


async def _get_deletion(request: Any) -> Any:
    """``GET /v1/privacy/deletions/{id}``: a deletion request's status and outcome."""
    import re

    request_id = request.path_params["request_id"]
    if not re.fullmatch(DELETION_ID_PATTERN, request_id):
        return _json({"error": "invalid request", "detail": [{
            "loc": ["path", "id"], "type": "string_pattern_mismatch",
            "msg": f"a deletion id is 32 hexadecimal digits ({DELETION_ID_PATTERN})"}]}, 422)  # fmt: skip
    service = bentoml.get_current_service()
    found = service.privacy().deletions(actor=CALLER.get() or "").get(request_id)
    if found is None:
        return _json({"error": "no deletion request with this id"}, 404)
    return _json(found.as_dict())


def _deletions_app() -> Any:
    from starlette.applications import Starlette
    from starlette.routing import Route

    return Starlette(routes=[Route("/{request_id:path}", _get_deletion, methods=["GET"])])


async def _inbound(request: Any) -> Any:
    """``POST /v1/webhooks/{source}``: a commerce platform's order, signed, as purchase
    events (:mod:`bespoke.channels.inbound`); no API key: the signature is the credential."""
    from bespoke.channels.inbound import InboundError, check_signature, order_events

    service = bentoml.get_current_service()
    name = request.path_params["source"]
    source = service.inbound.get(name)
    if source is None:
        return _json({"error": f"no inbound webhook source named {name[:100]!r}"}, 404)
    limit = service.settings.serving_max_body_bytes
    declared = request.headers.get("content-length", "")
    body = b""
    if not (declared.isdigit() and int(declared) > limit):
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                break
    if len(body) > limit or (declared.isdigit() and int(declared) > limit):
        return _json(
            {"error": f"the request body is larger than {limit} bytes", "limit": limit}, 413
        )
    try:
        check_signature(source, request.headers, body)
        try:
            order = json.loads(body)
        except ValueError:
            raise InboundError(422, "the body is not JSON", "body") from None
        events = order_events(name, source, order)
    except InboundError as error:
        return _json({"error": str(error), "field": error.field}, error.status)
    result = service.store.accept_events(events, source.dataset or service.dataset,
                                         scorer=service.scorer)  # fmt: skip
    return _json({"accepted": result.accepted, "duplicates": result.duplicates,
                  "rejected": result.rejected,
                  "errors": [e.model_dump() for e in result.errors]})  # fmt: skip


def _inbound_app() -> Any:
    from starlette.applications import Starlette
    from starlette.routing import Route

    return Starlette(routes=[Route("/{source}", _inbound, methods=["POST"])])


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
@dataclass(frozen=True)
class _Prepared:
    """What a model route computes from: who, the cache key, the profile, assignments."""

    person: str | None
    version: str | None
    key: str
    snapshot: Any
    now: datetime
    assigned: list[Any]
    #: False: the answer a stranger gets (consent withdrawn, or nobody known).
    personalized: bool


def _experimenter(settings: Any, dataset: str, store: Any, model_source: str) -> Any:
    """The experiments of ``settings.experiments_path`` (None when unset). Variants may pin
    only registered models (a Bento serves its packaged champions alone)."""
    if settings.experiments_path is None:
        return None
    from bespoke.experiments.ledger import ExperimentLedger
    from bespoke.experiments.runtime import (
        Experimenter,
        ExperimentsFile,
        no_pinned_models,
        reference_check,
    )
    from bespoke.training.registry import Registry

    check = (
        reference_check(Registry(settings.mlflow_tracking_uri or ""), dataset)
        if model_source == "registry"
        else no_pinned_models
    )
    watched = ExperimentsFile(settings.experiments_path, check=check)
    return Experimenter(watched, ExperimentLedger(store.database()), dataset)


def _variant_models(settings: Any, dataset: str, chosen: Any, *, catalog: bool) -> Any:
    """The models an experiment variant pins: its recommender version (or its family's
    newest registered version) with the @champion ranker."""
    from bespoke.serving.champions import champion_versions, load_from_registry
    from bespoke.training.registry import Registry

    uri = settings.mlflow_tracking_uri or ""
    version = chosen.recommender_version or Registry(uri).latest_of_family(
        "recommender", dataset, chosen.recommender_family
    )
    versions = {**champion_versions(uri, dataset), "recommender": version}
    return load_from_registry(uri, dataset, versions, catalog=catalog)


def _live_scorer(settings: Any, dataset: str) -> Any:
    """The dataset's segment, churn and value models for re-scoring people as their events
    arrive; none (nothing re-scored) where they are not trained or cannot be read."""
    from bespoke.segments.live import LiveScorer

    try:
        return LiveScorer.load(settings, dataset)
    except Exception as error:  # a broken model must not stop the service answering
        logging.getLogger(__name__).warning("live scoring is off: %s", error)
        return LiveScorer()


@bentoml.asgi_app(_inbound_app(), path="/v1/webhooks")
@bentoml.asgi_app(sdk_app(), path="/sdk")
@bentoml.asgi_app(demo_app(lambda: bentoml.get_current_service().catalog), path="/demo")
@bentoml.asgi_app(_profiles_app(), path="/v1/profiles")
@bentoml.asgi_app(_deletions_app(), path="/v1/privacy/deletions")
@bentoml.service(name="bespoke", **_SERVICE_CONFIG)
class Personalization:
    def __init__(self) -> None:
        from bespoke.features.lake import Lake
        from bespoke.segments.live import known_segments
        from bespoke.serving.champions import (
            ChampionWatcher,
            champion_versions,
            load_from_bento,
            load_from_registry,
            model_source,
        )
        from bespoke.serving.engine import Engine
        from bespoke.serving.logs import configure_service_logging
        from bespoke.serving.rules import SHIPPED_RULES_DIR, RulesFile
        from bespoke.serving.shared_state import answer_cache
        from bespoke.serving.store import open_store
        from bespoke.serving.watchdog import exit_with_parent
        from bespoke.training.data import (
            catalog_categories,
            catalog_fields,
            event_counts,
            load_catalog,
        )

        configure_service_logging()
        exit_with_parent()  # a kill -9 of the server must not leave this worker serving
        settings = get_settings()
        self.settings = settings
        self.dataset = settings.serving_dataset
        self.store = open_store(settings)
        self._privacy: Any = None
        self.watcher: Any = None
        lake = Lake(settings.lake_url)
        _, item_events = event_counts(lake, self.dataset)
        # Inside a built Bento the packaged models serve (frozen with it); from source,
        # the registry's @champions, followed as they move.
        self.model_source = model_source(settings, in_bento=Personalization.bento is not None)
        if self.model_source == "bento":
            self._load_models = lambda: load_from_bento(self.dataset)
            models = self._load_models()
        else:
            uri = settings.mlflow_tracking_uri or ""
            versions = champion_versions(uri, self.dataset)
            self._load_models = lambda: load_from_registry(
                uri, self.dataset, self.watcher.current if self.watcher else versions,
                catalog=bool(item_events),
            )  # fmt: skip
            models = load_from_registry(uri, self.dataset, versions, catalog=bool(item_events))
            interval = settings.model_poll_s
            if interval > 0:
                self.watcher = ChampionWatcher(
                    uri, self.dataset, versions, self._swap, interval
                ).start()
        catalog = load_catalog(lake, self.dataset)
        self.catalog = catalog_fields(catalog)
        categories = catalog_categories(catalog)
        self.scorer = _live_scorer(settings, self.dataset)
        segments = known_segments(self.scorer.segmenter, lake, self.dataset)
        rules = RulesFile(settings.rules_path or SHIPPED_RULES_DIR, segments=segments)
        self.engine = Engine(
            models, categories, rules,
            load_variant=lambda treatment: _variant_models(settings, self.dataset, treatment,
                                                           catalog=bool(item_events)),
        )  # fmt: skip
        self.experimenter = _experimenter(settings, self.dataset, self.store, self.model_source)
        # answers by key: this worker's, or shared by every replica beside a Redis store
        self.cache = answer_cache(settings)
        self.gate = self.store.gate()
        from bespoke.channels.inbound import load_sources

        #: The commerce platforms that may POST orders (a bad file stops the start).
        self.inbound = load_sources(settings.inbound_webhooks_path)
        from bespoke.stream.events import RedisEventStream

        #: Where /v1/events appends when a stream is configured (workers apply it).
        self.stream = (RedisEventStream(settings.event_stream_url)
                       if settings.event_stream_url else None)  # fmt: skip
        self.audit = audit_log(settings)
        # Every worker empties its answer cache when a deletion advances this (one stat
        # per request): no answer about an erased person stays in any worker's memory.
        self.erasures = AnswerCaches(self.store.database())
        self.erasure_mark = self.erasures.mark()
        if settings.webhook_url:
            from bespoke.serving.webhooks import deliver_every

            threading.Thread(
                target=deliver_every, args=(self.store.database(), settings, WEBHOOK_POLL_S),
                kwargs={"carts": self.store.abandoned_carts}, name="bespoke-webhooks",
                daemon=True,
            ).start()  # fmt: skip

    def _swap(self, models: Any) -> None:
        """New @champions (from the watcher's thread): one assignment, so each request
        sees the old or the new models, never a mix; cached answers carry the model
        version in their key, so none of the old ones is served again."""
        self.engine.models = models

    def _reload_after_erasure(self) -> None:
        """Load the served models again from their files, which a deletion re-exported
        without the person: the copy in this worker's memory still holds them."""
        try:
            self._swap(self._load_models())
            logging.getLogger(__name__).info("models reloaded after an erasure")
        except Exception as error:  # keep serving; the files are what a restart loads
            logging.getLogger(__name__).warning("reloading models after an erasure: %r", error)

    def _key(
        self, kind: str, person: str | None, version: str | None, request: Any, allowed: bool
    ) -> str:
        """The answer cache's key: the route, the person, whether they may get a personal
        answer and their profile's version, the models' version and every field of the
        (validated) request."""
        experiments = self.experimenter.config_version() if self.experimenter else None
        fields = json.dumps(
            [
                kind,
                person,
                allowed,
                version,
                self.engine.models.version,
                experiments,
                request.__dict__,
            ],
            sort_keys=True,
            default=vars,  # nested request models (personalize's slots): their fields
        )
        return hashlib.sha256(fields.encode()).hexdigest()

    def _lookup(
        self, kind: str, request: Any
    ) -> tuple[str | None, bool, bool, str | None, str, Any]:
        """(person, anonymous, whether they may get a personal answer, profile version,
        cache key, cached answer). Only the consent state and the profile's version are
        read here: a cached answer is served without reading the whole profile."""
        mark = self.erasures.mark()
        if mark != self.erasure_mark:
            self.erasure_mark = mark
            self.cache.clear()
            threading.Thread(target=self._reload_after_erasure, daemon=True).start()
        person = request.user_id or request.anonymous_id
        anonymous = request.user_id is None
        allowed = self.gate.personalizes(self.dataset, request.user_id, request.anonymous_id)
        version = None
        if person is not None and allowed:
            # The latest event is part of every cache key: a new event changes the answer
            # in every worker, without cross-process invalidation.
            version = self.store.version(person, self.dataset, anonymous=anonymous)
        key = self._key(kind, person, version, request, allowed)
        return person, anonymous, allowed, version, key, self.cache.get(key)

    def _snapshot(self, person: str | None, anonymous: bool) -> Any:
        """What the store knows of the person a request is about (nothing: a stranger)."""
        from bespoke.features.build import Profile
        from bespoke.serving.store import Snapshot

        if person is None:
            return Snapshot(Profile(user_id=""), [], None)
        return self.store.snapshot(person, self.dataset, anonymous=anonymous)

    def _keep(self, kind: str, ready: _Prepared, request: Any, body: bytes) -> None:
        """Cache an answer under the profile version it was computed from (an event may
        have arrived between the version read and the snapshot)."""
        key = ready.key
        if ready.snapshot.version != ready.version:
            person = request.user_id or request.anonymous_id
            key = self._key(kind, person, ready.snapshot.version, request, True)
        self.cache.set(key, body)

    # The model routes are coroutines that do their (short, CPU-bound) work inline on the
    # event loop, as a bare ASGI app would. As plain methods BentoML runs them in a thread
    # pool, and the hand-over of the GIL between that thread and the loop (Python's 5 ms
    # switch interval) tripled the median latency of a 1 ms call. BentoML has validated
    # the body into the input_spec already and passes its fields: they are wrapped as they
    # are (model_construct), not validated a second time.
    @bentoml.api(route="/v1/recommend", input_spec=RecommendRequest, output_spec=RecommendResponse)
    async def recommend(self, **request: Any) -> Any:
        return self.answer_recommend(RecommendRequest.model_construct(**request))

    def answer_recommend(self, request: RecommendRequest) -> Any:
        """``/v1/recommend`` for a validated request (also called by the Gateway)."""
        ready = self._prepare("recommend", request)
        if not isinstance(ready, _Prepared):
            return ready  # cached, or an invalid QA override
        snapshot, assigned = ready.snapshot, ready.assigned
        with self._counting_errors(assigned):
            answer = self.engine.recommend(
                snapshot.profile,
                snapshot.events,
                k=request.k,
                context=request.context,
                exclude=request.exclude,
                categories=request.categories,
                now=ready.now,
                ranked=request.rank,
                treatment=treatment(assigned) if assigned else None,
            )
        body = _encode({
            "user_id": ready.person,
            "personalized": ready.personalized,
            "experiments": [a.as_dict() for a in assigned],
            "items": _items(answer.items, self.catalog, request.fields),
            "content": answer.content,
            "rules": answer.rules,
            "model_version": answer.model_version,
        })  # fmt: skip
        self._keep("recommend", ready, request, body)
        return _answer(body)

    @bentoml.api(
        route="/v1/personalize", input_spec=PersonalizeRequest, output_spec=PersonalizeResponse
    )
    async def personalize(self, **request: Any) -> Any:
        return self.answer_personalize(PersonalizeRequest.model_construct(**request))

    def answer_personalize(self, request: PersonalizeRequest) -> Any:
        """``/v1/personalize`` for a validated request (also called by the Gateway)."""
        from bespoke.serving.engine import Slot

        ready = self._prepare("personalize", request)
        if not isinstance(ready, _Prepared):
            return ready  # cached, or an invalid QA override
        snapshot, assigned = ready.snapshot, ready.assigned
        with self._counting_errors(assigned):
            slots = self.engine.personalize(
                snapshot.profile,
                snapshot.events,
                [Slot(s.id, s.kind, s.k, s.rank) for s in request.slots],
                context=request.context,
                exclude=request.exclude,
                now=ready.now,
                treatment=treatment(assigned) if assigned else None,
            )
        entered = [a for a in assigned if a.in_experiment]
        body = _encode({
            "user_id": ready.person,
            "personalized": ready.personalized,
            "variant": entered[0].variant if entered else None,
            "experiments": [a.as_dict() for a in assigned],
            "slots": [{"id": s.id, "kind": s.kind,
                       "items": _items(s.items, self.catalog, request.fields),
                       "content": s.content, "rules": s.rules} for s in slots],
            "model_version": self.engine.models.version,
        })  # fmt: skip
        self._keep("personalize", ready, request, body)
        return _answer(body)

    def _prepare(self, kind: str, request: Any) -> Any:
        """A cached answer or a refused QA override (a response), else what a model route
        needs to answer: the person's snapshot and experiment assignments."""
        person, anonymous, allowed, version, key, cached = self._lookup(kind, request)
        if cached is not None:
            return _answer(cached)
        # Who withdrew personalization is answered as a stranger: no profile read, no
        # experiment (nothing of theirs is used or recorded).
        snapshot = self._snapshot(person if allowed else None, anonymous)
        now = datetime.now(UTC)
        if allowed:
            assigned = self._assign(person, anonymous, snapshot, request, now)
            if not isinstance(assigned, list):
                return assigned
        else:
            assigned = []
        personalized = allowed and person is not None and snapshot.version is not None
        return _Prepared(person, version, key, snapshot, now, assigned, personalized)

    def _assign(
        self, person: str | None, anonymous: bool, snapshot: Any, request: Any, now: datetime
    ) -> Any:
        """The request's experiment assignments (new exposures stored before answering),
        or a 404 answer naming a QA override's experiment or variant that does not exist."""
        from bespoke.experiments.runtime import ForcedVariantError
        from bespoke.serving.rules import request_document

        force = getattr(request, "force", None)
        if self.experimenter is None:
            if force:
                return _json({"error": "force: no experiments are configured"}, 404)
            return []
        document = request_document(
            self.engine.profile_document(snapshot.profile, snapshot.events, now),
            request.context,
            now,
        )
        try:
            return self.experimenter.assign(
                person, anonymous=anonymous, document=document, now=now, force=force
            )
        except ForcedVariantError as error:  # well-formed, but naming nothing defined
            return _json({"error": str(error)}, 404)

    @contextmanager
    def _counting_errors(self, assigned: list[Any]) -> Iterator[None]:
        """Count a failed answer against the person's variants (a rollout guardrail)."""
        try:
            yield
        except Exception:
            if assigned and self.experimenter is not None:
                self.experimenter.ledger.count_error(
                    (a.experiment, a.variant) for a in assigned if a.in_experiment
                )
            raise

    @bentoml.api(route="/v1/events", input_spec=EventsRequest, output_spec=EventsResponse)
    def events(self, **request: Any) -> Any:
        batch = request["events"]  # validated by BentoML (EventsRequest)
        if len(batch) > MAX_EVENTS:  # nothing of it is applied
            return _json(
                {"error": f"at most {MAX_EVENTS} events per request, got {len(batch)}",
                 "limit": MAX_EVENTS},
                413,
            )  # fmt: skip
        if self.stream is not None:  # durable in the stream; workers apply it
            good, errors = self.store.screen(batch, self.dataset)
            self.stream.append(self.dataset, good)
            return EventsResponse(accepted=len(good), rejected=len(errors), duplicates=0,
                                  errors=[e.model_dump() for e in errors], merges=[],
                                  segment_changes=[])  # fmt: skip
        result = self.store.accept_events(batch, self.dataset, scorer=self.scorer)
        return EventsResponse(
            accepted=result.accepted,
            rejected=result.rejected,
            duplicates=result.duplicates,
            errors=[e.model_dump() for e in result.errors],
            merges=[m.model_dump() for m in result.merges],
            segment_changes=[c.model_dump(by_alias=True) for c in result.segment_changes],
        )

    @bentoml.api(route="/v1/identify", input_spec=IdentifyRequest, output_spec=IdentifyResponse)
    def identify(self, **request: Any) -> Any:
        call = IdentifyRequest.model_validate(request)  # validated by BentoML already
        result = self.store.accept_events([call.as_event()], self.dataset, scorer=self.scorer)
        merge = result.merges[0].model_dump() if result.merges else None
        return IdentifyResponse(
            user_id=call.user_id,
            person_id=person_id_of("user_id", call.user_id),
            accepted=result.accepted == 1,
            merge=merge,
            errors=[e.model_dump() for e in result.errors],
        )

    @bentoml.api(route="/v1/profiles", input_spec=ProfileRequest)
    def profiles(self, **request: Any) -> Any:
        return _profile(request["user_id"], request["anonymous"])  # validated by BentoML

    @bentoml.api(route="/v1/consent", input_spec=ConsentRequest, output_spec=ConsentResponse)
    def consent(self, **request: Any) -> Any:
        from bespoke.privacy.consent import ConsentLedger, ConsentSource

        call = ConsentRequest.model_construct(**request)  # validated by BentoML
        ledger = ConsentLedger(self.store.database(), audit=self.audit,
                               key=self.settings.pseudonym_key())  # fmt: skip
        ledger.record(
            self.dataset, dict(call.purposes), source=ConsentSource(call.source),
            user_id=call.user_id, anonymous_id=call.anonymous_id, decided_at=call.decided_at,
            detail=call.detail, actor=CALLER.get() or "",
        )  # fmt: skip
        state = ledger.state(self.dataset, user_id=call.user_id, anonymous_id=call.anonymous_id)
        return ConsentResponse(
            user_id=call.user_id,
            anonymous_id=call.anonymous_id,
            consent={p.value: {"granted": d.granted, "decided_at": d.decided_at,
                               "source": d.source.value} for p, d in state.items()},
        )  # fmt: skip

    def privacy(self) -> Any:
        """This installation's person-data stores (opened at the first privacy request)."""
        if self._privacy is None:
            from bespoke.privacy.installation import Installation

            self._privacy = Installation.from_settings(self.settings)
        return self._privacy

    @bentoml.api(route="/v1/privacy/deletions", input_spec=DeletionCall, output_spec=DeletionOut)
    def privacy_deletions(self, **request: Any) -> Any:
        from bespoke.privacy.requests import DeletionBusy
        from bespoke.privacy.subjects import SubjectError

        call = DeletionCall.model_construct(**request)  # validated by BentoML
        installation = self.privacy()
        try:
            subject, named = installation.person(
                self.dataset, user_id=call.user_id, anonymous_id=call.anonymous_id,
                email=call.email,
            )  # fmt: skip
            done = installation.delete(subject, named, actor=CALLER.get() or "")
        except SubjectError as error:
            return _json({"error": str(error)}, 404)
        except DeletionBusy as error:
            return _json({"error": str(error)}, 409)
        return _json(done.as_dict())


# With tracing on, the model routes go through BentoML's own dispatch, whose request
# context carries the trace and span ids into its response headers and logs.
_DIRECT = {} if _SETTINGS.tracing else {
    "/v1/recommend": _direct("/v1/recommend", RecommendRequest, "answer_recommend"),
    "/v1/personalize": _direct("/v1/personalize", PersonalizeRequest, "answer_personalize"),
}  # fmt: skip
Personalization.add_asgi_middleware(Gateway, direct=_DIRECT)
