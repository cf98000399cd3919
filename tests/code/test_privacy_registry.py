"""The registry of person-data stores is complete: every table that can hold person data —
in the online store's SQLite file (profiles, inbox, experiment ledger, webhook outbox, API
keys), the PII vault and the lake — has a handler, or is declared free of person data
with a reason. A new table, or a new person column in an old one, fails here until a
deletion knows about it."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

from bespoke.channels.campaigns import CampaignSends
from bespoke.experiments.ledger import ExperimentLedger
from bespoke.features.lake import Lake
from bespoke.features.schema import TABLES, EventIn
from bespoke.identity.vault import Vault
from bespoke.privacy.consent import ConsentLedger
from bespoke.privacy.requests import Deletions
from bespoke.privacy.stores import (
    LAKE_NOT_PERSONAL,
    LAKE_TABLES,
    ONLINE_NOT_PERSONAL,
    ONLINE_TABLES,
    REDIS_NOT_PERSONAL,
    REDIS_PERSONAL,
    OnlineStore,
    RedisOnlineStore,
    VaultStore,
)
from bespoke.privacy.subjects import Subject
from bespoke.privacy.suppression import SuppressionList
from bespoke.serving.db import Database
from bespoke.serving.keys import ApiKeys
from bespoke.serving.redis_store import DATASETS_KEY, RedisKeys, RedisStore
from bespoke.serving.store import SQLiteStore
from bespoke.serving.webhooks import queue_abandoned_carts
from bespoke.settings import get_settings

#: Column names that hold a person's identifier wherever they appear.
PERSON_COLUMNS = {"user_id", "anonymous_id", "person", "person_id", "subject", "email_hash",
                  "phone_hash", "device_id", "crm_id", "identifier", "left_id", "right_id",
                  "ip_hash"}  # fmt: skip
#: Person columns that a table's other handled columns already cover, and why.
COVERED_BY_ANOTHER = {
    ("inbox", "ip_hash"): "an event's IP pseudonym goes with the event's row (deleted by its ids)",
}


def _online_database(tmp_path: Path, key: bytes):
    """A real online store file with every schema the service creates in it."""
    store = SQLiteStore(f"sqlite:///{tmp_path / 'online.db'}", key)
    store.accept_events(
        [EventIn.model_validate({"user_id": "u1", "anonymous_id": "a1", "event_type": "view",
                                 "item_id": "1", "consent": ["personalization"],
                                 "timestamp": datetime(2026, 12, 1, tzinfo=UTC).isoformat()})],
        "ml-100k",
    )  # fmt: skip
    ApiKeys(store.database()).create("app")
    ledger = ExperimentLedger(store.database())
    ledger.states()
    ledger.errors("x")
    ConsentLedger(store.database()).people("ml-100k")
    SuppressionList(store.database(), key).count("ml-100k")
    CampaignSends(store.database()).recent("ml-100k", datetime.now(UTC))
    queue_abandoned_carts(store.database(), 30)
    Deletions(store.database(), key).list()
    return store.database()


def test_every_online_table_is_handled_or_declared_free_of_person_data(
    tmp_path: Path, key: bytes
) -> None:
    database = _online_database(tmp_path, key)
    with database.read() as con:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        columns = {t: {r[1] for r in con.execute(f"PRAGMA table_info({t})")} for t in tables}
    assert not set(ONLINE_TABLES) & set(ONLINE_NOT_PERSONAL)
    unhandled = tables - set(ONLINE_TABLES) - set(ONLINE_NOT_PERSONAL)
    assert not unhandled, f"tables with no deletion handler: {sorted(unhandled)}"
    for table, handled in ONLINE_TABLES.items():
        assert table in tables, f"{table} is registered but the store does not create it"
        assert set(handled) <= columns[table], (table, set(handled) - columns[table])
        stray = (columns[table] & PERSON_COLUMNS) - set(handled)
        stray -= {c for (t, c) in COVERED_BY_ANOTHER if t == table}
        assert not stray, f"{table}: person columns no handler matches: {sorted(stray)}"
    for table in ONLINE_NOT_PERSONAL:
        if table in columns:
            assert not columns[table] & PERSON_COLUMNS, (table, columns[table] & PERSON_COLUMNS)
    assert OnlineStore(database).covers() == {f"online:{t}" for t in ONLINE_TABLES}


def test_every_lake_table_is_handled_or_declared_free_of_person_data() -> None:
    assert set(LAKE_TABLES) | set(LAKE_NOT_PERSONAL) == set(TABLES)
    assert not set(LAKE_TABLES) & set(LAKE_NOT_PERSONAL)
    for table in LAKE_NOT_PERSONAL:
        assert not set(TABLES[table][1].names) & PERSON_COLUMNS, table
    for table in LAKE_TABLES:
        named = set(TABLES[table][1].names) & PERSON_COLUMNS
        # the condition mentions every person column the table has
        missing = {c for c in named if c not in LAKE_TABLES[table] and c != "ip_hash"}
        assert not missing, (table, missing)


def test_every_vault_table_is_handled(tmp_path: Path, isolated_settings: Path) -> None:
    vault = Vault.from_settings(get_settings())
    vault.put("subject-1", [("record-1", {"email": "ann@example.com"})], ["email:abc"])
    found = set()
    for path in Path(vault.folder).glob("*.db"):
        with closing(sqlite3.connect(path)) as con:
            found |= {
                r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
    assert {f"vault:{t}" for t in found} == VaultStore(vault).covers()


def test_every_redis_key_is_handled_or_declared_free_of_person_data(
    empty_redis: str, tmp_path: Path, key: bytes
) -> None:
    """Every kind of key the Redis online store writes has a handler or a reason; the
    keys a real store writes (logins, a refused one, sender ids, a flush) are all known."""
    assert set(REDIS_PERSONAL) | set(REDIS_NOT_PERSONAL) == set(RedisKeys.PARTS)
    assert not set(REDIS_PERSONAL) & set(REDIS_NOT_PERSONAL)
    store = RedisStore(empty_redis, key, control=Database(tmp_path / "control.db"))
    events = [{"anonymous_id": "cookie-0001", "event_type": "view", "item_id": "1"},
              {"user_id": "user-0001", "anonymous_id": "cookie-0001", "event_type": "identify"},
              {"user_id": "user-0002", "anonymous_id": "cookie-0001", "event_type": "identify"},
              {"user_id": "user-0001", "event_type": "view", "item_id": "2", "source_event_id": "s1",
               "email": "ann@example.com"}]  # fmt: skip
    for one in events:  # one request each: the second login with the cookie is refused
        store.accept_events([EventIn.model_validate(
            one | {"consent": ["personalization"], "timestamp": datetime(2026, 12, 1, tzinfo=UTC)}
        )], "ml-100k")  # fmt: skip
    store.flush(Lake(str(tmp_path / "lake")))
    parts = {RedisKeys.part(k) for k in store.client.scan_iter() if k != DATASETS_KEY}
    assert None not in parts, "a key of no known kind"
    assert {"inbox", "sent", "events", "last", "alias", "logins", "refused"} <= parts
    assert RedisOnlineStore(store).covers() == {f"online_redis:{p}" for p in REDIS_PERSONAL}
    # erased: nothing of user-0001 nor of the cookie that became theirs is left anywhere
    # (the other user's refused login with that cookie included)
    handler = RedisOnlineStore(store)
    subject = Subject("ml-100k", user_ids=frozenset({"user-0001"}))
    assert handler.verify(subject)["keys_and_values"] > 0
    removed = handler.delete(subject)
    assert removed["inbox"] == 4 and removed["alias"] == 1 and removed["refused"] == 1
    assert not any(handler.verify(subject).values())
    assert store.profile("user-0002", "ml-100k").known  # the other user of the shared device stays
