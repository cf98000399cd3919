"""Churn and lifetime value from point-in-time person features, trained leak-free.

A training row is a person at a cut time: their features from events up to the cut
(:func:`bespoke.segments.features.person_features`, plus the BG/NBD baseline's expected
purchases and probability of being alive, fitted on the same past) and what they did in
the ``horizon_days`` after it — no order (churn) and the value they spent. Several cuts
make one training set; every cut's horizon ends before the data the model is judged on
begins, so no label peeks at the test period.

- :class:`ChurnModel`: a LightGBM classifier of "no order in the next horizon", calibrated
  (isotonic, cross-validated) so that its probabilities can be read as such.
- :class:`ValueModel`: LightGBM regression of the value spent in the horizon.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.calibration import CalibratedClassifierCV

from bespoke.segments.clv import WEEK_DAYS, BetaGeo, GammaGamma, rfm_summary
from bespoke.segments.features import order_events, order_types, person_features


def transactions(events: pd.DataFrame) -> pd.DataFrame:
    """The orders of ``events`` (as :func:`~bespoke.segments.features.load_person_events`
    gives them) in the form the BG/NBD summary takes."""
    return order_events(events).rename(columns={"person": "customer_id"})


def baseline_value(events: pd.DataFrame, cut: pd.Timestamp, horizon_days: float) -> pd.Series:
    """The classic lifetime value at ``cut``: BG/NBD's expected orders in the horizon
    times Gamma–Gamma's expected order value, per person who ordered by then."""
    moment = pd.Timestamp(cut)
    moment = moment.tz_localize(None) if moment.tzinfo else moment
    summary = rfm_summary(transactions(events), moment)
    history = (summary["frequency"], summary["recency"], summary["T"])
    expected = BetaGeo().fit(*history).expected_purchases(horizon_days / WEEK_DAYS, *history)
    spend = GammaGamma().fit(summary["frequency"], summary["monetary_value"])
    average = spend.expected_average_value(summary["frequency"], summary["monetary_value"])
    return pd.Series(expected * average, index=summary.index, name="baseline_value")


def person_rows(
    events: pd.DataFrame, cut: str | pd.Timestamp, horizon_days: float | None = None
) -> pd.DataFrame:
    """Features at ``cut`` for every person who ordered by then; with ``horizon_days``,
    also ``churned`` (no order in the horizon) and ``horizon_value``."""
    if horizon_days is not None and horizon_days <= 0:
        raise ValueError(f"the horizon must be a positive number of days, got {horizon_days}")
    cut = pd.Timestamp(cut)
    cut = cut.tz_localize("UTC") if cut.tzinfo is None else cut.tz_convert("UTC")
    features = person_features(events, cut)
    end = None if horizon_days is None else cut + pd.Timedelta(days=horizon_days)
    summary = rfm_summary(
        transactions(events), cut.tz_localize(None), None if end is None else end.tz_localize(None)
    )
    baseline = BetaGeo().fit(summary["frequency"], summary["recency"], summary["T"])
    history = (summary["frequency"], summary["recency"], summary["T"])
    weeks = (horizon_days or 90.0) / WEEK_DAYS
    features["bgnbd_expected"] = pd.Series(
        baseline.expected_purchases(weeks, *history), index=summary.index
    )
    features["bgnbd_alive"] = pd.Series(baseline.p_alive(*history), index=summary.index)
    if end is not None:
        features["churned"] = (
            (summary["holdout_frequency"] == 0).reindex(features.index).astype(int)
        )
        features["horizon_value"] = summary["holdout_value"].reindex(features.index)
    return features


def training_set(
    events: pd.DataFrame, cuts: Sequence[str | pd.Timestamp], horizon_days: float
) -> pd.DataFrame:
    """Rows of :func:`person_rows` at each cut (each with its horizon), stacked."""
    return pd.concat(
        [person_rows(events, cut, horizon_days).assign(cut=pd.Timestamp(cut)) for cut in cuts]
    )


def recipe(events: pd.DataFrame, as_of: pd.Timestamp, horizon_days: float) -> dict[str, Any]:
    """How to compute a person's model inputs online at ``as_of`` and after
    (:mod:`bespoke.segments.live`): which event types are orders and the BG/NBD
    parameters fitted on everything up to ``as_of``."""
    moment = pd.Timestamp(as_of)
    moment = moment.tz_localize(None) if moment.tzinfo else moment
    past = events[pd.to_datetime(events["timestamp"], utc=True).dt.tz_localize(None) <= moment]
    summary = rfm_summary(transactions(past), moment)
    fitted = BetaGeo().fit(summary["frequency"], summary["recency"], summary["T"])
    types = order_types(past["event_type"].unique())
    return {
        "order_types": None if types is None else list(types),
        "bgnbd": [float(v) for v in fitted.params_],
        "horizon_days": float(horizon_days),
        "as_of": moment.isoformat(),
    }


def feature_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c not in ("churned", "horizon_value", "cut")]


_LGBM = dict(n_estimators=600, learning_rate=0.02, num_leaves=7, min_child_samples=300,
             subsample=0.8, subsample_freq=1, colsample_bytree=0.8, verbose=-1)  # fmt: skip


class ChurnModel:
    """``fit(rows)`` returns self; ``predict_proba(rows)`` is each person's calibrated
    probability of no order in the horizon.

    Fitted with scikit-learn's isotonic, cross-validated calibration; then kept natively
    (``boosters_``: one LightGBM booster per fold, ``calibration_``: each fold's isotonic
    steps), so that a saved model is LightGBM text and JSON, and a prediction — of many
    rows offline or of one person online — is the same few array operations."""

    def __init__(self, random_state: int = 0, **params: object) -> None:
        self.random_state = random_state
        self.params = params

    def get_params(self) -> dict[str, object]:
        return {"random_state": self.random_state, **self.params}

    def fit(self, rows: pd.DataFrame) -> ChurnModel:
        self.columns_ = feature_columns(rows)
        booster = lgb.LGBMClassifier(**{**_LGBM, **self.params}, random_state=self.random_state)
        calibrated = CalibratedClassifierCV(booster, method="isotonic", cv=3)
        calibrated.fit(rows[self.columns_], rows["churned"])
        self.boosters_ = [c.estimator.booster_ for c in calibrated.calibrated_classifiers_]
        self.calibration_ = [
            (c.calibrators[0].X_thresholds_, c.calibrators[0].y_thresholds_)
            for c in calibrated.calibrated_classifiers_
        ]
        return self

    def predict_matrix(self, matrix: np.ndarray) -> np.ndarray:
        """Probabilities for feature rows already in ``columns_`` order."""
        out = np.zeros(len(matrix))
        for booster, (xs, ys) in zip(self.boosters_, self.calibration_, strict=True):
            # Calibrated on the booster's raw score (LGBMClassifier's decision_function).
            raw = booster.predict(matrix, raw_score=True, num_threads=1)
            out += np.interp(np.clip(raw, xs[0], xs[-1]), xs, ys)
        return out / len(self.boosters_)

    def predict_proba(self, rows: pd.DataFrame) -> np.ndarray:
        return self.predict_matrix(rows[self.columns_].to_numpy(dtype=float))

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for index, booster in enumerate(self.boosters_):
            booster.save_model(str(folder / f"fold{index}.txt"))
        (folder / "model.json").write_text(json.dumps({
            "kind": "churn", "params": self.get_params(), "columns": self.columns_,
            "calibration": [[xs.tolist(), ys.tolist()] for xs, ys in self.calibration_],
            "recipe": getattr(self, "recipe_", None),
        }))  # fmt: skip
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> ChurnModel:
        folder = Path(folder)
        meta = json.loads((folder / "model.json").read_text())
        model = cls(**meta["params"])
        model.columns_, model.recipe_ = meta["columns"], meta.get("recipe")
        model.calibration_ = [(np.asarray(x), np.asarray(y)) for x, y in meta["calibration"]]
        model.boosters_ = [
            lgb.Booster(model_file=str(folder / f"fold{i}.txt"))
            for i in range(len(model.calibration_))
        ]
        return model


class ValueModel:
    """``fit(rows, horizon_days)`` returns self; ``predict(rows, horizon_days)`` is each
    person's value in a horizon (scaled from the training horizon's)."""

    def __init__(
        self, random_state: int = 0, objective: str = "regression_l1", **params: object
    ) -> None:
        self.random_state = random_state
        self.objective = objective
        self.params = params

    def get_params(self) -> dict[str, object]:
        return {"random_state": self.random_state, "objective": self.objective, **self.params}

    def fit(self, rows: pd.DataFrame, horizon_days: float) -> ValueModel:
        self.columns_ = feature_columns(rows)
        self.horizon_days_ = float(horizon_days)
        self.booster_ = (
            lgb.LGBMRegressor(
                **{**_LGBM, **self.params}, objective=self.objective, random_state=self.random_state
            )
            .fit(rows[self.columns_], rows["horizon_value"])
            .booster_
        )
        return self

    def predict_matrix(self, matrix: np.ndarray, horizon_days: float | None = None) -> np.ndarray:
        scale = (horizon_days or self.horizon_days_) / self.horizon_days_
        return np.clip(self.booster_.predict(matrix, num_threads=1), 0, None) * scale

    def predict(self, rows: pd.DataFrame, horizon_days: float | None = None) -> np.ndarray:
        return self.predict_matrix(rows[self.columns_].to_numpy(dtype=float), horizon_days)

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.booster_.save_model(str(folder / "booster.txt"))
        (folder / "model.json").write_text(json.dumps({
            "kind": "clv", "params": self.get_params(), "columns": self.columns_,
            "horizon_days": self.horizon_days_, "recipe": getattr(self, "recipe_", None),
        }))  # fmt: skip
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> ValueModel:
        folder = Path(folder)
        meta = json.loads((folder / "model.json").read_text())
        model = cls(**meta["params"])
        model.columns_, model.horizon_days_ = meta["columns"], float(meta["horizon_days"])
        model.recipe_ = meta.get("recipe")
        model.booster_ = lgb.Booster(model_file=str(folder / "booster.txt"))
        return model
