"""One SQL text for both engines: DuckDB's dialect transpiled to Spark SQL with SQLGlot.

Parameters are bound here, as literals in the syntax tree, so that a query keeps DuckDB's
placeholders (``?`` in order, ``$name`` by name) on both engines; a value is never pasted
into the text, so quoting cannot go wrong.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import sqlglot
from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.tokens import TokenType

Params = Sequence[Any] | Mapping[str, Any] | None


def literal(value: Any) -> exp.Expression:
    """``value`` as a SQL literal: text, numbers, booleans, None, lists (arrays) and
    moments (UTC timestamps; a naive one is taken as UTC)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, pd.Timestamp):
        value = value.to_pydatetime()
    if isinstance(value, dt.datetime):
        moment = value if value.tzinfo is None else value.astimezone(dt.UTC).replace(tzinfo=None)
        return exp.cast(
            exp.Literal.string(moment.isoformat(sep=" ")), exp.DataType.build("timestamp")
        )
    if isinstance(value, dt.date):
        return exp.cast(exp.Literal.string(value.isoformat()), exp.DataType.build("date"))
    if isinstance(value, (list, tuple)):
        return exp.Array(expressions=[literal(v) for v in value])
    if value is None or isinstance(value, (str, bool, int, float)):
        return exp.convert(value)
    raise TypeError(f"cannot bind a {type(value).__name__} as a SQL parameter: {value!r}")


def bind(tree: exp.Expression, params: Mapping[str, Any] | None) -> exp.Expression:
    """``tree`` with its ``$name`` placeholders replaced by ``params``' values. A missing
    or unused value is an error naming it, so a query never runs with a parameter
    silently dropped."""
    params = params or {}
    holders = list(tree.find_all(exp.Placeholder))
    if unnamed := [h for h in holders if not h.name or h.name == "?"]:
        raise ValueError(f"{len(unnamed)} positional '?' parameter(s) left unnumbered")
    wanted = {h.name for h in holders}
    missing, unused = wanted - set(params), set(params) - wanted
    if missing or unused:
        raise ValueError(
            f"query parameters: missing {sorted(missing)}, not in the query {sorted(unused)}"
        )
    for holder in holders:
        holder.replace(literal(params[holder.name]))
    return tree


def _numbered(sql: str) -> tuple[str, int]:
    """``sql`` with its positional ``?`` placeholders named ``$_0``, ``$_1``… in the order
    they are written (the syntax tree's walk order is not the text's; a ``?`` inside a
    string literal is no placeholder and stays), and how many there were."""
    out, last = [], 0
    tokens = Dialect.get_or_raise("duckdb").tokenize(sql)
    holders = [t for t in tokens if t.token_type == TokenType.PLACEHOLDER and t.text == "?"]
    for number, token in enumerate(holders):
        out += [sql[last : token.start], f"$_{number}"]
        last = token.end + 1
    return "".join([*out, sql[last:]]), len(holders)


def to_spark(sql: str, params: Params = None) -> str:
    """DuckDB SQL (with its parameters bound) as Spark SQL."""
    if params is not None and not isinstance(params, Mapping):
        sql, wanted = _numbered(sql)
        if len(params) != wanted:
            raise ValueError(f"the query has {wanted} '?' parameters, got {len(params)} values")
        params = {f"_{number}": value for number, value in enumerate(params)}
    tree = sqlglot.parse_one(sql, read="duckdb")
    return bind(tree, params).sql(dialect="spark")
