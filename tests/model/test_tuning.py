"""Tuning: seeded, tracked as nested runs, written to the parameters file, and blind to
the test part of the split."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import mlflow
import optuna
import pytest

from bespoke.settings import get_settings
from bespoke.training.data import load_interactions
from bespoke.training.params import tuned_params
from bespoke.training.split import Split, ms_stratified
from bespoke.training.tune import REPORT_EVERY, tune_recommender


@pytest.fixture(scope="module")
def split(ml100k_lake) -> Split:
    lake, _ = ml100k_lake
    return ms_stratified(load_interactions(lake, "ml-100k"))


def test_a_study_logs_trials_writes_the_best_parameters_and_repeats_with_its_seed(
    split: Split, tmp_path: Path
) -> None:
    settings = get_settings()
    params_file = tmp_path / "tuned.json"
    first = tune_recommender(
        settings, "ml-100k", "ease", 4, split=split, params_file=params_file, register=False
    )
    assert first.trials == 4 and 10.0 <= first.best_params["l2"] <= 5000.0
    assert tuned_params(params_file, "ml-100k", "ms-stratified", "ease") == first.best_params
    stored = json.loads(params_file.read_text())["ml-100k"]["ms-stratified"]["ease"]
    assert stored["validation_ndcg@10"] == pytest.approx(first.best_value, abs=1e-4)

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)  # training leaves the global URI be
    runs = mlflow.search_runs(experiment_names=["recommenders-ml-100k"])
    parent = runs[runs["tags.kind"] == "study"].iloc[0]
    trials = runs[runs["tags.mlflow.parentRunId"] == parent["run_id"]]
    assert len(trials) == 4 and (trials["tags.trial.state"] == "complete").all()

    # a new study with the same seed (new name, so nothing is resumed) proposes the same
    settings_b = settings.model_copy(update={"root": tmp_path})
    again = tune_recommender(settings_b, "ml-100k", "ease", 4, split=split, register=False)
    assert again.best_params == first.best_params


def test_tuning_never_reads_the_test_part(split: Split, tmp_path: Path) -> None:
    settings = get_settings()
    with_test = tune_recommender(
        settings.model_copy(update={"root": tmp_path / "a"}),
        "ml-100k",
        "ease",
        3,
        split=split,
        register=False,
    )
    empty_test = replace(split, test=split.test.subset(split.test.users < 0))
    without_test = tune_recommender(
        settings.model_copy(update={"root": tmp_path / "b"}),
        "ml-100k",
        "ease",
        3,
        split=empty_test,
        register=False,
    )
    assert without_test.best_params == with_test.best_params
    assert without_test.best_value == with_test.best_value


def test_untunable_and_unknown_families_are_refused(split: Split) -> None:
    with pytest.raises(ValueError, match="unknown model"):
        tune_recommender(get_settings(), "ml-100k", "nope", 1, split=split, register=False)


def test_iterative_models_report_to_the_pruner(split: Split) -> None:
    result = tune_recommender(get_settings(), "ml-100k", "als", 7, split=split, register=False)
    assert result.trials == 7
    assert result.best_value > 0.1
    study = optuna.load_study(study_name=result.study_name, storage=result.storage)
    for trial in study.trials:
        iterations = trial.params["iterations"]
        steps = sorted(trial.intermediate_values)
        # every REPORT_EVERY iterations (none before the first block ends) …
        assert steps and all(step % REPORT_EVERY == 0 for step in steps), trial.number
        assert all(0.0 < v < 1.0 for v in trial.intermediate_values.values())
        if trial.state == optuna.trial.TrialState.PRUNED:
            assert steps[-1] < iterations  # … and a pruned trial stopped where it was pruned
        else:
            assert steps[-1] == iterations // REPORT_EVERY * REPORT_EVERY
            if iterations % REPORT_EVERY == 0:  # the last report scored the final model
                assert trial.value == pytest.approx(trial.intermediate_values[steps[-1]])
    assert result.pruned == sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)


def test_a_blend_tunes_the_weights_of_families_already_tuned(split: Split, tmp_path: Path) -> None:
    params_file = tmp_path / "tuned.json"
    settings = get_settings()
    with pytest.raises(ValueError, match="at least two tuned families"):
        tune_recommender(
            settings, "ml-100k", "hybrid", 1, split=split, params_file=params_file, register=False
        )
    params_file.write_text(
        json.dumps(
            {
                "ml-100k": {
                    "ms-stratified": {
                        "ease": {"params": {"l2": 400.0}},
                        "itemknn": {"params": {"neighbours": 50}},
                    }
                }
            }
        )
    )
    result = tune_recommender(
        settings, "ml-100k", "hybrid", 2, split=split, params_file=params_file, register=False
    )
    assert result.best_params["components"] == {
        "ease": {"l2": 400.0},
        "itemknn": {"neighbours": 50},
    }
    assert set(result.best_params["weights"]) == {"ease", "itemknn"}
    assert tuned_params(params_file, "ml-100k", "ms-stratified", "hybrid") == result.best_params


def test_a_study_resumes_over_the_same_data_only(split: Split, tmp_path: Path) -> None:
    """Trials scored on other data (a retrain after new events) are not comparable, so
    they are not resumed; the same data resumes its study."""
    settings = get_settings().model_copy(update={"root": tmp_path})
    tune_recommender(settings, "ml-100k", "ease", 2, split=split, register=False)
    resumed = tune_recommender(settings, "ml-100k", "ease", 2, split=split, register=False)
    assert resumed.trials == 4
    fewer = replace(split, train=split.train.subset(split.train.users % 2 == 0))
    fresh = tune_recommender(settings, "ml-100k", "ease", 2, split=fewer, register=False)
    assert fresh.trials == 2
