"""Drift reports on real data: MovieLens 100K's first vs last two months and CDNOW's first
vs a later quarter are flagged, random halves of one window are not, and the report on
disk is what the result says (JSON per table and column, HTML files ≤ 5 MB).

The false-alarm *rate* (≥ 50 splits) is measured by ``bench/drift.py``; a few splits here
keep it honest in CI.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bespoke.cli import app
from bespoke.features.lake import Lake
from bespoke.monitoring import drift
from bespoke.monitoring.drift import DriftConfig, DriftResult, run_drift
from bespoke.monitoring.windows import parse_window
from bespoke.settings import Settings, get_settings

ML_FIRST = "1997-09-20..1997-11-19"  # ML-100K's first two months
ML_LAST = "1998-02-22..1998-04-22"  # and its last two
CD_Q1_1997 = "1997-01-01..1997-03-31"  # the cohort's first purchases
CD_Q1_1998 = "1998-01-01..1998-03-31"
MAX_HTML_BYTES = 5_000_000


def _settings(lake: Lake, home: Path) -> Settings:
    # No registry there: the ranker table is skipped (tests/model covers it).
    return Settings(
        home=home,
        lake_url=lake.url,
        mlflow_tracking_uri=f"sqlite:///{home / 'no-mlflow.db'}",
    )


@pytest.fixture(scope="module")
def ml_report(ml100k_lake, tmp_path_factory) -> DriftResult:
    lake, _ = ml100k_lake
    home = tmp_path_factory.mktemp("drift-ml")
    return run_drift(_settings(lake, home), "ml-100k", ML_FIRST, ML_LAST)


def test_movielens_first_vs_last_two_months_is_drift(ml_report: DriftResult) -> None:
    assert ml_report.drifted
    users = ml_report.tables["users"]
    assert users.drifted
    # the later months bring back returning people, who rate less per window
    assert {"returning", "tenure_days", "events"} <= set(users.drifted_columns)
    assert ml_report.tables["ranker"].note == "no @champion ranker"
    assert not ml_report.tables["ranker"].tested


def test_the_report_lands_under_reports_with_json_and_small_html(
    ml_report: DriftResult,
) -> None:
    assert ml_report.report_dir.parent.name == "reports"
    assert ml_report.json == ml_report.report_dir / "drift.json"
    names = sorted(p.name for p in ml_report.report_dir.iterdir())
    assert names == sorted(["drift.json", *(p.name for p in ml_report.html)])
    assert {p.name for p in ml_report.html} >= {
        "drift-users.html",
        "drift-items.html",
        "drift-events.html",
    }
    for path in ml_report.html:
        size = path.stat().st_size
        assert 0 < size <= MAX_HTML_BYTES, (path.name, size)
        assert "full data (Bespoke)" in path.read_text(encoding="utf-8")


def test_the_json_says_what_the_result_says(ml_report: DriftResult) -> None:
    payload = json.loads(ml_report.json.read_text())
    assert payload["dataset"] == "ml-100k"
    assert payload["drifted"] is True
    assert payload["drifted_tables"] == ml_report.drifted_tables
    assert payload["reference"]["label"] == ML_FIRST
    assert payload["reference"]["start"].startswith("1997-09-20T00:00:00")
    assert payload["current"]["end"].startswith("1998-04-23T00:00:00")
    assert payload["config"] == DriftConfig().model_dump(mode="json")
    for name, table in ml_report.tables.items():
        stored = payload["tables"][name]
        assert stored["drifted"] == table.drifted
        assert set(stored["columns"]) == set(table.columns)
        for column, found in table.columns.items():
            entry = stored["columns"][column]
            assert entry["drifted"] == found.drifted
            assert entry["test"] in {"ks", "chisquare", "jensenshannon"}
            assert entry["test"] == ("ks" if found.kind == "numeric" else "chisquare")
            assert 0.0 <= entry["p_value"] <= 1.0
    events = payload["tables"]["events"]
    # one person's rows are not independent: the p-values count (fewer) people
    assert events["columns"]["value"]["effective_rows"][0] < events["rows"]["reference"]


def test_cdnow_first_quarter_vs_a_year_later_is_drift(cdnow_lake, tmp_path: Path) -> None:
    lake, _ = cdnow_lake
    config = DriftConfig.model_validate({"html": {"enabled": False}})
    result = run_drift(
        _settings(lake, tmp_path / "home"),
        "cdnow",
        CD_Q1_1997,
        CD_Q1_1998,
        config=config,
        out_dir=tmp_path / "out",
    )
    assert result.drifted
    users = result.tables["users"]
    assert users.drifted and users.share_drifted >= 0.5
    # the cohort's survivors buy more per order than the whole cohort did at first
    assert "mean_value" in users.drifted_columns
    assert result.tables["items"].note == "no item ids in the events"
    assert result.html == [] and result.json.is_file()


def _halves_drift(lake: Lake, dataset: str, text: str, seeds: range) -> list[bool]:
    con = lake.connect()
    _, last = drift.dataset_span(con, dataset)
    data = drift.load_window(con, dataset, parse_window(text, last))
    config = DriftConfig()
    found = []
    for seed in seeds:
        first, second = data.split(seed)
        match = drift.matched(first, second)
        tables = drift.compare_tables(
            drift.window_tables(con, first, config, **match),
            drift.window_tables(con, second, config, **match),
            config,
        )
        found.append(drift.is_drift(tables, config))
    return found


def test_random_halves_of_a_movielens_window_are_not_drift(ml100k_lake) -> None:
    lake, _ = ml100k_lake
    assert _halves_drift(lake, "ml-100k", ML_FIRST, range(3)) == [False] * 3
    assert _halves_drift(lake, "ml-100k", ML_LAST, range(3)) == [False] * 3


def test_random_halves_of_a_cdnow_quarter_are_not_drift(cdnow_lake) -> None:
    lake, _ = cdnow_lake
    assert _halves_drift(lake, "cdnow", CD_Q1_1997, range(3)) == [False] * 3


@pytest.fixture
def cli_lake(ml100k_lake, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The CLI reads the shared ML-100K lake; reports go to the test's own home."""
    lake, _ = ml100k_lake
    monkeypatch.setenv("BESPOKE_LAKE_URL", lake.url)
    monkeypatch.setenv("BESPOKE_MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'none.db'}")
    get_settings.cache_clear()
    return get_settings().reports_dir


def test_cli_exit_codes_drift_1_and_no_drift_0(cli_lake: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    config = tmp_path / "quick.json"
    config.write_text(json.dumps({"html": {"enabled": False}}))
    drifted = runner.invoke(
        app,
        ["monitor", "drift", "--dataset", "ml-100k", "--reference", ML_FIRST,
         "--current", ML_LAST, "--config", str(config)],
    )  # fmt: skip
    assert drifted.exit_code == 1, drifted.output
    assert "DRIFT in users" in drifted.output and "returning" in drifted.output
    (report,) = list(cli_lake.iterdir())
    assert (report / "drift.json").is_file()

    quiet = runner.invoke(
        app,
        ["monitor", "drift", "--dataset", "ml-100k", "--reference", "previous 60 days",
         "--current", "last 60 days", "--config", str(config), "--out", str(tmp_path / "q")],
    )  # fmt: skip
    assert quiet.exit_code == 0, quiet.output
    assert "no drift" in quiet.output
    assert json.loads((tmp_path / "q" / "drift.json").read_text())["drifted"] is False


def test_cli_empty_window_exits_2_and_writes_nothing(cli_lake: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["monitor", "drift", "--dataset", "ml-100k", "--reference", "1999-01-01..1999-03-01",
         "--current", "last 30 days"],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "holds no events of 'ml-100k'" in result.output
    assert "1997-09-20 to 1998-04-22" in result.output
    assert not cli_lake.exists()


def test_a_finer_rating_scale_is_drift_whatever_the_person_count(ml100k_lake) -> None:
    """A rating scale becoming finer: 40% of a window's ratings move to new half-point
    levels (4 → 3.5, …). Few people make many of those rows, so tests counting people
    barely move; the value domain check flags it on its own."""
    lake, _ = ml100k_lake
    con = lake.connect()
    _, last = drift.dataset_span(con, "ml-100k")
    data = drift.load_window(con, "ml-100k", parse_window(ML_LAST, last))
    first, second = data.split(0)
    events = second.events.copy()
    finer = np.random.default_rng(0).random(len(events)) < 0.4
    events.loc[finer, "value"] = events.loc[finer, "value"] - 0.5
    changed = replace(second, events=events)
    config = DriftConfig()
    match = drift.matched(first, changed)
    tables = drift.compare_tables(
        drift.window_tables(con, first, config, **match),
        drift.window_tables(con, changed, config, **match),
        config,
    )
    assert drift.is_drift(tables, config)
    value = tables["events"].columns["value"]
    assert value.domain is not None and value.domain.drifted
    assert value.domain.new_share == pytest.approx(0.4, abs=0.02)
    assert set(value.domain.new_levels) <= {"0.5", "1.5", "2.5", "3.5", "4.5"}
    assert tables["events"].domain_changes == ["value"] and tables["events"].drifted
    # the random halves of the same window stay quiet (test_random_halves_… above): the
    # check fires on a changed domain, not on sampling
    quiet = drift.compare_tables(
        drift.window_tables(con, first, config, **drift.matched(first, second)),
        drift.window_tables(con, second, config, **drift.matched(first, second)),
        config,
    )
    assert not any(table.domain_changes for table in quiet.values())
