"""The service's HTTP contract: request and answer models, error bodies, and the OpenAPI
document published at ``/docs.json``.

Requests are strict (no ``"5"`` for 5, no ``"yes"`` for true) and bounded (ids of 1 to
200 characters, lists and objects of bounded size, numbers within the stored types'
range, no ``NaN`` or ``Infinity``): what the document says is allowed is exactly what is
accepted, and everything else is a 422 naming the field. The document is built here from
the same pydantic models the routes validate with (OpenAPI 3.1, whose schemas are JSON
Schema, so nullable fields say so), with every status a route answers.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from _bentoml_sdk import IODescriptor
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)
from pydantic.json_schema import models_json_schema

from bespoke.features.schema import (
    ID_PATTERN,
    INT64_MAX,
    INT64_MIN,
    MAX_ID_LENGTH,
    Channel,
    ConsentPurpose,
    EventIn,
    EventType,
    Identifier,
    Moment,
    integer,
)
from bespoke.serving.store import ProfileView

#: Largest batch ``/v1/events`` takes: more is a 413, and nothing of it is applied.
MAX_EVENTS = 1000

# --- the request context: bounded JSON ------------------------------------------------------
# What a caller may put in ``context`` (read by the rules as ``context.<path>``): a JSON
# object whose values nest at most three containers deep, every container, key, string
# and number bounded, no NaN or Infinity. The validator and the schema state the same.
_MAX_DEPTH, _MAX_KEYS, _MAX_ITEMS, _MAX_KEY, _MAX_TEXT = 3, 50, 100, 100, 1000


def _check_json(value: Any, path: str, depth: int) -> None:
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int | float):
        if not math.isfinite(value) or not INT64_MIN <= value <= INT64_MAX:
            raise ValueError(f"{path}: a number must be finite and within ±(2^63 − 1)")
    elif isinstance(value, str):
        if len(value) > _MAX_TEXT:
            raise ValueError(f"{path}: text is at most {_MAX_TEXT} characters")
    elif isinstance(value, list | dict):
        if depth >= _MAX_DEPTH:
            raise ValueError(f"{path}: containers nest at most {_MAX_DEPTH} deep")
        if isinstance(value, list):
            if len(value) > _MAX_ITEMS:
                raise ValueError(f"{path}: a list holds at most {_MAX_ITEMS} values")
            for position, item in enumerate(value):
                _check_json(item, f"{path}[{position}]", depth + 1)
        else:
            _check_object(value, path, depth + 1)
    else:
        raise ValueError(f"{path}: not a JSON value")


def _check_object(value: dict[str, Any], path: str, depth: int) -> None:
    if len(value) > _MAX_KEYS:
        raise ValueError(f"{path}: an object holds at most {_MAX_KEYS} keys")
    for key, item in value.items():
        if not 1 <= len(key) <= _MAX_KEY:
            raise ValueError(f"{path}: a key is 1 to {_MAX_KEY} characters")
        _check_json(item, f"{path}.{key}", depth)


def _check_context(value: dict[str, Any]) -> dict[str, Any]:
    _check_object(value, "context", 0)
    return value


def _json_schema(depth: int) -> dict[str, Any]:
    """The schema of a context value with ``depth`` levels of containers left."""
    kinds: list[dict[str, Any]] = [
        {"type": "null"},
        {"type": "boolean"},
        {"type": "number", "minimum": INT64_MIN, "maximum": INT64_MAX},
        {"type": "string", "maxLength": _MAX_TEXT},
    ]
    if depth:
        inner = _json_schema(depth - 1)
        kinds.append({"type": "array", "maxItems": _MAX_ITEMS, "items": inner})
        kinds.append(_object_schema(inner))
    return {"anyOf": kinds}


def _object_schema(values: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "maxProperties": _MAX_KEYS,
        "propertyNames": {"minLength": 1, "maxLength": _MAX_KEY},
        "additionalProperties": values,
    }


_CONTEXT_DESCRIPTION = (
    "What the page or app knows now (channel, page, device, …), read by the rules as "
    f"context.<path>: a JSON object, containers nested at most {_MAX_DEPTH} deep, at most "
    f"{_MAX_KEYS} keys and {_MAX_ITEMS} list values each, text up to {_MAX_TEXT} characters, "
    "finite numbers."
)
Context = Annotated[
    dict[str, Any],
    AfterValidator(_check_context),
    WithJsonSchema(
        {**_object_schema(_json_schema(_MAX_DEPTH)), "description": _CONTEXT_DESCRIPTION}
    ),
]
#: How many items a list or slot asks for.
Count = integer(1, 100)
_Category = Annotated[str, StringConstraints(min_length=1, max_length=100)]

_STRICT = ConfigDict(extra="forbid", strict=True)
_ExperimentKey = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")]
#: A QA override: experiment key → the variant to serve (recorded as forced, left out of
#: analysis; 404 naming ``force.<key>`` for an experiment or variant not defined). Only
#: secret API keys reach these routes; a browser's publishable key may not.
Force = Annotated[
    dict[str, _ExperimentKey] | None,
    Field(default=None, max_length=20,
          description="QA override: {experiment key: variant key} served whatever the hash says."),
]  # fmt: skip


#: The catalog fields an answer can carry with each item.
ItemField = Literal["title", "categories", "url", "release_year"]
CATALOG_FIELDS: tuple[str, ...] = ("title", "categories", "url", "release_year")
Fields = Annotated[
    list[ItemField] | None,
    Field(default=None, max_length=len(CATALOG_FIELDS),
          description="The catalog fields each item carries (default: every one the catalog "
          "has; [] for none), so that a page or an e-mail needs no second look-up."),
]  # fmt: skip


class RecommendRequest(IODescriptor):
    model_config = _STRICT

    user_id: Identifier | None = None
    anonymous_id: Identifier | None = None
    k: Count = 10
    context: Context = Field(default_factory=dict)
    exclude: list[Identifier] = Field(default_factory=list, max_length=1000)
    categories: list[_Category] | None = Field(default=None, max_length=100)
    rank: bool = Field(
        default=False,
        description="Rerank the recommender's candidates with the @champion ranker "
        "(slower; /v1/personalize ranks its recommendation slots by default).",
    )
    force: Force = None
    fields: Fields = None


class ExperimentOut(BaseModel):
    experiment: str
    variant: str
    in_experiment: bool = Field(description="False: the person gets the control without "
                                "being part of the experiment (outside its coverage, or it is halted).")  # fmt: skip
    forced: bool
    hash_version: int


class RecommendedItem(IODescriptor):
    item_id: str
    score: float | None = Field(
        description="Higher first; distinct wherever the order is (a ranked slot's: the "
        "calibrated click probability)."
    )
    reason: str
    title: str | None = Field(default=None, description="From the catalog (when asked).")
    categories: list[str] | None = Field(default=None, description="The catalog's genres.")
    url: str | None = Field(default=None, description="The item's page, when the catalog has one.")
    release_year: int | None = None


_PERSONALIZED = Field(
    description="False: the answer is the one a stranger gets (the person withdrew "
    "'personalization' consent, or nothing is known of them)."
)


class RecommendResponse(IODescriptor):
    user_id: str | None
    personalized: bool = _PERSONALIZED
    experiments: list[ExperimentOut]
    items: list[RecommendedItem]
    content: list[dict[str, Any]]
    rules: list[str]
    model_version: str


class SlotRequest(IODescriptor):
    model_config = _STRICT

    id: str = Field(min_length=1, max_length=100)
    kind: Literal["recommendations", "content"] = "recommendations"
    k: Count = 10
    rank: bool = Field(default=True, description="Rerank with the @champion ranker.")


class PersonalizeRequest(IODescriptor):
    model_config = _STRICT

    user_id: Identifier | None = None
    anonymous_id: Identifier | None = None
    slots: list[SlotRequest] = Field(min_length=1, max_length=20)
    context: Context = Field(default_factory=dict)
    exclude: list[Identifier] = Field(default_factory=list, max_length=1000)
    force: Force = None
    fields: Fields = None


class SlotOut(IODescriptor):
    id: str
    kind: str
    items: list[RecommendedItem]
    content: list[dict[str, Any]]
    rules: list[str]


class PersonalizeResponse(IODescriptor):
    user_id: str | None
    personalized: bool = _PERSONALIZED
    variant: str | None = Field(
        description="The variant of the first experiment the person is in (none: control)."
    )
    experiments: list[ExperimentOut]
    slots: list[SlotOut]
    model_version: str


class EventsRequest(IODescriptor):
    model_config = _STRICT

    # More than MAX_EVENTS is refused with 413 by the route (not 422): said in the schema.
    events: list[EventIn] = Field(min_length=1, json_schema_extra={"maxItems": MAX_EVENTS})


class EventError(BaseModel):
    index: int = Field(description="Position of the event in the request.")
    field: str | None = Field(description="The field at fault, if one is.")
    message: str


class MergeOut(BaseModel):
    anonymous_id: str
    user_id: str
    status: Literal["merged", "already", "refused"] = Field(
        description="merged: the visitor's live history is now the user's; already: it was; "
        "refused: the anonymous id already belongs to another user (a shared device)."
    )
    events_moved: int
    reason: str | None


class SegmentChangeOut(BaseModel):
    # "from" and "to" on the wire (as in the segment_changed webhook).
    model_config = ConfigDict(validate_by_name=True, serialize_by_alias=True)

    user_id: str
    from_segment: str | None = Field(alias="from", description="The segment before (None: new).")
    to_segment: str = Field(alias="to", description="The segment the events moved them to.")
    at: datetime


class EventsResponse(IODescriptor):
    accepted: int
    rejected: int
    duplicates: int
    errors: list[EventError]
    merges: list[MergeOut] = Field(
        default_factory=list,
        description="Anonymous visitors joined to a user by events carrying both ids.",
    )
    segment_changes: list[SegmentChangeOut] = Field(
        default_factory=list,
        description="People these events moved to another behavioural segment (re-scored "
        "within the request; also sent as the segment_changed webhook when one is set).",
    )


class IdentifyTraits(BaseModel):
    """What the person told about themselves; e-mail and phone are stored only as keyed
    pseudonyms (they join the identity graph as verified identifiers)."""

    model_config = ConfigDict(extra="forbid", use_enum_values=True)

    email: str | None = Field(default=None, max_length=254)
    phone: str | None = Field(default=None, max_length=64)


class IdentifyRequest(IODescriptor):
    """``POST /v1/identify``: a person makes themselves known (a login, a sign-up). The
    anonymous visitor's live history becomes the user's within the request, and the ids
    sent together join the identity graph when the events reach the lake."""

    model_config = ConfigDict(extra="forbid", use_enum_values=True)

    user_id: Identifier
    anonymous_id: Identifier | None = None
    device_id: Identifier | None = None
    crm_id: Identifier | None = None
    traits: IdentifyTraits = Field(default_factory=lambda: IdentifyTraits())
    timestamp: Moment = Field(default_factory=lambda: datetime.now(UTC))
    channel: Channel = Channel.API
    consent: list[ConsentPurpose] = Field(
        default_factory=list,
        max_length=16,
        description="Needs 'personalization' for the ids to be joined and kept.",
    )

    def as_event(self) -> EventIn:
        """The ``identify`` event this call is recorded as (in the inbox, then the lake)."""
        return EventIn(
            event_type=EventType.IDENTIFY,
            user_id=self.user_id,
            anonymous_id=self.anonymous_id,
            device_id=self.device_id,
            crm_id=self.crm_id,
            email=self.traits.email,
            phone=self.traits.phone,
            timestamp=self.timestamp,
            channel=self.channel,
            consent=self.consent,
        )


class IdentifyResponse(IODescriptor):
    user_id: str
    person_id: str = Field(description="The person the ids belong to.")
    accepted: bool
    merge: MergeOut | None = Field(description="What became of the anonymous visitor.")
    errors: list[EventError]


class ProfileRequest(IODescriptor):
    """``POST /v1/profiles``: the same as ``GET /v1/profiles/{id}``."""

    model_config = _STRICT

    user_id: Identifier = Field(description="The user id, or the anonymous id with anonymous.")
    anonymous: bool = False


# --- privacy ------------------------------------------------------------------------------


def _exactly_one(*fields: str) -> dict[str, Any]:
    """The JSON Schema of "exactly one of these fields is a string" (the model validator
    says the same), so the published document allows just what is accepted."""
    return {
        "oneOf": [{"required": [name], "properties": {name: {"type": "string"}}} for name in fields]
    }


class ConsentRequest(IODescriptor):
    """``POST /v1/consent``: a person's decisions, per purpose (see
    :mod:`bespoke.privacy.consent`)."""

    model_config = ConfigDict(**_STRICT, json_schema_extra=_exactly_one("user_id", "anonymous_id"))

    user_id: Identifier | None = None
    anonymous_id: Identifier | None = None
    purposes: dict[Literal[tuple(p.value for p in ConsentPurpose)], bool] = Field(  # type: ignore[misc]
        min_length=1, max_length=len(ConsentPurpose),
        description="Purpose → granted (true) or withdrawn (false).",
    )  # fmt: skip
    source: Literal["api", "cmp", "event"] = Field(
        default="api", description="Where the decision came from: cmp for a consent-"
        "management platform's signal, event for one the page recorded.",
    )  # fmt: skip
    decided_at: Moment | None = Field(
        default=None,
        strict=False,  # a time arrives as ISO 8601 text in JSON
        description="When the person decided (default: now). With a time zone.",
    )
    detail: str | None = Field(
        default=None, max_length=2000, description="E.g. the CMP's consent string (TCF)."
    )

    @model_validator(mode="after")
    def _one_person(self) -> ConsentRequest:
        if (self.user_id is None) == (self.anonymous_id is None):
            raise ValueError("name the person by exactly one of user_id, anonymous_id")
        return self


class ConsentStateOut(BaseModel):
    granted: bool
    decided_at: datetime
    source: str


class ConsentResponse(IODescriptor):
    """The person's latest decision per purpose, after the request (purposes never decided
    are absent)."""

    user_id: str | None
    anonymous_id: str | None
    consent: dict[str, ConsentStateOut]


_Email = Annotated[
    str, StringConstraints(min_length=3, max_length=254, pattern=r"^[^@\s]+@[^@\s]+$")
]


class DeletionCall(IODescriptor):
    """``POST /v1/privacy/deletions``: erase a person, named by exactly one id, from every
    store (see :mod:`bespoke.privacy`)."""

    model_config = ConfigDict(
        **_STRICT, json_schema_extra=_exactly_one("user_id", "anonymous_id", "email")
    )

    user_id: Identifier | None = None
    anonymous_id: Identifier | None = None
    email: _Email | None = None

    @model_validator(mode="after")
    def _one_person(self) -> DeletionCall:
        if sum(v is not None for v in (self.user_id, self.anonymous_id, self.email)) != 1:
            raise ValueError("name the person by exactly one of user_id, anonymous_id, email")
        return self


class StoreOutcome(BaseModel):
    model_config = ConfigDict(extra="allow")

    verified: bool = Field(description="The store was scanned afterwards and holds 0 traces.")
    removed: dict[str, int] | None = None
    traces: dict[str, int] | None = None
    error: str | None = None


#: A deletion request's id (``uuid4().hex``).
DELETION_ID_PATTERN = r"^[0-9a-f]{32}$"


class DeletionOut(IODescriptor):
    id: str
    dataset: str
    status: Literal["received", "running", "done", "partial"]
    results: dict[str, StoreOutcome] = Field(description="Per store: what was removed, and "
                                              "what its verification found.")  # fmt: skip
    created_at: str
    updated_at: str


# --- errors -------------------------------------------------------------------------------


class FieldError(BaseModel):
    """One reason a request is invalid. Never the value sent (it may be personal data)."""

    model_config = ConfigDict(extra="allow")

    loc: list[str | int] = Field(description="Where: 'body', then the field path.")
    msg: str
    type: str


class ErrorResponse(BaseModel):
    """Every error answer: what is wrong, and where when a field is."""

    error: str
    detail: list[FieldError] | None = Field(
        default=None, description="422: each invalid field (path, message, error type)."
    )
    limit: int | None = Field(
        default=None, description="413: the limit that was exceeded (bytes or events)."
    )


# --- the OpenAPI document -----------------------------------------------------------------

_REF = "#/components/schemas/{model}"
_ERRORS = {
    401: "No API key was sent.",
    403: "The API key is not valid (unknown or revoked), or a publishable key asked for "
    "what it may not (another origin or route, a user_id, a forced variant).",
    404: "Nothing is known about this person.",
    409: "Another deletion is running: try again when it has finished.",
    413: f"The body is larger than the service's limit, or more than {MAX_EVENTS} events.",
    415: "The body is not application/json.",
    422: "The request is invalid: detail names each field at fault.",
    429: "A publishable key's rate for this client, or in all, is used up: see Retry-After.",
}
_REQUEST_ID = {
    "X-Request-ID": {
        "description": "The caller's X-Request-ID, or a new one: quote it when reporting.",
        "schema": {"type": "string"},
    }
}


def _response(description: str, schema: dict[str, Any], media: str = "application/json") -> dict:
    return {
        "description": description,
        "headers": _REQUEST_ID,
        "content": {media: {"schema": schema}},
    }


def _errors(*statuses: int) -> dict[str, Any]:
    ref = {"$ref": _REF.format(model="ErrorResponse")}
    return {str(status): _response(_ERRORS[status], ref) for status in statuses}


#: The routes answered by the service: (path, method, request model or None, answer
#: model, summary, error statuses).
_ROUTES: list[tuple[str, str, type[BaseModel] | None, type[BaseModel], str, tuple[int, ...]]] = [
    ("/v1/recommend", "post", RecommendRequest, RecommendResponse,
     "Recommendations for a person (the @champion recommender and the JSON rules).",
     (401, 403, 404, 413, 415, 422)),
    ("/v1/personalize", "post", PersonalizeRequest, PersonalizeResponse,
     "Slots of recommendations and content for a person, with their experiment variants.",
     (401, 403, 404, 413, 415, 422, 429)),
    ("/v1/events", "post", EventsRequest, EventsResponse,
     f"Up to {MAX_EVENTS} events, stored durably and applied to profiles at once.",
     (401, 403, 413, 415, 422, 429)),
    ("/v1/identify", "post", IdentifyRequest, IdentifyResponse,
     "A person makes themselves known: their anonymous history becomes theirs at once.",
     (401, 403, 413, 415, 422, 429)),
    ("/v1/profiles", "post", ProfileRequest, ProfileView,
     "One person as the online store knows them.", (401, 403, 404, 413, 415, 422)),
    ("/v1/profiles/{id}", "get", None, ProfileView,
     "One person as the online store knows them.", (401, 403, 404, 422)),
    ("/v1/consent", "post", ConsentRequest, ConsentResponse,
     "Record a person's consent decisions per purpose; enforced from the next request.",
     (401, 403, 413, 415, 422, 429)),
    ("/v1/privacy/deletions", "post", DeletionCall, DeletionOut,
     "Erase a person from every store and verify 0 traces (done, or partial with reasons).",
     (401, 403, 404, 409, 413, 415, 422)),
    ("/v1/privacy/deletions/{id}", "get", None, DeletionOut,
     "A deletion request's status and per-store outcome.", (401, 403, 404, 422)),
]  # fmt: skip

#: Routes that need no key: BentoML's probes and metrics, and this document.
OPEN_ROUTES = {
    "/healthz": "Liveness: the server answers.",
    "/livez": "Liveness: the server answers.",
    "/readyz": "Readiness: the service is initialised (503 while it is not).",
    "/metrics": "Prometheus metrics.",
    "/docs.json": "This document.",
}
#: Path prefixes that need no key: the browser SDK and the demo storefront (static files),
#: and inbound webhooks (their signature is their credential).
OPEN_PREFIXES = ("/sdk/", "/demo", "/v1/webhooks/")
#: Every route path the service answers (templates for those with parameters).
ROUTE_PATHS = frozenset({path for path, *_ in _ROUTES} | set(OPEN_ROUTES))
#: The routes that take a JSON body (POST).
BODY_ROUTES = frozenset(path for path, _, request, *_ in _ROUTES if request is not None)


def openapi_document(version: str = "1") -> dict[str, Any]:
    """The OpenAPI 3.1 document of the service, built from the models above."""
    models = [(m, "validation") for _, _, m, _, _, _ in _ROUTES if m is not None]
    models += [(answer, "serialization") for _, _, _, answer, _, _ in _ROUTES]
    models.append((ErrorResponse, "serialization"))
    names, definitions = models_json_schema(models, ref_template=_REF)
    paths: dict[str, dict[str, Any]] = {}
    for path, method, request, answer, summary, statuses in _ROUTES:
        operation: dict[str, Any] = {
            "summary": summary,
            "operationId": f"{method}_{path.strip('/').replace('/', '_').strip('{}')}",
            "security": [{"apiKey": []}, {"bearer": []}],
            "responses": {
                "200": _response("OK", names[(answer, "serialization")]),
                **_errors(*statuses),
            },
        }
        if request is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": names[(request, "validation")]}},
            }
        elif path.startswith("/v1/privacy/deletions/"):
            operation["parameters"] = [
                {"name": "id", "in": "path", "required": True,
                 "description": "The id POST /v1/privacy/deletions answered.",
                 "schema": {"type": "string", "pattern": DELETION_ID_PATTERN}},
            ]  # fmt: skip
        else:
            operation["parameters"] = [
                {"name": "id", "in": "path", "required": True,
                 "description": "The user id (the anonymous id with anonymous=true).",
                 "schema": {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH,
                            "pattern": ID_PATTERN}},
                {"name": "anonymous", "in": "query", "required": False,
                 "schema": {"type": "boolean", "default": False}},
            ]  # fmt: skip
        paths.setdefault(path, {})[method] = operation
    text = {"type": "string"}
    for path, summary in OPEN_ROUTES.items():
        responses = {"200": _response("OK", text, "text/plain")}
        if path == "/readyz":
            responses["503"] = _response("Not ready yet.", text, "text/plain")
        if path == "/docs.json":
            responses = {"200": _response("OK", {"type": "object"})}
        paths[path] = {"get": {"summary": summary, "security": [], "responses": responses}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Bespoke personalization service",
            "version": version,
            "description": "Every /v1 route needs an API key: `Authorization: Bearer <key>` "
            "or `X-API-Key: <key>` (when both are sent, the Bearer key is the one checked; "
            "a blank header counts as absent).",
        },
        "paths": paths,
        "components": {
            "schemas": definitions.get("$defs", {}),
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "bearer": {"type": "http", "scheme": "bearer"},
            },
        },
    }
