"""Train one recommender: split, fit, evaluate on held-out data, log to MLflow, register,
and move ``@champion`` only when the candidate beats the current champion on the same
held-out data."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from bespoke.features.lake import Lake
from bespoke.settings import Settings
from bespoke.training import tracking
from bespoke.training.data import Interactions, load_interactions, load_item_text
from bespoke.training.evaluate import evaluate
from bespoke.training.families import family
from bespoke.training.pyfunc import ARTIFACT, ENTRY_POINT, SIGNATURE
from bespoke.training.split import Protocol, Split, make_split

CHAMPION = "champion"
GATE_METRIC = "ndcg@10"


def registered_name(dataset: str) -> str:
    return f"bespoke-recommender-{dataset}"


@dataclass
class TrainResult:
    model_name: str
    params: dict[str, Any]
    metrics: dict[str, Any]
    run_id: str | None = None
    version: str | None = None
    promoted: bool = False
    champion_metric: float | None = None
    decision: str = ""
    timings: dict[str, float] = field(default_factory=dict)


def train_recommender(
    settings: Settings,
    dataset: str,
    model_name: str,
    params: dict[str, Any] | None = None,
    *,
    protocol: Protocol = "ms-stratified",
    k: int = 10,
    register: bool = True,
    interactions: Interactions | None = None,
) -> TrainResult:
    """Fit ``model_name`` with ``params`` on the protocol's training part of ``dataset``,
    evaluate on its test part, log everything to MLflow and (``register``) register the
    model and apply the champion gate."""
    import mlflow

    params = dict(params or {})
    model = family(model_name)(**params)  # unknown names and parameters fail here, early
    interactions = interactions or load_interactions(Lake(settings.lake_url), dataset)
    split = make_split(interactions, protocol)
    tracking.configure(settings, f"recommenders-{dataset}")
    result = TrainResult(model_name=model_name, params=model.get_params(), metrics={})
    with mlflow.start_run(run_name=f"{model_name}") as run:
        result.run_id = run.info.run_id
        mlflow.set_tags(
            tracking.run_tags(
                settings,
                dataset=dataset,
                model=model_name,
                protocol=protocol,
                split=split.params,
                data_fingerprint=interactions.fingerprint(),
                train_fingerprint=split.train.fingerprint(),
            )
        )
        mlflow.log_params(
            {
                **result.params,
                "protocol": protocol,
                "k": k,
                **{f"split.{p}": v for p, v in split.params.items()},
            }
        )
        start = time.perf_counter()
        extra = (
            {"item_text": load_item_text(Lake(settings.lake_url), dataset)}
            if model.needs_item_text()
            else {}
        )
        model.fit(split.train, **extra)
        result.timings["train_s"] = round(time.perf_counter() - start, 3)
        result.metrics = evaluate(model, split, k=k)
        mlflow.log_metrics({**tracking.metric_values(result.metrics), **result.timings})
        if register:
            _log_and_register(model, dataset, split, result)
    return result


def _log_and_register(model: Any, dataset: str, split: Split, result: TrainResult) -> None:
    import mlflow

    name = registered_name(dataset)
    example = pd.DataFrame({"user_id": [str(model.user_ids_[0])], "k": [10]})
    with tempfile.TemporaryDirectory() as scratch:
        folder = model.save(Path(scratch) / ARTIFACT)
        result.version = tracking.log_and_register(
            ENTRY_POINT, {ARTIFACT: str(folder)}, SIGNATURE, example, name, GATE_METRIC
        )
    client = mlflow.MlflowClient()
    _champion_gate(client, name, split, result)


def _champion_gate(client: Any, name: str, split: Split, result: TrainResult) -> None:
    result.promoted, result.champion_metric, result.decision = champion_gate(
        client,
        name,
        GATE_METRIC,
        float(result.metrics[GATE_METRIC]),
        str(result.version),
        lambda champion: float(evaluate(champion.model, split)[GATE_METRIC]),
    )


def champion_gate(
    client: Any,
    name: str,
    metric: str,
    candidate: float,
    version: str,
    champion_metric_of: Callable[[Any], float],
    *,
    baseline: tuple[str, float] | None = None,
) -> tuple[bool, float | None, str]:
    """Move ``@champion`` of ``name`` to ``version`` only if ``candidate`` beats the
    current champion, measured now on the candidate's held-out data by
    ``champion_metric_of(loaded champion python model)``, and beats ``baseline`` (the
    simpler path the model would replace, ``(what, score)`` on the same data) when one is
    given. A current champion that no longer beats the baseline loses the alias, so that
    the simpler path is served. Logs the scores and the decision to the active run.
    Returns ``(promoted, champion's score, decision)``."""
    import mlflow
    from mlflow.exceptions import MlflowException

    key = metric.replace("@", "_at_")
    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        current = None
    champion_metric = None
    reasons = []
    promoted = True
    if baseline is not None:
        what, floor = baseline
        beats = candidate > floor
        promoted &= beats
        reasons.append(f"candidate {candidate:.4f} {'>' if beats else '<='} {what} {floor:.4f}")
        mlflow.log_metric(f"gate.baseline_{key}", floor)
    if current is None:
        reasons.append("no champion yet")
    else:
        champion = mlflow.pyfunc.load_model(f"models:/{name}@{CHAMPION}").unwrap_python_model()
        champion_metric = float(champion_metric_of(champion))
        beats = candidate > champion_metric
        promoted &= beats
        reasons.append(
            f"candidate {candidate:.4f} {'>' if beats else '<='} champion v{current.version} "
            f"{champion_metric:.4f} on the same held-out data"
        )
        mlflow.log_metric(f"gate.champion_{key}", champion_metric)
        if not promoted and baseline is not None and champion_metric <= baseline[1]:
            client.delete_registered_model_alias(name, CHAMPION)
            reasons.append(
                f"champion v{current.version} no longer beats {baseline[0]}: alias removed, "
                f"{baseline[0]} is served"
            )
    decision = "; ".join(reasons) + (": promoted" if promoted else ": not promoted")
    mlflow.log_metric(f"gate.candidate_{key}", candidate)
    mlflow.set_tags({"gate.decision": decision, "gate.promoted": str(promoted)})
    client.set_model_version_tag(name, version, key, str(candidate))
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, version)
    return promoted, champion_metric, decision


#: The kinds of registered model: ``bespoke-recommender-<dataset>``, ``bespoke-ranker-<dataset>``.
KINDS = ("recommender", "ranker")


def promote(settings: Settings, dataset: str, version: str, kind: str = "recommender") -> None:
    """Move ``@champion`` of the dataset's ``kind`` ("recommender" or "ranker") to
    ``version`` by hand (overrides the gate)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    if kind == "recommender":
        name, experiment = registered_name(dataset), f"recommenders-{dataset}"
    elif kind == "ranker":
        from bespoke.training.ranking import registered_name as ranker_name

        name, experiment = ranker_name(dataset), f"rankers-{dataset}"
    else:
        raise ValueError(f"unknown kind {kind!r}; use {' or '.join(KINDS)}")
    tracking.configure(settings, experiment)
    client = mlflow.MlflowClient()
    try:
        client.get_model_version(name, version)
    except MlflowException as error:
        raise ValueError(f"{name} has no version {version!r}") from error
    client.set_registered_model_alias(name, CHAMPION, version)


def list_models(settings: Settings) -> pd.DataFrame:
    """Every registered model version with its gate metric and aliases."""
    import mlflow

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    client = mlflow.MlflowClient()
    rows = []
    for model in client.search_registered_models():
        aliases: dict[str, list[str]] = {}
        for alias, number in (model.aliases or {}).items():
            aliases.setdefault(str(number), []).append(alias)
        for version in client.search_model_versions(f"name = '{model.name}'"):
            rows.append(
                {
                    "model": model.name,
                    "version": int(version.version),
                    "aliases": ",".join(sorted(aliases.get(str(version.version), []))),
                    "gate_metric": version.tags.get("gate_metric", GATE_METRIC),
                    "score": float(
                        version.tags.get(
                            version.tags.get("gate_metric", GATE_METRIC).replace("@", "_at_"),
                            "nan",
                        )
                    ),
                    "run_id": version.run_id,
                }
            )
    return pd.DataFrame(
        rows, columns=["model", "version", "aliases", "gate_metric", "score", "run_id"]
    ).sort_values(["model", "version"])


def compare_recommenders(
    settings: Settings,
    dataset: str,
    candidates: dict[str, dict[str, Any]],
    *,
    protocol: Protocol = "ms-stratified",
    register: bool = True,
) -> pd.DataFrame:
    """Train each ``model name -> params`` on the same split; one row of held-out metrics
    per model, with whether it became ``@champion``."""
    interactions = load_interactions(Lake(settings.lake_url), dataset)
    rows = []
    for name, params in candidates.items():
        result = train_recommender(
            settings,
            dataset,
            name,
            params,
            protocol=protocol,
            register=register,
            interactions=interactions,
        )
        rows.append(
            {
                "model": name,
                **{m: v for m, v in result.metrics.items() if m != "users"},
                **result.timings,
                "version": result.version,
                "champion": result.promoted,
            }
        )
    return pd.DataFrame(rows)
