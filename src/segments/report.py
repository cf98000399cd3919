"""``bespoke report segments``: one self-contained HTML page on a dataset's segments.

- **Sizes and profiles**: people per segment (latest assignment in the lake), each
  segment's description and its centroid (median features) from the segment model.
- **Migration**: who moved from which segment to which between two assignment times
  (``segments_history``; the two latest by default).
- **Value after assignment**: spend per person in the days after the latest assignment's
  as-of time, per segment (the value the segment promised, measured on what followed).
- **Churn model**: the ``@champion`` churn model scored at the latest cut whose horizon is
  known, its calibration (predicted against observed churn per decile) and lift chart.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from bespoke.features.lake import Lake
from bespoke.monitoring.reports import write_html
from bespoke.segments.churn import person_rows
from bespoke.segments.features import load_person_events, order_events
from bespoke.segments.train import champion_segmenter
from bespoke.settings import Settings

REPORT_FILE = "segments.html"


class SegmentReportError(ValueError):
    """A report that cannot be made: the message says why and what to run."""


@dataclass
class SegmentReport:
    dataset: str
    sizes: pd.DataFrame  # segment, people, description
    centroids: pd.DataFrame | None  # per segment, median features
    migration: pd.DataFrame | None  # rows: from, columns: to
    migration_between: tuple[str, str] | None
    value_after: pd.DataFrame  # segment, people, value per person, buyers share
    value_window: tuple[str, str]
    churn: pd.DataFrame | None  # decile, predicted, observed, lift
    churn_cut: str | None = None
    notes: list[str] = field(default_factory=list)


def _assignments(lake: Lake, dataset: str) -> pd.DataFrame:
    try:
        return (
            lake.connect()
            .execute(
                "SELECT person, segment, valid_from, valid_to FROM segments_history "
                "WHERE dataset = ? ORDER BY valid_from",
                [dataset],
            )
            .df()
        )
    except duckdb.Error as error:  # no segments table: never trained
        raise SegmentReportError(
            f"no segments of {dataset!r} in the lake: run `bespoke train segments "
            f"--dataset {dataset} --as-of …` first"
        ) from error


def _at(history: pd.DataFrame, moment: pd.Timestamp) -> pd.Series:
    """Each person's segment at ``moment`` (their assignment valid then)."""
    valid = (history["valid_from"] <= moment) & (
        history["valid_to"].isna() | (history["valid_to"] > moment)
    )
    return history[valid].drop_duplicates("person", keep="last").set_index("person")["segment"]


def compute(
    settings: Settings,
    dataset: str,
    *,
    since: str | None = None,
    until: str | None = None,
    horizon_days: float = 92.0,
) -> SegmentReport:
    """The report's tables (see the module docstring). ``since``/``until``: the two
    assignment times the migration compares (default: the two latest)."""
    lake = Lake(settings.lake_url)
    history = _assignments(lake, dataset)
    if history.empty:
        raise SegmentReportError(f"no segment assignments of {dataset!r} in the lake yet")
    for column in ("valid_from", "valid_to"):
        history[column] = pd.to_datetime(history[column], utc=True)
    times = sorted(history["valid_from"].unique())
    notes: list[str] = []
    latest = pd.Timestamp(times[-1])
    current = _at(history, latest)
    model = champion_segmenter(settings, dataset)
    descriptions = (
        dict(zip(model.names_, model.descriptions_, strict=True)) if model is not None else {}
    )
    counts = current.value_counts()
    sizes = pd.DataFrame({
        "segment": counts.index, "people": counts.to_numpy(),
        "share": (counts / counts.sum()).to_numpy(),
        "description": [descriptions.get(s, "") for s in counts.index],
    })  # fmt: skip
    centroids = None
    if model is not None:
        centroids = model.centroids_.rename(index=dict(enumerate(model.names_)))
        centroids = centroids.assign(
            people=model.sizes_.rename(index=dict(enumerate(model.names_)))
        )
    else:
        notes.append(f"no @champion bespoke-segments-{dataset}: centroid profiles are left out")

    migration, between = None, None
    if since or until:
        first = pd.Timestamp(since or times[0], tz="UTC")
        second = pd.Timestamp(until or latest, tz="UTC")
        if first >= second:
            raise SegmentReportError(
                f"--since {first.date()} must be before --until {second.date()}"
            )
    elif len(times) >= 2:
        first, second = pd.Timestamp(times[-2]), latest
    else:
        first = second = None
        notes.append("one assignment time only: migration needs `bespoke train segments` at "
                     "two --as-of times")  # fmt: skip
    if first is not None and second is not None:
        before, after = _at(history, first), _at(history, second)
        both = pd.DataFrame({"from": before, "to": after}).dropna()
        migration = pd.crosstab(both["from"], both["to"])
        between = (str(first.date()), str(second.date()))

    events = load_person_events(lake, dataset)
    times_all = pd.to_datetime(events["timestamp"], utc=True)
    end = times_all.max()
    window_end = min(end, latest + pd.Timedelta(days=horizon_days))
    orders = order_events(events.assign(timestamp=times_all))
    later = orders[(orders["timestamp"] > latest) & (orders["timestamp"] <= window_end)]
    spend = later.groupby("person")["value"].sum().reindex(current.index, fill_value=0.0)
    value_after = (
        pd.DataFrame({"segment": current, "value": spend, "bought": spend > 0})
        .groupby("segment")
        .agg(
            people=("value", "size"), value_per_person=("value", "mean"), buyers=("bought", "mean")
        )
        .reset_index()
        .sort_values("value_per_person", ascending=False)
    )
    if window_end <= latest:
        notes.append(f"the data ends at the latest assignment ({latest.date()}): no value after it")

    churn, churn_cut = None, None
    from bespoke.training.registry import Registry

    loaded = Registry.of(settings).load("churn", dataset)
    if loaded is None:
        notes.append(f"no @champion churn model for {dataset}: run `bespoke train churn` first")
    else:
        cut = end - pd.Timedelta(days=horizon_days)
        rows = person_rows(events, cut, horizon_days)
        predicted = loaded.model.predict_proba(rows)
        churn = _deciles(predicted, rows["churned"].to_numpy())
        churn_cut = f"{cut.date()} (outcomes to {end.date()}), v{loaded.version}"
    return SegmentReport(dataset, sizes, centroids, migration, between, value_after,
                         (str(latest.date()), str(window_end.date())), churn, churn_cut, notes)  # fmt: skip


def _deciles(predicted: np.ndarray, observed: np.ndarray) -> pd.DataFrame:
    """Calibration and lift by decile of predicted churn (decile 1: most likely to churn)."""
    order = np.argsort(-predicted, kind="stable")
    groups = np.array_split(order, 10)
    base = observed.mean()
    return pd.DataFrame({
        "decile": range(1, 11),
        "people": [len(g) for g in groups],
        "predicted": [predicted[g].mean() for g in groups],
        "observed": [observed[g].mean() for g in groups],
        "lift": [observed[g].mean() / base if base else np.nan for g in groups],
    })  # fmt: skip


def _table(frame: pd.DataFrame, formats: dict[str, str] | None = None, index: bool = False) -> str:
    formats = formats or {}
    frame = frame.reset_index() if index else frame
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = []
    for values in frame.itertuples(index=False):
        cells = []
        for column, value in zip(frame.columns, values, strict=True):
            if isinstance(value, int | float | np.number) and not isinstance(value, bool):
                text = format(
                    value,
                    formats.get(
                        str(column), ",.2f" if isinstance(value, float | np.floating) else ","
                    ),
                )
                cells.append(f"<td class=num>{text}</td>")
            else:
                cells.append(f"<td>{html.escape(str(value))}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


_CSS = """body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1100px;color:#222;
padding:0 1rem}.meta{color:#666}table{border-collapse:collapse;margin:.5rem 0 1rem}
th,td{padding:.25rem .7rem;border-bottom:1px solid #ddd;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.5rem .8rem}"""


def render_html(report: SegmentReport, generated_at: datetime | None = None) -> str:
    """The report as one self-contained HTML page (Plotly's JavaScript inlined once)."""
    import plotly.graph_objects as go
    import plotly.io
    import plotly.offline

    def figure(fig: go.Figure) -> str:
        fig.update_layout(height=360, margin={"t": 40, "b": 40})
        return plotly.io.to_html(fig, full_html=False, include_plotlyjs=False)

    esc = html.escape
    generated_at = generated_at or datetime.now(UTC)
    parts = [
        f"<h1>Segments — {esc(report.dataset)}</h1>",
        f'<p class="meta">generated {generated_at:%Y-%m-%d %H:%M} UTC by '
        "<code>bespoke report segments</code></p>",
        *[f'<p class="note">{esc(n)}</p>' for n in report.notes],
        "<h2>Sizes</h2>",
        figure(
            go.Figure(
                go.Bar(x=report.sizes["segment"], y=report.sizes["people"]),
                layout={"title": "people per segment (latest assignment)"},
            )
        ),
        _table(report.sizes, {"share": ".1%"}),
    ]
    if report.centroids is not None:
        parts += ["<h2>Profiles</h2><p>Each segment's median person (the segment model's "
                  "centroid, in the features' units).</p>",
                  _table(report.centroids.rename_axis("segment"), index=True)]  # fmt: skip
    if report.migration is not None and report.migration_between is not None:
        since, until = report.migration_between
        matrix = report.migration
        parts += [
            f"<h2>Migration {esc(since)} → {esc(until)}</h2>"
            "<p>People by their segment then (rows) and now (columns).</p>",
            figure(
                go.Figure(
                    go.Heatmap(
                        z=matrix.to_numpy(),
                        x=list(matrix.columns),
                        y=list(matrix.index),
                        colorscale="Blues",
                        texttemplate="%{z}",
                    )
                )
            ),
            _table(matrix.rename_axis("from \\ to"), index=True),
        ]
    since, until = report.value_window
    parts += [
        f"<h2>Value after assignment ({esc(since)} → {esc(until)})</h2>"
        "<p>Spend per person in the days after the latest assignment, by segment, and the "
        "share of people who bought at all.</p>",
        figure(
            go.Figure(
                go.Bar(x=report.value_after["segment"], y=report.value_after["value_per_person"]),
                layout={"title": "value per person"},
            )
        ),
        _table(report.value_after, {"buyers": ".1%"}),
    ]
    if report.churn is not None:
        deciles = report.churn
        calibration = go.Figure(layout={"title": "calibration: predicted vs observed churn",
                                        "xaxis_title": "predicted", "yaxis_title": "observed"})  # fmt: skip
        calibration.add_scatter(x=deciles["predicted"], y=deciles["observed"], mode="markers+lines",
                                name="deciles")  # fmt: skip
        calibration.add_scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect",
                                line={"dash": "dot"})  # fmt: skip
        lift = go.Figure(go.Bar(x=deciles["decile"], y=deciles["lift"]),
                         layout={"title": "lift: churn rate per decile / overall",
                                 "xaxis_title": "decile of predicted churn (1: most likely)"})  # fmt: skip
        parts += [f"<h2>Churn model</h2><p>Scored at {esc(report.churn_cut or '')}.</p>",
                  figure(calibration), figure(lift),
                  _table(deciles, {"predicted": ".3f", "observed": ".3f", "lift": ".2f"})]  # fmt: skip
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>Segments — {esc(report.dataset)}</title><style>{_CSS}</style>"
        f'<script type="text/javascript">{plotly.offline.get_plotlyjs()}</script>'
        f"</head><body>{''.join(parts)}</body></html>"
    )


def write_segment_report(
    settings: Settings,
    dataset: str,
    *,
    out: Path | None = None,
    since: str | None = None,
    until: str | None = None,
) -> tuple[SegmentReport, Path]:
    """Compute and write ``out/segments.html`` (or ``<reports_dir>/<UTC time>/…``)."""
    now = datetime.now(UTC)
    if out is not None and out.exists() and not out.is_dir():
        raise SegmentReportError(f"--out {out} is a file; give a folder for {REPORT_FILE}")
    assert settings.reports_dir is not None
    path = (out or settings.reports_dir / f"{now:%Y%m%dT%H%M%SZ}") / REPORT_FILE
    report = compute(settings, dataset, since=since, until=until)
    write_html(path, render_html(report, now))
    return report, path
