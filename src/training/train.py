"""Train one recommender: select on held-out data, refit on all data, register, and move
``@champion`` only when the candidate's configuration beats the champion's on the same
held-out data (see :mod:`bespoke.training.registry`)."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from bespoke.engine.engines import open_engine
from bespoke.privacy.gate import consented_lake
from bespoke.settings import Settings
from bespoke.training import tracking
from bespoke.training.data import Interactions, load_interactions, load_item_text
from bespoke.training.evaluate import evaluate
from bespoke.training.families import family
from bespoke.training.pyfunc import ARTIFACT, ENTRY_POINT, SIGNATURE
from bespoke.training.registry import (
    ALL_DATA,
    GATE_METRICS,
    TRAIN_PART,
    Loaded,
    Registry,
    experiment_name,
)
from bespoke.training.split import Protocol, Split, make_split

KIND = "recommender"
GATE_METRIC = GATE_METRICS[KIND]


@dataclass
class TrainResult:
    model_name: str
    params: dict[str, Any]
    #: Held-out metrics of the configuration, fitted on the split's training part.
    metrics: dict[str, Any]
    run_id: str | None = None
    version: str | None = None
    promoted: bool = False
    champion_metric: float | None = None
    decision: str = ""
    #: What the registered version was fitted on (:data:`ALL_DATA` or :data:`TRAIN_PART`).
    trained_on: str = ""
    timings: dict[str, float] = field(default_factory=dict)


def train_recommender(
    settings: Settings,
    dataset: str,
    model_name: str,
    params: dict[str, Any] | None = None,
    *,
    protocol: Protocol = "temporal",
    k: int = 10,
    register: bool = True,
    refit: bool = True,
    interactions: Interactions | None = None,
) -> TrainResult:
    """Fit ``model_name`` with ``params`` on the protocol's training part of ``dataset``,
    evaluate it on the test part and log everything to MLflow; with ``register``, refit
    the same configuration on all the interactions (``refit``; otherwise the fitted model
    itself is registered), register that model with the held-out score and apply the
    champion gate.

    ``protocol``: ``temporal`` (the default: the next interactions of people seen before
    the cut, what a live service faces) selects for production; ``ms-stratified``
    compares with published numbers."""
    import mlflow

    params = dict(params or {})
    model = family(model_name)(**params)  # unknown names and parameters fail here, early
    lake = consented_lake(settings)  # who withdrew personalization is left out
    interactions = interactions or load_interactions(lake, dataset)
    split = make_split(interactions, protocol)
    extra = {"item_text": load_item_text(lake, dataset)} if model.needs_item_text() else {}
    result = TrainResult(model_name=model_name, params=model.get_params(), metrics={})
    with (
        tracking.session(settings, experiment_name(KIND, dataset)) as experiment,
        mlflow.start_run(run_name=model_name, experiment_id=experiment) as run,
    ):
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
        model.fit(split.train, **extra)
        result.timings["train_s"] = round(time.perf_counter() - start, 3)
        result.metrics = evaluate(model, split, k=k)
        mlflow.log_metrics({**tracking.metric_values(result.metrics), **result.timings})
        if register:
            served, result.trained_on = model, TRAIN_PART
            fingerprint = split.train.fingerprint()
            if refit:
                start = time.perf_counter()
                served = family(model_name)(**params).fit(interactions, **extra)
                result.timings["refit_s"] = round(time.perf_counter() - start, 3)
                result.trained_on, fingerprint = ALL_DATA, interactions.fingerprint()
                mlflow.log_metric("refit_s", result.timings["refit_s"])
            mlflow.set_tags({"refit": str(refit), "trained_on": result.trained_on,
                             "registered_fingerprint": fingerprint})  # fmt: skip
            texts = extra.get("item_text")
            _register(
                Registry.of(settings), served, dataset, split, fingerprint, result,
                lambda: texts if texts is not None else load_item_text(lake, dataset),
            )  # fmt: skip
    return result


def _register(
    registry: Registry,
    model: Any,
    dataset: str,
    split: Split,
    fingerprint: str,
    result: TrainResult,
    item_text: Callable[[], Mapping[str, str]],
) -> None:
    example = pd.DataFrame({"user_id": [str(model.user_ids_[0])], "k": [10]})
    with tempfile.TemporaryDirectory() as scratch:
        folder = model.save(Path(scratch) / ARTIFACT)
        result.version = registry.register(
            KIND,
            dataset,
            ENTRY_POINT,
            {ARTIFACT: str(folder)},
            SIGNATURE,
            example,
            held_out=float(result.metrics[GATE_METRIC]),
            trained_on=result.trained_on,
            data_fingerprint=fingerprint,
        )
    assert result.run_id is not None
    decision = registry.gate(
        KIND,
        dataset,
        result.version,
        float(result.metrics[GATE_METRIC]),
        result.run_id,
        lambda champion: configuration_score(champion, split, item_text),
    )
    result.promoted, result.champion_metric, result.decision = (
        decision.promoted,
        decision.champion_metric,
        decision.text,
    )


def configuration_score(
    champion: Loaded,
    split: Split,
    item_text: Callable[[], Mapping[str, str]] | None = None,
    k: int = 10,
) -> float:
    """The champion's configuration (family and parameters) refit on ``split``'s training
    part and scored on its test part by :func:`~bespoke.training.evaluate.evaluate` (the
    served path): the gate's comparison, since a champion refit on all data has seen that
    test part. ``item_text()`` gives a content model its text."""
    stored = champion.model
    model = type(stored)(**stored.get_params())
    extra = {}
    if model.needs_item_text():
        if item_text is None:
            raise ValueError(f"{champion.name} v{champion.version} needs the item text")
        extra["item_text"] = item_text()
    model.fit(split.train, **extra)
    return float(evaluate(model, split, k=k)[GATE_METRIC])


def compare_recommenders(
    settings: Settings,
    dataset: str,
    candidates: dict[str, dict[str, Any]],
    *,
    protocol: Protocol = "temporal",
    register: bool = True,
    refit: bool = True,
) -> pd.DataFrame:
    """Train each ``model name -> params`` on the same split; one row of held-out metrics
    per model, with whether it became ``@champion``."""
    lake = consented_lake(settings)
    interactions = load_interactions(lake, dataset, engine=open_engine(settings, lake))
    rows = []
    for name, params in candidates.items():
        result = train_recommender(
            settings,
            dataset,
            name,
            params,
            protocol=protocol,
            register=register,
            refit=refit,
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
