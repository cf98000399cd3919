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
safe for several worker processes sharing one file; Redis
(:mod:`bespoke.serving.redis_store`) is shared by replicas on several hosts.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from bespoke.features.build import Profile
from bespoke.features.collect import SourceBatch, ingest
from bespoke.features.lake import Lake
from bespoke.features.schema import ConsentPurpose, EventIn, check_dataset_name, person_id_of
from bespoke.privacy.consent import ConsentLedger
from bespoke.privacy.gate import PersonGate
from bespoke.segments.live import Counters, LiveScorer
from bespoke.serving.db import Database
from bespoke.serving.redis_store import RedisStore
from bespoke.serving.store_parts import (
    ANONYMOUS,
    ATTRIBUTES,
    CONTROL_SCHEMA,
    EPOCH,
    FIELD,
    FLUSH_CHUNK,
    INBOX_FIELDS,
    INTERACTION_SET,
    INTERACTION_TYPES,
    KEEP_FLUSHED,
    MAX_BATCH,
    MICROSECOND,
    RECENT_EVENTS,
    USER,
    AcceptResult,
    FlushResult,
    ItemError,
    Merge,
    ProfileView,
    RecentEvent,
    RecentEvents,
    SegmentChange,
    Snapshot,
    as_user,
    count_events,
    from_micros,
    inbox_batch,
    inbox_row,
    lake_history,
    lake_identifiers,
    rejection,
    rescored,
    screen,
    seed_cut,
    seeded_scores,
    to_micros,
)
from bespoke.serving.webhooks import Cart, enqueue_webhook, sql_carts
from bespoke.settings import REDIS_SCHEMES, SQLITE_PREFIX, Settings, get_settings

__all__ = [
    "ANONYMOUS", "ATTRIBUTES", "FLUSH_CHUNK", "INTERACTION_TYPES", "KEEP_FLUSHED", "MAX_BATCH",
    "RECENT_EVENTS", "USER", "AcceptResult", "FlushResult", "ItemError", "Merge",
    "OnlineStore", "ProfileView", "RecentEvent", "RecentEvents", "RedisStore", "SQLiteStore",
    "SegmentChange", "Snapshot", "flush_every", "open_store", "rejection",
]  # fmt: skip

MARKETING = ConsentPurpose.MARKETING


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

    def abandoned_carts(self, oldest: int, now: int, cutoff: int) -> list[Cart]: ...


def open_store(settings: Settings | None = None) -> OnlineStore:
    """The online store the settings name (``BESPOKE_ONLINE_STORE_URL``): SQLite, or Redis
    with the control plane in ``BESPOKE_CONTROL_STORE_URL``'s SQLite file."""
    settings = settings or get_settings()
    url = settings.online_store_url or ""
    if url.startswith(SQLITE_PREFIX):
        return SQLiteStore(url, settings.pseudonym_key())
    if url.startswith(REDIS_SCHEMES):
        control = Database(settings.control_store_url or "")
        return RedisStore(url, settings.pseudonym_key(), control=control)
    raise ValueError(
        f"BESPOKE_ONLINE_STORE_URL={url!r}: no online store backend; supported: "
        f"{SQLITE_PREFIX}<path> (SQLite), {', '.join(REDIS_SCHEMES)} (Redis)"
    )


# --- consent, PII ---------------------------------------------------------------------------


#: Columns added after the first stores were written (added to older files on open).
_ADDED_COLUMNS = {
    "inbox": {"device_id": "TEXT", "crm_id": "TEXT"},
    "profile_events": {"channel": "TEXT"},
}

_SCHEMA = (
    """
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
-- aliases: CONTROL_SCHEMA (the consent ledger reads them)
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
) WITHOUT ROWID;
"""
    + CONTROL_SCHEMA
)

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

    def abandoned_carts(self, oldest: int, now: int, cutoff: int) -> list[Cart]:
        """The carts the ``cart_abandoned`` sweep looks at (see
        :func:`bespoke.serving.webhooks.queue_abandoned_carts`), from the profiles."""
        return sql_carts(self._database())(oldest, now, cutoff)

    # --- live events ---------------------------------------------------------------------

    def screen(
        self, events: Sequence[EventIn], dataset: str
    ) -> tuple[list[EventIn], list[ItemError]]:
        """(the events that may be stored, why each other one may not): an e-mail as an
        id, no personalization consent, a withdrawal, an erasure. The event stream appends
        only what passes (``bespoke.stream.events``)."""
        return screen(self.gate(), events, dataset)

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
        received = to_micros(now or datetime.now(UTC))
        good, errors = self.screen(events, dataset)
        rows: list[tuple[Any, ...]] = [inbox_row(self._key, event) for event in good]
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

        def counters_of(user: str) -> Counters:
            found = con.execute(
                "SELECT data FROM person_counters WHERE dataset = ? AND user_id = ?",
                (dataset, user),
            ).fetchone()
            return Counters.from_json(found and found[0])

        changes = []
        for user, (counters, at) in count_events(rows, received, scorer, counters_of).items():
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
            # asked only when there is something to announce: this runs for every event
            outcome = rescored(
                dataset, user, scores, before, at, scorer,
                lambda u=user: ConsentLedger.allows_in(con, dataset, MARKETING, user_id=u),
            )  # fmt: skip
            if outcome.change is not None:
                changes.append(outcome.change)
                con.execute(
                    "INSERT INTO segment_changes (dataset, user_id, from_segment, to_segment, "
                    "at, recorded_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (dataset, user, outcome.change.from_segment, scores.segment, at, received),
                )
            for topic, payload in outcome.webhooks:
                enqueue_webhook(con, dataset, topic, payload, received)
        return changes

    def _identify(
        self, con: sqlite3.Connection, dataset: str, rows: list[tuple[Any, ...]], received: int
    ) -> tuple[list[tuple[Any, ...]], list[Merge]]:
        """Inside the caller's transaction (so that concurrent logins stay consistent):
        an event carrying a user id and an anonymous id joins the anonymous visitor's live
        history to the user, once; a cookie that already belongs to another user is not
        moved (a shared device: refused, and recorded); events of an anonymous id that
        logged in belong to its user from then on."""
        kind, subject, anonymous = FIELD["kind"], FIELD["subject"], FIELD["anonymous_id"]
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
            rows = [as_user(r, owners[r[subject]]) if r[kind] == ANONYMOUS and r[subject] in owners else r
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

    @staticmethod
    def _new_only(
        con: sqlite3.Connection, dataset: str, rows: list[tuple[Any, ...]]
    ) -> list[tuple[Any, ...]]:
        """``rows`` without those whose sender id is already held (or earlier in ``rows``)."""
        position = FIELD["source_event_id"]
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
        columns = ", ".join(INBOX_FIELDS)
        marks = ", ".join("?" * (len(INBOX_FIELDS) + 3))
        con.executemany(
            f"INSERT INTO inbox (seq, dataset, received_at, {columns}) VALUES ({marks})",
            [(seq, dataset, received, *row) for seq, row in zip(seqs, rows, strict=True)],
        )
        kind, subject, ts = FIELD["kind"], FIELD["subject"], FIELD["timestamp"]
        event_type, item, value = FIELD["event_type"], FIELD["item_id"], FIELD["value"]
        channel = FIELD["channel"]
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
            first_seen=from_micros(min(times)) if times else None,
            last_seen=from_micros(max(times)) if times else None,
            attributes=attributes,
            **scores,
            recent=[
                RecentEvent(event_type=t, item_id=i, value=v, timestamp=from_micros(ts))
                for t, i, v, ts in events
            ],
            last_event_at={t: EPOCH + at * MICROSECOND for t, at in last},
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
        interactions = [r for r in rows if r[1] is not None and r[0] in INTERACTION_SET]
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
        now = to_micros(datetime.now(UTC))
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
        cut = seed_cut(as_of)
        recent, latest, aliases = lake_history(lake, dataset, cut, per_user)
        identifiers = lake_identifiers(lake, dataset)
        counters, people = seeded_scores(lake, dataset, cut, scorer)
        now = to_micros(datetime.now(UTC))
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
            con.executemany(
                "INSERT INTO person_scores (dataset, user_id, segment, segments, "
                "churn_probability, expected_value, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(dataset, person, segment, json.dumps(rules),
                  live.churn_probability if live else None,
                  live.expected_value if live else None, now)
                 for person, segment, rules, live in people],
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
                            (name, last_seq, to_micros(datetime.now(UTC))),
                        )
                    result.add(name, len(batch.events), run.manifest, run.run_id)
            cutoff = to_micros(datetime.now(UTC) - keep_flushed)
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
        columns = [c for c in INBOX_FIELDS if c not in ("kind", "subject")]
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
        return inbox_batch(dataset, rows), int(rows[-1][0])

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
