"""The online profile store and the durable event inbox.

Live events come in through :meth:`SQLiteStore.accept_events`: after the caller has
validated them (pydantic :class:`~bespoke.features.schema.EventIn`), each is consent-gated
and pseudonymised exactly as ingestion does it, then, in one transaction, appended to the
inbox and applied to its person's profile (recent events, last time per event type). When
the call returns, the events are on disk (``synchronous=FULL``, see
:mod:`bespoke.serving.db`) and the next profile read shows them.

:meth:`SQLiteStore.flush` moves the inbox to the event lake through the one ingestion path
(:func:`bespoke.features.collect.ingest`), so live events are checked, quarantined and
deduplicated like any other source. The inbox never holds raw PII: it keeps the keyed
pseudonyms (``email_hash`` …), which ``ingest`` accepts in place of raw values. Each
dataset's inbox has a watermark, the last sequence number known to be in the lake; it
moves only after the lake write succeeded. A crash in between re-sends those rows on the
next flush, and the lake's content-hash event ids turn them into "already present".

Profiles are keyed by dataset and person: the user id, or — for an event without one —
the anonymous id (``anonymous=True`` on reads), as ingestion keys rows only known by
e-mail by the e-mail's pseudonym. Each profile keeps its latest :data:`RECENT_EVENTS`
events; the last time of each event type is kept whatever the cap drops.

The store sits behind :class:`OnlineStore` (what the service calls); :func:`open_store`
picks the backend from ``BESPOKE_ONLINE_STORE_URL``. SQLite (WAL) is the embedded default,
safe for several worker processes sharing one file.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import sqlite3
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from bespoke.features.build import Profile
from bespoke.features.collect import EVENT_INPUT_TYPES, SourceBatch, ingest
from bespoke.features.lake import Lake
from bespoke.features.parse import ROW, SOURCE
from bespoke.features.privacy import pseudonym
from bespoke.features.schema import (
    PERSONALIZATION,
    TEXT,
    Channel,
    ConsentPurpose,
    EventIn,
    check_dataset_name,
    person_id_of,
)
from bespoke.privacy.consent import ConsentLedger
from bespoke.privacy.gate import MESSAGES as GATE_MESSAGES
from bespoke.privacy.gate import WITHDRAWN, PersonGate
from bespoke.segments.features import load_person_events
from bespoke.segments.live import Counters, LiveScorer, counters_from_events
from bespoke.serving.db import Database
from bespoke.serving.webhooks import enqueue_webhook
from bespoke.settings import SQLITE_PREFIX, Settings, get_settings

MARKETING = ConsentPurpose.MARKETING

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

_INTERACTION_SET = frozenset(INTERACTION_TYPES)
USER, ANONYMOUS = "u", "a"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


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
                {"type": t, "item_id": i, "value": v, "timestamp": _moment(ts)}
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


class OnlineStore(Protocol):
    """What the service needs of an online store; SQLite is the embedded backend."""

    def accept_events(self, events: Sequence[EventIn], dataset: str) -> AcceptResult: ...

    def profile(self, user_id: str, dataset: str, *, anonymous: bool = False) -> ProfileView: ...

    def as_profile(self, user_id: str, dataset: str, *, anonymous: bool = False) -> Profile: ...

    def snapshot(self, user_id: str, dataset: str, *, anonymous: bool = False) -> Snapshot: ...

    def version(self, user_id: str, dataset: str, *, anonymous: bool = False) -> str | None: ...

    def load_attributes(self, lake: Lake, dataset: str) -> int: ...

    def seed_history(
        self, lake: Lake, dataset: str, as_of: datetime | str | None = None
    ) -> int: ...

    def flush(self, lake: Lake, *, dataset: str | None = None) -> FlushResult: ...

    def pending(self, dataset: str | None = None) -> int: ...

    def database(self) -> Database: ...

    def gate(self) -> PersonGate: ...

    def delete_user(
        self, user_id: str, dataset: str | None = None, *, anonymous: bool = False
    ) -> dict[str, int]: ...


def open_store(settings: Settings | None = None) -> OnlineStore:
    """The online store the settings name (``BESPOKE_ONLINE_STORE_URL``)."""
    settings = settings or get_settings()
    url = settings.online_store_url or ""
    if url.startswith(SQLITE_PREFIX):
        return SQLiteStore(url, settings.pseudonym_key())
    raise ValueError(
        f"no online store backend for {url!r}; supported: {SQLITE_PREFIX}<path> (SQLite)"
    )


# --- consent, PII ---------------------------------------------------------------------------


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


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // _MICROSECOND


def _moment(micros: int | None) -> datetime | None:
    return None if micros is None else _EPOCH + micros * _MICROSECOND


#: Inbox columns after ``seq``, ``dataset`` and ``received_at``, in row-tuple order.
_INBOX_FIELDS = (
    "source_event_id", "timestamp", "user_id", "anonymous_id", "event_type", "item_id",
    "value", "quantity", "channel", "device", "geo", "page", "referrer", "ip_hash",
    "email_hash", "phone_hash", "consent", "kind", "subject", "device_id", "crm_id",
)  # fmt: skip
_F = {name: position for position, name in enumerate(_INBOX_FIELDS)}

#: Columns added after the first stores were written (added to older files on open).
_ADDED_COLUMNS = {
    "inbox": {"device_id": "TEXT", "crm_id": "TEXT"},
    "profile_events": {"channel": "TEXT"},
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS inbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    dataset TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    source_event_id TEXT,
    timestamp INTEGER,
    user_id TEXT,
    anonymous_id TEXT,
    event_type TEXT NOT NULL,
    item_id TEXT,
    value REAL,
    quantity INTEGER,
    channel TEXT NOT NULL,
    device TEXT,
    geo TEXT,
    page TEXT,
    referrer TEXT,
    ip_hash TEXT,
    email_hash TEXT,
    phone_hash TEXT,
    consent TEXT NOT NULL,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL
);
-- device_id, crm_id: _ADDED_COLUMNS
CREATE UNIQUE INDEX IF NOT EXISTS inbox_sender_id ON inbox (dataset, source_event_id)
    WHERE source_event_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS inbox_subject ON inbox (subject);
CREATE TABLE IF NOT EXISTS flushed (
    dataset TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS profile_events (
    id INTEGER PRIMARY KEY,
    dataset TEXT NOT NULL,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    timestamp INTEGER,
    event_type TEXT NOT NULL,
    item_id TEXT,
    value REAL,
    inbox_seq INTEGER
);
CREATE INDEX IF NOT EXISTS profile_events_subject
    ON profile_events (dataset, kind, subject, timestamp);
CREATE TABLE IF NOT EXISTS profiles (
    dataset TEXT NOT NULL,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    n_events INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (dataset, kind, subject)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS last_events (
    dataset TEXT NOT NULL,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    event_type TEXT NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (dataset, kind, subject, event_type)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS aliases (
    dataset TEXT NOT NULL,
    anonymous_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    linked_at INTEGER NOT NULL,
    inbox_seq INTEGER,
    PRIMARY KEY (dataset, anonymous_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS aliases_user ON aliases (dataset, user_id);
CREATE TABLE IF NOT EXISTS person_identifiers (
    dataset TEXT NOT NULL,
    user_id TEXT NOT NULL,
    identifier_type TEXT NOT NULL,
    identifier TEXT NOT NULL,
    channel TEXT,
    first_seen INTEGER,
    last_seen INTEGER,
    PRIMARY KEY (dataset, user_id, identifier_type, identifier)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS person_scores (
    dataset TEXT NOT NULL,
    user_id TEXT NOT NULL,
    segment TEXT,
    segments TEXT NOT NULL DEFAULT '[]',
    churn_probability REAL,
    expected_value REAL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (dataset, user_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS person_counters (
    dataset TEXT NOT NULL,
    user_id TEXT NOT NULL,
    data TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (dataset, user_id)
) WITHOUT ROWID;
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
CREATE TABLE IF NOT EXISTS refused_aliases (
    dataset TEXT NOT NULL,
    anonymous_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    refused_at INTEGER NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS attributes (
    dataset TEXT NOT NULL,
    user_id TEXT NOT NULL,
    data TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (dataset, user_id)
) WITHOUT ROWID
"""

_UPSERT_PROFILE = (
    "INSERT INTO profiles (dataset, kind, subject, n_events, updated_at) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (dataset, kind, subject) DO UPDATE SET "
    "n_events = n_events + excluded.n_events, updated_at = excluded.updated_at"
)
_UPSERT_LAST = (
    "INSERT INTO last_events (dataset, kind, subject, event_type, at) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (dataset, kind, subject, event_type) DO UPDATE SET at = max(at, excluded.at)"
)
#: A profile's version: its latest event time (every new event of theirs changes it).
_LATEST = "SELECT max(at) FROM last_events WHERE dataset = ? AND kind = ? AND subject = ?"
_INSERT_EVENT = (
    "INSERT INTO profile_events (dataset, kind, subject, timestamp, event_type, item_id, "
    "value, inbox_seq, channel) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
#: The user an anonymous id became when it logged in.
_ALIAS = "SELECT user_id FROM aliases WHERE dataset = ? AND anonymous_id = ?"


class SQLiteStore:
    """The online store in one SQLite file (WAL), shared by every worker process.

    ``key`` is the HMAC key of the pseudonyms (the settings' :meth:`pseudonym_key`); the
    flush hands it to ingestion too. ``recent_events`` caps the events kept per profile.
    """

    def __init__(self, url: str, key: bytes, *, recent_events: int = RECENT_EVENTS) -> None:
        if recent_events < 1:
            raise ValueError(f"recent_events must be at least 1, got {recent_events}")
        self.db = Database(url)
        self._key = key
        self.recent_events = recent_events

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.db.path)!r})"

    @property
    def path(self) -> Path:
        return self.db.path

    def _database(self) -> Database:
        self.db.ensure("online-store", _SCHEMA, _ADDED_COLUMNS)
        return self.db

    def database(self) -> Database:
        """The store's database, its tables created (the webhook outbox lives there)."""
        return self._database()

    def gate(self) -> PersonGate:
        """The consent ledger and suppression list kept in this store's file."""
        return PersonGate(self._database(), self._key)

    # --- live events ---------------------------------------------------------------------

    def screen(
        self, events: Sequence[EventIn], dataset: str
    ) -> tuple[list[EventIn], list[ItemError]]:
        """(the events that may be stored, why each other one may not): an e-mail as an
        id, no personalization consent, a withdrawal, an erasure. The event stream appends
        only what passes (``bespoke.stream.events``)."""
        check_dataset_name(dataset)
        errors: list[ItemError] = []
        good: list[EventIn] = []
        gated = self.gate().live_reasons(dataset, events) if events else []
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

    def accept_events(
        self,
        events: Sequence[EventIn],
        dataset: str,
        *,
        now: datetime | None = None,
        scorer: LiveScorer | None = None,
    ) -> AcceptResult:
        """Store ``events`` (already validated) durably and apply them to their profiles.

        Events without the ``personalization`` consent purpose, or whose id is an e-mail
        address, are rejected one by one (``errors`` gives each one's position and why);
        the others are stored in one transaction, all or none. An event whose
        ``source_event_id`` is already held is accepted again but applied only once.
        With a ``scorer``, each known person's counters are updated and they are re-scored
        (segment, churn probability, expected value) in the same transaction; a change of
        segment is recorded (``segment_changes``) and, when the scorer notifies, queued in
        the outbox for the ``segment_changed`` webhook.
        """
        received = _micros(now or datetime.now(UTC))
        good, errors = self.screen(events, dataset)
        rows: list[tuple[Any, ...]] = [self._inbox_row(event) for event in good]
        accepted = len(rows)
        duplicates = 0
        merges: list[Merge] = []
        changes: list[SegmentChange] = []
        if rows:
            with self._database().write() as con:
                rows = self._new_only(con, dataset, rows)
                duplicates = accepted - len(rows)
                if rows:
                    rows, merges = self._identify(con, dataset, rows, received)
                    self._append(con, dataset, rows, received)
                    if scorer is not None and scorer.active:
                        changes = self._rescore(con, dataset, rows, received, scorer)
        return AcceptResult(
            accepted=accepted,
            rejected=len(errors),
            duplicates=duplicates,
            errors=errors,
            merges=merges,
            segment_changes=changes,
        )

    def _rescore(
        self,
        con: sqlite3.Connection,
        dataset: str,
        rows: list[tuple[Any, ...]],
        received: int,
        scorer: LiveScorer,
    ) -> list[SegmentChange]:
        """Inside the caller's transaction: count each known person's events, score them
        as of their latest event, keep the scores, record changes of segment."""
        kind, subject, ts = _F["kind"], _F["subject"], _F["timestamp"]
        touched: dict[str, tuple[Counters, int]] = {}
        for r in rows:
            if r[kind] != USER:
                continue
            user = r[subject]
            if user not in touched:
                found = con.execute(
                    "SELECT data FROM person_counters WHERE dataset = ? AND user_id = ?",
                    (dataset, user),
                ).fetchone()
                touched[user] = (Counters.from_json(found and found[0]), 0)
            counters, latest = touched[user]
            at = r[ts] if r[ts] is not None else received
            counters.add(at, scorer.is_order(r[_F["event_type"]]), r[_F["value"]],
                         r[_F["quantity"]], r[_F["channel"]], r[_F["device"]])  # fmt: skip
            touched[user] = (counters, max(latest, at))
        changes = []
        for user, (counters, at) in touched.items():
            con.execute(
                "INSERT INTO person_counters (dataset, user_id, data, updated_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (dataset, user_id) DO UPDATE SET "
                "data = excluded.data, updated_at = excluded.updated_at",
                (dataset, user, counters.to_json(), received),
            )
            scores = scorer.score(counters, at)
            before = con.execute(
                "SELECT segment, churn_probability FROM person_scores "
                "WHERE dataset = ? AND user_id = ?",
                (dataset, user),
            ).fetchone()
            con.execute(
                "INSERT INTO person_scores (dataset, user_id, segment, churn_probability, "
                "expected_value, updated_at) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (dataset, user_id) DO UPDATE SET "
                "segment = coalesce(excluded.segment, segment), "
                "churn_probability = coalesce(excluded.churn_probability, churn_probability), "
                "expected_value = coalesce(excluded.expected_value, expected_value), "
                "updated_at = excluded.updated_at",
                (dataset, user, scores.segment, scores.churn_probability,
                 scores.expected_value, received),
            )  # fmt: skip
            old = before[0] if before else None
            changed = scores.segment is not None and scores.segment != old
            was, now_p = (before[1] if before else None), scores.churn_probability
            threshold = scorer.churn_threshold
            crossed = (
                threshold is not None and was is not None and now_p is not None
                and (was < threshold) != (now_p < threshold)
            )  # fmt: skip
            # the webhooks feed marketing tools: not for who withdrew marketing (asked only
            # when there is something to announce: this runs for every event)
            notify = (
                (changed or crossed)
                and scorer.notify
                and (ConsentLedger.allows_in(con, dataset, MARKETING, user_id=user) is not False)
            )
            if changed:
                change = SegmentChange(user_id=user, from_segment=old, to_segment=scores.segment,
                                       at=_moment(at))  # fmt: skip
                changes.append(change)
                con.execute(
                    "INSERT INTO segment_changes (dataset, user_id, from_segment, to_segment, "
                    "at, recorded_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (dataset, user, old, scores.segment, at, received),
                )
                if notify:
                    enqueue_webhook(con, dataset, "segment_changed", {
                        "dataset": dataset, "user_id": user, "from": old, "to": scores.segment,
                        "at": change.at.isoformat(), "churn_probability": scores.churn_probability,
                        "expected_value": scores.expected_value,
                    }, received)  # fmt: skip
            if notify and crossed:
                enqueue_webhook(con, dataset, "churn_crossed", {
                    "dataset": dataset, "user_id": user, "threshold": threshold,
                    "from": was, "to": now_p, "direction": "up" if now_p >= threshold else "down",
                    "at": _moment(at).isoformat(), "segment": scores.segment or old,
                }, received)  # fmt: skip
        return changes

    def _identify(
        self, con: sqlite3.Connection, dataset: str, rows: list[tuple[Any, ...]], received: int
    ) -> tuple[list[tuple[Any, ...]], list[Merge]]:
        """Inside the caller's transaction (so that concurrent logins stay consistent):
        an event carrying a user id and an anonymous id joins the anonymous visitor's live
        history to the user, once; a cookie that already belongs to another user is not
        moved (a shared device: refused, and recorded); events of an anonymous id that
        logged in belong to its user from then on."""
        kind, subject, anonymous = _F["kind"], _F["subject"], _F["anonymous_id"]
        merges: dict[str, Merge] = {}
        for row in rows:
            cookie = row[anonymous]
            if row[kind] != USER or cookie is None or cookie in merges:
                continue
            user = row[subject]
            owner = con.execute(_ALIAS, (dataset, cookie)).fetchone()
            if owner is None:
                moved = self._merge(con, dataset, cookie, user, received)
                merges[cookie] = Merge(
                    anonymous_id=cookie, user_id=user, status="merged", events_moved=moved
                )
            elif owner[0] == user:
                merges[cookie] = Merge(anonymous_id=cookie, user_id=user, status="already")
            else:
                reason = f"anonymous id {cookie} already belongs to user {owner[0]}"
                con.execute(
                    "INSERT INTO refused_aliases VALUES (?, ?, ?, ?, ?)",
                    (dataset, cookie, user, received, reason),
                )
                merges[cookie] = Merge(
                    anonymous_id=cookie, user_id=user, status="refused", reason=reason
                )
        anonymous_rows = {r[subject] for r in rows if r[kind] == ANONYMOUS}
        owners = {}
        if anonymous_rows:
            owners = dict(
                con.execute(
                    "SELECT anonymous_id, user_id FROM aliases WHERE dataset = ? AND "
                    "anonymous_id IN (SELECT value FROM json_each(?))",
                    (dataset, json.dumps(sorted(anonymous_rows))),
                ).fetchall()
            )
        if owners:
            rows = [_as_user(r, owners[r[subject]]) if r[kind] == ANONYMOUS and r[subject] in owners else r
                    for r in rows]  # fmt: skip
        return rows, list(merges.values())

    def _merge(
        self, con: sqlite3.Connection, dataset: str, cookie: str, user: str, received: int
    ) -> int:
        """Move the anonymous visitor's live history to the user and remember the alias;
        the user's version moves (an ``identify`` time), so no cached answer outlives it."""
        moved = con.execute(
            "UPDATE profile_events SET kind = ?, subject = ? "
            "WHERE dataset = ? AND kind = ? AND subject = ?",
            (USER, user, dataset, ANONYMOUS, cookie),
        ).rowcount
        con.execute(
            "INSERT INTO last_events (dataset, kind, subject, event_type, at) "
            "SELECT dataset, ?, ?, event_type, at FROM last_events "
            "WHERE dataset = ? AND kind = ? AND subject = ? AND true "
            "ON CONFLICT (dataset, kind, subject, event_type) DO UPDATE SET at = max(at, excluded.at)",
            (USER, user, dataset, ANONYMOUS, cookie),
        )
        con.execute(_UPSERT_LAST, (dataset, USER, user, "identify", received))
        for table in ("last_events", "profiles"):
            con.execute(
                f"DELETE FROM {table} WHERE dataset = ? AND kind = ? AND subject = ?",
                (dataset, ANONYMOUS, cookie),
            )
        con.execute(_UPSERT_PROFILE, (dataset, USER, user, moved, received))
        con.execute(
            "INSERT INTO aliases (dataset, anonymous_id, user_id, linked_at) VALUES (?, ?, ?, ?)",
            (dataset, cookie, user, received),
        )
        self._trim(con, dataset, [(USER, user)])
        return moved

    def _inbox_row(self, event: EventIn) -> tuple[Any, ...]:
        """The inbox row of an event: PII replaced by the same keyed pseudonyms as at
        ingestion, and whose profile it belongs to."""
        key = self._key
        email = None if event.email is None else pseudonym(key, "email", event.email)
        phone = None if event.phone is None else pseudonym(key, "phone", event.phone)
        context = event.context
        ip = None if context.ip is None else pseudonym(key, "ip", context.ip)
        user = event.user_id if event.user_id is not None else email  # as ingestion does
        kind, subject = (USER, user) if user is not None else (ANONYMOUS, event.anonymous_id)
        return (
            event.source_event_id,
            _micros(event.timestamp),
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

    @staticmethod
    def _new_only(
        con: sqlite3.Connection, dataset: str, rows: list[tuple[Any, ...]]
    ) -> list[tuple[Any, ...]]:
        """``rows`` without those whose sender id is already held (or earlier in ``rows``)."""
        position = _F["source_event_id"]
        ids = [row[position] for row in rows if row[position] is not None]
        if not ids:
            return rows
        held = {
            sender
            for (sender,) in con.execute(
                "SELECT source_event_id FROM inbox WHERE dataset = ? AND source_event_id IN "
                "(SELECT value FROM json_each(?))",
                (dataset, json.dumps(ids)),
            )
        }
        kept = []
        for row in rows:
            sender = row[position]
            if sender is not None:
                if sender in held:
                    continue
                held.add(sender)
            kept.append(row)
        return kept

    def _append(
        self, con: sqlite3.Connection, dataset: str, rows: list[tuple[Any, ...]], received: int
    ) -> None:
        """Inbox rows plus the profile updates, inside the caller's transaction."""
        (last_seq,) = con.execute(
            "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'inbox'), 0)"
        ).fetchone()
        seqs = range(last_seq + 1, last_seq + 1 + len(rows))
        columns = ", ".join(_INBOX_FIELDS)
        marks = ", ".join("?" * (len(_INBOX_FIELDS) + 3))
        con.executemany(
            f"INSERT INTO inbox (seq, dataset, received_at, {columns}) VALUES ({marks})",
            [(seq, dataset, received, *row) for seq, row in zip(seqs, rows, strict=True)],
        )
        kind, subject, ts = _F["kind"], _F["subject"], _F["timestamp"]
        event_type, item, value = _F["event_type"], _F["item_id"], _F["value"]
        channel = _F["channel"]
        con.executemany(
            _INSERT_EVENT,
            [
                (dataset, r[kind], r[subject], r[ts], r[event_type], r[item], r[value], seq,
                 r[channel])
                for seq, r in zip(seqs, rows, strict=True)
            ],
        )  # fmt: skip
        counts: dict[tuple[str, str], int] = defaultdict(int)
        latest: dict[tuple[str, str, str], int] = {}
        for r in rows:
            who = (r[kind], r[subject])
            counts[who] += 1
            moment = (*who, r[event_type])
            if moment not in latest or r[ts] > latest[moment]:
                latest[moment] = r[ts]
        con.executemany(
            _UPSERT_PROFILE, [(dataset, k, s, n, received) for (k, s), n in counts.items()]
        )
        con.executemany(_UPSERT_LAST, [(dataset, k, s, t, at) for (k, s, t), at in latest.items()])
        self._trim(con, dataset, counts)

    def _trim(self, con: sqlite3.Connection, dataset: str, who: Iterable[tuple[str, str]]) -> None:
        """Drop the oldest events of the profiles among ``who`` that hold more than the cap
        (with 10% slack, so that a busy profile is trimmed once per many events)."""
        cap = self.recent_events
        by_kind: dict[str, list[str]] = defaultdict(list)
        for kind, subject in who:
            by_kind[kind].append(subject)
        over = []
        for kind, subjects in by_kind.items():
            over += con.execute(
                "SELECT kind, subject FROM profiles WHERE dataset = ? AND kind = ? AND "
                "n_events > ? AND subject IN (SELECT value FROM json_each(?))",
                (dataset, kind, cap + cap // 10, json.dumps(subjects)),
            ).fetchall()
        self._trim_to_cap(con, dataset, over)

    def _trim_to_cap(
        self, con: sqlite3.Connection, dataset: str, over: list[tuple[str, str]]
    ) -> None:
        cap = self.recent_events
        for kind, subject in over:
            con.execute(
                "DELETE FROM profile_events WHERE id IN (SELECT id FROM profile_events "
                "WHERE dataset = ? AND kind = ? AND subject = ? "
                "ORDER BY timestamp DESC, id DESC LIMIT -1 OFFSET ?)",
                (dataset, kind, subject, cap),
            )
            con.execute(
                "UPDATE profiles SET n_events = (SELECT count(*) FROM profile_events "
                "WHERE dataset = ?1 AND kind = ?2 AND subject = ?3) "
                "WHERE dataset = ?1 AND kind = ?2 AND subject = ?3",
                (dataset, kind, subject),
            )

    # --- reading profiles ----------------------------------------------------------------

    def profile(self, user_id: str, dataset: str, *, anonymous: bool = False) -> ProfileView:
        """Attributes, latest events (newest first), last time per event type, the
        person's live identifiers (the anonymous ids that logged in as them) and recent
        activity per channel. An anonymous id that logged in shows its user."""
        with self._database().read() as con:
            kind, subject, merged_into = _who(con, dataset, user_id, anonymous)
            attributes = self._attributes(con, dataset, subject) if kind == USER else {}
            scores = _scores(con, dataset, subject) if kind == USER else {}
            events = con.execute(
                "SELECT event_type, item_id, value, timestamp FROM profile_events "
                "WHERE dataset = ? AND kind = ? AND subject = ? "
                "ORDER BY timestamp DESC, id DESC LIMIT ?",
                (dataset, kind, subject, self.recent_events),
            ).fetchall()
            last = con.execute(
                "SELECT event_type, at FROM last_events WHERE dataset = ? AND kind = ? "
                "AND subject = ? ORDER BY event_type",
                (dataset, kind, subject),
            ).fetchall()
            channels = con.execute(
                "SELECT coalesce(channel, 'unknown'), count(*) FROM profile_events "
                "WHERE dataset = ? AND kind = ? AND subject = ? GROUP BY 1 ORDER BY 1",
                (dataset, kind, subject),
            ).fetchall()
            known = (
                con.execute(
                    "SELECT identifier_type, identifier, channel, first_seen, last_seen "
                    "FROM person_identifiers WHERE dataset = ?1 AND user_id = ?2 "
                    "UNION ALL SELECT 'anonymous_id', anonymous_id, NULL, linked_at, NULL "
                    "FROM aliases WHERE dataset = ?1 AND user_id = ?2",
                    (dataset, subject),
                ).fetchall()
                if kind == USER
                else []
            )
        times = [ts for *_, ts in events if ts is not None] + [at for _, at in last]
        times += [t for *_, first, last_at in known for t in (first, last_at) if t is not None]
        identifiers = [{"type": "user_id" if kind == USER else "anonymous_id", "id": subject}]
        listed = {(identifiers[0]["type"], subject)}
        for kind_of, value, channel, *_ in known:  # the lake's graph first, then live logins
            if (kind_of, value) not in listed:
                listed.add((kind_of, value))
                identifiers.append(
                    {"type": kind_of, "id": value, **({"channel": channel} if channel else {})}
                )
        return ProfileView(
            user_id=user_id,
            dataset=dataset,
            anonymous=anonymous,
            known=bool(attributes or events or last),
            person_id=person_id_of(*identifiers[0].values()),
            merged_into=merged_into,
            identifiers=identifiers,
            channels=dict(channels),
            first_seen=_moment(min(times)) if times else None,
            last_seen=_moment(max(times)) if times else None,
            attributes=attributes,
            **scores,
            recent=[
                RecentEvent(event_type=t, item_id=i, value=v, timestamp=_moment(ts))
                for t, i, v, ts in events
            ],
            last_event_at={t: _EPOCH + at * _MICROSECOND for t, at in last},
        )

    def as_profile(self, user_id: str, dataset: str, *, anonymous: bool = False) -> Profile:
        """The person as the ranker's feature builder takes them
        (:meth:`~bespoke.features.build.Histories.from_profiles`): interactions with an
        item, oldest first, read as training reads the lake (a missing value counts 1.0,
        as in :meth:`~bespoke.training.data.Interactions.from_frame`)."""
        types = json.dumps(INTERACTION_TYPES)
        with self._database().read() as con:
            kind, subject, _ = _who(con, dataset, user_id, anonymous)
            attributes = self._attributes(con, dataset, subject) if kind == USER else {}
            rows = con.execute(
                "SELECT item_id, value, timestamp FROM profile_events "
                "WHERE dataset = ? AND kind = ? AND subject = ? AND item_id IS NOT NULL "
                "AND event_type IN (SELECT value FROM json_each(?)) ORDER BY timestamp, id",
                (dataset, kind, subject, types),
            ).fetchall()
        values = np.array([1.0 if v is None else v for _, v, _ in rows], dtype=np.float64)
        micros = np.array(
            [np.iinfo(np.int64).min if ts is None else ts for _, _, ts in rows], dtype=np.int64
        )
        return Profile(
            user_id=user_id,
            attributes=attributes,
            items=[item for item, _, _ in rows],
            values=values,
            timestamps=micros.view("datetime64[us]"),  # int64 minimum is NaT
        )

    def version(self, user_id: str, dataset: str, *, anonymous: bool = False) -> str | None:
        """:meth:`snapshot`'s ``version`` alone, in one indexed read: enough to look up a
        cached answer before reading the whole profile."""
        con = self._database().connection()
        kind, subject = USER, user_id
        if anonymous:
            kind, subject, _ = _who(con, dataset, user_id, anonymous)
        latest = con.execute(_LATEST, (dataset, kind, subject)).fetchone()[0]
        return None if latest is None else str(latest)

    def snapshot(self, user_id: str, dataset: str, *, anonymous: bool = False) -> Snapshot:
        """:meth:`as_profile` and :meth:`profile`'s recent events in one read: the hot
        path of every request (plain tuples, no per-event models)."""
        with self._database().read() as con:
            kind, subject = USER, user_id
            if anonymous:
                kind, subject, _ = _who(con, dataset, user_id, anonymous)
            attributes = self._attributes(con, dataset, subject) if kind == USER else {}
            scores = _scores(con, dataset, subject) if kind == USER else {}
            rows = con.execute(
                "SELECT event_type, item_id, value, timestamp FROM profile_events "
                "WHERE dataset = ? AND kind = ? AND subject = ? ORDER BY timestamp, id",
                (dataset, kind, subject),
            ).fetchall()
            latest = con.execute(_LATEST, (dataset, kind, subject)).fetchone()[0]
        interactions = [r for r in rows if r[1] is not None and r[0] in _INTERACTION_SET]
        micros = np.array(
            [np.iinfo(np.int64).min if r[3] is None else r[3] for r in interactions],
            dtype=np.int64,
        )
        profile = Profile(
            user_id=user_id,
            attributes=attributes,
            items=[r[1] for r in interactions],
            values=np.array([1.0 if r[2] is None else r[2] for r in interactions], np.float64),
            timestamps=micros.view("datetime64[us]"),  # int64 minimum is NaT
            scores=scores,
        )
        # Newest first, as profile() shows them; unknown times sort oldest, as there.
        events = RecentEvents(rows[-self.recent_events :])
        return Snapshot(profile, events, None if latest is None else str(latest))

    @staticmethod
    def _attributes(con: sqlite3.Connection, dataset: str, user_id: str) -> dict[str, Any]:
        row = con.execute(
            "SELECT data FROM attributes WHERE dataset = ? AND user_id = ?", (dataset, user_id)
        ).fetchone()
        return {} if row is None else json.loads(row[0])

    # --- loading from the lake -----------------------------------------------------------

    def load_attributes(self, lake: Lake, dataset: str) -> int:
        """Replace the dataset's user attributes with the lake's latest (``users`` view);
        returns how many people have attributes."""
        check_dataset_name(dataset)
        columns = ", ".join(ATTRIBUTES)
        rows = (
            lake.connect()
            .execute(f"SELECT user_id, {columns} FROM users WHERE dataset = ?", [dataset])
            .fetchall()
        )
        now = _micros(datetime.now(UTC))
        with self._database().write() as con:
            con.execute("DELETE FROM attributes WHERE dataset = ?", (dataset,))
            con.executemany(
                "INSERT INTO attributes (dataset, user_id, data, updated_at) VALUES (?, ?, ?, ?)",
                [
                    (dataset, row[0], json.dumps(dict(zip(ATTRIBUTES, row[1:], strict=True))), now)
                    for row in rows
                ],
            )
        return len(rows)

    def seed_history(
        self,
        lake: Lake,
        dataset: str,
        as_of: datetime | str | None = None,
        per_user: int | None = None,
        scorer: LiveScorer | None = None,
    ) -> int:
        """Rebuild the dataset's profiles from the lake, so that a freshly started service
        knows existing people: each person's latest ``per_user`` events (default: the
        cap) before ``as_of`` (all when ``None``), plus the live events not flushed yet.

        Live events already flushed are in the lake, so they come back from there; seeding
        twice gives the same profiles. Each person's counters (order days, channels,
        devices) are rebuilt from all their lake events up to ``as_of``; with a ``scorer``,
        everyone is scored as of then (or the dataset's latest event), otherwise their
        latest segment assignment in the lake is shown. Returns how many lake events were
        loaded.
        """
        check_dataset_name(dataset)
        per_user = per_user or self.recent_events
        cut = None
        if as_of is not None:
            stamp = pd.Timestamp(as_of)
            cut = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
        recent, latest, aliases = _lake_history(lake, dataset, cut, per_user)
        identifiers = _lake_identifiers(lake, dataset)
        scores = _lake_scores(lake, dataset)
        counters, moment = _lake_counters(lake, dataset, cut)
        now = _micros(datetime.now(UTC))
        live = {}
        if scorer is not None and scorer.active and counters:
            people = list(counters)
            scored = scorer.score_many([counters[p] for p in people], moment)
            live = dict(zip(people, scored, strict=True))
        with self._database().write() as con:
            watermark = self._watermark(con, dataset)
            con.execute(
                "DELETE FROM profile_events WHERE dataset = ? AND "
                "(inbox_seq IS NULL OR inbox_seq <= ?)",
                (dataset, watermark),
            )
            con.executemany(_INSERT_EVENT, [(dataset, *row[:6], None, row[6]) for row in recent])
            # The identity graph's cookies of known people (live logins stay as they are).
            con.executemany(
                "INSERT OR IGNORE INTO aliases (dataset, anonymous_id, user_id, linked_at) "
                "VALUES (?, ?, ?, ?)",
                [(dataset, cookie, user, now) for cookie, user in aliases],
            )
            con.execute("DELETE FROM person_scores WHERE dataset = ?", (dataset,))
            rules = {person: list(names) for person, _, names in scores}
            segments = {person: segment for person, segment, _ in scores}
            for person, scored in live.items():
                segments[person] = scored.segment or segments.get(person)
            con.executemany(
                "INSERT INTO person_scores (dataset, user_id, segment, segments, "
                "churn_probability, expected_value, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(dataset, person, segments.get(person), json.dumps(rules.get(person, [])),
                  live[person].churn_probability if person in live else None,
                  live[person].expected_value if person in live else None, now)
                 for person in segments.keys() | rules.keys()],
            )  # fmt: skip
            con.execute("DELETE FROM person_counters WHERE dataset = ?", (dataset,))
            con.executemany(
                "INSERT INTO person_counters (dataset, user_id, data, updated_at) "
                "VALUES (?, ?, ?, ?)",
                [(dataset, person, c.to_json(), now) for person, c in counters.items()],
            )
            con.execute("DELETE FROM person_identifiers WHERE dataset = ?", (dataset,))
            con.executemany(
                "INSERT INTO person_identifiers VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(dataset, *row) for row in identifiers],
            )
            con.execute("DELETE FROM last_events WHERE dataset = ?", (dataset,))
            con.executemany(_UPSERT_LAST, [(dataset, *row) for row in latest])
            pending = con.execute(
                "SELECT kind, subject, event_type, max(timestamp) FROM inbox "
                "WHERE dataset = ? AND seq > ? AND timestamp IS NOT NULL GROUP BY 1, 2, 3",
                (dataset, watermark),
            ).fetchall()
            con.executemany(_UPSERT_LAST, [(dataset, *row) for row in pending])
            con.execute("UPDATE profiles SET n_events = 0 WHERE dataset = ?", (dataset,))
            con.execute(
                "INSERT INTO profiles (dataset, kind, subject, n_events, updated_at) "
                "SELECT dataset, kind, subject, count(*), ? FROM profile_events "
                "WHERE dataset = ? GROUP BY dataset, kind, subject "
                "ON CONFLICT (dataset, kind, subject) DO UPDATE SET n_events = excluded.n_events",
                (now, dataset),
            )
            over = con.execute(
                "SELECT kind, subject FROM profiles WHERE dataset = ? AND n_events > ?",
                (dataset, self.recent_events),
            ).fetchall()
            self._trim_to_cap(con, dataset, over)
        return len(recent)

    # --- to the lake ---------------------------------------------------------------------

    @staticmethod
    def _watermark(con: sqlite3.Connection, dataset: str) -> int:
        row = con.execute("SELECT seq FROM flushed WHERE dataset = ?", (dataset,)).fetchone()
        return 0 if row is None else int(row[0])

    def pending(self, dataset: str | None = None) -> int:
        """How many inbox events are not in the lake yet."""
        with self._database().read() as con:
            (count,) = con.execute(
                "SELECT count(*) FROM inbox i LEFT JOIN flushed f ON f.dataset = i.dataset "
                "WHERE i.seq > coalesce(f.seq, 0) AND (?1 IS NULL OR i.dataset = ?1)",
                (dataset,),
            ).fetchone()
        return int(count)

    def flush(
        self,
        lake: Lake,
        *,
        dataset: str | None = None,
        chunk: int = FLUSH_CHUNK,
        keep_flushed: timedelta = KEEP_FLUSHED,
    ) -> FlushResult:
        """Move the inbox's pending events (of one dataset, or all) to the lake.

        Each chunk goes through :func:`~bespoke.features.collect.ingest` as one run; the
        dataset's watermark moves past it only once the run is written. Rows flushed more
        than ``keep_flushed`` ago are then dropped from the inbox. One flush at a time per
        store (a file lock); a second waits for the first.
        """
        if dataset is not None:
            check_dataset_name(dataset)
        result = FlushResult()
        with self._flush_lock():
            database = self._database()
            with database.read() as con:
                datasets = [
                    name
                    for (name,) in con.execute(
                        "SELECT DISTINCT i.dataset FROM inbox i LEFT JOIN flushed f "
                        "ON f.dataset = i.dataset WHERE i.seq > coalesce(f.seq, 0) "
                        "AND (?1 IS NULL OR i.dataset = ?1) ORDER BY 1",
                        (dataset,),
                    )
                ]
            for name in datasets:
                while (part := self._pending_batch(name, chunk)) is not None:
                    batch, last_seq = part
                    run = ingest(batch, lake, self._key, gate=self.gate())
                    with database.write() as con:
                        con.execute(
                            "INSERT INTO flushed (dataset, seq, at) VALUES (?, ?, ?) "
                            "ON CONFLICT (dataset) DO UPDATE SET seq = max(seq, excluded.seq), "
                            "at = excluded.at",
                            (name, last_seq, _micros(datetime.now(UTC))),
                        )
                    result.add(name, len(batch.events), run.manifest, run.run_id)
            cutoff = _micros(datetime.now(UTC) - keep_flushed)
            with database.write() as con:
                con.execute(
                    "DELETE FROM inbox WHERE received_at < ? AND seq <= "
                    "coalesce((SELECT f.seq FROM flushed f WHERE f.dataset = inbox.dataset), 0)",
                    (cutoff,),
                )
        return result

    def _pending_batch(self, dataset: str, limit: int) -> tuple[SourceBatch, int] | None:
        """Up to ``limit`` pending rows of ``dataset`` as an ingestion batch (pseudonyms in
        place of raw PII), and the last sequence number among them."""
        columns = [c for c in _INBOX_FIELDS if c not in ("kind", "subject")]
        with self.db.read() as con:
            watermark = self._watermark(con, dataset)
            cursor = con.execute(
                f"SELECT seq, {', '.join(columns)} FROM inbox WHERE seq > ? AND dataset = ? "
                "ORDER BY seq LIMIT ?",
                (watermark, dataset, limit),
            )
            rows = cursor.fetchall()
        if not rows:
            return None
        frame = pd.DataFrame.from_records(rows, columns=["seq", *columns])
        last_seq = int(frame["seq"].iloc[-1])
        micros = frame.pop("timestamp").astype("Int64")
        frame["timestamp"] = pd.to_datetime(micros, unit="us", utc=True)
        frame[ROW] = frame.pop("seq").astype(np.int64)
        frame[SOURCE] = "inbox"
        types = {c: t for c, t in EVENT_INPUT_TYPES.items() if isinstance(t, str) and c in frame}
        types |= {c: TEXT for c in ("ip_hash", "email_hash", "phone_hash")}
        frame = frame.astype(types)
        batch = SourceBatch(
            dataset=dataset, source="inbox", events=frame, default_channel=Channel.API
        )
        return batch, last_seq

    @contextmanager
    def _flush_lock(self) -> Iterator[None]:
        path = self.db.path.with_name(self.db.path.name + ".flush.lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    # --- deletion ------------------------------------------------------------------------

    def delete_user(
        self, user_id: str, dataset: str | None = None, *, anonymous: bool = False
    ) -> dict[str, int]:
        """Remove a person's profile and inbox rows (of one dataset, or every one).

        The hook of the deletion lifecycle: the lake and the audit log are its business.
        Deleted content is overwritten in the file (``secure_delete``) and the write-ahead
        log is checkpointed, so no old copy of the rows stays on disk. Returns the rows
        removed per table.
        """
        kind = ANONYMOUS if anonymous else USER
        scope = "(?2 IS NULL OR dataset = ?2)"
        statements = {
            "inbox": f"DELETE FROM inbox WHERE subject = ?1 AND kind = ?3 AND {scope}",
            "profile_events": (
                f"DELETE FROM profile_events WHERE subject = ?1 AND kind = ?3 AND {scope}"
            ),
            "last_events": f"DELETE FROM last_events WHERE subject = ?1 AND kind = ?3 AND {scope}",
            "profiles": f"DELETE FROM profiles WHERE subject = ?1 AND kind = ?3 AND {scope}",
        }
        if not anonymous:
            statements["attributes"] = f"DELETE FROM attributes WHERE user_id = ?1 AND {scope}"
        database = self._database()
        connection = database.connection()
        connection.execute("PRAGMA secure_delete = ON")
        removed = {}
        try:
            with database.write() as con:
                for table, sql in statements.items():
                    params = (
                        (user_id, dataset) if table == "attributes" else (user_id, dataset, kind)
                    )
                    removed[table] = con.execute(sql, params).rowcount
        finally:
            connection.execute("PRAGMA secure_delete = OFF")
        # Old versions of the pages stay in the write-ahead log until a checkpoint.
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return removed


def _who(
    con: sqlite3.Connection, dataset: str, user_id: str, anonymous: bool
) -> tuple[str, str, str | None]:
    """(kind, subject, merged_into) of a request's person: an anonymous id that logged in
    is its user's."""
    if not anonymous:
        return USER, user_id, None
    owner = con.execute(_ALIAS, (dataset, user_id)).fetchone()
    return (USER, owner[0], owner[0]) if owner else (ANONYMOUS, user_id, None)


def _scores(con: sqlite3.Connection, dataset: str, user_id: str) -> dict[str, Any]:
    """A person's scores (segment, rule segments, churn probability, expected value)."""
    row = con.execute(
        "SELECT segment, segments, churn_probability, expected_value FROM person_scores "
        "WHERE dataset = ? AND user_id = ?",
        (dataset, user_id),
    ).fetchone()
    if row is None:
        return {}
    return {"segment": row[0], "segments": json.loads(row[1]),
            "churn_probability": row[2], "expected_value": row[3]}  # fmt: skip


def _lake_scores(lake: Lake, dataset: str) -> list[tuple[Any, ...]]:
    """Each person's latest segment assignment in the lake (``bespoke train segments``)."""
    return (
        lake.connect()
        .execute("SELECT person, segment, rule_segments FROM segments WHERE dataset = ?", [dataset])
        .fetchall()
    )


def _lake_counters(
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


def _lake_identifiers(lake: Lake, dataset: str) -> list[tuple[Any, ...]]:
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


def _as_user(row: tuple[Any, ...], user: str) -> tuple[Any, ...]:
    """An inbox row of an anonymous id that logged in, as its user's."""
    row = list(row)
    row[_F["kind"]], row[_F["subject"]] = USER, user
    return tuple(row)


def _lake_history(
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


def flush_every(
    store: OnlineStore,
    lake: Lake,
    seconds: float,
    *,
    dataset: str | None = None,
    runs: int | None = None,
    on_flush: Callable[[FlushResult], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Flush every ``seconds`` (``runs`` times, or until interrupted); returns the events
    flushed in all. ``on_flush`` sees each flush's result."""
    if seconds <= 0:
        raise ValueError(f"the flush interval must be positive, got {seconds}")
    total, done = 0, 0
    while runs is None or done < runs:
        if done:
            sleep(seconds)
        result = store.flush(lake, dataset=dataset)
        total += result.flushed
        done += 1
        if on_flush is not None:
            on_flush(result)
    return total
