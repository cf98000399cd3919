"""Point-in-time person features: what a person did up to an as-of time, one row each.

The inputs of segments, churn and lifetime value: recency, frequency, monetary total and
average order value, tenure, inter-purchase times (mean, spread, last, and how overdue
the next purchase is against the person's own rhythm), activity in the last 30/90/180
days, and shares of activity per channel and device. Events after the as-of time are cut
before anything is computed, so nothing from the future reaches a row (tested by
changing the future and comparing).

Orders are days with a purchase (several purchases on one day are one order, their
values summed), as in the customer-base analyses these features are compared with. A
dataset without purchases (MovieLens) uses its interactions as "orders".
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import duckdb
import numpy as np
import pandas as pd

from bespoke.engine.engines import BatchEngine, DuckDBEngine
from bespoke.features.lake import Lake

#: Activity windows, in days before the as-of time.
PERSON_WINDOWS_DAYS = (30, 90, 180)
#: Event types that count as an order, strongest first: the first present is used.
ORDER_TYPES = (("purchase",), ("rate", "like", "click", "view"))


#: A dataset's events keyed on the person: one query for both batch engines.
_PERSON_EVENTS_OF = (
    "SELECT coalesce(p.user_id, e.user_id, e.person_id) AS person, e.timestamp, "
    "e.event_type, e.value, e.quantity, e.channel, e.device "
    "FROM events e LEFT JOIN persons p USING (dataset, person_id) WHERE e.dataset = "
)
PERSON_EVENTS_SQL = _PERSON_EVENTS_OF + "? ORDER BY e.timestamp, e.event_id"


def load_person_events(
    lake: Lake | duckdb.DuckDBPyConnection | BatchEngine, dataset: str
) -> pd.DataFrame:
    """The dataset's events keyed on the person (their user id when they have one, else
    their ``person_id``; see the identity graph), with ``timestamp``, ``event_type``,
    ``value``, ``quantity``, ``channel`` and ``device``, read by a batch engine (a lake or
    a DuckDB connection: DuckDB). Refuses a dataset without timestamps: point-in-time
    features need them."""
    if isinstance(lake, Lake):
        engine: BatchEngine = DuckDBEngine(lake)
    elif isinstance(lake, duckdb.DuckDBPyConnection):
        engine = DuckDBEngine(con=lake)
    else:
        engine = lake
    frame = engine.frame(PERSON_EVENTS_SQL, [dataset])
    if frame.empty:
        where = lake.url if isinstance(lake, Lake) else "the lake"
        raise ValueError(f"dataset {dataset!r} has no events in {where}")
    if frame["timestamp"].isna().all():
        raise ValueError(
            f"dataset {dataset!r} has no timestamps (ML-1M's ratings have none): "
            "point-in-time person features need them"
        )
    return frame


def order_types(event_types: Iterable[str]) -> tuple[str, ...] | None:
    """The event types that count as orders among ``event_types`` (the first group of
    :data:`ORDER_TYPES` present), or None: every event is one."""
    kinds = set(event_types)
    for types in ORDER_TYPES:
        if kinds & set(types):
            return types
    return None


def order_events(events: pd.DataFrame) -> pd.DataFrame:
    """The events that count as orders (see :func:`order_types`)."""
    types = order_types(events["event_type"].unique())
    return events if types is None else events[events["event_type"].isin(types)]


def _orders(events: pd.DataFrame) -> pd.DataFrame:
    chosen = order_events(events)
    chosen = chosen.assign(day=chosen["timestamp"].dt.floor("D"))
    value = chosen["value"].fillna(0.0) if "value" in chosen else 0.0
    quantity = chosen["quantity"].fillna(1) if "quantity" in chosen else 1
    chosen = chosen.assign(value=value, quantity=quantity)
    return chosen.groupby(["person", "day"], as_index=False).agg(
        value=("value", "sum"), quantity=("quantity", "sum")
    )


def person_features(
    events: pd.DataFrame,
    as_of: str | pd.Timestamp,
    windows_days: Sequence[int] = PERSON_WINDOWS_DAYS,
) -> pd.DataFrame:
    """One row per person with an order at or before ``as_of`` (columns: see the module
    docstring), from ``events`` as :func:`load_person_events` gives them."""
    cut = pd.Timestamp(as_of)
    cut = cut.tz_localize("UTC") if cut.tzinfo is None else cut.tz_convert("UTC")
    times = pd.to_datetime(events["timestamp"], utc=True)
    past = events[times <= cut].assign(timestamp=times[times <= cut])
    if past.empty:
        raise ValueError(f"no events at or before {cut.isoformat()}")
    orders = _orders(past).sort_values(["person", "day"])
    by = orders.groupby("person")
    first, last = by["day"].min(), by["day"].max()
    count = by.size()
    total = by["value"].sum()
    gaps = orders["day"].diff().dt.total_seconds() / 86400
    gaps[orders["person"].ne(orders["person"].shift())] = np.nan
    orders = orders.assign(gap=gaps)
    by = orders.groupby("person")
    out = pd.DataFrame(
        {
            "recency_days": (cut - last).dt.total_seconds() / 86400,
            "tenure_days": (cut - first).dt.total_seconds() / 86400,
            "orders": count.astype(float),
            "repeat_orders": (count - 1).astype(float),
            "monetary_total": total,
            "average_order_value": total / count,
            "first_order_value": by["value"].first(),
            "last_order_value": by["value"].last(),
            "items_per_order": by["quantity"].sum() / count,
            "gap_mean_days": by["gap"].mean(),
            "gap_std_days": by["gap"].std(),
            "gap_last_days": by["gap"].last(),
        }
    )
    out["overdue"] = out["recency_days"] / out["gap_mean_days"]
    out["orders_per_30_days"] = out["orders"] / (out["tenure_days"] / 30 + 1)
    for days in windows_days:
        recent = orders[orders["day"] > cut - pd.Timedelta(days=days)].groupby("person")
        out[f"orders_{days}d"] = recent.size().reindex(out.index, fill_value=0).astype(float)
        out[f"value_{days}d"] = recent["value"].sum().reindex(out.index, fill_value=0.0)
    for column in ("channel", "device"):
        if column in past and past[column].notna().any():
            shares = pd.crosstab(past["person"], past[column].fillna("unknown"), normalize="index")
            shares.columns = [f"{column}_share_{c}" for c in shares.columns]
            out = out.join(shares, how="left")
    out.index.name = "person"
    return out


#: Days between two moments, as the frame version computes them (exact, in microseconds).
#: (Cast first: Spark reads a literal like ``86400000000.0`` as a decimal, not a double.)
_DAYS = "CAST(date_diff('microsecond', {start}, {end}) AS DOUBLE) / 86400000000"


def person_features_sql(
    events: str,
    types: Sequence[str] | None,
    windows_days: Sequence[int],
    shares: dict[str, list[str]],
) -> str:
    """:func:`person_features` as one SQL query (DuckDB's dialect; ``bespoke.engine`` runs it
    on Spark too) over ``events`` (a relation shaped like :data:`PERSON_EVENTS_SQL`'s rows),
    with parameters ``$cut`` (and ``$types`` when ``types`` is not None). ``shares``: the
    values of ``channel``/``device`` to give a share column each."""
    chosen = "list_contains($types, event_type)" if types is not None else "true"
    windows = "".join(
        f", CAST(count(*) FILTER (WHERE day > $cut - INTERVAL {days} DAY) AS DOUBLE) AS orders_{days}d"
        f", coalesce(sum(value) FILTER (WHERE day > $cut - INTERVAL {days} DAY), 0.0) AS value_{days}d"
        for days in windows_days
    )
    share_columns = "".join(
        f', s.{column}_share_{index} AS "{column}_share_{value}"'
        for column, values in shares.items()
        for index, value in enumerate(values)
    )
    share_sums = ", ".join(
        f"avg(CASE WHEN coalesce({column}, 'unknown') = '{value.replace(chr(39), chr(39) * 2)}' "
        f"THEN CAST(1 AS DOUBLE) ELSE 0 END) AS {column}_share_{index}"
        for column, values in shares.items()
        for index, value in enumerate(values)
    )
    shares_join = (
        f"LEFT JOIN (SELECT person, {share_sums} FROM past GROUP BY person) s USING (person)"
        if share_sums
        else ""
    )
    return f"""
WITH past AS (SELECT * FROM ({events}) WHERE timestamp <= $cut),
orders AS (
    SELECT person, date_trunc('day', timestamp) AS day, sum(coalesce(value, 0.0)) AS value,
           sum(coalesce(quantity, 1)) AS quantity
    FROM past WHERE {chosen} GROUP BY person, date_trunc('day', timestamp)
),
ranked AS (
    SELECT *, {_DAYS.format(start="lag(day) OVER (PARTITION BY person ORDER BY day)", end="day")} AS gap,
           row_number() OVER (PARTITION BY person ORDER BY day) AS n_asc,
           row_number() OVER (PARTITION BY person ORDER BY day DESC) AS n_desc
    FROM orders
),
people AS (
    SELECT person,
           {_DAYS.format(start="max(day)", end="$cut")} AS recency_days,
           {_DAYS.format(start="min(day)", end="$cut")} AS tenure_days,
           CAST(count(*) AS DOUBLE) AS orders,
           CAST(count(*) - 1 AS DOUBLE) AS repeat_orders,
           sum(value) AS monetary_total,
           sum(value) / count(*) AS average_order_value,
           max(CASE WHEN n_asc = 1 THEN value END) AS first_order_value,
           max(CASE WHEN n_desc = 1 THEN value END) AS last_order_value,
           sum(quantity) / count(*) AS items_per_order,
           avg(gap) AS gap_mean_days,
           stddev_samp(gap) AS gap_std_days,
           max(CASE WHEN n_desc = 1 THEN gap END) AS gap_last_days
           {windows}
    FROM ranked GROUP BY person
)
SELECT p.person, recency_days, tenure_days, orders, repeat_orders, monetary_total,
       average_order_value, first_order_value, last_order_value, items_per_order,
       gap_mean_days, gap_std_days, gap_last_days,
       recency_days / gap_mean_days AS overdue, orders / (tenure_days / 30 + 1) AS orders_per_30_days
       {"".join(f", orders_{d}d, value_{d}d" for d in windows_days)}
       {share_columns}
FROM people p {shares_join}
ORDER BY p.person
"""


def build_person_features(
    engine: BatchEngine,
    dataset: str,
    as_of: str | pd.Timestamp,
    windows_days: Sequence[int] = PERSON_WINDOWS_DAYS,
) -> pd.DataFrame:
    """:func:`person_features` of the dataset's people computed by a batch engine where the
    events are (DuckDB or Spark), without loading the events: the same columns and values
    (to rounding of sums)."""
    cut = pd.Timestamp(as_of)
    cut = cut.tz_localize("UTC") if cut.tzinfo is None else cut.tz_convert("UTC")
    events = _PERSON_EVENTS_OF + "$dataset"
    seen = engine.frame(
        f"SELECT DISTINCT event_type, channel, device FROM ({events}) WHERE timestamp <= $cut",
        {"dataset": dataset, "cut": cut},
    )
    if seen.empty:
        raise ValueError(f"no events at or before {cut.isoformat()}")
    types = order_types(seen["event_type"].unique())
    shares = {
        column: sorted(seen[column].fillna("unknown").unique())
        for column in ("channel", "device")
        if seen[column].notna().any()
    }
    params: dict[str, object] = {"dataset": dataset, "cut": cut}
    if types is not None:
        params["types"] = list(types)
    out = engine.frame(person_features_sql(events, types, windows_days, shares), params)
    return out.set_index("person")
