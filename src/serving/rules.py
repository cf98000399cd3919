"""JSON business rules: what marketers change without a deploy.

A rules file is JSON validated by pydantic (unknown fields are errors)::

    {"version": 1,
     "rules": [
       {"id": "winter-promotion-ny",
        "description": "...",
        "priority": 100,                      # higher first; ties keep file order
        "active": {"from": "2026-12-01T00:00:00Z", "until": "2027-03-01T00:00:00Z"},
        "slot": "banner",                     # optional: only this personalize slot
        "when": {"profile.attributes.state": "NY",
                 "profile.last_event_at.rate": {"$within_days": 30}},
        "then": [{"type": "show_content", "block_id": "winter-promotion", "payload": {}}],
        "stop": false}]}

**Conditions** follow GrowthBook's condition language (:mod:`bespoke.serving.conditions`,
one evaluator for rules and experiment targeting) over one document per request::

    {"profile": profile_document(...), "context": {...request context...}, "now": now}

Field keys are dotted paths starting with ``profile.``, ``context.`` or ``now``
(``profile.attributes.state``, ``context.channel``; a number indexes a list). A plain value
means strict equality; an object of operators means all of them hold. Besides GrowthBook's
operators, two extensions read a person's events: ``$within_days: N`` (the date-time at
the path lies in the last N days) and ``$count: {"where": condition, "gte": n}``.

"Rated something in the last 30 days" is ``{"profile.last_event_at.rate": {"$within_days":
30}}`` (a derived field, constant time), or equivalently over the raw events
``{"profile.events": {"$elemMatch": {"type": "rate", "timestamp": {"$within_days": 30}}}}``;
"at least 3 purchases in 90 days" is ``{"profile.events": {"$count": {"where": {"type":
"purchase", "timestamp": {"$within_days": 90}}, "gte": 3}}}``. A person's segments are a
list: ``{"profile.segments": {"$in": ["Loyal"]}}``. ``context.day_of_week`` (``"monday"``
… ``"sunday"``) and ``context.hour`` default to ``now``'s (UTC) when the caller does not
send them.

Conditions are checked when the file loads — an unknown operator, a wrong operand type, a
bad regular expression or an unknown path root is an error naming the path, e.g.
``rules[2].when.$and[1]: unknown operator $gtt (rule 'ny-winter')`` — and compiled once
into Python closures, so evaluation does no parsing.

**Actions**: ``show_content {block_id, payload}``, ``boost_categories {categories,
weight}`` (weight added to the score of items in those categories), ``filter_categories
{categories}`` (only items in at least one of them), ``exclude_categories {categories}``,
``pin_items {items, position=1}`` (1 = first), ``exclude_items {items}``.

**Merging** (:func:`evaluate`): rules are tried in priority order (higher first, ties in
file order); a rule counts when it has no ``slot`` or the one asked for, ``now`` is in its
active window (``from`` inclusive, ``until`` exclusive) and its condition matches. A
matching rule with ``stop: true`` ends the evaluation. Among matched rules the
higher-priority one wins every conflict: one payload per content block, one weight per
boosted category (an item in several boosted categories gets the sum of their weights), one
category filter, and for each item the highest-priority rule that pins or removes it (an
item exclusion, a category exclusion, or a filter it fails) decides; on a tie within one
rule, removal wins. Exclusions from different rules add up. :func:`apply` carries the
decision out on a ranked candidate list.
"""

from __future__ import annotations

import json
import logging
import math
import operator
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    PrivateAttr,
    StrictBool,
    StrictInt,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from bespoke.serving.conditions import (
    MISSING,
    ROOTS,
    ConditionError,
    Predicate,
    aware,
    compile_condition,
    eval_condition,
    join_path,
    parse_datetime,
)
from bespoke.serving.watched import WatchedFile, json_files

__all__ = [
    "ROOTS",
    "ConditionError",
    "Predicate",
    "RuleSet",
    "RulesError",
    "RulesFile",
    "compile_condition",
    "eval_condition",
]

logger = logging.getLogger(__name__)

#: The folder of rule files shipped with the package (the MovieLens examples).
SHIPPED_RULES_DIR = Path(__file__).with_name("rules")

DAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


class RulesError(ValueError):
    """An invalid rules file (or folder): ``problems`` lists each one with its path."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = list(problems)
        listed = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid rules in {source}:\n{listed}")


# --- the rules file schema ---------------------------------------------------------------


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else aware(value)


def _id_from_number(value: Any) -> Any:
    """Item ids may be written as JSON numbers; they are compared as strings."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


RuleId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")]
Name = Annotated[str, StringConstraints(min_length=1, max_length=256)]
ItemId = Annotated[str, BeforeValidator(_id_from_number), StringConstraints(min_length=1)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ActiveWindow(_Model):
    """When a rule is active: ``from`` (inclusive) to ``until`` (exclusive), either open."""

    from_: datetime | None = Field(default=None, alias="from")
    until: datetime | None = None

    _to_utc = field_validator("from_", "until")(_utc)

    @model_validator(mode="after")
    def _ordered(self) -> ActiveWindow:
        if self.from_ is not None and self.until is not None and self.from_ >= self.until:
            raise PydanticCustomError(
                "bespoke_path", "{message}", {"path": "until", "message": "must be after from"}
            )
        return self

    def contains(self, now: datetime) -> bool:
        return (self.from_ is None or self.from_ <= now) and (
            self.until is None or now < self.until
        )


class ShowContent(_Model):
    """Show a content block (a banner, a message) with any JSON payload."""

    type: Literal["show_content"]
    block_id: Name
    payload: JsonValue = None


class BoostCategories(_Model):
    """Add ``weight`` to the score of items in any of ``categories`` (negative demotes)."""

    type: Literal["boost_categories"]
    categories: list[Name] = Field(min_length=1)
    weight: Annotated[float, Field(strict=True, allow_inf_nan=False)]


class FilterCategories(_Model):
    """Keep only items in at least one of ``categories``."""

    type: Literal["filter_categories"]
    categories: list[Name] = Field(min_length=1)


class ExcludeCategories(_Model):
    """Remove items in any of ``categories``."""

    type: Literal["exclude_categories"]
    categories: list[Name] = Field(min_length=1)


class PinItems(_Model):
    """Put ``items`` at ``position`` (1 = first) and after, in order, candidates or not."""

    type: Literal["pin_items"]
    items: list[ItemId] = Field(min_length=1)
    position: Annotated[StrictInt, Field(ge=1)] = 1


class ExcludeItems(_Model):
    """Remove ``items``."""

    type: Literal["exclude_items"]
    items: list[ItemId] = Field(min_length=1)


Action = Annotated[
    ShowContent | BoostCategories | FilterCategories | ExcludeCategories | PinItems | ExcludeItems,
    Field(discriminator="type"),
]
ACTION_TYPES = frozenset(
    {
        "show_content",
        "boost_categories",
        "filter_categories",
        "exclude_categories",
        "pin_items",
        "exclude_items",
    }
)


class Rule(_Model):
    """One rule; ``when`` is compiled once, when the rule is validated."""

    id: RuleId
    description: str = ""
    priority: StrictInt = 0
    active: ActiveWindow | None = None
    slot: Name | None = None
    when: dict[str, JsonValue] = Field(default_factory=dict)
    then: list[Action] = Field(min_length=1)
    stop: StrictBool = False

    _predicate: Predicate | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _compile(self) -> Rule:
        try:
            self._predicate = compile_condition(self.when)
        except ConditionError as error:
            raise PydanticCustomError(
                "bespoke_path",
                "{message}",
                {
                    "path": join_path("when", error.path) if error.path else "when",
                    "message": error.message,
                },
            ) from None
        return self

    def matches(self, document: Mapping[str, Any], now: datetime) -> bool:
        """Whether ``when`` holds for ``document`` (ignores the active window and slot)."""
        return self._predicate(document, now) is True

    def is_active(self, now: datetime) -> bool:
        return self.active is None or self.active.contains(now)


class RulesDocument(_Model):
    """A whole rules file."""

    version: Literal[1]
    rules: list[Rule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_ids(self) -> RulesDocument:
        first: dict[str, int] = {}
        for i, rule in enumerate(self.rules):
            if rule.id in first:
                raise PydanticCustomError(
                    "bespoke_path",
                    "{message}",
                    {
                        "path": f"rules[{i}].id",
                        "message": f"duplicate rule id {rule.id!r} (first at rules[{first[rule.id]}])",
                    },
                )
            first[rule.id] = i
        return self


def _location(loc: Sequence[Any]) -> str:
    path = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            path += f"[{part}]"
        elif (
            i >= 2 and loc[i - 2] == "then" and isinstance(loc[i - 1], int) and part in ACTION_TYPES
        ):
            continue  # the union's tag: the action's own fields follow
        else:
            path = join_path(path, str(part))
    return path


def _problems(error: ValidationError, data: Any) -> list[str]:
    problems = []
    for item in error.errors():
        loc = list(item["loc"])
        context = item.get("ctx") or {}
        path = _location(loc)
        if item["type"] == "bespoke_path":
            path = join_path(path, context["path"]) if path else context["path"]
            message = context["message"]
        elif item["type"] == "extra_forbidden":
            message = "unknown field"
        elif item["type"] == "missing":
            message = "required field is missing"
        elif item["type"] == "union_tag_invalid":
            message = (
                f"unknown action type {context.get('tag')!r} "
                f"(one of {', '.join(sorted(ACTION_TYPES))})"
            )
        elif item["type"] == "union_tag_not_found":
            message = f"an action needs a type (one of {', '.join(sorted(ACTION_TYPES))})"
        else:
            message = item["msg"]
            value = item.get("input")
            if isinstance(value, str | int | float | bool) or value is None:
                message += f", got {json.dumps(value)}"
        rule_id = None
        if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
            try:
                rule_id = data["rules"][loc[1]].get("id")
            except (KeyError, IndexError, TypeError, AttributeError):
                rule_id = None
        suffix = f" (rule {rule_id!r})" if isinstance(rule_id, str) else ""
        problems.append(f"{path or '<file>'}: {message}{suffix}")
    return problems


# --- rule sets ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RuleSet:
    """Validated, compiled rules in evaluation order (priority high → low, then file order)."""

    rules: tuple[Rule, ...] = ()
    sources: tuple[str, ...] = ()

    @classmethod
    def from_data(cls, data: Any, source: str = "<rules>") -> RuleSet:
        """Rules from a parsed JSON document; :class:`RulesError` lists every problem."""
        try:
            document = RulesDocument.model_validate(data)
        except ValidationError as error:
            raise RulesError(source, _problems(error, data)) from None
        return cls._ordered(document.rules, (source,))

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "<rules>") -> RuleSet:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise RulesError(
                source, [f"invalid JSON at line {error.lineno} column {error.colno}: {error.msg}"]
            ) from None
        except UnicodeDecodeError as error:
            raise RulesError(source, [f"not UTF-8 text: {error}"]) from None
        return cls.from_data(data, source)

    @classmethod
    def load(cls, path: str | Path) -> RuleSet:
        """A rules file, or every ``*.json`` file of a folder (by name; rule ids unique
        across them)."""
        path = Path(path)
        if path.is_dir():
            return cls._load_folder(path)
        try:
            text = path.read_bytes()
        except OSError as error:
            raise RulesError(str(path), [f"cannot read: {error.strerror or error}"]) from None
        return cls.from_json(text, str(path))

    @classmethod
    def _load_folder(cls, folder: Path) -> RuleSet:
        problems: list[str] = []
        rules: list[Rule] = []
        where: dict[str, str] = {}
        files = json_files(folder)
        for file in files:
            try:
                loaded = cls.load(file)
            except RulesError as error:
                problems.extend(f"{file.name}: {p}" for p in error.problems)
                continue
            for rule in loaded.rules:
                if rule.id in where:
                    problems.append(
                        f"{file.name}: duplicate rule id {rule.id!r} (also in {where[rule.id]})"
                    )
                where.setdefault(rule.id, file.name)
            # each file's rules are already in its order; the stable sort keeps file order
            rules.extend(loaded.rules)
        if problems:
            raise RulesError(str(folder), problems)
        return cls._ordered(rules, tuple(str(f) for f in files))

    @classmethod
    def _ordered(cls, rules: Iterable[Rule], sources: tuple[str, ...]) -> RuleSet:
        return cls(tuple(sorted(rules, key=lambda r: -r.priority)), sources)

    def __len__(self) -> int:
        return len(self.rules)

    def __iter__(self):
        return iter(self.rules)

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(r.id for r in self.rules)

    def unknown_segments(self, known: Collection[str]) -> list[str]:
        """A problem per segment name a rule's condition names (``profile.segment`` or
        ``profile.segments``) that is not among ``known``: such a rule could never match."""
        problems = []
        for rule in self.rules:
            for path, name in _segment_names(rule.when, "when"):
                if name not in known:
                    problems.append(
                        f"rule {rule.id!r}: {path}: unknown segment {name!r} (the segments are "
                        f"{', '.join(sorted(known)) or 'none: train them first'})"
                    )
        return problems

    def check_segments(self, known: Collection[str] | None, source: str) -> RuleSet:
        """Self, or :class:`RulesError` when a rule names an unknown segment (no check
        when ``known`` is None: nothing is known of the dataset's segments)."""
        if known is not None:
            problems = self.unknown_segments(known)
            if problems:
                raise RulesError(source, problems)
        return self

    def evaluate(
        self,
        profile: Mapping[str, Any] | None,
        context: Mapping[str, Any] | None,
        now: datetime,
        *,
        slot: str | None = None,
    ) -> Decision:
        return evaluate(self, profile, context, now, slot=slot)


#: Where a person's segments are in the rules' profile document.
SEGMENT_PATHS = ("profile.segment", "profile.segments")


def _segment_names(node: Any, path: str) -> Iterator[tuple[str, str]]:
    """``(path, name)`` of every literal segment name in a condition."""
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        where = join_path(path, key)
        if key in SEGMENT_PATHS:
            yield from _literals(value, where)
        elif key in ("$and", "$or", "$nor") and isinstance(value, list):
            for index, sub in enumerate(value):
                yield from _segment_names(sub, f"{where}[{index}]")
        elif key == "$not":
            yield from _segment_names(value, where)


def _literals(spec: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(spec, str):
        yield path, spec
    elif isinstance(spec, list):
        yield from ((f"{path}[{i}]", v) for i, v in enumerate(spec) if isinstance(v, str))
    elif isinstance(spec, dict):
        for op, operand in spec.items():
            where = join_path(path, op)
            if op in ("$eq", "$ne") and isinstance(operand, str):
                yield where, operand
            elif op in ("$in", "$nin", "$all") and isinstance(operand, list):
                yield from (
                    (f"{where}[{i}]", v) for i, v in enumerate(operand) if isinstance(v, str)
                )
            elif op in ("$elemMatch", "$not"):
                yield from _literals(operand, where)


# --- decisions ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ContentBlock:
    block_id: str
    payload: Any
    rule_id: str


@dataclass(frozen=True, slots=True)
class Boost:
    category: str
    weight: float
    rule_id: str
    rank: int  # position of the rule among the matched ones (0 = highest priority)


@dataclass(frozen=True, slots=True)
class Source:
    """Which matched rule said so, and its rank (0 = highest priority)."""

    rule_id: str
    rank: int


@dataclass(frozen=True, slots=True)
class CategoryFilter:
    categories: frozenset[str]
    rule_id: str
    rank: int


@dataclass(frozen=True, slots=True)
class Pin:
    item_id: str
    position: int  # 1 = first
    rule_id: str
    rank: int


@dataclass(frozen=True)
class Decision:
    """What the matched rules say, merged (see the module docstring)."""

    rule_ids: tuple[str, ...] = ()
    content: tuple[ContentBlock, ...] = ()
    boosts: Mapping[str, Boost] = field(default_factory=dict)
    category_filter: CategoryFilter | None = None
    excluded_categories: Mapping[str, Source] = field(default_factory=dict)
    pins: tuple[Pin, ...] = ()
    excluded_items: Mapping[str, Source] = field(default_factory=dict)
    errors: tuple[str, ...] = ()  # rules whose condition raised (treated as not matching)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view (for logs, debugging and the service's explanations)."""
        return {
            "rule_ids": list(self.rule_ids),
            "content": [
                {"block_id": c.block_id, "payload": c.payload, "rule_id": c.rule_id}
                for c in self.content
            ],
            "boosts": {
                c: {"weight": b.weight, "rule_id": b.rule_id} for c, b in self.boosts.items()
            },
            "filter": None
            if self.category_filter is None
            else {
                "categories": sorted(self.category_filter.categories),
                "rule_id": self.category_filter.rule_id,
            },
            "excluded_categories": {c: s.rule_id for c, s in self.excluded_categories.items()},
            "pins": [
                {"item_id": p.item_id, "position": p.position, "rule_id": p.rule_id}
                for p in self.pins
            ],
            "excluded_items": {i: s.rule_id for i, s in self.excluded_items.items()},
            "errors": list(self.errors),
        }


def request_document(
    profile: Mapping[str, Any] | None, context: Mapping[str, Any] | None, now: datetime
) -> dict[str, Any]:
    """What a condition reads for one request (rules and experiment targeting alike):
    ``{"profile": …, "context": …, "now": …}``, the context's day and hour defaulted from
    ``now`` (UTC) when the caller did not send its own."""
    now = aware(now)
    ctx = dict(context) if context else {}
    ctx.setdefault("day_of_week", DAY_NAMES[now.weekday()])
    ctx.setdefault("hour", now.hour)
    return {"profile": profile if profile is not None else {}, "context": ctx, "now": now}


def evaluate(
    rules: RuleSet | Iterable[Rule],
    profile: Mapping[str, Any] | None,
    context: Mapping[str, Any] | None,
    now: datetime,
    *,
    slot: str | None = None,
) -> Decision:
    """The merged decision of the rules that apply to this person, request and moment.

    ``profile`` is a :func:`profile_document`; ``context`` the request's context. A rule
    with a ``slot`` applies only when ``slot`` equals it; rules without one always apply.
    A rule whose condition raises (it should not: type mismatches are no match) is logged,
    listed in ``errors`` and treated as not matching.
    """
    now = aware(now)
    ordered = (
        rules.rules if isinstance(rules, RuleSet) else sorted(rules, key=lambda r: -r.priority)
    )
    document = request_document(profile, context, now)

    matched: list[str] = []
    content: dict[str, ContentBlock] = {}
    boosts: dict[str, Boost] = {}
    category_filter: CategoryFilter | None = None
    excluded_categories: dict[str, Source] = {}
    pins: dict[str, Pin] = {}
    excluded_items: dict[str, Source] = {}
    errors: list[str] = []

    for rule in ordered:
        if rule.slot is not None and rule.slot != slot:
            continue
        if not rule.is_active(now):
            continue
        try:
            hit = rule._predicate(document, now)
        except Exception as error:  # a rule must never take a request down
            logger.warning("rule %s failed: %s: %s", rule.id, type(error).__name__, error)
            errors.append(f"{rule.id}: {type(error).__name__}: {error}")
            continue
        if not hit:
            continue
        rank = len(matched)
        matched.append(rule.id)
        for action in rule.then:
            if isinstance(action, ShowContent):
                content.setdefault(
                    action.block_id, ContentBlock(action.block_id, action.payload, rule.id)
                )
            elif isinstance(action, BoostCategories):
                for category in action.categories:
                    boosts.setdefault(category, Boost(category, action.weight, rule.id, rank))
            elif isinstance(action, FilterCategories):
                if category_filter is None:
                    category_filter = CategoryFilter(frozenset(action.categories), rule.id, rank)
            elif isinstance(action, ExcludeCategories):
                for category in action.categories:
                    excluded_categories.setdefault(category, Source(rule.id, rank))
            elif isinstance(action, PinItems):
                for offset, item in enumerate(action.items):
                    if item not in pins and item not in excluded_items:
                        pins[item] = Pin(item, action.position + offset, rule.id, rank)
            elif isinstance(action, ExcludeItems):
                for item in action.items:
                    if item not in pins:
                        excluded_items.setdefault(item, Source(rule.id, rank))
        if rule.stop:
            break

    return Decision(
        rule_ids=tuple(matched),
        content=tuple(content.values()),
        boosts=boosts,
        category_filter=category_filter,
        excluded_categories=excluded_categories,
        pins=tuple(pins.values()),
        excluded_items=excluded_items,
        errors=tuple(errors),
    )


def _removed_by(decision: Decision, item: str, categories: Collection[str]) -> int | None:
    """The rank of the highest-priority rule removing ``item``, or None."""
    rank = None
    source = decision.excluded_items.get(item)
    if source is not None:
        rank = source.rank
    if decision.excluded_categories:
        for category in categories:
            source = decision.excluded_categories.get(category)
            if source is not None and (rank is None or source.rank < rank):
                rank = source.rank
    chosen = decision.category_filter
    if chosen is not None and chosen.categories.isdisjoint(categories):
        rank = chosen.rank if rank is None else min(rank, chosen.rank)
    return rank


def apply(
    decision: Decision,
    items: Sequence[str],
    scores: Sequence[float],
    item_categories: Mapping[str, Collection[str]],
    *,
    exclude: Collection[str] = (),
) -> tuple[list[str], list[float | None], list[str]]:
    """Apply a decision to a ranked candidate list (best first).

    Removes excluded and filtered-out items and those in ``exclude`` (seen, or excluded
    by the request: these beat pins too), adds boosts to scores and re-sorts by the
    boosted score (stable; without boosts the order is kept), then places pins at their
    positions (pinned candidates move, other pinned items are inserted). Returns
    ``(items, scores, reasons)``: a score is the boosted one, the model's for a pinned
    candidate, None for a pinned non-candidate; a reason is ``"model"``,
    ``"rule:<id>"`` (boosted; the highest-priority boosting rule) or ``"pinned"``. Pins can
    make the list longer than the input: the caller cuts it to ``k``.
    """
    if len(items) != len(scores):
        raise ValueError(f"{len(items)} items but {len(scores)} scores")
    banned = set(exclude)
    pins = {pin.item_id: pin for pin in decision.pins}
    model_score: dict[str, float] = {}
    kept: list[tuple[str, float | None, str]] = []
    no_categories: tuple[str, ...] = ()
    for item, score in zip(items, scores, strict=True):
        if item in model_score or item in banned:
            continue
        model_score[item] = float(score)
        if item in pins:
            continue
        categories = item_categories.get(item, no_categories)
        if _removed_by(decision, item, categories) is not None:
            continue
        value, reason = float(score), "model"
        if decision.boosts:
            best: Boost | None = None
            for category in set(categories):
                boost = decision.boosts.get(category)
                if boost is not None:
                    value += boost.weight
                    if best is None or boost.rank < best.rank:
                        best = boost
            if best is not None:
                reason = f"rule:{best.rule_id}"
        kept.append((item, value, reason))
    if decision.boosts:
        kept.sort(key=lambda row: -row[1])  # stable: ties keep the model's order

    previous = -1
    for pin in sorted(pins.values(), key=lambda p: (p.position, p.rank)):
        if pin.item_id in banned:
            continue
        removed = _removed_by(decision, pin.item_id, item_categories.get(pin.item_id, ()))
        if removed is not None and removed <= pin.rank:
            continue
        index = min(max(pin.position - 1, previous + 1), len(kept))
        kept.insert(index, (pin.item_id, model_score.get(pin.item_id), "pinned"))
        previous = index
    return [r[0] for r in kept], [r[1] for r in kept], [r[2] for r in kept]


# --- the profile document ----------------------------------------------------------------


def _plain(value: Any) -> Any:
    """A value as plain JSON-like Python: numpy scalars unwrapped, NaN/NaT/NA → None."""
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, datetime):
        return None if value != value else aware(value)
    if isinstance(value, date):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset | np.ndarray):
        return [_plain(v) for v in value]
    try:
        if value != value:  # NaN-like
            return None
    except (TypeError, ValueError):  # pandas NA refuses to be a bool
        return None
    return value


def _event_time(value: Any, where: str) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, np.datetime64):
        value = value.astype("datetime64[us]").item()
        return None if value is None else value.replace(tzinfo=UTC)
    if isinstance(value, datetime):
        return None if value != value else aware(value)
    if isinstance(value, str):
        moment = parse_datetime(value)
        if moment is not None:
            return moment
        raise ValueError(f"{where}: {value!r} is not an ISO date-time")
    if _plain(value) is None:
        return None
    raise ValueError(
        f"{where}: expected a date-time, not {type(value).__name__} {value!r} "
        "(convert unix times with datetime.fromtimestamp(t, UTC))"
    )


def profile_document(
    profile_attributes: Mapping[str, Any] | None,
    events: Iterable[Mapping[str, Any]],
    now: datetime,
    *,
    item_categories: Mapping[str, Collection[str]] | None = None,
    lazy: bool = False,
    scores: Mapping[str, Any] | None = None,
) -> Mapping[str, Any]:
    """The ``profile`` document rules see, as of ``now``.

    ``events`` are mappings with ``type`` (or ``event_type``), ``item_id``, ``timestamp``
    (datetime, ISO string or numpy datetime64; naive is UTC), ``value`` and ``categories``
    (else looked up in ``item_categories``). Events after ``now`` are left out (not known
    yet). The document::

        {"attributes": {...},                      # as given, numpy/NaN normalised
         "events": [{"type", "item_id", "timestamp", "value", "categories"}, ...],
                                                   # newest first, unknown times last
         "last_event_at": {"rate": datetime, ...}, # per event type
         "last_seen_at": datetime | None,          # any event
         "event_counts": {"rate": 12, ...},
         "event_count": 12,
         "items": ["50", "181", ...],              # distinct items, newest first
         "category_counts": {"Comedy": 3, ...},
         "segment": "Lapsed one-time buyers",      # the person's scores (``scores``;
         "segments": ["Big spenders"],             #  None and [] when not scored)
         "churn_probability": 0.42,
         "expected_value": 31.5}

    ``lazy``: a :class:`ProfileDocument` whose event-derived fields are computed when a
    rule first reads one of them (most rule sets read only attributes, and reading the
    events is most of the cost of a request's rules); an event it cannot read then
    fails that rule, not the call. The service's events come from its own store.
    """
    now = aware(now)
    attributes = {str(k): _plain(v) for k, v in (profile_attributes or {}).items()}
    scored = {**_NO_SCORES, **{k: v for k, v in (scores or {}).items() if k in _NO_SCORES}}
    if lazy:
        return ProfileDocument(attributes, events, now, item_categories, scored)
    return {"attributes": attributes, **_from_events(events, now, item_categories), **scored}


#: A person's scores in the profile document, and their values when not scored.
_NO_SCORES: dict[str, Any] = {
    "segment": None, "segments": [], "churn_probability": None, "expected_value": None,
}  # fmt: skip
SCORE_FIELDS = tuple(_NO_SCORES)


#: The fields of a profile document (:func:`profile_document`).
PROFILE_FIELDS = (
    "attributes", "events", "last_event_at", "last_seen_at", "event_counts", "event_count",
    "items", "category_counts", *SCORE_FIELDS,
)  # fmt: skip


class ProfileDocument(Mapping[str, Any]):
    """A :func:`profile_document` whose fields other than ``attributes`` are derived from
    the events on first read, once."""

    __slots__ = ("_attributes", "_categories", "_derived", "_events", "_now", "_scores")

    def __init__(
        self,
        attributes: dict[str, Any],
        events: Iterable[Mapping[str, Any]],
        now: datetime,
        item_categories: Mapping[str, Collection[str]] | None,
        scores: Mapping[str, Any] | None = None,
    ) -> None:
        self._attributes, self._events, self._now = attributes, events, now
        self._categories = item_categories
        self._scores = scores if scores is not None else _NO_SCORES
        self._derived: dict[str, Any] | None = None

    def __getitem__(self, key: str) -> Any:
        if key == "attributes":
            return self._attributes
        if key in self._scores:
            return self._scores[key]
        if key not in PROFILE_FIELDS:
            raise KeyError(key)
        if self._derived is None:
            self._derived = _from_events(self._events, self._now, self._categories)
        return self._derived[key]

    def __iter__(self) -> Iterator[str]:
        return iter(PROFILE_FIELDS)

    def __len__(self) -> int:
        return len(PROFILE_FIELDS)


def _from_events(
    events: Iterable[Mapping[str, Any]],
    now: datetime,
    item_categories: Mapping[str, Collection[str]] | None,
) -> dict[str, Any]:
    """The fields of a profile document derived from the events, as of ``now``."""
    rows: list[dict[str, Any]] = []
    lookup = item_categories.get if item_categories is not None else None
    timeless = False  # whether some event has no known time
    # Every request builds this over up to 500 events: values already plain (what the
    # online store gives) skip the general conversions.
    for i, event in enumerate(events):
        get = event.get
        kind = get("type", MISSING)
        if kind is MISSING:
            kind = get("event_type")
        if type(kind) is not str and (kind is None or _plain(kind) is None):
            raise ValueError(f"events[{i}]: an event needs a type")
        timestamp = get("timestamp")
        if type(timestamp) is not datetime or timestamp.tzinfo is None:
            timestamp = _event_time(timestamp, f"events[{i}].timestamp")
        if timestamp is None:
            timeless = True
        elif timestamp > now:
            continue
        item = get("item_id")
        if item is not None and type(item) is not str:
            item = _plain(item)
            item = None if item is None else str(item)
        value = get("value")
        if value is not None and (type(value) is not float or value != value):
            value = _plain(value)
        categories = get("categories")
        if categories is not None:
            categories = _plain(categories)
        if categories is None and lookup is not None and item is not None:
            categories = lookup(item, ())
        rows.append(
            {
                "type": str(kind),
                "item_id": item,
                "timestamp": timestamp,
                "value": value,
                "categories": [str(c) for c in categories or ()],
            }
        )
    if timeless:  # unknown times last
        oldest = datetime.min.replace(tzinfo=UTC)
        rows.sort(
            key=lambda e: (e["timestamp"] is not None, e["timestamp"] or oldest), reverse=True
        )
    else:  # the same order, without a key tuple per event
        rows.sort(key=operator.itemgetter("timestamp"), reverse=True)

    last_event_at: dict[str, datetime] = {}
    event_counts: dict[str, int] = {}
    category_counts: dict[str, int] = {}
    items: dict[str, None] = {}
    for row in rows:
        kind, timestamp = row["type"], row["timestamp"]
        event_counts[kind] = event_counts.get(kind, 0) + 1
        if timestamp is not None and kind not in last_event_at:
            last_event_at[kind] = timestamp  # newest first: the first one is the last
        if row["item_id"] is not None:
            items.setdefault(row["item_id"], None)
        for category in row["categories"]:
            category_counts[category] = category_counts.get(category, 0) + 1
    return {
        "events": rows,
        "last_event_at": last_event_at,
        "last_seen_at": rows[0]["timestamp"] if rows else None,
        "event_counts": event_counts,
        "event_count": len(rows),
        "items": list(items),
        "category_counts": category_counts,
    }


# --- hot reload --------------------------------------------------------------------------


class RulesFile(WatchedFile[RuleSet]):
    """A rules file (or folder of ``*.json`` files) that reloads itself when it changes
    (:class:`~bespoke.serving.watched.WatchedFile`): a change that does not validate keeps
    the previous rules. ``segments``: the dataset's segment names (a rule naming another
    one is refused)."""

    def __init__(
        self,
        path: str | Path,
        *,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        segments: Collection[str] | None = None,
    ) -> None:
        self.segments = segments
        super().__init__(
            path,
            lambda where: RuleSet.load(where).check_segments(segments, str(where)),
            error=RulesError,
            unreadable=lambda source, message: RulesError(source, [message]),
            what="rules",
            interval=interval,
            clock=clock,
        )

    def status(self) -> dict[str, Any]:
        return {**super().status(), "rules": len(self._value)}
