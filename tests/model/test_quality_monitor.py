"""``bespoke monitor quality`` on real MovieLens 100K champions, judged on the last 30
days of the data.

- healthy: an EASE recommender and a ranker trained with the temporal protocol on
  what happened before the window hold their training-time quality there (nothing
  flagged), and the figures equal those of the serving path, person by person;
- degraded: EASE trained on the project's default random split of all the data
  promises far more than it delivers on the next month (nDCG@10 0.48 against 0.10):
  flagged, exit code 1. The pairs it was trained on (three quarters of the window) are
  never scored.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
from typer.testing import CliRunner

from bespoke.cli import app
from bespoke.features.lake import Lake
from bespoke.monitoring.quality import QualityResult, run_quality
from bespoke.monitoring.windows import Window, parse_window
from bespoke.serving.local import local_settings
from bespoke.settings import Settings, get_settings
from bespoke.training import ranking
from bespoke.training.data import Interactions, load_interactions
from bespoke.training.metrics import ranking_metrics
from bespoke.training.registry import CHAMPION, Registry
from bespoke.training.split import ms_stratified
from bespoke.training.train import train_recommender

WINDOW = "last 30 days"
#: Small, quick boosting: the data is real, the model small.
FAST = {"num_boost_round": 25, "early_stopping_rounds": 10, "num_leaves": 15}


def home(folder: Path, lake: Lake) -> Settings:
    """Settings of a home of its own (MLflow store, reports) over the shared lake."""
    return local_settings(folder).model_copy(update={"lake_url": lake.url, "root": folder})


def use(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the CLI (``get_settings``) at ``settings``."""
    for variable, value in settings.as_environment().items():
        monkeypatch.setenv(variable, value)
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def interactions(ml100k_lake) -> Interactions:
    lake, _ = ml100k_lake
    return load_interactions(lake, "ml-100k")


@pytest.fixture(scope="module")
def window(interactions: Interactions) -> Window:
    latest = interactions.timestamps.max().astype("datetime64[us]").item()
    return parse_window(WINDOW, latest)


def _start(window: Window) -> np.datetime64:
    return np.datetime64(window.start.replace(tzinfo=None), "us")


@pytest.fixture(scope="module")
def healthy(ml100k_lake, interactions, window, tmp_path_factory) -> Settings:
    """Temporal champions trained only on what happened before the window."""
    lake, _ = ml100k_lake
    settings = home(tmp_path_factory.mktemp("healthy"), lake)
    before = interactions.subset(interactions.timestamps < _start(window))
    train_recommender(
        settings, "ml-100k", "ease", {"l2": 500.0}, protocol="temporal", interactions=before
    )
    data = ranking.prepare(lake, "ml-100k", "temporal", {}, n_candidates=50, interactions=before)
    try:
        # Registered as selected (no refit): this quick ranker refit on every labelled
        # stage before the window (about 200 people) scores AUC 0.44 on the window's 83
        # against 0.59 as selected. Whether a refit serves better is measured on a proper
        # backtest in bench/refit.py; this test checks the monitor, not that choice.
        ranker = ranking.train_ranker(
            settings, "ml-100k", protocol="temporal", objective="binary", params=FAST,
            retriever_params={}, n_candidates=50, data=data, refit=False,
        )  # fmt: skip
    finally:
        mlflow.lightgbm.autolog(disable=True)
    # The quality check judges whatever is @champion; the gate's retrieval floor (which this
    # quick ranker may miss) is tested in test_ranker.py.
    if not ranker.promoted:
        Registry.of(settings).promote("ranker", "ml-100k", str(ranker.version))
    return settings


@pytest.fixture(scope="module")
def stale(ml100k_lake, tmp_path_factory) -> Settings:
    """A champion of a random split of all the data, registered as fitted (not refit). (A
    ranker trained so is flagged too — AUC 0.78 at training, 0.46 on the window — but
    training one costs more than this suite's time allows; the ranker's path is the
    healthy case's, its verdict rule the one tested in tests/code.)"""
    lake, _ = ml100k_lake
    settings = home(tmp_path_factory.mktemp("stale"), lake)
    train_recommender(
        settings, "ml-100k", "ease", {"l2": 500.0}, protocol="ms-stratified", refit=False
    )
    return settings


@pytest.fixture(scope="module")
def healthy_result(healthy: Settings, tmp_path_factory) -> QualityResult:
    return run_quality(healthy, "ml-100k", out_dir=tmp_path_factory.mktemp("healthy-report"))


@pytest.fixture(scope="module")
def stale_result(stale: Settings, tmp_path_factory) -> QualityResult:
    return run_quality(stale, "ml-100k", out_dir=tmp_path_factory.mktemp("stale-report"))


def _champion_run(settings: Settings, name: str) -> mlflow.entities.Run:
    client = Registry.of(settings).client
    return client.get_run(client.get_model_version_by_alias(name, CHAMPION).run_id)


def test_champions_trained_before_the_window_hold_their_quality(
    healthy: Settings, healthy_result: QualityResult, window: Window
) -> None:
    result = healthy_result
    assert not result.degraded
    assert result.window == window and result.anchor.date().isoformat() == "1998-04-22"
    recommender, ranker = result.models
    assert (recommender.kind, ranker.kind) == ("recommender", "ranker")
    for model in result.models:
        assert model.protocol == "temporal" and model.trained_share == 0.0
        assert model.people >= 80 and not model.notes
        assert [check.verdict for check in model.checks] == ["ok"] * len(model.checks)
        run = _champion_run(healthy, model.name)
        for check in model.checks:  # the baseline is what the run logged at training time
            assert check.at_training == run.data.metrics[check.metric.replace("@", "_at_")]
            low, high = check.interval
            assert low <= check.now <= high
    assert [c.metric for c in recommender.checks] == ["ndcg@10", "precision@10", "recall@10"]
    assert [c.metric for c in ranker.checks] == ["auc", "logloss", "brier", "ece"]
    assert 0.5 < ranker.checks[0].now < 1.0 and ranker.rows > 1000


def test_the_figures_are_the_serving_paths_person_by_person(
    healthy: Settings, healthy_result: QualityResult, interactions: Interactions, window: Window
) -> None:
    """Each person asked through ``recommend_from_history`` (the service's path) with
    their history before the window, scored on their window items."""
    champion = Registry.of(healthy).load("recommender", "ml-100k")
    assert champion is not None
    model = champion.model
    start, end = _start(window), np.datetime64(window.end.replace(tzinfo=None), "us")
    before = interactions.timestamps < start
    inside = (interactions.timestamps >= start) & (interactions.timestamps < end)
    people = np.intersect1d(interactions.users[inside], interactions.users[before])
    item_of = {str(item): index for index, item in enumerate(interactions.item_ids)}
    recommended = np.full((len(people), 10), -1)
    for row, person in enumerate(people):
        history = interactions.item_ids[interactions.items[before & (interactions.users == person)]]
        ids, _ = model.recommend_from_history(history, k=10)
        recommended[row] = [item_of[str(i)] for i in ids]
    relevant = interactions.subset(inside).matrix("binary")[people]
    expected = ranking_metrics(recommended, relevant, k=10)
    checks = {check.metric: check for check in healthy_result.models[0].checks}
    for metric in ("ndcg@10", "precision@10", "recall@10"):
        assert checks[metric].now == pytest.approx(expected[metric], rel=1e-9)
    assert healthy_result.models[0].people == len(people)


def test_champions_of_a_random_split_are_flagged_and_their_training_pairs_never_scored(
    stale_result: QualityResult, interactions: Interactions, window: Window
) -> None:
    result = stale_result
    assert result.degraded
    (recommender,) = result.models  # no ranker registered: only the recommender is judged
    verdicts = {check.metric: check.verdict for check in recommender.checks}
    assert verdicts == dict.fromkeys(["ndcg@10", "precision@10", "recall@10"], "degraded")
    ndcg = recommender.checks[0]
    assert ndcg.at_training > 0.45 and ndcg.now < 0.2 and ndcg.change < -0.5
    assert ndcg.interval[1] < ndcg.limit  # the whole interval, not just the point
    assert recommender.protocol == "ms-stratified"
    assert 0.7 < recommender.trained_share < 0.8  # a random 75% of each item's interactions
    assert any("'ms-stratified' protocol" in note for note in recommender.notes)
    assert any("left out of the scores" in note for note in recommender.notes)

    # the relevant pairs are exactly the window's pairs the champion was not trained on
    start, end = _start(window), np.datetime64(window.end.replace(tzinfo=None), "us")
    trained = ms_stratified(interactions).train
    seen = {(u, i) for u, i in zip(trained.users, trained.items, strict=True)}
    before = interactions.timestamps < start
    inside = (interactions.timestamps >= start) & (interactions.timestamps < end)
    people = set(np.intersect1d(interactions.users[inside], interactions.users[before]))
    seen |= {(u, i) for u, i in zip(interactions.users[before], interactions.items[before],
                                    strict=True)}  # fmt: skip
    unseen = {
        (u, i)
        for u, i in zip(interactions.users[inside], interactions.items[inside], strict=True)
        if u in people and (u, i) not in seen
    }
    assert recommender.rows == len(unseen)


def test_the_command_prints_the_table_writes_the_report_and_exits_0_when_healthy(
    healthy: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    use(healthy, monkeypatch)
    result = CliRunner().invoke(app, ["monitor", "quality", "--dataset", "ml-100k"])
    assert result.exit_code == 0, result.output
    for text in ("metric", "at training", "now", "change", "threshold", "verdict", "ndcg@10",
                 "ece", "quality: ok"):  # fmt: skip
        assert text in result.output
    reports = list(healthy.reports_dir.glob("*/quality.json"))
    assert len(reports) == 1 and str(reports[0].parent.name) in result.output.replace("\n", "")
    report = json.loads(reports[0].read_text())
    assert report["verdict"] == "ok" and report["window"]["label"] == WINDOW
    assert [m["kind"] for m in report["models"]] == ["recommender", "ranker"]
    first = report["models"][0]["metrics"][0]
    assert set(first) == {"metric", "at_training", "now", "interval", "change", "threshold",
                          "limit", "verdict"}  # fmt: skip


def test_the_command_exits_1_when_degraded(
    stale: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    use(stale, monkeypatch)
    result = CliRunner().invoke(app, ["monitor", "quality", "--dataset", "ml-100k"])
    assert result.exit_code == 1, result.output
    assert "degraded" in result.output and "ms-stratified" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--window", "2020-01-01..2020-01-31"], "holds no interactions (the data runs to 1998"),
        (["--window", "last 1 days"], "at least 20 are needed to judge quality"),
        (["--window", "last week"], "window 'last week' is neither"),
        (["--dataset", "nope"], "dataset 'nope' has no interactions"),
    ],
)  # fmt: skip
def test_the_command_ends_unusable_input_with_exit_code_2(
    healthy: Settings, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    use(healthy, monkeypatch)
    before = set(healthy.reports_dir.glob("*/quality.json"))
    options = args if "--dataset" in args else ["--dataset", "ml-100k", *args]
    result = CliRunner().invoke(app, ["monitor", "quality", *options])
    assert result.exit_code == 2, result.output
    assert message in result.output.replace("\n", "")
    assert "Traceback" not in result.output
    assert set(healthy.reports_dir.glob("*/quality.json")) == before


def test_no_champion_is_an_error_not_a_verdict(
    ml100k_lake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake, _ = ml100k_lake
    use(home(tmp_path / "empty", lake), monkeypatch)
    result = CliRunner().invoke(app, ["monitor", "quality", "--dataset", "ml-100k"])
    assert result.exit_code == 2, result.output
    assert "bespoke-recommender-ml-100k has no @champion" in result.output.replace("\n", "")
