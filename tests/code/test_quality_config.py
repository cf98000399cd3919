"""The quality thresholds (``quality.json``), the verdict rule, and the retraining
schedule's small parts: durations, default windows, the loop, the lock, bad input."""

from __future__ import annotations

import json
from datetime import timedelta
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from bespoke.cli import app
from bespoke.monitoring.quality import (
    DEFAULT_CONFIG,
    QualityConfig,
    QualityError,
    Threshold,
    _check,
    bootstrap_calibration,
    load_config,
)
from bespoke.monitoring.quality_cli import retrain_command
from bespoke.monitoring.retrain import (
    RetrainError,
    default_reference,
    exclusive,
    parse_duration,
    retrain,
    run_every,
)
from bespoke.settings import get_settings
from bespoke.training.metrics import calibration_metrics


def _write(tmp_path: Path, content: object) -> Path:
    path = tmp_path / "quality.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def test_the_shipped_config_is_valid_and_travels_with_the_package() -> None:
    config = load_config()
    assert config == load_config(DEFAULT_CONFIG)
    assert list(config.recommender) == ["ndcg@10", "precision@10", "recall@10"]
    assert list(config.ranker) == ["auc", "logloss", "brier", "ece"]
    assert config.window == "last 30 days"
    shipped = resources.files("bespoke.monitoring").joinpath("quality.json")
    assert shipped.is_file()
    assert '"quality.json"' in (Path(__file__).parents[2] / "pyproject.toml").read_text()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"windw": "last 7 days"}, "windw: Extra inputs are not permitted"),
        (
            {"recommender": {"ndcg@10": {"relative": 0.2, "relatve": 1}}},
            "recommender.ndcg@10.relatve: Extra inputs are not permitted",
        ),
        (
            {"recommender": {"ndcg@10": {"relative": 0.2, "absolute": 0.1}}},
            "recommender.ndcg@10: give exactly one of 'relative' or 'absolute'",
        ),
        ({"ranker": {"auc": {}}}, "ranker.auc: give exactly one"),
        ({"recommender": {"ndcg@5": {"relative": 0.2}}}, "recommender.ndcg@5: Input should be"),
        ({"recommender": {"ndcg@10": {"relative": -0.2}}}, "greater than 0"),
        ({"window": "yesterday"}, "window 'yesterday' is neither a date range"),
        ({"confidence": 1.5}, "confidence: Input should be less than 1"),
        ({"min_people": 0}, "min_people: Input should be greater than or equal to 1"),
        ("{not json", "not valid JSON (line 1, column 2: Expecting property name"),
        ("[]", "(top level): Input should be a valid dictionary"),
    ],
)
def test_bad_configs_are_refused_naming_the_field(
    tmp_path: Path, content: object, message: str
) -> None:
    path = _write(tmp_path, content)
    with pytest.raises(QualityError) as raised:
        load_config(path)
    assert str(raised.value).startswith(f"quality config {path}")
    assert message in str(raised.value)


def test_a_missing_config_is_named(tmp_path: Path) -> None:
    with pytest.raises(QualityError, match=r"absent\.json: no such file"):
        load_config(tmp_path / "absent.json")
    with pytest.raises(QualityError, match="cannot be read"):
        load_config(tmp_path)  # a folder


def test_thresholds_move_the_limit_in_the_bad_direction() -> None:
    assert Threshold(relative=0.2).limit(0.5, lower_is_better=False) == pytest.approx(0.4)
    assert Threshold(relative=0.2).limit(0.5, lower_is_better=True) == pytest.approx(0.6)
    assert Threshold(absolute=0.05).limit(0.8, lower_is_better=False) == pytest.approx(0.75)
    assert Threshold(absolute=0.05).limit(0.02, lower_is_better=True) == pytest.approx(0.07)
    assert Threshold(relative=0.2).describe(False) == "-20%"
    assert Threshold(absolute=0.05).describe(True) == "+0.05"


def test_a_metric_degrades_only_when_its_whole_interval_is_past_the_limit() -> None:
    threshold = Threshold(relative=0.2)  # ndcg 0.5 at training: limit 0.4
    far = np.array([0.20, 0.25, 0.30])
    noisy = np.array([0.20, 0.30, 0.45])  # the point is past the limit, the interval is not
    assert _check("ndcg@10", 0.25, far, 0.5, threshold, 0.9).verdict == "degraded"
    assert _check("ndcg@10", 0.30, noisy, 0.5, threshold, 0.9).verdict == "ok"
    assert _check("ndcg@10", 0.45, np.array([0.44, 0.46]), 0.5, threshold, 0.9).verdict == "ok"
    # without resampling the point decides
    assert _check("ndcg@10", 0.39, np.empty(0), 0.5, threshold, 0.9).verdict == "degraded"
    # lower is better for the log loss: a rise is the bad direction
    rise = _check("logloss", 0.5, np.array([0.45, 0.55]), 0.3, threshold, 0.9)
    assert (rise.verdict, rise.limit) == ("degraded", pytest.approx(0.36))
    assert rise.change == pytest.approx(0.5 / 0.3 - 1)
    assert _check("logloss", 0.2, np.array([0.1, 0.3]), 0.3, threshold, 0.9).verdict == "ok"
    # nothing to compare with, or nothing measured
    assert _check("auc", 0.7, None, None, threshold, 0.9).verdict == "no baseline"
    assert _check("auc", None, None, 0.7, threshold, 0.9).verdict == "not measured"


def test_resampled_calibration_is_the_projects_calibration_of_the_drawn_rows() -> None:
    rng = np.random.default_rng(7)
    sizes = rng.integers(0, 30, size=40)  # people with 0 to 29 candidate rows
    sizes[0] = 1
    probabilities = [np.round(rng.uniform(0, 1, n), 2) for n in sizes]  # with ties
    labels = [
        (rng.uniform(0, 1, n) < p).astype(np.int8)
        for n, p in zip(sizes, probabilities, strict=True)
    ]
    counts = np.vstack([np.ones(40), rng.multinomial(40, np.full(40, 1 / 40), size=3)])
    counts[1] = 0
    counts[1, 0] = 5  # one person with one row: a single label, a draw that measures nothing
    got = bootstrap_calibration(probabilities, labels, counts)
    kept = [
        row for row in counts
        if len(np.unique(np.concatenate([labels[i] for i in np.flatnonzero(row)]))) == 2
    ]  # fmt: skip
    assert len(got["auc"]) == len(kept) == 3
    for d, row in enumerate(kept):
        drawn = np.repeat(np.arange(40), row.astype(int))
        expected = calibration_metrics(
            np.concatenate([probabilities[i] for i in drawn]),
            np.concatenate([labels[i] for i in drawn]),
        )
        for name, value in expected.items():
            assert got[name][d] == pytest.approx(value, rel=1e-9, abs=1e-12), name


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("6h", 6 * 3600), ("30m", 1800), ("90s", 90), ("1d", 86_400), ("1h30m", 5400),
     (" 2w ", 14 * 86_400), ("1.5h", 5400)],
)  # fmt: skip
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "6", "soon", "6 hours", "h6", "0s", "6h and 5m"])
def test_bad_durations_are_named(text: str) -> None:
    with pytest.raises(RetrainError, match="--every"):
        parse_duration(text)


def test_the_default_reference_is_the_window_before_the_current_one() -> None:
    assert default_reference("last 30 days") == "previous 30 days"
    assert default_reference("Last 7 d") == "previous 7 days"
    with pytest.raises(RetrainError, match="give --reference too"):
        default_reference("1998-03-01..1998-03-31")


def test_the_loop_survives_failed_runs_and_keeps_its_period() -> None:
    now = [0.0]
    calls: list[str] = []
    sleeps: list[float] = []
    failures: list[str] = []

    def job() -> None:
        calls.append("run")
        now[0] += 10.0  # each run takes 10 s
        if len(calls) == 2:
            raise RuntimeError("the lake is down")

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    failed = run_every(
        job, timedelta(minutes=1), runs=3, sleep=sleep, clock=lambda: now[0],
        on_error=lambda error: failures.append(str(error)),
    )  # fmt: skip
    assert (failed, calls, failures) == (1, ["run"] * 3, ["the lake is down"])
    assert sleeps == [50.0, 50.0]  # start to start, like cron; none after the last run


def test_a_second_retraining_stops_instead_of_racing_the_first() -> None:
    settings = get_settings()
    with exclusive(settings), pytest.raises(RetrainError, match="another bespoke retrain"):
        retrain(settings, "ml-100k")
    assert not settings.reports_dir.exists() or not any(settings.reports_dir.iterdir())


def _retrain_app() -> typer.Typer:
    cli = typer.Typer()
    cli.command("retrain")(retrain_command)
    return cli


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--trials", "0"], "--trials must be at least 1"),
        (["--current", "yesterday"], "--current: window 'yesterday'"),
        (["--current", "1998-03-01..1998-03-31"], "give --reference too"),
        (["--reference", "last -3 days"], "--reference: window 'last -3 days'"),
        (["--protocol", "random"], "--protocol 'random'"),
        (["--model", "xgboost"], "unknown model 'xgboost'"),
        (["--quality-config", "absent.json"], "quality config absent.json: no such file"),
        (["--drift-config", "absent.json"], "drift config absent.json"),
        (["--every", "soon"], "--every 'soon'"),
        (["--every", "1h", "--trials", "0"], "--trials must be at least 1"),  # before looping
    ],
)
def test_retrain_ends_bad_input_with_exit_code_2(args: list[str], message: str) -> None:
    result = CliRunner().invoke(_retrain_app(), ["--dataset", "ml-100k", "--if-drift", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not get_settings().reports_dir.exists()


def test_monitor_quality_ends_a_bad_config_with_exit_code_2(tmp_path: Path) -> None:
    path = _write(tmp_path, {"recommender": {"ndcg@10": {"relative": 0.2}}, "extra": 1})
    result = CliRunner().invoke(
        app, ["monitor", "quality", "--dataset", "ml-100k", "--config", str(path)]
    )
    assert result.exit_code == 2, result.output
    assert "extra: Extra inputs are not permitted" in result.output


def test_configs_round_trip_through_json() -> None:
    config = load_config()
    assert QualityConfig.model_validate_json(config.model_dump_json()) == config
