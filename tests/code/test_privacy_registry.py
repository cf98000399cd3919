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
from bespoke.features.schema import TABLES, EventIn
from bespoke.identity.vault import Vault
from bespoke.privacy.consent import ConsentLedger
from bespoke.privacy.requests import Deletions
from bespoke.privacy.stores import (
    LAKE_NOT_PERSONAL,
    LAKE_TABLES,
    ONLINE_NOT_PERSONAL,
    ONLINE_TABLES,
    OnlineStore,
    VaultStore,
)
from bespoke.privacy.suppression import SuppressionList
from bespoke.serving.keys import ApiKeys
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
