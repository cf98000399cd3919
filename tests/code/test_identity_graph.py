"""The identity graph's guards, evidence, splits and persistence, on small hand-made logs."""

from __future__ import annotations

import pandas as pd
import pytest

from bespoke.identity.graph import MERGED, REFUSED, SPLIT, IdentityGraph, parse_node, person_id_of
from bespoke.identity.identifiers import (
    IdentifierType,
    IdentityError,
    blocked_pseudonyms,
    check_identifier,
)

U, C, D, E = (
    IdentifierType.USER_ID,
    IdentifierType.ANONYMOUS_ID,
    IdentifierType.DEVICE_ID,
    IdentifierType.EMAIL,
)


def _events(*rows: dict) -> pd.DataFrame:
    columns = ["event_id", "timestamp", "user_id", "anonymous_id", "device_id", "email_hash"]
    frame = pd.DataFrame([{c: row.get(c) for c in columns} for row in rows], columns=columns)
    frame["event_id"] = [f"e{i}" for i in range(len(frame))]
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    return frame


def test_an_anonymous_visitor_who_logs_in_becomes_the_known_person() -> None:
    graph = IdentityGraph("t")
    graph.observe_events(_events({"timestamp": "2024-01-01T10:00Z", "anonymous_id": "c1"}))
    anonymous = graph.person_of((C, "c1"))
    decisions = graph.observe_events(
        _events({"timestamp": "2024-01-01T10:05Z", "anonymous_id": "c1", "user_id": "u1"})
    )
    assert [d.decision for d in decisions] == [MERGED]
    assert graph.person_of((C, "c1")) == graph.person_of((U, "u1")) == person_id_of((U, "u1"))
    assert anonymous != graph.person_of((U, "u1"))  # the known person's id survives
    row = graph.table().set_index("identifier").loc["c1"]
    assert (row["rule"], row["evidence"], row["linked_to"]) == ("same_event", "e0", "user_id:u1")


def test_a_family_tablet_never_merges_two_logged_in_people() -> None:
    graph = IdentityGraph("t")
    decisions = graph.observe_events(
        _events(
            {
                "timestamp": "2024-01-01T10:00Z",
                "user_id": "u1",
                "device_id": "tab",
                "anonymous_id": "c1",
            },
            {
                "timestamp": "2024-01-02T10:00Z",
                "user_id": "u2",
                "device_id": "tab",
                "anonymous_id": "c2",
            },
            {"timestamp": "2024-01-03T10:00Z", "device_id": "tab", "anonymous_id": "c3"},
        )
    )
    assert graph.person_of((U, "u1")) != graph.person_of((U, "u2"))
    assert graph.shared == {(D, "tab")}
    # The tablet belongs to neither account any more, and joins no one later.
    assert graph.person_of((D, "tab")) not in {
        graph.person_of((U, "u1")),
        graph.person_of((U, "u2")),
    }
    assert graph.person_of((C, "c3")) != graph.person_of((D, "tab"))
    refused = [d for d in decisions if d.decision == REFUSED]
    assert "two different user_ids" in refused[0].reason
    assert any("shared by several accounts" in d.reason for d in refused[1:])
    assert any(d.decision == SPLIT for d in decisions)
    # The cookies of each login stay with their own person.
    assert graph.person_of((C, "c1")) == graph.person_of((U, "u1"))
    assert graph.person_of((C, "c2")) == graph.person_of((U, "u2"))


def test_placeholder_values_are_no_one() -> None:
    graph = IdentityGraph("t", blocked=blocked_pseudonyms(b"k" * 32))
    graph.observe_events(
        _events(
            {"timestamp": "2024-01-01T10:00Z", "user_id": "u1", "anonymous_id": "undefined"},
            {"timestamp": "2024-01-01T11:00Z", "user_id": "u2", "anonymous_id": "undefined"},
            {"timestamp": "2024-01-01T12:00Z", "user_id": "u3", "anonymous_id": " NULL "},
            {"timestamp": "2024-01-01T12:00Z", "user_id": "0", "anonymous_id": "c9"},
        )
    )
    assert {n[1] for n in graph._parent} == {"u1", "u2", "u3", "c9"}
    assert graph.persons() == 4


def test_cookies_are_bounded_per_period_not_for_life() -> None:
    burst = [
        {"timestamp": f"2024-01-01T10:{i:02d}Z", "user_id": "u1", "anonymous_id": f"c{i}"}
        for i in range(51)
    ]
    graph = IdentityGraph("t")
    decisions = graph.observe_events(_events(*burst))
    refused = [d for d in decisions if d.decision == REFUSED]
    assert (
        len(refused) == 1
        and "51 anonymous_ids seen within 30 days (at most 50)" in refused[0].reason
    )
    spread = [
        {"timestamp": (pd.Timestamp("2024-01-01", tz="UTC") + pd.Timedelta(days=2 * i)).isoformat(),
         "user_id": "u1", "anonymous_id": f"c{i}"}
        for i in range(60)
    ]  # fmt: skip
    graph = IdentityGraph("t")
    assert all(d.decision == MERGED for d in graph.observe_events(_events(*spread)))
    assert graph.persons() == 1


def test_a_split_is_recorded_undone_and_kept() -> None:
    graph = IdentityGraph("t")
    graph.observe_events(
        _events(
            {"timestamp": "2024-01-01T10:00Z", "user_id": "u1", "anonymous_id": "c1"},
            {"timestamp": "2024-01-01T11:00Z", "anonymous_id": "c1", "device_id": "d1"},
            {"timestamp": "2024-01-01T12:00Z", "user_id": "u1", "email_hash": "h1"},
        )
    )
    assert len({graph.person_of(n) for n in [(U, "u1"), (C, "c1"), (D, "d1"), (E, "h1")]}) == 1
    changed = graph.split((C, "c1"))
    assert set(changed) == {(C, "c1"), (D, "d1")}  # d1 was joined through c1
    assert graph.person_of((E, "h1")) == graph.person_of((U, "u1"))
    assert graph.person_of((C, "c1")) != graph.person_of((U, "u1"))
    splits = [d for d in graph.decisions() if d.decision == SPLIT]
    assert {d.link.right for d in splits} == {(U, "u1"), (D, "d1")}
    later = graph.observe_events(
        _events({"timestamp": "2024-01-02T10:00Z", "user_id": "u1", "anonymous_id": "c1"})
    )
    assert later[0].decision == REFUSED and "split off by an operator" in later[0].reason
    with pytest.raises(KeyError, match="user_id:nobody is not in the identity graph"):
        graph.split((U, "nobody"))


def test_the_graph_reads_back_from_its_tables_and_grows_incrementally() -> None:
    first = _events(
        {"timestamp": "2024-01-01T10:00Z", "user_id": "u1", "anonymous_id": "c1"},
        {"timestamp": "2024-01-01T10:00Z", "user_id": "u2", "device_id": "tab"},
        {"timestamp": "2024-01-01T11:00Z", "user_id": "u3", "device_id": "tab"},
    )
    second = _events(
        {"timestamp": "2024-01-02T10:00Z", "anonymous_id": "c1", "device_id": "d7"},
        {"timestamp": "2024-01-02T10:00Z", "user_id": "u2", "email_hash": "h2"},
    )
    graph = IdentityGraph("t")
    graph.observe_events(first)
    graph.split((C, "c1"))
    stored = graph.tables()
    again = IdentityGraph.from_tables("t", *stored)
    mine, theirs = graph.table(), again.table()
    assert (
        mine.sort_values("identifier")
        .reset_index(drop=True)
        .equals(theirs.sort_values("identifier").reset_index(drop=True))
    )
    assert again.shared == graph.shared == {(D, "tab")}
    graph.observe_events(second)
    again.observe_events(second)
    for node in [(U, "u1"), (C, "c1"), (D, "d7"), (U, "u2"), (E, "h2")]:
        assert graph.person_of(node) == again.person_of(node)
    # The split cookie joins no one later, the rest grows as usual.
    assert again.person_of((D, "d7")) != again.person_of((C, "c1")) != again.person_of((U, "u1"))
    assert again.person_of((E, "h2")) == again.person_of((U, "u2"))
    assert again.version == graph.version == 3


@pytest.mark.parametrize(
    ("kind", "value", "message"),
    [
        ("user_id", "undefined", "placeholder"),
        ("user_id", " u1", "no space at either end"),
        ("user_id", 42, "must be text"),
        ("cookie", "c1", "unknown identifier type 'cookie'"),
        ("device_id", "x" * 201, "1-200 characters"),
    ],
)
def test_an_identifier_of_the_wrong_shape_is_named(kind: str, value: object, message: str) -> None:
    with pytest.raises(IdentityError, match=message):
        check_identifier(kind, value, where="identify.user")


def test_identifiers_are_written_type_colon_value() -> None:
    assert parse_node("user_id:42") == (U, "42")
    assert parse_node("email:ab:cd") == (E, "ab:cd")
    with pytest.raises(ValueError, match="type:value"):
        parse_node("42")
    with pytest.raises(ValueError, match="unknown identifier type 'uid'"):
        parse_node("uid:42")
