"""Conditions: GrowthBook's condition language, one evaluator for rules and targeting.

The JSON rules' ``when`` and an experiment's ``targeting`` are both conditions, evaluated
here with the semantics of GrowthBook's SDKs, so that a condition written for a GrowthBook
client in a browser or an app means the same thing in this service.
:func:`eval_condition` is the GrowthBook-style entry point (``evalCondition`` in the
SDKs); :func:`compile_condition` checks a condition once, naming the path of anything
wrong, and compiles it into closures so that a request does no parsing.

**GrowthBook's semantics** (what its cross-SDK test cases fix):

- a condition is an object; each key is a dotted field path (``profile.attributes.state``;
  a canonical number indexes a list, ``length`` is a list's length) or one of ``$and``,
  ``$or``, ``$nor`` (lists of conditions; an empty ``$or`` passes), ``$not`` (a condition),
  ``$savedGroup`` (a reference to a saved group); all keys must hold;
- a missing field reads as null; a plain value means strict equality (the JSON types must
  match: ``1`` is not ``"1"`` nor ``true``, a list equals only an equal list);
- on a field: ``$eq $ne`` (strict, on scalars), ``$gt $gte $lt $lte`` (two numbers or two
  strings only; strings by UTF-16 code units), ``$veq $vne $vgt $vgte $vlt $vlte`` (version
  strings such as ``1.2.3-rc.1``), ``$in $nin`` (membership; for a list field, any element),
  ``$ini $nini`` (case-insensitive), ``$all $alli``, ``$elemMatch``, ``$size``,
  ``$exists``, ``$type`` (``string number boolean array object null``), ``$regex
  $regexi $notRegex $notRegexi``, ``$not``, ``$inGroup $notInGroup`` (saved groups);
- a scalar operator on a list field does not look inside the list (use ``$elemMatch``,
  ``$in`` or ``$all``);
- an operator this evaluator does not know leaves the condition undecided, which does not
  match; an error while evaluating (a malformed condition) fails the whole condition.

**This project's extensions** (documented differences; a GrowthBook SDK does not know them):

- ``$within_days: N`` — the date-time at the path lies in ``[now - N days, now]``;
- ``$count: {"where": condition, "gte"|"gt"|"lte"|"lt"|"eq": n}`` — how many elements of
  the list at the path match ``where`` (a missing list counts 0);
- ``$options`` beside ``$regex`` (any of ``imsx``);
- date-times: profiles hold Python date-times (GrowthBook's attributes are JSON, so never
  do); an ISO date or date-time string operand of ``$eq $ne $gt $gte $lt $lte $in $nin``
  compares with such a value as an instant (naive means UTC), and ``now`` is the
  evaluation time;
- numpy numbers count as numbers, numpy booleans as booleans.

**Validation** (:func:`compile_condition`, used for rules and experiment files): where
GrowthBook silently evaluates a malformed condition to false (an unknown operator, ``$in``
with a non-list, a bad regular expression, ``$eq`` with a list, which never matches in
JavaScript), a file is refused with the path of the mistake, e.g.
``when.$and[1].profile.age: unknown operator $gtt``. :func:`eval_condition` is lenient, as
the SDKs are, so that it can be checked against their test cases.
"""

from __future__ import annotations

import math
import numbers
import operator
import re
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np

#: Where the field paths of a rule's ``when`` or an experiment's ``targeting`` start.
ROOTS = frozenset({"profile", "context", "now"})

#: A compiled condition: (document, now) → True, False, or None (undecided: an operator
#: this evaluator does not know, only in lenient compilation).
Predicate = Callable[[Any, datetime], bool | None]
_Test = Callable[[Any, datetime], bool | None]  # (value at a path, now) → result


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<missing>"


#: A sentinel for "absent" where absent and null differ (reading raw events).
MISSING: Any = _Missing()

#: Keys that combine whole conditions (never operators on a field's value).
CONDITION_OPERATORS = frozenset({"$and", "$or", "$nor", "$not", "$savedGroup", "$savedGroups"})
TYPE_NAMES = frozenset({"string", "number", "boolean", "array", "object", "null"})


class ConditionError(ValueError):
    """An invalid condition: ``path`` is where, relative to the condition's root."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path or '<condition>'}: {message}")
        self.path = path
        self.message = message


class _Malformed(Exception):
    """Raised while evaluating a malformed condition compiled leniently: it fails as a whole."""


def eval_condition(
    attributes: Mapping[str, Any],
    condition: Mapping[str, Any],
    saved_groups: Mapping[str, Any] | None = None,
    *,
    now: datetime | None = None,
) -> bool:
    """Whether ``attributes`` match ``condition``, as GrowthBook's ``evalCondition`` decides.

    Lenient like the SDKs: a malformed condition does not match rather than raising.
    ``saved_groups`` maps a group id to its values (a list, or ``{"type": "list",
    "values": [...]}``, or ``{"type": "condition", "condition": {...}}``).
    """
    moment = aware(now) if now is not None else datetime.now(UTC)
    try:
        predicate = compile_condition(
            condition, roots=None, saved_groups=saved_groups, strict=False
        )
        return predicate(attributes, moment) is True
    except (_Malformed, ConditionError, RecursionError, TypeError, ValueError):
        return False


def compile_condition(
    condition: Any,
    *,
    roots: Collection[str] | None = ROOTS,
    saved_groups: Mapping[str, Any] | None = None,
    strict: bool = True,
) -> Predicate:
    """Compile a condition into ``predicate(document, now) -> bool | None``.

    ``roots`` are the allowed first segments of field paths (``None``: any). Strict (the
    default) raises :class:`ConditionError` naming the path of what is wrong; lenient
    compiles what GrowthBook's SDKs would evaluate, malformed parts included.
    """
    return _Compiler(roots, saved_groups or {}, strict).node(condition, "")


# --- values ------------------------------------------------------------------------------


def join_path(path: str, part: str) -> str:
    if part.startswith("["):
        return path + part
    return f"{path}.{part}" if path else part


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
    }.get(type(value), type(value).__name__)


def aware(moment: datetime) -> datetime:
    """``moment`` as a plain aware datetime (naive means UTC; pandas Timestamps unwrapped)."""
    if type(moment) is not datetime and hasattr(moment, "to_pydatetime"):
        moment = moment.to_pydatetime()
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def parse_datetime(text: str) -> datetime | None:
    """An ISO date or date-time string as an aware datetime, else None."""
    if not 8 <= len(text) <= 40 or not text[:4].isdigit():
        return None
    try:
        return aware(datetime.fromisoformat(text))
    except ValueError:
        return None


def as_moment(value: Any) -> datetime | None:
    """A value as an aware datetime when it is one (or a date, or an ISO string), else None."""
    if isinstance(value, datetime):
        if value != value:  # pandas NaT
            return None
        return aware(value)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if isinstance(value, str):
        return parse_datetime(value)
    return None


def _is_time(value: Any) -> bool:
    return isinstance(value, date)  # datetime is a date


def is_number(value: Any) -> bool:
    kind = type(value)
    if kind is int or kind is float:
        return True
    return isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool | np.bool_)


def _is_list(value: Any) -> bool:
    return type(value) is list or type(value) is tuple


def _is_object(value: Any) -> bool:
    return isinstance(value, Mapping)


def type_name(value: Any) -> str:
    """The JSON type of a value as GrowthBook's ``$type`` names it."""
    if value is None or value is MISSING:
        return "null"
    if _is_bool(value):
        return "boolean"
    if is_number(value):
        return "number"
    if isinstance(value, str):
        return "string"
    if _is_list(value):
        return "array"
    if _is_object(value):
        return "object"
    return "unknown"


def _nan(value: Any) -> bool:
    return is_number(value) and value != value


def _json_leaf(value: Any) -> Any:
    """JSON.stringify writes NaN and ±Infinity as null."""
    if is_number(value) and not math.isfinite(value):
        return None
    return value


def _index_key(key: str) -> bool:
    return key.isascii() and key.isdigit() and (key == "0" or key[0] != "0")


def _js_keys(obj: Mapping[str, Any]) -> list[Any]:
    """Keys in JavaScript's property order: array-index keys ascending, then the rest."""
    keys = list(obj)
    indices = sorted((k for k in keys if isinstance(k, str) and _index_key(k)), key=int)
    return indices + [k for k in keys if not (isinstance(k, str) and _index_key(k))]


def deep_equal(a: Any, b: Any) -> bool:
    """Equality as GrowthBook's plain-value match decides it (JSON.stringify-equal)."""
    kind = type_name(a)
    if kind != type_name(b):
        return False
    if kind == "array":
        return len(a) == len(b) and all(
            deep_equal(_json_leaf(x), _json_leaf(y)) for x, y in zip(a, b, strict=True)
        )
    if kind == "object":
        return _js_keys(a) == _js_keys(b) and all(
            deep_equal(_json_leaf(a[k]), _json_leaf(b[k])) for k in a
        )
    if kind == "null":
        return True
    if kind == "unknown":
        return False
    return bool(a == b)


def strict_equal(a: Any, b: Any) -> bool:
    """JavaScript's ``===`` between a value and an operand from a separate JSON parse."""
    kind = type_name(a)
    if kind != type_name(b) or kind in ("array", "object", "unknown"):
        return False
    return kind == "null" or bool(a == b)


def _utf16_order(a: str, b: str) -> int:
    if a.isascii() and b.isascii():
        return (a > b) - (a < b)
    ua, ub = a.encode("utf-16-be", "surrogatepass"), b.encode("utf-16-be", "surrogatepass")
    return (ua > ub) - (ua < ub)


def _js_number_text(value: Any) -> str:
    """``String(number)`` for the numbers a version operand can hold."""
    x = float(value)
    if math.isfinite(x) and x == int(x) and abs(x) < 1e21:
        return str(int(x))
    text = repr(x)
    return text.replace("e-0", "e-").replace("e+0", "e+")


_VERSION_STRIP = re.compile(r"(^v|\+.*$)")
_VERSION_SPLIT = re.compile(r"[-.]")


def version_key(value: Any) -> str:
    """A version string padded so that string order is version order (GrowthBook's rule)."""
    if is_number(value):
        value = _js_number_text(value)
    if not value or not isinstance(value, str):
        value = "0"
    parts = _VERSION_SPLIT.split(_VERSION_STRIP.sub("", value))
    if len(parts) == 3:
        parts.append("~")  # a release sorts after its pre-releases
    return "-".join(p.rjust(5, " ") if p.isdigit() else p for p in parts)


def get_path(document: Any, path: str) -> Any:
    """The value at a dotted path, None when any step is absent (GrowthBook's ``getPath``)."""
    current = document
    for part in path.split("."):
        if isinstance(current, Mapping):
            if part not in current:
                return None
            current = current[part]
        elif _is_list(current):
            if part == "length":
                current = len(current)
            elif _index_key(part) and len(part) <= 10 and int(part) < len(current):
                current = current[int(part)]
            else:
                return None
        else:
            return None
    return current


def _getter(path: str) -> Callable[[Any], Any]:
    if "." not in path:

        def get_one(doc: Any) -> Any:
            return doc.get(path) if isinstance(doc, Mapping) else None

        return get_one
    return lambda doc: get_path(doc, path)


# --- three-valued logic -------------------------------------------------------------------


def _negate(result: bool | None) -> bool | None:
    return None if result is None else not result


def _all_of(predicates: list[Predicate]) -> Predicate:
    if not predicates:
        return lambda doc, now: True
    if len(predicates) == 1:
        return predicates[0]
    items = tuple(predicates)

    def all_hold(doc: Any, now: datetime) -> bool | None:
        result: bool | None = True
        for predicate in items:
            r = predicate(doc, now)
            if r is False:
                return False
            if r is None:
                result = None
        return result

    return all_hold


def _any_of(predicates: list[Predicate]) -> Predicate:
    if not predicates:
        return lambda doc, now: True  # GrowthBook: an empty $or passes
    items = tuple(predicates)

    def any_holds(doc: Any, now: datetime) -> bool | None:
        result: bool | None = False
        for predicate in items:
            r = predicate(doc, now)
            if r is True:
                return True
            if r is None:
                result = None
        return result

    return any_holds


def _never(value: Any, now: datetime) -> bool:
    return False


def _always(value: Any, now: datetime) -> bool:
    return True


def _undecided(value: Any, now: datetime) -> None:
    return None


# --- the compiler ---------------------------------------------------------------------------


_COMPARE = {"$gt": operator.gt, "$gte": operator.ge, "$lt": operator.lt, "$lte": operator.le}
_VERSION_COMPARE = {
    "$veq": operator.eq,
    "$vne": operator.ne,
    "$vgt": operator.gt,
    "$vgte": operator.ge,
    "$vlt": operator.lt,
    "$vlte": operator.le,
}
_REGEX_FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE}
_COUNT_BOUNDS = {
    "eq": operator.eq,
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
}


class _Compiler:
    def __init__(
        self, roots: Collection[str] | None, saved_groups: Mapping[str, Any], strict: bool
    ) -> None:
        self.roots = roots
        self.saved_groups = saved_groups
        self.strict = strict

    # errors: strict raises now; lenient fails the whole condition if evaluation gets there
    def malformed(self, path: str, message: str) -> Predicate:
        if self.strict:
            raise ConditionError(path, message)

        def fail(doc: Any, now: datetime) -> bool:
            raise _Malformed(f"{path}: {message}")

        return fail

    def invalid(self, path: str, message: str, lenient: _Test) -> _Test:
        """A mistake GrowthBook evaluates quietly (to ``lenient``); strict refuses it."""
        if self.strict:
            raise ConditionError(path, message)
        return lenient

    # conditions
    def node(self, node: Any, path: str, roots: Collection[str] | bool | None = True) -> Predicate:
        roots = self.roots if roots is True else roots
        if not isinstance(node, Mapping):
            return self.malformed(path, f"a condition must be an object, not {_kind(node)}")
        predicates: list[Predicate] = []
        for key, spec in node.items():
            here = join_path(path, key)
            if key in ("$and", "$or", "$nor"):
                predicates.append(self.combine(key, spec, here, roots))
            elif key == "$not":
                inner = self.node(spec, here, roots)
                predicates.append(lambda doc, now, inner=inner: _negate(inner(doc, now)))
            elif key == "$savedGroup":
                predicates.append(self.saved_group(spec, here, roots))
            elif key == "$savedGroups":
                predicates.append(self.invalid(here, "$savedGroups is not a condition", _never))
            elif key.startswith("$") and self.strict:
                if key in _OPERATORS or key == "$options":
                    raise ConditionError(
                        path, f'{key} applies to a field: write {{"<field>": {{"{key}": ...}}}}'
                    )
                raise ConditionError(path, f"unknown operator {key}")
            else:
                self.check_field_path(key, path, roots)
                get = _getter(key)
                test = self.spec(spec, here)
                predicates.append(lambda doc, now, get=get, test=test: test(get(doc), now))
        return _all_of(predicates)

    def combine(self, key: str, spec: Any, path: str, roots: Any) -> Predicate:
        if not isinstance(spec, list):
            if self.strict:
                raise ConditionError(path, f"{key} takes a list of conditions")
            if not spec:  # iterating an empty value finds nothing
                spec = []
            else:
                return self.malformed(path, f"{key} takes a list of conditions")
        parts = [self.node(part, join_path(path, f"[{i}]"), roots) for i, part in enumerate(spec)]
        if key == "$and":
            return _all_of(parts)
        either = _any_of(parts)
        if key == "$or":
            return either
        return lambda doc, now: _negate(either(doc, now))

    def saved_group(self, reference: Any, path: str, roots: Any) -> Predicate:
        if not isinstance(reference, Mapping) or not isinstance(reference.get("id"), str):
            return self.invalid(path, '$savedGroup takes {"id": "<group>"}', _never)
        entry = self.saved_groups.get(reference["id"])
        if isinstance(entry, Mapping) and entry.get("type") == "condition":
            condition = entry.get("condition")
            if not isinstance(condition, Mapping):
                return _never
            # a group referring to itself would recurse: guard by compiling without it
            inner = _Compiler(
                self.roots,
                {k: v for k, v in self.saved_groups.items() if k != reference["id"]},
                self.strict,
            )
            return inner.node(condition, path, roots)
        if isinstance(entry, Mapping) and entry.get("type") == "list":
            key = reference.get("attributeKey", entry.get("attributeKey"))
            values = entry.get("values")
            if not isinstance(key, str) or not isinstance(values, list):
                return _never
            member = _membership(values, insensitive=False)
            get = _getter(key)
            return lambda doc, now: member(get(doc))
        if entry is None or not isinstance(entry, Mapping):
            return _never
        return _undecided  # a group type newer than this evaluator

    def check_field_path(self, key: str, path: str, roots: Collection[str] | None) -> None:
        if not self.strict:
            return
        parts = key.split(".")
        if any(not p.strip() for p in parts):
            raise ConditionError(path, f"invalid field path {key!r}")
        if roots is None:
            return
        if parts[0] not in roots:
            allowed = ", ".join(sorted(f"{r}." if r != "now" else r for r in roots))
            raise ConditionError(path, f"unknown field {key!r}: paths start with {allowed}")
        if parts[0] == "now" and len(parts) > 1:
            raise ConditionError(path, f"{key!r}: now is a date-time and has no fields")

    # a field's test
    def spec(self, spec: Any, path: str, insensitive: bool = False) -> _Test:
        """An object of operators, or a plain value meaning strict equality."""
        if isinstance(spec, Mapping) and all(isinstance(k, str) and k[:1] == "$" for k in spec):
            tests: list[_Test] = []
            for op, operand in spec.items():
                if op == "$options" and "$regex" in spec:
                    continue
                tests.append(self.operator(op, operand, join_path(path, op), spec))
            return _all_of(tests)
        if self.strict and isinstance(spec, Mapping):
            plain = [k for k in spec if not str(k).startswith("$")]
            if len(plain) < len(spec):
                raise ConditionError(
                    path,
                    f"mixes operators and plain keys ({', '.join(map(str, plain))}); "
                    "use one or the other",
                )
        self.check_finite(spec, path)
        return _equality(spec, insensitive)

    def check_finite(self, operand: Any, path: str) -> None:
        if self.strict and isinstance(operand, float) and not math.isfinite(operand):
            raise ConditionError(path, "numbers must be finite")

    def operator(self, op: str, operand: Any, path: str, spec: Mapping[str, Any]) -> _Test:
        factory = _OPERATORS.get(op)
        if factory is not None:
            return factory(self, op, operand, path, spec)
        if op in CONDITION_OPERATORS:
            return self.invalid(
                path.rpartition(".")[0] if "." in path else path,
                f"{op} combines whole conditions; use it outside the field",
                _never,
            )
        if op == "$options":
            return self.invalid(path, "$options needs $regex beside it", _undecided)
        return self.invalid(
            path.rpartition(".")[0] if "." in path else path, f"unknown operator {op}", _undecided
        )

    def op_eq(self, op: str, operand: Any, path: str, spec: Any) -> _Test:
        if isinstance(operand, list | dict):
            return self.invalid(
                path,
                f"{op} compares scalars; a list or an object never matches it "
                "(write the value itself for equality)",
                _never if op == "$eq" else _always,
            )
        self.check_finite(operand, path)
        moment = parse_datetime(operand) if isinstance(operand, str) else None

        def equal(value: Any, now: datetime) -> bool:
            if moment is not None and _is_time(value):
                return as_moment(value) == moment
            return strict_equal(value, operand)

        if op == "$eq":
            return equal
        return lambda value, now: not equal(value, now)

    def op_compare(self, op: str, operand: Any, path: str, spec: Any) -> _Test:
        compare = _COMPARE[op]
        if _is_bool(operand) or not (is_number(operand) or isinstance(operand, str)):
            return self.invalid(
                path,
                f"{op} expects a number or a string (an ISO date-time compares with "
                f"date-times), not {_kind(operand)}",
                _never,
            )
        self.check_finite(operand, path)
        if is_number(operand):
            if operand != operand:
                return _never

            def number(value: Any, now: datetime) -> bool:
                return is_number(value) and value == value and compare(value, operand)

            return number
        moment = parse_datetime(operand)

        def text(value: Any, now: datetime) -> bool:
            if isinstance(value, str):
                return compare(_utf16_order(value, operand), 0)
            if moment is not None and _is_time(value):
                m = as_moment(value)
                return m is not None and compare(m, moment)
            return False

        return text

    def op_version(self, op: str, operand: Any, path: str, spec: Any) -> _Test:
        compare = _VERSION_COMPARE[op]
        if not (isinstance(operand, str) or (is_number(operand) and not _is_bool(operand))):
            return self.invalid(
                path,
                f"{op} expects a version string, not {_kind(operand)}",
                _always if op == "$vne" else _never,
            )
        expected = version_key(operand)
        same_kind = str if isinstance(operand, str) else None

        def version(value: Any, now: datetime) -> bool:
            orderable = isinstance(value, str) if same_kind is str else is_number(value)
            if not orderable:
                return op == "$vne"
            return compare(version_key(value), expected)

        return version

    def op_in(self, op: str, operand: Any, path: str, spec: Any) -> _Test:
        if not isinstance(operand, list):
            return self.invalid(path, f"{op} expects a list, not {_kind(operand)}", _never)
        for element in operand:
            self.check_finite(element, path)
        member = _membership(operand, insensitive=op in ("$ini", "$nini"))
        if op in ("$in", "$ini"):
            return lambda value, now: member(value)
        return lambda value, now: not member(value)

    def op_all(self, op: str, operand: Any, path: str, spec: Any) -> _Test:
        if not isinstance(operand, list):
            return self.invalid(path, f"{op} expects a list, not {_kind(operand)}", _never)
        insensitive = op == "$alli"
        tests = [
            self.spec(c, join_path(path, f"[{i}]"), insensitive) for i, c in enumerate(operand)
        ]

        def contains_all(value: Any, now: datetime) -> bool | None:
            if not _is_list(value):
                return False
            result: bool | None = True
            for test in tests:
                found: bool | None = False
                for element in value:
                    r = test(element, now)
                    if r is True:
                        found = True
                        break
                    if r is None:
                        found = None
                if found is False:
                    return False
                if found is None:
                    result = None
            return result

        return contains_all

    def op_elem_match(self, op: str, operand: Any, path: str, spec: Any) -> _Test:
        if not isinstance(operand, Mapping):
            if self.strict:
                raise ConditionError(
                    path, f"$elemMatch expects a condition (an object), not {_kind(operand)}"
                )
            inner_node = self.malformed(path, "$elemMatch expects an object")
            on_value = False
        else:
            on_value = all(isinstance(k, str) and k[:1] == "$" for k in operand) and not any(
                k in CONDITION_OPERATORS - {"$not"} for k in operand
            )
            if on_value:
                inner_test = self.spec(operand, path)
            else:
                inner_node = self.node(operand, path, None)

        def element_matches(value: Any, now: datetime) -> bool | None:
            if not _is_list(value):
                return False
            result: bool | None = False
            for element in value:
                if element is None:
                    continue
                r = inner_test(element, now) if on_value else inner_node(element, now)
                if r is True:
                    return True
                if r is None:
                    result = None
            return result

        return element_matches

    def op_size(self, op: str, operand: Any, path: str, spec: Any) -> _Test:
        inner = self.spec(operand, path)
        return lambda value, now: inner(len(value), now) if _is_list(value) else False

    def op_exists(self, op: str, operand: Any, path: str, spec: Any) -> _Test:
        if not isinstance(operand, bool):
            self.invalid(path, f"$exists expects true or false, not {_kind(operand)}", _never)
        wanted = bool(operand)
        return lambda value, now: (value is not None and value is not MISSING) is wanted

    def op_type(self, op: str, operand: Any, path: str, spec: Any) -> _Test:
        if operand not in TYPE_NAMES:
            return self.invalid(
                path,
                f"$type expects one of {', '.join(sorted(TYPE_NAMES))}, not {operand!r}",
                _never,
            )
        return lambda value, now: type_name(value) == operand

    def op_regex(self, op: str, operand: Any, path: str, spec: Mapping[str, Any]) -> _Test:
        negated = op.startswith("$not")
        otherwise = _always if negated else _never
        if not isinstance(operand, str):
            return self.invalid(path, f"{op} expects a string, not {_kind(operand)}", otherwise)
        flags = re.IGNORECASE if op.endswith("i") else 0
        if op == "$regex" and "$options" in spec:
            options = spec["$options"]
            if not isinstance(options, str) or any(c not in _REGEX_FLAGS for c in options):
                return self.invalid(
                    path.removesuffix("$regex") + "$options",
                    "$options takes letters among i, m, s, x",
                    otherwise,
                )
            for letter in options:
                flags |= _REGEX_FLAGS[letter]
        try:
            search = re.compile(operand, flags).search
        except re.error as error:
            return self.invalid(path, f"invalid regular expression {operand!r}: {error}", otherwise)
        if negated:
            return lambda value, now: not (isinstance(value, str) and search(value) is not None)
        return lambda value, now: isinstance(value, str) and search(value) is not None

    def op_not(self, op: str, operand: Any, path: str, spec: Any) -> _Test:
        inner = self.spec(operand, path)
        return lambda value, now: _negate(inner(value, now))

    def op_group(self, op: str, operand: Any, path: str, spec: Any) -> _Test:
        if not isinstance(operand, str):
            return self.invalid(
                path, f"{op} expects a saved group's id, not {_kind(operand)}", _never
            )
        entry = self.saved_groups.get(operand, [])
        if isinstance(entry, Mapping):
            if entry.get("type") not in ("list", "condition"):
                return _undecided
            entry = entry.get("values") if entry.get("type") == "list" else None
        if not isinstance(entry, list):
            return _never
        member = _membership(entry, insensitive=False)
        if op == "$inGroup":
            return lambda value, now: member(value)
        return lambda value, now: not member(value)

    # extensions
    def op_within_days(self, op: str, operand: Any, path: str, spec: Any) -> _Test:
        if _is_bool(operand) or not is_number(operand):
            return self.invalid(
                path, f"{op} expects a number of days, not {_kind(operand)}", _never
            )
        if not math.isfinite(operand) or operand <= 0:
            return self.invalid(
                path, f"{op} expects a positive number of days, not {operand}", _never
            )
        window = timedelta(days=operand)

        def within(value: Any, now: datetime) -> bool:
            m = as_moment(value)
            return m is not None and now - window <= m <= now

        return within

    def op_count(self, op: str, operand: Any, path: str, spec: Any) -> _Test:
        if not isinstance(operand, Mapping):
            return self.invalid(path, f"$count expects an object, not {_kind(operand)}", _never)
        unknown = [k for k in operand if k != "where" and k not in _COUNT_BOUNDS]
        if unknown:
            return self.invalid(
                path,
                f"$count: unknown key {unknown[0]!r} (use where, eq, gt, gte, lt, lte)",
                _never,
            )
        bounds = []
        for key, bound in operand.items():
            if key == "where":
                continue
            if _is_bool(bound) or not isinstance(bound, int) or bound < 0:
                return self.invalid(
                    join_path(path, key),
                    f"a count bound is a whole number >= 0, not {bound!r}",
                    _never,
                )
            bounds.append((_COUNT_BOUNDS[key], bound))
        if not bounds:
            return self.invalid(path, "$count needs a bound: eq, gt, gte, lt or lte", _never)
        where = self.node(operand.get("where", {}), join_path(path, "where"), None)

        def count(value: Any, now: datetime) -> bool:
            if value is None or value is MISSING:
                n = 0
            elif _is_list(value):
                n = sum(1 for element in value if where(element, now) is True)
            else:
                return False
            return all(check(n, bound) for check, bound in bounds)

        return count


def _equality(operand: Any, insensitive: bool) -> _Test:
    """A plain value: strict deep equality (date-time strings also match date-times)."""
    if operand is None:
        return lambda value, now: value is None or value is MISSING
    if isinstance(operand, str):
        moment = parse_datetime(operand)
        folded = operand.lower()

        def text(value: Any, now: datetime) -> bool:
            if isinstance(value, str):
                return value.lower() == folded if insensitive else value == operand
            if moment is not None and _is_time(value):
                return as_moment(value) == moment
            return False

        return text
    return lambda value, now: deep_equal(value, operand)


def _membership(values: list[Any], *, insensitive: bool) -> Callable[[Any], bool]:
    """``value in values`` as GrowthBook's ``isIn`` decides (strict types; lists intersect)."""
    strings: set[str] = set()
    moments: set[datetime] = set()
    numbers_: set[float] = set()
    flags: set[bool] = set()
    has_null = False
    for element in values:
        if element is None:
            has_null = True
        elif _is_bool(element):
            flags.add(bool(element))
        elif is_number(element):
            numbers_.add(element)
        elif isinstance(element, str):
            strings.add(element.lower() if insensitive else element)
            moment = parse_datetime(element)
            if moment is not None:
                moments.add(moment)
        # lists and objects inside the operand never match (JavaScript compares references)

    def member(value: Any) -> bool:
        if isinstance(value, str):
            return (value.lower() if insensitive else value) in strings
        if value is None or value is MISSING:
            return has_null
        if _is_bool(value):
            return bool(value) in flags
        if is_number(value):
            return value in numbers_
        if _is_time(value):
            m = as_moment(value)
            return m is not None and m in moments
        return False

    def run(value: Any) -> bool:
        if _is_list(value):
            return any(member(element) for element in value if not _is_list(element))
        if _is_object(value):
            return False
        return member(value)

    return run


_OPERATORS: dict[str, Callable[..., _Test]] = {
    "$eq": _Compiler.op_eq,
    "$ne": _Compiler.op_eq,
    **dict.fromkeys(_COMPARE, _Compiler.op_compare),
    **dict.fromkeys(_VERSION_COMPARE, _Compiler.op_version),
    **dict.fromkeys(("$in", "$nin", "$ini", "$nini"), _Compiler.op_in),
    "$all": _Compiler.op_all,
    "$alli": _Compiler.op_all,
    "$elemMatch": _Compiler.op_elem_match,
    "$size": _Compiler.op_size,
    "$exists": _Compiler.op_exists,
    "$type": _Compiler.op_type,
    **dict.fromkeys(("$regex", "$regexi", "$notRegex", "$notRegexi"), _Compiler.op_regex),
    "$not": _Compiler.op_not,
    "$inGroup": _Compiler.op_group,
    "$notInGroup": _Compiler.op_group,
    "$within_days": _Compiler.op_within_days,
    "$count": _Compiler.op_count,
}
#: The operators a field accepts (GrowthBook's and this project's extensions).
FIELD_OPERATORS = frozenset(_OPERATORS) | {"$options"}
