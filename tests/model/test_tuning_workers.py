"""Several tuning processes on one Optuna study, on real ML-100K.

On a real PostgreSQL server (a private cluster the session starts; Debian's postgresql,
installed by scripts/test-system-packages, skipped with the reason where it is missing):
three worker processes share one study, and MLflow's runs, registered versions and
``@champion`` alias live in PostgreSQL. On the embedded default (SQLite files) two
processes share the click-through ranker's study. A storage that cannot be reached is refused, naming the
setting, before anything is written."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pytest

from bespoke.settings import get_settings
from bespoke.training import ranking
from bespoke.training.data import load_interactions
from bespoke.training.params import tuned_params, tuned_ranker_params
from bespoke.training.postgres_server import PostgresServer, free_port
from bespoke.training.registry import CHAMPION, Registry, experiment_name, registered_name
from bespoke.training.split import Split, ms_stratified
from bespoke.training.tune import fit_stage_key, tune_ranker, tune_recommender, worker_id


@pytest.fixture(scope="module")
def split(ml100k_lake) -> Split:
    lake, _ = ml100k_lake
    return ms_stratified(load_interactions(lake, "ml-100k"))


def _rows(server: PostgresServer, database: str, query: str, *arguments: str) -> list[tuple]:
    import psycopg2

    connection = psycopg2.connect(server.url(database, driver="postgresql"))
    try:
        with connection.cursor() as cursor:
            cursor.execute(query, arguments)
            return cursor.fetchall()
    finally:
        connection.close()


def test_three_processes_tune_one_study_and_the_best_is_tracked_and_registered_in_postgresql(
    postgres: PostgresServer,
    ml100k_lake,
    split: Split,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    from mlflow.store.db.utils import _get_latest_schema_revision

    postgres.create_database("studies")
    postgres.create_database("tracking")  # fresh: MLflow's migrations create its schema
    # plain postgresql:// URLs, as an operator writes them
    monkeypatch.setenv("BESPOKE_OPTUNA_STORAGE_URL", postgres.url("studies", "postgresql"))
    monkeypatch.setenv("BESPOKE_MLFLOW_TRACKING_URI", postgres.url("tracking", "postgresql"))
    get_settings.cache_clear()
    settings = get_settings()
    lake, _ = ml100k_lake
    params_file = tmp_path / "tuned.json"

    result = tune_recommender(
        settings, "ml-100k", "ease", 7, split=split, params_file=params_file,
        interactions=load_interactions(lake, "ml-100k"), workers=3,
    )  # fmt: skip

    # one study, exactly the trials asked for, split between three other processes
    study = optuna.load_study(study_name=result.study_name, storage=postgres.url("studies"))
    assert result.trials == len(study.trials) == 7
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    by_worker = Counter(t.user_attrs["worker"] for t in study.trials)
    assert sorted(by_worker.values()) == [2, 2, 3]
    assert worker_id() not in by_worker
    # the whole study's best is what is written down and refit
    assert result.best_params == study.best_trial.params
    assert result.best_value == pytest.approx(study.best_trial.value)
    assert tuned_params(params_file, "ml-100k", "ms-stratified", "ease") == result.best_params

    # the runs: a study run with every trial nested under it, from all three processes
    client = mlflow.MlflowClient(tracking_uri=postgres.url("tracking"))
    experiment = client.get_experiment_by_name(experiment_name("recommender", "ml-100k"))
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    (parent,) = [run for run in runs if run.data.tags.get("kind") == "study"]
    assert parent.data.params["workers"] == "3"
    assert float(parent.data.params["best.l2"]) == pytest.approx(result.best_params["l2"])
    nested = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(nested) == 7
    assert {run.data.tags["trial.state"] for run in nested} == {"complete"}

    # the registry: the refit best is @champion, read back from PostgreSQL's tables
    final = result.final
    assert final is not None and final.promoted
    champion = Registry.of(settings).load("recommender", "ml-100k")
    assert champion is not None and champion.version == str(final.version)
    assert float(champion.params["l2"]) == pytest.approx(result.best_params["l2"])
    name = registered_name("recommender", "ml-100k")
    stored = _rows(
        postgres, "tracking",
        "SELECT version FROM registered_model_aliases WHERE name = %s AND alias = %s",
        name, CHAMPION,
    )  # fmt: skip
    assert stored == [(int(final.version),)]
    # MLflow migrated the fresh database to its latest schema
    revision = _rows(postgres, "tracking", "SELECT version_num FROM alembic_version")
    assert revision == [(_get_latest_schema_revision(),)]
    # nothing went to the embedded files
    assert not (settings.root / "mlruns" / "mlflow.db").exists()
    assert not (settings.root / "mlruns" / "optuna.db").exists()


def test_the_ranker_tunes_in_two_processes_on_one_study_in_the_embedded_sqlite_file(
    ml100k_lake, tmp_path: Path
) -> None:
    lake, _ = ml100k_lake
    prepared = ranking.prepare(lake, "ml-100k", "ms-stratified")
    data = replace(prepared, train=prepared.train.take(np.arange(300)))  # quick trials
    settings = get_settings()
    params_file = tmp_path / "tuned.json"

    result = tune_ranker(settings, "ml-100k", 3, protocol="ms-stratified", data=data,
                         params_file=params_file, register=False, workers=2)  # fmt: skip

    assert result.storage == f"sqlite:///{settings.root / 'mlruns' / 'optuna.db'}"
    study = optuna.load_study(study_name=result.study_name, storage=result.storage)
    assert len(study.trials) == result.trials == 3
    assert sorted(Counter(t.user_attrs["worker"] for t in study.trials).values()) == [1, 2]
    assert {t.user_attrs["fit_stage"] for t in study.trials} == {fit_stage_key(data)}
    assert result.best_value == pytest.approx(max(t.value for t in study.trials))
    assert tuned_ranker_params(params_file, "ml-100k", "ms-stratified") == result.best_params
    client = mlflow.MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name("ranker", "ml-100k"))
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [run for run in runs if run.data.tags.get("kind") == "study"]
    nested = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(nested) == 3 and all("best_iteration" in r.data.metrics for r in nested)


def test_a_study_storage_that_cannot_be_reached_is_refused_before_anything_is_written(
    split: Split, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("psycopg2", reason="psycopg2 (the `postgres` extra) is missing")
    nobody = f"postgresql://postgres@127.0.0.1:{free_port()}/studies"  # nothing listens
    monkeypatch.setenv("BESPOKE_OPTUNA_STORAGE_URL", nobody)
    get_settings.cache_clear()
    settings = get_settings()
    with pytest.raises(ValueError, match="BESPOKE_OPTUNA_STORAGE_URL") as refused:
        tune_recommender(settings, "ml-100k", "ease", 2, split=split, workers=2)
    assert "postgres@127.0.0.1" in str(refused.value)
    assert not (settings.root / "mlruns").exists()  # no MLflow run, no study file
