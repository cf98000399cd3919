"""The online store on Redis, shared by service replicas on several hosts.

Chosen by ``BESPOKE_ONLINE_STORE_URL=redis://host:6379/0`` (or ``rediss://``,
``unix://``); :class:`RedisStore` behaves as :class:`~bespoke.serving.store.SQLiteStore`
does (the same contract tests run against both): the same consent gate and pseudonyms,
duplicates recognised by ``source_event_id`` per dataset, anonymous visitors joined to
their user on login (a cookie of another user refused), profiles capped at
``recent_events``, a profile's version its latest event time, live re-scoring, a flush
to the lake through the one ingestion path, safe to repeat.

**Atomicity.** One accept batch is one optimistic transaction: the keys it reads (event
ids held, the cookies' owners, the touched profiles' last times, counters and scores) are
``WATCH``-ed, the new state is computed, and every write goes in one ``MULTI``/``EXEC``;
if another replica or process changed any watched key meanwhile, nothing is written and
the batch is computed again. So concurrent writers never lose nor double-apply an event.

**Layout.** Every key of a dataset starts ``bespoke:{<dataset>}:`` — a Redis Cluster hash
tag, so one dataset's keys share a slot and its transactions stay on one node:

- ``inbox``: a Stream, the durable inbox (one entry per accepted event: the inbox row,
  keyed pseudonyms in place of PII); ``flushed``: the id of the last entry known to be in
  the lake; ``sent:<source_event_id>``: the sender ids held (dropped with their entry);
- ``events:<u|a>:<person>``: a sorted set of the profile's latest events, scored by
  time; ``last:<u|a>:<person>``: a hash, the last time of each event type;
- ``alias:<cookie>`` → the user it became; ``logins:<user>``: a hash, cookie → when;
  ``refused``: a list of refused logins (shared devices);
- ``attributes``, ``identifiers``: hashes keyed by user (from the lake);
  ``scores:<user>``, ``counters:<user>``: live scores and their counters;
- ``sequence``: numbers that order a profile's events of the same time.

:class:`RedisKeys` is the one place that names them; :meth:`RedisKeys.part` tells what
a key holds (the privacy registry's completeness test walks every key with it).

**The control plane stays in SQL.** The consent ledger and suppression list
(:meth:`gate`), API keys, the experiment ledger, deletion requests, recorded segment
changes and the webhook outbox (:meth:`database`) are in the ``control`` database
(``BESPOKE_CONTROL_STORE_URL``, a SQLite file): too much of the codebase queries them with
SQL to move in this step. Replicas on several hosts therefore need that file shared
until a later step moves it to PostgreSQL. Segment changes and webhooks are written there
just after the Redis transaction commits (a crash in between loses those announcements,
never an event). What reads the profile tables with SQL does not see Redis profiles yet:
the abandoned-cart sweep, and consent decisions given under a cookie that later logged
in (the ledger follows only the SQL aliases).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import redis

from bespoke.features.build import Profile
from bespoke.features.collect import ingest
from bespoke.features.lake import Lake
from bespoke.features.schema import ConsentPurpose, EventIn, check_dataset_name, person_id_of
from bespoke.privacy.consent import ConsentLedger
from bespoke.privacy.gate import PersonGate
from bespoke.segments.live import Counters, LiveScorer
from bespoke.serving.db import Database
from bespoke.serving.store_parts import (
    ANONYMOUS,
    ATTRIBUTES,
    CONTROL_SCHEMA,
    EPOCH,
    FIELD,
    FLUSH_CHUNK,
    INBOX_FIELDS,
    INTERACTION_SET,
    KEEP_FLUSHED,
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
    rescored,
    screen,
    seed_cut,
    seeded_scores,
    to_micros,
)
from bespoke.serving.webhooks import Cart, enqueue_webhook
from bespoke.settings import REDIS_SCHEMES

MARKETING = ConsentPurpose.MARKETING
#: The set of datasets that have data in the store (for a flush or deletion of all).
DATASETS_KEY = "bespoke:datasets"
#: How long a flush holds a dataset's lock at most (a crashed flusher's lock expires).
FLUSH_LOCK_S = 900
#: Entries read per round trip when walking a dataset's inbox.
SCAN_CHUNK = 10_000
_KIND, _SUBJECT, _SENDER = FIELD["kind"], FIELD["subject"], FIELD["source_event_id"]
_ANON, _TS, _TYPE = FIELD["anonymous_id"], FIELD["timestamp"], FIELD["event_type"]
_ITEM, _VALUE, _CHANNEL = FIELD["item_id"], FIELD["value"], FIELD["channel"]
#: What an inbox entry holds besides the row: when it was received (µs).
_ROW = "row"


class RedisKeys:
    """The names of one dataset's keys (see the module docstring)."""

    #: What each kind of key holds, by the name after the dataset's prefix; the privacy
    #: registry handles each of these or declares it free of person data.
    PARTS = ("inbox", "flushed", "sent", "events", "last", "alias", "logins", "refused",
             "attributes", "identifiers", "scores", "counters", "sequence", "flush-lock",
             "carts")  # fmt: skip

    def __init__(self, dataset: str) -> None:
        self.dataset = dataset
        self.prefix = f"bespoke:{{{dataset}}}:"
        self.inbox = self.prefix + "inbox"
        self.flushed = self.prefix + "flushed"
        self.sequence = self.prefix + "sequence"
        self.refused = self.prefix + "refused"
        self.attributes = self.prefix + "attributes"
        self.identifiers = self.prefix + "identifiers"
        self.flush_lock = self.prefix + "flush-lock"
        #: Sorted set: ``<kind>:<subject>`` of each profile with an add-to-cart, scored by
        #: its latest (the abandoned-cart webhook's sweep reads a time range of it).
        self.carts = self.prefix + "carts"

    @staticmethod
    def cart_member(kind: str, subject: str) -> str:
        return f"{kind}:{subject}"

    def sent(self, source_event_id: str) -> str:
        return f"{self.prefix}sent:{source_event_id}"

    def events(self, kind: str, subject: str) -> str:
        return f"{self.prefix}events:{kind}:{subject}"

    def last(self, kind: str, subject: str) -> str:
        return f"{self.prefix}last:{kind}:{subject}"

    def alias(self, cookie: str) -> str:
        return f"{self.prefix}alias:{cookie}"

    def logins(self, user: str) -> str:
        return f"{self.prefix}logins:{user}"

    def scores(self, user: str) -> str:
        return f"{self.prefix}scores:{user}"

    def counters(self, user: str) -> str:
        return f"{self.prefix}counters:{user}"

    def pattern(self, part: str) -> str:
        """A SCAN pattern matching every key of ``part`` (dataset names hold no glob
        characters)."""
        return f"{self.prefix}{part}:*"

    @staticmethod
    def part(key: str) -> str | None:
        """What a key of the store holds (one of :data:`PARTS`); None for a key that is
        not the store's."""
        if not key.startswith("bespoke:{") or "}:" not in key:
            return None
        rest = key.split("}:", 1)[1]
        name = rest.split(":", 1)[0]
        return name if name in RedisKeys.PARTS else None


def _member(seq: int, event_type: str, item: str | None, value: float | None,
            channel: str | None) -> str:  # fmt: skip
    """A profile event as a sorted-set member: unique by its sequence number, which also
    orders events of the same time as they arrived."""
    return json.dumps([f"{seq:012x}", event_type, item, value, channel], separators=(",", ":"))


def _score(micros: int | None) -> float:
    return -math.inf if micros is None else float(micros)


def _event(member: str, score: float) -> tuple[str, str | None, float | None, int | None, str]:
    """(type, item, value, µs, channel) of a stored profile event."""
    _, event_type, item, value, channel = json.loads(member)
    return event_type, item, value, (None if math.isinf(score) else int(score)), channel


def _entry_number(entry_id: str) -> int:
    """An inbox entry's id (``<ms>-<n>``) as one increasing integer (ingestion's row)."""
    ms, _, n = entry_id.partition("-")
    return (int(ms) << 20) + int(n)


def _entry_order(entry_id: str) -> tuple[int, int]:
    ms, _, n = entry_id.partition("-")
    return int(ms), int(n)


def _float(value: str | None) -> float | None:
    return None if value is None or value == "" else float(value)


def _scores_of(found: dict[str, str]) -> dict[str, Any]:
    """A person's scores as :class:`ProfileView` and the rules read them."""
    if not found:
        return {}
    return {"segment": found.get("segment") or None,
            "segments": json.loads(found.get("segments") or "[]"),
            "churn_probability": _float(found.get("churn_probability")),
            "expected_value": _float(found.get("expected_value"))}  # fmt: skip


class RedisStore:
    """The online store in Redis at ``url``, the control plane in ``control``.

    ``key`` is the HMAC key of the pseudonyms (as for SQLite); ``recent_events`` caps
    the events kept per profile. Opening one connects to nothing.
    """

    def __init__(
        self, url: str, key: bytes, *, control: Database, recent_events: int = RECENT_EVENTS
    ) -> None:
        if not url.startswith(REDIS_SCHEMES):
            raise ValueError(
                f"BESPOKE_ONLINE_STORE_URL={url!r} is not a Redis URL "
                f"(expected {', '.join(s + '…' for s in REDIS_SCHEMES)})"
            )
        if recent_events < 1:
            raise ValueError(f"recent_events must be at least 1, got {recent_events}")
        self.url = url
        self.control = control
        self._key = key
        self.recent_events = recent_events
        self._client: redis.Redis | None = None

    def __repr__(self) -> str:
        return f"RedisStore({self.url!r}, control={self.control!r})"

    @property
    def client(self) -> redis.Redis:
        """The connection pool (created on first use; a forked child opens its own)."""
        if self._client is None:
            self._client = redis.Redis.from_url(self.url, decode_responses=True)
        return self._client

    def database(self) -> Database:
        """The control database, its tables created (webhook outbox, segment changes;
        the ledgers create theirs)."""
        self.control.ensure("online-control", CONTROL_SCHEMA)
        return self.control

    def gate(self) -> PersonGate:
        """The consent ledger and suppression list, in the control database."""
        return PersonGate(self.database(), self._key)

    def datasets(self) -> list[str]:
        """The datasets that have data in the store."""
        return sorted(self.client.smembers(DATASETS_KEY))

    # --- live events ---------------------------------------------------------------------

    def screen(
        self, events: Sequence[EventIn], dataset: str
    ) -> tuple[list[EventIn], list[ItemError]]:
        """As :meth:`SQLiteStore.screen <bespoke.serving.store.SQLiteStore.screen>`."""
        return screen(self.gate(), events, dataset)

    def accept_events(
        self,
        events: Sequence[EventIn],
        dataset: str,
        *,
        now: datetime | None = None,
        scorer: LiveScorer | None = None,
    ) -> AcceptResult:
        """As :meth:`SQLiteStore.accept_events <bespoke.serving.store.SQLiteStore.
        accept_events>`, in one Redis transaction (see the module docstring)."""
        received = to_micros(now or datetime.now(UTC))
        good, errors = self.screen(events, dataset)
        rows = [inbox_row(self._key, event) for event in good]
        batch = _Batch()
        if rows:
            keys = RedisKeys(dataset)
            # numbers for the batch's profile events, taken once (a retried transaction
            # reuses them; numbers left unused are harmless gaps)
            first = int(self.client.incrby(keys.sequence, len(rows))) - len(rows)
            active = scorer if scorer is not None and scorer.active else None
            with self.client.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        batch = self._apply(pipe, keys, rows, received, first, active)
                        pipe.execute()
                        break
                    except redis.WatchError:
                        continue  # another writer touched the same people: again
            if linked := [m for m in batch.merges if m.status == "merged"]:
                # the consent ledger follows logins through the control database
                with self.database().write() as con:
                    con.executemany(
                        "INSERT OR IGNORE INTO aliases (dataset, anonymous_id, user_id, "
                        "linked_at) VALUES (?, ?, ?, ?)",
                        [(dataset, m.anonymous_id, m.user_id, received) for m in linked],
                    )
            if batch.changes or batch.webhooks:
                with self.database().write() as con:
                    con.executemany(
                        "INSERT INTO segment_changes (dataset, user_id, from_segment, "
                        "to_segment, at, recorded_at) VALUES (?, ?, ?, ?, ?, ?)",
                        [(dataset, c.user_id, c.from_segment, c.to_segment, to_micros(c.at),
                          received) for c in batch.changes],
                    )  # fmt: skip
                    for topic, payload in batch.webhooks:
                        enqueue_webhook(con, dataset, topic, payload, received)
        return AcceptResult(
            accepted=len(rows),
            rejected=len(errors),
            duplicates=batch.duplicates,
            errors=errors,
            merges=batch.merges,
            segment_changes=batch.changes,
        )

    def _apply(
        self,
        pipe: Any,
        keys: RedisKeys,
        rows: list[tuple[Any, ...]],
        received: int,
        first: int,
        scorer: LiveScorer | None,
    ) -> _Batch:
        """Watch and read what the batch depends on, then queue its writes (``MULTI``);
        the caller's ``EXEC`` applies them all, or none when a watched key moved."""
        batch = _Batch()
        senders = list(dict.fromkeys(r[_SENDER] for r in rows if r[_SENDER] is not None))
        cookies = sorted({r[_ANON] for r in rows if r[_KIND] == USER and r[_ANON] is not None}
                         | {r[_SUBJECT] for r in rows if r[_KIND] == ANONYMOUS})  # fmt: skip
        watched = [keys.sent(s) for s in senders] + [keys.alias(c) for c in cookies]
        if watched:
            pipe.watch(*watched)
        held = set()
        if senders:
            found = pipe.mget([keys.sent(s) for s in senders])
            held = {s for s, v in zip(senders, found, strict=True) if v is not None}
        kept = []
        for row in rows:  # duplicates of held ids, or earlier in the batch, apply once
            sender = row[_SENDER]
            if sender is not None:
                if sender in held:
                    continue
                held.add(sender)
            kept.append(row)
        batch.duplicates = len(rows) - len(kept)
        if not kept:
            pipe.multi()
            return batch
        owners: dict[str, str | None] = {}
        if cookies:
            owners = dict(zip(cookies, pipe.mget([keys.alias(c) for c in cookies]), strict=True))
        merges: dict[str, Merge] = {}
        joining: list[tuple[str, str]] = []
        refusals: list[dict[str, Any]] = []
        for row in kept:
            cookie = row[_ANON]
            if row[_KIND] != USER or cookie is None or cookie in merges:
                continue
            user, owner = row[_SUBJECT], owners.get(cookie)
            if owner is None:
                joining.append((cookie, user))
                owners[cookie] = user
                merges[cookie] = Merge(anonymous_id=cookie, user_id=user, status="merged")
            elif owner == user:
                merges[cookie] = Merge(anonymous_id=cookie, user_id=user, status="already")
            else:
                reason = f"anonymous id {cookie} already belongs to user {owner}"
                refusals.append({"anonymous_id": cookie, "user_id": user,
                                 "refused_at": received, "reason": reason})  # fmt: skip
                merges[cookie] = Merge(
                    anonymous_id=cookie, user_id=user, status="refused", reason=reason
                )
        kept = [as_user(r, owners[r[_SUBJECT]])  # type: ignore[arg-type]
                if r[_KIND] == ANONYMOUS and owners.get(r[_SUBJECT]) else r
                for r in kept]  # fmt: skip
        people = {(r[_KIND], r[_SUBJECT]) for r in kept}
        people |= {(USER, user) for _, user in joining}
        users = sorted({s for k, s in people if k == USER}) if scorer is not None else []
        second = [keys.last(k, s) for k, s in sorted(people)]
        second += [keys.last(ANONYMOUS, c) for c, _ in joining]
        second += [keys.events(ANONYMOUS, c) for c, _ in joining]
        second += [keys.counters(u) for u in users] + [keys.scores(u) for u in users]
        pipe.watch(*second)
        reader = self.client.pipeline(transaction=False)
        for kind, subject in sorted(people):
            reader.hgetall(keys.last(kind, subject))
        for cookie, _ in joining:
            reader.hgetall(keys.last(ANONYMOUS, cookie))
            reader.zcard(keys.events(ANONYMOUS, cookie))
        for user in users:
            reader.get(keys.counters(user))
            reader.hgetall(keys.scores(user))
        found = iter(reader.execute())
        last = {who: {t: int(at) for t, at in next(found).items()} for who in sorted(people)}
        for cookie, user in joining:
            theirs, moved = next(found), next(found)
            mine = last[(USER, user)]
            for event_type, at in theirs.items():
                mine[event_type] = max(mine.get(event_type, int(at)), int(at))
            # the user's version moves (an identify time): no cached answer outlives it
            mine["identify"] = max(mine.get("identify", received), received)
            merges[cookie].events_moved = int(moved)
        counters_read = {}
        scores_read = {}
        for user in users:
            counters_read[user] = next(found)
            scores_read[user] = next(found)
        by_person: dict[tuple[str, str], list[tuple[Any, ...]]] = defaultdict(list)
        for row in kept:
            who = (row[_KIND], row[_SUBJECT])
            by_person[who].append(row)
            mine = last[who]
            if row[_TS] is not None:
                mine[row[_TYPE]] = max(mine.get(row[_TYPE], row[_TS]), row[_TS])
        written_scores: dict[str, dict[str, str]] = {}
        written_counters: dict[str, str] = {}
        if scorer is not None:
            counted = count_events(
                kept, received, scorer, lambda u: Counters.from_json(counters_read[u])
            )
            for user, (counters, at) in counted.items():
                written_counters[user] = counters.to_json()
                scores = scorer.score(counters, at)
                before = scores_read[user]
                earlier = (
                    (before.get("segment") or None, _float(before.get("churn_probability")))
                    if before
                    else None
                )
                new = {name: repr(value) if isinstance(value, float) else value
                       for name, value in (("segment", scores.segment),
                                           ("churn_probability", scores.churn_probability),
                                           ("expected_value", scores.expected_value))
                       if value is not None}  # fmt: skip
                if "segments" not in before:
                    new["segments"] = "[]"
                written_scores[user] = new
                outcome = rescored(keys.dataset, user, scores, earlier, at, scorer,
                                   lambda u=user: self._allows_marketing(keys.dataset, u))  # fmt: skip
                if outcome.change is not None:
                    batch.changes.append(outcome.change)
                batch.webhooks += outcome.webhooks
        # --- every write, in one transaction -------------------------------------------
        pipe.multi()
        pipe.sadd(DATASETS_KEY, keys.dataset)
        for cookie, user in joining:
            pipe.zunionstore(keys.events(USER, user),
                             [keys.events(USER, user), keys.events(ANONYMOUS, cookie)])  # fmt: skip
            pipe.delete(keys.events(ANONYMOUS, cookie), keys.last(ANONYMOUS, cookie))
            pipe.set(keys.alias(cookie), user)
            pipe.hset(keys.logins(user), cookie, received)
        for refusal in refusals:
            pipe.rpush(keys.refused, json.dumps(refusal))
        for row in kept:
            pipe.xadd(keys.inbox, {_ROW: json.dumps([received, *row])})
            if row[_SENDER] is not None:
                pipe.set(keys.sent(row[_SENDER]), received)
        seq = first
        for (kind, subject), mine in by_person.items():
            members = {}
            for row in mine:
                seq += 1
                member = _member(seq, row[_TYPE], row[_ITEM], row[_VALUE], row[_CHANNEL])
                members[member] = _score(row[_TS])
            pipe.zadd(keys.events(kind, subject), members)
        for (kind, subject), times in last.items():
            if times:
                pipe.hset(keys.last(kind, subject), mapping=times)
            if "add_to_cart" in times:
                pipe.zadd(keys.carts, {RedisKeys.cart_member(kind, subject): times["add_to_cart"]})
        for cookie, _ in joining:  # the visitor's cart is their user's now
            pipe.zrem(keys.carts, RedisKeys.cart_member(ANONYMOUS, cookie))
        for kind, subject in people:
            pipe.zremrangebyrank(keys.events(kind, subject), 0, -self.recent_events - 1)
        for user, data in written_counters.items():
            pipe.set(keys.counters(user), data)
        for user, fields in written_scores.items():
            if fields:
                pipe.hset(keys.scores(user), mapping=fields)
        batch.merges = list(merges.values())
        return batch

    def abandoned_carts(self, oldest: int, now: int, cutoff: int) -> list[Cart]:
        """The carts last added to between ``oldest`` and ``cutoff`` (microseconds), with
        the last purchase and what was added since: the ``cart_abandoned`` sweep's finder
        (:func:`bespoke.serving.webhooks.queue_abandoned_carts`)."""
        carts = []
        for dataset in self.datasets():
            keys = RedisKeys(dataset)
            for member, added in self.client.zrangebyscore(
                keys.carts, oldest, min(cutoff, now), withscores=True
            ):
                kind, subject = member.split(":", 1)
                last = self.client.hget(keys.last(kind, subject), "purchase")
                bought = None if last is None else int(last)
                since = f"({bought}" if bought is not None else "-inf"
                items = [
                    (item, value)
                    for event_type, item, value, _, _ in (
                        _event(m, score) for m, score in self.client.zrangebyscore(
                            keys.events(kind, subject), since, "+inf", withscores=True)
                    )
                    if event_type == "add_to_cart"
                ]  # fmt: skip
                carts.append(Cart(dataset, kind, subject, int(added), bought, items))
        return carts

    def _allows_marketing(self, dataset: str, user: str) -> bool | None:
        with self.database().read() as con:
            return ConsentLedger.allows_in(con, dataset, MARKETING, user_id=user)

    # --- reading profiles ----------------------------------------------------------------

    def _who(self, keys: RedisKeys, user_id: str, anonymous: bool) -> tuple[str, str, str | None]:
        """(kind, subject, merged_into) of a request's person: an anonymous id that logged
        in is its user's."""
        if not anonymous:
            return USER, user_id, None
        owner = self.client.get(keys.alias(user_id))
        return (USER, owner, owner) if owner else (ANONYMOUS, user_id, None)

    def _read(self, dataset: str, user_id: str, anonymous: bool, *, full: bool) -> dict[str, Any]:
        """One consistent read (``MULTI``) of a person's profile keys."""
        keys = RedisKeys(dataset)
        kind, subject, merged_into = self._who(keys, user_id, anonymous)
        pipe = self.client.pipeline(transaction=True)
        pipe.zrange(keys.events(kind, subject), 0, -1, withscores=True)
        pipe.hgetall(keys.last(kind, subject))
        if kind == USER:
            pipe.hget(keys.attributes, subject)
            pipe.hgetall(keys.scores(subject))
            if full:
                pipe.hget(keys.identifiers, subject)
                pipe.hgetall(keys.logins(subject))
        found = pipe.execute()
        events = [_event(m, s) for m, s in found[0]]
        read = {"kind": kind, "subject": subject, "merged_into": merged_into, "events": events,
                "last": {t: int(at) for t, at in found[1].items()}, "attributes": {},
                "scores": {}, "identifiers": [], "logins": {}}  # fmt: skip
        if kind == USER:
            read["attributes"] = json.loads(found[2]) if found[2] else {}
            read["scores"] = _scores_of(found[3])
            if full:
                read["identifiers"] = json.loads(found[4]) if found[4] else []
                read["logins"] = {c: int(at) for c, at in found[5].items()}
        return read

    def profile(self, user_id: str, dataset: str, *, anonymous: bool = False) -> ProfileView:
        """As :meth:`SQLiteStore.profile <bespoke.serving.store.SQLiteStore.profile>`."""
        read = self._read(dataset, user_id, anonymous, full=True)
        kind, subject = read["kind"], read["subject"]
        events = read["events"][::-1][: self.recent_events]  # newest first
        last = read["last"]
        known = [tuple(i) for i in read["identifiers"]]
        known += [("anonymous_id", cookie, None, at, None)
                  for cookie, at in sorted(read["logins"].items())]  # fmt: skip
        times = [e[3] for e in events if e[3] is not None] + list(last.values())
        times += [t for *_, first, last_at in known for t in (first, last_at) if t is not None]
        identifiers = [{"type": "user_id" if kind == USER else "anonymous_id", "id": subject}]
        listed = {(identifiers[0]["type"], subject)}
        for kind_of, value, channel, *_ in known:  # the lake's graph first, then live logins
            if (kind_of, value) not in listed:
                listed.add((kind_of, value))
                identifiers.append(
                    {"type": kind_of, "id": value, **({"channel": channel} if channel else {})}
                )
        channels: dict[str, int] = defaultdict(int)
        for *_, channel in read["events"]:
            channels[channel or "unknown"] += 1
        return ProfileView(
            user_id=user_id,
            dataset=dataset,
            anonymous=anonymous,
            known=bool(read["attributes"] or events or last),
            person_id=person_id_of(*identifiers[0].values()),
            merged_into=read["merged_into"],
            identifiers=identifiers,
            channels=dict(sorted(channels.items())),
            first_seen=from_micros(min(times)) if times else None,
            last_seen=from_micros(max(times)) if times else None,
            attributes=read["attributes"],
            **read["scores"],
            recent=[
                RecentEvent(event_type=t, item_id=i, value=v, timestamp=from_micros(ts))
                for t, i, v, ts, _ in events
            ],
            last_event_at={t: EPOCH + at * MICROSECOND for t, at in sorted(last.items())},
        )

    @staticmethod
    def _ranker_profile(
        user_id: str, events: Iterable[tuple[Any, ...]], attributes: dict[str, Any],
        scores: dict[str, Any],
    ) -> Profile:  # fmt: skip
        interactions = [e for e in events if e[1] is not None and e[0] in INTERACTION_SET]
        micros = np.array(
            [np.iinfo(np.int64).min if e[3] is None else e[3] for e in interactions],
            dtype=np.int64,
        )
        return Profile(
            user_id=user_id,
            attributes=attributes,
            items=[e[1] for e in interactions],
            values=np.array([1.0 if e[2] is None else e[2] for e in interactions], np.float64),
            timestamps=micros.view("datetime64[us]"),  # int64 minimum is NaT
            scores=scores,
        )

    def as_profile(self, user_id: str, dataset: str, *, anonymous: bool = False) -> Profile:
        """As :meth:`SQLiteStore.as_profile <bespoke.serving.store.SQLiteStore.as_profile>`."""
        read = self._read(dataset, user_id, anonymous, full=False)
        return self._ranker_profile(user_id, read["events"], read["attributes"], {})

    def version(self, user_id: str, dataset: str, *, anonymous: bool = False) -> str | None:
        """The profile's latest event time, as a string: every new event changes it."""
        keys = RedisKeys(dataset)
        kind, subject, _ = self._who(keys, user_id, anonymous)
        times = self.client.hvals(keys.last(kind, subject))
        return max(times, key=int) if times else None

    def snapshot(self, user_id: str, dataset: str, *, anonymous: bool = False) -> Snapshot:
        """As :meth:`SQLiteStore.snapshot <bespoke.serving.store.SQLiteStore.snapshot>`."""
        read = self._read(dataset, user_id, anonymous, full=False)
        events = read["events"]
        profile = self._ranker_profile(user_id, events, read["attributes"], read["scores"])
        rows = [(t, i, v, ts) for t, i, v, ts, _ in events[-self.recent_events :]]
        latest = max(read["last"].values()) if read["last"] else None
        return Snapshot(profile, RecentEvents(rows), None if latest is None else str(latest))

    # --- loading from the lake -----------------------------------------------------------

    def load_attributes(self, lake: Lake, dataset: str) -> int:
        """Replace the dataset's user attributes with the lake's latest (``users`` view)."""
        check_dataset_name(dataset)
        keys = RedisKeys(dataset)
        query = f"SELECT user_id, {', '.join(ATTRIBUTES)} FROM users WHERE dataset = ?"
        rows = lake.connect().execute(query, [dataset]).fetchall()
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(keys.attributes)
        for part in _chunks(rows, SCAN_CHUNK):
            pipe.hset(keys.attributes, mapping={
                row[0]: json.dumps(dict(zip(ATTRIBUTES, row[1:], strict=True))) for row in part
            })  # fmt: skip
        pipe.sadd(DATASETS_KEY, dataset)
        pipe.execute()
        return len(rows)

    def seed_history(
        self,
        lake: Lake,
        dataset: str,
        as_of: datetime | str | None = None,
        per_user: int | None = None,
        scorer: LiveScorer | None = None,
    ) -> int:
        """As :meth:`SQLiteStore.seed_history <bespoke.serving.store.SQLiteStore.
        seed_history>`: the dataset's profiles rebuilt from the lake plus the inbox's
        events not flushed yet, scores and counters replaced, in one transaction (events
        accepted while the lake is read may be left out of a profile until the next
        seeding: seed before traffic)."""
        check_dataset_name(dataset)
        per_user = per_user or self.recent_events
        cut = seed_cut(as_of)
        recent, latest, aliases = lake_history(lake, dataset, cut, per_user)
        identifiers = lake_identifiers(lake, dataset)
        counters, people = seeded_scores(lake, dataset, cut, scorer)
        now = to_micros(datetime.now(UTC))
        keys = RedisKeys(dataset)
        client = self.client
        owners = {}
        cookies = sorted({cookie for cookie, _ in aliases})
        for part in _chunks(cookies, SCAN_CHUNK):
            owners.update(zip(part, client.mget([keys.alias(c) for c in part]), strict=True))
        new_aliases = {cookie: user for cookie, user in aliases if owners.get(cookie) is None}
        owners = {c: u for c, u in owners.items() if u is not None} | new_aliases
        pending = [row for _, row in self.inbox(keys.dataset, after=client.get(keys.flushed))]
        events: dict[tuple[str, str], list[tuple[Any, ...]]] = defaultdict(list)
        last: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
        for kind, subject, ts, event_type, item, value, channel in recent:
            events[(kind, subject)].append((ts, event_type, item, value, channel))
        for kind, subject, event_type, at in latest:
            last[(kind, subject)][event_type] = at
        for _, *row in pending:
            if row[_KIND] == ANONYMOUS and owners.get(row[_SUBJECT]):
                row = list(as_user(tuple(row), owners[row[_SUBJECT]]))
            who = (row[_KIND], row[_SUBJECT])
            events[who].append((row[_TS], row[_TYPE], row[_ITEM], row[_VALUE], row[_CHANNEL]))
            if row[_TS] is not None:
                mine = last[who]
                mine[row[_TYPE]] = max(mine.get(row[_TYPE], row[_TS]), row[_TS])
        total = sum(len(e) for e in events.values())
        seq = int(client.incrby(keys.sequence, max(total, 1))) - max(total, 1)
        old = [k for part in ("events", "last", "scores", "counters")
               for k in client.scan_iter(match=keys.pattern(part), count=1000)]  # fmt: skip
        pipe = client.pipeline(transaction=True)
        for part in _chunks(old, 1000):
            pipe.unlink(*part)
        pipe.delete(keys.identifiers)
        for who, mine in events.items():
            members = {}
            for ts, event_type, item, value, channel in mine:
                seq += 1
                members[_member(seq, event_type, item, value, channel)] = _score(ts)
            pipe.zadd(keys.events(*who), members)
            pipe.zremrangebyrank(keys.events(*who), 0, -self.recent_events - 1)
        for who, times in last.items():
            pipe.hset(keys.last(*who), mapping=times)
        for cookie, user in new_aliases.items():
            pipe.set(keys.alias(cookie), user)
            pipe.hsetnx(keys.logins(user), cookie, now)
        for person, segment, rules, live in people:
            fields = {"segments": json.dumps(rules)}
            if segment is not None:
                fields["segment"] = segment
            if live is not None and live.churn_probability is not None:
                fields["churn_probability"] = repr(live.churn_probability)
            if live is not None and live.expected_value is not None:
                fields["expected_value"] = repr(live.expected_value)
            pipe.hset(keys.scores(person), mapping=fields)
        for person, kept in counters.items():
            pipe.set(keys.counters(person), kept.to_json())
        grouped: dict[str, list[list[Any]]] = defaultdict(list)
        for user, *identifier in identifiers:
            grouped[user].append(identifier)
        for part in _chunks(list(grouped.items()), SCAN_CHUNK):
            pipe.hset(keys.identifiers, mapping={u: json.dumps(i) for u, i in part})
        pipe.sadd(DATASETS_KEY, dataset)
        pipe.execute()
        return len(recent)

    # --- to the lake ---------------------------------------------------------------------

    def inbox(
        self, dataset: str, *, after: str | None = None, until: str = "+"
    ) -> Iterator[tuple[str, list[Any]]]:
        """The dataset's inbox entries after the id ``after`` (all when None) up to
        ``until``, as (entry id, [received µs, *inbox row]), oldest first."""
        keys = RedisKeys(dataset)
        start = "-" if after is None else f"({after}"
        while entries := self.client.xrange(keys.inbox, start, until, count=SCAN_CHUNK):
            for entry_id, fields in entries:
                yield entry_id, json.loads(fields[_ROW])
            start = f"({entries[-1][0]}"

    def pending(self, dataset: str | None = None) -> int:
        """How many inbox events are not in the lake yet."""
        total = 0
        for name in [dataset] if dataset is not None else self.datasets():
            keys = RedisKeys(name)
            total += sum(1 for _ in self.inbox(keys.dataset, after=self.client.get(keys.flushed)))
        return total

    def flush(
        self,
        lake: Lake,
        *,
        dataset: str | None = None,
        chunk: int = FLUSH_CHUNK,
        keep_flushed: timedelta = KEEP_FLUSHED,
    ) -> FlushResult:
        """As :meth:`SQLiteStore.flush <bespoke.serving.store.SQLiteStore.flush>`: each
        chunk of pending entries goes through ingestion as one run and the watermark moves
        past it only once the run is written (a crash in between re-sends the chunk,
        which the lake's content-hash ids turn into "already present"). One flush of a
        dataset at a time across every host (a lock in Redis, expiring after
        :data:`FLUSH_LOCK_S` should its holder die)."""
        if dataset is not None:
            check_dataset_name(dataset)
        result = FlushResult()
        fields = [i for i, c in enumerate(INBOX_FIELDS) if c not in ("kind", "subject")]
        for name in [dataset] if dataset is not None else self.datasets():
            keys = RedisKeys(name)
            with self.client.lock(keys.flush_lock, timeout=FLUSH_LOCK_S):
                while True:
                    watermark = self.client.get(keys.flushed)
                    part = []
                    for entry_id, row in self.inbox(keys.dataset, after=watermark):
                        part.append((entry_id, row))
                        if len(part) >= chunk:
                            break
                    if not part:
                        break
                    batch = inbox_batch(name, [(_entry_number(entry_id), *[row[1 + i] for i in fields])
                                               for entry_id, row in part])  # fmt: skip
                    run = ingest(batch, lake, self._key, gate=self.gate())
                    self.client.set(keys.flushed, part[-1][0])
                    result.add(name, len(part), run.manifest, run.run_id)
                self._drop_flushed(keys, to_micros(datetime.now(UTC) - keep_flushed))
        return result

    def _drop_flushed(self, keys: RedisKeys, cutoff: int) -> None:
        """Drop the entries in the lake received before ``cutoff`` (µs), with their
        sender ids (entries are in arrival order: the walk stops at the first newer)."""
        watermark = self.client.get(keys.flushed)
        if watermark is None:
            return
        old, senders = [], []
        for entry_id, row in self.inbox(keys.dataset, until=watermark):
            if row[0] >= cutoff:
                break
            old.append(entry_id)
            if row[1 + _SENDER] is not None:
                senders.append(keys.sent(row[1 + _SENDER]))
        pipe = self.client.pipeline(transaction=True)
        for part in _chunks(old, SCAN_CHUNK):
            pipe.xdel(keys.inbox, *part)
        for part in _chunks(senders, SCAN_CHUNK):
            pipe.delete(*part)
        pipe.execute()

    # --- deletion ------------------------------------------------------------------------

    def delete_user(
        self, user_id: str, dataset: str | None = None, *, anonymous: bool = False
    ) -> dict[str, int]:
        """Remove a person's profile and inbox entries (of one dataset, or every one);
        returns what was removed per kind of data, named as SQLite's tables."""
        kind = ANONYMOUS if anonymous else USER
        removed = dict.fromkeys(("inbox", "profile_events", "last_events", "profiles"), 0)
        if not anonymous:
            removed["attributes"] = 0
        for name in [dataset] if dataset is not None else self.datasets():
            keys = RedisKeys(name)
            mine = [(entry_id, row) for entry_id, row in self.inbox(keys.dataset)
                    if row[1 + _KIND] == kind and row[1 + _SUBJECT] == user_id]  # fmt: skip
            reader = self.client.pipeline(transaction=True)
            reader.zcard(keys.events(kind, user_id))
            reader.hlen(keys.last(kind, user_id))
            if not anonymous:
                reader.hexists(keys.attributes, user_id)
            counts = reader.execute()
            pipe = self.client.pipeline(transaction=True)
            if mine:
                pipe.xdel(keys.inbox, *[entry_id for entry_id, _ in mine])
                senders = [keys.sent(row[1 + _SENDER]) for _, row in mine
                           if row[1 + _SENDER] is not None]  # fmt: skip
                if senders:
                    pipe.delete(*senders)
            pipe.delete(keys.events(kind, user_id), keys.last(kind, user_id))
            pipe.zrem(keys.carts, RedisKeys.cart_member(kind, user_id))
            if not anonymous:
                pipe.hdel(keys.attributes, user_id)
            pipe.execute()
            removed["inbox"] += len(mine)
            removed["profile_events"] += int(counts[0])
            removed["last_events"] += int(counts[1])
            removed["profiles"] += int(bool(counts[0] or counts[1]))
            if not anonymous:
                removed["attributes"] += int(counts[2])
        return removed


class _Batch:
    """What applying one accept batch gave (filled by :meth:`RedisStore._apply`)."""

    def __init__(self) -> None:
        self.duplicates = 0
        self.merges: list[Merge] = []
        self.changes: list[SegmentChange] = []
        self.webhooks: list[tuple[str, dict[str, Any]]] = []


def _chunks(values: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]
