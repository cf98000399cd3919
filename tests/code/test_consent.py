"""The consent ledger (per person and purpose, latest decision wins across the ids a login
linked), the suppression list, and the gate that enforces both on live ingestion."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from bespoke.features.schema import ConsentPurpose, EventIn
from bespoke.privacy.consent import ConsentError, ConsentLedger, ConsentSource, parse_purposes
from bespoke.privacy.gate import ERASED, WITHDRAWN, PersonGate
from bespoke.privacy.suppression import SuppressionList
from bespoke.serving.store import SQLiteStore

P = ConsentPurpose.PERSONALIZATION
M = ConsentPurpose.MARKETING
DAY = datetime(2026, 3, 1, tzinfo=UTC)


def _event(user: str | None, anon: str | None, at: datetime = DAY, **extra) -> EventIn:
    return EventIn.model_validate({
        "user_id": user, "anonymous_id": anon, "event_type": "click", "item_id": "42",
        "consent": ["personalization"], "timestamp": at.isoformat(), **extra,
    })  # fmt: skip


@pytest.fixture
def store(tmp_path: Path, key: bytes) -> SQLiteStore:
    return SQLiteStore(f"sqlite:///{tmp_path / 'online.db'}", key)


def test_the_latest_decision_per_purpose_wins_and_keeps_its_history(store: SQLiteStore) -> None:
    ledger = ConsentLedger(store.database())
    assert ledger.allows("d", P, user_id="u1") is None  # never decided
    ledger.record("d", {P: True, M: True}, source=ConsentSource.API, user_id="u1",
                  decided_at=DAY)  # fmt: skip
    ledger.record("d", {M: False}, source=ConsentSource.CMP, user_id="u1",
                  decided_at=DAY + timedelta(days=1), detail="tcf:CPXxRfAPXxRfAAfKABENB")  # fmt: skip
    # recorded later but decided earlier: does not override the newer decision
    ledger.record("d", {M: True}, source=ConsentSource.IMPORT, user_id="u1",
                  decided_at=DAY - timedelta(days=5))  # fmt: skip
    state = ledger.state("d", user_id="u1")
    assert state[P].granted and not state[M].granted and state[M].source == ConsentSource.CMP
    assert [d.purpose for d in ledger.history("d", user_id="u1")] == [M, M, P, M]
    assert ledger.allows("other", M, user_id="u1") is None  # per dataset
    assert ledger.withdrawn("d", M).user_ids == {"u1"} and not ledger.withdrawn("d", P)


def test_a_withdrawal_while_anonymous_holds_after_login_until_the_account_grants_again(
    store: SQLiteStore,
) -> None:
    ledger = ConsentLedger(store.database())
    ledger.record("d", {P: False}, source=ConsentSource.API, anonymous_id="browser-1",
                  decided_at=DAY)  # fmt: skip
    assert ledger.withdrawn("d", P).anonymous_ids == {"browser-1"}
    # the login links the browser to u7 (this identify event is itself refused: withdrawn)
    store.accept_events([_event("u7", "browser-1", DAY - timedelta(days=1))], "d")
    with store.database().write() as con:  # the link an earlier login had made
        con.execute("INSERT INTO aliases VALUES ('d', 'browser-1', 'u7', 0, NULL)")
    assert ledger.allows("d", P, user_id="u7") is False
    gone = ledger.withdrawn("d", P)
    assert gone.user_ids == {"u7"} and gone.anonymous_ids == {"browser-1"}
    ledger.record("d", {P: True}, source=ConsentSource.API, user_id="u7",
                  decided_at=DAY + timedelta(hours=1))  # fmt: skip
    assert ledger.allows("d", P, anonymous_id="browser-1") is True
    assert not ledger.withdrawn("d", P)


def test_bad_decisions_are_refused_and_nothing_is_recorded(store: SQLiteStore) -> None:
    ledger = ConsentLedger(store.database())
    with pytest.raises(ConsentError, match="name the person"):
        ledger.record("d", {P: True}, source=ConsentSource.API)
    with pytest.raises(ConsentError, match="purposes"):
        ledger.record("d", {}, source=ConsentSource.API, user_id="u1")
    with pytest.raises(ConsentError, match=r"decided_at: .*time zone"):
        ledger.record("d", {P: True}, source=ConsentSource.API, user_id="u1",
                      decided_at=datetime(2026, 1, 1))  # fmt: skip
    assert ledger.people("d") == 0
    assert parse_purposes(["personalization=false", "+marketing"]) == {P: False, M: True}
    with pytest.raises(ConsentError, match="'profiling' is not a purpose; known: necessary"):
        parse_purposes(["profiling=true"])
    with pytest.raises(ConsentError, match="true or false"):
        parse_purposes(["marketing=maybe"])


def test_live_events_of_a_person_who_withdrew_are_refused_one_by_one(store: SQLiteStore) -> None:
    ConsentLedger(store.database()).record("d", {P: False}, source=ConsentSource.API,
                                           user_id="u1")  # fmt: skip
    result = store.accept_events([_event("u1", None), _event("u2", None)], "d")
    assert (result.accepted, result.rejected) == (1, 1)
    assert result.errors[0].index == 0 and result.errors[0].field == "consent"
    assert "withdrew 'personalization'" in result.errors[0].message
    assert not store.profile("u1", "d").known and store.profile("u2", "d").known


def test_an_erased_persons_old_events_stay_out_and_their_new_ones_come_in(
    store: SQLiteStore, key: bytes
) -> None:
    erased_at = DAY + timedelta(days=10)
    suppression = SuppressionList(store.database(), key)
    assert suppression.add("d", ["user_id:u9", "email:abc"], erased_at) == 2
    assert suppression.add("d", ["user_id:u9"], erased_at - timedelta(days=1)) == 1  # kept later
    gate = PersonGate(store.database(), key)
    old, new = _event("u9", None, DAY), _event("u9", None, erased_at + timedelta(seconds=1))
    assert gate.live_reasons("d", [old, new, _event("u8", None)]) == [ERASED, None, None]
    result = store.accept_events([old, new], "d")
    assert (result.accepted, result.rejected, result.errors[0].field) == (1, 1, "user_id")
    # the same rule over a batch source, by e-mail pseudonym too
    frame = pd.DataFrame({
        "user_id": ["u9", "u9", None, "u1"], "anonymous_id": [None, None, "a", None],
        "email_hash": [None, None, "abc", None],
        "timestamp": [DAY, erased_at + timedelta(days=1), DAY, DAY],
    })  # fmt: skip
    assert gate.batch_reasons("d", frame).fillna("").tolist() == [ERASED, "", ERASED, ""]
    # nothing of the raw ids is kept: the list holds pseudonyms of a namespace of its own
    with store.database().read() as con:
        listed = [r[0] for r in con.execute("SELECT pseudonym FROM suppressed")]
    assert "u9" not in listed and "abc" not in listed and len(listed) == 2


def test_withdrawn_people_are_left_out_of_a_batch_source(store: SQLiteStore, key: bytes) -> None:
    ConsentLedger(store.database()).record("d", {P: False}, source=ConsentSource.IMPORT,
                                           anonymous_id="a1")  # fmt: skip
    frame = pd.DataFrame({"user_id": [None, "u1"], "anonymous_id": ["a1", "a2"],
                          "timestamp": [DAY, DAY]})  # fmt: skip
    assert PersonGate(store.database(), key).batch_reasons("d", frame).fillna("").tolist() == [
        WITHDRAWN,
        "",
    ]


def test_a_login_on_the_redis_store_links_the_withdrawal_made_while_anonymous(
    tmp_path: Path, key: bytes, empty_redis: str
) -> None:
    """Beside Redis the logins live in Redis; the store mirrors them into the control
    database, where the ledger follows them."""
    from bespoke.serving.db import Database
    from bespoke.serving.redis_store import RedisStore

    store = RedisStore(empty_redis, key, control=Database(f"sqlite:///{tmp_path / 'c.db'}"))
    ledger = ConsentLedger(store.database())
    ledger.record("d", {P: False}, source=ConsentSource.API, anonymous_id="browser-1",
                  decided_at=DAY)  # fmt: skip
    store.accept_events([_event(None, "browser-2", DAY), _event("u8", "browser-2", DAY)], "d")
    assert ledger.allows("d", P, user_id="u8") is None  # browser-2 withdrew nothing
    ledger.record("d", {P: False}, source=ConsentSource.API, anonymous_id="browser-2",
                  decided_at=DAY + timedelta(hours=1))  # fmt: skip
    assert ledger.allows("d", P, user_id="u8") is False  # followed through the login
    refused = store.accept_events([_event("u8", None, DAY + timedelta(hours=2))], "d")
    assert refused.accepted == 0 and refused.errors[0].field == "consent"
