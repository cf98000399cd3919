"""Drift reports: did what feeds the models move between two time windows?

For each window, feature tables are built from the lake (:func:`window_tables`):

- ``users``: one row per person active in the window — events and active days (per 30
  days when the windows' lengths differ by more than 10 %), mean value (rating or
  amount), quantity, repeat share, share of each event type, tenure, new vs returning,
  and the person's attributes when the source has them;
- ``items``: one row per item with at least ``min_item_events`` events — share of the
  window's events (‰), share of its people, mean value, release year, main genre —
  computed at the same volume in both windows (:func:`item_table` says why);
- ``events``: one row per event — event type, channel, device, value, quantity, hour and
  day of week (UTC), the item (its most frequent levels), the item's release year;
- ``ranker``: one row per (person, candidate) for a sample of the window's people when a
  ``@champion`` ranker is registered — the ranker's own inputs, built by its pipeline's
  feature path as of the window's end, and its calibrated click probability.

Each column is tested on the full tables (:func:`compare_table`): Kolmogorov–Smirnov for
numeric columns, chi-square (or Jensen–Shannon) for categorical ones. A column drifts when
its test is significant *and* the effect is large enough (KS statistic D, Jensen–Shannon
distance): with a million rows any difference is significant, and a monitor that fires on
a 0.5 % shift is one people learn to ignore. Rows of the ``events`` and ``ranker`` tables
are not independent — one person contributes many — so their p-values count people, not
rows (Kish's effective number, the worst-case design effect); otherwise two random halves
of the same people would "drift" on hour of day simply because people have habits. The
items table's figures all come from the window's people, so its p-values count at most
as many. A table drifts when at least
``drift_share`` of its tested columns drift; the report drifts when at least
``min_tables`` tables do. Thresholds live in ``drift.json`` beside this module (or a file
of the same shape, :func:`load_drift_config`).

The HTML is Evidently 0.7's ``DataDriftPreset`` on a random sample of each side
(``html.max_rows``, 5,000 by default: Evidently's own pass over millions of rows takes
minutes), at most ``html.columns_per_file`` columns per file so each file stays under
5 MB (its size grows with columns, hardly with rows). Evidently does not re-test the
sample: a registered Evidently stat test hands it the full-data verdicts, so the HTML and
``drift.json`` always agree. Output: ``<reports_dir>/<UTC timestamp>/drift.json`` and
``drift-<table>[-k].html``, written all at once when everything has succeeded.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import uuid
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from bespoke.monitoring.config import load_json_config
from bespoke.monitoring.windows import Window, parse_window

if TYPE_CHECKING:
    import duckdb

    from bespoke.segments.live import LiveScorer
    from bespoke.settings import Settings
    from bespoke.training.ranker import RankingPipeline

TABLES = ("users", "items", "events", "ranker", "persons")
TableName = Literal["users", "items", "events", "ranker", "persons"]
#: Name of the machine-readable result in a report folder.
JSON_NAME = "drift.json"
_MISSING = "(missing)"
_OTHER = "(other)"
_DAY = 86_400.0
_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
#: User attributes tested in the users table (state has too many levels for its counts).
_USER_NUMERIC = ("age",)
_USER_CATEGORICAL = ("gender", "occupation", "region")


class DriftError(ValueError):
    """Bad input to a drift report (window, dataset, config): the CLI exits 2 with it."""


# --- configuration ------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NumericTest(_Strict):
    """Kolmogorov–Smirnov: drift when p < ``p_value`` and D ≥ ``min_statistic``."""

    test: Literal["ks"] = "ks"
    p_value: float = Field(0.05, gt=0, lt=1)
    min_statistic: float = Field(0.1, ge=0, le=1)


class CategoricalTest(_Strict):
    """``chisquare``: drift when p < ``p_value`` and the Jensen–Shannon distance (base 2)
    ≥ ``min_distance``; ``jensenshannon``: drift when the distance ≥ ``min_distance``."""

    test: Literal["chisquare", "jensenshannon"] = "chisquare"
    p_value: float = Field(0.05, gt=0, lt=1)
    min_distance: float = Field(0.1, ge=0, le=1)


class DomainCheck(_Strict):
    """Each column's value domain, checked on its own, whatever the number of people: a
    column whose reference takes at most ``max_levels`` distinct values (a rating scale,
    event types, channels, hours) drifts when more than ``max_new_share`` of the current
    values lie outside the reference's set (new levels), or more than
    ``max_vanished_share`` of the reference values have a level the current window lacks.
    p-values that count people hide such a change when few people produce many rows."""

    enabled: bool = True
    max_levels: int = Field(50, ge=2)
    #: A domain is checked only when its levels are well populated in the reference
    #: (reference values per distinct value): counts of a few hundred people are not a
    #: domain, and their unseen values are noise.
    min_rows_per_level: int = Field(20, ge=1)
    max_new_share: float = Field(0.05, gt=0, le=1)
    max_vanished_share: float = Field(0.05, gt=0, le=1)


class TableConfig(_Strict):
    enabled: bool = True
    #: Share of the tested columns that must drift for the table to drift.
    drift_share: float = Field(0.3, gt=0, le=1)
    #: Fewer rows than this on either side: the table is not tested (a note says so).
    min_rows: int = Field(30, ge=2)
    #: Overrides of the report-wide tests for this table.
    numeric: NumericTest | None = None
    categorical: CategoricalTest | None = None
    #: Columns left out of the tests and the HTML.
    exclude: tuple[str, ...] = ()


class TablesConfig(_Strict):
    users: TableConfig = TableConfig()
    items: TableConfig = TableConfig()
    events: TableConfig = TableConfig()
    ranker: TableConfig = TableConfig()
    #: The segment and churn models' inputs and outputs per person (when they are trained).
    persons: TableConfig = TableConfig()


class RankerConfig(_Strict):
    #: People sampled per window for the ranker table (each brings its candidates).
    users: int = Field(200, ge=1)


class HtmlConfig(_Strict):
    enabled: bool = True
    #: Most rows per side Evidently sees (a random sample of the full table).
    max_rows: int = Field(5_000, ge=100)
    #: Most columns of one table in the HTML (drifted first, then by effect); every
    #: column is in drift.json whatever this says.
    max_columns: int = Field(24, ge=1)
    #: Columns per HTML file: a file is ~3.6 MB plus ~70 kB per column, so 12 stays
    #: under 5 MB.
    columns_per_file: int = Field(12, ge=1, le=16)


class DriftConfig(_Strict):
    """Thresholds of the drift report (``drift.json`` beside this module is the default)."""

    numeric: NumericTest = NumericTest()
    categorical: CategoricalTest = CategoricalTest()
    #: Categorical columns keep their most frequent levels; the rest become "(other)".
    top_categories: int = Field(20, ge=2)
    #: Items with fewer events in a window are left out of its items table.
    min_item_events: int = Field(5, ge=1)
    #: Drifted tables needed for the report to count as drift.
    min_tables: int = Field(1, ge=1)
    domain: DomainCheck = DomainCheck()
    tables: TablesConfig = TablesConfig()
    ranker: RankerConfig = RankerConfig()
    html: HtmlConfig = HtmlConfig()
    seed: int = 42

    def table(self, name: str) -> TableConfig:
        return getattr(self.tables, name)


def default_config_path() -> Path:
    """The shipped ``drift.json``."""
    return Path(str(resources.files("bespoke.monitoring").joinpath("drift.json")))


def load_drift_config(path: Path | str | None = None) -> DriftConfig:
    """The thresholds in ``path`` (the shipped ``drift.json`` when ``None``); a missing,
    unreadable or invalid file raises :class:`DriftError` naming the file and the field."""
    source = Path(path) if path is not None else default_config_path()
    return load_json_config(source, DriftConfig, "drift config", DriftError)


# --- results ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ColumnDrift:
    """One column's test on the full tables."""

    column: str
    kind: Literal["numeric", "categorical"]
    test: str  # "ks" | "chisquare" | "jensenshannon"
    statistic: float  # KS D, or the chi-square statistic (on the effective counts)
    p_value: float | None  # None for jensenshannon
    distance: float  # KS D, or the Jensen–Shannon distance (base 2)
    drifted: bool
    rows: tuple[int, int]  # non-missing values, reference and current
    effective_rows: tuple[int, int]  # what the p-value counts (people for clustered rows)
    reference: str  # a short description: mean and median, or the top level's share
    current: str
    #: The value-domain check (small domains only; see :class:`DomainCheck`).
    domain: DomainChange | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "test": self.test,
            "statistic": _finite(self.statistic),
            "p_value": _finite(self.p_value),
            "distance": _finite(self.distance),
            "drifted": self.drifted,
            "rows": list(self.rows),
            "effective_rows": list(self.effective_rows),
            "reference": self.reference,
            "current": self.current,
            "domain": None if self.domain is None else self.domain.to_dict(),
        }


@dataclass(frozen=True)
class DomainChange:
    """How a small value domain moved between the windows."""

    distinct: tuple[int, int]  # distinct values, reference and current
    new_share: float  # share of current values outside the reference's set
    vanished_share: float  # share of reference values whose level the current lacks
    new_levels: tuple[str, ...]  # the most frequent new levels (at most five)
    vanished_levels: tuple[str, ...]
    drifted: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "distinct": list(self.distinct),
            "new_share": round(self.new_share, 6),
            "vanished_share": round(self.vanished_share, 6),
            "new_levels": list(self.new_levels),
            "vanished_levels": list(self.vanished_levels),
            "drifted": self.drifted,
        }


@dataclass(frozen=True)
class TableDrift:
    """One feature table's verdict and its columns' tests."""

    name: str
    drifted: bool
    share_drifted: float
    drift_share: float
    columns: dict[str, ColumnDrift] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # column → why not tested
    rows_reference: int = 0
    rows_current: int = 0
    note: str | None = None  # why the table was not tested at all
    html: tuple[Path, ...] = ()

    @property
    def tested(self) -> bool:
        return bool(self.columns)

    @property
    def drifted_columns(self) -> list[str]:
        return [name for name, column in self.columns.items() if column.drifted]

    @property
    def domain_changes(self) -> list[str]:
        """Columns whose value domain changed: each one makes the table drift."""
        return [n for n, c in self.columns.items() if c.domain is not None and c.domain.drifted]

    def to_dict(self) -> dict[str, Any]:
        return {
            "drifted": self.drifted,
            "share_drifted": round(self.share_drifted, 6),
            "drift_share": self.drift_share,
            "rows": {"reference": self.rows_reference, "current": self.rows_current},
            "note": self.note,
            "html": [path.name for path in self.html],
            "columns": {name: column.to_dict() for name, column in self.columns.items()},
            "skipped": dict(self.skipped),
        }


@dataclass(frozen=True)
class DriftResult:
    """What :func:`run_drift` found and where it wrote it."""

    dataset: str
    reference: Window
    current: Window
    drifted: bool
    report_dir: Path
    json: Path
    html: list[Path]
    tables: dict[str, TableDrift]
    notes: list[str] = field(default_factory=list)

    @property
    def drifted_tables(self) -> list[str]:
        return [name for name, table in self.tables.items() if table.drifted]

    def top_columns(self, n: int = 5) -> list[tuple[str, ColumnDrift]]:
        """The ``n`` most drifted columns (table, column), largest effect first."""
        found = [
            (table.name, column)
            for table in self.tables.values()
            for column in table.columns.values()
            if column.drifted
        ]
        return sorted(found, key=lambda pair: -pair[1].distance)[:n]


def _finite(value: float | None) -> float | None:
    if value is None or not np.isfinite(value):
        return None
    return float(value)


# --- feature tables -----------------------------------------------------------------------


@dataclass
class FeatureTable:
    """A window's feature table: the frame, which columns are numeric or categorical, and
    (for tables with many rows per person) the column naming whose row it is."""

    name: str
    frame: pd.DataFrame
    numeric: list[str]
    categorical: list[str]
    cluster: str | None = None
    #: At most this many independent rows, whatever the frame's length (see items).
    effective_cap: int | None = None
    note: str | None = None  # set when the table could not be built

    @property
    def columns(self) -> list[str]:
        return [*self.numeric, *self.categorical]


@dataclass
class WindowEvents:
    """A window's events with what the tables need from outside it: each person's first
    event and count before the window, the dataset's event types, attributes, catalog."""

    dataset: str
    window: Window
    events: pd.DataFrame
    users: pd.DataFrame
    items: pd.DataFrame
    event_types: list[str]

    def split(self, seed: int, share: float = 0.5) -> tuple[WindowEvents, WindowEvents]:
        """Two random halves of the window's people, each with all their events (the
        first holds ``share`` of the people).

        People, not events, are the independent units: a half keeps each of its people
        whole, as a later window would, so the per-person table sees two samples of people
        and the per-event tables see the same people's habits, not split copies of them.
        """
        people = np.sort(self.events["person"].unique())
        rng = np.random.default_rng(seed)
        first = set(rng.permutation(people)[: round(len(people) * share)])
        in_first = self.events["person"].isin(first).to_numpy()
        return (
            WindowEvents(
                self.dataset, self.window, self.events[in_first], self.users, self.items,
                self.event_types,
            ),
            WindowEvents(
                self.dataset, self.window, self.events[~in_first], self.users, self.items,
                self.event_types,
            ),
        )  # fmt: skip


def dataset_span(con: duckdb.DuckDBPyConnection, dataset: str) -> tuple[datetime, datetime]:
    """First and latest event of ``dataset``; :class:`DriftError` when it has none."""
    first, last = con.execute(
        "SELECT min(timestamp), max(timestamp) FROM events WHERE dataset = ?", [dataset]
    ).fetchone()
    if last is None:
        known = [
            row[0]
            for row in con.execute("SELECT DISTINCT dataset FROM events ORDER BY 1").fetchall()
        ]
        raise DriftError(
            f"dataset {dataset!r} has no timed events in the lake"
            + (f" (it holds {', '.join(known)})" if known else " (the lake is empty)")
        )
    return first.astimezone(UTC), last.astimezone(UTC)


def resolve_window(window: str | Window, anchor: datetime, role: str) -> Window:
    if isinstance(window, Window):
        return window
    try:
        return parse_window(window, anchor)
    except ValueError as error:
        raise DriftError(f"{role} window: {error}") from error


def load_window(con: duckdb.DuckDBPyConnection, dataset: str, window: Window) -> WindowEvents:
    """The events of ``dataset`` in ``window`` (empty frame when there are none)."""
    events = con.execute(
        """
        WITH w AS (
            SELECT coalesce(user_id, anonymous_id) AS person, item_id, event_type, channel,
                   device, value, quantity, epoch(timestamp) AS t,
                   hour(timestamp) AS hour, isodow(timestamp) AS dow
            FROM events WHERE dataset = $1 AND timestamp >= $2 AND timestamp < $3
        ),
        people AS (
            SELECT coalesce(user_id, anonymous_id) AS person,
                   min(epoch(timestamp)) AS person_first_t,
                   count(*) FILTER (WHERE timestamp < $2) AS person_before
            FROM events
            WHERE dataset = $1 AND timestamp < $3
              AND coalesce(user_id, anonymous_id) IN (SELECT person FROM w)
            GROUP BY 1
        )
        SELECT w.*, people.person_first_t, people.person_before
        FROM w LEFT JOIN people USING (person)
        ORDER BY w.t, w.person, w.item_id
        """,
        [dataset, window.start, window.end],
    ).df()
    events = events[events["person"].notna()].reset_index(drop=True)
    users = con.execute(
        "SELECT user_id AS person, age, gender, occupation, region FROM users WHERE dataset = ?",
        [dataset],
    ).df()
    items = con.execute(
        "SELECT item_id, release_year, genres[1] AS genre FROM items WHERE dataset = ?",
        [dataset],
    ).df()
    types = [
        row[0]
        for row in con.execute(
            "SELECT DISTINCT event_type FROM events WHERE dataset = ? ORDER BY 1", [dataset]
        ).fetchall()
    ]
    return WindowEvents(dataset, window, events, users, items, types)


def _spread(counts: pd.Series, rng: np.random.Generator) -> np.ndarray:
    """Counts spread uniformly over their unit cell (c − 0.5 + U[0, 1)).

    A count divided by a window's total (or length) lies on a lattice of step 1/total,
    and two windows' lattices never line up: the KS test would take the misaligned atoms
    for drift. Spread, equal rates give equal continuous distributions whatever the total.
    """
    values = counts.to_numpy(np.float64)
    return values - 0.5 + rng.random(len(values))


def _seed(data: WindowEvents) -> int:
    # Same window, same spread: a report run twice gives the same figures.
    return int(data.window.start.timestamp()) ^ len(data.events)


def user_table(data: WindowEvents, per_days: float | None = None) -> FeatureTable:
    """One row per person active in the window. Activity is counted over the window, or
    per ``per_days`` days when given (for windows of different lengths)."""
    events = data.events
    scale = 1.0 if per_days is None else per_days / data.window.days
    suffix = "" if per_days is None else f"_per_{per_days:g}d"
    end = data.window.end.timestamp()
    groups = events.groupby("person", sort=True)
    size = groups.size()
    frame = pd.DataFrame(index=size.index)
    numeric: list[str] = []
    categorical: list[str] = []

    def add(name: str, values: Any, kind: str = "numeric") -> None:
        frame[name] = values
        (numeric if kind == "numeric" else categorical).append(name)

    # Counts stay counts when the windows are about as long; rescaled, they are spread
    # over their unit cell first (see _spread).
    days = pd.DataFrame({"person": events["person"], "day": events["t"] // _DAY})
    active = days.drop_duplicates().groupby("person", sort=True).size().reindex(size.index)
    if per_days is None:
        add("events", size.astype(np.float64))
        add("active_days", active.astype(np.float64))
    else:
        rng = np.random.default_rng(_seed(data))
        add(f"events{suffix}", _spread(size, rng) * scale)
        add(f"active_days{suffix}", _spread(active, rng) * scale)
    if events["value"].notna().any():
        add("mean_value", groups["value"].mean())
    if events["quantity"].notna().any():
        add("mean_quantity", groups["quantity"].mean())
    if events["item_id"].notna().any():
        add("repeat_share", 1.0 - groups["item_id"].nunique() / size)
    if len(data.event_types) > 1:
        mix = pd.crosstab(events["person"], events["event_type"], normalize="index")
        for kind in data.event_types:
            add(f"share_{kind}", mix.get(kind, 0.0))
    add("tenure_days", (end - groups["person_first_t"].first()) / _DAY)
    add(
        "returning",
        np.where(groups["person_before"].first().fillna(0) > 0, "returning", "new"),
        "categorical",
    )
    attributes = data.users.drop_duplicates("person").set_index("person").reindex(frame.index)
    for name in _USER_NUMERIC:
        if name in attributes and attributes[name].notna().any():
            add(name, pd.to_numeric(attributes[name], errors="coerce"))
    for name in _USER_CATEGORICAL:
        if name in attributes and attributes[name].notna().any():
            add(name, attributes[name].astype(object), "categorical")
    return FeatureTable("users", frame.reset_index(drop=True), numeric, categorical)


def item_table(data: WindowEvents, min_events: int = 5, volume: int | None = None) -> FeatureTable:
    """One row per item with at least ``min_events`` events in the window.

    Per-item shares depend on how many events the window holds: twice the traffic puts
    more rarely seen items over ``min_events``, and the shares' distribution moves with no
    change in behaviour. With ``volume`` (the smaller window's count of item events), a
    larger window keeps a random subset of its people — whole, as they are the sampling
    unit — holding about that many events, so both tables are computed at the same volume.
    """
    events = data.events[data.events["item_id"].notna()]
    if events.empty:
        return FeatureTable("items", pd.DataFrame(), [], [], note="no item ids in the events")
    if volume is not None and len(events) > volume:
        per_person = events.groupby("person", sort=True).size()
        order = np.random.default_rng(_seed(data)).permutation(len(per_person))
        counts = per_person.to_numpy()[order]
        n_people = int(np.searchsorted(np.cumsum(counts), volume) + 1)
        events = events[events["person"].isin(per_person.index[order[:n_people]])]
    groups = events.groupby("item_id", sort=True)
    size = groups.size()
    # An item seen a handful of times has no stable share or mean rating, and how many
    # such items a window holds depends on its volume, not on behaviour.
    size = size[size >= min_events]
    if size.empty:
        return FeatureTable("items", pd.DataFrame(), [], [],
                            note=f"no item has {min_events} events in the window")  # fmt: skip
    rng = np.random.default_rng(_seed(data))
    frame = pd.DataFrame(index=size.index)
    numeric = ["share_permille", "people_share"]
    # Shares, not counts: windows differ in volume.
    frame["share_permille"] = 1000.0 * _spread(size, rng) / len(events)
    people = groups["person"].nunique().reindex(size.index)
    frame["people_share"] = _spread(people, rng) / events["person"].nunique()
    if events["value"].notna().any():
        frame["mean_value"] = groups["value"].mean().reindex(size.index)
        numeric.append("mean_value")
    categorical = []
    catalog = data.items.drop_duplicates("item_id").set_index("item_id").reindex(frame.index)
    if catalog["release_year"].notna().any():
        frame["release_year"] = pd.to_numeric(catalog["release_year"], errors="coerce")
        numeric.append("release_year")
    if catalog["genre"].notna().any():
        frame["genre"] = catalog["genre"].astype(object)
        categorical.append("genre")
    # Every item's figures come from the same people: a few heavy raters move many items'
    # shares and means together, so the rows are not independent. The p-values count at
    # most the window's effective number of people.
    cap = _kish(events["person"])
    return FeatureTable(
        "items", frame.reset_index(drop=True), numeric, categorical, effective_cap=cap
    )


def event_table(data: WindowEvents) -> FeatureTable:
    """One row per event; rows of one person are a cluster (see the module's note)."""
    events = data.events
    frame = pd.DataFrame({"person": events["person"].to_numpy()})
    numeric: list[str] = []
    categorical: list[str] = []
    for name in ("event_type", "channel", "device"):
        if events[name].notna().any():
            frame[name] = events[name].to_numpy(object)
            categorical.append(name)
    for name in ("value", "quantity"):
        if events[name].notna().any():
            frame[name] = pd.to_numeric(events[name], errors="coerce").to_numpy(np.float64)
            numeric.append(name)
    frame["hour"] = events["hour"].astype("Int64").astype(str).to_numpy(object)
    frame["day_of_week"] = [_WEEKDAYS[d - 1] for d in events["dow"].astype(int)]
    categorical += ["hour", "day_of_week"]
    if events["item_id"].notna().any():
        frame["item_id"] = events["item_id"].to_numpy(object)
        categorical.append("item_id")
        years = data.items.drop_duplicates("item_id").set_index("item_id")["release_year"]
        if years.notna().any():
            frame["item_release_year"] = pd.to_numeric(
                years.reindex(events["item_id"]), errors="coerce"
            ).to_numpy(np.float64)
            numeric.append("item_release_year")
    return FeatureTable("events", frame, numeric, categorical, cluster="person")


def ranker_table(
    con: duckdb.DuckDBPyConnection,
    data: WindowEvents,
    pipeline: RankingPipeline,
    n_people: int,
    seed: int,
) -> FeatureTable:
    """The ranker's inputs and probabilities for a sample of the window's people, as of
    the window's end, through the pipeline's own path (live profiles → features)."""
    from bespoke.features.build import Histories, Profile
    from bespoke.training.data import POSITIVE_EVENT_TYPES

    people = np.sort(data.events["person"].unique())
    if len(people) > n_people:
        people = np.sort(np.random.default_rng(seed).choice(people, n_people, replace=False))
    history = con.execute(
        "SELECT user_id, item_id, value, timestamp FROM events WHERE dataset = ? "
        "AND timestamp < ? AND item_id IS NOT NULL AND list_contains(?, event_type) "
        "AND user_id IN (SELECT unnest(?)) ORDER BY user_id, timestamp",
        [
            data.dataset,
            data.window.end,
            [e.value for e in POSITIVE_EVENT_TYPES],
            [str(p) for p in people],
        ],
    ).df()
    attributes = con.execute(
        "SELECT user_id, age, gender, occupation, state, region FROM users WHERE dataset = ?",
        [data.dataset],
    ).df()
    attributes = attributes.drop_duplicates("user_id").set_index("user_id")
    # Naive UTC, as the feature builder reads times.
    history["timestamp"] = history["timestamp"].dt.tz_convert("UTC").dt.tz_localize(None)
    by_person = dict(tuple(history.groupby("user_id", sort=False)))
    profiles = []
    for person in people:
        rows = by_person.get(person)
        known = attributes.loc[person].to_dict() if person in attributes.index else {}
        profiles.append(
            Profile(
                user_id=str(person),
                attributes={k: v for k, v in known.items() if not pd.isna(v)},
                items=[] if rows is None else rows["item_id"].tolist(),
                values=[] if rows is None else rows["value"].to_numpy(np.float64),
                timestamps=[] if rows is None else rows["timestamp"].to_numpy("datetime64[us]"),
            )
        )
    batch = Histories.from_profiles(profiles, pipeline.item_ids)
    now = pd.Timestamp(data.window.end)
    candidates, scores = pipeline.candidates(batch)
    features = pipeline.builder.transform(batch, candidates, now, scores=scores)
    raw = pipeline.ranker.decision_function(features)
    probability = pipeline.ranker.calibrate(raw)
    keep = candidates.reshape(-1) >= 0
    names = list(pipeline.builder.feature_names_)
    categorical = [n for n in names if n in set(pipeline.builder.categorical_features_)]
    frame = pd.DataFrame(features[keep], columns=names)
    for name in categorical:  # codes → labels, so a category's level is not a number
        frame[name] = frame[name].map(lambda v: _MISSING if np.isnan(v) else str(int(v)))
    frame["probability"] = np.asarray(probability, np.float64)[keep]
    frame["person"] = np.repeat(batch.user_ids, candidates.shape[1])[keep]
    numeric = [*[n for n in names if n not in categorical], "probability"]
    return FeatureTable("ranker", frame, numeric, categorical, cluster="person")


def person_table(
    con: duckdb.DuckDBPyConnection, data: WindowEvents, scorer: LiveScorer
) -> FeatureTable:
    """The segment and churn models' inputs at the window's end for the window's people
    (point-in-time, from all their events until then: see
    :func:`bespoke.segments.churn.person_rows`), with what the models make of them
    (segment, churn probability, expected value)."""
    from bespoke.segments.behaviour import SEGMENT_FEATURES
    from bespoke.segments.churn import person_rows
    from bespoke.segments.features import load_person_events

    events = load_person_events(con, data.dataset)
    times = pd.to_datetime(events["timestamp"], utc=True)
    end = pd.Timestamp(data.window.end)
    past = events[times < end]
    models = [m for m in (scorer.churn, scorer.clv) if m is not None]
    horizon = models[0].recipe_["horizon_days"] if models and models[0].recipe_ else None
    rows = person_rows(past, end - pd.Timedelta(microseconds=1), horizon)
    rows = rows.drop(columns=["churned", "horizon_value"], errors="ignore")
    rows = rows[rows.index.isin(set(data.events["person"].astype(str)))]
    columns = list(models[0].columns_) if models else list(SEGMENT_FEATURES)
    frame = rows.reindex(columns=columns).astype(np.float64)
    numeric, categorical = list(columns), []
    if scorer.segmenter is not None:
        frame["segment"] = scorer.segmenter.predict(rows).to_numpy(object)
        categorical.append("segment")
    if scorer.churn is not None:
        frame["churn_probability"] = scorer.churn.predict_proba(rows)
        numeric.append("churn_probability")
    if scorer.clv is not None:
        frame["expected_value"] = scorer.clv.predict(rows)
        numeric.append("expected_value")
    return FeatureTable("persons", frame.reset_index(drop=True), numeric, categorical)


#: Windows whose lengths differ by more than this share compare activity per 30 days.
LENGTH_TOLERANCE = 0.1


def activity_days(reference: Window, current: Window) -> float | None:
    """``30`` when the windows' lengths differ by more than :data:`LENGTH_TOLERANCE`
    (activity is then compared per 30 days), else ``None`` (raw counts)."""
    longer = max(reference.days, current.days)
    return 30.0 if abs(reference.days - current.days) > LENGTH_TOLERANCE * longer else None


def item_events(data: WindowEvents) -> int:
    return int(data.events["item_id"].notna().sum())


def matched(reference: WindowEvents, current: WindowEvents) -> dict[str, Any]:
    """What makes two windows' tables comparable: ``per_days`` when their lengths differ
    (:func:`activity_days`) and the common ``item_volume`` (:func:`item_table`)."""
    return {
        "per_days": activity_days(reference.window, current.window),
        "item_volume": min(item_events(reference), item_events(current)) or None,
    }


def window_tables(
    con: duckdb.DuckDBPyConnection,
    data: WindowEvents,
    config: DriftConfig,
    pipeline: RankingPipeline | None = None,
    ranker_note: str | None = None,
    per_days: float | None = None,
    item_volume: int | None = None,
    persons: LiveScorer | None = None,
) -> dict[str, FeatureTable]:
    """The enabled feature tables of one window (``per_days``: see :func:`user_table`,
    ``item_volume``: :func:`item_table`; :func:`matched` gives both for two windows;
    ``persons``: the segment and churn models, for :func:`person_table`)."""
    tables: dict[str, FeatureTable] = {}
    if config.tables.users.enabled:
        tables["users"] = user_table(data, per_days)
    if config.tables.items.enabled:
        tables["items"] = item_table(data, config.min_item_events, item_volume)
    if config.tables.events.enabled:
        tables["events"] = event_table(data)
    if config.tables.ranker.enabled:
        if pipeline is None:
            tables["ranker"] = FeatureTable(
                "ranker", pd.DataFrame(), [], [], note=ranker_note or "no ranker given"
            )
        else:
            tables["ranker"] = ranker_table(con, data, pipeline, config.ranker.users, config.seed)
    if config.tables.persons.enabled:
        if persons is None or not persons.active:
            tables["persons"] = FeatureTable(
                "persons", pd.DataFrame(), [], [], note="no segment or churn model trained"
            )
        else:
            tables["persons"] = person_table(con, data, persons)
    return tables


def champion_pipeline(settings: Settings, dataset: str) -> tuple[RankingPipeline | None, str]:
    """The ``@champion`` ranking pipeline of ``dataset``, or ``None`` and why not."""
    uri = settings.mlflow_tracking_uri or ""
    from bespoke.settings import SQLITE_PREFIX

    # Opening a SQLite tracking URI creates the database: a drift report must not.
    if uri.startswith(SQLITE_PREFIX) and not Path(uri.removeprefix(SQLITE_PREFIX)).exists():
        return None, f"no MLflow registry at {uri}: no @champion ranker to check"
    from bespoke.training.registry import Registry

    try:
        loaded = Registry(uri).load("ranker", dataset)
    except RuntimeError as error:
        return None, f"ranker table skipped: {error}"
    if loaded is None:
        return None, f"ranker table skipped: no @champion ranker for {dataset!r} in {uri}"
    return loaded.model, f"ranker @champion version {loaded.version}"


# --- tests --------------------------------------------------------------------------------


def _describe_numeric(values: np.ndarray) -> str:
    if not len(values):
        return "no values"
    return f"mean {np.mean(values):.4g}, median {np.median(values):.4g}"


def _describe_categorical(counts: pd.Series) -> str:
    if counts.sum() == 0:
        return "no values"
    top = counts.drop([_OTHER], errors="ignore")
    level = top.idxmax() if len(top) else counts.idxmax()
    return f"{level}: {counts[level] / counts.sum():.1%}"


def _kish(cluster: pd.Series) -> int:
    """Effective number of people behind clustered rows, (Σm)² / Σm² for people with m
    rows each: the sample size if one person's rows were one value (the worst case).
    Below the number of people when activity is uneven, as it always is."""
    sizes = cluster.value_counts().to_numpy(np.float64)
    return max(1, int(sizes.sum() ** 2 / (sizes**2).sum())) if len(sizes) else 1


def _effective(n_rows: int, n_clusters: int | None) -> int:
    return n_rows if n_clusters is None else max(1, min(n_rows, n_clusters))


def ks_test(
    reference: np.ndarray, current: np.ndarray, n_eff: tuple[int, int]
) -> tuple[float, float]:
    """(D, p-value); the p-value uses the effective sizes (people for clustered rows)."""
    from scipy import stats

    a, b = np.sort(reference), np.sort(current)
    both = np.concatenate([a, b])
    d = float(
        np.max(
            np.abs(
                np.searchsorted(a, both, side="right") / len(a)
                - np.searchsorted(b, both, side="right") / len(b)
            )
        )
    )
    n, m = n_eff
    en = n * m / (n + m)
    p = (
        float(stats.kstwo.sf(d, max(1, round(en))))
        if en < 10_000
        else float(stats.kstwobign.sf(d * np.sqrt(en)))
    )
    return d, min(1.0, max(0.0, p))


def chisquare_test(
    reference: pd.Series, current: pd.Series, n_eff: tuple[int, int]
) -> tuple[float, float, float]:
    """(chi-square, p-value, Jensen–Shannon distance) of two level counts over the same
    index; counts are scaled to the effective sizes for the chi-square."""
    from scipy import stats
    from scipy.spatial.distance import jensenshannon

    ref, cur = reference.to_numpy(np.float64), current.to_numpy(np.float64)
    keep = (ref + cur) > 0
    ref, cur = ref[keep], cur[keep]
    distance = float(jensenshannon(ref / ref.sum(), cur / cur.sum(), base=2))
    if len(ref) < 2:
        return 0.0, 1.0, distance
    table = np.vstack([ref * n_eff[0] / ref.sum(), cur * n_eff[1] / cur.sum()])
    result = stats.chi2_contingency(table, correction=False)
    return float(result.statistic), float(result.pvalue), distance


def domain_change(
    reference: pd.Series, current: pd.Series, check: DomainCheck
) -> DomainChange | None:
    """The domain check of one column's non-missing values (``None`` when the reference's
    domain is larger than ``check.max_levels`` or the check is off)."""
    if not check.enabled or not len(reference) or not len(current):
        return None
    ref_counts = reference.value_counts()
    if len(ref_counts) > check.max_levels or len(reference) < check.min_rows_per_level * len(
        ref_counts
    ):
        return None
    cur_counts = current.value_counts()
    new = cur_counts[~cur_counts.index.isin(ref_counts.index)]
    vanished = ref_counts[~ref_counts.index.isin(cur_counts.index)]
    new_share = float(new.sum() / cur_counts.sum())
    vanished_share = float(vanished.sum() / ref_counts.sum())
    return DomainChange(
        (len(ref_counts), len(cur_counts)), new_share, vanished_share,
        tuple(str(v) for v in new.index[:5]), tuple(str(v) for v in vanished.index[:5]),
        new_share > check.max_new_share or vanished_share > check.max_vanished_share,
    )  # fmt: skip


def _levels(values: pd.Series) -> pd.Series:
    return values.astype(object).where(values.notna(), _MISSING).astype(str)


def _top_levels(reference: pd.Series, current: pd.Series, top: int) -> list[str]:
    counts = reference.value_counts().add(current.value_counts(), fill_value=0)
    return counts.sort_values(ascending=False, kind="stable").index[:top].tolist()


def compare_table(
    reference: FeatureTable, current: FeatureTable, config: DriftConfig
) -> TableDrift:
    """Test every column of a table on the full data and decide the table's verdict."""
    name = reference.name
    settings = config.table(name)
    share_needed = settings.drift_share
    rows = (len(reference.frame), len(current.frame))
    note = reference.note or current.note
    if note is None and min(rows) < settings.min_rows:
        note = (
            f"too few rows to test ({rows[0]} reference, {rows[1]} current; "
            f"min_rows is {settings.min_rows})"
        )
    if note is not None:
        return TableDrift(name, False, 0.0, share_needed, rows_reference=rows[0],
                          rows_current=rows[1], note=note)  # fmt: skip
    numeric_test = settings.numeric or config.numeric
    categorical_test = settings.categorical or config.categorical
    clusters = (
        (_kish(reference.frame[reference.cluster]), _kish(current.frame[current.cluster]))
        if reference.cluster and current.cluster
        else (reference.effective_cap, current.effective_cap)
    )
    columns: dict[str, ColumnDrift] = {}
    skipped: dict[str, str] = {}
    for column in reference.columns:
        if column in settings.exclude:
            skipped[column] = "excluded by the config"
            continue
        if column not in current.frame:
            skipped[column] = "missing from the current window"
            continue
        kind = "numeric" if column in reference.numeric else "categorical"
        if kind == "numeric":
            ref = pd.to_numeric(reference.frame[column], errors="coerce").to_numpy(np.float64)
            cur = pd.to_numeric(current.frame[column], errors="coerce").to_numpy(np.float64)
            ref, cur = ref[np.isfinite(ref)], cur[np.isfinite(cur)]
            if len(ref) < 2 or len(cur) < 2:
                skipped[column] = f"too few values ({len(ref)} reference, {len(cur)} current)"
                continue
            if np.unique(np.concatenate([ref, cur])).size < 2:
                skipped[column] = "one value in both windows"
                continue
            n_eff = (_effective(len(ref), clusters[0]), _effective(len(cur), clusters[1]))
            d, p = ks_test(ref, cur, n_eff)
            domain = domain_change(pd.Series(ref), pd.Series(cur), config.domain)
            drifted = (p < numeric_test.p_value and d >= numeric_test.min_statistic) or (
                domain is not None and domain.drifted
            )
            columns[column] = ColumnDrift(
                column, "numeric", "ks", d, p, d, bool(drifted), (len(ref), len(cur)), n_eff,
                _describe_numeric(ref), _describe_numeric(cur), domain,
            )  # fmt: skip
        else:
            ref_levels = _levels(reference.frame[column])
            cur_levels = _levels(current.frame[column])
            domain = domain_change(
                reference.frame[column].dropna().astype(str),
                current.frame[column].dropna().astype(str),
                config.domain,
            )
            top = _top_levels(ref_levels, cur_levels, config.top_categories)
            ref_levels = ref_levels.where(ref_levels.isin(top), _OTHER)
            cur_levels = cur_levels.where(cur_levels.isin(top), _OTHER)
            index = [*top, _OTHER]
            ref_counts = ref_levels.value_counts().reindex(index, fill_value=0)
            cur_counts = cur_levels.value_counts().reindex(index, fill_value=0)
            if ((ref_counts + cur_counts) > 0).sum() < 2:
                skipped[column] = "one value in both windows"
                continue
            n_eff = (_effective(rows[0], clusters[0]), _effective(rows[1], clusters[1]))
            stat, p, distance = chisquare_test(ref_counts, cur_counts, n_eff)
            if categorical_test.test == "chisquare":
                drifted = p < categorical_test.p_value and distance >= categorical_test.min_distance
            else:
                drifted = distance >= categorical_test.min_distance
            drifted = drifted or (domain is not None and domain.drifted)
            columns[column] = ColumnDrift(
                column, "categorical", categorical_test.test, stat,
                p if categorical_test.test == "chisquare" else None, distance, bool(drifted),
                rows, n_eff, _describe_categorical(ref_counts), _describe_categorical(cur_counts),
                domain,
            )  # fmt: skip
    if not columns:
        return TableDrift(name, False, 0.0, share_needed, {}, skipped, rows[0], rows[1],
                          note="no column could be tested")  # fmt: skip
    share = sum(c.drifted for c in columns.values()) / len(columns)
    # A changed value domain (a finer rating scale, a new event type) is drift on its own.
    domain_changed = any(c.domain is not None and c.domain.drifted for c in columns.values())
    return TableDrift(
        name, share >= share_needed or domain_changed, share, share_needed, columns, skipped,
        rows[0], rows[1],
    )  # fmt: skip


def compare_tables(
    reference: Mapping[str, FeatureTable],
    current: Mapping[str, FeatureTable],
    config: DriftConfig,
) -> dict[str, TableDrift]:
    return {name: compare_table(reference[name], current[name], config) for name in reference}


def is_drift(tables: Mapping[str, TableDrift], config: DriftConfig) -> bool:
    """The report's verdict: at least ``min_tables`` tables drifted."""
    return sum(table.drifted for table in tables.values()) >= config.min_tables


# --- the HTML (Evidently) -----------------------------------------------------------------

#: Verdicts Evidently's stat tests hand back for the report being rendered (column → (score,
#: drifted)); guarded so two reports in one process never read each other's.
_VERDICTS: dict[str, tuple[float, bool]] = {}
_VERDICTS_LOCK = threading.Lock()
_STAT_TESTS: dict[str, Any] = {}


def _stat_tests() -> dict[str, Any]:
    """Evidently stat tests that report the full-data verdicts (registered once)."""
    if _STAT_TESTS:
        return _STAT_TESTS
    from evidently.legacy.calculations.stattests.registry import StatTest, register_stattest
    from evidently.legacy.core import ColumnType

    def verdict(
        reference: pd.Series, current: pd.Series, kind: Any, threshold: float
    ) -> tuple[float, bool]:
        return _VERDICTS.get(str(reference.name), (float("nan"), False))

    for key, display, kinds in (
        ("numeric", "K-S p-value, full data (Bespoke)", [ColumnType.Numerical]),
        ("chisquare", "chi-square p-value, full data (Bespoke)", [ColumnType.Categorical]),
        ("jensenshannon", "Jensen-Shannon distance, full data (Bespoke)",
         [ColumnType.Categorical]),
    ):  # fmt: skip
        test = StatTest(name=f"bespoke_{key}", display_name=display, allowed_feature_types=kinds)
        register_stattest(test, default_impl=verdict)
        _STAT_TESTS[key] = test
    return _STAT_TESTS


def _sample(frame: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    if len(frame) <= n:
        return frame
    return frame.sample(n=n, random_state=seed).sort_index()


def _html_frame(
    table: FeatureTable, columns: list[str], levels: Mapping[str, list[str]], n: int, seed: int
) -> pd.DataFrame:
    frame = _sample(table.frame[columns], n, seed).copy()
    for column in columns:
        if column in levels:
            values = _levels(frame[column])
            frame[column] = values.where(values.isin(levels[column]), _OTHER)
        else:
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(np.float64)
    return frame.reset_index(drop=True)


def html_columns(result: TableDrift, limit: int) -> list[str]:
    """The columns the HTML shows: drifted ones first, then by effect, at most ``limit``."""
    ranked = sorted(result.columns.values(), key=lambda c: (not c.drifted, -c.distance))
    return [c.column for c in ranked[:limit]]


def write_html(
    folder: Path,
    reference: FeatureTable,
    current: FeatureTable,
    result: TableDrift,
    config: DriftConfig,
) -> tuple[list[Path], tuple[int, int]]:
    """Evidently's data-drift report of one table as ``drift-<table>[-k].html`` files in
    ``folder``: each file holds at most ``html.columns_per_file`` columns, since a file's
    size grows with its columns (about 3.6 MB of scripts and styles, then ~70 kB each)
    far more than with its rows (plots are binned). Returns the files and sample sizes."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    tests = _stat_tests()
    shown = html_columns(result, config.html.max_columns)
    per_file = config.html.columns_per_file
    chunks = [shown[i : i + per_file] for i in range(0, len(shown), per_file)]
    categorical = {c for c in shown if result.columns[c].kind == "categorical"}
    levels = {
        c: _top_levels(
            _levels(reference.frame[c]), _levels(current.frame[c]), config.top_categories
        )
        for c in categorical
    }
    n = config.html.max_rows
    ref_all = _html_frame(reference, shown, levels, n, config.seed)
    cur_all = _html_frame(current, shown, levels, n, config.seed + 1)
    paths = []
    for k, columns in enumerate(chunks, start=1):
        path = folder / (f"drift-{result.name}.html" if k == 1 else f"drift-{result.name}-{k}.html")
        numeric = [c for c in columns if c not in categorical]
        cats = [c for c in columns if c in categorical]
        definition = DataDefinition(numerical_columns=numeric, categorical_columns=cats)
        methods = {
            c: tests["numeric" if c not in categorical else result.columns[c].test] for c in columns
        }
        preset = DataDriftPreset(
            columns=columns,
            drift_share=result.drift_share,
            per_column_method=methods,
            per_column_threshold={c: _threshold(config, result, c) for c in columns},
        )
        # What Evidently shows as each column's score: the p-value, or the distance.
        verdicts = {
            c: (
                r.p_value if r.p_value is not None else r.distance,
                r.drifted,
            )
            for c, r in ((c, result.columns[c]) for c in columns)
        }
        with _VERDICTS_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _VERDICTS.clear()
            _VERDICTS.update(verdicts)
            try:
                snapshot = Report([preset]).run(
                    Dataset.from_pandas(cur_all[columns], data_definition=definition),
                    Dataset.from_pandas(ref_all[columns], data_definition=definition),
                )
                snapshot.save_html(str(path))
            finally:
                _VERDICTS.clear()
        paths.append(path)
    return paths, (len(ref_all), len(cur_all))


def _threshold(config: DriftConfig, result: TableDrift, column: str) -> float:
    settings = config.table(result.name)
    if result.columns[column].kind == "numeric":
        return (settings.numeric or config.numeric).p_value
    test = settings.categorical or config.categorical
    return test.p_value if test.test == "chisquare" else test.min_distance


# --- the report ---------------------------------------------------------------------------


def _window_dict(window: Window, events: int) -> dict[str, Any]:
    return {
        "label": window.label,
        "start": window.start.isoformat(),
        "end": window.end.isoformat(),
        "events": events,
    }


def _new_report_dir(parent: Path) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    target, n = parent / stamp, 1
    while target.exists():
        n += 1
        target = parent / f"{stamp}-{n}"
    return target


def drift_report(
    reference: Mapping[str, FeatureTable],
    current: Mapping[str, FeatureTable],
    out_dir: Path,
    *,
    config: DriftConfig,
    dataset: str,
    reference_window: Window,
    current_window: Window,
    events: tuple[int, int] = (0, 0),
    notes: Iterable[str] = (),
) -> DriftResult:
    """Test the tables, write ``drift.json`` and one HTML per tested table into
    ``out_dir`` (all at once at the end: a failure leaves nothing behind)."""
    tables = compare_tables(reference, current, config)
    drifted = is_drift(tables, config)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        samples: dict[str, tuple[int, int]] = {}
        if config.html.enabled:
            for name, table in list(tables.items()):
                if not table.tested:
                    continue
                written, samples[name] = write_html(
                    staging, reference[name], current[name], table, config
                )
                tables[name] = replace(table, html=tuple(out_dir / p.name for p in written))
        payload = {
            "dataset": dataset,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "drifted": drifted,
            "drifted_tables": [n for n, t in tables.items() if t.drifted],
            "reference": _window_dict(reference_window, events[0]),
            "current": _window_dict(current_window, events[1]),
            "notes": list(notes),
            "html_samples": {n: {"reference": r, "current": c} for n, (r, c) in samples.items()},
            "config": config.model_dump(mode="json"),
            "tables": {name: table.to_dict() for name, table in tables.items()},
        }
        (staging / JSON_NAME).write_text(json.dumps(payload, indent=2), encoding="utf-8")
        if out_dir.exists():
            for path in staging.iterdir():
                os.replace(path, out_dir / path.name)
            staging.rmdir()
        else:
            staging.rename(out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    html = [path for table in tables.values() for path in table.html]
    return DriftResult(
        dataset, reference_window, current_window, drifted, out_dir, out_dir / JSON_NAME,
        html, tables, list(notes),
    )  # fmt: skip


def run_drift(
    settings: Settings,
    dataset: str,
    reference: str | Window,
    current: str | Window,
    *,
    config: DriftConfig | None = None,
    out_dir: Path | None = None,
) -> DriftResult:
    """Build each window's feature tables from the lake, test them, and write the report
    under ``out_dir`` (default ``<reports_dir>/<UTC timestamp>/``).

    Windows are ``A..B`` date ranges or ``last N days`` / ``previous N days`` counted back
    from the dataset's latest event. Every input is checked before anything is written:
    an unknown dataset, a malformed or empty window raise :class:`DriftError`.
    """
    from bespoke.features.lake import Lake

    config = config or load_drift_config()
    con = Lake(settings.lake_url or "").connect()
    first, last = dataset_span(con, dataset)
    windows = {
        "reference": resolve_window(reference, last, "reference"),
        "current": resolve_window(current, last, "current"),
    }
    data = {}
    for role, window in windows.items():
        data[role] = load_window(con, dataset, window)
        if data[role].events.empty:
            raise DriftError(
                f"{role} window {window.label!r} ({window.start:%Y-%m-%d} to "
                f"{window.end:%Y-%m-%d}, end excluded) holds no events of {dataset!r}; its "
                f"events run from {first:%Y-%m-%d} to {last:%Y-%m-%d}"
            )
    notes: list[str] = []
    pipeline, ranker_note = None, None
    if config.tables.ranker.enabled:
        pipeline, why = champion_pipeline(settings, dataset)
        notes.append(why)
        ranker_note = None if pipeline is not None else "no @champion ranker"
    scorer = None
    if config.tables.persons.enabled:
        from bespoke.segments.live import LiveScorer

        scorer = LiveScorer.load(settings, dataset)
    match = matched(data["reference"], data["current"])
    if match["per_days"] is not None:
        notes.append(
            f"the windows last {windows['reference'].days:g} and {windows['current'].days:g} "
            f"days: activity is compared per {match['per_days']:g} days"
        )
    tables = {
        role: window_tables(con, data[role], config, pipeline, ranker_note, **match, persons=scorer)
        for role in windows
    }
    return drift_report(
        tables["reference"],
        tables["current"],
        out_dir if out_dir is not None else _new_report_dir(settings.reports_dir),
        config=config,
        dataset=dataset,
        reference_window=windows["reference"],
        current_window=windows["current"],
        events=(len(data["reference"].events), len(data["current"].events)),
        notes=notes,
    )
