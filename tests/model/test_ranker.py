"""The click-through ranker on real MovieLens 100K: the estimator contract, calibrated
probabilities, the two-stage pipeline's persistence and live path, its evaluation, and
training end to end with registration and the champion gate."""

from __future__ import annotations

import inspect
from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from bespoke.features.build import FeatureBuilder, Profile, histories
from bespoke.serving.champions import champion_versions, load_from_registry
from bespoke.serving.engine import UNRANKED, Engine
from bespoke.settings import get_settings
from bespoke.training.base import NotFittedError
from bespoke.training.data import interactions_frame, load_interactions
from bespoke.training.ease import EASE
from bespoke.training.evaluate import evaluate
from bespoke.training.ranker import (
    LogisticRanker,
    Ranker,
    RankingPipeline,
    RankingSet,
    load_ranker,
)
from bespoke.training.ranking import (
    RankingData,
    build_set,
    evaluate_ranker,
    fit_retrievers,
    pipeline_ndcg,
    prepare,
    stages,
    train_ranker,
)
from bespoke.training.registry import ALL_DATA, CHAMPION, Registry, registered_name
from bespoke.training.train import train_recommender

N_CANDIDATES = 50
#: Small, quick boosting for the contract tests (the data is real, the model small).
FAST = {"num_boost_round": 25, "early_stopping_rounds": 10, "num_leaves": 15}
COMBINATIONS = [
    ("binary", "isotonic"),
    ("binary", "platt"),
    ("lambdarank", "isotonic"),
    ("lambdarank", "platt"),
]


@pytest.fixture(scope="module")
def data(ml100k_lake) -> RankingData:
    lake, _ = ml100k_lake
    return prepare(lake, "ml-100k", "ms-stratified", retriever_params=None, n_candidates=50)


@pytest.fixture(scope="module")
def small(data: RankingData) -> tuple[RankingSet, RankingSet]:
    """A few hundred people of the fit stage: enough to learn, quick to boost."""
    return data.train.take(np.arange(300)), data.valid.take(np.arange(150))


def _fit(data: RankingData, small: tuple[RankingSet, RankingSet], **params) -> Ranker:
    train, valid = small
    return Ranker(**{**FAST, **params}).fit(
        train,
        valid,
        feature_names=data.fit_builder.feature_names_,
        categorical_features=data.fit_builder.categorical_features_,
    )


@pytest.fixture(scope="module", params=COMBINATIONS, ids=["-".join(c) for c in COMBINATIONS])
def fitted(request, data, small) -> Ranker:
    objective, calibration = request.param
    return _fit(data, small, objective=objective, calibration=calibration)


@pytest.fixture(scope="module")
def pipeline(data, small) -> RankingPipeline:
    ranker = _fit(data, small, objective="binary", calibration="isotonic")
    return RankingPipeline(data.fit_builder, ranker, "ease", N_CANDIDATES)


@pytest.fixture(scope="module")
def test_set(data: RankingData) -> RankingSet:
    """The test stage's rows: retrievers refitted on the whole training part."""
    stage = data.test_stage
    retrievers = fit_retrievers(stage.history, data.retriever_params)
    builder = FeatureBuilder().fit(
        stage.history, retrievers, users=data.users, items=data.catalog, as_of=stage.as_of
    )
    return build_set(stage, builder, data.users, n_candidates=N_CANDIDATES)


# --- the prepared data -----------------------------------------------------------------


def test_prepared_sets_hold_whole_people_with_labels_from_the_held_out_part(data) -> None:
    assert data.train.n_candidates == data.valid.n_candidates == N_CANDIDATES
    assert not set(data.train.users) & set(data.valid.users)
    assert len(data.valid.users) == pytest.approx(
        0.2 * (len(data.train.users) + len(data.valid.users)), abs=1
    )
    for part in (data.train, data.valid):
        assert part.features.shape == (
            len(part.users) * N_CANDIDATES,
            len(data.fit_builder.feature_names_),
        )
        assert 0.02 < part.labels.mean() < 0.5
        # a label is a candidate the person rated in the held-out part
        rows = np.repeat(np.arange(len(part.users)), N_CANDIDATES)
        hit = np.asarray(part.relevant[rows, np.maximum(part.candidates, 0).ravel()]).ravel()
        np.testing.assert_array_equal(part.labels, (hit > 0) & (part.candidates.ravel() >= 0))


# --- the estimator contract ------------------------------------------------------------


def test_init_does_no_work_and_keeps_its_arguments() -> None:
    params = {
        "objective": "lambdarank",
        "learning_rate": 0.1,
        "num_leaves": 7,
        "min_child_samples": 5,
        "feature_fraction": 0.5,
        "bagging_fraction": 0.6,
        "lambda_l2": 3.0,
        "num_boost_round": 11,
        "early_stopping_rounds": 4,
        "calibration": "platt",
        "linear_tree": True,
        "n_jobs": 2,
        "random_state": 1,
    }
    ranker = Ranker(**params)
    assert ranker.get_params() == params
    assert not [name for name in vars(ranker) if name.endswith("_")]
    assert set(Ranker().get_params()) == set(inspect.signature(Ranker).parameters)
    # even invalid values are only checked when fitting
    assert Ranker(objective="nope").get_params()["objective"] == "nope"


def test_an_unfitted_ranker_says_so(tmp_path: Path) -> None:
    ranker = Ranker()
    features = np.zeros((3, 10), np.float32)
    for call in (
        lambda: ranker.decision_function(features),
        lambda: ranker.predict_proba(features),
        lambda: ranker.feature_importance(),
        lambda: ranker.save(tmp_path / "ranker"),
    ):
        with pytest.raises(NotFittedError, match="fit"):
            call()
    assert not (tmp_path / "ranker").exists()


def test_unknown_objectives_and_calibrations_are_rejected(data, small) -> None:
    with pytest.raises(ValueError, match="objective must be one of"):
        _fit(data, small, objective="regression")
    with pytest.raises(ValueError, match="calibration must be"):
        _fit(data, small, calibration="beta")


@pytest.mark.parametrize(("objective", "calibration"), COMBINATIONS[::3])
def test_fit_returns_self_and_is_deterministic(data, small, objective, calibration) -> None:
    train, valid = small
    first = _fit(data, small, objective=objective, calibration=calibration)
    second = Ranker(**FAST, objective=objective, calibration=calibration)
    assert (
        second.fit(
            train,
            valid,
            feature_names=data.fit_builder.feature_names_,
            categorical_features=data.fit_builder.categorical_features_,
        )
        is second
    )
    np.testing.assert_array_equal(
        second.decision_function(valid.features), first.decision_function(valid.features)
    )
    np.testing.assert_array_equal(
        second.predict_proba(valid.features), first.predict_proba(valid.features)
    )
    assert second.best_iteration_ == first.best_iteration_


def test_fitting_sets_only_attributes_ending_in_an_underscore(fitted, data) -> None:
    added = set(vars(fitted)) - set(fitted.get_params())
    assert added == {
        "booster_",
        "best_iteration_",
        "feature_names_",
        "categorical_features_",
        "calibration_x_",
        "calibration_y_",
    }
    assert fitted.feature_names_ == data.fit_builder.feature_names_
    assert fitted.categorical_features_ == data.fit_builder.categorical_features_
    assert 1 <= fitted.best_iteration_ <= FAST["num_boost_round"]
    importance = fitted.feature_importance()
    assert set(importance) == set(data.fit_builder.feature_names_)
    assert list(importance.values()) == sorted(importance.values(), reverse=True)
    assert max(importance.values()) > 0


def test_the_ranker_learns_and_its_probabilities_are_calibrated(fitted, small) -> None:
    _, valid = small
    raw = fitted.decision_function(valid.features)
    probability = fitted.predict_proba(valid.features)
    assert raw.shape == probability.shape == valid.labels.shape
    assert np.isfinite(probability).all()
    assert ((probability >= 0) & (probability <= 1)).all()
    # monotone in the raw score: the calibration never reorders candidates
    order = np.argsort(raw, kind="stable")
    assert (np.diff(probability[order]) >= -1e-12).all()
    assert len(np.unique(probability)) > 1
    np.testing.assert_array_equal(fitted.calibrate(raw), probability)
    # better than chance on people it did not train on
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(valid.labels, raw) > 0.6
    # calibrated on these rows: the mean probability is the click rate
    assert probability.mean() == pytest.approx(valid.labels.mean(), abs=0.01)
    if fitted.calibration == "platt":
        assert fitted.calibration_x_[0] > 0  # increasing in the raw score
        assert fitted.calibration_x_.shape == fitted.calibration_y_.shape == (1,)
    else:
        assert (np.diff(fitted.calibration_x_) > 0).all()
        assert (np.diff(fitted.calibration_y_) >= 0).all()


def test_a_saved_ranker_scores_identically(fitted, small, tmp_path: Path) -> None:
    _, valid = small
    folder = fitted.save(tmp_path / "ranker")
    assert sorted(p.name for p in folder.iterdir()) == ["lightgbm.txt", "ranker.json"]
    loaded = Ranker.load(folder)
    assert loaded.get_params() == fitted.get_params()
    assert loaded.best_iteration_ == fitted.best_iteration_
    assert loaded.feature_names_ == fitted.feature_names_
    np.testing.assert_array_equal(
        loaded.decision_function(valid.features), fitted.decision_function(valid.features)
    )
    np.testing.assert_array_equal(
        loaded.predict_proba(valid.features), fitted.predict_proba(valid.features)
    )
    assert loaded.feature_importance() == fitted.feature_importance()


# --- the two-stage pipeline ------------------------------------------------------------


def _fit_stage_batch(data: RankingData, n: int = 200):
    fit_stage, _ = stages(data.split)
    people = np.unique(fit_stage.labels.users)[:n]
    return fit_stage, people, histories(fit_stage.history, people, data.users, fit_stage.as_of)


def test_a_saved_pipeline_reranks_identically(pipeline, data, tmp_path: Path) -> None:
    folder = pipeline.save(tmp_path / "pipeline")
    assert {p.name for p in (folder / "retrievers").iterdir()} == {"ease", "als", "itemknn"}
    loaded = RankingPipeline.load(folder)
    assert (loaded.primary, loaded.n_candidates) == ("ease", N_CANDIDATES)
    assert loaded.builder.feature_names_ == pipeline.builder.feature_names_

    _, _, batch = _fit_stage_batch(data)
    top, probability = pipeline.rerank(batch, k=10)
    again, again_probability = loaded.rerank(batch, k=10)
    np.testing.assert_array_equal(again, top)
    np.testing.assert_array_equal(again_probability, probability)
    assert top.shape == (len(batch), 10) and (top >= 0).all()
    # best first: the probabilities follow the raw order
    assert (np.diff(probability, axis=1) <= 1e-12).all()


def test_reranking_reorders_the_retrieved_candidates(pipeline, data) -> None:
    _, _, batch = _fit_stage_batch(data)
    candidates, raw, probability = pipeline.score(batch)
    top, _ = pipeline.rerank(batch, k=10)
    assert candidates.shape == raw.shape == probability.shape == (len(batch), N_CANDIDATES)
    # every reranked item is one of the person's candidates, never a seen one
    for row in range(len(batch)):
        assert set(top[row]) <= set(candidates[row])
        seen = batch.items[batch.indptr[row] : batch.indptr[row + 1]]
        assert not set(top[row]) & set(seen)
    # and the reranked order is not simply the retrieval order
    assert (top != candidates[:, :10]).any()
    # probabilities shown to callers are as distinct as the raw scores that order them
    for row in range(len(batch)):
        real = candidates[row] >= 0
        assert len(np.unique(probability[row][real])) == len(np.unique(raw[row][real]))
        order = np.argsort(-raw[row][real], kind="stable")
        assert (np.diff(probability[row][real][order]) <= 0).all()


def test_centred_isotonic_calibration_is_strictly_increasing_between_its_steps() -> None:
    from bespoke.training.ranker import _interpolated, centered_steps

    x = np.array([0.0, 1.0, 1.0, 2.0, 3.0, 4.0])
    y = np.array([0.1, 0.1, 0.2, 0.2, 0.2, 0.6])
    cx, cy = centered_steps(x, y)
    np.testing.assert_allclose(cx, [0.5, 2.0, 4.0])
    np.testing.assert_allclose(cy, [0.1, 0.2, 0.6])
    raw = np.linspace(-1.0, 6.0, 50)
    shown = _interpolated(raw, cx, cy)
    assert (np.diff(shown[(shown > 0) & (shown < 1)]) > 0).all()
    assert shown.min() >= 0.0 and shown.max() <= 1.0


def test_recommend_for_live_profiles(pipeline, data) -> None:
    fit_stage, people, _ = _fit_stage_batch(data, n=5)
    frame = interactions_frame(fit_stage.history)
    attributes = data.users.set_index("user_id")
    profiles = []
    for user in fit_stage.history.user_ids[people].astype(str):
        mine = frame[frame["user_id"] == user]
        profiles.append(
            Profile(
                user_id=user,
                attributes=attributes.loc[user].to_dict(),
                items=mine["item_id"].tolist(),
                values=mine["value"].to_numpy(),
                timestamps=mine["timestamp"].to_numpy("datetime64[us]"),
            )
        )
    ids, probability = pipeline.recommend(profiles, k=8)
    assert ids.shape == probability.shape == (len(profiles), 8)
    for profile, row in zip(profiles, ids, strict=True):
        assert None not in row and len(set(row)) == 8
        assert not set(row) & set(profile.items)
    assert ((probability >= 0) & (probability <= 1)).all()

    # excluded items are never recommended, and the next ones move up in the same order
    # (three more candidates are retrieved in place of the excluded ones)
    excluded = list(ids[0, :3])
    without, _ = pipeline.recommend(profiles[:1], k=8, exclude=excluded)
    assert not set(without[0]) & set(excluded)
    kept = [item for item in without[0] if item in set(ids[0, 3:])]
    assert kept == list(ids[0, 3:8])

    # someone with no history still gets recommendations (popularity retrieval)
    empty, empty_probability = pipeline.recommend([Profile("newcomer")], k=8)
    assert None not in empty[0] and np.isfinite(empty_probability).all()

    for k in (0, -1):
        with pytest.raises(ValueError, match="k must be at least 1"):
            pipeline.recommend(profiles, k=k)


# --- evaluation ------------------------------------------------------------------------


def test_evaluate_ranker_reports_lift_and_calibration(pipeline, test_set) -> None:
    metrics = evaluate_ranker(pipeline.ranker, test_set)
    expected = {"retrieval_ndcg@10", "reranked_ndcg@10", "lift", "auc", "logloss", "brier", "ece"}
    assert expected <= set(metrics)
    for name in expected:
        assert np.isfinite(metrics[name]), name
    assert metrics["lift"] == pytest.approx(
        metrics["reranked_ndcg@10"] / metrics["retrieval_ndcg@10"] - 1.0, rel=1e-12
    )
    assert 0.5 < metrics["auc"] <= 1 and 0 <= metrics["ece"] < 0.5
    assert 0 < metrics["brier"] < 0.25
    assert 0 < metrics[f"candidate_recall@{N_CANDIDATES}"] < 1
    baseline = LogisticRanker().fit(
        test_set,
        feature_names=pipeline.builder.feature_names_,
        categorical_features=pipeline.builder.categorical_features_,
    )
    assert expected <= set(evaluate_ranker(baseline, test_set))


def test_the_logistic_ranker_matches_scikit_learn_and_round_trips(data, small, tmp_path) -> None:
    """Its NumPy prediction is scikit-learn's own on the same design; save/load is exact."""
    names = data.fit_builder.feature_names_
    small, _ = small
    model = LogisticRanker().fit(
        small, feature_names=names, categorical_features=data.fit_builder.categorical_features_
    )
    probability = model.predict_proba(data.valid.features)
    assert ((probability > 0) & (probability < 1)).all()
    from sklearn.linear_model import LogisticRegression

    reference = LogisticRegression(C=model.C, max_iter=model.max_iter)
    reference.fit(model._design(small.features), small.labels)
    np.testing.assert_allclose(
        probability, reference.predict_proba(model._design(data.valid.features))[:, 1], rtol=1e-9
    )
    loaded = load_ranker(model.save(tmp_path / "logistic"))
    assert isinstance(loaded, LogisticRanker)
    np.testing.assert_array_equal(loaded.decision_function(data.valid.features),
                                  model.decision_function(data.valid.features))  # fmt: skip
    assert set(model.feature_importance()) == set(names)


def test_retrieval_ndcg_is_eases_own_held_out_ndcg(pipeline, data, test_set) -> None:
    """Before reranking, the test stage's list is EASE's top 10: the same nDCG@10 as
    evaluating EASE (same parameters) on the split."""
    metrics = evaluate_ranker(pipeline.ranker, test_set)
    ease = EASE(**data.retriever_params.get("ease", {})).fit(data.split.train)
    own = evaluate(ease, data.split)["ndcg@10"]
    assert own > 0.3
    assert metrics["retrieval_ndcg@10"] == pytest.approx(own, rel=1e-9)
    assert len(test_set.users) == len(np.unique(data.split.test.users))


# --- training, registration and the gate -----------------------------------------------


@pytest.fixture(scope="module")
def quick(data: RankingData, small: tuple[RankingSet, RankingSet]) -> RankingData:
    """The prepared data with the small fit-stage sets: the test stage stays whole."""
    return replace(data, train=small[0], valid=small[1])


@pytest.fixture
def no_autolog_afterwards():
    """``train_ranker`` turns LightGBM autologging on for the whole process; turn it off
    after the test so later fits in this worker log nothing."""
    yield
    mlflow.lightgbm.autolog(disable=True)


def test_training_registers_the_champion_and_gates_the_next_run(
    quick, no_autolog_afterwards
) -> None:
    settings = get_settings()
    name = registered_name("ranker", "ml-100k")
    assert name == "bespoke-ranker-ml-100k"
    client = Registry.of(settings).client

    # logistic regression beats retrieval on these people (LightGBM, at FAST, does not)
    first = train_ranker(settings, "ml-100k", objective="logistic", data=quick)
    assert (first.version, first.promoted) == ("1", True), first.decision
    assert first.metrics["reranked_ndcg@10"] > first.retrieval_metric
    assert first.decision.endswith("> retrieval alone "
                                   f"{first.retrieval_metric:.4f}; no champion yet: promoted")  # fmt: skip
    assert first.champion_metric is None
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == "1"
    run = client.get_run(first.run_id)
    candidate = run.data.metrics["gate.candidate_reranked_ndcg_at_10"]
    assert "gate.champion_reranked_ndcg_at_10" not in run.data.metrics
    # the gate scores the pipeline through its serving path: the offline number
    assert candidate == pytest.approx(first.metrics["reranked_ndcg@10"], rel=1e-12)
    assert candidate == pytest.approx(pipeline_ndcg(first.pipeline, quick.test_stage, quick.users))
    for key in ("reranked_ndcg_at_10", "retrieval_ndcg_at_10", "lift", "auc", "logreg_auc"):
        assert key in run.data.metrics, key
    assert run.data.params["chosen_objective"] == "logistic"
    assert run.data.metrics["gate.baseline_reranked_ndcg_at_10"] == pytest.approx(
        first.metrics["retrieval_ndcg@10"], rel=1e-12
    )  # the simpler path, scored through the pipeline's own retrieval

    # the second run chooses between both objectives and meets the champion
    second = train_ranker(settings, "ml-100k", params=FAST, data=quick)
    assert second.version == "2"
    assert set(second.validation) == {"binary", "lambdarank", "logistic"}
    assert second.objective == max(
        second.validation, key=lambda n: second.validation[n]["reranked_ndcg@10"]
    )
    gate = client.get_run(second.run_id).data.metrics
    champion_score = gate["gate.champion_reranked_ndcg_at_10"]
    candidate_score = gate["gate.candidate_reranked_ndcg_at_10"]
    # v1's configuration, refit on the same fit stage (v1 itself was refit on all data),
    # scores what v1 scored when it was selected
    assert champion_score == pytest.approx(candidate, rel=1e-12)
    assert second.champion_metric == pytest.approx(champion_score)
    retrieval = gate["gate.baseline_reranked_ndcg_at_10"]
    assert second.promoted == (candidate_score > max(champion_score, retrieval))
    assert ("<=" in second.decision) != second.promoted
    expected = "2" if second.promoted else "1"
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == expected

    # the champion, refit on all data, answers user ids through pyfunc
    assert first.trained_on == second.trained_on == ALL_DATA
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)  # pyfunc reads the process-wide one
    model = mlflow.pyfunc.load_model(f"models:/{name}@{CHAMPION}")
    history = interactions_frame(quick.interactions)
    assert len(model.unwrap_python_model().history) == len(quick.interactions)
    known = history["user_id"].drop_duplicates().iloc[:2].tolist()
    users = [*known, "no-such-user"]
    out = model.predict(pd.DataFrame({"user_id": users, "k": [5] * len(users)}))
    assert list(out.columns) == ["user_id", "rank", "item_id", "probability"]
    assert out.groupby("user_id").size().to_dict() == dict.fromkeys(users, 5)
    assert out["rank"].tolist() == [1, 2, 3, 4, 5] * len(users)
    assert out["probability"].between(0, 1).all()
    for user in known:
        seen = set(history.loc[history["user_id"] == user, "item_id"])
        assert not set(out.loc[out["user_id"] == user, "item_id"]) & seen
        assert out.loc[out["user_id"] == user, "probability"].is_monotonic_decreasing


@pytest.fixture
def interactions_100k(ml100k_lake):
    lake, _ = ml100k_lake
    return load_interactions(lake, "ml-100k")


def _shuffled(ranking_set: RankingSet, seed: int = 3) -> RankingSet:
    """The same rows with their labels shuffled: whatever is learned from it is noise."""
    labels = np.random.default_rng(seed).permutation(ranking_set.labels)
    return replace(ranking_set, labels=labels)


def test_a_ranker_worse_than_retrieval_is_refused_and_retrieval_order_is_served(
    quick, interactions_100k, no_autolog_afterwards, tmp_path: Path
) -> None:
    # a registry of its own: what this test promotes or refuses touches no other test
    settings = get_settings().model_copy(update={
        "mlflow_tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "mlflow_artifacts_dir": tmp_path / "artifacts",
    })  # fmt: skip
    train_recommender(settings, "ml-100k", "ease", {"l2": 500.0}, interactions=interactions_100k)
    good = train_ranker(settings, "ml-100k", objective="logistic", data=quick)
    assert good.promoted, good.decision
    noise = replace(quick, train=_shuffled(quick.train), valid=_shuffled(quick.valid))
    weak = train_ranker(settings, "ml-100k", objective="binary", params=FAST, data=noise)
    assert (
        weak.metrics["reranked_ndcg@10"] < weak.retrieval_metric < good.metrics["reranked_ndcg@10"]
    )
    assert not weak.promoted and "<= retrieval alone" in weak.decision
    # The champion is judged by its configuration refit on the newest fit stage (these
    # noisy labels): it no longer beats retrieval either, so it loses its alias and the
    # service falls back to the simpler path.
    assert weak.champion_metric is not None and weak.champion_metric <= weak.retrieval_metric
    assert "alias removed" in weak.decision
    versions = champion_versions(settings.mlflow_tracking_uri, "ml-100k")
    assert versions == {"recommender": "1", "ranker": None}

    # what the service then serves, asked to rank: the recommender's own order, and says so
    models = load_from_registry(settings.mlflow_tracking_uri, "ml-100k", versions)
    engine = Engine(models, {})
    history = quick.test_stage.history
    for user in history.user_ids[:5]:
        rows = history.users == history.user_index([user])[0]
        items = [str(i) for i in history.item_ids[history.items[rows]]]
        profile = Profile(user_id=str(user), items=items)
        answer = engine.recommend(profile, [], k=10, ranked=True)
        expected, _ = models.recommender.recommend_from_history(items, k=10)
        assert [item.item_id for item in answer.items] == [str(i) for i in expected]
        assert {item.reason for item in answer.items} == {f"model:ease{UNRANKED}"}


def test_training_leaves_no_autologging_behind(quick, small, no_autolog_afterwards) -> None:
    # A run that fails at its first calibration: quick, and the same leak as a full run.
    mlflow.set_tracking_uri(get_settings().mlflow_tracking_uri)  # where a stray run would go
    with pytest.raises(ValueError, match="calibration must be"):
        train_ranker(get_settings(), "ml-100k", objective="binary", register=False,
                     params={**FAST, "calibration": "bogus"}, data=quick)  # fmt: skip
    assert mlflow.active_run() is None
    before = len(mlflow.search_runs(search_all_experiments=True))
    _fit(quick, small)
    assert mlflow.active_run() is None
    assert len(mlflow.search_runs(search_all_experiments=True)) == before
