"""What every online store backend shares (:mod:`bespoke.serving.store` holds the
protocol and the embedded SQLite backend, :mod:`bespoke.serving.redis_store` the shared
Redis one): the results callers get back, how an event becomes an inbox row (consent
gate, keyed pseudonyms), how inbox rows go back to ingestion on a flush, what a person's
live re-scoring announces, and the lake reads that seed profiles.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from bespoke.features.build import Profile
from bespoke.features.collect import EVENT_INPUT_TYPES, SourceBatch
from bespoke.features.lake import Lake
from bespoke.features.parse import ROW, SOURCE
from bespoke.features.privacy import pseudonym
from bespoke.features.schema import (
    PERSONALIZATION,
    TEXT,
    Channel,
    EventIn,
    check_dataset_name,
)
from bespoke.privacy.gate import MESSAGES as GATE_MESSAGES
from bespoke.privacy.gate import WITHDRAWN, PersonGate
from bespoke.segments.features import load_person_events
from bespoke.segments.live import Counters, LiveScorer, Scores, counters_from_events

#: The most events one request may send (the service answers 413 above it); a batch of
#: this size is one transaction.
MAX_BATCH = 1_000
#: Events kept per profile: the latest ones.
RECENT_EVENTS = 500
#: Flushed inbox rows are kept this long, so that a client re-sending an event with its
#: own ``source_event_id`` is recognised and not applied to the profile twice.
KEEP_FLUSHED = timedelta(days=1)
#: Inbox rows per ingestion run when flushing.
FLUSH_CHUNK = 500_000
#: Event types whose items make up the history the ranker sees (as in training).
INTERACTION_TYPES = ("rate", "purchase", "click", "add_to_cart", "like", "view")
#: The user attributes copied from the lake.
ATTRIBUTES = ("age", "gender", "occupation", "state", "region", "country")

INTERACTION_SET = frozenset(INTERACTION_TYPES)
USER, ANONYMOUS = "u", "a"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")

#: The tables of the control plane that the online store writes in the same transaction
#: as the change they record (segment changes, the webhook outbox): in the SQLite
#: store's own file, or in the control database beside a Redis store.
CONTROL_SCHEMA = """
CREATE TABLE IF NOT EXISTS segment_changes (
    id INTEGER PRIMARY KEY,
    dataset TEXT NOT NULL,
    user_id TEXT NOT NULL,
    from_segment TEXT,
    to_segment TEXT,
    at INTEGER NOT NULL,
    recorded_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS segment_changes_user ON segment_changes (dataset, user_id);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY,
    dataset TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at INTEGER NOT NULL,
    last_error TEXT,
    delivered_at INTEGER
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (status, next_at);
-- Which user an anonymous id logged in as: the consent ledger follows these links (a
-- withdrawal made while anonymous holds after the login). The SQLite store writes them
-- as it merges, and beside Redis the Redis store mirrors its logins here.
CREATE TABLE IF NOT EXISTS aliases (
    dataset TEXT NOT NULL,
    anonymous_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    linked_at INTEGER NOT NULL,
    inbox_seq INTEGER,
    PRIMARY KEY (dataset, anonymous_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS aliases_user ON aliases (dataset, user_id)
"""


# --- what callers get back -----------------------------------------------------------------


class ItemError(BaseModel):
    """Why one event of a request was not accepted."""

    index: int = Field(description="Position of the event in the request.")
    field: str | None = Field(default=None, description="The field at fault, if one is.")
    message: str


class Merge(BaseModel):
    """What an event carrying both an anonymous id and a user id (a login, an identify
    call) did to the anonymous visitor's live history."""

    anonymous_id: str
    user_id: str
    status: Literal["merged", "already", "refused"] = Field(
        description="merged: the visitor's history is now the user's; already: it was; "
        "refused: the cookie already belongs to another user (a shared device)."
    )
    events_moved: int = 0
    reason: str | None = None


class SegmentChange(BaseModel):
    """A person moved to another behavioural segment when their events were re-scored."""

    user_id: str
    from_segment: str | None = Field(alias="from", serialization_alias="from")
    to_segment: str | None = Field(alias="to", serialization_alias="to")
    at: datetime

    model_config = ConfigDict(validate_by_name=True, serialize_by_alias=True)


class AcceptResult(BaseModel):
    """What became of a request's events."""

    accepted: int = Field(description="Events stored (including re-sent ones already held).")
    rejected: int
    duplicates: int = Field(
        default=0, description="Accepted events whose source_event_id was already held."
    )
    errors: list[ItemError] = Field(default_factory=list)
    merges: list[Merge] = Field(
        default_factory=list, description="Anonymous visitors joined to a user by these events."
    )
    segment_changes: list[SegmentChange] = Field(
        default_factory=list, description="People these events moved to another segment."
    )


class RecentEvent(BaseModel):
    event_type: str
    item_id: str | None
    value: float | None
    timestamp: datetime | None


class ProfileView(BaseModel):
    """One person as the service shows them."""

    user_id: str
    dataset: str
    anonymous: bool = False
    known: bool = Field(description="Whether anything is known about this person.")
    person_id: str | None = Field(
        default=None, description="The person in the identity graph (see bespoke.identity)."
    )
    merged_into: str | None = Field(
        default=None, description="For an anonymous id that logged in: the user it became."
    )
    identifiers: list[dict[str, str]] = Field(
        default_factory=list,
        description="The person's identifiers known live (type and id; pseudonyms for PII).",
    )
    channels: dict[str, int] = Field(default_factory=dict, description="Recent events per channel.")
    first_seen: datetime | None = None
    last_seen: datetime | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)
    recent: list[RecentEvent] = Field(default_factory=list, description="Newest first.")
    last_event_at: dict[str, datetime] = Field(default_factory=dict)
    segment: str | None = Field(default=None, description="The behavioural segment.")
    segments: list[str] = Field(default_factory=list, description="The rule segments.")
    churn_probability: float | None = None
    expected_value: float | None = None


@dataclass
class Snapshot:
    """What a live request needs of one person, read in one transaction: the ranker's
    :class:`~bespoke.features.build.Profile`, the latest events as the rules see them
    (newest first: ``type``, ``item_id``, ``timestamp``, ``value``) and ``version``, which
    changes with every new event of theirs (the answer cache's key)."""

    profile: Profile
    events: Sequence[Mapping[str, Any]]
    version: str | None


class RecentEvents(Sequence[dict[str, Any]]):
    """A profile's latest events, newest first, from the store's rows ``(type, item_id,
    value, timestamp)`` (oldest first): built as mappings when first read, since most
    answers (a cache hit, rules that read only attributes) never read them."""

    def __init__(self, rows: Sequence[tuple[Any, ...]]) -> None:
        self._rows = rows
        self._events: list[dict[str, Any]] | None = None

    def _built(self) -> list[dict[str, Any]]:
        if self._events is None:
            self._events = [
                {"type": t, "item_id": i, "value": v, "timestamp": from_micros(ts)}
                for t, i, v, ts in reversed(self._rows)
            ]
        return self._events

    def __getitem__(self, index: Any) -> Any:
        return self._built()[index]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self._built())

    def __len__(self) -> int:
        return len(self._rows)


@dataclass
class FlushResult:
    """Per dataset, the inbox rows sent to the lake and what ingestion made of them."""

    datasets: dict[str, dict[str, int]] = field(default_factory=dict)
    runs: list[str] = field(default_factory=list)

    @property
    def flushed(self) -> int:
        return sum(c["flushed"] for c in self.datasets.values())

    @property
    def stored(self) -> int:
        return sum(c["stored"] for c in self.datasets.values())

    def add(self, dataset: str, rows: int, manifest: dict[str, Any], run_id: str) -> None:
        events = manifest.get("events", {})
        counts = self.datasets.setdefault(
            dataset,
            {"flushed": 0, "stored": 0, "already_present": 0, "quarantined": 0},
        )
        counts["flushed"] += rows
        counts["stored"] += events.get("stored", 0)
        counts["already_present"] += events.get("already_present", 0)
        counts["quarantined"] += sum(events.get("quarantined", {}).values())
        self.runs.append(run_id)


def rejection(event: EventIn) -> tuple[str, str] | None:
    """Why ``event`` may not be stored for personalisation, as (field, message), if it may
    not: the same rules as ingestion's (consent gate; no e-mail address as an id)."""
    if PERSONALIZATION.value not in event.consent:
        return (
            "consent",
            "no 'personalization' consent purpose: the event is not stored for personalisation",
        )
    for name in ("user_id", "anonymous_id"):
        value = getattr(event, name)
        if value is not None and _EMAIL.fullmatch(value):
            return (
                name,
                f"{name} looks like an e-mail address; send it as 'email' so that it is "
                "stored only as a keyed pseudonym",
            )
    return None


def to_micros(moment: datetime) -> int:
    return (moment - EPOCH) // MICROSECOND


def from_micros(micros: int | None) -> datetime | None:
    return None if micros is None else EPOCH + micros * MICROSECOND


#: Inbox columns after ``seq``, ``dataset`` and ``received_at``, in row-tuple order.
INBOX_FIELDS = (
    "source_event_id", "timestamp", "user_id", "anonymous_id", "event_type", "item_id",
    "value", "quantity", "channel", "device", "geo", "page", "referrer", "ip_hash",
    "email_hash", "phone_hash", "consent", "kind", "subject", "device_id", "crm_id",
)  # fmt: skip
FIELD = {name: position for position, name in enumerate(INBOX_FIELDS)}


def lake_scores(lake: Lake, dataset: str) -> list[tuple[Any, ...]]:
    """Each person's latest segment assignment in the lake (``bespoke train segments``)."""
    return (
        lake.connect()
        .execute("SELECT person, segment, rule_segments FROM segments WHERE dataset = ?", [dataset])
        .fetchall()
    )


def lake_counters(
    lake: Lake, dataset: str, cut: pd.Timestamp | None
) -> tuple[dict[str, Counters], int]:
    """Every person's counters from their lake events up to ``cut``, and the moment (µs)
    they are as of: ``cut``, or the latest event. None for a dataset without timestamps."""
    try:
        events = load_person_events(lake, dataset)
    except ValueError:  # no events, or no timestamps: nothing to count
        return {}, 0
    times = pd.to_datetime(events["timestamp"], utc=True)
    if cut is not None:
        events, times = events[times <= cut], times[times <= cut]
    if events.empty:
        return {}, 0
    moment = cut if cut is not None else times.max()
    return counters_from_events(events), int(moment.value // 1000)


def lake_identifiers(lake: Lake, dataset: str) -> list[tuple[Any, ...]]:
    """Each known person's identifiers from the identity graph, as (user id, type,
    identifier, the channel most of its events came through, first and last seen in µs)."""
    columns = {"crm_id": "crm_id", "email": "email_hash", "phone": "phone_hash",
               "device_id": "device_id", "anonymous_id": "anonymous_id"}  # fmt: skip
    carried = " UNION ALL ".join(
        f"SELECT '{kind}' AS identifier_type, {column} AS identifier, channel FROM events "
        f"WHERE dataset = $dataset AND {column} IS NOT NULL"
        for kind, column in columns.items()
    )
    return (
        lake.connect()
        .execute(
            f"""
            WITH users_of AS (
                SELECT person_id, min(identifier) AS user_id FROM identity_graph
                WHERE dataset = $dataset AND identifier_type = 'user_id' GROUP BY person_id
            ), channels AS (
                SELECT identifier_type, identifier, mode(channel) AS channel
                FROM ({carried}) GROUP BY ALL
            )
            SELECT u.user_id, g.identifier_type, g.identifier, c.channel,
                   epoch_us(g.first_seen), epoch_us(g.last_seen)
            FROM identity_graph g JOIN users_of u USING (person_id)
            LEFT JOIN channels c USING (identifier_type, identifier)
            WHERE g.dataset = $dataset AND g.identifier_type <> 'user_id'
            ORDER BY u.user_id, g.identifier_type, g.identifier
            """,
            {"dataset": dataset},
        )
        .fetchall()
    )


def as_user(row: tuple[Any, ...], user: str) -> tuple[Any, ...]:
    """An inbox row of an anonymous id that logged in, as its user's."""
    row = list(row)
    row[FIELD["kind"]], row[FIELD["subject"]] = USER, user
    return tuple(row)


def lake_history(
    lake: Lake, dataset: str, cut: pd.Timestamp | None, per_user: int
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[str, str]]]:
    """From the lake: each person's latest ``per_user`` events before ``cut`` as
    (kind, subject, µs, type, item, value, channel), their last time per event type, and
    the (anonymous id, user id) pairs of the identity graph. An anonymous event whose
    person (identity graph) has a user id is that user's."""
    con = lake.connect()
    where = "dataset = $dataset AND coalesce(user_id, person_user, anonymous_id) IS NOT NULL"
    params: dict[str, Any] = {"dataset": dataset}
    if cut is not None:
        where += " AND timestamp < $cut"
        params["cut"] = cut.to_pydatetime()
    users_of = """
        SELECT person_id, min(identifier) AS person_user FROM identity_graph
        WHERE dataset = $dataset AND identifier_type = 'user_id' GROUP BY person_id
    """
    people = f"""
        SELECT CASE WHEN coalesce(user_id, person_user) IS NULL THEN '{ANONYMOUS}'
                    ELSE '{USER}' END AS kind,
               coalesce(user_id, person_user, anonymous_id) AS subject, timestamp,
               event_type, item_id, value, event_id, channel
        FROM (SELECT e.*, u.person_user FROM events e LEFT JOIN ({users_of}) u USING (person_id))
        WHERE {where}
    """
    recent = con.execute(
        f"""
        SELECT kind, subject, epoch_us(timestamp), event_type, item_id, value, channel
        FROM ({people})
        QUALIFY row_number() OVER (
            PARTITION BY kind, subject ORDER BY timestamp DESC NULLS LAST, event_id DESC
        ) <= $per_user
        ORDER BY kind, subject, timestamp NULLS FIRST, event_id
        """,
        params | {"per_user": per_user},
    ).fetchall()
    latest = con.execute(
        f"""
        SELECT kind, subject, event_type, epoch_us(max(timestamp)) FROM ({people})
        GROUP BY ALL HAVING max(timestamp) IS NOT NULL
        """,
        params,
    ).fetchall()
    aliases = con.execute(
        f"""
        SELECT g.identifier, u.person_user FROM identity_graph g JOIN ({users_of}) u USING (person_id)
        WHERE g.dataset = $dataset AND g.identifier_type = 'anonymous_id'
        """,
        {"dataset": dataset},
    ).fetchall()
    return recent, latest, aliases


def inbox_row(key: bytes, event: EventIn) -> tuple[Any, ...]:
    """The inbox row of an event (:data:`INBOX_FIELDS`): PII replaced by the same keyed
    pseudonyms as at ingestion, and whose profile it belongs to."""
    email = None if event.email is None else pseudonym(key, "email", event.email)
    phone = None if event.phone is None else pseudonym(key, "phone", event.phone)
    context = event.context
    ip = None if context.ip is None else pseudonym(key, "ip", context.ip)
    user = event.user_id if event.user_id is not None else email  # as ingestion does
    kind, subject = (USER, user) if user is not None else (ANONYMOUS, event.anonymous_id)
    return (
        event.source_event_id,
        to_micros(event.timestamp),
        event.user_id,
        event.anonymous_id,
        str(event.event_type),
        event.item_id,
        event.value,
        event.quantity,
        str(event.channel),
        context.device,
        context.geo,
        context.page,
        context.referrer,
        ip,
        email,
        phone,
        "|".join(sorted(str(p) for p in event.consent)),
        kind,
        subject,
        event.device_id,
        event.crm_id,
    )


def screen(
    gate: PersonGate, events: Sequence[EventIn], dataset: str
) -> tuple[list[EventIn], list[ItemError]]:
    """(the events that may be stored, why each other one may not): an e-mail as an id,
    no personalization consent, a withdrawal, an erasure."""
    check_dataset_name(dataset)
    errors: list[ItemError] = []
    good: list[EventIn] = []
    gated = gate.live_reasons(dataset, events) if events else []
    for index, event in enumerate(events):
        problem = rejection(event)
        if problem is None and gated[index] is not None:
            named = "user_id" if event.user_id is not None else "anonymous_id"
            problem = ("consent" if gated[index] == WITHDRAWN else named,
                       GATE_MESSAGES[gated[index]])  # fmt: skip
        if problem is not None:
            errors.append(ItemError(index=index, field=problem[0], message=problem[1]))
        else:
            good.append(event)
    return good, errors


def inbox_batch(dataset: str, rows: Sequence[tuple[Any, ...]]) -> SourceBatch:
    """Inbox rows as one ingestion batch (pseudonyms in place of raw PII): each row is
    ``(row number, *INBOX_FIELDS without kind and subject)``."""
    columns = [c for c in INBOX_FIELDS if c not in ("kind", "subject")]
    frame = pd.DataFrame.from_records(rows, columns=["seq", *columns])
    micros = frame.pop("timestamp").astype("Int64")
    frame["timestamp"] = pd.to_datetime(micros, unit="us", utc=True)
    frame[ROW] = frame.pop("seq").astype(np.int64)
    frame[SOURCE] = "inbox"
    types = {c: t for c, t in EVENT_INPUT_TYPES.items() if isinstance(t, str) and c in frame}
    types |= {c: TEXT for c in ("ip_hash", "email_hash", "phone_hash")}
    frame = frame.astype(types)
    return SourceBatch(dataset=dataset, source="inbox", events=frame, default_channel=Channel.API)


def count_events(
    rows: Sequence[tuple[Any, ...]],
    received: int,
    scorer: LiveScorer,
    counters_of: Callable[[str], Counters],
) -> dict[str, tuple[Counters, int]]:
    """Each known person's counters (from ``counters_of``) with ``rows`` counted, and the
    time of their latest event among them (µs; ``received`` for an event without one)."""
    kind, subject, ts = FIELD["kind"], FIELD["subject"], FIELD["timestamp"]
    touched: dict[str, tuple[Counters, int]] = {}
    for r in rows:
        if r[kind] != USER:
            continue
        user = r[subject]
        if user not in touched:
            touched[user] = (counters_of(user), 0)
        counters, latest = touched[user]
        at = r[ts] if r[ts] is not None else received
        counters.add(at, scorer.is_order(r[FIELD["event_type"]]), r[FIELD["value"]],
                     r[FIELD["quantity"]], r[FIELD["channel"]], r[FIELD["device"]])  # fmt: skip
        touched[user] = (counters, max(latest, at))
    return touched


@dataclass
class Rescored:
    """What re-scoring one person announces: their change of segment (if any) and the
    webhooks to queue, as (topic, payload)."""

    change: SegmentChange | None
    webhooks: list[tuple[str, dict[str, Any]]]


def rescored(
    dataset: str,
    user: str,
    scores: Scores,
    before: tuple[str | None, float | None] | None,
    at: int,
    scorer: LiveScorer,
    marketing: Callable[[], bool | None],
) -> Rescored:
    """The consequences of a person's new ``scores`` (as of ``at``, µs) given their
    previous (segment, churn probability): a change of segment, and — when the scorer
    notifies and ``marketing()`` (asked only when there is something to announce) is not
    False — the ``segment_changed`` and ``churn_crossed`` webhooks."""
    old = before[0] if before else None
    changed = scores.segment is not None and scores.segment != old
    was, now_p = (before[1] if before else None), scores.churn_probability
    threshold = scorer.churn_threshold
    crossed = (
        threshold is not None and was is not None and now_p is not None
        and (was < threshold) != (now_p < threshold)
    )  # fmt: skip
    # the webhooks feed marketing tools: not for who withdrew marketing
    notify = (changed or crossed) and scorer.notify and marketing() is not False
    change, webhooks = None, []
    moment = from_micros(at)
    if changed:
        change = SegmentChange(user_id=user, from_segment=old, to_segment=scores.segment,
                               at=moment)  # fmt: skip
        if notify:
            webhooks.append(("segment_changed", {
                "dataset": dataset, "user_id": user, "from": old, "to": scores.segment,
                "at": moment.isoformat(), "churn_probability": scores.churn_probability,
                "expected_value": scores.expected_value,
            }))  # fmt: skip
    if notify and crossed:
        webhooks.append(("churn_crossed", {
            "dataset": dataset, "user_id": user, "threshold": threshold,
            "from": was, "to": now_p, "direction": "up" if now_p >= threshold else "down",
            "at": moment.isoformat(), "segment": scores.segment or old,
        }))  # fmt: skip
    return Rescored(change, webhooks)


def seeded_scores(
    lake: Lake, dataset: str, cut: pd.Timestamp | None, scorer: LiveScorer | None
) -> tuple[dict[str, Counters], list[tuple[str, str | None, list[str], Scores | None]]]:
    """What seeding gives each person of the lake: their counters up to ``cut`` and their
    (person, segment, rule segments, live scores or None) — scored as of then by
    ``scorer`` where it is active, otherwise the lake's latest segment assignment."""
    scores = lake_scores(lake, dataset)
    counters, moment = lake_counters(lake, dataset, cut)
    live: dict[str, Scores] = {}
    if scorer is not None and scorer.active and counters:
        people = list(counters)
        scored = scorer.score_many([counters[p] for p in people], moment)
        live = dict(zip(people, scored, strict=True))
    rules = {person: list(names) for person, _, names in scores}
    segments = {person: segment for person, segment, _ in scores}
    for person, result in live.items():
        segments[person] = result.segment or segments.get(person)
    people = segments.keys() | rules.keys()
    return counters, [
        (person, segments.get(person), rules.get(person, []), live.get(person)) for person in people
    ]


def seed_cut(as_of: datetime | str | None) -> pd.Timestamp | None:
    """``as_of`` as a UTC timestamp (None: no cut)."""
    if as_of is None:
        return None
    stamp = pd.Timestamp(as_of)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
