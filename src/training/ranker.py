"""The click-through ranker: LightGBM over :mod:`bespoke.features.build` rows, with
calibrated probabilities, and the two-stage pipeline (retrieve, then rerank) it serves in.

``Ranker`` follows the estimator contract: no work in ``__init__``, ``fit`` returns self,
fitted attributes end in ``_``, ``save``/``load`` write LightGBM's text model and JSON.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Self

import numpy as np

from bespoke.features.build import (
    FeatureBuilder,
    Histories,
    Profile,
    item_positions,
    load_builder,
    save_builder,
)
from bespoke.training.base import FitCallback, Recommender

Objective = Literal["binary", "lambdarank"]
#: LightGBM's objectives (what tuning searches).
OBJECTIVES: tuple[Objective, ...] = ("binary", "lambdarank")
#: Every model ``train_ranker`` can choose between on validation.
CHOICES = (*OBJECTIVES, "logistic")


@dataclass
class RankingSet:
    """Feature rows of (person, candidate) pairs, person-major: person ``r`` owns rows
    ``r * C`` to ``(r + 1) * C`` for its ``C`` candidates (padding rows are NaN, label 0)."""

    features: np.ndarray  # (n * C, F) float32
    labels: np.ndarray  # (n * C,) 0/1
    users: np.ndarray  # (n,) user indices of the stage's interactions
    candidates: np.ndarray  # (n, C) item indices, best retrieval score first; -1 padding
    relevant: Any  # (n, n_items) sparse: the person's positives after the cut

    @property
    def n_candidates(self) -> int:
        return self.candidates.shape[1]

    def groups(self) -> np.ndarray:
        return np.full(len(self.users), self.n_candidates)

    @classmethod
    def concat(cls, sets: Sequence[RankingSet]) -> RankingSet:
        """The people of several sets (same candidates per person, same item index), in
        order: e.g. every labelled stage of a split, for a refit."""
        import scipy.sparse as sp

        if len({ranking_set.n_candidates for ranking_set in sets}) != 1:
            raise ValueError("ranking sets with different numbers of candidates")
        return cls(
            features=np.vstack([s.features for s in sets]),
            labels=np.concatenate([s.labels for s in sets]),
            users=np.concatenate([s.users for s in sets]),
            candidates=np.vstack([s.candidates for s in sets]),
            relevant=sp.vstack([s.relevant for s in sets]).tocsr(),
        )

    def take(self, people: np.ndarray) -> RankingSet:
        """The rows of the people at positions ``people``."""
        c = self.n_candidates
        rows = (np.asarray(people)[:, None] * c + np.arange(c)[None, :]).reshape(-1)
        return RankingSet(
            features=self.features[rows],
            labels=self.labels[rows],
            users=self.users[people],
            candidates=self.candidates[people],
            relevant=self.relevant[people],
        )


def centered_steps(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centred isotonic regression (Oron & Flournoy, 2017) from an isotonic fit's
    thresholds: each flat step becomes one point at its centre, and probabilities are
    interpolated between the centres. Still monotone and as well calibrated, but strictly
    increasing, so items the ranker orders get distinct probabilities (a step function
    gave whole runs of ranked items the same one)."""
    if len(x) < 2:
        return x, y
    starts = np.flatnonzero(np.r_[True, np.diff(y) != 0])
    ends = np.r_[starts[1:], len(y)] - 1
    return (x[starts] + x[ends]) / 2.0, y[starts]


def _interpolated(raw: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Linear between the points, extended past the outer ones along the outer segments
    (so the highest scores stay apart too), kept within [0, 1]."""
    out = np.interp(raw, x, y)
    if len(x) >= 2:
        low, high = raw < x[0], raw > x[-1]
        first = (y[1] - y[0]) / (x[1] - x[0])
        last = (y[-1] - y[-2]) / (x[-1] - x[-2])
        out[low] = y[0] + first * (raw[low] - x[0])
        out[high] = y[-1] + last * (raw[high] - x[-1])
    return np.clip(out, 0.0, 1.0)


class Ranker:
    """LightGBM with a binary (click-through) or lambdarank objective; probabilities are
    calibrated (isotonic, or Platt scaling) on the validation rows."""

    def __init__(
        self,
        objective: Objective = "binary",
        learning_rate: float = 0.05,
        num_leaves: int = 15,
        min_child_samples: int = 100,
        feature_fraction: float = 0.8,
        bagging_fraction: float = 0.8,
        lambda_l2: float = 1.0,
        num_boost_round: int = 500,
        early_stopping_rounds: int = 50,
        calibration: Literal["isotonic", "platt"] = "isotonic",
        linear_tree: bool = False,
        n_jobs: int = 1,
        random_state: int = 42,
    ) -> None:
        self.objective = objective
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.feature_fraction = feature_fraction
        self.bagging_fraction = bagging_fraction
        self.lambda_l2 = lambda_l2
        self.num_boost_round = num_boost_round
        self.early_stopping_rounds = early_stopping_rounds
        self.calibration = calibration
        self.linear_tree = linear_tree
        self.n_jobs = n_jobs
        self.random_state = random_state

    def get_params(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.endswith("_")}

    def lightgbm_params(self) -> dict[str, Any]:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        return {
            "objective": self.objective,
            # Early stopping watches the first metric: log loss is far steadier than
            # nDCG@10 over a few hundred validation people.
            "metric": ["binary_logloss", "ndcg", "auc"]
            if self.objective == "binary"
            else ["ndcg", "auc"],
            "eval_at": [10],
            "first_metric_only": True,
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_child_samples": self.min_child_samples,
            "feature_fraction": self.feature_fraction,
            "bagging_fraction": self.bagging_fraction,
            "bagging_freq": 1,
            "lambda_l2": self.lambda_l2,
            # High-cardinality categories (US states) overfit without these.
            "cat_smooth": 50.0,
            "cat_l2": 10.0,
            "min_data_per_group": 200,
            "linear_tree": self.linear_tree,
            "seed": self.random_state,
            "deterministic": True,
            # Explicit: with OpenMP's default (all cores, spinning waits) training slows
            # by 20x as soon as another process wants a core.
            "num_threads": self.n_jobs,
            "verbosity": -1,
        }

    def fit(
        self,
        train: RankingSet,
        valid: RankingSet,
        *,
        feature_names: Sequence[str],
        categorical_features: Sequence[str] = (),
        callback: FitCallback | None = None,
        show_progress: bool = False,
        lightgbm_callbacks: Sequence[Callable[..., Any]] = (),
    ) -> Self:
        """Boost on ``train`` with early stopping on ``valid``'s nDCG@10, then calibrate on
        ``valid``. ``callback(iteration, metrics)`` sees the validation metrics each round;
        ``lightgbm_callbacks`` (e.g. Optuna's pruning callback) go to LightGBM as they are."""
        import lightgbm as lgb

        names = list(feature_names)
        categorical = [c for c in categorical_features if c in names]
        train_set = lgb.Dataset(
            train.features, train.labels, group=train.groups(), feature_name=names,
            categorical_feature=categorical, free_raw_data=False,
        )  # fmt: skip
        valid_set = lgb.Dataset(
            valid.features, valid.labels, group=valid.groups(), reference=train_set
        )

        def report(env: Any) -> None:
            if callback is not None:
                metrics = {f"{m}": float(v) for _, m, v, _ in env.evaluation_result_list}
                callback(env.iteration + 1, metrics)

        hooks = [lgb.early_stopping(self.early_stopping_rounds, verbose=False), report]
        if show_progress:
            hooks.append(lgb.log_evaluation(25))
        booster = lgb.train(
            self.lightgbm_params(),
            train_set,
            num_boost_round=self.num_boost_round,
            valid_sets=[valid_set],
            valid_names=["valid"],
            callbacks=[*hooks, *lightgbm_callbacks],
        )
        self.booster_ = booster
        self.best_iteration_ = int(booster.best_iteration or booster.current_iteration())
        self.feature_names_ = names
        self.categorical_features_ = categorical
        self._calibrate(self.decision_function(valid.features), valid.labels)
        return self

    def _calibrate(self, raw: np.ndarray, labels: np.ndarray) -> None:
        if self.calibration == "isotonic":
            from sklearn.isotonic import IsotonicRegression

            iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0)
            iso.fit(raw, labels)
            self.calibration_x_, self.calibration_y_ = centered_steps(
                np.asarray(iso.X_thresholds_, np.float64), np.asarray(iso.y_thresholds_, np.float64)
            )
        elif self.calibration == "platt":
            from sklearn.linear_model import LogisticRegression

            platt = LogisticRegression(C=1e6).fit(raw.reshape(-1, 1), labels)
            self.calibration_x_ = np.array([platt.coef_[0, 0]], np.float64)
            self.calibration_y_ = np.array([platt.intercept_[0]], np.float64)
        else:
            raise ValueError(f"calibration must be 'isotonic' or 'platt', got {self.calibration!r}")

    def decision_function(self, features: np.ndarray) -> np.ndarray:
        """Raw scores (the ranking order)."""
        self._check_fitted()
        return self.booster_.predict(
            features, raw_score=True, num_iteration=self.best_iteration_, num_threads=1
        )

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """Calibrated probability that the person engages with the candidate."""
        return self.calibrate(self.decision_function(features))

    def calibrate(self, raw: np.ndarray) -> np.ndarray:
        """Probabilities from raw scores (the calibration learnt at fit time)."""
        self._check_fitted()
        if self.calibration == "isotonic":
            return _interpolated(np.asarray(raw, np.float64), self.calibration_x_,
                                 self.calibration_y_)  # fmt: skip
        slope, intercept = self.calibration_x_[0], self.calibration_y_[0]
        return 1.0 / (1.0 + np.exp(-(slope * raw + intercept)))

    def feature_importance(self, kind: Literal["gain", "split"] = "gain") -> dict[str, float]:
        self._check_fitted()
        values = self.booster_.feature_importance(kind, iteration=self.best_iteration_)
        return dict(sorted(zip(self.feature_names_, map(float, values), strict=True),
                           key=lambda kv: -kv[1]))  # fmt: skip

    def _check_fitted(self) -> None:
        if not hasattr(self, "booster_"):
            from bespoke.training.base import NotFittedError

            raise NotFittedError("this Ranker is not fitted: call fit() or load() first")

    def save(self, path: str | Path) -> Path:
        self._check_fitted()
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        self.booster_.save_model(str(folder / "lightgbm.txt"), num_iteration=self.best_iteration_)
        meta = {
            "params": self.get_params(),
            "best_iteration": self.best_iteration_,
            "feature_names": self.feature_names_,
            "categorical_features": self.categorical_features_,
            "calibration_x": self.calibration_x_.tolist(),
            "calibration_y": self.calibration_y_.tolist(),
        }
        (folder / "ranker.json").write_text(json.dumps(meta, indent=2))
        return folder

    @classmethod
    def load(cls, path: str | Path) -> Ranker:
        import lightgbm as lgb

        folder = Path(path)
        meta = json.loads((folder / "ranker.json").read_text())
        ranker = cls(**meta["params"])
        ranker.booster_ = lgb.Booster(model_file=str(folder / "lightgbm.txt"))
        ranker.best_iteration_ = int(meta["best_iteration"])
        ranker.feature_names_ = list(meta["feature_names"])
        ranker.categorical_features_ = list(meta["categorical_features"])
        ranker.calibration_x_ = np.asarray(meta["calibration_x"], np.float64)
        ranker.calibration_y_ = np.asarray(meta["calibration_y"], np.float64)
        return ranker


class LogisticRanker:
    """Logistic regression on the same rows: median-imputed, standardised numbers and
    one-hot categories (unknown levels: all zeros). The baseline LightGBM is measured
    against, and a candidate in its own right (``objective="logistic"``).

    Fitted with scikit-learn; its state is plain arrays, so it predicts with NumPy and
    saves as JSON.
    """

    objective = "logistic"

    def __init__(self, C: float = 1.0, max_iter: int = 300) -> None:
        self.C = C
        self.max_iter = max_iter

    def get_params(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.endswith("_")}

    def fit(
        self,
        train: RankingSet,
        valid: RankingSet | None = None,
        *,
        feature_names: Sequence[str],
        categorical_features: Sequence[str] = (),
        **_: Any,
    ) -> Self:
        """Fit on ``train`` (``valid`` is not needed: no early stopping, and the model's
        own probabilities are its calibration)."""
        import warnings

        from sklearn.linear_model import LogisticRegression

        names = list(feature_names)
        self.feature_names_ = names
        self.categorical_features_ = [c for c in categorical_features if c in names]
        self.categorical_at_ = [names.index(c) for c in self.categorical_features_]
        self.numeric_at_ = [i for i in range(len(names)) if i not in self.categorical_at_]
        numbers = train.features[:, self.numeric_at_].astype(np.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
            medians = np.nanmedian(numbers, axis=0)
        self.medians_ = np.nan_to_num(medians)
        filled = np.where(np.isnan(numbers), self.medians_, numbers)
        self.means_ = filled.mean(axis=0)
        spread = filled.std(axis=0)
        self.scales_ = np.where(spread > 0, spread, 1.0)
        codes = train.features[:, self.categorical_at_]
        self.levels_ = [np.unique(col[~np.isnan(col)]) for col in codes.T]
        model = LogisticRegression(C=self.C, max_iter=self.max_iter)
        model.fit(self._design(train.features), train.labels)
        self.coef_ = model.coef_.ravel().astype(np.float64)
        self.intercept_ = float(model.intercept_[0])
        return self

    def _design(self, features: np.ndarray) -> np.ndarray:
        numbers = features[:, self.numeric_at_].astype(np.float64)
        numbers = (np.where(np.isnan(numbers), self.medians_, numbers) - self.means_) / self.scales_
        onehots = [
            (features[:, [at]] == levels[None, :]).astype(np.float64)
            for at, levels in zip(self.categorical_at_, self.levels_, strict=True)
        ]
        return np.hstack([numbers, *onehots])

    def decision_function(self, features: np.ndarray) -> np.ndarray:
        """The log-odds (the ranking order)."""
        self._check_fitted()
        return self._design(features) @ self.coef_ + self.intercept_

    def calibrate(self, raw: np.ndarray) -> np.ndarray:
        self._check_fitted()
        return 1.0 / (1.0 + np.exp(-np.asarray(raw, np.float64)))

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        return self.calibrate(self.decision_function(features))

    def feature_importance(self) -> dict[str, float]:
        """Absolute standardised coefficients (a category: the largest of its levels')."""
        self._check_fitted()
        weights = dict.fromkeys(self.feature_names_, 0.0)
        at = 0
        for index in self.numeric_at_:
            weights[self.feature_names_[index]] = abs(self.coef_[at])
            at += 1
        for index, levels in zip(self.categorical_at_, self.levels_, strict=True):
            block = self.coef_[at : at + len(levels)]
            weights[self.feature_names_[index]] = float(np.abs(block).max(initial=0.0))
            at += len(levels)
        return dict(sorted(weights.items(), key=lambda kv: -kv[1]))

    def _check_fitted(self) -> None:
        if not hasattr(self, "coef_"):
            from bespoke.training.base import NotFittedError

            raise NotFittedError("this LogisticRanker is not fitted: call fit() or load() first")

    def save(self, path: str | Path) -> Path:
        self._check_fitted()
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        state = {
            "kind": "logistic",
            "params": self.get_params(),
            "feature_names": self.feature_names_,
            "categorical_features": self.categorical_features_,
            "numeric_at": self.numeric_at_,
            "categorical_at": self.categorical_at_,
            "medians": self.medians_.tolist(),
            "means": self.means_.tolist(),
            "scales": self.scales_.tolist(),
            "levels": [levels.tolist() for levels in self.levels_],
            "coef": self.coef_.tolist(),
            "intercept": self.intercept_,
        }
        (folder / "logistic.json").write_text(json.dumps(state))
        return folder

    @classmethod
    def load(cls, path: str | Path) -> LogisticRanker:
        state = json.loads((Path(path) / "logistic.json").read_text())
        model = cls(**state["params"])
        model.feature_names_ = list(state["feature_names"])
        model.categorical_features_ = list(state["categorical_features"])
        model.numeric_at_ = list(state["numeric_at"])
        model.categorical_at_ = list(state["categorical_at"])
        for name in ("medians", "means", "scales", "coef"):
            setattr(model, f"{name}_", np.asarray(state[name], np.float64))
        model.levels_ = [np.asarray(levels, np.float64) for levels in state["levels"]]
        model.intercept_ = float(state["intercept"])
        return model


def load_ranker(path: str | Path) -> Ranker | LogisticRanker:
    """A LightGBM or logistic ranker, whichever ``path`` holds."""
    folder = Path(path)
    return (
        LogisticRanker.load(folder) if (folder / "logistic.json").is_file() else Ranker.load(folder)
    )


class RankingPipeline:
    """Retrieve ``n_candidates`` with the primary retriever, build their features, order
    them by the ranker. The one scoring path of offline evaluation and live requests."""

    def __init__(
        self,
        builder: FeatureBuilder,
        ranker: Ranker | LogisticRanker,
        primary: str = "ease",
        n_candidates: int = 100,
    ) -> None:
        self.builder = builder
        self.ranker = ranker
        self.primary = primary
        self.n_candidates = n_candidates

    @property
    def item_ids(self) -> np.ndarray:
        return self.builder.item_ids_

    def candidates(
        self, batch: Histories, exclude: Sequence[Any] | None = None
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Each person's top candidates by the primary retriever (seen items removed), and
        every retriever's scores, reused for the features."""
        scores = self.builder.retrieval_scores(batch)
        primary = scores[self.primary]
        if exclude is not None:
            from bespoke.training.base import _index

            excluded = _index(self.item_ids, list(exclude))
            primary = primary.copy()
            primary[:, excluded[excluded >= 0]] = -np.inf
        n = min(self.n_candidates, primary.shape[1])
        top = np.argpartition(-primary, n - 1, axis=1)[:, :n]
        order = np.argsort(-np.take_along_axis(primary, top, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        top[np.isinf(np.take_along_axis(primary, top, axis=1))] = -1
        return top, scores

    def score(
        self,
        batch: Histories,
        now: datetime | np.datetime64 | str | Sequence[Any] | None = None,
        exclude: Sequence[Any] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(candidates, raw scores, probabilities)``, each (people × candidates)."""
        candidates, scores = self.candidates(batch, exclude)
        features = self.builder.transform(batch, candidates, now, scores=scores)
        raw = self.ranker.decision_function(features).reshape(candidates.shape)
        raw[candidates < 0] = -np.inf
        probability = self.ranker.calibrate(raw.reshape(-1)).reshape(candidates.shape)
        probability[candidates < 0] = 0.0
        return candidates, raw, probability

    def retrieve(
        self, batch: Histories, k: int = 10, exclude: Sequence[Any] | None = None
    ) -> np.ndarray:
        """Top-``k`` item indices (-1 padding) in the primary retriever's order: the
        simpler path a reranking must beat to be served."""
        top, _ = self.candidates(batch, exclude)
        top = top[:, :k]
        short = k - top.shape[1]
        return np.pad(top, ((0, 0), (0, short)), constant_values=-1) if short > 0 else top

    def rerank(
        self,
        batch: Histories,
        k: int = 10,
        now: datetime | np.datetime64 | str | Sequence[Any] | None = None,
        exclude: Sequence[Any] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` item indices (-1 padding) and their click probabilities."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        candidates, raw, probability = self.score(batch, now, exclude)
        order = np.argsort(-raw, axis=1, kind="stable")[:, :k]
        top = np.take_along_axis(candidates, order, axis=1)
        probability = np.take_along_axis(probability, order, axis=1)
        short = k - top.shape[1]  # fewer candidates than k: pad as recommenders do
        if short > 0:
            top = np.pad(top, ((0, 0), (0, short)), constant_values=-1)
            probability = np.pad(probability, ((0, 0), (0, short)))
        return top, probability

    def recommend(
        self,
        profiles: Sequence[Profile],
        k: int = 10,
        now: datetime | np.datetime64 | str | None = None,
        exclude: Sequence[Any] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` item ids (``None`` padding) and probabilities for live profiles."""
        if getattr(self, "_positions_of", None) is not self.item_ids:
            self._positions, self._positions_of = item_positions(self.item_ids), self.item_ids
        batch = Histories.from_profiles(profiles, self._positions)
        top, probability = self.rerank(batch, k, now, exclude)
        ids = np.where(top >= 0, self.item_ids[np.maximum(top, 0)], None)
        return ids, probability

    def save(self, path: str | Path) -> Path:
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        for name, model in self.builder.retrievers_.items():
            model.save(folder / "retrievers" / name)
        save_builder(self.builder, folder / "features")
        self.ranker.save(folder / "ranker")
        meta = {"primary": self.primary, "n_candidates": self.n_candidates}
        (folder / "pipeline.json").write_text(json.dumps(meta, indent=2))
        return folder

    @classmethod
    def load(cls, path: str | Path) -> RankingPipeline:
        from bespoke.training.families import family

        folder = Path(path)
        meta = json.loads((folder / "pipeline.json").read_text())
        retrievers: dict[str, Recommender] = {}
        for sub in sorted((folder / "retrievers").iterdir()):
            kind = json.loads((sub / "model.json").read_text())["family"]
            retrievers[sub.name] = family(kind).load(sub)
        builder = load_builder(folder / "features", retrievers)
        return cls(builder, load_ranker(folder / "ranker"), meta["primary"], meta["n_candidates"])
