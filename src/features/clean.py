"""Standardise, flag anomalies, impute gaps — as DuckDB SQL, the same for every entity.

Every anomaly rule is a named SQL condition over one row (window functions allowed). A
flagged row goes to quarantine with its first reason (rules are checked in the order
listed) and all of them; nothing is dropped silently. Gaps in rows that pass are imputed
— numeric with the median, categorical with the mode of the clean rows, by group where
the meaning differs (a purchase's value is not a rating) — and each row records which of
its fields were imputed.

:func:`flag` and :func:`impute` apply the rules to a DataFrame (notebooks, tests; ``flag``
on either batch engine: the rules' SQL is DuckDB's, which Spark runs transpiled);
ingestion composes :func:`checks`, :func:`fill_values` and :func:`imputed_sql` into its
own queries over Arrow data.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from bespoke.engine.engines import BatchEngine, DuckDBEngine
from bespoke.features.schema import MONETARY_EVENT_TYPES, TEXT, Channel, EventType

#: How far ahead of the ingesting clock a timestamp may be before it counts as future
#: (clock skew between a sender and us).
FUTURE_TOLERANCE = timedelta(minutes=5)
#: Ages outside this range are implausible for a customer.
PLAUSIBLE_AGES = (5, 110)

#: The row's position in its batch, added by the caller: "earlier" means a lower position.
POSITION = "_pos"


def sql_literal(value: Any) -> str:
    """A Python scalar as a SQL literal."""
    if value is None:
        return "NULL"
    if isinstance(value, bool | np.bool_):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float | np.integer | np.floating):
        return repr(float(value)) if isinstance(value, float | np.floating) else str(int(value))
    return "'" + str(value).replace("'", "''") + "'"


def _in_list(values: Iterable[object]) -> str:
    return "(" + ", ".join(sql_literal(v) for v in sorted(str(v) for v in values)) + ")"


_EVENT_TYPES = _in_list(EventType)
_CHANNELS = _in_list(Channel)
_MONETARY = _in_list(MONETARY_EVENT_TYPES)


@dataclass(frozen=True)
class RuleContext:
    """What rules may need beyond the rows themselves."""

    now: datetime
    has_timestamps: bool = True
    known_items: frozenset[str] | None = None
    rating_scale: tuple[float, float] | None = None


Needs = Literal["timestamps", "known_items", "rating_scale"]


@dataclass(frozen=True)
class Rule:
    """One anomaly: a reason code, what it means, and the SQL condition that flags a row.

    ``needs`` names context without which the rule is off (a source without timestamps
    has no missing ones; without a catalog no item is unknown). The condition may use
    ``$future_limit``, ``$rating_low`` and ``$rating_high`` and the relation
    ``known_items(item_id)``.
    """

    reason: str
    description: str
    sql: str
    needs: Needs | None = None

    def applies(self, ctx: RuleContext) -> bool:
        return (
            self.needs is None
            or (self.needs == "timestamps" and ctx.has_timestamps)
            or (self.needs == "known_items" and ctx.known_items is not None)
            or (self.needs == "rating_scale" and ctx.rating_scale is not None)
        )


#: How many earlier rows of the batch share the row's key (0 for the first): supplied by
#: the caller from :func:`occurrences`, since a window over wide rows is costly.
OCCURRENCE = "_nth"


@dataclass(frozen=True)
class RuleSet:
    """The rules of one entity, checked in order, and the key whose repeats in a batch
    are exact duplicates."""

    key: str
    rules: tuple[Rule, ...]

    def __iter__(self) -> Iterator[Rule]:
        return iter(self.rules)


def occurrences(keys: pa.Array | pa.ChunkedArray | pd.Series) -> np.ndarray:
    """For each row, how many earlier rows have the same key (missing keys count too)."""
    codes, _ = pd.factorize(
        pd.Series(keys) if not isinstance(keys, pd.Series) else keys, use_na_sentinel=False
    )
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    starts = np.r_[True, sorted_codes[1:] != sorted_codes[:-1]]
    group_start = np.maximum.accumulate(np.where(starts, np.arange(len(codes)), 0))
    nth = np.empty(len(codes), dtype=np.int64)
    nth[order] = np.arange(len(codes)) - group_start
    return nth


_DUPLICATE_SQL = f"{OCCURRENCE} > 0"

EVENT_RULES = RuleSet(
    "event_id",
    (
        Rule(
            "missing_identity",
            "neither user_id nor anonymous_id",
            "user_id IS NULL AND anonymous_id IS NULL",
        ),
        Rule(
            "unknown_event_type",
            "event_type is not one of the EventType values",
            f"event_type IS NULL OR event_type NOT IN {_EVENT_TYPES}",
        ),
        Rule(
            "unknown_channel",
            "channel is not one of the Channel values",
            f"channel NOT IN {_CHANNELS}",
        ),
        Rule(
            "missing_timestamp",
            "no timestamp in a source that has them",
            '"timestamp" IS NULL',
            "timestamps",
        ),
        Rule(
            "future_timestamp",
            f"timestamp more than {FUTURE_TOLERANCE} ahead of ingestion",
            '"timestamp" > $future_limit',
        ),
        Rule(
            "unknown_item",
            "item_id is not in the dataset's catalog",
            "item_id NOT IN (SELECT item_id FROM known_items)",
            "known_items",
        ),
        Rule(
            "negative_amount",
            "negative money value or quantity",
            f"(event_type IN {_MONETARY} AND value < 0) OR quantity < 0",
        ),
        Rule(
            "zero_value_purchase",
            "a purchase worth exactly 0",
            "event_type = 'purchase' AND value = 0",
        ),
        Rule(
            "rating_out_of_range",
            "rating outside the source's scale",
            "event_type = 'rate' AND value NOT BETWEEN $rating_low AND $rating_high",
            "rating_scale",
        ),
        Rule(
            "exact_duplicate",
            "same content (same event id) as an earlier row of the same batch",
            _DUPLICATE_SQL,
        ),
    ),
)

USER_RULES = RuleSet(
    "user_id",
    (
        Rule(
            "implausible_age",
            f"age outside {PLAUSIBLE_AGES[0]}..{PLAUSIBLE_AGES[1]}",
            f"age NOT BETWEEN {PLAUSIBLE_AGES[0]} AND {PLAUSIBLE_AGES[1]}",
        ),
        Rule("exact_duplicate", "same user id as an earlier row of the same batch", _DUPLICATE_SQL),
    ),
)

ITEM_RULES = RuleSet(
    "item_id",
    (Rule("exact_duplicate", "same item id as an earlier row of the same batch", _DUPLICATE_SQL),),
)


#: Column holding a checked row's failed rules as a bit mask (0: clean).
FLAGS = "_flags"


@dataclass(frozen=True)
class Checks:
    """The rules that apply in a context, as SQL: ``flags`` gives each row a bit mask of
    its failed rules (cheap on millions of rows); ``reasons`` turns a mask back into the
    rule names, in rule order (run only on the flagged few)."""

    flags: str
    reasons: str
    params: dict[str, Any]


def checks(rules: RuleSet, ctx: RuleContext) -> Checks:
    applicable = [rule for rule in rules if rule.applies(ctx)]
    if not applicable:
        return Checks("0", "[]::VARCHAR[]", {})
    flags = " + ".join(
        f"(CASE WHEN coalesce(({rule.sql}), FALSE) THEN {1 << bit} ELSE 0 END)"
        for bit, rule in enumerate(applicable)
    )
    names = ", ".join(
        f"CASE WHEN ({FLAGS} & {1 << bit}) <> 0 THEN '{rule.reason}' END"
        for bit, rule in enumerate(applicable)
    )
    params: dict[str, Any] = {}
    if "$future_limit" in flags:
        params["future_limit"] = ctx.now + FUTURE_TOLERANCE
    if ctx.rating_scale is not None and "$rating_low" in flags:
        params["rating_low"], params["rating_high"] = ctx.rating_scale
    return Checks(f"CAST({flags} AS BIGINT)", f"list_filter([{names}], r -> r IS NOT NULL)", params)


def register_context(con: duckdb.DuckDBPyConnection, ctx: RuleContext) -> None:
    """Make the relations rules refer to (``known_items``) available on ``con``."""
    if ctx.known_items is not None:
        items = pa.table({"item_id": pa.array(sorted(ctx.known_items), pa.string())})
        con.register("known_items", items)


def flag(
    data: pd.DataFrame, rules: RuleSet, ctx: RuleContext, engine: BatchEngine | None = None
) -> pd.DataFrame:
    """``reason`` (first failed rule) and ``reasons`` ("|"-joined, all failed rules) for
    the flagged rows of ``data``, indexed like ``data``. ``engine`` runs the rules' SQL
    (default: DuckDB in-process; Spark runs the same text, :mod:`bespoke.engine`)."""
    check = checks(rules, ctx)
    frame = data.reset_index(drop=True).assign(
        **{
            POSITION: np.arange(len(data)),
            OCCURRENCE: occurrences(data[rules.key].reset_index(drop=True)),
        }
    )
    relations: dict[str, pd.DataFrame | pa.Table] = {"data": frame}
    if ctx.known_items is not None:
        relations["known_items"] = pa.table(
            {"item_id": pa.array(sorted(ctx.known_items), pa.string())}
        )
    sql = (
        f"SELECT {POSITION}, {check.reasons} AS _reasons FROM (SELECT *, {check.flags} AS "
        f"{FLAGS} FROM data) WHERE {FLAGS} <> 0 ORDER BY {POSITION}"
    )
    if engine is None:
        with duckdb.connect() as con:
            found = DuckDBEngine(con=con).frame(sql, check.params, relations)
    else:
        found = engine.frame(sql, check.params, relations)
    reasons = [list(names) for names in found["_reasons"]]
    return pd.DataFrame(
        {
            "reason": pd.array([names[0] for names in reasons], dtype=TEXT),
            "reasons": pd.array(["|".join(names) for names in reasons], dtype=TEXT),
        },
        index=data.index[found[POSITION].to_numpy(dtype=np.int64)],
    )


# --- imputation ------------------------------------------------------------------------


@dataclass(frozen=True)
class Imputation:
    """Fill the gaps of ``column`` (in rows where ``where`` holds) with the median or the
    mode of its present values, per ``group_by`` value when given."""

    column: str
    strategy: Literal["median", "mode"]
    where: str | None = None
    group_by: str | None = None


EVENT_IMPUTATIONS: tuple[Imputation, ...] = (
    Imputation("channel", "mode"),
    # A value or quantity means something only for some event types, and differs by type.
    Imputation(
        "value",
        "median",
        where=f"event_type IN {_MONETARY} OR event_type = 'rate'",
        group_by="event_type",
    ),
    Imputation("quantity", "median", where=f"event_type IN {_MONETARY}", group_by="event_type"),
)
USER_IMPUTATIONS: tuple[Imputation, ...] = (
    Imputation("age", "median"),
    Imputation("gender", "mode"),
    Imputation("occupation", "mode"),
)
ITEM_IMPUTATIONS: tuple[Imputation, ...] = (Imputation("release_year", "median"),)

#: Fill values: (column, group value or None) -> value.
FillValues = dict[tuple[str, Any], Any]


def fill_values(
    con: duckdb.DuckDBPyConnection,
    relation: str,
    imputations: tuple[Imputation, ...],
    columns: set[str],
    fallback: str | None = None,
) -> FillValues:
    """What each gap would be filled with, learnt from ``relation``'s present values, or
    from ``fallback``'s for the groups ``relation`` has no values of."""
    fills: FillValues = {}
    for rule in imputations:
        if rule.column not in columns:
            continue
        for source in (relation, fallback):
            if source is None:
                continue
            for group, value in _statistic(con, source, rule):
                if value is not None:
                    fills.setdefault((rule.column, group), value)
    return fills


def _statistic(
    con: duckdb.DuckDBPyConnection, relation: str, rule: Imputation
) -> list[tuple[Any, Any]]:
    column = f'"{rule.column}"'
    group = f'"{rule.group_by}"' if rule.group_by else "NULL"
    where = f"{column} IS NOT NULL" + (f" AND ({rule.where})" if rule.where else "")
    if rule.strategy == "median":
        kind = con.execute(f"SELECT typeof({column}) FROM {relation} LIMIT 1").fetchone()
        integral = kind is not None and kind[0] in {"TINYINT", "SMALLINT", "INTEGER", "BIGINT"}
        median = f"CAST(round(median({column})) AS BIGINT)" if integral else f"median({column})"
        sql = f"SELECT {group} AS g, {median} FROM {relation} WHERE {where} GROUP BY ALL"
    else:  # mode; ties go to the smallest value, so that runs repeat
        sql = (
            f"SELECT g, v FROM (SELECT {group} AS g, {column} AS v, count(*) AS n FROM {relation} "
            f"WHERE {where} GROUP BY ALL) QUALIFY row_number() OVER (PARTITION BY g ORDER BY n DESC, v) = 1"
        )
    return con.execute(sql).fetchall()


def imputed_sql(
    imputations: tuple[Imputation, ...], fills: FillValues
) -> tuple[dict[str, str], str]:
    """SQL that fills gaps: column -> expression, and the ``imputed`` list expression."""
    filled: dict[str, str] = {}
    recorded: list[str] = []
    for rule in imputations:
        cases = []
        for (column, group), value in fills.items():
            if column != rule.column:
                continue
            condition = f'"{column}" IS NULL' + (f" AND ({rule.where})" if rule.where else "")
            if rule.group_by:
                condition += f' AND "{rule.group_by}" = {sql_literal(group)}'
            cases.append(f"WHEN {condition} THEN {sql_literal(value)}")
        if not cases:
            continue
        fill = "CASE " + " ".join(cases) + " END"
        filled[rule.column] = f'coalesce("{rule.column}", {fill})'
        recorded.append(f"CASE WHEN {fill} IS NOT NULL THEN '{rule.column}' END")
    record = (
        "list_filter([" + ", ".join(recorded) + "], f -> f IS NOT NULL)"
        if recorded
        else "[]::VARCHAR[]"
    )
    return filled, record


def impute(
    data: pd.DataFrame, imputations: tuple[Imputation, ...], fallback: pd.DataFrame | None = None
) -> tuple[pd.DataFrame, dict[str, int]]:
    """A copy of ``data`` with its gaps filled and an ``imputed`` column ("|"-joined field
    names), and the number of values filled per field."""
    out = data.copy()
    with duckdb.connect() as con:
        con.register("data", data.reset_index(drop=True))
        if fallback is not None:
            con.register("fallback", fallback)
        fills = fill_values(
            con,
            "data",
            imputations,
            set(data.columns),
            "fallback" if fallback is not None else None,
        )
        filled, record = imputed_sql(imputations, fills)
        select = ", ".join(
            [*(f'{sql} AS "{c}"' for c, sql in filled.items()), f"{record} AS imputed"]
        )
        result = con.execute(f"SELECT {select} FROM data").to_arrow_table()
    for column in filled:
        values = result.column(column).to_pandas()
        out[column] = pd.Series(values.to_numpy(), index=out.index).astype(data[column].dtype)
    lists = result.column("imputed").to_pylist()
    out["imputed"] = ["|".join(fields) for fields in lists]
    counts: dict[str, int] = {}
    for fields in lists:
        for field in fields:
            counts[field] = counts.get(field, 0) + 1
    return out, counts


def standard_text(values: pa.Array | pa.ChunkedArray, lower: bool = False) -> pa.ChunkedArray:
    """Text stripped of surrounding blanks, an empty string as missing, optionally
    lower-cased (codes such as event types and channels)."""
    if isinstance(values, pa.Array):
        values = pa.chunked_array([values])
    values = pc.utf8_trim_whitespace(values.cast(pa.string()))
    if lower:
        values = pc.utf8_lower(values)
    return pc.if_else(pc.equal(values, ""), pa.scalar(None, pa.string()), values)
