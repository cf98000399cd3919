"""Ranker tuning and its commands: the trials share one prepared fit stage, each is a
nested MLflow run with LightGBM autologging and no model logged, the best parameters go
to the parameters file and to the refit; bad input ends a command with a message and
exit code 1."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import optuna
import pytest
from typer.testing import CliRunner

from bespoke.cli import app
from bespoke.settings import get_settings
from bespoke.training import ranking
from bespoke.training.params import tuned_ranker_params
from bespoke.training.ranker import OBJECTIVES
from bespoke.training.ranking import RankingData
from bespoke.training.tune import tune_ranker


@pytest.fixture(scope="module")
def data(ml100k_lake) -> RankingData:
    """ML-100K's fit stage, its training people cut to 300 to keep the trials quick."""
    lake, _ = ml100k_lake
    prepared = ranking.prepare(lake, "ml-100k", "ms-stratified")
    return replace(prepared, train=prepared.train.take(np.arange(300)))


def test_a_ranker_study_logs_nested_trials_without_models_and_writes_the_best(
    data: RankingData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    refits: list[dict[str, Any]] = []
    monkeypatch.setattr(
        ranking, "train_ranker", lambda *args, **kwargs: refits.append(kwargs) or "refit"
    )
    settings = get_settings()
    params_file = tmp_path / "tuned.json"
    result = tune_ranker(
        settings, "ml-100k", 3, protocol="ms-stratified", params_file=params_file, data=data
    )

    assert result.model_name == "ranker" and result.trials == 3
    best = result.best_params
    assert best["objective"] in OBJECTIVES
    assert 0.01 <= best["learning_rate"] <= 0.2 and 7 <= best["num_leaves"] <= 127
    assert 0.0 < result.best_value <= 1.0

    stored = json.loads(params_file.read_text())["ml-100k"]["ms-stratified"]["ranker"]
    assert stored["params"] == best
    assert stored["study"] == "ml-100k-ranker-ms-stratified"
    assert stored["validation_reranked_ndcg@10"] == pytest.approx(result.best_value, abs=1e-4)
    assert tuned_ranker_params(params_file, "ml-100k", "ms-stratified") == best
    assert tuned_ranker_params(params_file, "ml-1m", "ms-stratified") == {}
    assert tuned_ranker_params(tmp_path / "absent.json", "ml-100k", "ms-stratified") == {}

    study = optuna.load_study(
        study_name="ml-100k-ranker-ms-stratified",
        storage=f"sqlite:///{settings.root / 'mlruns' / 'optuna.db'}",
    )
    assert len(study.trials) == 3

    # the final model: the best trial's booster or logistic regression, on the same data
    assert result.final == "refit" and len(refits) == 1
    assert refits[0]["objective"] == (best["objective"], "logistic")  # both compete
    assert refits[0]["params"] == {k: v for k, v in best.items() if k != "objective"}
    assert refits[0]["data"] is data and refits[0]["register"] is True

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)  # training leaves the global URI be
    runs = mlflow.search_runs(experiment_names=["rankers-ml-100k"])
    parent = runs[runs["tags.kind"] == "study"]
    assert len(parent) == 1
    trials = runs[runs["tags.mlflow.parentRunId"] == parent["run_id"].iloc[0]]
    assert len(trials) == 3 and (trials["tags.trial.state"] == "complete").all()
    assert trials["metrics.valid.reranked_ndcg_at_10"].max() == pytest.approx(result.best_value)
    # LightGBM autologging ran in every trial (its parameters and per-round metrics) ...
    assert trials["params.num_boost_round"].notna().all()
    assert trials["metrics.valid-ndcg_at_10"].notna().all()
    # ... and logged no model
    client = mlflow.MlflowClient()
    for run_id in trials["run_id"]:
        paths = {artifact.path for artifact in client.list_artifacts(run_id)}
        assert "feature_importance_gain.json" in paths
        assert "model" not in paths and "MLmodel" not in paths
    logged = mlflow.search_logged_models(
        experiment_ids=[parent["experiment_id"].iloc[0]], output_format="list"
    )
    assert logged == []


def test_a_resumed_study_picks_its_best_among_trials_on_the_same_fit_stage(
    data: RankingData,
) -> None:
    settings = get_settings()
    first = tune_ranker(settings, "ml-100k", 1, protocol="ms-stratified", seed=7, data=data,
                        register=False)  # fmt: skip
    other = replace(data, retriever_params={"ease": {"l2": 50.0}})  # another fit stage
    second = tune_ranker(settings, "ml-100k", 1, protocol="ms-stratified", data=other,
                         register=False)  # fmt: skip
    assert second.trials == 2
    study = optuna.load_study(
        study_name="ml-100k-ranker-ms-stratified",
        storage=f"sqlite:///{settings.root / 'mlruns' / 'optuna.db'}",
    )
    earlier, own = study.trials
    assert first.best_value == earlier.value
    # the earlier trial scored better, but on another fit stage
    assert earlier.value > own.value
    assert second.best_value == own.value
    assert second.best_params["learning_rate"] == own.params["learning_rate"]


def test_tuning_refuses_no_trials_and_data_of_another_dataset(data: RankingData) -> None:
    with pytest.raises(ValueError, match="trials must be at least 1"):
        tune_ranker(get_settings(), "ml-100k", 0, protocol="ms-stratified", data=data,
                    register=False)  # fmt: skip
    with pytest.raises(ValueError, match="prepared data is ml-100k"):
        tune_ranker(get_settings(), "ml-1m", 1, protocol="ms-stratified", data=data,
                    register=False)  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "ranker", "--dataset", "nope"], "dataset 'nope' has no interactions"),
        (["tune", "ranker", "--dataset", "nope", "--trials", "2"], "dataset 'nope'"),
        (["tune", "ranker", "--dataset", "ml-100k", "--trials", "0"], "trials must be at least 1"),
        (["train", "ranker", "--dataset", "ml-100k", "--objective", "xgb"], "--objective 'xgb'"),
        (["train", "ranker", "--dataset", "ml-100k", "--candidates", "5"], "--candidates"),
        (
            ["models", "promote", "--dataset", "ml-100k", "--version", "1", "--kind", "tree"],
            "unknown kind 'tree'",
        ),
        (
            ["models", "promote", "--dataset", "ml-100k", "--version", "7", "--kind", "ranker"],
            "bespoke-ranker-ml-100k has no version '7'",
        ),
    ],
)
def test_ranker_commands_end_bad_input_with_a_message(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert "Traceback" not in result.output
