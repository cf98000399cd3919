"""Tune a recommender with Optuna: seeded TPE over the family's search space, scored on a
validation split carved from the training part (the test part is never seen), pruned
through the models' fit callbacks, every trial a nested MLflow run.

The best parameters are written to a JSON file (``bench/tuned_params.json`` by default)
that the benchmark and ``make demo`` read, then the model is refit with them and goes
through the same registration and champion gate as ``bespoke train``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bespoke.features.lake import Lake
from bespoke.settings import Settings
from bespoke.training import tracking
from bespoke.training.base import Recommender
from bespoke.training.data import Interactions, load_interactions
from bespoke.training.evaluate import evaluate
from bespoke.training.families import family
from bespoke.training.split import Protocol, Split, make_split, validation
from bespoke.training.train import GATE_METRIC, TrainResult, train_recommender

#: Each family's search space: trial -> parameters.
SearchSpace = Callable[[Any], dict[str, Any]]
SEARCH_SPACES: dict[str, SearchSpace] = {
    "popularity": lambda trial: {},
    "ease": lambda trial: {
        "l2": trial.suggest_float("l2", 10.0, 5000.0, log=True),
        "dropout": trial.suggest_float("dropout", 0.0, 0.9),
    },
    "als": lambda trial: {
        "factors": trial.suggest_categorical("factors", [16, 32, 64, 128]),
        "regularization": trial.suggest_float("regularization", 1e-3, 10.0, log=True),
        "alpha": trial.suggest_float("alpha", 0.1, 50.0, log=True),
        "iterations": trial.suggest_int("iterations", 5, 30),
    },
    "itemknn": lambda trial: {
        "similarity": trial.suggest_categorical("similarity", ["cosine", "bm25"]),
        "neighbours": trial.suggest_int("neighbours", 10, 500, log=True),
        "bm25_k1": trial.suggest_float("bm25_k1", 0.5, 3.0),
        "bm25_b": trial.suggest_float("bm25_b", 0.0, 1.0),
    },
    "bpr": lambda trial: {
        "factors": trial.suggest_categorical("factors", [16, 32, 64, 128]),
        "learning_rate": trial.suggest_float("learning_rate", 1e-3, 5e-2, log=True),
        "regularization": trial.suggest_float("regularization", 1e-4, 1e-1, log=True),
        "iterations": trial.suggest_int("iterations", 20, 200),
    },
}
#: Families a tuned blend draws on, each with the parameters tuning found for it.
BLENDED = ("ease", "als", "itemknn")


def blend_space(params_file: Path, dataset: str, protocol: str) -> SearchSpace:
    """A hybrid's search space: a weight per family already tuned for this dataset and
    protocol (their parameters fixed as tuned); tune those families first."""
    components = {
        name: tuned_params(params_file, dataset, protocol, name)
        for name in BLENDED
        if tuned_params(params_file, dataset, protocol, name)
    }
    if len(components) < 2:
        raise ValueError(
            f"a blend needs at least two tuned families in {params_file} for {dataset} "
            f"({protocol}); tune {' and '.join(BLENDED)} first"
        )

    def space(trial: Any) -> dict[str, Any]:
        weights = {name: trial.suggest_float(f"weight_{name}", 0.0, 1.0) for name in components}
        return {"components": components, "weights": weights}

    return space


#: How often (in fit iterations) an iterative model reports its validation metric.
REPORT_EVERY = 5


@dataclass
class TuneResult:
    model_name: str
    best_params: dict[str, Any]
    best_value: float
    trials: int
    pruned: int
    final: TrainResult | None


def tune_recommender(
    settings: Settings,
    dataset: str,
    model_name: str,
    trials: int,
    *,
    protocol: Protocol = "ms-stratified",
    seed: int = 42,
    k: int = 10,
    params_file: Path | None = None,
    register: bool = True,
    interactions: Interactions | None = None,
    split: Split | None = None,
    show_progress: bool = False,
) -> TuneResult:
    """Run ``trials`` Optuna trials for ``model_name`` on ``dataset``; see the module doc.

    ``split`` (default: the protocol's split of the dataset) is the outer split: only its
    training part is read by the trials.
    """
    import mlflow
    import optuna

    family(model_name)  # an unknown family fails before anything runs
    space = SEARCH_SPACES.get(model_name)
    if model_name == "hybrid" and params_file is not None:
        space = blend_space(params_file, dataset, protocol)
    if space is None:
        raise ValueError(
            f"no search space for {model_name!r}; tunable: {', '.join(sorted(SEARCH_SPACES))}"
        )
    if split is None:
        interactions = interactions or load_interactions(Lake(settings.lake_url), dataset)
        split = make_split(interactions, protocol)
    inner = validation(split)  # tuning sees only the outer training part
    tracking.configure(settings, f"recommenders-{dataset}")
    studies = settings.root / "mlruns" / "optuna.db"
    studies.parent.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{studies}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=f"{dataset}-{model_name}-{protocol}",
        storage=storage,
        load_if_exists=True,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=REPORT_EVERY),
    )
    with mlflow.start_run(run_name=f"tune {model_name}") as parent:
        mlflow.set_tags(
            tracking.run_tags(
                settings,
                dataset=dataset,
                model=model_name,
                protocol=protocol,
                kind="study",
                train_fingerprint=split.train.fingerprint(),
                validation_fingerprint=inner.train.fingerprint(),
            )
        )
        mlflow.log_params(
            {"trials": trials, "seed": seed, "protocol": protocol, "study": study.study_name}
        )
        study.optimize(
            lambda trial: _objective(trial, model_name, space, inner, k, parent.info.run_id),
            n_trials=trials,
            show_progress_bar=show_progress,
        )
        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
        best = study.best_trial if complete else None
        # The model's parameters, rebuilt from the trial's (they differ for a blend).
        best_params = space(optuna.trial.FixedTrial(best.params)) if best else {}
        best_value = float(best.value) if best else float("nan")
        mlflow.log_params({f"best.{name}": value for name, value in best_params.items()})
        mlflow.log_metrics(
            {
                f"best_validation_{GATE_METRIC.replace('@', '_at_')}": best_value,
                "pruned_trials": pruned,
            }
        )
    if params_file is not None:
        _write_params(
            params_file, dataset, protocol, model_name, best_params, best_value, study.study_name
        )
    final = None
    if register:
        final = train_recommender(
            settings,
            dataset,
            model_name,
            best_params,
            protocol=protocol,
            k=k,
            interactions=interactions,
        )
    return TuneResult(model_name, best_params, best_value, len(study.trials), pruned, final)


def _objective(
    trial: Any, model_name: str, space: SearchSpace, inner: Split, k: int, parent_id: str
) -> float:
    import mlflow
    import optuna

    params = space(trial)
    model = family(model_name)(**params)

    def report(iteration: int, metrics: dict[str, float]) -> None:
        if iteration == 0 or (iteration + 1) % REPORT_EVERY:
            return
        value = evaluate(model, inner, k=k)[GATE_METRIC]
        trial.report(value, iteration + 1)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at iteration {iteration + 1} with {value:.4f}")

    with mlflow.start_run(run_name=f"trial {trial.number}", nested=True, parent_run_id=parent_id):
        mlflow.log_params(params)
        try:
            model.fit(inner.train, callback=report)
        except optuna.TrialPruned:
            mlflow.set_tag("trial.state", "pruned")
            raise
        value = float(evaluate(model, inner, k=k)[GATE_METRIC])
        mlflow.log_metric(f"validation_{GATE_METRIC.replace('@', '_at_')}", value)
        mlflow.set_tag("trial.state", "complete")
    return value


def _write_params(
    path: Path,
    dataset: str,
    protocol: str,
    model: str,
    params: dict[str, Any],
    value: float,
    study: str,
) -> None:
    """Merge the best parameters into the committed file the benchmark reads."""
    data = json.loads(path.read_text()) if path.exists() else {}
    data.setdefault(dataset, {}).setdefault(protocol, {})[model] = {
        "params": params,
        f"validation_{GATE_METRIC}": round(value, 4),
        "study": study,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


#: Where tuning runs write their best parameters, relative to the project root (the
#: benchmark and ``make demo`` read them from there).
TUNED_PARAMS = Path("bench") / "tuned_params.json"


def params_file_of(settings: Settings) -> Path:
    return settings.root / TUNED_PARAMS


def tuned_params(path: Path, dataset: str, protocol: str, model: str) -> dict[str, Any]:
    """The parameters a tuning run wrote for this dataset, protocol and model ({} if none)."""
    if not path.exists():
        return {}
    entry = json.loads(path.read_text()).get(dataset, {}).get(protocol, {}).get(model)
    return dict(entry["params"]) if entry else {}


#: Parameters for families that need some and have no tuned entry yet.
DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    "hybrid": {"components": {"ease": {}, "itemknn": {}}, "weights": {"ease": 0.7, "itemknn": 0.3}},
}


def model_for(path: Path, dataset: str, protocol: str, model: str) -> Recommender:
    """A new ``model`` with the parameters tuning wrote to ``path`` (or its defaults)."""
    params = tuned_params(path, dataset, protocol, model) or DEFAULT_PARAMS.get(model, {})
    return family(model)(**params)
