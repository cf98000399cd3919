"""``bespoke report kpi`` on the real datasets: one self-contained HTML file whose figures
agree with an independent pandas computation over the lake's Parquet files, a headline
that compares complete periods, and bad input that exits 2 and writes nothing."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from bespoke.cli import app
from bespoke.experiments.assignment import bucket_ranges, choose_many, hash_many
from bespoke.experiments.ledger import ExperimentLedger, Exposure
from bespoke.features import collect, sources
from bespoke.features.lake import Lake
from bespoke.monitoring.kpi import compute_kpis, render_html
from bespoke.serving.db import Database
from bespoke.settings import get_settings

#: The report stays small enough to mail: Plotly's bundle (~4.6 MB) plus the figures.
MAX_BYTES = 5_000_000
SECTIONS = ("headline", "definitions", "overall", "by-segment", "by-channel", "by-variant")


@pytest.fixture
def kpi(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    """``kpi(lake, *args)`` runs ``bespoke report kpi`` in-process on ``lake``."""
    runner = CliRunner()

    def run(lake: Lake, *args: str) -> Any:
        monkeypatch.setenv("BESPOKE_LAKE_URL", lake.url)
        get_settings.cache_clear()
        return runner.invoke(app, ["report", "kpi", *map(str, args)])

    return run


def _figures(page: str) -> dict[str, dict[str, Any]]:
    """Each figure's spec by its target, traces given their x as the page's loader does."""
    found = {}
    pattern = (
        r'<script type="application/json" class="kpi-figure" data-target="([^"]+)">(.*?)</script>'
    )
    for target, text in re.findall(pattern, page, re.S):
        spec = json.loads(text)
        for trace in spec["data"]:
            trace.setdefault("x", spec["x"])
        found[target] = spec
    return found


def _trace(spec: dict[str, Any], name: str, row: int) -> pd.Series:
    """The trace called ``name`` in subplot row ``row`` (1 = active users) as a series."""
    axis = "y" if row == 1 else f"y{row}"
    (trace,) = [t for t in spec["data"] if t["name"] == name and t.get("yaxis", "y") == axis]
    values = [np.nan if v is None else v for v in trace["y"]]
    return pd.Series(values, index=pd.to_datetime(trace["x"]), dtype="float64")


def _events(lake: Lake, dataset: str) -> pd.DataFrame:
    """The dataset's events read with pandas straight from Parquet (no DuckDB, no views)."""
    frame = pd.read_parquet(Path(lake.url) / "events" / f"dataset={dataset}")
    return frame.assign(timestamp=frame.timestamp.dt.tz_convert("UTC").dt.tz_localize(None))


def _age_band(age: float) -> str:
    # Written out rather than imported: the report's bands must be the ranker's.
    for upper, label in ((18, "<18"), (25, "18-24"), (35, "25-34"), (45, "35-44"),
                         (50, "45-49"), (56, "50-55")):  # fmt: skip
        if age < upper:
            return label
    return "56+"


def _self_contained(page: str) -> None:
    assert len(page.encode()) < MAX_BYTES
    assert not re.search(r"<script[^>]*\bsrc\s*=", page, re.I)
    assert not re.search(r"<link[^>]*href\s*=\s*[\"']?https?:", page, re.I)
    assert page.count("Plotly.newPlot") >= 1  # the loader, Plotly itself inlined once
    assert page.count('<script type="text/javascript">') == 1


def test_ml100k_report_matches_pandas(ml100k_lake, kpi, isolated_settings: Path) -> None:
    lake, _ = ml100k_lake
    result = kpi(lake, "--dataset", "ml-100k")
    assert result.exit_code == 0, result.output
    (path,) = get_settings().reports_dir.glob("*/kpi.html")
    assert str(path) in result.output.replace("\n", "")
    assert re.fullmatch(r"\d{8}T\d{6}Z", path.parent.name)
    page = path.read_text(encoding="utf-8")
    _self_contained(page)
    for section in SECTIONS:
        assert f'<section id="{section}">' in page
    # MovieLens' conversion, stated with its reason.
    assert "share of active users who rated something 4 or more (of 5)" in page
    assert "there is no purchase to count" in page
    # No experiment has exposures in the lake: the variant section says how to get some.
    assert "No experiment has exposures in &#x27;ml-100k&#x27; yet" in page
    assert "exposures reach the lake when the ledger is flushed" in page
    # The console headline: the whole window, then the last two complete weeks.
    assert "100,000" in result.output and "943" in result.output
    assert "1998-04-06" in result.output and "1998-04-13" in result.output

    events = _events(lake, "ml-100k")
    users = pd.read_parquet(Path(lake.url) / "users" / "dataset=ml-100k")
    users = users.sort_values("ingested_at").drop_duplicates("user_id", keep="last")
    segment = users.set_index("user_id").apply(lambda u: f"{_age_band(u.age)} {u.gender}", axis=1)
    events["segment"] = events.user_id.map(segment)
    events["week"] = events.timestamp.dt.to_period("W-SUN").dt.start_time
    events["positive"] = events.value >= 4
    weeks = pd.date_range(events.week.min(), events.week.max(), freq="W-MON")
    figures = _figures(page)

    overall = events.groupby("week").user_id.nunique().reindex(weeks, fill_value=0)
    drawn = _trace(figures["fig-all"], "all", 1)
    assert drawn.index.equals(weeks)  # Monday weeks, quiet ones included
    assert drawn.tolist() == overall.astype(float).tolist()

    chosen = events.segment.value_counts().index[0]
    mine = events[events.segment == chosen]
    active = mine.groupby("week").user_id.nunique().reindex(weeks, fill_value=0)
    converted = mine[mine.positive].groupby("week").user_id.nunique().reindex(weeks, fill_value=0)
    rate = converted / active.where(active > 0)
    assert _trace(figures["fig-segment"], chosen, 1).tolist() == active.astype(float).tolist()
    np.testing.assert_allclose(_trace(figures["fig-segment"], chosen, 3), rate, rtol=1e-4)
    assert "batch" in {t["name"] for t in figures["fig-channel"]["data"]}


def test_cdnow_monthly_revenue_and_cohorts(cdnow_lake, kpi, tmp_path: Path,
                                           isolated_settings: Path) -> None:  # fmt: skip
    lake, _ = cdnow_lake
    out = tmp_path / "kpi-out"
    result = kpi(lake, "--dataset", "cdnow", "--grain", "month", "--by", "cohort", "--out", out)
    assert result.exit_code == 0, result.output
    assert not get_settings().reports_dir.exists()  # --out replaces the default place
    page = (out / "kpi.html").read_text(encoding="utf-8")
    _self_contained(page)
    assert '<section id="by-cohort">' in page and "made a purchase" in page
    assert "100% by construction" in page  # every CDNOW event is a purchase

    events = _events(lake, "cdnow")
    events["month"] = events.timestamp.dt.to_period("M").dt.start_time
    monthly = events.groupby("month").agg(users=("user_id", "nunique"), revenue=("value", "sum"))
    figures = _figures(page)
    np.testing.assert_allclose(
        _trace(figures["fig-all"], "all", 4), monthly.revenue / monthly.users, rtol=1e-4
    )
    first = events.groupby("user_id").month.transform("min")
    january = events[first == pd.Timestamp("1997-01-01")].groupby("month").user_id.nunique()
    assert _trace(figures["fig-cohort"], "1997-01", 1).tolist() == january.astype(float).tolist()
    # Headline: June 1998 against May 1998, both complete months.
    june, may = monthly.loc["1998-06-01"], monthly.loc["1998-05-01"]
    output = result.output
    assert "1998-05" in output and "1998-06" in output
    assert f"{int(june.users):,}" in output and f"{int(may.users):,}" in output
    assert f"{june.users / may.users - 1:+.1%}" in output


def test_window_compares_complete_periods(ml100k_lake) -> None:
    lake, _ = ml100k_lake
    con = lake.connect()
    report = compute_kpis(con, "ml-100k", window="last 30 days", by=["gender"], grain="week")
    # The last event is on 1998-04-22: the window is 03-24..04-22, and its first and last
    # weeks are cut, so the change compares the two whole weeks before the last one.
    assert report.observed.label == "1998-03-24..1998-04-22"
    assert report.periods == ("week of 1998-04-06", "week of 1998-04-13")
    timed = report.over_time("all")
    assert timed.complete.tolist() == [False, True, True, True, False]
    levels = set(report.levels("gender").level)
    assert levels == {"F", "M"}
    previous = compute_kpis(con, "ml-100k", window="previous 30 days", by=["gender"])
    assert previous.observed.label == "1998-02-22..1998-03-23"


def test_variant_breakdown_once_the_dataset_has_exposures(ml100k_lake, tmp_path: Path) -> None:
    """Once exposures reach the lake (the ledger's flush), the report breaks every metric
    down by variant without being asked; tests/data/test_kpi_variants.py checks the figures."""
    source, _ = ml100k_lake
    shutil.copytree(source.path(), tmp_path / "lake")
    lake = Lake(str(tmp_path / "lake"))
    people = [str(user) for user in range(1, 944)]
    index = choose_many(hash_many("kpi-hook", people, 2), bucket_ranges(2, 1.0, [0.5, 0.5]))
    start = datetime(1997, 9, 1, tzinfo=UTC)  # before every event: all of them are exposed
    ledger = ExperimentLedger(Database(tmp_path / "online.sqlite"))
    ledger.record([
        Exposure("ml-100k", "kpi-hook", person, False, ("control", "treatment")[i], int(i), 2,
                 False, start)
        for person, i in zip(people, index, strict=True)
    ])  # fmt: skip
    ledger.flush(lake)
    report = compute_kpis(lake.connect(), "ml-100k", by=["channel"], grain="month")
    assert report.by == ["channel", "variant"] and report.experiment == "kpi-hook"
    levels = report.levels("variant")
    assert levels.level.tolist() == ["control", "treatment"]
    assert levels.active_users.sum() == 943  # a person is in one variant
    assert levels.active_users.tolist() == [int((index == 0).sum()), int((index == 1).sum())]
    page = render_html(report)
    assert 'id="fig-variant"' in page and "No experiment has exposures" not in page
    assert "By experiment variant: <code>kpi-hook</code>" in page


def _undated_lake(tmp_path: Path, write_csv) -> Lake:
    """A lake holding one dataset without timestamps (as MovieLens 1M ships)."""
    path = write_csv("undated.csv", [{"user": "u1", "item": "i1", "stars": "4"},
                                     {"user": "u2", "item": "i2", "stars": "2"}])  # fmt: skip
    mapping = sources.ColumnMapping.model_validate(
        {"user_id": "user", "item_id": "item", "value": "stars",
         "event_type_constant": "rate", "default_consent": ["personalization"]}
    )  # fmt: skip
    lake = Lake(str(tmp_path / "undated-lake"))
    collect.ingest(sources.interactions_file(path, mapping, "undated"), lake, bytes(32))
    return lake


ERRORS = [
    (["--dataset", "nope"], "no dataset 'nope' in the lake"),
    (["--dataset", "ml-100k", "--window", "1990-01-01..1990-12-31"], "holds no events"),
    (["--dataset", "ml-100k", "--window", "yesterday"], "neither a date range"),
    (["--dataset", "ml-100k", "--by", "segment,colour"], "--by 'colour' is not a breakdown"),
    (["--dataset", "ml-100k", "--grain", "year"], "--grain 'year'"),
    (["--dataset", "ml-100k", "--by", "variant"], "no experiment has exposures in 'ml-100k'"),
    (["--dataset", "ml-100k", "--experiment", "nope"], "--experiment 'nope'"),
    (["--dataset", "ml-100k", "--conversion", "purchase"], "no 'purchase' events"),
]


@pytest.mark.parametrize(("args", "message"), ERRORS, ids=[m for _, m in ERRORS])
def test_bad_input_exits_2_and_writes_nothing(
    ml100k_lake, kpi, tmp_path: Path, isolated_settings: Path, args: list[str], message: str
) -> None:
    lake, _ = ml100k_lake
    out = tmp_path / "kpi-out"
    for extra in ([], ["--out", str(out)]):
        result = kpi(lake, *args, *extra)
        assert result.exit_code == 2, result.output
        assert message in result.stderr.replace("\n", " ")
    assert not out.exists()
    assert not get_settings().reports_dir.exists()


def test_undated_dataset_and_out_file_are_errors(
    kpi, tmp_path: Path, write_csv, isolated_settings: Path
) -> None:
    lake = _undated_lake(tmp_path, write_csv)
    result = kpi(lake, "--dataset", "undated")
    assert result.exit_code == 2, result.output
    assert "has no timestamped events" in result.stderr
    a_file = tmp_path / "taken"
    a_file.write_text("not a folder")
    result = kpi(lake, "--dataset", "undated", "--out", a_file)
    assert result.exit_code == 2 and "is a file" in result.stderr
    assert a_file.read_text() == "not a folder"
    assert not get_settings().reports_dir.exists()
