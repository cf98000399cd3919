"""Model quality of the ``@champion`` models on the latest window of interactions,
compared with what was measured when they were trained.

The protocol (one definition, used by ``bespoke monitor quality`` and ``bespoke retrain``):

- **Who is scored**: the people with at least one interaction in the window and at least
  one before it — the temporal protocol's test people. Newcomers would only get the
  popularity fallback; they are counted (``new_people``) but not scored.
- **What the champion is asked from**: each person's history before the window starts,
  the way the service asks it (``score_histories``, the batch form of
  ``recommend_from_history``; the ranking pipeline over the same histories, with the
  window's start as the request time). Nothing from the window reaches the question.
- **Relevant**: the items the person interacted with in the window (binary relevance,
  k = 10, the metrics of :mod:`bespoke.training.metrics`). Items the champion has never
  heard of stay relevant: a stale catalog is decay the check must see.
- **No leakage**: a (person, item) pair the champion was trained on is never scored. It
  is removed from the recommendations, as any seen item is, and from the relevant items;
  the ranker's candidate rows for it are dropped. On a historical dataset the window can
  overlap the training data (a champion trained on a random split of all of MovieLens has
  seen about 75% of any window): ``trained_share`` says how much, and a note says that
  its figures are then not comparable.
- **Baseline**: the metrics logged at training time in the champion version's MLflow run
  (its split's held-out test). This is like for like when the champion was trained with
  the ``temporal`` protocol, whose test is also "the next interactions of people seen
  before the cut". A random (``ms-stratified``) held-out part reads from the same period
  as the training data and scores far higher than any later window (nDCG@10 0.48 against
  about 0.10 for EASE on ML-100K), so such a champion is flagged, with a note saying why.
- **Verdict**: a metric has degraded when it moved past its threshold in the bad
  direction (``relative``: a share of the training-time value; ``absolute``: in the
  metric's units) and so did the optimistic end of its bootstrap interval over people.
  A window of a hundred people moves nDCG@10 by ±30% from month to month on ML-100K by
  chance alone; the interval keeps that noise from being read as decay.

Thresholds and the window live in ``quality.json`` beside this module (or a file of the
same shape, :class:`QualityConfig`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bespoke.monitoring.config import load_json_config
from bespoke.monitoring.windows import Window, parse_window
from bespoke.settings import Settings

if TYPE_CHECKING:
    import pandas as pd
    import scipy.sparse as sp

    from bespoke.training.base import Recommender
    from bespoke.training.data import Interactions
    from bespoke.training.registry import Loaded

#: The shipped thresholds.
DEFAULT_CONFIG = Path(__file__).with_name("quality.json")
#: Where the report goes inside a report folder.
REPORT_FILE = "quality.json"
#: Ranking metrics are at k = 10, as everywhere in Bespoke (DESIGN.md, "Measuring").
K = 10
RecommenderMetric = Literal["ndcg@10", "precision@10", "recall@10"]
RankerMetric = Literal["auc", "logloss", "brier", "ece"]
LOWER_IS_BETTER = frozenset({"logloss", "brier", "ece"})
Verdict = Literal["ok", "degraded", "no baseline", "not measured"]
_CHUNK = 1024


class QualityError(ValueError):
    """Quality cannot be judged: bad configuration, an unusable window, no champion."""


class NoChampionError(QualityError):
    """The dataset has no ``@champion`` recommender to judge."""


# --- configuration ------------------------------------------------------------------------


class Threshold(BaseModel):
    """How far a metric may worsen from its training-time value before it counts as
    degraded: exactly one of ``relative`` (a share of that value) or ``absolute``."""

    model_config = ConfigDict(extra="forbid")

    relative: float | None = Field(
        default=None, gt=0, description="Largest worsening as a share of the training value."
    )
    absolute: float | None = Field(
        default=None, gt=0, description="Largest worsening in the metric's own units."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> Threshold:
        if (self.relative is None) == (self.absolute is None):
            raise ValueError("give exactly one of 'relative' or 'absolute'")
        return self

    def limit(self, baseline: float, lower_is_better: bool) -> float:
        """The worst acceptable value, given the training-time ``baseline``."""
        step = baseline * self.relative if self.relative is not None else float(self.absolute)
        return baseline + step if lower_is_better else baseline - step

    def describe(self, lower_is_better: bool) -> str:
        sign = "+" if lower_is_better else "-"
        if self.relative is not None:
            return f"{sign}{self.relative:.0%}"
        return f"{sign}{self.absolute:g}"


class QualityConfig(BaseModel):
    """``quality.json``: the window, how sure the verdict must be, the thresholds."""

    model_config = ConfigDict(extra="forbid")

    window: str = Field(
        default="last 30 days",
        description="Default window: 'last N days' or 'YYYY-MM-DD..YYYY-MM-DD'.",
    )
    min_people: int = Field(
        default=20, ge=1, description="Fewer scored people than this is an error, not a verdict."
    )
    confidence: float = Field(
        default=0.9, gt=0, lt=1, description="Coverage of the bootstrap interval over people."
    )
    bootstrap: int = Field(
        default=200, ge=0, description="Bootstrap resamples; 0: the point value alone decides."
    )
    seed: int = Field(default=42, description="Seed of the bootstrap.")
    recommender: dict[RecommenderMetric, Threshold] = Field(default_factory=dict)
    ranker: dict[RankerMetric, Threshold] = Field(default_factory=dict)

    @field_validator("window")
    @classmethod
    def _window_parses(cls, value: str) -> str:
        parse_window(value, datetime.now(UTC))  # its ValueError names the problem
        return value


def load_config(path: Path | None = None) -> QualityConfig:
    """The configuration in ``path`` (default: the shipped ``quality.json``); every
    problem is a :class:`QualityError` naming the file and the field."""
    source = Path(path) if path is not None else DEFAULT_CONFIG
    return load_json_config(source, QualityConfig, "quality config", QualityError)


# --- results ------------------------------------------------------------------------------


@dataclass
class MetricCheck:
    """One metric: at training time, now (with its interval), the limit and the verdict."""

    metric: str
    at_training: float | None
    now: float | None
    interval: tuple[float, float] | None
    threshold: str
    limit: float | None
    verdict: Verdict

    @property
    def change(self) -> float | None:
        """Relative change from the training-time value (``now / then - 1``)."""
        if self.at_training is None or self.now is None or self.at_training == 0:
            return None
        return self.now / self.at_training - 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "at_training": _finite(self.at_training),
            "now": _finite(self.now),
            "interval": [_finite(v) for v in self.interval] if self.interval else None,
            "change": _finite(self.change),
            "threshold": self.threshold,
            "limit": _finite(self.limit),
            "verdict": self.verdict,
        }


@dataclass
class ModelQuality:
    """How one ``@champion`` model does on the window."""

    kind: Literal["recommender", "ranker"]
    name: str
    version: str
    run_id: str
    protocol: str
    people: int
    rows: int
    trained_share: float
    checks: list[MetricCheck]
    notes: list[str] = field(default_factory=list)

    @property
    def degraded(self) -> bool:
        return any(check.verdict == "degraded" for check in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "version": self.version,
            "run_id": self.run_id,
            "protocol": self.protocol,
            "people": self.people,
            "rows": self.rows,
            "trained_share": _finite(self.trained_share),
            "degraded": self.degraded,
            "metrics": [check.to_dict() for check in self.checks],
            "notes": self.notes,
        }


@dataclass
class QualityResult:
    """The whole check: what was judged on which window, and where the report is."""

    dataset: str
    window: Window
    anchor: datetime
    active_people: int
    new_people: int
    models: list[ModelQuality]
    config: QualityConfig
    report_dir: Path
    json: Path
    created: datetime

    @property
    def degraded(self) -> bool:
        return any(model.degraded for model in self.models)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "created": self.created.isoformat(),
            "window": {
                "label": self.window.label,
                "start": self.window.start.isoformat(),
                "end": self.window.end.isoformat(),
            },
            "anchor": self.anchor.isoformat(),
            "active_people": self.active_people,
            "new_people": self.new_people,
            "degraded": self.degraded,
            "verdict": "degraded" if self.degraded else "ok",
            "models": [model.to_dict() for model in self.models],
            "config": self.config.model_dump(mode="json"),
        }


def _finite(value: float | None) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


# --- the check ----------------------------------------------------------------------------


def new_report_dir(settings: Settings, now: datetime | None = None) -> Path:
    """A fresh ``<reports_dir>/<UTC timestamp>/`` (``-2``, ``-3``… when taken)."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    settings.reports_dir.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, 1000):
        folder = settings.reports_dir / (stamp if attempt == 1 else f"{stamp}-{attempt}")
        try:
            folder.mkdir()  # not exist_ok: two runs in one second must not share a folder
        except FileExistsError:
            continue
        return folder
    raise QualityError(f"cannot create a report folder under {settings.reports_dir}")


def run_quality(
    settings: Settings,
    dataset: str,
    *,
    window: str | None = None,
    config: QualityConfig | Path | None = None,
    out_dir: Path | None = None,
) -> QualityResult:
    """Judge the dataset's ``@champion`` recommender (and ranker, when one is registered)
    on ``window`` (default: the config's), write ``quality.json`` to ``out_dir`` (default:
    a new ``<reports_dir>/<timestamp>/``) and return the result; see the module doc.

    Raises :class:`QualityError` (a ``ValueError``) when it cannot judge: bad config or
    window, a dataset without timestamps, an empty window, too few people, no champion.
    """
    from bespoke.features.lake import Lake
    from bespoke.training.data import load_interactions, load_users
    from bespoke.training.registry import Registry, registered_name

    config = config if isinstance(config, QualityConfig) else load_config(config)
    lake = Lake(settings.lake_url)
    interactions = load_interactions(lake, dataset)  # names the dataset when it is empty
    if np.isnat(interactions.timestamps).any():
        raise QualityError(
            f"dataset {dataset!r} has interactions without a timestamp: a quality window "
            "needs the time of every interaction"
        )
    anchor = _utc(interactions.timestamps.max())
    try:
        span = parse_window(window or config.window, anchor)
    except ValueError as error:
        raise QualityError(str(error)) from error
    cohort = _cohort(interactions, span)
    where = (
        f"window {span.label!r} ({_day(span.start)} to {_day(span.end)}, end excluded) "
        f"of {dataset!r}"
    )
    if not cohort.inside.any():
        raise QualityError(f"{where} holds no interactions (the data runs to {_day(anchor)})")
    if len(cohort.people) < config.min_people:
        raise QualityError(
            f"{where}: {len(cohort.people)} people active in it had interacted before it; "
            f"at least {config.min_people} are needed to judge quality (min_people)"
        )

    registry = Registry.of(settings)
    # Loaded by version, once: an alias that moves while this check runs changes nothing.
    recommender = registry.load("recommender", dataset)
    if recommender is None:
        raise NoChampionError(
            f"{registered_name('recommender', dataset)} has no @champion in {settings.mlflow_tracking_uri}: "
            f"train one first, e.g. bespoke train recommender --dataset {dataset} "
            "--model ease --protocol temporal"
        )
    rng = np.random.default_rng(config.seed)
    models = [_judge_recommender(recommender, interactions, cohort, config, rng)]
    ranker = registry.load("ranker", dataset, history=True)
    if ranker is not None:
        users = load_users(lake, dataset)
        models.append(_judge_ranker(ranker, interactions, cohort, users, config, rng))

    folder = out_dir or new_report_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    result = QualityResult(
        dataset=dataset,
        window=span,
        anchor=anchor,
        active_people=cohort.active,
        new_people=cohort.active - len(cohort.people),
        models=models,
        config=config,
        report_dir=folder,
        json=folder / REPORT_FILE,
        created=datetime.now(UTC),
    )
    result.json.write_text(
        json.dumps(result.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    return result


def _utc(moment: np.datetime64) -> datetime:
    seconds = moment.astype("datetime64[us]").astype(np.int64) / 1e6
    return datetime.fromtimestamp(seconds, UTC)


def _day(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d")


def _naive(moment: datetime) -> np.datetime64:
    """A UTC datetime as the naive ``datetime64[us]`` the interactions hold."""
    return np.datetime64(moment.astimezone(UTC).replace(tzinfo=None), "us")


@dataclass
class _Cohort:
    people: np.ndarray  # user indices: active in the window and before it, sorted
    before: np.ndarray  # mask over interactions: before the window
    inside: np.ndarray  # mask over interactions: in the window
    start: np.datetime64
    active: int  # people active in the window, newcomers included


def _cohort(interactions: Interactions, span: Window) -> _Cohort:
    start, end = _naive(span.start), _naive(span.end)
    times = interactions.timestamps
    before = times < start
    inside = (times >= start) & (times < end)
    active = np.unique(interactions.users[inside])
    known = np.zeros(interactions.n_users, bool)
    known[interactions.users[before]] = True
    return _Cohort(active[known[active]], before, inside, start, len(active))


def _index_of(ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Position of each of ``wanted`` in ``ids`` (compared as text), -1 where absent."""
    import pandas as pd

    return pd.Index(np.asarray(ids).astype(str)).get_indexer(np.asarray(wanted).astype(str))


def _binary(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    import scipy.sparse as sp

    matrix = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=shape)
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


def _rows_of(interactions: Interactions, people: np.ndarray) -> np.ndarray:
    """Each interaction's row among ``people`` (-1 for everyone else)."""
    position = np.full(interactions.n_users, -1, np.int64)
    position[people] = np.arange(len(people))
    return position[interactions.users]


def _trained_pairs(seen: sp.csr_matrix, model_users: np.ndarray) -> sp.csr_matrix:
    """The rows of a model's training matrix for ``model_users`` (-1: a person the model
    was not trained on, an empty row)."""
    import scipy.sparse as sp

    known = np.flatnonzero(model_users >= 0)
    pick = sp.csr_matrix(
        (np.ones(len(known), np.float32), (known, model_users[known])),
        shape=(len(model_users), seen.shape[0]),
    )
    return (pick @ seen).tocsr()


def _judge_recommender(
    champion: Loaded,
    interactions: Interactions,
    cohort: _Cohort,
    config: QualityConfig,
    rng: np.random.Generator,
) -> ModelQuality:
    from bespoke.training.metrics import per_user_metrics

    model: Recommender = champion.model
    people = cohort.people
    n, n_model = len(people), len(model.item_ids_)
    row = _rows_of(interactions, people)
    to_model = _index_of(model.item_ids_, interactions.item_ids)[interactions.items]
    # Items the champion has never heard of get columns of their own: relevant, never
    # recommendable.
    unknown = np.unique(interactions.items[to_model < 0])
    column = to_model.copy()
    column[to_model < 0] = n_model + np.searchsorted(unknown, interactions.items[to_model < 0])
    n_columns = n_model + len(unknown)

    asked = cohort.before & (row >= 0) & (to_model >= 0)
    history = _binary(row[asked], to_model[asked], (n, n_model))
    inside = cohort.inside & (row >= 0)
    window = _binary(row[inside], column[inside], (n, n_columns))
    trained = _trained_pairs(model.seen_, _index_of(model.user_ids_, interactions.user_ids[people]))
    seen = _pad(((history + trained) > 0).astype(np.float32), n_columns)
    trained_share = _share(window, _pad(trained, n_columns))
    relevant = window - window.multiply(seen)
    relevant.eliminate_zeros()

    top = np.vstack(
        [
            _top_k(model.score_histories(history[start : start + _CHUNK]),
                   seen[start : start + _CHUNK, :n_model], K)
            for start in range(0, n, _CHUNK)
        ]
    )  # fmt: skip
    scores = per_user_metrics(top, relevant, k=K)
    per_person = {
        f"ndcg@{K}": scores.ndcg,
        f"precision@{K}": scores.precision,
        f"recall@{K}": scores.recall,
    }
    checks = []
    for metric, threshold in config.recommender.items():
        values = per_person[metric]
        now = float(values.mean()) if values.size else None
        samples = _bootstrap_means(values, config.bootstrap, rng)
        baseline = champion.metrics.get(metric.replace("@", "_at_"))
        checks.append(_check(metric, now, samples, baseline, threshold, config.confidence))
    notes = _notes(champion, trained_share)
    if len(scores.users) < config.min_people:
        notes.append(
            f"only {len(scores.users)} people had a relevant item the champion was not "
            "trained on: the figures are not judged"
        )
        checks = [_unjudged(check) for check in checks]
    return ModelQuality(
        "recommender", champion.name, champion.version, champion.run_id, champion.protocol,
        people=len(scores.users), rows=int(relevant.nnz), trained_share=trained_share,
        checks=checks, notes=notes,
    )  # fmt: skip


def _judge_ranker(
    champion: Loaded,
    interactions: Interactions,
    cohort: _Cohort,
    users: pd.DataFrame,
    config: QualityConfig,
    rng: np.random.Generator,
) -> ModelQuality:
    from dataclasses import replace

    from bespoke.features.build import histories
    from bespoke.training.metrics import calibration_metrics

    pipeline = champion.model
    item_ids = np.asarray(pipeline.item_ids).astype(object)
    people = cohort.people
    n, n_items = len(people), len(item_ids)
    row = _rows_of(interactions, people)
    to_pipeline = _index_of(item_ids, interactions.item_ids)[interactions.items]

    # The lake's interactions over the pipeline's item index (items it cannot score are
    # dropped from the histories, as a live profile's are).
    scorable = to_pipeline >= 0
    reindexed = replace(
        interactions.subset(scorable), item_ids=item_ids, items=to_pipeline[scorable]
    )
    batch = histories(reindexed, people, users, cohort.start)  # strictly before the window
    inside = cohort.inside & (row >= 0) & scorable
    window = _binary(row[inside], to_pipeline[inside], (n, n_items))
    stored = champion.history  # the interactions the pipeline was trained on
    stored_rows = _index_of(interactions.user_ids[people], stored["user_id"].to_numpy())
    stored_items = _index_of(item_ids, stored["item_id"].to_numpy())
    keep = (stored_rows >= 0) & (stored_items >= 0)
    trained = _binary(stored_rows[keep], stored_items[keep], (n, n_items))
    trained_share = _share(window, trained)

    probabilities: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for start in range(0, n, _CHUNK):
        chunk = batch.rows(start, min(start + _CHUNK, n))
        candidates, _, probability = pipeline.score(chunk, now=cohort.start)
        rows = np.repeat(np.arange(start, start + len(chunk)), candidates.shape[1])
        items = np.maximum(candidates, 0).reshape(-1)
        hit = (np.asarray(window[rows, items]).ravel() > 0).reshape(candidates.shape)
        was_trained = (np.asarray(trained[rows, items]).ravel() > 0).reshape(candidates.shape)
        scored = (candidates >= 0) & ~was_trained
        for r in range(len(chunk)):
            probabilities.append(probability[r][scored[r]])
            labels.append(hit[r][scored[r]].astype(np.int8))
    flat_p, flat_y = np.concatenate(probabilities), np.concatenate(labels)
    notes = _notes(champion, trained_share)
    measured = len(np.unique(flat_y)) == 2
    now = calibration_metrics(flat_p, flat_y) if measured else {}
    if not measured:
        notes.append(
            "the candidates hold no "
            + ("positive" if not flat_y.any() else "negative")
            + " labels in this window: calibration cannot be measured"
        )
    samples = (
        bootstrap_calibration(probabilities, labels, _draws(n, config.bootstrap, rng))
        if measured and config.bootstrap > 0
        else {}
    )
    checks = [
        _check(metric, now.get(metric), samples.get(metric), champion.metrics.get(metric),
               threshold, config.confidence)
        for metric, threshold in config.ranker.items()
    ]  # fmt: skip
    return ModelQuality(
        "ranker", champion.name, champion.version, champion.run_id, champion.protocol,
        people=n, rows=len(flat_y), trained_share=trained_share, checks=checks, notes=notes,
    )  # fmt: skip


def _pad(matrix: sp.csr_matrix, n_columns: int) -> sp.csr_matrix:
    import scipy.sparse as sp

    matrix = sp.csr_matrix(matrix)
    return sp.csr_matrix(
        (matrix.data, matrix.indices, matrix.indptr), shape=(matrix.shape[0], n_columns)
    )


def _share(window: sp.csr_matrix, trained: sp.csr_matrix) -> float:
    """The share of the window's (person, item) pairs the champion was trained on."""
    return float(window.multiply(trained).nnz / window.nnz) if window.nnz else 0.0


def _top_k(scores: np.ndarray, seen: sp.csr_matrix, k: int) -> np.ndarray:
    """The ``k`` best unseen items per row, best first (ties: lower index; -1 padding)."""
    scores = np.asarray(scores, np.float32).copy()
    rows, cols = seen.nonzero()
    scores[rows, cols] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    top = np.where(np.isfinite(np.take_along_axis(scores, order, axis=1)), order, -1)
    if top.shape[1] < k:
        top = np.hstack([top, np.full((len(top), k - top.shape[1]), -1)])
    return top.astype(np.int64)


def _draws(people: int, draws: int, rng: np.random.Generator) -> np.ndarray:
    """``(draws, people)`` multiplicities of people drawn with replacement."""
    return rng.multinomial(people, np.full(people, 1.0 / people), size=draws).astype(np.float64)


def _bootstrap_means(values: np.ndarray, draws: int, rng: np.random.Generator) -> np.ndarray:
    if draws == 0 or values.size == 0:
        return np.empty(0)
    return _draws(values.size, draws, rng) @ values / values.size


def bootstrap_calibration(
    probabilities: list[np.ndarray], labels: list[np.ndarray], counts: np.ndarray, bins: int = 10
) -> dict[str, np.ndarray]:
    """:func:`~bespoke.training.metrics.calibration_metrics` for each row of ``counts``
    (how many times each person is drawn), without rebuilding the rows: a person's
    candidate rows stay together (they are not independent), and per-person sums make a
    draw cost one matrix product instead of a pass over every row. A draw without both
    labels measures nothing and is left out."""
    person = np.repeat(np.arange(len(labels)), [len(y) for y in labels])
    p = np.concatenate(probabilities).astype(np.float64)
    y = np.concatenate(labels).astype(np.float64)
    clipped = np.clip(p, 1e-7, 1 - 1e-7)
    n_people = len(labels)

    def per_person(values: np.ndarray) -> np.ndarray:
        return np.bincount(person, weights=values, minlength=n_people)

    rows, positives = per_person(np.ones_like(p)), per_person(y)
    loss = per_person(-(y * np.log(clipped) + (1 - y) * np.log(1 - clipped)))
    squared = per_person((p - y) ** 2)
    which = np.minimum((p * bins).astype(np.int64), bins - 1)
    gap = np.zeros((n_people, bins))  # sum of (label - probability) per person and bin
    np.add.at(gap, (person, which), y - p)
    usable = (counts @ positives > 0) & (counts @ (rows - positives) > 0)
    counts = counts[usable]
    total = counts @ rows
    # AUC: the Mann-Whitney statistic with every row weighted by its person's draws;
    # rows sorted once, ties by equal probability share half their weight.
    order = np.argsort(p, kind="stable")
    levels, tie = np.unique(p[order], return_inverse=True)
    auc = np.empty(len(counts))
    for d, weights in enumerate(counts):
        w = weights[person[order]]
        pos = np.bincount(tie, weights=w * y[order], minlength=len(levels))
        neg = np.bincount(tie, weights=w * (1 - y[order]), minlength=len(levels))
        below = np.cumsum(neg) - neg
        auc[d] = (pos * (below + 0.5 * neg)).sum() / (pos.sum() * neg.sum())
    return {
        "auc": auc,
        "logloss": counts @ loss / total,
        "brier": counts @ squared / total,
        "ece": np.abs(counts @ gap).sum(axis=1) / total,
    }


def _check(
    metric: str,
    now: float | None,
    samples: np.ndarray | None,
    baseline: float | None,
    threshold: Threshold,
    confidence: float,
) -> MetricCheck:
    lower = metric in LOWER_IS_BETTER
    interval = None
    if samples is not None and samples.size:
        tail = (1.0 - confidence) / 2.0
        low, high = np.quantile(samples, [tail, 1.0 - tail])
        interval = (float(low), float(high))
    described = threshold.describe(lower)
    if now is None:
        return MetricCheck(metric, baseline, None, None, described, None, "not measured")
    if baseline is None or not math.isfinite(baseline):
        return MetricCheck(metric, None, now, interval, described, None, "no baseline")
    limit = threshold.limit(baseline, lower)
    optimistic = (interval[0] if lower else interval[1]) if interval else now

    def beyond(value: float) -> bool:
        return value > limit if lower else value < limit

    verdict: Verdict = "degraded" if beyond(now) and beyond(optimistic) else "ok"
    return MetricCheck(metric, baseline, now, interval, described, limit, verdict)


def _unjudged(check: MetricCheck) -> MetricCheck:
    return MetricCheck(
        check.metric, check.at_training, check.now, check.interval, check.threshold,
        check.limit, "not measured",
    )  # fmt: skip


def _notes(champion: Loaded, trained_share: float) -> list[str]:
    notes = []
    if champion.protocol != "temporal":
        notes.append(
            f"v{champion.version} was trained with the {champion.protocol!r} protocol: its "
            "training-time figures come from a held-out part of the same period, which a "
            "later window does not resemble; train with --protocol temporal for a like-for-"
            "like baseline"
        )
    if trained_share > 0:
        notes.append(
            f"v{champion.version} was trained on {trained_share:.0%} of this window's "
            "(person, item) pairs; they are left out of the scores"
        )
    return notes
