"""The canonical records: events, user attributes, item catalog, quarantine.

Each record has a pydantic model (for one record at a time: the service, notebooks,
tests) and an Arrow schema (for the lake). ``tests/code/test_schema.py`` keeps the two in
step. Incoming events (:class:`EventIn`) may carry raw PII; stored events
(:class:`Event`) carry only keyed pseudonyms of it.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Annotated, Any

import pyarrow as pa
from annotated_types import Interval
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)

#: pandas dtype of text columns: Arrow-backed, for vectorised string work and cheap
#: conversion to Parquet.
TEXT = "string[pyarrow]"

DATASET_NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
DatasetName = Annotated[str, StringConstraints(pattern=DATASET_NAME_PATTERN)]

#: The longest id (person, cookie, item, a sender's event id) a record may carry.
MAX_ID_LENGTH = 200
#: An id has no control characters and no space at either end. Written with explicit
#: character classes (no ``\s``, no ``.``) so that JSON Schema's regex engines, pydantic's
#: and Python's ``re`` all read it alike: the published API schema is exactly what is
#: enforced.
ID_PATTERN = r"^[^\x00-\x20\x7f](?:[^\x00-\x1f\x7f]*[^\x00-\x20\x7f])?$"
_ID = re.compile(ID_PATTERN)


def _check_id(value: str) -> str:
    if not _ID.fullmatch(value):
        raise ValueError("an id has no control characters and no space at either end")
    return value


Identifier = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_ID_LENGTH),
    AfterValidator(_check_id),
    WithJsonSchema(
        {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH, "pattern": ID_PATTERN}
    ),
]
#: The stored integer type's range (SQLite INTEGER and the lake's int64).
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _json_integer(value: object) -> object:
    """JSON Schema's integer: a number without a fractional part (``5`` or ``5.0``), never
    text or a boolean."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("must be an integer")
    return value


def integer(ge: int = INT64_MIN, le: int = INT64_MAX) -> Any:
    """An integer as JSON has it, from ``ge`` to ``le`` (the bounds go inside: constraints
    given beside a field of this type would not reach its schema)."""
    return Annotated[int, Interval(ge=ge, le=le), BeforeValidator(_json_integer)]


#: An integer as JSON has it, within the stored type's range.
Integer = integer()


def _not_text(value: object) -> object:
    if isinstance(value, str | bool):
        raise ValueError("must be a number")
    return value


def _not_a_number(value: object) -> object:
    if isinstance(value, int | float):
        raise ValueError("must be an ISO 8601 date-time text with a time zone, not a number")
    return value


#: A finite number (never text or a boolean).
Number = Annotated[float, Field(allow_inf_nan=False), BeforeValidator(_not_text)]
#: A moment with its time zone: ISO 8601 text or a datetime (never a Unix number, whose
#: unit would be a guess).
Moment = Annotated[AwareDatetime, BeforeValidator(_not_a_number)]


class EventType(StrEnum):
    IMPRESSION = "impression"
    VIEW = "view"
    CLICK = "click"
    SEARCH = "search"
    ADD_TO_CART = "add_to_cart"
    REMOVE_FROM_CART = "remove_from_cart"
    PURCHASE = "purchase"
    RATE = "rate"
    LIKE = "like"
    DISLIKE = "dislike"
    SHARE = "share"
    SIGNUP = "signup"
    #: A person made themselves known: the event carries the ids it joins (``identify``).
    IDENTIFY = "identify"
    #: How far down a page the person scrolled (``value``: 25, 50, 75 or 100 per cent).
    SCROLL = "scroll"
    #: A form of the page was submitted (``context.page`` says which page).
    FORM_SUBMIT = "form_submit"


#: Event types whose ``value`` is money: negative amounts are anomalies for them.
MONETARY_EVENT_TYPES = frozenset({EventType.ADD_TO_CART, EventType.PURCHASE})


class Channel(StrEnum):
    WEB = "web"
    MOBILE = "mobile"
    EMAIL = "email"
    CRM = "crm"
    PUSH = "push"
    SMS = "sms"
    STORE = "store"
    CALL_CENTER = "call_center"
    BATCH = "batch"
    API = "api"


class ConsentPurpose(StrEnum):
    NECESSARY = "necessary"
    ANALYTICS = "analytics"
    PERSONALIZATION = "personalization"
    MARKETING = "marketing"


#: Identifier types and the event column carrying each, strongest first: an event belongs
#: to the person of its strongest identifier (see ``bespoke.identity``).
IDENTIFIER_COLUMNS: dict[str, str] = {
    "user_id": "user_id",
    "crm_id": "crm_id",
    "email": "email_hash",
    "phone": "phone_hash",
    "device_id": "device_id",
    "anonymous_id": "anonymous_id",
}
#: Values senders put in an identifier field when they have none. Never a person.
BLOCKED_IDENTIFIER_VALUES = frozenset(
    {
        "", "0", "-1", "null", "none", "nil", "nan", "undefined", "unknown", "anonymous",
        "anon", "guest", "test", "n/a", "na", "false", "true", "[object object]",
        "00000000-0000-0000-0000-000000000000", "not set", "(not set)", "default",
    }
)  # fmt: skip


def person_id_of(identifier_type: str, value: str) -> str:
    """The person id named after a person's canonical (strongest, earliest) identifier:
    stable while that identifier stays theirs, and revealing nothing about it. The lake's
    ``events`` view computes the same in SQL for identifiers no graph has seen."""
    return "p-" + hashlib.sha256(f"{identifier_type}:{value}".encode()).hexdigest()[:16]


#: The purpose an event needs to enter the personalization lake.
PERSONALIZATION = ConsentPurpose.PERSONALIZATION

#: Raw PII fields accepted on input and the pseudonym columns that replace them.
PII_FIELDS = {"email": "email_hash", "phone": "phone_hash", "ip": "ip_hash", "zip": "zip_hash"}


class EventContext(BaseModel):
    """Where the event happened. ``ip`` is raw PII: it is pseudonymised before storage."""

    model_config = ConfigDict(extra="forbid")

    device: str | None = Field(default=None, max_length=200)
    geo: str | None = Field(default=None, max_length=200)
    page: str | None = Field(default=None, max_length=2048)
    referrer: str | None = Field(default=None, max_length=2048)
    ip: str | None = Field(default=None, max_length=45, description="Raw; stored only as ip_hash.")


class EventIn(BaseModel):
    """An event as a source or a client sends it.

    Numbers and times are taken as JSON has them (no ``"5"`` for 5, no Unix number for a
    time), so that what the API's published schema allows is exactly what is accepted;
    bounds are those of the stored types.
    """

    model_config = ConfigDict(
        extra="forbid",
        use_enum_values=True,
        # Either id suffices (the model validator below); said so in the schema too.
        json_schema_extra={
            "anyOf": [
                {"required": ["user_id"], "properties": {"user_id": {"type": "string"}}},
                {"required": ["anonymous_id"], "properties": {"anonymous_id": {"type": "string"}}},
            ]
        },
    )

    source_event_id: Identifier | None = Field(
        default=None, description="The sender's own id; makes re-sending idempotent."
    )
    timestamp: Moment = Field(
        default_factory=lambda: datetime.now(UTC), description="With a time zone."
    )
    user_id: Identifier | None = None
    anonymous_id: Identifier | None = Field(
        default=None, description="A first-party cookie (rotates: a browser gets a new one)."
    )
    device_id: Identifier | None = Field(
        default=None, description="A mobile or TV device id (rotates rarely; may be shared)."
    )
    crm_id: Identifier | None = Field(
        default=None, description="A customer id in a CRM or commerce system (stable)."
    )
    event_type: EventType
    item_id: Identifier | None = None
    value: Number | None = None
    quantity: Integer | None = None
    channel: Channel = Channel.API
    context: EventContext = Field(default_factory=EventContext)
    email: str | None = Field(
        default=None, max_length=254, description="Raw; stored only as email_hash."
    )
    phone: str | None = Field(
        default=None, max_length=64, description="Raw; stored only as phone_hash."
    )
    consent: list[ConsentPurpose] = Field(default_factory=list, max_length=16)

    @model_validator(mode="after")
    def _needs_identity(self) -> EventIn:
        if self.user_id is None and self.anonymous_id is None:
            raise ValueError("an event needs user_id or anonymous_id")
        return self


class Event(BaseModel):
    """An event as stored in the lake (one row of :data:`EVENT_SCHEMA`)."""

    model_config = ConfigDict(extra="forbid")

    event_id: str
    dataset: DatasetName
    timestamp: datetime | None
    user_id: str | None
    anonymous_id: str | None
    event_type: EventType
    item_id: str | None
    value: float | None
    quantity: int | None
    channel: Channel
    device: str | None
    geo: str | None
    page: str | None
    referrer: str | None
    ip_hash: str | None
    email_hash: str | None
    phone_hash: str | None
    consent: list[ConsentPurpose]
    imputed: list[str]
    run_id: str
    ingested_at: datetime
    device_id: str | None = None
    crm_id: str | None = None


class UserAttributes(BaseModel):
    """A person's attributes (one row of :data:`USER_SCHEMA`)."""

    model_config = ConfigDict(extra="forbid")

    dataset: DatasetName
    user_id: str
    age: int | None
    gender: str | None
    occupation: str | None
    zip_hash: str | None
    state: str | None
    region: str | None
    country: str | None
    imputed: list[str]
    run_id: str
    ingested_at: datetime


class Item(BaseModel):
    """A catalog entry (one row of :data:`ITEM_SCHEMA`)."""

    model_config = ConfigDict(extra="forbid")

    dataset: DatasetName
    item_id: str
    title: str | None
    release_date: date | None
    release_year: int | None
    genres: list[str]
    url: str | None
    imputed: list[str]
    run_id: str
    ingested_at: datetime


class QuarantinedRecord(BaseModel):
    """A row kept out of the lake, with why (one row of :data:`QUARANTINE_SCHEMA`)."""

    model_config = ConfigDict(extra="forbid")

    quarantine_id: str
    dataset: DatasetName
    entity: str
    reason: str
    reasons: list[str]
    record: str = Field(description="The row as JSON, PII already pseudonymised.")
    source: str | None
    source_row: int | None
    run_id: str
    quarantined_at: datetime


class SegmentAssignment(BaseModel):
    """A person's segments as of a time (one row of :data:`SEGMENT_SCHEMA`): their
    behavioural segment and the rule segments they match. The lake keeps every
    assignment; the ``segments_history`` view gives each its ``valid_to``."""

    model_config = ConfigDict(extra="forbid")

    dataset: DatasetName
    person: str
    segment: str | None = Field(description="The behavioural (k-means) segment's name.")
    rule_segments: list[str]
    valid_from: datetime
    model: str = Field(description="What assigned it (the segment model's name and version).")
    run_id: str
    written_at: datetime


class Exposure(BaseModel):
    """A person's first exposure to an experiment (one row of :data:`EXPOSURE_SCHEMA`):
    the variant the service served them and how it hashed them. Analysis joins these to the
    person's outcome events inside the attribution window after ``exposed_at``."""

    model_config = ConfigDict(extra="forbid")

    dataset: DatasetName
    exposure_id: str = Field(
        description="One per dataset, experiment and person (dedupes re-flushes)."
    )
    experiment: str
    variant: str
    variant_index: int
    hash_version: int
    person: str = Field(description="The id the person was hashed by: user id or anonymous id.")
    anonymous: bool
    forced: bool = Field(description="A QA override: never counted in analysis.")
    exposed_at: datetime
    run_id: str
    written_at: datetime


class IdentityRow(BaseModel):
    """One identifier of the identity graph (one row of :data:`IDENTITY_GRAPH_SCHEMA`):
    the person it belongs to and the evidence that put it there."""

    model_config = ConfigDict(extra="forbid")

    dataset: DatasetName
    identifier_type: str
    identifier: str = Field(description="The id; e-mail and phone as keyed pseudonyms.")
    person_id: str
    rule: str | None = Field(description="How it joined its person (none: it names it).")
    probability: float | None = Field(description="A probabilistic match's probability.")
    evidence: str | None = Field(description="The event or record pair that showed the link.")
    linked_to: str | None = Field(description="The identifier it was linked to (type:value).")
    shared: bool = Field(description="A rotating identifier seen with several accounts.")
    first_seen: datetime | None
    last_seen: datetime | None
    version: int = Field(description="The graph version that last changed this row.")
    run_id: str = Field(description="The build that wrote this snapshot of the graph.")
    built_at: datetime


class IdentityLink(BaseModel):
    """A decision on a link (one row of :data:`IDENTITY_LINKS_SCHEMA`): merged, refused
    with its reason, or split."""

    model_config = ConfigDict(extra="forbid")

    dataset: DatasetName
    left_type: str
    left_id: str
    right_type: str
    right_id: str
    rule: str
    probability: float | None
    evidence: str | None
    linked_at: datetime | None
    decision: str
    reason: str | None
    person_id: str | None
    version: int
    sequence: int = Field(description="Its place in the order decisions were taken.")
    run_id: str
    built_at: datetime


_UTC_TS = pa.timestamp("us", tz="UTC")
_STRINGS = pa.list_(pa.string())

EVENT_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("timestamp", _UTC_TS),
        pa.field("user_id", pa.string()),
        pa.field("anonymous_id", pa.string()),
        pa.field("event_type", pa.string(), nullable=False),
        pa.field("item_id", pa.string()),
        pa.field("value", pa.float64()),
        pa.field("quantity", pa.int64()),
        pa.field("channel", pa.string(), nullable=False),
        pa.field("device", pa.string()),
        pa.field("geo", pa.string()),
        pa.field("page", pa.string()),
        pa.field("referrer", pa.string()),
        pa.field("ip_hash", pa.string()),
        pa.field("email_hash", pa.string()),
        pa.field("phone_hash", pa.string()),
        pa.field("consent", _STRINGS, nullable=False),
        pa.field("imputed", _STRINGS, nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("ingested_at", _UTC_TS, nullable=False),
        # Identifiers added after the first lakes were written: last, so that older files
        # read by name stay valid (their rows have none).
        pa.field("device_id", pa.string()),
        pa.field("crm_id", pa.string()),
    ]
)

USER_SCHEMA = pa.schema(
    [
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("age", pa.int64()),
        pa.field("gender", pa.string()),
        pa.field("occupation", pa.string()),
        pa.field("zip_hash", pa.string()),
        pa.field("state", pa.string()),
        pa.field("region", pa.string()),
        pa.field("country", pa.string()),
        pa.field("imputed", _STRINGS, nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("ingested_at", _UTC_TS, nullable=False),
    ]
)

ITEM_SCHEMA = pa.schema(
    [
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("title", pa.string()),
        pa.field("release_date", pa.date32()),
        pa.field("release_year", pa.int64()),
        pa.field("genres", _STRINGS, nullable=False),
        pa.field("url", pa.string()),
        pa.field("imputed", _STRINGS, nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("ingested_at", _UTC_TS, nullable=False),
    ]
)

QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("quarantine_id", pa.string(), nullable=False),
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("entity", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("reasons", _STRINGS, nullable=False),
        pa.field("record", pa.string(), nullable=False),
        pa.field("source", pa.string()),
        pa.field("source_row", pa.int64()),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("quarantined_at", _UTC_TS, nullable=False),
    ]
)

SEGMENT_SCHEMA = pa.schema(
    [
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("person", pa.string(), nullable=False),
        pa.field("segment", pa.string()),
        pa.field("rule_segments", _STRINGS, nullable=False),
        pa.field("valid_from", _UTC_TS, nullable=False),
        pa.field("model", pa.string(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("written_at", _UTC_TS, nullable=False),
    ]
)

EXPOSURE_SCHEMA = pa.schema(
    [
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("exposure_id", pa.string(), nullable=False),
        pa.field("experiment", pa.string(), nullable=False),
        pa.field("variant", pa.string(), nullable=False),
        pa.field("variant_index", pa.int32(), nullable=False),
        pa.field("hash_version", pa.int32(), nullable=False),
        pa.field("person", pa.string(), nullable=False),
        pa.field("anonymous", pa.bool_(), nullable=False),
        pa.field("forced", pa.bool_(), nullable=False),
        pa.field("exposed_at", _UTC_TS, nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("written_at", _UTC_TS, nullable=False),
    ]
)

IDENTITY_GRAPH_SCHEMA = pa.schema(
    [
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("identifier_type", pa.string(), nullable=False),
        pa.field("identifier", pa.string(), nullable=False),
        pa.field("person_id", pa.string(), nullable=False),
        pa.field("rule", pa.string()),
        pa.field("probability", pa.float64()),
        pa.field("evidence", pa.string()),
        pa.field("linked_to", pa.string()),
        pa.field("shared", pa.bool_(), nullable=False),
        pa.field("first_seen", _UTC_TS),
        pa.field("last_seen", _UTC_TS),
        pa.field("version", pa.int64(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("built_at", _UTC_TS, nullable=False),
    ]
)

IDENTITY_LINKS_SCHEMA = pa.schema(
    [
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("left_type", pa.string(), nullable=False),
        pa.field("left_id", pa.string(), nullable=False),
        pa.field("right_type", pa.string(), nullable=False),
        pa.field("right_id", pa.string(), nullable=False),
        pa.field("rule", pa.string(), nullable=False),
        pa.field("probability", pa.float64()),
        pa.field("evidence", pa.string()),
        pa.field("linked_at", _UTC_TS),
        pa.field("decision", pa.string(), nullable=False),
        pa.field("reason", pa.string()),
        pa.field("person_id", pa.string()),
        pa.field("version", pa.int64(), nullable=False),
        pa.field("sequence", pa.int64(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("built_at", _UTC_TS, nullable=False),
    ]
)

#: Each lake table, its record model and its Arrow schema.
TABLES: dict[str, tuple[type[BaseModel], pa.Schema]] = {
    "events": (Event, EVENT_SCHEMA),
    "users": (UserAttributes, USER_SCHEMA),
    "items": (Item, ITEM_SCHEMA),
    "quarantine": (QuarantinedRecord, QUARANTINE_SCHEMA),
    # Snapshots of the identity graph, one per build (the view shows the latest), and
    # every decision on a link (appended by each build).
    "identity_graph": (IdentityRow, IDENTITY_GRAPH_SCHEMA),
    "identity_links": (IdentityLink, IDENTITY_LINKS_SCHEMA),
    # Every segment assignment; the views give the latest and each one's validity.
    "segments": (SegmentAssignment, SEGMENT_SCHEMA),
    # Every person's first exposure to each experiment (the view keeps one per person).
    "exposures": (Exposure, EXPOSURE_SCHEMA),
}


def check_dataset_name(name: str) -> str:
    """``name`` when it is a valid dataset name (it becomes a folder name in the lake)."""
    if not re.fullmatch(DATASET_NAME_PATTERN, name):
        raise ValueError(
            f"invalid dataset name {name!r}: use 1-64 lower-case letters, digits, '.', '_' "
            "or '-', starting with a letter or digit"
        )
    return name
