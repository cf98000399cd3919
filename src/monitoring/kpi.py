"""KPI report: engagement and conversion over time, overall and by segment, channel, …

The numbers come from one DuckDB query over the lake's ``events`` view (joined to
``users`` only when a breakdown needs attributes), grouped with GROUPING SETS so that
every breakdown and the window totals come out of a single scan; Python only reshapes the
small result and draws it. The report is one static HTML file with Plotly's JavaScript
inlined once, so it opens offline and can be mailed or archived as it is.

Definitions (also written into the report):

- **active users** of a period: distinct people (user id, else anonymous id) with at
  least one event in it;
- **events per active user**: events / active users, overall and per event type (the
  per-type lines add up to the overall one);
- **conversion rate**: the share of active users with at least one conversion event in
  the period. What converts depends on what the data records (see :data:`CONVERSIONS`):
  a purchase when there are purchases (CDNOW), a rating of 4 or more when everything is a
  rating (MovieLens);
- **period over period**: the latest complete period at the grain against the one
  before. A period is complete when it lies inside both the window and the span the data
  covers, so a week cut by the window's edge or the dataset's last day is never compared
  with a full one.

Experiment variants come from the lake's ``exposures`` view (each person's first exposure
to an experiment, written there by ``bespoke experiment flush``), for one experiment: the
``experiment`` option, by default the one exposed most recently in the dataset. An event
counts in the variant its person (user id, or anonymous id for an anonymous exposure) was
exposed to when it happened at or after that exposure, and as ``not exposed`` otherwise
(before the exposure, or never exposed); QA overrides (forced exposures) are left out.
Every metric is then broken down by variant (``--by variant``, and the "By experiment
variant" section), control first; a dataset without exposures says so there.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bespoke.monitoring.reports import write_html

if TYPE_CHECKING:  # heavy imports stay inside functions: `bespoke --help` must stay fast
    import duckdb
    import pandas as pd
    import plotly.graph_objects as go

    from bespoke.engine.engines import BatchEngine
    from bespoke.monitoring.windows import Window
    from bespoke.settings import Settings

GRAINS = ("day", "week", "month")
#: The breakdowns the report draws when none is asked for (the issue's "by segment/channel").
DEFAULT_BY = ("segment", "channel")
#: At most this many levels of a breakdown are drawn (the largest by active users); the
#: table under the figure lists them all.
MAX_LEVELS = 10
#: About how many values the figures may plot (~6 bytes each in JSON): beside Plotly's
#: 4.6 MB bundle this keeps a report under ~5 MB. Past it (a daily grain over years with
#: many breakdowns) fewer levels per breakdown are drawn, and the report says so.
MAX_POINTS = 60_000
#: The breakdown by experiment variant (from the lake's exposures); it appears on its own
#: once the dataset has exposures.
VARIANT_COLUMN = "variant"
#: The variant level of events before their person's exposure, or of people never exposed.
NOT_EXPOSED = "not exposed"


def no_exposures(dataset: str) -> str:
    """What the report says when ``dataset`` has no exposures to break down by."""
    return (
        f"no experiment has exposures in {dataset!r} yet: run one (define it in the file "
        "BESPOKE_EXPERIMENTS_PATH names, and the service assigns variants and records "
        "exposures), then `bespoke experiment flush` (exposures reach the lake when the "
        "ledger is flushed)"
    )


REPORT_FILE = "kpi.html"
UNKNOWN = "unknown"


class KpiError(ValueError):
    """Bad input to the KPI report: the message says what and how to fix it."""


@dataclass(frozen=True)
class Dimension:
    """A breakdown: a SQL expression over ``e`` (events), ``u`` (users) or ``c``
    (cohorts) giving each event's level; NULL becomes ``unknown``."""

    name: str
    title: str
    sql: str
    needs: str = "events"  # "users", "cohorts", "exposures" add their join only when asked


def _age_band_sql() -> str:
    # The ranker's age bands (features.build), so report segments and model segments agree.
    from bespoke.features.build import AGE_BAND_EDGES

    edges = list(AGE_BAND_EDGES)
    cases = [f"WHEN u.age < {edges[0]} THEN '<{edges[0]}'"]
    cases += [f"WHEN u.age < {hi} THEN '{lo}-{hi - 1}'" for lo, hi in pairwise(edges)]
    return f"CASE WHEN u.age IS NULL THEN NULL {' '.join(cases)} ELSE '{edges[-1]}+' END"


def dimensions() -> dict[str, Dimension]:
    """Every breakdown ``--by`` accepts, by name."""
    band = _age_band_sql()
    segment = (
        f"CASE WHEN u.user_id IS NULL THEN NULL ELSE coalesce({band}, 'age ?') || ' ' || "
        "CASE WHEN u.gender IN ('F', 'M') THEN u.gender ELSE '?' END END"
    )
    found = [
        Dimension(
            "segment", "segment (age band × gender, the ranker's segments)", segment, "users"
        ),
        Dimension("age_band", "age band", band, "users"),
        Dimension("gender", "gender", "u.gender", "users"),
        Dimension("occupation", "occupation", "u.occupation", "users"),
        Dimension("state", "US state", "u.state", "users"),
        Dimension("region", "US census region", "u.region", "users"),
        Dimension("channel", "channel", "e.channel"),
        Dimension("device", "device", "e.device"),
        Dimension(
            "cohort", "cohort (month of the person's first event)",
            "strftime(c.first_seen AT TIME ZONE 'UTC', '%Y-%m')", "cohorts",
        ),
        Dimension(
            VARIANT_COLUMN, "experiment variant",
            f"coalesce(xu.variant, xa.variant, '{NOT_EXPOSED}')", "exposures",
        ),
    ]  # fmt: skip
    return {d.name: d for d in found}


@dataclass(frozen=True)
class Conversion:
    """What counts as converting: a SQL condition on one event ``e``; the report says
    "share of active users who <label>", then why when the choice needs a reason."""

    name: str
    event_type: str
    sql: str
    label: str
    why: str = ""


#: Conversion definitions, strongest first: by default the first whose event type the
#: dataset holds is used.
CONVERSIONS: dict[str, Conversion] = {
    c.name: c
    for c in (
        Conversion("purchase", "purchase", "e.event_type = 'purchase'", "made a purchase"),
        Conversion("add_to_cart", "add_to_cart", "e.event_type = 'add_to_cart'",
                   "added something to the cart", "The data records no purchase."),
        Conversion("signup", "signup", "e.event_type = 'signup'", "signed up"),
        Conversion(
            "positive-rating", "rate", "e.event_type = 'rate' AND e.value >= 4",
            "rated something 4 or more (of 5)",
            "Every event here is a rating, so there is no purchase to count; a rating of "
            "4+ is a positive engagement (MovieLens' usual relevance threshold).",
        ),
        Conversion("like", "like", "e.event_type = 'like'", "liked something"),
        Conversion("click", "click", "e.event_type = 'click'", "clicked something",
                   "The data records no stronger signal."),
    )
}  # fmt: skip


@dataclass
class KpiReport:
    """Everything the report shows, as DataFrames (notebooks show them as they are)."""

    dataset: str
    window: Window
    """The window asked for (the whole dataset by default)."""
    observed: Window
    """The part of it the data covers: from the first event's day to the last event's."""
    grain: str
    by: list[str]
    conversion: Conversion | None
    series: pd.DataFrame
    """Long: dimension ('all', 'event_type', or a breakdown), level, period (NaT for the
    window totals), active_users, events, converters, revenue, events_per_user,
    conversion_rate, revenue_per_user, complete."""
    headline: pd.DataFrame
    """metric, kind, window, previous, latest, change (latest / previous - 1)."""
    periods: tuple[str, str] | None
    """Labels of the previous and latest complete periods (None: fewer than two)."""
    has_revenue: bool
    has_variant: bool
    """Whether the variant breakdown is there (the dataset has exposures)."""
    notes: list[str] = field(default_factory=list)
    experiment: str | None = None
    """The experiment whose variants the breakdown shows (None: no exposures)."""
    variants: list[str] = field(default_factory=list)
    """Its variants in variant index order (control first), forced exposures left out."""
    experiments: list[str] = field(default_factory=list)
    """Every experiment with exposures in the dataset, most recently exposed first."""
    experiment_chosen: bool = False
    """Whether ``experiment`` was asked for (else: the most recently exposed)."""

    @property
    def window_text(self) -> str:
        """The window as asked for, with the days it resolved to when that says more."""
        label = self.window.label
        return label if self.observed.label in label else f"{label} ({self.observed.label})"

    def levels(self, dimension: str) -> pd.DataFrame:
        """Window totals of each level of ``dimension``, largest first."""
        rows = self.series[(self.series.dimension == dimension) & self.series.period.isna()]
        if dimension == VARIANT_COLUMN:  # control first, then the other variants, then the rest
            order = {name: index for index, name in enumerate(self.variants)}
            rank = rows.level.map(lambda level: order.get(level, len(order)))
            return rows.assign(_rank=rank).sort_values(["_rank", "level"]).drop(columns="_rank")
        return rows.sort_values(["active_users", "level"], ascending=[False, True])

    def over_time(self, dimension: str = "all") -> pd.DataFrame:
        """Per period (and level) rows of ``dimension``, in time order."""
        rows = self.series[(self.series.dimension == dimension) & self.series.period.notna()]
        return rows.sort_values(["level", "period"])


# --- computing --------------------------------------------------------------------------


def _parse_by(by: Sequence[str] | None) -> list[str]:
    known = dimensions()
    names: list[str] = []
    for text in by or DEFAULT_BY:
        for name in (part.strip().lower() for part in text.split(",")):
            if not name:
                continue
            if name not in known:
                raise KpiError(
                    f"--by {name!r} is not a breakdown; use one or more of {', '.join(known)}"
                )
            if name not in names:
                names.append(name)
    return names


def _check_options(by: Sequence[str] | None, grain: str, conversion: str | None) -> list[str]:
    if grain not in GRAINS:
        raise KpiError(f"--grain {grain!r}: use one of {', '.join(GRAINS)}")
    if conversion is not None and conversion not in CONVERSIONS:
        raise KpiError(
            f"--conversion {conversion!r}: use one of {', '.join(CONVERSIONS)} (default: the "
            "first the data holds)"
        )
    return _parse_by(by)


def _span(engine: BatchEngine, dataset: str) -> tuple[datetime, datetime, set[str], int]:
    """First and last event time of ``dataset``, its event types and how many events have
    no time, with specific errors when it has no (dated) events."""
    span = engine.frame(
        "SELECT count(*) AS n, count(timestamp) AS dated, min(timestamp) AS first, "
        "max(timestamp) AS last FROM events WHERE dataset = $dataset",
        {"dataset": dataset},
    ).iloc[0]
    rows, dated, first, last = int(span["n"]), int(span["dated"]), span["first"], span["last"]
    if rows == 0:
        known = list(engine.frame("SELECT DISTINCT dataset FROM events ORDER BY 1")["dataset"])
        raise KpiError(
            f"no dataset {dataset!r} in the lake; it has {', '.join(known) or 'none'}"
            + ("" if known else " (run `bespoke ingest …` first)")
        )
    if dated == 0:
        raise KpiError(
            f"dataset {dataset!r} has no timestamped events ({rows:,} undated), and a KPI "
            "report is over time; MovieLens 1M, for one, ships without times"
        )
    types = engine.frame(
        "SELECT DISTINCT event_type FROM events WHERE dataset = $dataset", {"dataset": dataset}
    )["event_type"]
    return (first.to_pydatetime().astimezone(UTC), last.to_pydatetime().astimezone(UTC),
            set(types), rows - dated)  # fmt: skip


def _window(text: str | None, first: datetime, last: datetime) -> tuple[Window, Window]:
    """The window asked for and the part of it the data covers."""
    from bespoke.monitoring.windows import Window, parse_window

    whole = f"{first:%Y-%m-%d}..{last:%Y-%m-%d}"
    try:
        window = parse_window(text, last) if text else parse_window(whole, last)
    except ValueError as error:
        raise KpiError(str(error)) from error
    if not text:
        window = Window(window.start, window.end, f"the whole dataset ({whole})")
    data = parse_window(whole, last)
    start, end = max(window.start, data.start), min(window.end, data.end)
    if end <= start:
        raise KpiError(
            f"window {window.label!r} holds no events: the dataset's events run from "
            f"{first:%Y-%m-%d} to {last:%Y-%m-%d}"
        )
    return window, Window(start, end, f"{start:%Y-%m-%d}..{end - timedelta(days=1):%Y-%m-%d}")


def _conversion(types: set[str], name: str | None) -> Conversion | None:
    # Chosen from the dataset's event types, not the window's: a window where nobody
    # bought shows a conversion rate of 0, not a different definition of converting.
    if name is not None:
        chosen = CONVERSIONS[name]
        if chosen.event_type not in types:
            raise KpiError(
                f"--conversion {name}: the dataset has no {chosen.event_type!r} events (it "
                f"has {', '.join(sorted(types))})"
            )
        return chosen
    return next((c for c in CONVERSIONS.values() if c.event_type in types), None)


@dataclass(frozen=True)
class _Experiment:
    """The experiment the variant breakdown shows, and what the dataset has."""

    key: str | None
    variants: list[str]
    known: list[str]
    chosen: bool


def _experiment(engine: BatchEngine, dataset: str, key: str | None) -> _Experiment:
    """The experiment ``key`` (default: the one with the latest exposure that is not a QA
    override) with its variants in index order; a clear error for a key without exposures."""
    import pandas as pd

    found = engine.frame(
        "SELECT experiment, max(exposed_at) FILTER (WHERE NOT forced) AS latest "
        "FROM exposures WHERE dataset = $dataset GROUP BY experiment "
        "ORDER BY latest DESC NULLS LAST, experiment",
        {"dataset": dataset},
    )
    rows = [(name, None if pd.isna(latest) else latest)
            for name, latest in zip(found["experiment"], found["latest"], strict=True)]  # fmt: skip
    known = [row[0] for row in rows]
    asked = key is not None
    if asked and key not in known:
        raise KpiError(
            f"--experiment {key!r}: dataset {dataset!r} has no exposures to it; "
            + (
                f"it has exposures to {', '.join(repr(k) for k in known)}"
                if known
                else no_exposures(dataset)
            )
        )
    if key is None:
        key = next((name for name, latest in rows if latest is not None), None)
    if key is None:
        return _Experiment(None, [], known, False)
    variants = list(
        engine.frame(
            "SELECT variant FROM exposures WHERE dataset = $dataset AND experiment = "
            "$experiment AND NOT forced GROUP BY variant ORDER BY min(variant_index), variant",
            {"dataset": dataset, "experiment": key},
        )["variant"]
    )
    return _Experiment(key, variants, known, asked)


def _aggregate_sql(grain: str, chosen: list[Dimension], conversion: Conversion | None) -> str:
    """One scan: each grouping set is a breakdown over time or its window total."""
    dims = [f"coalesce(CAST({d.sql} AS VARCHAR), '{UNKNOWN}') AS d_{d.name}" for d in chosen]
    joins = []
    if any(d.needs == "users" for d in chosen):
        joins.append(
            "LEFT JOIN (SELECT * FROM users WHERE dataset = $dataset) u ON u.user_id = e.user_id"
        )
    if any(d.needs == "exposures" for d in chosen):
        # A person's exposure labels their events from its time on; one row per person
        # and experiment in the view, so neither join multiplies events.
        exposed = (
            "(SELECT person, variant, exposed_at FROM exposures WHERE dataset = $dataset "
            "AND experiment = $experiment AND NOT forced AND {} anonymous)"
        )
        joins.append(
            f"LEFT JOIN {exposed.format('NOT')} xu "
            "ON xu.person = e.user_id AND e.timestamp >= xu.exposed_at"
        )
        joins.append(
            f"LEFT JOIN {exposed.format('')} xa "
            "ON xa.person = e.anonymous_id AND e.timestamp >= xa.exposed_at"
        )
    if any(d.needs == "cohorts" for d in chosen):
        # A cohort is fixed by the person's first event ever, not the first in the window.
        joins.append(
            "LEFT JOIN (SELECT coalesce(user_id, anonymous_id) AS actor, min(timestamp) AS "
            "first_seen FROM events WHERE dataset = $dataset GROUP BY 1) c "
            "ON c.actor = coalesce(e.user_id, e.anonymous_id)"
        )
    converted = f"coalesce({conversion.sql}, false)" if conversion else "false"
    keys = ["event_type", *[f"d_{d.name}" for d in chosen]]
    sets = ["(period)", "()"] + [f"(period, {k}), ({k})" for k in keys]
    return f"""
        WITH base AS (
            SELECT coalesce(e.user_id, e.anonymous_id) AS actor,
                   CAST(date_trunc('{grain}', e.timestamp AT TIME ZONE 'UTC') AS DATE) AS period,
                   e.event_type,
                   {converted} AS converted,
                   CASE WHEN e.event_type = 'purchase' THEN e.value END AS revenue
                   {"".join(", " + d for d in dims)}
            FROM events e {" ".join(joins)}
            WHERE e.dataset = $dataset AND e.timestamp >= $start AND e.timestamp < $end
        )
        SELECT {", ".join(f"GROUPING({k}) AS g_{k}" for k in keys)},
               period, {", ".join(keys)},
               count(DISTINCT actor) AS active_users,
               count(*) AS events,
               count(DISTINCT actor) FILTER (WHERE converted) AS converters,
               sum(revenue) AS revenue
        FROM base
        GROUP BY GROUPING SETS ({", ".join(sets)})
    """


def _period_end(start: pd.Timestamp, grain: str) -> pd.Timestamp:
    import pandas as pd

    step = {"day": pd.DateOffset(days=1), "week": pd.DateOffset(weeks=1)}.get(
        grain, pd.DateOffset(months=1)
    )
    return start + step


def _periods(observed: Window, grain: str) -> pd.DatetimeIndex:
    """Every period start the observed span touches (quiet periods are zeros, not gaps)."""
    import pandas as pd

    first = pd.Timestamp(observed.start.date())
    last = pd.Timestamp((observed.end - timedelta(microseconds=1)).date())
    if grain == "week":  # DuckDB's weeks start on Monday (ISO)
        first -= pd.Timedelta(days=first.weekday())
    elif grain == "month":
        first = first.replace(day=1)
    freq = {"day": "D", "week": "W-MON", "month": "MS"}[grain]
    return pd.date_range(first, last, freq=freq)


def _reshape(raw: pd.DataFrame, keys: list[str], observed: Window, grain: str) -> pd.DataFrame:
    import numpy as np
    import pandas as pd

    dimension = pd.Series("all", index=raw.index, dtype=object)
    level = pd.Series("all", index=raw.index, dtype=object)
    for key in keys:
        grouped = raw[f"g_{key}"] == 0
        dimension[grouped] = key.removeprefix("d_")
        level[grouped] = raw.loc[grouped, key]
    frame = pd.DataFrame(
        {
            "dimension": dimension,
            "level": level.astype(str),
            "period": pd.to_datetime(raw["period"]),
            "active_users": raw["active_users"].astype("int64"),
            "events": raw["events"].astype("int64"),
            "converters": raw["converters"].astype("int64"),
            # No purchase in a group is no revenue (SQL's sum gives NULL there).
            "revenue": raw["revenue"].astype("float64").fillna(0.0),
        }
    )
    # Quiet periods get explicit zeros so lines drop to 0 instead of bridging the gap.
    periods = _periods(observed, grain)
    timed = frame[frame.period.notna()]
    grid = (
        timed[["dimension", "level"]]
        .drop_duplicates()
        .merge(pd.DataFrame({"period": periods}), how="cross")
    )
    timed = grid.merge(timed, on=["dimension", "level", "period"], how="left")
    counts = ["active_users", "events", "converters"]
    timed[counts] = timed[counts].fillna(0).astype("int64")
    timed["revenue"] = timed["revenue"].fillna(0.0)
    frame = pd.concat([timed, frame[frame.period.isna()]], ignore_index=True)
    users = frame.active_users.where(frame.active_users > 0)
    frame["events_per_user"] = frame.events / users
    frame["conversion_rate"] = frame.converters / users
    frame["revenue_per_user"] = frame.revenue / users
    start, end = pd.Timestamp(observed.start.date()), pd.Timestamp(observed.end.date())
    ends = frame.period.map(lambda p: _period_end(p, grain) if pd.notna(p) else pd.NaT)
    frame["complete"] = np.where(
        frame.period.notna(), (frame.period >= start) & (ends <= end), True
    )
    return frame


#: Headline rows: (metric, column, kind).
_HEADLINE = (
    ("active users", "active_users", "count"),
    ("events", "events", "count"),
    ("events per active user", "events_per_user", "ratio"),
    ("converters", "converters", "count"),
    ("conversion rate", "conversion_rate", "share"),
    ("revenue", "revenue", "money"),
    ("revenue per active user", "revenue_per_user", "money"),
)


def _headline(
    series: pd.DataFrame, grain: str, conversion: Conversion | None, has_revenue: bool
) -> tuple[pd.DataFrame, tuple[str, str] | None]:
    import pandas as pd

    overall = series[series.dimension == "all"]
    total = overall[overall.period.isna()].iloc[0]
    complete = overall[overall.period.notna() & overall.complete].sort_values("period")
    pair = complete.tail(2) if len(complete) >= 2 else None
    rows = []
    for metric, column, kind in _HEADLINE:
        if column in ("converters", "conversion_rate") and conversion is None:
            continue
        if column.startswith("revenue") and not has_revenue:
            continue
        previous = latest = change = float("nan")
        if pair is not None:
            previous, latest = (float(v) for v in pair[column])
            change = latest / previous - 1.0 if previous else float("nan")
        rows.append((metric, kind, float(total[column]), previous, latest, change))
    headline = pd.DataFrame(
        rows, columns=["metric", "kind", "window", "previous", "latest", "change"]
    )
    labels = None
    if pair is not None:
        labels = (
            period_label(pair.period.iloc[0], grain),
            period_label(pair.period.iloc[1], grain),
        )
    return headline, labels


def period_label(period: pd.Timestamp, grain: str) -> str:
    """How a period is named in tables: a day, ``week of`` its Monday, or a month."""
    if grain == "month":
        return f"{period:%Y-%m}"
    return f"week of {period:%Y-%m-%d}" if grain == "week" else f"{period:%Y-%m-%d}"


def compute_kpis(
    source: duckdb.DuckDBPyConnection | BatchEngine,
    dataset: str,
    *,
    window: str | None = None,
    by: Sequence[str] | None = None,
    grain: str = "week",
    conversion: str | None = None,
    experiment: str | None = None,
) -> KpiReport:
    """The KPIs of ``dataset`` over ``window`` (default: all of it) at ``grain``, overall,
    per event type and per breakdown in ``by`` (names of :func:`dimensions`; default
    segment and channel), on a lake connection (:meth:`Lake.connect`) or a batch engine
    (DuckDB or Spark: the same SQL, :mod:`bespoke.engine`). When the dataset
    has exposures, every metric is broken down by the variants of ``experiment`` too
    (default: the experiment exposed most recently).

    Raises :class:`KpiError` for an unknown dataset, breakdown or experiment, a bad or
    empty window, or ``--by variant`` on a dataset without exposures."""
    import duckdb

    from bespoke.engine.engines import DuckDBEngine

    engine = DuckDBEngine(con=source) if isinstance(source, duckdb.DuckDBPyConnection) else source
    names = _check_options(by, grain, conversion)
    first, last, types, undated = _span(engine, dataset)
    exp = _experiment(engine, dataset, experiment)
    has_variant = exp.key is not None
    if VARIANT_COLUMN in names and not has_variant:
        raise KpiError(f"--by variant: {no_exposures(dataset)}")
    if has_variant and VARIANT_COLUMN not in names:
        names.append(VARIANT_COLUMN)
    window_, observed = _window(window, first, last)
    chosen = [dimensions()[name] for name in names]
    conv = _conversion(types, conversion)
    sql = _aggregate_sql(grain, chosen, conv)
    params: dict[str, Any] = {"dataset": dataset, "start": observed.start, "end": observed.end}
    if has_variant:
        params["experiment"] = exp.key
    raw = engine.frame(sql, params)
    keys = ["event_type", *[f"d_{d.name}" for d in chosen]]
    has_revenue = bool(raw.revenue.notna().any())
    series = _reshape(raw, keys, observed, grain)
    headline, labels = _headline(series, grain, conv, has_revenue)
    notes = _notes(series, names, conv, observed, window_, labels)
    if undated:
        notes.append(f"{undated:,} events without a timestamp are left out.")
    if has_variant:
        notes += _variant_notes(series, exp)
    return KpiReport(
        dataset=dataset,
        window=window_,
        observed=observed,
        grain=grain,
        by=names,
        conversion=conv,
        series=series,
        headline=headline,
        periods=labels,
        has_revenue=has_revenue,
        has_variant=has_variant,
        notes=notes,
        experiment=exp.key,
        variants=exp.variants,
        experiments=exp.known,
        experiment_chosen=exp.chosen,
    )


def _variant_notes(series: pd.DataFrame, exp: _Experiment) -> list[str]:
    levels = set(series[(series.dimension == VARIANT_COLUMN) & series.period.isna()].level)
    if not exp.variants:
        return [
            f"Every exposure to experiment {exp.key!r} is a QA override (forced), which the "
            f"report leaves out: every event is {NOT_EXPOSED!r}."
        ]
    if levels <= {NOT_EXPOSED}:
        return [
            f"No event of the window happened at or after an exposure to experiment "
            f"{exp.key!r}: every event is {NOT_EXPOSED!r}."
        ]
    return []


def _notes(
    series: pd.DataFrame,
    names: list[str],
    conversion: Conversion | None,
    observed: Window,
    window: Window,
    labels: tuple[str, str] | None,
) -> list[str]:
    notes = []
    if (observed.start, observed.end) != (window.start, window.end):
        notes.append(f"The data covers {observed.label} of the window; the report is that part.")
    overall = series[(series.dimension == "all") & series.period.isna()].iloc[0]
    if conversion is not None and overall.converters == overall.active_users:
        types = series[(series.dimension == "event_type") & series.period.isna()].level
        if set(types) == {conversion.event_type}:
            notes.append(
                f"Every event here is a {conversion.event_type}, so every active user "
                "converts and the conversion rate is 100% by construction; active users, "
                "events and revenue per active user carry the signal."
            )
    if conversion is None:
        notes.append(
            "No event type here counts as a conversion "
            f"({', '.join(CONVERSIONS)}): conversion is left out."
        )
    for name in names:
        levels = series[(series.dimension == name) & series.period.isna()].level
        if set(levels) == {UNKNOWN}:
            notes.append(
                f"Every event's {name} is unknown in this dataset (the data does not "
                "record it), so that breakdown has one level."
            )
    if labels is None:
        notes.append("Fewer than two complete periods: no period-over-period change.")
    return notes


# --- rendering --------------------------------------------------------------------------


def format_value(value: float, kind: str) -> str:
    """A headline figure as shown: counts with separators, shares in %, money in $."""
    if value != value:  # NaN
        return "—"
    if kind == "count":
        return f"{value:,.0f}"
    if kind == "share":
        return f"{value:.1%}"
    if kind == "money":
        return f"${value:,.2f}"
    return f"{value:,.2f}"


def format_change(row: Any) -> str:
    """Shares change in percentage points (a relative change of a rate misleads)."""
    if row.kind == "share":
        delta = row.latest - row.previous
        return "—" if delta != delta else f"{delta * 100:+.1f} pp"
    return "—" if row.change != row.change else f"{row.change:+.1%}"


def headline_table(report: KpiReport) -> pd.DataFrame:
    """The headline as text, the columns named after the periods (for console and HTML)."""
    import pandas as pd

    previous, latest = report.periods or ("previous period", "latest period")
    return pd.DataFrame(
        {
            "metric": report.headline.metric,
            "window": [format_value(r.window, r.kind) for r in report.headline.itertuples()],
            previous: [format_value(r.previous, r.kind) for r in report.headline.itertuples()],
            latest: [format_value(r.latest, r.kind) for r in report.headline.itertuples()],
            "change": [format_change(r) for r in report.headline.itertuples()],
        }
    )


def _values(column: pd.Series) -> list[Any]:
    # Plain lists (not NumPy buffers) so the figures' JSON reads the same with any Plotly;
    # 5 significant digits are more than a plot or its hover shows, and keep files small.
    rounded = (None if v != v else float(f"{v:.5g}") for v in column.astype("float64"))
    return [int(v) if v is not None and v.is_integer() else v for v in rounded]


def _dates(column: pd.Series) -> list[str]:
    return [f"{p:%Y-%m-%d}" for p in column]


def _rows(report: KpiReport) -> list[tuple[str, str, str]]:
    """(column, axis title, tick format) of the figures' rows."""
    rows = [
        ("active_users", "active users", ",d"),
        ("events_per_user", "events / active user", ".2f"),
    ]
    if report.conversion is not None:
        rows.append(("conversion_rate", "conversion rate", ".0%"))
    if report.has_revenue:
        rows.append(("revenue_per_user", "revenue / active user", "$.2f"))
    return rows


def _shade_partial(figure: go.Figure, report: KpiReport, frame: pd.DataFrame) -> None:
    for period in sorted(set(frame.loc[~frame.complete.astype(bool), "period"])):
        figure.add_vrect(
            x0=period, x1=_period_end(period, report.grain), row="all", col=1,
            fillcolor="#999", opacity=0.12, line_width=0,
        )  # fmt: skip


def _levels_drawn(report: KpiReport) -> int:
    """Levels drawn per breakdown: :data:`MAX_LEVELS`, fewer when the points would
    overflow :data:`MAX_POINTS`."""
    periods = report.series.period.nunique()
    per_trace = periods * len(_rows(report))
    overall = 1 + report.levels("event_type").shape[0]
    drawn = [name for name in report.by if name != VARIANT_COLUMN or report.has_variant]
    wanted = sum(min(MAX_LEVELS, report.levels(name).shape[0]) for name in drawn)
    if not drawn or (overall + wanted) * per_trace <= MAX_POINTS:
        return MAX_LEVELS
    return max(1, min(MAX_LEVELS, (MAX_POINTS // per_trace - overall) // len(drawn)))


def _figure(report: KpiReport, dimension: str, max_levels: int = MAX_LEVELS) -> go.Figure:
    """Rows of metrics over time sharing the x axis, one line per level; for 'all' the
    events row has one line per event type as well."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    rows = _rows(report)
    figure = make_subplots(
        rows=len(rows), cols=1, shared_xaxes=True, vertical_spacing=0.05,
        subplot_titles=[title for _, title, _ in rows],
    )  # fmt: skip
    frame = report.over_time(dimension)
    levels = list(report.levels(dimension).level[:max_levels])
    for index, level in enumerate(levels):
        part = frame[frame.level == level]
        for row, (column, title, _) in enumerate(rows, start=1):
            figure.add_trace(
                go.Scatter(
                    x=_dates(part.period), y=_values(part[column]), name=level,
                    legendgroup=level, showlegend=row == 1, mode="lines+markers",
                    marker={"size": 4}, line={"color": _COLORS[index % len(_COLORS)]},
                    hovertemplate=f"{level}<br>%{{x}}<br>{title}: %{{y}}<extra></extra>",
                ),
                row=row, col=1,
            )  # fmt: skip
    if dimension == "all":
        types = report.over_time("event_type")
        totals = frame.set_index("period").active_users
        for index, event_type in enumerate(sorted(set(types.level))):
            part = types[types.level == event_type]
            users = totals.reindex(part.period).replace(0, float("nan"))
            color = _COLORS[(index + 1) % len(_COLORS)]
            figure.add_trace(
                go.Scatter(
                    x=_dates(part.period), y=_values(part.events.to_numpy() / users),
                    name=f"{event_type} events", mode="lines",
                    line={"dash": "dot", "color": color},
                    hovertemplate=f"{event_type}<br>%{{x}}<br>events / active user: "
                                  "%{y}<extra></extra>",
                ),
                row=2, col=1,
            )  # fmt: skip
    for row, (_, _, tick) in enumerate(rows, start=1):
        figure.update_yaxes(tickformat=tick, rangemode="tozero", row=row, col=1)
    figure.update_xaxes(gridcolor=_GRID, linecolor="#999")
    figure.update_yaxes(gridcolor=_GRID, zerolinecolor="#ccc")
    _shade_partial(figure, report, frame)
    # A bare template: Plotly's named ones add ~8 kB of JSON to every figure.
    figure.update_layout(
        height=230 * len(rows) + 80, margin={"l": 60, "r": 20, "t": 40, "b": 40},
        template="none", plot_bgcolor="white", paper_bgcolor="white",
        hovermode="x unified", legend={"title": {"text": dimension}},
    )  # fmt: skip
    return figure


_GRID = "#eee"
_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")  # fmt: skip


def _html_table(frame: pd.DataFrame, numeric_from: int = 1) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td{' class=num' if i >= numeric_from else ''}>{html.escape(str(v))}</td>"
            for i, v in enumerate(row)
        )
        + "</tr>"
        for row in frame.itertuples(index=False)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def levels_table(report: KpiReport, dimension: str) -> pd.DataFrame:
    """Every metric of each level of ``dimension`` over the window, as text (for console
    and HTML), in :meth:`KpiReport.levels` order."""
    import pandas as pd

    levels = report.levels(dimension)
    columns: dict[str, Any] = {
        "level": levels.level,
        "active users": [format_value(v, "count") for v in levels.active_users],
        "events": [format_value(v, "count") for v in levels.events],
        "events / active user": [format_value(v, "ratio") for v in levels.events_per_user],
    }
    if report.conversion is not None:
        columns["conversion rate"] = [format_value(v, "share") for v in levels.conversion_rate]
    if report.has_revenue:
        columns["revenue / active user"] = [
            format_value(v, "money") for v in levels.revenue_per_user
        ]
    return pd.DataFrame(columns)


def _levels_table(report: KpiReport, dimension: str) -> str:
    return _html_table(levels_table(report, dimension))


def _variant_section(report: KpiReport, drawn: int) -> list[str]:
    esc = html.escape
    if not report.has_variant or report.experiment is None:
        text = no_exposures(report.dataset)
        return [
            f'<section id="by-{VARIANT_COLUMN}"><h2>By experiment variant</h2>',
            f'<p class="note">{esc(text[0].upper() + text[1:])}. This section then shows '
            "every metric above per variant.</p></section>",
        ]
    key = esc(report.experiment)
    others = [esc(k) for k in report.experiments if k != report.experiment]
    if report.experiment_chosen:
        which = "the experiment asked for"
    else:
        which = "the one exposed most recently"
    if others:
        which += "; <code>--experiment</code> picks another of " + ", ".join(
            f"<code>{k}</code>" for k in others
        )
    return [
        f'<section id="by-{VARIANT_COLUMN}"><h2>By experiment variant: <code>{key}</code></h2>',
        f"<p>Experiment <code>{key}</code> ({which}). An event counts in the variant its "
        "person (user id, or anonymous id for an anonymous exposure) was exposed to when it "
        "happened at or after that first exposure, and as "
        f"<em>{esc(NOT_EXPOSED)}</em> before it or when the person was never exposed; QA "
        "overrides (forced exposures) are left out. A person active before and after their "
        f"exposure counts in both <em>{esc(NOT_EXPOSED)}</em> and their variant, so active "
        "users of the levels may add up to more than the total; events do add up.</p>",
        _figure_block(_figure(report, VARIANT_COLUMN, drawn), f"fig-{VARIANT_COLUMN}"),
        _levels_table(report, VARIANT_COLUMN),
        "</section>",
    ]


def _figure_block(figure: go.Figure, target: str) -> str:
    # The spec goes in an inert JSON script; one loader below draws them all. Every trace
    # has the same periods, so they are written once ("x") and the loader hands them to
    # each trace: at a daily grain that halves what the figures weigh. "</" is escaped so
    # no label from the data can close the script element.
    import plotly.utils

    spec = figure.to_plotly_json()
    shared = next((list(trace["x"]) for trace in spec["data"] if "x" in trace), [])
    for trace in spec["data"]:
        if list(trace.get("x", ())) == shared:
            del trace["x"]
    text = json.dumps(
        {"x": shared, "data": spec["data"], "layout": spec["layout"]},
        cls=plotly.utils.PlotlyJSONEncoder,
        separators=(",", ":"),
    ).replace("</", "<\\/")
    return (
        f'<div class="figure" id="{target}"></div>'
        f'<script type="application/json" class="kpi-figure" data-target="{target}">'
        f"{text}</script>"
    )


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;
max-width:1100px;color:#222;padding:0 1rem}h1{margin-bottom:.2rem}.meta{color:#666}
table{border-collapse:collapse;margin:.5rem 0 1rem}th,td{padding:.25rem .7rem;
border-bottom:1px solid #ddd;text-align:left}td.num{text-align:right;
font-variant-numeric:tabular-nums}dt{font-weight:600}dd{margin:0 0 .5rem 1rem}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.5rem .8rem}
details{margin-bottom:1rem}
"""

_LOADER = """
document.querySelectorAll('script.kpi-figure').forEach(function (node) {
  var spec = JSON.parse(node.textContent);
  spec.data.forEach(function (trace) { if (trace.x === undefined) trace.x = spec.x; });
  Plotly.newPlot(node.dataset.target, spec.data, spec.layout,
                 {responsive: true, displaylogo: false});
});
"""


def render_html(report: KpiReport, generated_at: datetime | None = None) -> str:
    """The report as one self-contained HTML page (Plotly's JavaScript inlined once)."""
    import plotly.offline

    generated_at = generated_at or datetime.now(UTC)
    conversion = report.conversion
    esc = html.escape
    drawn = _levels_drawn(report)
    notes = list(report.notes)
    if drawn < MAX_LEVELS:
        notes.append(
            f"Over {report.series.period.nunique()} {report.grain}s, only the {drawn} largest "
            "levels of each breakdown are drawn, to keep the file small (the tables list "
            "them all); a coarser --grain or fewer --by draw more."
        )
    sections = [
        f"<h1>KPI report — {esc(report.dataset)}</h1>",
        f'<p class="meta">window {esc(report.window_text)} · grain {report.grain} · '
        f"generated {generated_at:%Y-%m-%d %H:%M} UTC by <code>bespoke report kpi</code></p>",
        *[f'<p class="note">{esc(note)}</p>' for note in notes],
        '<section id="headline"><h2>Headline</h2>',
        "<p>The window's totals, and the latest complete "
        f"{report.grain} against the one before."
        + (f" Conversion: share of active users who {esc(conversion.label)}." if conversion else "")
        + "</p>",
        _html_table(headline_table(report)),
        "</section>",
        '<section id="definitions"><h2>Definitions</h2><dl>',
        "<dt>active users</dt><dd>distinct people (user id, else anonymous id) with at "
        "least one event in the period.</dd>",
        "<dt>events per active user</dt><dd>events in the period / active users; the dotted "
        "lines split it by event type and add up to it.</dd>",
        "<dt>conversion rate</dt><dd>"
        + (
            f"share of active users who {esc(conversion.label)} in the period "
            f"(<code>{esc(conversion.name)}</code>: <code>{esc(conversion.sql)}</code>). "
            f"{esc(conversion.why)}"
            if conversion
            else "not computed: no event type here counts as a conversion."
        )
        + "</dd>",
        *(
            ["<dt>revenue per active user</dt><dd>sum of purchase values / active users.</dd>"]
            if report.has_revenue
            else []
        ),
        "<dt>complete period</dt><dd>one inside both the window and the days the data "
        "covers; partial ones are shaded grey and left out of the period-over-period change."
        "</dd>",
        "<dt>breakdowns</dt><dd>a person counts in every level they had events in (channel, "
        "device, experiment variant) or in their one level (attributes); at most "
        f"{drawn} levels are drawn, the largest by active users (variants: in their "
        "order, control first); the table lists them all.</dd>",
        "</dl></section>",
        '<section id="overall"><h2>Engagement and conversion over time</h2>',
        _figure_block(_figure(report, "all"), "fig-all"),
        "</section>",
    ]
    titles = dimensions()
    for name in report.by:
        if name == VARIANT_COLUMN:
            continue
        sections += [
            f'<section id="by-{name}"><h2>By {esc(titles[name].title)}</h2>',
            _figure_block(_figure(report, name, drawn), f"fig-{name}"),
            "<details><summary>Levels over the whole window</summary>",
            _levels_table(report, name),
            "</details></section>",
        ]
    sections += _variant_section(report, drawn)
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>KPI report — {esc(report.dataset)}</title><style>{_CSS}</style>"
        f'<script type="text/javascript">{plotly.offline.get_plotlyjs()}</script>'
        f"</head><body>{''.join(sections)}<script>{_LOADER}</script></body></html>"
    )


# --- writing ----------------------------------------------------------------------------


def _target(out: Path | None, reports_dir: Path, now: datetime) -> Path:
    if out is not None:
        if out.exists() and not out.is_dir():
            raise KpiError(f"--out {out} is a file; give a folder for {REPORT_FILE}")
        return out / REPORT_FILE
    folder = reports_dir / f"{now:%Y%m%dT%H%M%SZ}"
    return folder / REPORT_FILE


def write_kpi_report(
    settings: Settings,
    dataset: str,
    *,
    window: str | None = None,
    by: Sequence[str] | None = None,
    grain: str = "week",
    conversion: str | None = None,
    experiment: str | None = None,
    out: Path | None = None,
) -> tuple[KpiReport, Path]:
    """Compute the KPIs (:func:`compute_kpis`) on the settings' lake and write the HTML to
    ``out/kpi.html`` or ``<reports_dir>/<UTC timestamp>/kpi.html``; returns the report and
    the file. Bad input raises :class:`KpiError` before anything is written."""
    from bespoke.features.lake import Lake

    now = datetime.now(UTC)
    _check_options(by, grain, conversion)  # before opening the lake: cheap errors first
    path = _target(out, settings.reports_dir, now)
    con = Lake(settings.lake_url).connect()  # type: ignore[arg-type]
    try:
        report = compute_kpis(
            con, dataset, window=window, by=by, grain=grain, conversion=conversion,
            experiment=experiment,
        )  # fmt: skip
    finally:
        con.close()
    write_html(path, render_html(report, now))
    return report, path
