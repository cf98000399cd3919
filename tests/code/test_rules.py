"""The JSON rules engine: every operator, validation with paths, priorities and merging,
applying a decision to a ranked list, hot reload, and the shipped example on MovieLens."""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from bespoke.features import geo
from bespoke.features.schema import EventType
from bespoke.serving import rules
from bespoke.serving.rules import RulesError, RuleSet, RulesFile

NOW = datetime(2026, 12, 12, 12, 0, tzinfo=UTC)  # a Saturday, inside the shipped winter window
WEDNESDAY = datetime(2026, 12, 16, 12, 0, tzinfo=UTC)
SHOW = [{"type": "show_content", "block_id": "b"}]

PROFILE = {
    "attributes": {
        "state": "NY",
        "age": 24,
        "score": 1.5,
        "flag": True,
        "none": None,
        "nan": float("nan"),
        "tags": ["a", "b"],
        "zip": "10001",
        "count_text": "5",
        "joined": datetime(2026, 1, 1, tzinfo=UTC),
        "joined_naive": datetime(2026, 1, 1),
        "joined_text": "2026-01-01T00:00:00Z",
        "birthday": date(2000, 5, 17),
    }
}


def matches(condition: dict, profile: Any = None, context: Any = None, now=NOW) -> bool:
    predicate = rules.compile_condition(condition)
    document = {"profile": PROFILE if profile is None else profile, "context": context or {}}
    return predicate({**document, "now": now}, now)


def rule(id: str = "r", when: dict | None = None, then: list | None = None, **fields) -> dict:
    return {"id": id, "when": when or {}, "then": SHOW if then is None else then, **fields}


def ruleset(*rule_dicts: dict) -> RuleSet:
    return RuleSet.from_data({"version": 1, "rules": list(rule_dicts)})


def problems(data: Any) -> list[str]:
    with pytest.raises(RulesError) as caught:
        RuleSet.from_data(data, "test.json")
    assert str(caught.value).startswith("invalid rules in test.json:")
    return caught.value.problems


A = "profile.attributes."


# --- operators ---------------------------------------------------------------------------

OPERATOR_CASES = [
    # implicit and explicit equality
    ({A + "state": "NY"}, True),
    ({A + "state": "CA"}, False),
    ({A + "state": {"$eq": "NY"}}, True),
    ({A + "missing": "NY"}, False),
    ({A + "age": 24}, True),
    ({A + "age": 24.0}, True),
    ({A + "age": "24"}, False),  # a string is not a number
    ({A + "count_text": 5}, False),
    ({A + "flag": True}, True),
    ({A + "flag": 1}, False),  # a boolean is not a number
    ({A + "age": True}, False),
    ({A + "none": None}, True),
    ({A + "missing": None}, True),
    ({A + "state": None}, False),
    ({A + "nan": {"$eq": 0}}, False),
    # GrowthBook: a plain value equals a list only when it is an equal list
    ({A + "tags": "a"}, False),
    ({A + "tags": {"$elemMatch": {"$eq": "a"}}}, True),
    ({A + "tags": {"$elemMatch": {"$eq": "c"}}}, False),
    ({A + "tags": ["a", "b"]}, True),
    ({A + "tags": ["b", "a"]}, False),
    ({A + "joined": "2026-01-01"}, True),  # ISO text compares with date-times
    ({A + "joined_naive": {"$eq": "2026-01-01T00:00:00Z"}}, True),  # naive is UTC
    ({A + "joined_text": "2026-01-01"}, False),  # text against text stays text
    # $ne: the exact negation of $eq
    ({A + "state": {"$ne": "CA"}}, True),
    ({A + "state": {"$ne": "NY"}}, False),
    ({A + "missing": {"$ne": "NY"}}, True),
    ({A + "tags": {"$ne": "a"}}, True),  # a list is not the string "a"
    ({A + "none": {"$ne": None}}, False),
    # comparisons
    ({A + "age": {"$gt": 18}}, True),
    ({A + "age": {"$gt": 24}}, False),
    ({A + "age": {"$gte": 24}}, True),
    ({A + "age": {"$lt": 24}}, False),
    ({A + "age": {"$lte": 24}}, True),
    ({A + "score": {"$lt": 1.6}}, True),
    ({A + "age": {"$gt": "18"}}, False),  # type mismatch: no match
    ({A + "state": {"$gt": 5}}, False),
    ({A + "none": {"$gt": 1}}, False),
    ({A + "missing": {"$lt": 100}}, False),
    ({A + "nan": {"$lt": 100}}, False),
    ({A + "nan": {"$gte": 0}}, False),
    ({A + "flag": {"$gt": 0}}, False),
    ({A + "tags": {"$gte": "b"}}, False),  # GrowthBook orders two numbers or two strings only
    ({A + "zip": {"$gte": "10000"}}, True),
    ({A + "zip": {"$lt": "10000"}}, False),
    ({A + "joined": {"$gte": "2025-12-31"}}, True),
    ({A + "joined": {"$lt": "2026-01-01T00:00:00Z"}}, False),
    ({A + "joined": {"$lte": "2026-01-01T01:00:00+01:00"}}, True),  # the same instant
    ({A + "joined_text": {"$gt": "2025"}}, True),
    ({A + "birthday": {"$lt": "2001-01-01"}}, True),  # dates are midnight UTC
    ({A + "age": {"$gte": 18, "$lt": 30}}, True),
    ({A + "age": {"$gte": 25, "$lt": 30}}, False),
    ({"now": {"$gte": "2026-12-01"}}, True),
    ({"now": {"$lt": "2026-12-01"}}, False),
    # $in and $nin
    ({A + "state": {"$in": ["NY", "NJ"]}}, True),
    ({A + "state": {"$in": []}}, False),
    ({A + "age": {"$in": [24]}}, True),
    ({A + "score": {"$in": [1.5, 3]}}, True),
    ({A + "age": {"$in": ["24"]}}, False),
    ({A + "flag": {"$in": [1]}}, False),
    ({A + "flag": {"$in": [True]}}, True),
    ({A + "missing": {"$in": [None]}}, True),
    ({A + "missing": {"$in": ["NY"]}}, False),
    ({A + "tags": {"$in": ["b", "z"]}}, True),
    ({A + "tags": {"$in": ["z"]}}, False),
    ({A + "tags": {"$in": [["a", "b"]]}}, False),  # lists inside $in never match (JS references)
    ({A + "tags": {"$all": ["b", "a"]}}, True),
    ({A + "tags": {"$all": ["a", "z"]}}, False),
    ({A + "tags": {"$size": 2}}, True),
    ({A + "tags": {"$size": {"$gt": 2}}}, False),
    ({A + "tags.length": 2}, True),
    ({A + "state": {"$ini": ["ny"]}}, True),
    ({A + "state": {"$type": "string"}}, True),
    ({A + "tags": {"$type": "array"}}, True),
    ({A + "state": {"$regexi": "^n"}}, True),
    ({A + "state": {"$notRegex": "^N"}}, False),
    ({A + "joined": {"$in": ["2026-01-01"]}}, True),
    ({A + "state": {"$nin": ["CA"]}}, True),
    ({A + "state": {"$nin": ["NY"]}}, False),
    ({A + "missing": {"$nin": ["NY"]}}, True),
    ({A + "tags": {"$nin": ["a"]}}, False),
    # $exists: present and not None
    ({A + "state": {"$exists": True}}, True),
    ({A + "missing": {"$exists": True}}, False),
    ({A + "missing": {"$exists": False}}, True),
    ({A + "none": {"$exists": True}}, False),
    ({A + "none": {"$exists": False}}, True),
    # $regex
    ({A + "state": {"$regex": "^n"}}, False),
    ({A + "state": {"$regex": "^n", "$options": "i"}}, True),
    ({A + "state": {"$regex": "Y$"}}, True),
    ({A + "age": {"$regex": "2"}}, False),  # only strings
    ({A + "missing": {"$regex": ".*"}}, False),
    ({A + "tags": {"$regex": "^b$"}}, False),  # a list is not a string
    ({A + "tags": {"$elemMatch": {"$regex": "^b$"}}}, True),
    # $not on a field, $not on a condition
    ({A + "age": {"$not": {"$lt": 18}}}, True),
    ({A + "missing": {"$not": {"$gt": 18}}}, True),
    ({A + "age": {"$not": {"$gte": 18, "$lt": 30}}}, False),
    ({"$not": {A + "state": "NY"}}, False),
    ({"$not": {A + "state": "CA"}}, True),
    # $and, $or, nesting, several keys
    ({"$and": [{A + "state": "NY"}, {A + "age": {"$gte": 18}}]}, True),
    ({"$and": [{A + "state": "NY"}, {A + "age": {"$lt": 18}}]}, False),
    ({"$or": [{A + "state": "CA"}, {A + "age": {"$lt": 18}}]}, False),
    ({"$or": [{A + "state": "CA"}, {A + "age": 24}]}, True),
    (
        {
            "$or": [
                {A + "state": "CA"},
                {"$and": [{A + "age": {"$gte": 18}}, {"$not": {A + "tags": "z"}}]},
            ]
        },
        True,
    ),
    (
        {"$not": {"$or": [{A + "state": "CA"}, {"$and": [{A + "age": 24}, {A + "flag": True}]}]}},
        False,
    ),
    ({A + "state": "NY", A + "age": 24}, True),
    ({A + "state": "NY", A + "age": 25}, False),
    ({}, True),
    # paths: list indices, beyond the end, through a scalar
    ({A + "tags.1": "b"}, True),
    ({A + "tags.5": {"$exists": True}}, False),
    ({A + "state.0": {"$exists": True}}, False),
    ({"profile.attributes": {"$exists": True}}, True),
]


@pytest.mark.parametrize(
    ("condition", "expected"),
    OPERATOR_CASES,
    ids=lambda v: json.dumps(v, default=str) if isinstance(v, dict) else str(v),
)
def test_operators(condition: dict, expected: bool) -> None:
    assert matches(condition) is expected


def test_context_paths_and_defaulted_day_of_week() -> None:
    assert matches({"context.channel": "web"}, context={"channel": "web"})
    assert not matches({"context.channel": "web"}, context={})
    weekend = ruleset(rule(when={"context.day_of_week": {"$in": ["saturday", "sunday"]}}))
    assert weekend.evaluate({}, {}, NOW).rule_ids == ("r",)  # from now (UTC)
    assert weekend.evaluate({}, {}, WEDNESDAY).rule_ids == ()
    # the caller's own day (its time zone) wins over now's
    assert weekend.evaluate({}, {"day_of_week": "friday"}, NOW).rule_ids == ()
    assert ruleset(rule(when={"context.hour": 12})).evaluate({}, None, NOW).rule_ids == ("r",)


WEIRD_VALUES = [
    object(),
    b"NY",
    {"a": 1},
    [],
    [None, {}],
    {1, 2},
    float("nan"),
    float("inf"),
    pd.NaT,
    pd.NA,
    np.int64(5),
    np.float32(2.5),
    np.bool_(True),
    Decimal("1.5"),
    np.array([1, 2]),
    date(2026, 12, 1),
    datetime(2026, 12, 1),
    "not a date",
    "",
]
WEIRD_OPERATORS = [
    {"$eq": "NY"},
    {"$eq": 5},
    {"$eq": True},
    {"$eq": None},
    {"$ne": 5},
    {"$gt": 1},
    {"$lte": "2026-12-01"},
    {"$in": ["NY", 5, True, None, [1], "2026-12-01"]},
    {"$nin": [5]},
    {"$exists": True},
    {"$regex": "N"},
    {"$within_days": 30},
    {"$elemMatch": {"a": 1}},
    {"$count": {"gte": 1}},
    {"$not": {"$gt": 1}},
]


@pytest.mark.parametrize(
    "value", WEIRD_VALUES, ids=lambda v: "object" if type(v) is object else repr(v)
)
def test_no_operator_raises_on_an_unexpected_value(value: Any) -> None:
    profile = {"attributes": {"x": value}}
    for operator in WEIRD_OPERATORS:
        result = matches({A + "x": operator}, profile=profile)
        assert result in (True, False), operator


def test_numpy_numbers_compare_as_numbers() -> None:
    profile = {"attributes": {"age": np.int64(15), "score": np.float32(0.5)}}
    assert matches({A + "age": {"$lt": 18}}, profile=profile)
    assert matches({A + "age": {"$in": [15]}}, profile=profile)
    assert matches({A + "score": 0.5}, profile=profile)


def test_within_days_boundaries() -> None:
    def within(value: Any, days: float = 30, now: datetime = NOW) -> bool:
        return matches(
            {A + "t": {"$within_days": days}}, profile={"attributes": {"t": value}}, now=now
        )

    tick = timedelta(microseconds=1)
    assert within(NOW - timedelta(days=30))  # both ends inclusive
    assert not within(NOW - timedelta(days=30) - tick)
    assert within(NOW)
    assert not within(NOW + tick)  # the future is not "in the last N days"
    assert within(NOW - timedelta(hours=11), days=0.5)
    assert not within(NOW - timedelta(hours=13), days=0.5)
    assert within((NOW - timedelta(days=29)).isoformat())
    assert within((NOW - timedelta(days=29)).replace(tzinfo=None))  # naive is UTC
    assert within(pd.Timestamp(NOW - timedelta(days=1)))
    assert within(date(2026, 11, 13))  # midnight UTC: 29.5 days before NOW
    assert not within(date(2026, 11, 12))  # 30.5 days
    # GrowthBook semantics: a scalar operator does not look inside a list; $elemMatch does
    assert not within([NOW - timedelta(days=90), NOW - timedelta(days=2)])
    listed = {"attributes": {"t": [NOW - timedelta(days=90), NOW - timedelta(days=2)]}}
    assert matches({A + "t": {"$elemMatch": {"$within_days": 30}}}, profile=listed)
    for nothing in (None, "garbage", 20261201, pd.NaT, [], True):
        assert not within(nothing), nothing
    assert not matches({A + "missing": {"$within_days": 30}})
    # "not within the last 30 days" includes never
    assert matches({A + "missing": {"$not": {"$within_days": 30}}})
    # another time zone, the same instant
    eastern = NOW.astimezone(__import__("zoneinfo").ZoneInfo("America/New_York"))
    assert within(eastern - timedelta(days=30))


def _events_profile() -> dict:
    events = [
        {"type": "rate", "item_id": "1", "timestamp": NOW - timedelta(days=40), "value": 5},
        {"type": "rate", "item_id": "2", "timestamp": NOW - timedelta(days=10), "value": 2},
        {"type": "view", "item_id": "3", "timestamp": NOW - timedelta(days=1)},
        {"type": "purchase", "item_id": "3", "timestamp": NOW - timedelta(days=5), "value": 9.5},
    ]
    return rules.profile_document({"state": "NY"}, events, NOW)


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        (
            {"profile.events": {"$elemMatch": {"type": "rate", "timestamp": {"$within_days": 30}}}},
            True,
        ),
        (
            {"profile.events": {"$elemMatch": {"type": "rate", "timestamp": {"$within_days": 7}}}},
            False,
        ),
        ({"profile.events": {"$elemMatch": {"type": "rate", "value": {"$gte": 5}}}}, True),
        ({"profile.attributes": {"$elemMatch": {"state": "NY"}}}, False),  # not a list
        ({"profile.events": {"$count": {"gte": 4}}}, True),
        ({"profile.events": {"$count": {"gt": 4}}}, False),
        ({"profile.events": {"$count": {"where": {"type": "rate"}, "eq": 2}}}, True),
        (
            {
                "profile.events": {
                    "$count": {
                        "where": {"type": "rate", "timestamp": {"$within_days": 30}},
                        "gte": 1,
                        "lt": 2,
                    }
                }
            },
            True,
        ),
        ({"profile.missing": {"$count": {"lte": 0}}}, True),  # a missing list counts 0
        ({"profile.missing": {"$count": {"gte": 1}}}, False),
        ({"profile.attributes.state": {"$count": {"gte": 0}}}, False),  # not a list
        ({"profile.last_event_at.rate": {"$within_days": 30}}, True),
        ({"profile.last_event_at.rate": {"$within_days": 7}}, False),
        ({"profile.last_event_at.like": {"$within_days": 30}}, False),
        ({"profile.event_counts.rate": {"$gte": 2}}, True),
        ({"profile.items": {"$in": ["3"]}}, True),
        ({"profile.events.0.type": "view"}, True),  # newest first
    ],
)
def test_event_operators_and_derived_fields(condition: dict, expected: bool) -> None:
    assert matches(condition, profile=_events_profile()) is expected


# --- validation --------------------------------------------------------------------------


def test_an_unknown_operator_names_the_rule_and_the_path() -> None:
    data = {
        "version": 1,
        "rules": [
            rule("a"),
            rule("b"),
            rule("ny-winter", when={"$and": [{A + "state": "NY"}, {"$gtt": 3}]}),
        ],
    }
    assert problems(data) == ["rules[2].when.$and[1]: unknown operator $gtt (rule 'ny-winter')"]


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        ({A + "age": {"$gtt": 3}}, "when.profile.attributes.age: unknown operator $gtt"),
        ({"$gt": 3}, "when: $gt applies to a field"),
        ({"$and": {A + "age": 1}}, "when.$and: $and takes a list of conditions"),
        ({"$nor": "x"}, "when.$nor: $nor takes a list of conditions"),
        ({A + "tags": {"$eq": ["a"]}}, "$eq compares scalars; a list or an object never matches"),
        ({A + "age": {"$type": "int"}}, "$type expects one of array, boolean"),
        ({A + "age": {"$vgt": [1]}}, "$vgt expects a version string, not a list"),
        ({"$or": ["x"]}, "when.$or[0]: a condition must be an object, not a string"),
        ({"$not": [1]}, "when.$not: a condition must be an object, not a list"),
        ({"profle.attributes.state": "NY"}, "when: unknown field 'profle.attributes.state'"),
        ({"state": "NY"}, "when: unknown field 'state'"),
        ({"profile..state": "NY"}, "when: invalid field path 'profile..state'"),
        ({"now.hour": 3}, "when: 'now.hour': now is a date-time and has no fields"),
        (
            {A + "state": {"$in": "NY"}},
            "when.profile.attributes.state.$in: $in expects a list, not a string",
        ),
        (
            {A + "state": {"$nin": 3}},
            "when.profile.attributes.state.$nin: $nin expects a list, not a number",
        ),
        (
            {A + "age": {"$gt": [1]}},
            "when.profile.attributes.age.$gt: $gt expects a number or a string",
        ),
        (
            {A + "age": {"$lt": True}},
            "when.profile.attributes.age.$lt: $lt expects a number or a string",
        ),
        ({A + "age": {"$exists": "yes"}}, "$exists expects true or false, not a string"),
        (
            {A + "x": {"$regex": "("}},
            "when.profile.attributes.x.$regex: invalid regular expression '('",
        ),
        ({A + "x": {"$regex": 5}}, "$regex expects a string, not a number"),
        (
            {A + "x": {"$regex": "a", "$options": "q"}},
            "when.profile.attributes.x.$options: $options takes letters",
        ),
        ({A + "x": {"$options": "i"}}, "when.profile.attributes.x.$options: $options needs $regex"),
        ({A + "t": {"$within_days": -1}}, "$within_days expects a positive number of days, not -1"),
        ({A + "t": {"$within_days": "30"}}, "$within_days expects a number of days, not a string"),
        ({A + "t": {"$within_days": True}}, "$within_days expects a number of days, not a boolean"),
        ({"profile.events": {"$count": {"where": {"type": "rate"}}}}, "$count needs a bound"),
        ({"profile.events": {"$count": {"at_least": 1}}}, "$count: unknown key 'at_least'"),
        (
            {"profile.events": {"$count": {"gte": -1}}},
            "when.profile.events.$count.gte: a count bound",
        ),
        ({"profile.events": {"$count": {"gte": 1.5}}}, "a count bound is a whole number"),
        (
            {"profile.events": {"$elemMatch": {"type": {"$bad": 1}}}},
            "when.profile.events.$elemMatch.type: unknown operator $bad",
        ),
        ({A + "age": {"$gt": 1, "plain": 2}}, "mixes operators and plain keys (plain)"),
        ({A + "age": {"$and": [{}]}}, "$and combines whole conditions"),
        ({"$where": "1"}, "when: unknown operator $where"),
    ],
)
def test_invalid_conditions_are_rejected_with_their_path(when: dict, expected: str) -> None:
    found = problems({"version": 1, "rules": [rule("r1", when=when)]})
    assert len(found) == 1
    assert found[0].startswith(f"rules[0].{expected}") or expected in found[0], found
    assert found[0].endswith("(rule 'r1')")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"version": 1, "rules": [rule(then=[{"type": "show_content", "blockid": "x"}])]},
            [
                "rules[0].then[0].block_id: required field is missing (rule 'r')",
                "rules[0].then[0].blockid: unknown field (rule 'r')",
            ],
        ),
        (
            {"version": 1, "rules": [rule(then=[{"type": "boost", "categories": ["x"]}])]},
            [
                "rules[0].then[0]: unknown action type 'boost' (one of boost_categories, exclude_categories, exclude_items, filter_categories, pin_items, show_content) (rule 'r')"
            ],
        ),
        (
            {"version": 1, "rules": [rule(then=[{"categories": ["x"]}])]},
            [
                "rules[0].then[0]: an action needs a type (one of boost_categories, exclude_categories, exclude_items, filter_categories, pin_items, show_content) (rule 'r')"
            ],
        ),
        (
            {
                "version": 1,
                "rules": [
                    rule(then=[{"type": "boost_categories", "categories": ["x"], "weight": "high"}])
                ],
            },
            ["rules[0].then[0].weight: Input should be a valid number, got \"high\" (rule 'r')"],
        ),
        (
            {
                "version": 1,
                "rules": [rule(then=[{"type": "exclude_categories", "categories": []}])],
            },
            [
                "rules[0].then[0].categories: List should have at least 1 item after validation, not 0 (rule 'r')"
            ],
        ),
        (
            {
                "version": 1,
                "rules": [rule(then=[{"type": "pin_items", "items": ["1"], "position": 0}])],
            },
            [
                "rules[0].then[0].position: Input should be greater than or equal to 1, got 0 (rule 'r')"
            ],
        ),
        (
            {"version": 1, "rules": [rule(then=[])]},
            ["rules[0].then: List should have at least 1 item after validation, not 0 (rule 'r')"],
        ),
        (
            {"version": 1, "rules": [rule(priority="high")]},
            ["rules[0].priority: Input should be a valid integer, got \"high\" (rule 'r')"],
        ),
        (
            {"version": 1, "rules": [rule(priority=1.5)]},
            ["rules[0].priority: Input should be a valid integer, got 1.5 (rule 'r')"],
        ),
        (
            {"version": 1, "rules": [rule(stop="yes")]},
            ["rules[0].stop: Input should be a valid boolean, got \"yes\" (rule 'r')"],
        ),
        (
            {"version": 1, "rules": [rule(id="has space")]},
            [
                "rules[0].id: String should match pattern '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$', got \"has space\" (rule 'has space')"
            ],
        ),
        ({"version": 1, "rules": [rule(when_="x")]}, ["rules[0].when_: unknown field (rule 'r')"]),
        (
            {"version": 1, "rules": [rule(when=[1])]},
            ["rules[0].when: Input should be a valid dictionary (rule 'r')"],
        ),
        (
            {"version": 1, "rules": [rule(active={"from": "2026-12-02", "until": "2026-12-01"})]},
            ["rules[0].active.until: must be after from (rule 'r')"],
        ),
        (
            {"version": 1, "rules": [rule(active={"from": "soon"})]},
            [
                "rules[0].active.from: Input should be a valid datetime or date, input is too short, got \"soon\" (rule 'r')"
            ],
        ),
        (
            {"version": 1, "rules": [rule(active={"since": "2026-12-01"})]},
            ["rules[0].active.since: unknown field (rule 'r')"],
        ),
        ({"version": 2, "rules": []}, ["version: Input should be 1, got 2"]),
        ({"rules": []}, ["version: required field is missing"]),
        ({"version": 1, "rules": [], "comment": "x"}, ["comment: unknown field"]),
        ([], ["<file>: Input should be a valid dictionary or instance of RulesDocument"]),
        (
            {"version": 1, "rules": [rule("a"), rule("b"), rule("a")]},
            ["rules[2].id: duplicate rule id 'a' (first at rules[0])"],
        ),
    ],
)
def test_invalid_files_are_rejected_with_every_problem_and_its_path(
    data: Any, expected: list[str]
) -> None:
    assert problems(data) == expected


def test_several_problems_are_reported_together() -> None:
    data = {
        "version": 1,
        "rules": [
            rule("good"),
            rule("bad-op", when={A + "age": {"$gtt": 3}}),
            rule("bad-action", then=[{"type": "pin_items", "items": ["1"], "at": 2}]),
        ],
    }
    assert problems(data) == [
        "rules[1].when.profile.attributes.age: unknown operator $gtt (rule 'bad-op')",
        "rules[2].then[0].at: unknown field (rule 'bad-action')",
    ]


def test_invalid_json_names_the_line_and_column() -> None:
    with pytest.raises(RulesError, match=r"rules.json:\n  - invalid JSON at line 2 column 1"):
        RuleSet.from_json('{"version": 1,\n}', "rules.json")


def test_item_ids_may_be_written_as_numbers_and_naive_windows_are_utc() -> None:
    loaded = ruleset(
        rule(
            then=[{"type": "pin_items", "items": [50, "181"]}],
            active={"from": "2026-12-01", "until": "2027-03-01T00:00:00"},
        )
    )
    only = loaded.rules[0]
    assert only.then[0].items == ["50", "181"]
    assert only.active.from_ == datetime(2026, 12, 1, tzinfo=UTC)
    assert only.active.until == datetime(2027, 3, 1, tzinfo=UTC)


# --- active window, priority, stop, slots --------------------------------------------------


def test_the_active_window_includes_from_and_excludes_until() -> None:
    start, end = datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 3, 1, tzinfo=UTC)
    windowed = ruleset(rule(active={"from": start.isoformat(), "until": end.isoformat()}))
    tick = timedelta(microseconds=1)
    assert windowed.evaluate({}, {}, start - tick).rule_ids == ()
    assert windowed.evaluate({}, {}, start).rule_ids == ("r",)
    assert windowed.evaluate({}, {}, end - tick).rule_ids == ("r",)
    assert windowed.evaluate({}, {}, end).rule_ids == ()
    assert windowed.evaluate({}, {}, (end - tick).replace(tzinfo=None)).rule_ids == (
        "r",
    )  # naive now is UTC
    opened = ruleset(rule(active={"from": start.isoformat()}))
    assert opened.evaluate({}, {}, start + timedelta(days=10_000)).rule_ids == ("r",)
    assert opened.evaluate({}, {}, start - tick).rule_ids == ()
    closing = ruleset(rule(active={"until": end.isoformat()}))
    assert closing.evaluate({}, {}, datetime(1990, 1, 1, tzinfo=UTC)).rule_ids == ("r",)


def test_rules_run_by_priority_then_file_order() -> None:
    loaded = ruleset(
        rule("p5-first", priority=5),
        rule("p10", priority=10),
        rule("p5-second", priority=5),
        rule("p-1", priority=-1),
        rule("p1", priority=1),
    )
    assert loaded.ids == ("p10", "p5-first", "p5-second", "p1", "p-1")
    assert loaded.evaluate({}, {}, NOW).rule_ids == loaded.ids
    # evaluate() also takes a plain list of rules, ordering it the same way
    assert rules.evaluate(list(reversed(loaded.rules)), {}, {}, NOW).rule_ids[0] == "p10"


def test_stop_halts_lower_priority_rules_only_when_its_rule_matched() -> None:
    young = {"attributes": {"age": 15}}
    loaded = ruleset(
        rule("stopper-nomatch", priority=100, stop=True, when={A + "age": {"$gt": 60}}),
        rule("stopper-inactive", priority=90, stop=True, active={"until": "2000-01-01T00:00:00Z"}),
        rule("stopper-other-slot", priority=80, stop=True, slot="banner"),
        rule("stopper", priority=50, stop=True, when={A + "age": {"$lt": 18}}),
        rule("same-priority-later", priority=50),
        rule("low", priority=1),
    )
    assert loaded.evaluate(young, {}, NOW).rule_ids == ("stopper",)
    assert loaded.evaluate({"attributes": {"age": 30}}, {}, NOW).rule_ids == (
        "same-priority-later",
        "low",
    )
    assert loaded.evaluate(young, {}, NOW, slot="banner").rule_ids == ("stopper-other-slot",)


def test_slot_rules_apply_only_to_their_slot_and_unslotted_rules_to_all() -> None:
    loaded = ruleset(
        rule("everywhere"), rule("banner-only", slot="banner"), rule("hero-only", slot="hero")
    )
    assert loaded.evaluate({}, {}, NOW).rule_ids == ("everywhere",)
    assert loaded.evaluate({}, {}, NOW, slot="banner").rule_ids == ("everywhere", "banner-only")
    assert loaded.evaluate({}, {}, NOW, slot="hero").rule_ids == ("everywhere", "hero-only")


# --- merging -----------------------------------------------------------------------------


def _boost(categories: list[str], weight: float) -> dict:
    return {"type": "boost_categories", "categories": categories, "weight": weight}


def test_higher_priority_wins_every_conflict_and_exclusions_add_up() -> None:
    decision = ruleset(
        rule(
            "low",
            priority=1,
            then=[
                {"type": "show_content", "block_id": "promo", "payload": {"from": "low"}},
                {"type": "show_content", "block_id": "footer", "payload": [1, 2]},
                _boost(["Comedy", "Drama"], 0.1),
                {"type": "filter_categories", "categories": ["Drama"]},
                {"type": "exclude_categories", "categories": ["Horror", "War"]},
                {"type": "pin_items", "items": ["1"]},
                {"type": "exclude_items", "items": ["2", "3"]},
            ],
        ),
        rule(
            "high",
            priority=9,
            then=[
                {"type": "show_content", "block_id": "promo", "payload": {"from": "high"}},
                _boost(["Comedy"], 0.5),
                {"type": "filter_categories", "categories": ["Comedy", "Romance"]},
                {"type": "exclude_categories", "categories": ["Horror"]},
                {"type": "exclude_items", "items": ["1"]},
                {"type": "pin_items", "items": ["2", "4"], "position": 3},
            ],
        ),
    ).evaluate({}, {}, NOW)
    assert decision.rule_ids == ("high", "low")
    assert [(c.block_id, c.payload, c.rule_id) for c in decision.content] == [
        ("promo", {"from": "high"}, "high"),
        ("footer", [1, 2], "low"),
    ]
    assert {c: (b.weight, b.rule_id) for c, b in decision.boosts.items()} == {
        "Comedy": (0.5, "high"),
        "Drama": (0.1, "low"),
    }
    assert decision.category_filter.categories == {"Comedy", "Romance"}
    assert decision.category_filter.rule_id == "high"
    assert {c: s.rule_id for c, s in decision.excluded_categories.items()} == {
        "Horror": "high",
        "War": "low",
    }
    # item 1: excluded by high, so low's pin is dropped; item 2: pinned by high, so low's
    # exclusion is dropped; pins of one action take consecutive positions
    assert [(p.item_id, p.position, p.rule_id) for p in decision.pins] == [
        ("2", 3, "high"),
        ("4", 4, "high"),
    ]
    assert {i: s.rule_id for i, s in decision.excluded_items.items()} == {"1": "high", "3": "low"}
    assert json.loads(json.dumps(decision.as_dict()))["boosts"]["Comedy"] == {
        "weight": 0.5,
        "rule_id": "high",
    }


def test_a_rule_that_raises_is_reported_and_treated_as_not_matching() -> None:
    class Exploding(Mapping):
        def __getitem__(self, key: str) -> Any:
            raise RuntimeError("store unavailable")

        def __iter__(self) -> Iterator[str]:
            return iter(["age"])

        def __len__(self) -> int:
            return 1

    loaded = ruleset(rule("needs-age", priority=2, when={A + "age": {"$gte": 18}}), rule("always"))
    decision = loaded.evaluate({"attributes": Exploding()}, {}, NOW)
    assert decision.rule_ids == ("always",)
    assert decision.errors == ("needs-age: RuntimeError: store unavailable",)


# --- apply -------------------------------------------------------------------------------

CATEGORIES = {
    "a": ["Drama"],
    "b": ["Comedy"],
    "c": ["Comedy", "Romance"],
    "d": ["Horror"],
    "e": [],
    "p": ["Horror", "Comedy"],
}


def _apply(then_by_rule: list[tuple[str, int, list]], items, scores, **kwargs):
    loaded = ruleset(*(rule(i, priority=p, then=then) for i, p, then in then_by_rule))
    return rules.apply(loaded.evaluate({}, {}, NOW), items, scores, CATEGORIES, **kwargs)


def test_apply_without_rules_keeps_the_model_ranking() -> None:
    items, scores, reasons = rules.apply(
        rules.Decision(), ["a", "b", "f"], [3, np.float32(2.5), 1], CATEGORIES
    )
    assert (items, scores, reasons) == (["a", "b", "f"], [3.0, 2.5, 1.0], ["model"] * 3)
    assert all(type(s) is float for s in scores)


def test_apply_filters_excludes_and_honours_the_callers_exclusions() -> None:
    items, _, reasons = _apply(
        [("f", 5, [{"type": "filter_categories", "categories": ["Comedy", "Drama"]}])],
        ["a", "b", "c", "d", "e"],
        [5, 4, 3, 2, 1],
        exclude={"b"},
    )
    assert items == ["a", "c"]
    assert reasons == ["model", "model"]
    items, _, _ = _apply(
        [
            (
                "x",
                5,
                [
                    {"type": "exclude_categories", "categories": ["Romance"]},
                    {"type": "exclude_items", "items": ["a"]},
                ],
            )
        ],
        ["a", "b", "c", "d", "e", "b"],
        [5, 4, 3, 2, 1, 0],
    )
    assert items == ["b", "d", "e"]  # a duplicate candidate appears once


def test_boosts_add_to_scores_reorder_and_explain() -> None:
    items, scores, reasons = _apply(
        [("weekend", 1, [_boost(["Comedy"], 0.1)]), ("romance", 7, [_boost(["Romance"], 0.5)])],
        ["a", "b", "c", "d"],
        [0.5, 0.45, 0.1, 0.45],
    )
    assert items == ["c", "b", "a", "d"]
    assert scores == pytest.approx([0.7, 0.55, 0.5, 0.45])
    assert reasons == ["rule:romance", "rule:weekend", "model", "model"]
    # ties keep the model's order; a negative weight demotes
    items, _, reasons = _apply(
        [("demote", 1, [_boost(["Drama"], -1)])], ["a", "b", "e"], [1, 0.5, 0.5]
    )
    assert items == ["b", "e", "a"]
    assert reasons == ["model", "model", "rule:demote"]


def test_pins_take_their_positions_in_priority_order() -> None:
    items, scores, reasons = _apply(
        [
            ("promo", 9, [{"type": "pin_items", "items": ["new"], "position": 2}]),
            ("lower", 3, [{"type": "pin_items", "items": ["c", "late"], "position": 2}]),
            ("far", 1, [{"type": "pin_items", "items": ["way-down"], "position": 50}]),
        ],
        ["a", "b", "c", "e"],
        [4, 3, 2, 1],
    )
    # new (not a candidate) takes position 2; c (a candidate) and late follow it
    assert items == ["a", "new", "c", "late", "b", "e", "way-down"]
    assert scores == [4.0, None, 2.0, None, 3.0, 1.0, None]
    assert reasons == ["model", "pinned", "pinned", "pinned", "model", "model", "pinned"]


def test_pins_and_removals_are_settled_by_priority() -> None:
    pin_p = {"type": "pin_items", "items": ["p"]}  # p is Horror and Comedy
    no_horror = {"type": "exclude_categories", "categories": ["Horror"]}
    only_drama = {"type": "filter_categories", "categories": ["Drama"]}  # a is Drama, b Comedy

    def ranked(*then_by_rule: tuple[str, int, list], exclude: tuple[str, ...] = ()) -> list[str]:
        return _apply(list(then_by_rule), ["a", "b"], [2, 1], exclude=exclude)[0]

    assert ranked(("safety", 9, [no_horror]), ("promo", 1, [pin_p])) == ["a", "b"]
    assert ranked(("safety", 1, [no_horror]), ("promo", 9, [pin_p])) == ["p", "a", "b"]
    assert ranked(("drama", 9, [only_drama]), ("promo", 1, [pin_p])) == ["a"]
    assert ranked(("drama", 1, [only_drama]), ("promo", 9, [pin_p])) == ["p", "a"]
    # within one rule removal wins; the caller's exclusions (seen items) beat every pin
    assert ranked(("both", 5, [pin_p, no_horror])) == ["a", "b"]
    assert ranked(("promo", 9, [pin_p]), exclude=("p",)) == ["a", "b"]


def test_apply_checks_that_scores_match_items() -> None:
    with pytest.raises(ValueError, match="2 items but 1 scores"):
        rules.apply(rules.Decision(), ["a", "b"], [1.0], {})


# --- the profile document ----------------------------------------------------------------


def test_profile_document_derives_fields_as_of_now() -> None:
    events = [
        {
            "event_type": EventType.RATE,
            "item_id": 50,
            "timestamp": NOW - timedelta(days=40),
            "value": np.int64(5),
        },
        {
            "type": "rate",
            "item_id": "181",
            "timestamp": (NOW - timedelta(days=3)).isoformat(),
            "value": 4.0,
        },
        {
            "type": "view",
            "item_id": "7",
            "timestamp": np.datetime64("2026-12-11T00:00:00"),
            "value": float("nan"),
        },
        {
            "type": "view",
            "item_id": "50",
            "timestamp": pd.Timestamp("2026-12-12 11:00"),
            "categories": ["Drama"],
        },
        {"type": "purchase", "item_id": "9", "timestamp": NOW + timedelta(seconds=1)},  # future
        {"type": "click", "item_id": None, "timestamp": None},
    ]
    document = rules.profile_document(
        {"age": np.int64(24), "state": "NY", "zip_hash": None, "score": np.float64("nan")},
        events,
        NOW,
        item_categories={"50": ["Action", "Sci-Fi"], "181": ["Action"]},
    )
    assert document["attributes"] == {"age": 24, "state": "NY", "zip_hash": None, "score": None}
    assert type(document["attributes"]["age"]) is int
    assert [(e["type"], e["item_id"]) for e in document["events"]] == [
        ("view", "50"),
        ("view", "7"),
        ("rate", "181"),
        ("rate", "50"),
        ("click", None),
    ]
    assert document["events"][0]["timestamp"] == datetime(2026, 12, 12, 11, tzinfo=UTC)
    assert document["events"][0]["categories"] == ["Drama"]  # given ones win over the lookup
    assert document["events"][2]["categories"] == ["Action"]
    assert document["events"][1]["value"] is None
    assert document["events"][3]["value"] == 5 and type(document["events"][3]["value"]) is int
    assert document["last_event_at"] == {
        "view": datetime(2026, 12, 12, 11, tzinfo=UTC),
        "rate": NOW - timedelta(days=3),
    }
    assert document["last_seen_at"] == datetime(2026, 12, 12, 11, tzinfo=UTC)
    assert document["event_counts"] == {"view": 2, "rate": 2, "click": 1}
    assert document["event_count"] == 5
    assert document["items"] == ["50", "7", "181"]
    assert document["category_counts"] == {"Drama": 1, "Action": 2, "Sci-Fi": 1}
    empty = rules.profile_document(None, [], NOW)
    assert empty["last_seen_at"] is None and empty["events"] == [] and empty["attributes"] == {}


class _CountingEvents(list):
    """Events that count how often they are read through."""

    reads = 0

    def __iter__(self):
        type(self).reads += 1
        return super().__iter__()


def test_a_lazy_profile_document_equals_the_eager_one_and_reads_events_only_when_asked() -> None:
    events = _CountingEvents([
        {"type": "rate", "item_id": "50", "timestamp": NOW - timedelta(days=2), "value": 5.0},
        {"type": "view", "item_id": "7", "timestamp": NOW - timedelta(days=1), "value": None},
    ])  # fmt: skip
    categories = {"50": ["Action"], "7": ["Drama"]}
    eager = rules.profile_document({"state": "NY"}, events, NOW, item_categories=categories)
    _CountingEvents.reads = 0
    lazy = rules.profile_document(
        {"state": "NY"}, events, NOW, item_categories=categories, lazy=True
    )
    by_state = rules.RuleSet.from_data({"version": 1, "rules": [
        {"id": "ny", "when": {"profile.attributes.state": "NY"},
         "then": [{"type": "boost_categories", "categories": ["Drama"], "weight": 0.1}]},
    ]})  # fmt: skip
    assert by_state.evaluate(lazy, {}, NOW).rule_ids == ("ny",)
    assert _CountingEvents.reads == 0  # attributes alone: the events were never read
    assert dict(lazy) == eager and lazy.get("no-such-field") is None
    assert _CountingEvents.reads == 1  # derived once, whatever is read afterwards
    recent = rules.RuleSet.from_data({"version": 1, "rules": [
        {"id": "recent", "when": {"profile.last_event_at.view": {"$within_days": 2}},
         "then": [{"type": "boost_categories", "categories": ["Drama"], "weight": 0.1}]},
    ]})  # fmt: skip
    fresh = rules.profile_document({}, events, NOW, item_categories=categories, lazy=True)
    assert recent.evaluate(fresh, {}, NOW).rule_ids == ("recent",)


def test_profile_document_rejects_events_it_cannot_read() -> None:
    with pytest.raises(
        ValueError, match=r"events\[1\]\.timestamp: expected a date-time, not int 881250949"
    ):
        rules.profile_document(
            {}, [{"type": "rate", "timestamp": NOW}, {"type": "rate", "timestamp": 881250949}], NOW
        )
    with pytest.raises(
        ValueError, match=r"events\[0\]\.timestamp: 'yesterday' is not an ISO date-time"
    ):
        rules.profile_document({}, [{"type": "rate", "timestamp": "yesterday"}], NOW)
    with pytest.raises(ValueError, match=r"events\[0\]: an event needs a type"):
        rules.profile_document({}, [{"item_id": "1", "timestamp": NOW}], NOW)


# --- hot reload --------------------------------------------------------------------------


def _write(path: Path, data: Any, mtime: int) -> None:
    """Write a rules file and give it a distinct modification time (seconds)."""
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    os.utime(path, ns=(mtime * 10**9, mtime * 10**9))


def _file(*ids: str) -> dict:
    return {"version": 1, "rules": [rule(i) for i in ids]}


def test_a_rules_file_reloads_when_it_changes_and_keeps_the_last_good_rules(tmp_path: Path) -> None:
    path = tmp_path / "rules.json"
    _write(path, _file("one"), 1_000)
    watched = RulesFile(path, interval=0)
    assert watched.current().ids == ("one",)
    assert watched.generation == 1 and watched.last_error is None

    _write(path, _file("two", "three"), 2_000)
    assert watched.current().ids == ("two", "three")
    assert watched.generation == 2

    # a typo: the service keeps answering with the last good rules
    _write(path, '{"version": 1, "rules": [', 3_000)
    assert watched.current().ids == ("two", "three")
    assert "invalid JSON at line 1" in watched.last_error
    assert watched.current().ids == ("two", "three")  # not re-read until it changes again
    assert watched.generation == 2

    broken = _file("two")
    broken["rules"][0]["when"] = {A + "state": {"$gtt": 1}}
    _write(path, broken, 4_000)
    assert watched.current().ids == ("two", "three")
    assert (
        "rules[0].when.profile.attributes.state: unknown operator $gtt (rule 'two')"
        in watched.last_error
    )

    _write(path, _file("four"), 5_000)
    assert watched.current().ids == ("four",)
    assert watched.last_error is None and watched.generation == 3
    status = watched.status()
    assert status["rules"] == 1 and status["generation"] == 3 and status["last_error"] is None

    # deleted: keep the rules and say so; restored: the error clears
    path.unlink()
    assert watched.current().ids == ("four",)
    assert "cannot read" in watched.last_error
    _write(path, _file("four"), 5_000)
    assert watched.current().ids == ("four",)
    assert watched.last_error is None


def test_changes_are_looked_for_at_most_every_interval(tmp_path: Path) -> None:
    clock = [100.0]
    path = tmp_path / "rules.json"
    _write(path, _file("one"), 1_000)
    watched = RulesFile(path, interval=5, clock=lambda: clock[0])
    _write(path, _file("two"), 2_000)
    clock[0] = 104.9
    assert watched.current().ids == ("one",)
    clock[0] = 105.0
    assert watched.current().ids == ("two",)
    _write(path, _file("three"), 3_000)
    assert watched.reload() is True  # forced, whatever the interval
    assert watched.current().ids == ("three",)
    assert watched.reload() is False  # nothing changed


def test_an_invalid_file_at_start_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "rules.json"
    _write(path, {"version": 1, "rules": [rule(priority="x")]}, 1_000)
    with pytest.raises(RulesError, match=r"rules\[0\]\.priority"):
        RulesFile(path)
    with pytest.raises(RulesError, match=r"absent\.json:\n  - cannot read: No such file"):
        RulesFile(tmp_path / "absent.json")


def test_a_folder_of_rule_files_loads_and_reloads_as_one_set(tmp_path: Path) -> None:
    folder = tmp_path / "rules"
    folder.mkdir()
    _write(folder / "b.json", {"version": 1, "rules": [rule("b1", priority=5), rule("b2")]}, 1_000)
    _write(folder / "a.json", {"version": 1, "rules": [rule("a1"), rule("a2", priority=5)]}, 1_000)
    (folder / ".draft.json").write_text("{ not json")  # editors' hidden files are ignored
    (folder / "notes.txt").write_text("ignored")
    watched = RulesFile(folder, interval=0)
    # priority first; ties in file-name order, then each file's own order
    assert watched.current().ids == ("a2", "b1", "a1", "b2")

    _write(folder / "c.json", _file("c1"), 2_000)
    assert watched.current().ids == ("a2", "b1", "a1", "b2", "c1")

    _write(folder / "d.json", _file("a1"), 3_000)
    assert watched.current().ids == ("a2", "b1", "a1", "b2", "c1")
    assert "d.json: duplicate rule id 'a1' (also in a.json)" in watched.last_error

    (folder / "d.json").unlink()
    (folder / "c.json").unlink()
    assert watched.current().ids == ("a2", "b1", "a1", "b2")
    assert watched.last_error is None

    _write(folder / "e.json", {"version": 1, "rules": [rule("e1", when={"$nope": 1})]}, 4_000)
    with pytest.raises(
        RulesError, match=r"e\.json: rules\[0\]\.when: unknown operator \$nope \(rule 'e1'\)"
    ):
        RuleSet.load(folder)


# --- the shipped example on MovieLens 100K -------------------------------------------------


def test_the_shipped_rules_are_valid_and_packaged() -> None:
    shipped = RuleSet.load(rules.SHIPPED_RULES_DIR)
    assert set(shipped.ids) == {"winter-promotion-ny", "no-horror-under-18", "weekend-comedy"}
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert "rules/*.json" in pyproject["tool"]["setuptools"]["package-data"]["bespoke.serving"]


@pytest.fixture(scope="module")
def movielens(datasets_dir: Path) -> dict[str, Any]:
    folder = datasets_dir / "ml-100k"
    users = pd.read_csv(
        folder / "u.user",
        sep="|",
        header=None,
        names=["user_id", "age", "gender", "occupation", "zip"],
        dtype={"zip": str},
    )
    users = users.join(geo.locate_series(users["zip"]))
    ratings = pd.read_csv(
        folder / "u.data", sep="\t", header=None, names=["user_id", "item_id", "rating", "unix"]
    )
    ratings["timestamp"] = pd.to_datetime(ratings["unix"], unit="s", utc=True)
    genres = [line.split("|")[0] for line in (folder / "u.genre").read_text().splitlines() if line]
    items = pd.read_csv(folder / "u.item", sep="|", header=None, encoding="latin-1")
    flags = items.iloc[:, 5 : 5 + len(genres)].to_numpy()
    categories = {
        str(i): [g for g, f in zip(genres, row, strict=True) if f]
        for i, row in zip(items[0], flags, strict=True)
    }
    return {"users": users.set_index("user_id"), "ratings": ratings, "categories": categories}


def _document(movielens: dict, user_id: int, now: datetime, extra: list[dict] = ()) -> dict:
    attributes = movielens["users"].loc[
        user_id, ["age", "gender", "occupation", "state", "region", "country"]
    ]
    own = movielens["ratings"][movielens["ratings"]["user_id"] == user_id]
    events = [
        {"type": "rate", "item_id": item, "timestamp": ts, "value": value}
        for item, ts, value in zip(own["item_id"], own["timestamp"], own["rating"], strict=True)
    ]
    return rules.profile_document(
        attributes.to_dict(), [*events, *extra], now, item_categories=movielens["categories"]
    )


def _recent_rating(now: datetime, days: float = 3) -> dict:
    return {"type": "rate", "item_id": "50", "timestamp": now - timedelta(days=days), "value": 5}


def _shows_promotion(decision: rules.Decision) -> bool:
    return "winter-promotion" in [c.block_id for c in decision.content]


def test_the_winter_promotion_is_shown_to_a_recently_active_new_yorker(movielens: dict) -> None:
    shipped = RuleSet.load(rules.SHIPPED_RULES_DIR)
    users = movielens["users"]
    new_yorker = int(users.index[users["state"] == "NY"][0])
    californian = int(users.index[users["state"] == "CA"][0])

    decision = shipped.evaluate(
        _document(movielens, new_yorker, NOW, [_recent_rating(NOW)]), {}, NOW
    )
    assert _shows_promotion(decision)
    assert "winter-promotion-ny" in decision.rule_ids
    assert decision.content[0].payload["title"] == "Winter movie nights"

    # their real ratings are from 1997-98: not "in the last 30 days"
    assert not _shows_promotion(shipped.evaluate(_document(movielens, new_yorker, NOW), {}, NOW))
    # 31 days ago is too long ago
    assert not _shows_promotion(
        shipped.evaluate(_document(movielens, new_yorker, NOW, [_recent_rating(NOW, 31)]), {}, NOW)
    )
    # not from New York
    assert not _shows_promotion(
        shipped.evaluate(_document(movielens, californian, NOW, [_recent_rating(NOW)]), {}, NOW)
    )
    # outside the winter window
    spring = datetime(2027, 3, 1, tzinfo=UTC)
    assert not _shows_promotion(
        shipped.evaluate(
            _document(movielens, new_yorker, spring, [_recent_rating(spring)]), {}, spring
        )
    )


def test_the_winter_promotion_reaches_exactly_the_new_yorkers(movielens: dict) -> None:
    shipped = RuleSet.load(rules.SHIPPED_RULES_DIR)
    users = movielens["users"]
    shown = {
        int(user_id)
        for user_id in users.index
        if _shows_promotion(
            shipped.evaluate(
                _document(movielens, int(user_id), NOW, [_recent_rating(NOW)]), {}, NOW
            )
        )
    }
    expected = set(users.index[users["state"] == "NY"].astype(int))
    assert len(expected) > 10
    assert shown == expected


def test_the_promotion_condition_follows_real_rating_times(movielens: dict) -> None:
    # The same rule without its window, at a moment inside MovieLens' own time span: only
    # New Yorkers whose last real rating before that moment is within 30 days qualify.
    data = json.loads((rules.SHIPPED_RULES_DIR / "winter_promotion.json").read_text())
    [winter] = [r for r in data["rules"] if r["id"] == "winter-promotion-ny"]
    del winter["active"]
    timeless = RuleSet.from_data({"version": 1, "rules": [winter]})
    moment = datetime(1998, 3, 1, tzinfo=UTC)
    ratings = movielens["ratings"]
    last = ratings[ratings["timestamp"] <= moment].groupby("user_id")["timestamp"].max()
    recent = set(last.index[last >= moment - timedelta(days=30)])
    users = movielens["users"]
    expected = {int(u) for u in users.index[users["state"] == "NY"] if u in recent}
    assert expected, "some New Yorkers rated in February 1998"
    shown = {
        int(user_id)
        for user_id in users.index[users["state"] == "NY"]
        if timeless.evaluate(_document(movielens, int(user_id), moment), {}, moment).rule_ids
    }
    assert shown == expected


def test_minors_never_get_horror_and_weekends_favour_comedy(movielens: dict) -> None:
    shipped = RuleSet.load(rules.SHIPPED_RULES_DIR)
    users, ratings, categories = movielens["users"], movielens["ratings"], movielens["categories"]
    popular = ratings["item_id"].value_counts().index[:200].astype(str).tolist()
    scores = np.linspace(1.0, 0.0, len(popular)).tolist()
    assert any("Horror" in categories[i] for i in popular)
    minor = int(users.index[users["age"] < 18][0])
    adult = int(users.index[users["age"] >= 30][0])

    for now in (NOW, WEDNESDAY):
        decision = shipped.evaluate(_document(movielens, minor, now), {}, now)
        assert decision.rule_ids[0] == "no-horror-under-18"
        items, _, _ = rules.apply(decision, popular, scores, categories)
        assert not any("Horror" in categories[i] for i in items)
        assert len(items) == sum("Horror" not in categories[i] for i in popular)

    weekend = shipped.evaluate(_document(movielens, adult, NOW), {}, NOW)
    assert weekend.rule_ids == ("weekend-comedy",)
    items, boosted, reasons = rules.apply(weekend, popular, scores, categories)
    assert any("Horror" in categories[i] for i in items)
    for item, score, reason in zip(items, boosted, reasons, strict=True):
        comedy = "Comedy" in categories[item]
        assert reason == ("rule:weekend-comedy" if comedy else "model")
        assert score == pytest.approx(scores[popular.index(item)] + (0.1 if comedy else 0.0))
    first_comedy = next(i for i in popular if "Comedy" in categories[i])
    assert items.index(first_comedy) < popular.index(first_comedy)

    weekday = shipped.evaluate(_document(movielens, adult, WEDNESDAY), {}, WEDNESDAY)
    assert weekday.rule_ids == ()
    assert rules.apply(weekday, popular, scores, categories)[0] == popular


def test_rules_read_a_persons_scores() -> None:
    now = datetime(2026, 12, 5, tzinfo=UTC)
    scores = {"segment": "Lapsed one-time buyers", "segments": ["Big spenders"],
              "churn_probability": 0.8, "expected_value": 12.5}  # fmt: skip
    lapsed = rules.compile_condition({"profile.segment": "Lapsed one-time buyers",
                                "profile.churn_probability": {"$gte": 0.5},
                                "profile.segments": {"$in": ["Big spenders"]}})  # fmt: skip
    for lazy in (False, True):
        document = rules.profile_document({}, [], now, lazy=lazy, scores=scores)
        assert lapsed({"profile": document}, now)
        unscored = rules.profile_document({}, [], now, lazy=lazy)
        assert not lapsed({"profile": unscored}, now)
        assert unscored["segment"] is None and unscored["segments"] == []
