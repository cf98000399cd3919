"""Standardise, flag anomalies, impute gaps.

Every anomaly rule is a named, vectorised mask over a typed frame. A flagged row goes to
quarantine with its first reason (rules are checked in the order listed) and all of
them; nothing is dropped silently. Gaps in rows that pass are imputed — numeric with the
median, categorical with the mode of the clean rows — and each row records which of its
fields were imputed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from bespoke.features.schema import MONETARY_EVENT_TYPES, TEXT, Channel, EventType

#: How far ahead of the ingesting clock a timestamp may be before it counts as future
#: (clock skew between a sender and us).
FUTURE_TOLERANCE = timedelta(minutes=5)
#: Ages outside this range are implausible for a customer.
PLAUSIBLE_AGES = (5, 110)


@dataclass(frozen=True)
class Rule:
    """One anomaly: a reason code, what it means, and the rows it flags."""

    reason: str
    description: str
    flags: Callable[[pd.DataFrame, RuleContext], pd.Series]


@dataclass(frozen=True)
class RuleContext:
    """What rules may need beyond the rows themselves."""

    now: datetime
    has_timestamps: bool = True
    known_items: frozenset[str] | None = None
    rating_scale: tuple[float, float] | None = None


_EVENT_TYPES = frozenset(e.value for e in EventType)
_CHANNELS = frozenset(c.value for c in Channel)
_MONETARY = sorted(e.value for e in MONETARY_EVENT_TYPES)


def _unknown_items(df: pd.DataFrame, ctx: RuleContext) -> pd.Series:
    if ctx.known_items is None:
        return pd.Series(False, index=df.index)
    return df["item_id"].notna() & ~df["item_id"].isin(ctx.known_items)


def _rating_out_of_range(df: pd.DataFrame, ctx: RuleContext) -> pd.Series:
    if ctx.rating_scale is None:
        return pd.Series(False, index=df.index)
    low, high = ctx.rating_scale
    rated = (df["event_type"] == EventType.RATE) & df["value"].notna()
    return rated & ~df["value"].between(low, high)


def _future(df: pd.DataFrame, ctx: RuleContext) -> pd.Series:
    limit = pd.Timestamp(ctx.now + FUTURE_TOLERANCE)
    return (df["timestamp"] > limit).fillna(False)


EVENT_RULES: tuple[Rule, ...] = (
    Rule(
        "missing_identity",
        "neither user_id nor anonymous_id",
        lambda df, ctx: df["user_id"].isna() & df["anonymous_id"].isna(),
    ),
    Rule(
        "unknown_event_type",
        "event_type is not one of the EventType values",
        lambda df, ctx: ~df["event_type"].isin(_EVENT_TYPES),
    ),
    Rule(
        "unknown_channel",
        "channel is not one of the Channel values",
        lambda df, ctx: df["channel"].notna() & ~df["channel"].isin(_CHANNELS),
    ),
    Rule(
        "missing_timestamp",
        "no timestamp in a source that has them",
        lambda df, ctx: df["timestamp"].isna() & ctx.has_timestamps,
    ),
    Rule("future_timestamp", f"timestamp more than {FUTURE_TOLERANCE} ahead of ingestion", _future),
    Rule("unknown_item", "item_id is not in the dataset's catalog", _unknown_items),
    Rule(
        "negative_amount",
        "negative money value or quantity",
        lambda df, ctx: (
            (df["event_type"].isin(_MONETARY) & (df["value"] < 0)).fillna(False)
            | (df["quantity"] < 0).fillna(False)
        ),
    ),
    Rule(
        "zero_value_purchase",
        "a purchase worth exactly 0",
        lambda df, ctx: ((df["event_type"] == EventType.PURCHASE) & (df["value"] == 0)).fillna(
            False
        ),
    ),
    Rule("rating_out_of_range", "rating outside the source's scale", _rating_out_of_range),
    Rule(
        "exact_duplicate",
        "same content (same event id) as an earlier row of the same batch",
        lambda df, ctx: df["event_id"].duplicated(keep="first"),
    ),
)

USER_RULES: tuple[Rule, ...] = (
    Rule(
        "implausible_age",
        f"age outside {PLAUSIBLE_AGES[0]}..{PLAUSIBLE_AGES[1]}",
        lambda df, ctx: df["age"].notna() & ~df["age"].between(*PLAUSIBLE_AGES),
    ),
    Rule(
        "exact_duplicate",
        "same user id as an earlier row of the same batch",
        lambda df, ctx: df["user_id"].duplicated(keep="first"),
    ),
)

ITEM_RULES: tuple[Rule, ...] = (
    Rule(
        "exact_duplicate",
        "same item id as an earlier row of the same batch",
        lambda df, ctx: df["item_id"].duplicated(keep="first"),
    ),
)


def flag(df: pd.DataFrame, rules: tuple[Rule, ...], ctx: RuleContext) -> pd.DataFrame:
    """A frame indexed like ``df`` with ``reason`` (first failed rule) and ``reasons``
    ("|"-joined, all failed rules) for the flagged rows only."""
    masks = {rule.reason: rule.flags(df, ctx).to_numpy(dtype=bool) for rule in rules}
    any_flag = np.logical_or.reduce(list(masks.values())) if masks else np.zeros(len(df), bool)
    flagged_index = df.index[any_flag]
    if not len(flagged_index):
        return pd.DataFrame({"reason": [], "reasons": []}, index=flagged_index, dtype=TEXT)
    reasons = pd.Series("", index=df.index, dtype="object")
    for reason, mask in masks.items():
        reasons[mask] = reasons[mask] + "|" + reason
    reasons = reasons[any_flag].str.lstrip("|")
    return pd.DataFrame(
        {"reason": reasons.str.split("|", n=1).str[0], "reasons": reasons}, index=flagged_index
    )


@dataclass(frozen=True)
class Imputation:
    """Fill the gaps of ``column`` (within ``where`` rows) with the median or the mode."""

    column: str
    strategy: str  # "median" or "mode"
    where: Callable[[pd.DataFrame], pd.Series] | None = None
    group_by: str | None = None


def _monetary(df: pd.DataFrame) -> pd.Series:
    return df["event_type"].isin(_MONETARY)


EVENT_IMPUTATIONS: tuple[Imputation, ...] = (
    Imputation("channel", "mode"),
    # A value or quantity only means something for some event types, and differs by type.
    Imputation(
        "value",
        "median",
        where=lambda df: _monetary(df) | (df["event_type"] == EventType.RATE),
        group_by="event_type",
    ),
    Imputation("quantity", "median", where=_monetary, group_by="event_type"),
)
USER_IMPUTATIONS: tuple[Imputation, ...] = (
    Imputation("age", "median"),
    Imputation("gender", "mode"),
    Imputation("occupation", "mode"),
)
ITEM_IMPUTATIONS: tuple[Imputation, ...] = (Imputation("release_year", "median"),)


def _fill_value(values: pd.Series, strategy: str) -> object:
    present = values.dropna()
    if present.empty:
        return None
    if strategy == "median":
        median = present.median()
        return round(median) if pd.api.types.is_integer_dtype(values.dtype) else median
    return present.mode().sort_values().iloc[0]  # ties: the smallest, so runs repeat


def impute(
    df: pd.DataFrame, imputations: tuple[Imputation, ...], fallback: pd.DataFrame | None = None
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Fill gaps in place of a copy; returns it (with an ``imputed`` column of "|"-joined
    field names) and the count of filled values per field.

    Statistics come from ``df``'s own present values, or from ``fallback`` (e.g. the rows
    already in the lake) when ``df`` has none.
    """
    df = df.copy()
    imputed = pd.Series("", index=df.index, dtype="object")
    counts: dict[str, int] = {}
    for rule in imputations:
        if rule.column not in df:
            continue
        gaps = df[rule.column].isna()
        if rule.where is not None:
            gaps &= rule.where(df).fillna(False).astype(bool)
        if not gaps.any():
            continue
        groups = (
            [(None, gaps)]
            if rule.group_by is None
            else [
                (key, gaps & (df[rule.group_by] == key))
                for key in df.loc[gaps, rule.group_by].unique()
            ]
        )
        filled = 0
        for key, mask in groups:
            pool = df if key is None else df[df[rule.group_by] == key]
            value = _fill_value(pool[rule.column], rule.strategy)
            if value is None and fallback is not None and rule.column in fallback:
                backup = fallback if key is None else fallback[fallback[rule.group_by] == key]
                value = _fill_value(backup[rule.column], rule.strategy)
            if value is None:
                continue  # nothing to learn a fill value from: the gap stays a gap
            df.loc[mask, rule.column] = value
            imputed[mask] = imputed[mask] + "|" + rule.column
            filled += int(mask.sum())
        if filled:
            counts[rule.column] = filled
    df["imputed"] = imputed.str.lstrip("|") if counts else ""
    return df, counts


def standardise_strings(df: pd.DataFrame, columns: list[str], lower: list[str]) -> pd.DataFrame:
    """Strip whitespace, turn empty strings into missing values, lower-case code columns."""
    for column in columns:
        if column not in df:
            continue
        values = df[column].astype(TEXT).str.strip()
        if column in lower:
            values = values.str.lower()
        df[column] = values.mask(values == "")
    return df
