"""Training end to end against a real MLflow store (SQLite in a temporary folder):
runs are tracked, models selected on held-out data, refit on all data and registered,
and @champion moves only for a better configuration."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest

from bespoke.settings import get_settings
from bespoke.training.data import Interactions, load_interactions
from bespoke.training.ease import EASE
from bespoke.training.registry import ALL_DATA, CHAMPION, Registry, registered_name
from bespoke.training.split import make_split
from bespoke.training.train import train_recommender


@pytest.fixture(scope="module")
def interactions(ml100k_lake) -> Interactions:
    lake, _ = ml100k_lake
    return load_interactions(lake, "ml-100k")


def test_the_champion_moves_only_for_a_better_model(interactions: Interactions) -> None:
    settings = get_settings()
    first = train_recommender(settings, "ml-100k", "popularity", interactions=interactions)
    assert first.promoted and first.decision == "no champion yet: promoted"

    better = train_recommender(
        settings, "ml-100k", "ease", {"l2": 500.0}, interactions=interactions
    )
    assert better.promoted
    assert better.champion_metric == pytest.approx(first.metrics["ndcg@10"])

    worse = train_recommender(settings, "ml-100k", "popularity", interactions=interactions)
    assert not worse.promoted
    assert "<=" in worse.decision
    # The champion (refit on all data, so it has seen this test part) is judged by its
    # configuration refit on the candidate's training part: EASE l2=500 scores again
    # exactly what it scored when it was selected.
    assert worse.champion_metric == pytest.approx(better.metrics["ndcg@10"])

    registry = Registry.of(settings)
    models = registry.list_models()
    assert models["version"].tolist() == [1, 2, 3]
    assert models.set_index("version").loc[2, "aliases"] == CHAMPION
    assert models["trained_on"].tolist() == [ALL_DATA] * 3
    assert models.set_index("version").loc[2, "held_out"] == pytest.approx(
        better.metrics["ndcg@10"]
    )

    # the gate's evidence is in the candidate's run
    run = registry.client.get_run(worse.run_id)
    assert (
        run.data.metrics["gate.champion_ndcg_at_10"] > run.data.metrics["gate.candidate_ndcg_at_10"]
    )
    assert run.data.tags["gate.promoted"] == "False"
    assert run.data.tags["data_fingerprint"] == interactions.fingerprint()
    assert "bespoke.code_version" in run.data.tags and "version.implicit" in run.data.tags
    assert run.data.params["protocol"] == "temporal" and "split.cut" in run.data.params

    registry.promote("recommender", "ml-100k", "3")
    assert registry.champion_versions("ml-100k") == {"recommender": "3", "ranker": None}
    with pytest.raises(ValueError, match="has no version '9'"):
        registry.promote("recommender", "ml-100k", "9")
    with pytest.raises(ValueError, match="unknown kind 'ranking'"):
        registry.promote("ranking", "ml-100k", "3")


def test_the_registered_model_is_refit_on_all_data(interactions: Interactions) -> None:
    """Selection on the temporal split, then the same configuration refit on every
    interaction: the registered model equals EASE fitted on all of them, and the version
    shows the held-out score of the selection and the fingerprint of what it was fit on."""
    settings = get_settings()
    uri_before = mlflow.get_tracking_uri()
    trained = train_recommender(
        settings, "ml-100k", "ease", {"l2": 450.0}, interactions=interactions
    )
    # The run was logged in the settings' store without moving the process-wide URI.
    assert mlflow.get_tracking_uri() == uri_before != settings.mlflow_tracking_uri
    assert trained.trained_on == ALL_DATA

    registry = Registry.of(settings)
    loaded = registry.load("recommender", "ml-100k", trained.version)
    assert loaded is not None
    assert loaded.version_tags["trained_on"] == ALL_DATA
    assert loaded.version_tags["data_fingerprint"] == interactions.fingerprint()
    assert float(loaded.version_tags["ndcg_at_10"]) == pytest.approx(trained.metrics["ndcg@10"])
    assert loaded.tags["registered_fingerprint"] == interactions.fingerprint()
    assert loaded.tags["train_fingerprint"] != interactions.fingerprint()
    assert loaded.metrics["refit_s"] > 0

    split = make_split(interactions, "temporal")
    everyone = EASE(l2=450.0).fit(interactions)
    held_out_only = EASE(l2=450.0).fit(split.train)
    people = [str(user) for user in interactions.user_ids[:50]]
    served_items, _ = loaded.model.recommend(people, k=10)
    np.testing.assert_array_equal(served_items, everyone.recommend(people, k=10)[0])
    assert not np.array_equal(served_items, held_out_only.recommend(people, k=10)[0])


def test_without_refit_the_fitted_model_is_registered(interactions: Interactions) -> None:
    settings = get_settings()
    trained = train_recommender(
        settings, "ml-100k", "ease", {"l2": 450.0}, interactions=interactions, refit=False
    )
    loaded = Registry.of(settings).load("recommender", "ml-100k", trained.version)
    assert loaded is not None and loaded.version_tags["trained_on"] == "training part"
    split = make_split(interactions, "temporal")
    assert loaded.version_tags["data_fingerprint"] == split.train.fingerprint()


def test_the_registered_model_predicts_through_pyfunc(interactions: Interactions) -> None:
    settings = get_settings()
    trained = train_recommender(
        settings, "ml-100k", "ease", {"l2": 400.0}, interactions=interactions
    )
    settings_uri = str(settings.mlflow_tracking_uri)
    mlflow.set_tracking_uri(settings_uri)  # this test reads the store through MLflow's API
    model = mlflow.pyfunc.load_model(
        f"models:/{registered_name('recommender', 'ml-100k')}/{trained.version}"
    )
    out = model.predict(pd.DataFrame({"user_id": ["1", "no-such-user"], "k": [5, 5]}))
    assert out.groupby("user_id").size().to_dict() == {"1": 5, "no-such-user": 5}
    assert out["rank"].tolist() == [1, 2, 3, 4, 5] * 2


def test_unknown_models_and_parameters_fail_before_any_run(interactions: Interactions) -> None:
    settings = get_settings()
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        train_recommender(settings, "ml-100k", "nope", interactions=interactions)
    with pytest.raises(TypeError):
        train_recommender(settings, "ml-100k", "ease", {"lambda": 3}, interactions=interactions)
