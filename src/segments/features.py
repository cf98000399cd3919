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

from bespoke.features.lake import Lake

#: Activity windows, in days before the as-of time.
PERSON_WINDOWS_DAYS = (30, 90, 180)
#: Event types that count as an order, strongest first: the first present is used.
ORDER_TYPES = (("purchase",), ("rate", "like", "click", "view"))


def load_person_events(lake: Lake | duckdb.DuckDBPyConnection, dataset: str) -> pd.DataFrame:
    """The dataset's events keyed on the person (their user id when they have one, else
    their ``person_id``; see the identity graph), with ``timestamp``, ``event_type``,
    ``value``, ``quantity``, ``channel`` and ``device``. Refuses a dataset without
    timestamps: point-in-time features need them."""
    con = lake.connect() if isinstance(lake, Lake) else lake
    frame = con.execute(
        "SELECT coalesce(p.user_id, e.user_id, e.person_id) AS person, e.timestamp, "
        "e.event_type, e.value, e.quantity, e.channel, e.device "
        "FROM events e LEFT JOIN persons p USING (dataset, person_id) "
        "WHERE e.dataset = ? ORDER BY e.timestamp, e.event_id",
        [dataset],
    ).df()
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
