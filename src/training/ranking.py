"""Train the click-through ranker over retrieval candidates, evaluate the lift, log to
MLflow and register through the champion gate.

Two point-in-time stages come from the protocol's split:

- the **fit stage** is the validation split carved from the training part: retrievers
  are fitted on its training part, candidates and features are built as of its cut, and
  its held-out part gives the labels. The ranker learns here (80% of the people) and is
  early-stopped, selected and calibrated on the other 20%.
- the **test stage** is the split itself: retrievers refitted on the whole training
  part, features as of the split's cut, labels from the test part, which nothing in
  training, tuning or selection reads.

So no label leaks through the retrieval scores: the models that score a row never saw
its label.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bespoke.features.build import FeatureBuilder, Histories, histories
from bespoke.features.lake import Lake
from bespoke.privacy.gate import consented_lake
from bespoke.settings import Settings
from bespoke.training import tracking
from bespoke.training.base import Recommender
from bespoke.training.data import (
    Interactions,
    interactions_frame,
    load_catalog,
    load_interactions,
    load_users,
)
from bespoke.training.metrics import calibration_metrics, ranking_metrics
from bespoke.training.params import params_file_of, tuned_params
from bespoke.training.pyfunc import RANKER_ARTIFACT, RANKER_ENTRY_POINT, RANKER_SIGNATURE
from bespoke.training.ranker import (
    CHOICES,
    LogisticRanker,
    Ranker,
    RankingPipeline,
    RankingSet,
)
from bespoke.training.registry import (
    ALL_DATA,
    GATE_METRICS,
    HISTORY_ARTIFACT,
    TRAIN_PART,
    Loaded,
    Registry,
    experiment_name,
)
from bespoke.training.split import Protocol, Split, make_split, validation

#: The retrieval families whose scores and ranks become features; the first retrieves.
RETRIEVERS = ("ease", "als", "itemknn")
N_CANDIDATES = 100
KIND = "ranker"
GATE_METRIC = GATE_METRICS[KIND]
VALID_SHARE = 0.2
_CHUNK = 1024


@dataclass
class Stage:
    """A point-in-time cut: what is known (``history``), what happens next (``labels``)."""

    history: Interactions
    labels: Interactions
    as_of: np.datetime64 | None


def stage_of(split: Split) -> Stage:
    cut = split.params.get("cut") if split.protocol == "temporal" else None
    return Stage(split.train, split.test, np.datetime64(cut, "us") if cut else None)


def stages(split: Split) -> tuple[Stage, Stage]:
    """``(fit stage, test stage)``; see the module doc."""
    return stage_of(validation(split)), stage_of(split)


def fit_retrievers(
    history: Interactions,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    names: Sequence[str] = RETRIEVERS,
) -> dict[str, Recommender]:
    """The retrieval models, fitted on ``history`` only (``params`` per family)."""
    from bespoke.training.families import family

    params = params or {}
    return {name: family(name)(**dict(params.get(name, {}))).fit(history) for name in names}


def build_set(
    stage: Stage,
    builder: FeatureBuilder,
    users: pd.DataFrame | None,
    primary: str = RETRIEVERS[0],
    n_candidates: int = N_CANDIDATES,
) -> RankingSet:
    """Candidates, features and labels for every person with a label in ``stage``."""
    people = np.unique(stage.labels.users)
    batch = histories(stage.history, people, users, stage.as_of)
    placeholder = RankingPipeline(builder, Ranker(), primary, n_candidates)
    features, candidates = [], []
    for start in range(0, len(batch), _CHUNK):
        chunk = batch.rows(start, min(start + _CHUNK, len(batch)))
        chosen, scores = placeholder.candidates(chunk)
        features.append(builder.transform(chunk, chosen, None, scores=scores))
        candidates.append(chosen)
    chosen = np.vstack(candidates)
    relevant = stage.labels.matrix("binary")[people]
    rows = np.repeat(np.arange(len(people)), chosen.shape[1])
    hit = np.asarray(relevant[rows, np.maximum(chosen, 0).reshape(-1)]).ravel() > 0
    labels = (hit & (chosen.reshape(-1) >= 0)).astype(np.int8)
    return RankingSet(np.vstack(features), labels, people, chosen, relevant)


def split_people(ranking_set: RankingSet, share: float = VALID_SHARE, seed: int = 42
                 ) -> tuple[RankingSet, RankingSet]:  # fmt: skip
    """``(train, valid)`` by person, so a person's candidates stay together."""
    order = np.random.default_rng(seed).permutation(len(ranking_set.users))
    cut = round(len(order) * (1 - share))
    return ranking_set.take(np.sort(order[:cut])), ranking_set.take(np.sort(order[cut:]))


def reranked(ranking_set: RankingSet, raw: np.ndarray, k: int = 10) -> np.ndarray:
    scores = raw.reshape(ranking_set.candidates.shape).copy()
    scores[ranking_set.candidates < 0] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(ranking_set.candidates, order, axis=1)


def evaluate_ranker(
    ranker: Ranker | LogisticRanker, ranking_set: RankingSet, k: int = 10
) -> dict[str, float]:
    """Retrieval and reranked ranking metrics, and the calibration of the probabilities."""
    real = ranking_set.candidates.reshape(-1) >= 0
    raw = ranker.decision_function(ranking_set.features)
    probability = ranker.calibrate(raw)
    before = ranking_metrics(ranking_set.candidates[:, :k], ranking_set.relevant, k=k)
    after = ranking_metrics(reranked(ranking_set, raw, k), ranking_set.relevant, k=k)
    ndcg = f"ndcg@{k}"
    return {
        f"retrieval_{ndcg}": before[ndcg],
        f"reranked_{ndcg}": after[ndcg],
        "lift": after[ndcg] / before[ndcg] - 1.0 if before[ndcg] > 0 else float("nan"),
        f"reranked_precision@{k}": after[f"precision@{k}"],
        f"reranked_recall@{k}": after[f"recall@{k}"],
        "reranked_map": after["map"],
        f"candidate_recall@{ranking_set.n_candidates}": float(
            ranking_set.labels.sum() / max(ranking_set.relevant.nnz, 1)
        ),
        **calibration_metrics(probability[real], ranking_set.labels[real]),
    }


def fit_ranker(
    train: RankingSet,
    valid: RankingSet,
    builder: FeatureBuilder,
    params: Mapping[str, Any] | None = None,
    *,
    callback: Callable[[int, dict[str, float]], None] | None = None,
    lightgbm_callbacks: Sequence[Callable[..., Any]] = (),
    show_progress: bool = False,
) -> Ranker | LogisticRanker:
    """A ranker fitted on ``train`` (``params["objective"]`` "logistic": logistic
    regression; otherwise LightGBM with these parameters)."""
    params = dict(params or {})
    if params.get("objective") == "logistic":
        return LogisticRanker().fit(
            train,
            feature_names=builder.feature_names_,
            categorical_features=builder.categorical_features_,
        )
    return Ranker(**params).fit(
        train,
        valid,
        feature_names=builder.feature_names_,
        categorical_features=builder.categorical_features_,
        callback=callback,
        lightgbm_callbacks=lightgbm_callbacks,
        show_progress=show_progress,
    )


@dataclass
class RankerResult:
    objective: str
    params: dict[str, Any]
    metrics: dict[str, float]
    validation: dict[str, dict[str, float]]
    importance: dict[str, float]
    pipeline: RankingPipeline
    test_set: RankingSet
    run_id: str | None = None
    version: str | None = None
    promoted: bool = False
    champion_metric: float | None = None
    #: The gate's simpler path: the pipeline's retrieval order on the same held-out data.
    retrieval_metric: float | None = None
    decision: str = ""
    #: What the registered pipeline was fitted on: "all data" (refit) or "training part".
    trained_on: str = ""
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class RankingData:
    """Everything a ranker run reads, prepared once (tuning reuses it across trials)."""

    dataset: str
    protocol: Protocol
    split: Split
    users: pd.DataFrame
    catalog: pd.DataFrame
    retriever_params: dict[str, dict[str, Any]]
    fit_builder: FeatureBuilder
    train: RankingSet
    valid: RankingSet
    test_stage: Stage
    timings: dict[str, float]
    #: All the interactions up to now: what a refit for serving learns from.
    interactions: Interactions


def prepare(
    lake: Lake,
    dataset: str,
    protocol: Protocol = "temporal",
    retriever_params: Mapping[str, Mapping[str, Any]] | None = None,
    n_candidates: int = N_CANDIDATES,
    interactions: Interactions | None = None,
) -> RankingData:
    """Split, fit the fit stage's retrievers and build its ranking set."""
    start = time.perf_counter()
    interactions = interactions or load_interactions(lake, dataset)
    split = make_split(interactions, protocol)
    users, catalog = load_users(lake, dataset), load_catalog(lake, dataset)
    fit_stage, test_stage = stages(split)
    params = {k: dict(v) for k, v in (retriever_params or {}).items()}
    retrievers = fit_retrievers(fit_stage.history, params)
    builder = FeatureBuilder().fit(
        fit_stage.history, retrievers, users=users, items=catalog, as_of=fit_stage.as_of
    )
    train, valid = split_people(build_set(fit_stage, builder, users, n_candidates=n_candidates))
    return RankingData(
        dataset, protocol, split, users, catalog, params, builder, train, valid, test_stage,
        {"prepare_s": round(time.perf_counter() - start, 3)}, interactions,
    )  # fmt: skip


def train_ranker(
    settings: Settings,
    dataset: str,
    *,
    protocol: Protocol = "temporal",
    objective: str | tuple[str, ...] = "auto",
    params: Mapping[str, Any] | None = None,
    retriever_params: Mapping[str, Mapping[str, Any]] | None = None,
    n_candidates: int | None = None,
    register: bool = True,
    refit: bool = True,
    data: RankingData | None = None,
    show_progress: bool = False,
) -> RankerResult:
    """Fit the ranker (``objective``: one of :data:`CHOICES`, several as a tuple, or
    ``"auto"`` for all of them: LightGBM binary and lambdarank and logistic regression,
    the best on validation nDCG@10 kept), evaluate it and the logistic baseline on the
    test stage, log to MLflow with LightGBM autologging, and (``register``) register the
    pipeline, refit on all data (``refit``, see :func:`refit_for_serving`), and apply the
    champion gate on the held-out figures. ``n_candidates`` defaults to
    :data:`N_CANDIDATES`, or to what ``data`` was prepared with (the test stage and the
    refit are built with as many candidates as the fit stage)."""
    import mlflow

    if data is not None:
        prepared = data.train.n_candidates
        if n_candidates not in (None, prepared):
            raise ValueError(
                f"n_candidates={n_candidates}, but the data was prepared with {prepared}"
            )
        n_candidates = prepared
    n_candidates = n_candidates or N_CANDIDATES
    if retriever_params is None:
        source = params_file_of(settings)
        retriever_params = {
            name: tuned_params(source, dataset, protocol, name) for name in RETRIEVERS
        }
    data = data or prepare(
        consented_lake(settings), dataset, protocol, retriever_params, n_candidates
    )
    with tracking.session(settings, experiment_name(KIND, dataset)) as experiment:
        mlflow.lightgbm.autolog(log_models=False, log_datasets=False, log_input_examples=False,
                                silent=True)  # fmt: skip
        try:
            return _train_ranker(settings, data, experiment, objective, params, n_candidates,
                                 register, refit, show_progress)  # fmt: skip
        finally:  # autologging is process-wide: leave no stray runs behind
            mlflow.lightgbm.autolog(disable=True)


def _train_ranker(
    settings: Settings,
    data: RankingData,
    experiment: str,
    objective: str | tuple[str, ...],
    params: Mapping[str, Any] | None,
    n_candidates: int,
    register: bool,
    refit: bool,
    show_progress: bool,
) -> RankerResult:
    import mlflow

    dataset, protocol = data.dataset, data.protocol
    params = dict(params or {})
    candidates = CHOICES if objective == "auto" else tuple(np.atleast_1d(objective).tolist())
    unknown = [name for name in candidates if name not in CHOICES]
    if unknown:
        raise ValueError(f"unknown ranker objective(s) {unknown}; choose among {CHOICES}")
    with mlflow.start_run(run_name=f"ranker {dataset}", experiment_id=experiment) as run:
        mlflow.set_tags(
            tracking.run_tags(
                settings, dataset=dataset, model="ranker", protocol=protocol,
                train_fingerprint=data.split.train.fingerprint(),
                data_fingerprint=data.interactions.fingerprint(),
            )
        )  # fmt: skip
        timings = dict(data.timings)
        validation_scores: dict[str, dict[str, float]] = {}
        fitted: dict[str, Ranker | LogisticRanker] = {}
        for name in candidates:
            start = time.perf_counter()
            with mlflow.start_run(run_name=f"{name}", nested=True, experiment_id=experiment):
                own = {} if name == "logistic" else params  # tuned for LightGBM only
                fitted[name] = fit_ranker(
                    data.train, data.valid, data.fit_builder, {**own, "objective": name},
                    show_progress=show_progress,
                )  # fmt: skip
                validation_scores[name] = evaluate_ranker(fitted[name], data.valid)
                mlflow.log_metrics(tracking.metric_values(validation_scores[name], "valid."))
            timings[f"fit_{name}_s"] = round(time.perf_counter() - start, 3)
        best = max(candidates, key=lambda n: validation_scores[n]["reranked_ndcg@10"])
        ranker = fitted[best]

        start = time.perf_counter()
        retrievers = fit_retrievers(data.test_stage.history, data.retriever_params)
        builder = FeatureBuilder().fit(
            data.test_stage.history, retrievers, users=data.users, items=data.catalog,
            as_of=data.test_stage.as_of,
        )  # fmt: skip
        test_set = build_set(data.test_stage, builder, data.users, n_candidates=n_candidates)
        timings["test_stage_s"] = round(time.perf_counter() - start, 3)
        metrics = evaluate_ranker(ranker, test_set)
        # Every fitted objective's test figures, reported only (the choice was made on
        # validation): lambdarank orders well but its pooled probabilities are weaker.
        # LightGBM's binary AUC is the one measured against logistic regression.
        for name, model in fitted.items():
            other = metrics if model is ranker else evaluate_ranker(model, test_set)
            metrics |= {f"{name}_auc": other["auc"],
                        f"{name}_reranked_ndcg@10": other["reranked_ndcg@10"]}  # fmt: skip
        start = time.perf_counter()
        baseline = fitted.get("logistic") or fit_ranker(
            data.train, data.valid, data.fit_builder, {"objective": "logistic"}
        )
        timings["logreg_fit_s"] = round(time.perf_counter() - start, 3)
        logistic = evaluate_ranker(baseline, test_set)
        metrics |= {
            "logreg_auc": logistic["auc"],
            "logreg_reranked_ndcg@10": logistic["reranked_ndcg@10"],
        }
        pipeline = RankingPipeline(builder, ranker, RETRIEVERS[0], n_candidates)
        result = RankerResult(
            best, ranker.get_params(), metrics, validation_scores,
            ranker.feature_importance(), pipeline, test_set, run_id=run.info.run_id,
            timings=timings,
        )  # fmt: skip
        mlflow.log_params({"chosen_objective": best, "n_candidates": n_candidates,
                           "protocol": protocol})  # fmt: skip
        mlflow.log_metrics({**tracking.metric_values(metrics), **timings})
        mlflow.log_dict(result.importance, "feature_importance.json")
        if register:
            _register(Registry.of(settings), result, data, refit)
            mlflow.log_metrics({k: v for k, v in result.timings.items() if k.startswith("refit")})
    return result


def configuration(ranker: Ranker | LogisticRanker) -> dict[str, Any]:
    """What :func:`fit_ranker` needs to fit this ranker's configuration again."""
    if isinstance(ranker, LogisticRanker):
        return {"objective": "logistic"}
    return ranker.get_params()


def refit_for_serving(
    result: RankerResult, data: RankingData, show_progress: bool = False
) -> RankingPipeline:
    """The selected configuration refit on all the data, for serving: the ranker learns
    from every labelled stage of the split (the fit stage's people and the test stage's,
    whose labels are the most recent interactions under the temporal protocol),
    early-stopped and calibrated on a fifth of the people; then the retrievers and the
    item statistics are refit on all the interactions."""
    learned = RankingSet.concat([data.train, data.valid, result.test_set])
    train, valid = split_by_person(learned)
    ranker = fit_ranker(
        train, valid, result.pipeline.builder, configuration(result.pipeline.ranker),
        show_progress=show_progress,
    )  # fmt: skip
    everything = data.interactions
    retrievers = fit_retrievers(everything, data.retriever_params)
    as_of = None
    if data.protocol == "temporal" and len(everything.timestamps):
        # Just after the last interaction: the features count all of them.
        as_of = everything.timestamps.max() + np.timedelta64(1, "us")
    builder = FeatureBuilder().fit(
        everything, retrievers, users=data.users, items=data.catalog, as_of=as_of
    )
    return RankingPipeline(builder, ranker, result.pipeline.primary, result.pipeline.n_candidates)


def split_by_person(ranking_set: RankingSet, share: float = VALID_SHARE, seed: int = 42
                    ) -> tuple[RankingSet, RankingSet]:  # fmt: skip
    """``(train, valid)`` with every row of a person on one side, also when the person
    appears in several stages."""
    people = np.unique(ranking_set.users)
    rng = np.random.default_rng(seed)
    held = rng.permutation(people)[: round(len(people) * share)]
    in_valid = np.isin(ranking_set.users, held)
    return ranking_set.take(np.flatnonzero(~in_valid)), ranking_set.take(np.flatnonzero(in_valid))


def _register(registry: Registry, result: RankerResult, data: RankingData, refit: bool) -> None:
    candidate = pipeline_ndcg(result.pipeline, data.test_stage, data.users)
    retrieval = pipeline_ndcg(result.pipeline, data.test_stage, data.users, reranked=False)
    served, history = result.pipeline, data.test_stage.history
    result.trained_on = TRAIN_PART
    if refit:
        start = time.perf_counter()
        served, history = refit_for_serving(result, data), data.interactions
        result.timings["refit_s"] = round(time.perf_counter() - start, 3)
        result.trained_on = ALL_DATA
    example = pd.DataFrame({"user_id": [str(history.user_ids[0])], "k": [10]})
    with tempfile.TemporaryDirectory() as scratch:
        folder = served.save(Path(scratch) / RANKER_ARTIFACT)
        stored = Path(scratch) / HISTORY_ARTIFACT
        stored.mkdir()
        interactions_frame(history).to_parquet(stored / "interactions.parquet")
        data.users.to_parquet(stored / "users.parquet")
        result.version = registry.register(
            KIND,
            data.dataset,
            RANKER_ENTRY_POINT,
            {RANKER_ARTIFACT: str(folder), HISTORY_ARTIFACT: str(stored)},
            RANKER_SIGNATURE,
            example,
            held_out=candidate,
            trained_on=result.trained_on,
            data_fingerprint=history.fingerprint(),
        )
    assert result.run_id is not None
    decision = registry.gate(
        KIND,
        data.dataset,
        result.version,
        candidate,
        result.run_id,
        lambda champion: configuration_ndcg(champion, result, data),
        baseline=("retrieval alone", retrieval),
    )
    result.promoted, result.champion_metric, result.decision = (
        decision.promoted,
        decision.champion_metric,
        decision.text,
    )
    result.retrieval_metric = retrieval


def configuration_ndcg(champion: Loaded, result: RankerResult, data: RankingData) -> float:
    """The champion ranker's configuration (objective and LightGBM parameters) fitted on
    the candidate's fit stage and scored through the candidate's test-stage pipeline, the
    served path: a refit champion has seen the candidate's held-out data, so its stored
    model cannot be scored on it. The retrievers are the candidate's."""
    ranker = fit_ranker(
        data.train, data.valid, data.fit_builder, configuration(champion.model.ranker)
    )
    pipeline = RankingPipeline(
        result.pipeline.builder, ranker, result.pipeline.primary, result.pipeline.n_candidates
    )
    return pipeline_ndcg(pipeline, data.test_stage, data.users)


def pipeline_ndcg(pipeline: RankingPipeline, stage: Stage, users: pd.DataFrame | None,
                  k: int = 10, *, reranked: bool = True) -> float:  # fmt: skip
    """nDCG@k of a (loaded) pipeline on a stage, through its own serving path: how the
    gate scores the champion and the candidate on the same held-out data. With
    ``reranked=False``, the pipeline's retrieval order alone: the simpler path a ranker
    replaces, which it must beat."""
    people = np.unique(stage.labels.users)
    batch = histories(stage.history, people, users, stage.as_of)
    lookup = pd.Index(pipeline.item_ids.astype(str))
    # Re-express the histories over the pipeline's item index (it may predate new items).
    own_items = lookup.get_indexer(stage.history.item_ids[batch.items].astype(str))
    batch = _remap(batch, own_items)
    tops = []
    for start in range(0, len(batch), _CHUNK):
        rows = batch.rows(start, min(start + _CHUNK, len(batch)))
        tops.append(pipeline.rerank(rows, k)[0] if reranked else pipeline.retrieve(rows, k))
    top = np.vstack(tops)
    relevant = stage.labels.matrix("binary")[people]
    item_in_pipeline = lookup.get_indexer(stage.labels.item_ids.astype(str))
    recommended = np.where(
        top >= 0, _inverse(item_in_pipeline, len(lookup))[np.maximum(top, 0)], -1
    )
    return ranking_metrics(recommended, relevant, k=k)[f"ndcg@{k}"]


def _inverse(mapping: np.ndarray, size: int) -> np.ndarray:
    inverse = np.full(size, -1, np.int64)
    known = mapping >= 0
    inverse[mapping[known]] = np.flatnonzero(known)
    return inverse


def _remap(batch: Histories, items: np.ndarray) -> Histories:
    keep = items >= 0
    rows = batch.row_of_each()[keep]
    counts = np.bincount(rows, minlength=len(batch))
    return Histories(
        batch.user_ids,
        np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        items[keep],
        batch.values[keep],
        batch.days[keep],
        batch.attributes,
    )
