"""The online profile store and durable event inbox — one contract, run against the
embedded SQLite store (WAL) and the shared Redis store (a real private redis-server):
consent gate and pseudonyms as at ingestion, one transaction per request, profiles that
show an event at once, several writer processes, and a flush to the lake that is safe to
repeat. SQLite's own properties (WAL, fsync, fork, a failing trigger) and Redis's (two
stores on one server as two replicas, no raw PII in any key or value) are tested apart.

A request that fails validation (pydantic, before the store; HTTP 422) applies nothing.
Inside a valid request, events without the ``personalization`` consent purpose (or with an
e-mail address for an id) are *rejected one by one* with their position and reason, and
the rest is accepted: the request is not failed as a whole, since those events could
never be stored and re-sending the others must not be needed. Any failure while storing
leaves nothing of the request behind.
"""

from __future__ import annotations

import multiprocessing
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import redis
from typer.testing import CliRunner

from bespoke.cli import app
from bespoke.features import collect, privacy, sources
from bespoke.features.build import Histories
from bespoke.features.lake import Lake
from bespoke.features.parse import IngestError
from bespoke.features.schema import EventIn
from bespoke.serving.db import Database
from bespoke.serving.redis_store import RedisKeys, RedisStore
from bespoke.serving.store import (
    MAX_BATCH,
    RECENT_EVENTS,
    SQLiteStore,
    flush_every,
    open_store,
)
from bespoke.serving.store_parts import INBOX_FIELDS
from bespoke.settings import Settings, get_settings

BASE = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
EMAIL = "Grace.Hopper@Navy.example"
PHONE = "+1 (202) 555-0147"
IP = "198.51.100.77"
Store = SQLiteStore | RedisStore


def event(n: int = 0, **fields: Any) -> EventIn:
    """A valid, consented event ``n`` minutes after BASE; ``fields`` override."""
    values: dict[str, Any] = {
        "user_id": "u1",
        "event_type": "view",
        "item_id": f"i{n}",
        "timestamp": BASE + timedelta(minutes=n),
        "consent": ["personalization"],
    }
    return EventIn.model_validate(values | fields)


def url_of(folder: Path) -> str:
    return f"sqlite:///{folder / 'online.db'}"


def open_backend(
    spec: tuple[str, str, str], key: bytes, recent_events: int = RECENT_EVENTS
) -> Store:
    """A store of the backend ``spec`` names — (``sqlite``|``redis``, URL, control file) —
    as another worker or replica would open it (a spawned process gets the spec)."""
    backend, url, control = spec
    if backend == "sqlite":
        return SQLiteStore(url, key, recent_events=recent_events)
    return RedisStore(url, key, control=Database(control), recent_events=recent_events)


@pytest.fixture(params=["sqlite", "redis"])
def spec(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str, str]:
    control = str(tmp_path / "control.db")
    if request.param == "sqlite":
        return ("sqlite", url_of(tmp_path), control)
    return ("redis", request.getfixturevalue("empty_redis"), control)


@pytest.fixture
def store(spec: tuple[str, str, str], key: bytes) -> Store:
    return open_backend(spec, key)


@pytest.fixture
def sqlite_store(tmp_path: Path, key: bytes) -> SQLiteStore:
    return SQLiteStore(url_of(tmp_path), key)


def _count(store: SQLiteStore, sql: str, *params: Any) -> int:
    with sqlite3.connect(store.path) as con:
        return con.execute(sql, params).fetchone()[0]


def _file_bytes(store: Store) -> bytes:
    """Everything SQLite keeps on disk for the store: the file, its WAL and shared memory."""
    parts = [store.path, *(store.path.with_name(store.path.name + s) for s in ("-wal", "-shm"))]
    return b"".join(p.read_bytes() for p in parts if p.exists())


def _redis_text(store: RedisStore) -> bytes:
    """Every key of the Redis store and everything it holds, read by type (SCAN): what
    a dump of the server would show (DUMP's own format may compress a value)."""
    client = redis.Redis.from_url(store.url)
    out = []
    for name in client.scan_iter(count=1000):
        kind = client.type(name)
        if kind == b"string":
            values: Any = [client.get(name)]
        elif kind == b"hash":
            values = [b for pair in client.hgetall(name).items() for b in pair]
        elif kind == b"list":
            values = client.lrange(name, 0, -1)
        elif kind == b"set":
            values = list(client.smembers(name))
        elif kind == b"zset":
            values = client.zrange(name, 0, -1)
        elif kind == b"stream":
            values = [b for _, fields in client.xrange(name) for p in fields.items() for b in p]
        else:
            raise AssertionError(f"{name!r}: a key of type {kind!r} this scan cannot read")
        out += [name, *values]
    return b"\n".join(out)


def stored_bytes(store: Store) -> bytes:
    return _file_bytes(store) if isinstance(store, SQLiteStore) else _redis_text(store)


def inbox_rows(store: Store) -> list[dict[str, Any]]:
    """Every inbox row (every dataset) as a mapping of :data:`INBOX_FIELDS`."""
    if isinstance(store, SQLiteStore):
        with sqlite3.connect(store.path) as con:
            rows = con.execute(f"SELECT {', '.join(INBOX_FIELDS)} FROM inbox ORDER BY seq")
            return [dict(zip(INBOX_FIELDS, r, strict=True)) for r in rows]
    return [dict(zip(INBOX_FIELDS, row[1:], strict=True))
            for name in store.datasets() for _, row in store.inbox(name)]  # fmt: skip


def profile_event_count(store: Store) -> int:
    if isinstance(store, SQLiteStore):
        return _count(store, "SELECT count(*) FROM profile_events")
    client = store.client
    return sum(client.zcard(k) for name in store.datasets()
               for k in client.scan_iter(match=RedisKeys(name).pattern("events")))  # fmt: skip


def forget_watermarks(store: Store) -> None:
    """The state a crash right after a lake write leaves: rows written, watermark not moved."""
    if isinstance(store, SQLiteStore):
        with sqlite3.connect(store.path) as con:
            con.execute("DELETE FROM flushed")
    else:
        store.client.delete(*[RedisKeys(name).flushed for name in store.datasets()])


# --- the file --------------------------------------------------------------------------------


def test_opening_a_store_creates_nothing(tmp_path: Path, key: bytes) -> None:
    SQLiteStore(url_of(tmp_path / "state"), key)
    assert not (tmp_path / "state").exists()


def test_the_file_is_in_wal_mode_and_commits_are_fsynced(sqlite_store: Store) -> None:
    store = sqlite_store
    store.accept_events([event()], "shop")
    with sqlite3.connect(store.path) as other:  # WAL is a property of the file
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con = store.db.connection()
    assert con.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert con.execute("PRAGMA busy_timeout").fetchone()[0] >= 1000
    assert store.path.with_name("online.db-wal").exists()


def test_the_store_url_is_a_setting_with_a_default_under_home(
    isolated_settings: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert get_settings().online_store_url == f"sqlite:///{isolated_settings / 'online.db'}"
    monkeypatch.setenv("BESPOKE_ONLINE_STORE_URL", "sqlite:///relative/profiles.db")
    assert Settings(_env_file=None).online_store_url == (
        f"sqlite:///{tmp_path / 'relative' / 'profiles.db'}"
    )
    store = open_store(Settings(_env_file=None))
    assert isinstance(store, SQLiteStore)
    assert store.path == tmp_path / "relative" / "profiles.db"
    assert get_settings().control_store_url == get_settings().online_store_url  # one file
    # Redis: the control plane in a SQLite file of its own; opening connects to nothing
    monkeypatch.setenv("BESPOKE_ONLINE_STORE_URL", "redis://127.0.0.1:1/0")
    settings = Settings(_env_file=None)
    assert settings.control_store_url == f"sqlite:///{isolated_settings / 'online.db'}"
    store = open_store(settings)
    assert isinstance(store, RedisStore) and store.url == "redis://127.0.0.1:1/0"
    assert store.control.path == isolated_settings / "online.db"
    monkeypatch.setenv("BESPOKE_CONTROL_STORE_URL", "sqlite:///control/plane.db")
    assert open_store(Settings(_env_file=None)).control.path == tmp_path / "control" / "plane.db"
    for name, value in (
        ("BESPOKE_ONLINE_STORE_URL", "memcached://localhost:11211"),
        ("BESPOKE_CONTROL_STORE_URL", "redis://localhost:6379/1"),
    ):
        monkeypatch.setenv(name, value)
        with pytest.raises(ValueError, match=name):
            Settings(_env_file=None)
        monkeypatch.delenv(name)
    # beside the SQLite store, a control store other than its own file would split the state
    monkeypatch.setenv("BESPOKE_CONTROL_STORE_URL", "sqlite:///elsewhere.db")
    with pytest.raises(ValueError, match=r"BESPOKE_CONTROL_STORE_URL.*own file"):
        Settings(_env_file=None)


# --- accepting events ------------------------------------------------------------------------


def test_rejected_items_are_reported_one_by_one_and_the_rest_is_accepted(store: Store) -> None:
    events = [
        event(0),
        event(1, consent=["analytics"]),
        event(2),
        event(3, user_id="someone@example.com"),
        event(4, consent=[]),
        event(5),
    ]
    result = store.accept_events(events, "shop")
    assert (result.accepted, result.rejected, result.duplicates) == (3, 3, 0)
    assert [(e.index, e.field) for e in result.errors] == [
        (1, "consent"),
        (3, "user_id"),
        (4, "consent"),
    ]
    assert "personalization" in result.errors[0].message
    assert "e-mail" in result.errors[1].message
    assert [e.item_id for e in store.profile("u1", "shop").recent] == ["i5", "i2", "i0"]
    assert store.pending() == 3
    assert b"someone@example.com" not in stored_bytes(store)


def test_a_failure_while_storing_leaves_nothing_of_the_request(sqlite_store: Store) -> None:
    store = sqlite_store
    store.accept_events([event(0)], "shop")  # creates the tables
    with sqlite3.connect(store.path) as con:
        con.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON profile_events WHEN NEW.item_id = 'boom' "
            "BEGIN SELECT RAISE(ABORT, 'disk trouble'); END"
        )
    batch = [event(n) for n in range(1, 6)] + [event(6, item_id="boom", user_id="u2")]
    with pytest.raises(sqlite3.DatabaseError, match="disk trouble"):
        store.accept_events(batch, "shop")
    assert store.pending() == 1
    assert [e.item_id for e in store.profile("u1", "shop").recent] == ["i0"]
    assert not store.profile("u2", "shop").known
    assert _count(store, "SELECT count(*) FROM inbox") == 1
    assert _count(store, "SELECT n_events FROM profiles WHERE subject = 'u1'") == 1
    # the store is usable afterwards
    assert store.accept_events([event(7)], "shop").accepted == 1


def test_a_full_batch_goes_in_as_one_request(store: Store) -> None:
    events = [event(n, user_id=f"u{n % 37}") for n in range(MAX_BATCH)]
    assert store.accept_events(events, "shop").accepted == MAX_BATCH
    assert store.pending("shop") == MAX_BATCH


def test_a_profile_shows_an_event_as_soon_as_it_is_accepted(
    store: Store, spec: tuple[str, str, str], key: bytes
) -> None:
    other_worker = open_backend(spec, key)  # another worker, or a replica on another host
    assert not other_worker.profile("u1", "shop").known
    store.accept_events([event(0), event(2, event_type="purchase", value=9.5)], "shop")
    store.accept_events([event(1, event_type="click")], "shop")
    view = other_worker.profile("u1", "shop")
    assert view.known and view.segments == [] and view.attributes == {}
    assert [(e.event_type, e.item_id) for e in view.recent] == [
        ("purchase", "i2"),
        ("click", "i1"),
        ("view", "i0"),
    ]
    assert view.recent[0].value == 9.5
    assert view.last_event_at == {
        "click": BASE + timedelta(minutes=1),
        "purchase": BASE + timedelta(minutes=2),
        "view": BASE,
    }


def test_events_of_other_datasets_and_people_stay_apart(store: Store) -> None:
    store.accept_events([event(0), event(1, user_id="u2")], "shop")
    store.accept_events([event(2)], "books")
    assert [e.item_id for e in store.profile("u1", "shop").recent] == ["i0"]
    assert [e.item_id for e in store.profile("u1", "books").recent] == ["i2"]
    assert [e.item_id for e in store.profile("u2", "shop").recent] == ["i1"]


def test_anonymous_visitors_get_their_own_profile(store: Store, key: bytes) -> None:
    store.accept_events(
        [
            event(0, user_id=None, anonymous_id="cookie-1"),
            # known only by e-mail: keyed by its pseudonym, as ingestion keys such rows
            event(1, user_id=None, anonymous_id="cookie-2", email=EMAIL),
        ],
        "shop",
    )
    assert [e.item_id for e in store.profile("cookie-1", "shop", anonymous=True).recent] == ["i0"]
    assert not store.profile("cookie-1", "shop").known  # not a user id
    by_email = store.profile(privacy.pseudonym(key, "email", EMAIL), "shop")
    assert [e.item_id for e in by_email.recent] == ["i1"]


def test_an_event_sent_again_with_its_own_id_is_applied_once(store: Store) -> None:
    first = store.accept_events([event(0, source_event_id="e-1"), event(1)], "shop")
    again = store.accept_events(
        [event(0, source_event_id="e-1"), event(2, source_event_id="e-2")], "shop"
    )
    twice = store.accept_events(
        [event(3, source_event_id="e-3"), event(3, source_event_id="e-3")], "shop"
    )
    assert (first.accepted, first.duplicates) == (2, 0)
    assert (again.accepted, again.duplicates) == (2, 1)
    assert (twice.accepted, twice.duplicates) == (2, 1)
    assert [e.item_id for e in store.profile("u1", "shop").recent] == ["i3", "i2", "i1", "i0"]
    assert store.pending() == 4


def test_a_profile_keeps_the_latest_events_and_every_last_time(
    spec: tuple[str, str, str], key: bytes
) -> None:
    store = open_backend(spec, key, recent_events=10)
    store.accept_events([event(0, event_type="purchase", item_id="old")], "shop")
    minutes = list(range(1, 41))
    np.random.default_rng(7).shuffle(minutes)  # arrivals out of time order
    for part in range(4):
        store.accept_events([event(m) for m in minutes[part * 10 : (part + 1) * 10]], "shop")
    view = store.profile("u1", "shop")
    assert [e.item_id for e in view.recent] == [f"i{m}" for m in range(40, 30, -1)]
    assert view.last_event_at["purchase"] == BASE  # its event fell out of the recent ones
    assert profile_event_count(store) <= 11  # the cap (SQLite trims with 10% slack)


def test_the_ranker_profile_holds_interactions_oldest_first(store: Store) -> None:
    store.accept_events(
        [
            event(3, event_type="rate", item_id="a", value=4.0),
            event(1, event_type="view", item_id="b"),
            event(2, event_type="impression", item_id="c"),  # not an interaction
            event(4, event_type="search", item_id=None),
            event(5, event_type="purchase", item_id="d", value=12.0),
        ],
        "shop",
    )
    profile = store.as_profile("u1", "shop")
    assert profile.user_id == "u1"
    assert list(profile.items) == ["b", "a", "d"]
    # a missing value counts 1.0, as training reads the lake
    np.testing.assert_array_equal(profile.values, [1.0, 4.0, 12.0])
    expected = [
        np.datetime64(BASE.replace(tzinfo=None) + timedelta(minutes=m), "us") for m in (1, 3, 5)
    ]
    np.testing.assert_array_equal(profile.timestamps, np.array(expected))
    batch = Histories.from_profiles([profile], np.array(["a", "b", "c", "d"], dtype=object))
    assert batch.items.tolist() == [1, 0, 3]
    assert store.as_profile("nobody", "shop").items == []


def test_a_login_joins_the_visitors_history_once_and_a_shared_cookie_is_refused(
    store: Store,
) -> None:
    store.accept_events([event(0, user_id=None, anonymous_id="c1"),
                         event(1, user_id=None, anonymous_id="c1")], "shop")  # fmt: skip
    before = store.version("u1", "shop")
    login = store.accept_events([event(2, anonymous_id="c1", event_type="identify")], "shop")
    assert [(m.status, m.events_moved) for m in login.merges] == [("merged", 2)]
    assert store.version("u1", "shop") != before  # no cached answer outlives a login
    assert [e.item_id for e in store.profile("u1", "shop").recent] == ["i2", "i1", "i0"]
    view = store.profile("c1", "shop", anonymous=True)
    assert view.merged_into == "u1" and len(view.recent) == 3
    later = store.accept_events([event(3, user_id=None, anonymous_id="c1")], "shop")
    assert later.merges == [] and len(store.snapshot("u1", "shop").events) == 4
    again = store.accept_events([event(4, anonymous_id="c1")], "shop")
    assert [m.status for m in again.merges] == ["already"]
    shared = store.accept_events([event(5, user_id="u2", anonymous_id="c1")], "shop")
    assert [m.status for m in shared.merges] == ["refused"]
    assert "already belongs to user u1" in (shared.merges[0].reason or "")
    assert [e.item_id for e in store.profile("u2", "shop").recent] == ["i5"]
    assert {"type": "anonymous_id", "id": "c1"} in store.profile("u1", "shop").identifiers


# --- several worker processes ---------------------------------------------------------------


def _write_from_another_process(
    spec: tuple[str, str, str], key: bytes, worker: int, batches: int
) -> None:
    store = open_backend(spec, key)
    for b in range(batches):
        events = [
            event(b * 50 + n, user_id=f"w{worker}-u{n % 5}", item_id=f"w{worker}-{b}-{n}")
            for n in range(50)
        ]
        result = store.accept_events(events, "shop")
        assert result.accepted == 50


def test_two_processes_writing_at_once_lose_nothing(spec: tuple[str, str, str], key: bytes) -> None:
    batches = 40
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_write_from_another_process, args=(spec, key, w, batches))
        for w in range(2)
    ]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=120)
    assert [p.exitcode for p in workers] == [0, 0]
    store = open_backend(spec, key)
    assert store.pending() == 2 * batches * 50
    assert len({row["item_id"] for row in inbox_rows(store)}) == 2 * batches * 50
    for worker in range(2):
        for n in range(5):
            items = [e.item_id for e in store.profile(f"w{worker}-u{n}", "shop").recent]
            assert len(items) == len(set(items)) == batches * 10


def _write_after_fork(store: Store) -> None:
    assert store.accept_events([event(1, user_id="child")], "shop").accepted == 1
    assert store.profile("parent", "shop").known


def test_a_store_opened_before_a_fork_works_in_parent_and_child(
    sqlite_store: Store,
) -> None:
    store = sqlite_store
    store.accept_events([event(0, user_id="parent")], "shop")  # the parent's connection
    child = multiprocessing.get_context("fork").Process(target=_write_after_fork, args=(store,))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0
    store.accept_events([event(2, user_id="parent")], "shop")
    assert store.profile("child", "shop").known
    assert store.pending() == 3


# --- privacy -----------------------------------------------------------------------------------


def test_no_raw_pii_reaches_any_byte_of_the_store(store: Store, key: bytes) -> None:
    store.accept_events(
        [event(0, email=EMAIL, phone=PHONE, context={"ip": IP, "device": "ios"})], "shop"
    )
    blob = stored_bytes(store)
    assert blob
    raw = [EMAIL, EMAIL.lower(), PHONE, privacy.normalise("phone", PHONE), IP]
    for value in raw:
        assert value.encode() not in blob, value
    (row,) = inbox_rows(store)
    assert (row["email_hash"], row["phone_hash"], row["ip_hash"], row["device"]) == (
        privacy.pseudonym(key, "email", EMAIL),
        privacy.pseudonym(key, "phone", PHONE),
        privacy.pseudonym(key, "ip", IP),
        "ios",
    )


# --- to the lake -----------------------------------------------------------------------------


def _lake_events(lake: Lake) -> pd.DataFrame:
    return (
        lake.connect()
        .execute(
            "SELECT event_id, user_id, anonymous_id, event_type, item_id, value, channel, "
            "email_hash, phone_hash, ip_hash, timestamp, consent FROM events ORDER BY event_id"
        )
        .df()
    )


LIVE = [
    event(0, email=EMAIL, phone=PHONE, context={"ip": IP, "page": "/home"}),
    event(
        1, event_type="purchase", value=20.0, quantity=2, consent=["personalization", "marketing"]
    ),
    event(2, user_id=None, anonymous_id="cookie-9", source_event_id="client-42"),
    event(3, consent=["analytics"]),  # rejected: never reaches the lake
]


def test_flushing_moves_pending_events_to_the_lake_once(store: Store, lake: Lake) -> None:
    assert store.accept_events(LIVE, "shop").accepted == 3
    first = store.flush(lake)
    assert first.datasets == {
        "shop": {"flushed": 3, "stored": 3, "already_present": 0, "quarantined": 0}
    }
    assert len(first.runs) == 1 and store.pending() == 0
    stored = _lake_events(lake)
    assert len(stored) == 3
    again = store.flush(lake)
    assert again.flushed == 0 and again.runs == []
    pd.testing.assert_frame_equal(_lake_events(lake), stored)
    # a profile outlives the flush
    assert len(store.profile("u1", "shop").recent) == 2


def test_flushed_events_are_those_ingestion_makes_of_the_raw_events(
    store: Store, lake: Lake, key: bytes, tmp_path: Path
) -> None:
    store.accept_events(LIVE, "shop")
    store.flush(lake)
    direct = Lake(str(tmp_path / "direct"))
    result = collect.ingest(sources.event_models(LIVE, "shop"), direct, key)
    assert result.counts("events")["excluded_no_consent"] == 1
    # same content-hash ids, same pseudonyms: the inbox is just another way in
    pd.testing.assert_frame_equal(_lake_events(lake), _lake_events(direct))


def test_a_crash_between_the_lake_write_and_the_mark_adds_no_duplicates(
    store: Store, lake: Lake
) -> None:
    store.accept_events(LIVE, "shop")
    store.flush(lake)
    stored = _lake_events(lake)
    forget_watermarks(store)  # as a crash right after the lake write would leave it
    assert store.pending() == 3
    store.accept_events([event(9)], "shop")
    again = store.flush(lake)
    assert again.datasets["shop"] == {
        "flushed": 4,
        "stored": 1,
        "already_present": 3,
        "quarantined": 0,
    }
    after = _lake_events(lake)
    assert len(after) == 4
    assert set(stored["event_id"]) < set(after["event_id"])
    assert store.pending() == 0


def test_flushing_one_dataset_leaves_the_others_pending(store: Store, lake: Lake) -> None:
    store.accept_events([event(0), event(1)], "shop")
    store.accept_events([event(2)], "books")
    result = store.flush(lake, dataset="books")
    assert list(result.datasets) == ["books"]
    assert store.pending("shop") == 2 and store.pending("books") == 0
    assert store.flush(lake, chunk=1).datasets["shop"]["flushed"] == 2  # one run per row
    assert store.pending() == 0
    assert lake.connect().execute("SELECT count(*) FROM events").fetchone() == (3,)


def test_flushed_rows_leave_the_inbox_after_the_retention_time(store: Store, lake: Lake) -> None:
    store.accept_events([event(0, source_event_id="s-0")], "shop")
    store.flush(lake)
    assert len(inbox_rows(store)) == 1  # kept to spot re-sent events
    assert store.accept_events([event(0, source_event_id="s-0")], "shop").duplicates == 1
    store.flush(lake, keep_flushed=timedelta(0))
    assert inbox_rows(store) == []
    assert [e.item_id for e in store.profile("u1", "shop").recent] == ["i0"]


def test_ingestion_refuses_pseudonym_columns_that_hold_raw_values(lake: Lake, key: bytes) -> None:
    batch = sources.event_models([event(0)], "shop")
    batch.events["email_hash"] = pd.array([EMAIL], dtype="string[pyarrow]")
    with pytest.raises(IngestError, match=r"email_hash.*not a pseudonym"):
        collect.ingest(batch, lake, key)
    both = sources.event_models([event(0, email=EMAIL)], "shop")
    both.events["email_hash"] = pd.array(
        [privacy.pseudonym(key, "email", EMAIL)], dtype="string[pyarrow]"
    )
    with pytest.raises(IngestError, match="raw 'email' too"):
        collect.ingest(both, lake, key)
    assert not Path(lake.url).exists()


def test_flush_every_flushes_on_a_schedule(store: Store, lake: Lake) -> None:
    pauses: list[float] = []
    seen: list[int] = []

    def pause(seconds: float) -> None:
        pauses.append(seconds)
        store.accept_events([event(len(pauses) + 10)], "shop")  # traffic between flushes

    store.accept_events([event(0)], "shop")
    total = flush_every(
        store, lake, 2.5, runs=3, sleep=pause, on_flush=lambda r: seen.append(r.flushed)
    )
    assert pauses == [2.5, 2.5] and seen == [1, 1, 1] and total == 3
    with pytest.raises(ValueError, match="positive"):
        flush_every(store, lake, 0, runs=1)


def test_the_flush_command_moves_the_inbox_to_the_settings_lake(
    spec: tuple[str, str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    if spec[0] == "redis":
        monkeypatch.setenv("BESPOKE_ONLINE_STORE_URL", spec[1])
        get_settings.cache_clear()
    settings = get_settings()
    open_store(settings).accept_events(LIVE, "shop")
    runner = CliRunner()
    result = runner.invoke(app, ["events", "flush", "--dataset", "shop"])
    assert result.exit_code == 0, result.output
    assert "shop: 3 flushed → 3 stored" in result.output
    assert len(_lake_events(Lake(settings.lake_url))) == 3
    result = runner.invoke(app, ["events", "flush"])
    assert result.exit_code == 0 and "nothing to flush" in result.output
    bad = runner.invoke(app, ["events", "flush", "--dataset", "Not A Name"])
    assert bad.exit_code == 1 and "invalid dataset name" in bad.output


# --- deletion ---------------------------------------------------------------------------------


def test_deleting_a_user_removes_their_profile_and_inbox_rows(store: Store, lake: Lake) -> None:
    forget = "person-to-forget-7781"
    store.accept_events(
        [event(0, user_id=forget), event(1, user_id=forget), event(2, user_id="u2")], "shop"
    )
    store.accept_events([event(3, user_id=forget)], "books")
    removed = store.delete_user(forget, "shop")
    assert removed["inbox"] == 2 and removed["profile_events"] == 2 and removed["profiles"] == 1
    assert not store.profile(forget, "shop").known
    assert store.profile(forget, "books").known  # only the dataset asked for
    assert store.profile("u2", "shop").known
    store.delete_user(forget)
    assert not store.profile(forget, "books").known
    assert store.pending() == 1
    assert forget.encode() not in stored_bytes(store)  # overwritten, not just unlinked
    store.flush(lake)
    assert lake.connect().execute("SELECT user_id FROM events").fetchall() == [("u2",)]
