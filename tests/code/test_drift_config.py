"""Drift report: the thresholds file, the column tests on synthetic data, and the CLI's
errors (exit 2, a message naming the problem, nothing written)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from typer.testing import CliRunner

from bespoke.cli import app
from bespoke.features import collect, sources
from bespoke.features.lake import Lake
from bespoke.monitoring import drift
from bespoke.monitoring.drift import (
    DriftConfig,
    DriftError,
    FeatureTable,
    compare_table,
    load_drift_config,
)
from bespoke.settings import get_settings

ROOT = Path(__file__).resolve().parents[2]


# --- the config file ----------------------------------------------------------------------


def test_the_shipped_file_is_valid_and_is_the_models_defaults() -> None:
    assert drift.default_config_path().is_file()
    assert load_drift_config() == DriftConfig()
    assert load_drift_config(None).numeric.test == "ks"


def test_the_shipped_file_is_package_data() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    data = pyproject["tool"]["setuptools"]["package-data"]
    assert "drift.json" in data["bespoke.monitoring"]


def _write(tmp_path: Path, content: object) -> Path:
    path = tmp_path / "thresholds.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def test_a_partial_file_keeps_the_other_defaults(tmp_path: Path) -> None:
    config = load_drift_config(_write(tmp_path, {"tables": {"users": {"drift_share": 0.6}}}))
    assert config.tables.users.drift_share == 0.6
    assert config.tables.events == DriftConfig().tables.events
    assert config.numeric == DriftConfig().numeric


@pytest.mark.parametrize(
    ("content", "names"),
    [
        ({"numeric": {"pvalue": 0.1}}, ["numeric.pvalue", "Extra inputs"]),
        ({"numeric": {"p_value": 1.5}}, ["numeric.p_value"]),
        ({"categorical": {"test": "psi"}}, ["categorical.test"]),
        ({"tables": {"sessions": {}}}, ["tables.sessions"]),
        ({"tables": {"users": {"min_rows": 1}}}, ["tables.users.min_rows"]),
        ({"html": {"columns_per_file": 40}}, ["html.columns_per_file"]),
        ({"threshold": 0.1}, ["threshold"]),
    ],
)
def test_a_broken_file_names_the_file_and_the_field(
    tmp_path: Path, content: dict, names: list[str]
) -> None:
    path = _write(tmp_path, content)
    with pytest.raises(DriftError) as error:
        load_drift_config(path)
    assert str(path) in str(error.value)
    for name in names:
        assert name in str(error.value)


def test_invalid_json_names_line_and_column(tmp_path: Path) -> None:
    path = _write(tmp_path, '{"numeric": {"p_value": 0.05,}}')
    with pytest.raises(DriftError, match=r"not valid JSON \(line 1, column"):
        load_drift_config(path)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(DriftError, match=r"nothere\.json: no such file"):
        load_drift_config(tmp_path / "nothere.json")


# --- the tests on synthetic columns -------------------------------------------------------


def test_ks_matches_scipy_when_rows_are_independent() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=400), rng.normal(0.2, size=300)
    d, p = drift.ks_test(a, b, (400, 300))
    expected = stats.ks_2samp(a, b, method="asymp")
    assert d == pytest.approx(expected.statistic)
    assert p == pytest.approx(expected.pvalue, rel=1e-6)


def test_chisquare_matches_scipy_when_rows_are_independent() -> None:
    ref = pd.Series([50, 30, 20], index=["a", "b", "c"])
    cur = pd.Series([30, 30, 40], index=["a", "b", "c"])
    statistic, p, distance = drift.chisquare_test(ref, cur, (100, 100))
    expected = stats.chi2_contingency(np.vstack([ref, cur]), correction=False)
    assert statistic == pytest.approx(expected.statistic)
    assert p == pytest.approx(expected.pvalue)
    assert 0 < distance < 1


def test_the_effective_size_of_clustered_rows_is_kish() -> None:
    assert drift._kish(pd.Series(np.repeat(np.arange(10), 5))) == 10
    # one person with 1000 rows and 10 with one each: about one independent value
    heavy = pd.Series(["big"] * 1000 + [f"p{i}" for i in range(10)])
    assert drift._kish(heavy) == 1


def _table(frame: pd.DataFrame, numeric=(), categorical=(), cluster=None) -> FeatureTable:
    return FeatureTable("users", frame, list(numeric), list(categorical), cluster)


def test_same_distribution_is_not_drift_and_a_shift_is() -> None:
    rng = np.random.default_rng(1)
    n = 2_000
    ref = pd.DataFrame({"x": rng.normal(size=n), "c": rng.choice(list("abc"), n)})
    same = pd.DataFrame({"x": rng.normal(size=n), "c": rng.choice(list("abc"), n)})
    moved = pd.DataFrame(
        {"x": rng.normal(1.0, size=n), "c": rng.choice(list("abc"), n, p=[0.7, 0.2, 0.1])}
    )
    config = DriftConfig()
    quiet = compare_table(_table(ref, ["x"], ["c"]), _table(same, ["x"], ["c"]), config)
    assert not quiet.drifted and quiet.drifted_columns == []
    loud = compare_table(_table(ref, ["x"], ["c"]), _table(moved, ["x"], ["c"]), config)
    assert loud.drifted and loud.share_drifted == 1.0
    assert loud.columns["x"].test == "ks" and loud.columns["c"].test == "chisquare"


def test_a_tiny_but_significant_shift_is_not_drift() -> None:
    # a million rows make a 0.02-sd shift significant; the effect floor keeps it quiet
    rng = np.random.default_rng(2)
    ref = pd.DataFrame({"x": rng.normal(size=1_000_000)})
    cur = pd.DataFrame({"x": rng.normal(0.02, size=1_000_000)})
    result = compare_table(_table(ref, ["x"]), _table(cur, ["x"]), DriftConfig())
    column = result.columns["x"]
    assert column.p_value < 1e-6 and not column.drifted


def test_clustered_rows_count_people_not_rows() -> None:
    # 40 people × 50 rows, each person with their own level: the rows are 2,000 values
    # but only 40 people; a shift of 0.3 sd is noise at that size
    rng = np.random.default_rng(3)
    people = np.repeat(np.arange(40), 50)

    def side(offset: float) -> pd.DataFrame:
        return pd.DataFrame({"x": rng.normal(offset, size=40)[people], "person": people})

    ref, cur = side(0.0), side(0.3)
    clustered = compare_table(
        _table(ref, ["x"], cluster="person"), _table(cur, ["x"], cluster="person"), DriftConfig()
    )
    assert clustered.columns["x"].effective_rows == (40, 40)
    naive = drift.ks_test(ref["x"].to_numpy(), cur["x"].to_numpy(), (2000, 2000))[1]
    assert clustered.columns["x"].p_value > naive


def test_rescaled_counts_on_misaligned_lattices_are_not_drift() -> None:
    # Poisson counts over 61 and 60 days: as rates their atoms never line up, which a
    # KS test would read as drift; spread over their unit cell they compare fairly
    rng = np.random.default_rng(4)
    a = pd.Series(rng.poisson(2, 3_000))
    b = pd.Series(rng.poisson(2 * 60 / 61, 3_000))
    raw = drift.ks_test(a.to_numpy() / 61, b.to_numpy() / 60, (3_000, 3_000))
    assert raw[0] > 0.1  # the artefact
    spread = drift.ks_test(
        drift._spread(a, np.random.default_rng(0)) / 61,
        drift._spread(b, np.random.default_rng(1)) / 60,
        (3_000, 3_000),
    )
    assert spread[0] < 0.05


def test_constant_columns_are_skipped_and_small_tables_not_tested() -> None:
    ref = pd.DataFrame({"x": np.arange(50.0), "k": ["a"] * 50})
    cur = pd.DataFrame({"x": np.arange(50.0) + 0.5, "k": ["a"] * 50})
    result = compare_table(_table(ref, ["x"], ["k"]), _table(cur, ["x"], ["k"]), DriftConfig())
    assert "k" in result.skipped and "x" in result.columns
    small = compare_table(_table(ref.head(5), ["x"]), _table(cur.head(5), ["x"]), DriftConfig())
    assert not small.tested and "too few rows" in (small.note or "")


# --- the CLI: errors exit 2 and write nothing ---------------------------------------------


@pytest.fixture
def small_lake(mini_movielens, key: bytes) -> Path:
    """A few ratings in the test's own home (the lake the CLI reads)."""
    folder = mini_movielens(
        users=[(1, 30, "F", "artist", "10001"), (2, 40, "M", "doctor", "94110")],
        items=[(1, "A (1995)", "01-Jan-1995", ["Action"]), (2, "B (1996)", "", ["Comedy"])],
        ratings=[(1, 1, 4, 880000000), (2, 2, 3, 880100000), (1, 2, 5, 880200000)],
    )
    settings = get_settings()
    collect.ingest(sources.movielens_100k(folder, dataset="mini"), Lake(settings.lake_url), key)
    return settings.reports_dir


def _drift(*args: str):
    return CliRunner().invoke(app, ["monitor", "drift", *args])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--reference", "last 3 weeks", "--current", "last 7 days"], "'last 3 weeks'"),
        (["--reference", "2024-02-30..2024-03-01", "--current", "last 7 days"], "not a date"),
        (["--reference", "last 7 days", "--current", "1997-03-01..1997-02-01"], "ends before"),
        (["--reference", "2001-01-01..2001-01-31", "--current", "last 7 days"], "holds no events"),
    ],
)
def test_bad_windows_exit_2_and_write_nothing(small_lake: Path, args, message) -> None:
    result = _drift("--dataset", "mini", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not small_lake.exists()


def test_an_unknown_dataset_exits_2_naming_the_known_ones(small_lake: Path) -> None:
    result = _drift(
        "--dataset", "nope", "--reference", "previous 7 days", "--current", "last 7 days"
    )
    assert result.exit_code == 2
    assert "'nope'" in result.output and "mini" in result.output
    assert not small_lake.exists()


def test_a_broken_config_exits_2_and_writes_nothing(small_lake: Path, tmp_path: Path) -> None:
    bad = _write(tmp_path, {"numeric": {"p_value": -1}})
    out = tmp_path / "out"
    result = _drift(
        "--dataset", "mini", "--reference", "previous 7 days", "--current", "last 7 days",
        "--config", str(bad), "--out", str(out),
    )  # fmt: skip
    assert result.exit_code == 2
    assert "numeric.p_value" in result.output
    assert not out.exists() and not small_lake.exists()


def test_a_missing_option_is_a_usage_error_exit_2(small_lake: Path) -> None:
    assert _drift("--dataset", "mini", "--current", "last 7 days").exit_code == 2


def test_importing_the_cli_does_not_import_evidently() -> None:
    import subprocess
    import sys

    code = "import sys, bespoke.cli; print('evidently' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
