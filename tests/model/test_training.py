"""Training end to end against a real MLflow store (SQLite in a temporary folder):
runs are tracked, models registered, and @champion moves only for a better model."""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest

from bespoke.settings import get_settings
from bespoke.training.data import Interactions, load_interactions
from bespoke.training.train import (
    CHAMPION,
    list_models,
    promote,
    registered_name,
    train_recommender,
)


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

    models = list_models(settings)
    assert models["version"].tolist() == [1, 2, 3]
    assert models.set_index("version").loc[2, "aliases"] == CHAMPION

    # the gate's evidence is in the candidate's run
    run = mlflow.get_run(worse.run_id)
    assert (
        run.data.metrics["gate.champion_ndcg_at_10"] > run.data.metrics["gate.candidate_ndcg_at_10"]
    )
    assert run.data.tags["gate.promoted"] == "False"
    assert run.data.tags["data_fingerprint"] == interactions.fingerprint()
    assert "bespoke.code_version" in run.data.tags and "version.implicit" in run.data.tags
    assert run.data.params["split.seed"] == "42"

    promote(settings, "ml-100k", "3")
    champion = mlflow.MlflowClient().get_model_version_by_alias(
        registered_name("ml-100k"), CHAMPION
    )
    assert str(champion.version) == "3"


def test_the_registered_model_predicts_through_pyfunc(interactions: Interactions) -> None:
    settings = get_settings()
    trained = train_recommender(
        settings, "ml-100k", "ease", {"l2": 400.0}, interactions=interactions
    )
    model = mlflow.pyfunc.load_model(f"models:/{registered_name('ml-100k')}/{trained.version}")
    out = model.predict(pd.DataFrame({"user_id": ["1", "no-such-user"], "k": [5, 5]}))
    assert out.groupby("user_id").size().to_dict() == {"1": 5, "no-such-user": 5}
    assert out["rank"].tolist() == [1, 2, 3, 4, 5] * 2


def test_unknown_models_and_parameters_fail_before_any_run(interactions: Interactions) -> None:
    settings = get_settings()
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        train_recommender(settings, "ml-100k", "nope", interactions=interactions)
    with pytest.raises(TypeError):
        train_recommender(settings, "ml-100k", "ease", {"lambda": 3}, interactions=interactions)
