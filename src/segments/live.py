"""Segments, churn and lifetime value kept current: each accepted event updates the
person's counters and re-scores them in the same request.

:class:`Counters` is what the online store keeps per person: their order days (value and
quantity per day) and how many of their events came through each channel and device.
:func:`features_at` turns them into exactly the row :func:`bespoke.segments.features.
person_features` computes offline (tested person by person on CDNOW), and
:class:`LiveScorer` scores that row with the dataset's models: the segment model's nearest
centre, the registered churn and lifetime-value champions, and the BG/NBD inputs from the
parameters those models were trained with (their ``recipe_``). One person costs a few
array operations and three small LightGBM calls, well under a millisecond.
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import numpy as np
import pandas as pd

from bespoke.segments.behaviour import Segmenter
from bespoke.segments.clv import WEEK_DAYS, BetaGeo
from bespoke.segments.features import PERSON_WINDOWS_DAYS, order_types

if TYPE_CHECKING:
    from bespoke.segments.churn import ChurnModel, ValueModel
    from bespoke.settings import Settings

DAY_US = 86_400_000_000


@dataclass
class Counters:
    """One person's running counters: order days (µs since the epoch, UTC midnight,
    ascending) with each day's value and quantity, and events per channel and device."""

    days: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    quantities: list[float] = field(default_factory=list)
    channels: dict[str, int] = field(default_factory=dict)
    devices: dict[str, int] = field(default_factory=dict)

    def add(
        self,
        at_us: int,
        is_order: bool,
        value: float | None,
        quantity: float | None,
        channel: str | None,
        device: str | None,
    ) -> None:
        """Count one event (at ``at_us``); an order adds to its day."""
        self.channels[channel or "unknown"] = self.channels.get(channel or "unknown", 0) + 1
        self.devices[device or "unknown"] = self.devices.get(device or "unknown", 0) + 1
        if not is_order:
            return
        day = at_us - at_us % DAY_US
        value = 0.0 if value is None or value != value else float(value)
        quantity = 1.0 if quantity is None or quantity != quantity else float(quantity)
        where = bisect.bisect_left(self.days, day)
        if where < len(self.days) and self.days[where] == day:
            self.values[where] += value
            self.quantities[where] += quantity
        else:
            self.days.insert(where, day)
            self.values.insert(where, value)
            self.quantities.insert(where, quantity)

    def to_json(self) -> str:
        return json.dumps([self.days, self.values, self.quantities, self.channels, self.devices])

    @classmethod
    def from_json(cls, text: str | None) -> Counters:
        if not text:
            return cls()
        days, values, quantities, channels, devices = json.loads(text)
        return cls(days, values, quantities, channels, devices)


def counters_from_events(events: pd.DataFrame) -> dict[str, Counters]:
    """Every person's counters from their events (as
    :func:`~bespoke.segments.features.load_person_events` gives them), to seed the store."""
    if events.empty:
        return {}
    types = order_types(events["event_type"].unique())
    times = pd.to_datetime(events["timestamp"], utc=True)
    frame = events.assign(
        at=times.dt.floor("D").astype("int64") // 1000,
        is_order=True if types is None else events["event_type"].isin(types),
        channel=events["channel"].fillna("unknown") if "channel" in events else "unknown",
        device=events["device"].fillna("unknown") if "device" in events else "unknown",
        value=events["value"].fillna(0.0) if "value" in events else 0.0,
        quantity=events["quantity"].fillna(1) if "quantity" in events else 1,
    )
    out: dict[str, Counters] = {}
    orders = (
        frame[frame["is_order"]]
        .groupby(["person", "at"], as_index=False)
        .agg(value=("value", "sum"), quantity=("quantity", "sum"))
        .sort_values(["person", "at"])
    )
    for person, rows in orders.groupby("person", sort=False):
        out[str(person)] = Counters(
            rows["at"].tolist(), rows["value"].astype(float).tolist(),
            rows["quantity"].astype(float).tolist(),
        )  # fmt: skip
    for column in ("channel", "device"):
        counts = frame.groupby(["person", column]).size()
        for (person, value), count in counts.items():
            target = out.setdefault(str(person), Counters())
            getattr(target, f"{column}s")[str(value)] = int(count)
    return out


def features_at(
    counters: Counters, cut_us: int, windows_days: Iterable[int] = PERSON_WINDOWS_DAYS
) -> dict[str, float] | None:
    """The person's features at ``cut_us`` (the columns of
    :func:`~bespoke.segments.features.person_features`); None without an order by then."""
    stop = bisect.bisect_right(counters.days, cut_us)
    days, values = counters.days[:stop], counters.values[:stop]
    if not days:
        return None
    count = len(days)
    total = sum(values)
    gaps = [(b - a) / DAY_US for a, b in itertools.pairwise(days)]
    gap_mean = sum(gaps) / len(gaps) if gaps else math.nan
    if len(gaps) > 1:
        gap_std = math.sqrt(sum((g - gap_mean) ** 2 for g in gaps) / (len(gaps) - 1))
    else:
        gap_std = math.nan
    recency = (cut_us - days[-1]) / DAY_US
    tenure = (cut_us - days[0]) / DAY_US
    out = {
        "recency_days": recency,
        "tenure_days": tenure,
        "orders": float(count),
        "repeat_orders": float(count - 1),
        "monetary_total": total,
        "average_order_value": total / count,
        "first_order_value": values[0],
        "last_order_value": values[-1],
        "items_per_order": sum(counters.quantities[:stop]) / count,
        "gap_mean_days": gap_mean,
        "gap_std_days": gap_std,
        "gap_last_days": gaps[-1] if gaps else math.nan,
        "overdue": recency / gap_mean if gaps else math.nan,
        "orders_per_30_days": count / (tenure / 30 + 1),
    }
    for window in windows_days:
        start = bisect.bisect_right(days, cut_us - window * DAY_US)
        out[f"orders_{window}d"] = float(count - start)
        out[f"value_{window}d"] = float(sum(values[start:]))
    for column, counts in (("channel", counters.channels), ("device", counters.devices)):
        events = sum(counts.values())
        for value, number in counts.items():
            out[f"{column}_share_{value}"] = number / events if events else 0.0
    return out


@dataclass
class Scores:
    segment: str | None
    churn_probability: float | None
    expected_value: float | None


class LiveScorer:
    """The dataset's models, ready to score one person at a time (any may be missing:
    what is not trained is not scored)."""

    def __init__(
        self,
        segmenter: Segmenter | None = None,
        churn: ChurnModel | None = None,
        clv: ValueModel | None = None,
        *,
        notify: bool = False,
        churn_threshold: float | None = None,
    ) -> None:
        self.segmenter = segmenter
        self.churn = churn
        self.clv = clv
        #: Whether a change of segment (and a churn probability crossing
        #: ``churn_threshold``) is also queued for the outgoing webhook.
        self.notify = notify
        self.churn_threshold = churn_threshold

    @classmethod
    def load(cls, settings: Settings, dataset: str) -> LiveScorer:
        """The ``@champion`` segment, churn and value models (``bespoke train segments``,
        ``bespoke train churn``), where they exist."""
        from bespoke.settings import SQLITE_PREFIX
        from bespoke.training.registry import Registry

        uri = settings.mlflow_tracking_uri or ""
        segments = churn = clv = None
        # A registry that was never written to holds nothing (and is not created here).
        if not uri.startswith(SQLITE_PREFIX) or Path(uri.removeprefix(SQLITE_PREFIX)).exists():
            registry = Registry.of(settings)
            segments = registry.load("segments", dataset)
            churn = registry.load("churn", dataset)
            clv = registry.load("clv", dataset)
        segmenter = segments and segments.model
        return cls(
            segmenter, churn and churn.model, clv and clv.model,
            notify=bool(settings.webhook_url), churn_threshold=settings.churn_alert_threshold,
        )  # fmt: skip

    @property
    def active(self) -> bool:
        return any(m is not None for m in (self.segmenter, self.churn, self.clv))

    @property
    def order_types(self) -> tuple[str, ...] | None:
        """The event types that are orders (as the models were trained), or None: all."""
        for model in (self.churn, self.clv):
            if model is not None and getattr(model, "recipe_", None):
                types = model.recipe_.get("order_types")
                return None if types is None else tuple(types)
        return ("purchase",)

    def is_order(self, event_type: str) -> bool:
        types = self.order_types
        return types is None or event_type in types

    def inputs(self, counters: Counters, cut_us: int) -> dict[str, float] | None:
        """The model inputs at ``cut_us``: the person features plus BG/NBD's expected
        orders in the horizon and probability of being alive."""
        features = features_at(counters, cut_us)
        if features is None:
            return None
        model = self.churn or self.clv
        how = getattr(model, "recipe_", None) if model is not None else None
        if how:
            baseline = BetaGeo()
            baseline.params_ = np.asarray(how["bgnbd"])
            days = counters.days[: int(features["orders"])]
            history = (
                features["repeat_orders"],
                (days[-1] - days[0]) / DAY_US / WEEK_DAYS,
                (cut_us - days[0]) / DAY_US / WEEK_DAYS,
            )
            weeks = how["horizon_days"] / WEEK_DAYS
            features["bgnbd_expected"] = float(baseline.expected_purchases(weeks, *history))
            features["bgnbd_alive"] = float(baseline.p_alive(*history))
        return features

    def matrix(self, rows: list[Mapping[str, float]], columns: list[str]) -> np.ndarray:
        """Rows in a model's column order; a share the person has none of is 0."""
        out = np.empty((len(rows), len(columns)))
        for i, row in enumerate(rows):
            for j, column in enumerate(columns):
                value = row.get(column)
                if value is None:
                    value = 0.0 if "_share_" in column else math.nan
                out[i, j] = value
        return out

    def score(self, counters: Counters, at: int | datetime) -> Scores:
        """One person's segment, churn probability and expected value at ``at`` (µs since
        the epoch, or a time)."""
        return self.score_many([counters], at)[0]

    def score_many(self, people: list[Counters], at: int | datetime) -> list[Scores]:
        cut_us = at if isinstance(at, int) else int(pd.Timestamp(at).value // 1000)
        rows = [self.inputs(counters, cut_us) for counters in people]
        known = [i for i, row in enumerate(rows) if row is not None]
        out = [Scores(None, None, None) for _ in people]
        if not known:
            return out
        present = [rows[i] for i in known]
        if self.segmenter is not None:
            for i, row in zip(known, present, strict=True):
                out[i].segment = self.segmenter.predict_one(row)
        if self.churn is not None:
            churn = self.churn.predict_matrix(self.matrix(present, self.churn.columns_))
            for i, p in zip(known, churn, strict=True):
                out[i].churn_probability = float(p)
        if self.clv is not None:
            value = self.clv.predict_matrix(self.matrix(present, self.clv.columns_))
            for i, v in zip(known, value, strict=True):
                out[i].expected_value = float(v)
        return out


def known_segments(segmenter: Segmenter | None, lake: Any, dataset: str) -> set[str] | None:
    """Every segment name of the dataset: the behavioural model's and the rule segments
    assigned in the lake; None when neither exists (nothing to check rules against)."""
    names = set(segmenter.names_) if segmenter is not None else set()
    try:
        rows = (
            lake.connect()
            .execute(
                "SELECT DISTINCT unnest(rule_segments) FROM segments WHERE dataset = ?", [dataset]
            )
            .fetchall()
        )
    except duckdb.Error:  # no segments table yet: no rule segments
        rows = []
    names |= {name for (name,) in rows}
    return names or None
