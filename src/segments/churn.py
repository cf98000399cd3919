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

from collections.abc import Sequence
from dataclasses import dataclass

import lightgbm as lgb
import mlflow
import numpy as np
import pandas as pd
from sklearn.calibration import CalibratedClassifierCV
from sklearn.metrics import roc_auc_score

from bespoke.features.lake import Lake
from bespoke.segments.clv import WEEK_DAYS, BetaGeo, rfm_summary
from bespoke.segments.features import load_person_events, person_features
from bespoke.settings import Settings
from bespoke.training import tracking


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
    transactions = events.rename(columns={"person": "customer_id"})
    summary = rfm_summary(
        transactions, cut.tz_localize(None), None if end is None else end.tz_localize(None)
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


def feature_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c not in ("churned", "horizon_value", "cut")]


_LGBM = dict(n_estimators=600, learning_rate=0.02, num_leaves=7, min_child_samples=300,
             subsample=0.8, subsample_freq=1, colsample_bytree=0.8, verbose=-1)  # fmt: skip


class ChurnModel:
    """``fit(rows)`` returns self; ``predict_proba(rows)`` is each person's calibrated
    probability of no order in the horizon."""

    def __init__(self, random_state: int = 0, **params: object) -> None:
        self.random_state = random_state
        self.params = params

    def fit(self, rows: pd.DataFrame) -> ChurnModel:
        self.columns_ = feature_columns(rows)
        booster = lgb.LGBMClassifier(**{**_LGBM, **self.params}, random_state=self.random_state)
        self.model_ = CalibratedClassifierCV(booster, method="isotonic", cv=3)
        self.model_.fit(rows[self.columns_], rows["churned"])
        return self

    def predict_proba(self, rows: pd.DataFrame) -> np.ndarray:
        return self.model_.predict_proba(rows[self.columns_])[:, 1]


class ValueModel:
    """``fit(rows)`` returns self; ``predict(rows, horizon_days)`` is each person's value
    in a horizon (scaled from the training horizon's)."""

    def __init__(
        self, random_state: int = 0, objective: str = "regression_l1", **params: object
    ) -> None:
        self.random_state = random_state
        self.objective = objective
        self.params = params

    def fit(self, rows: pd.DataFrame, horizon_days: float) -> ValueModel:
        self.columns_ = feature_columns(rows)
        self.horizon_days_ = horizon_days
        self.model_ = lgb.LGBMRegressor(
            **{**_LGBM, **self.params}, objective=self.objective, random_state=self.random_state
        ).fit(rows[self.columns_], rows["horizon_value"])
        return self

    def predict(self, rows: pd.DataFrame, horizon_days: float) -> np.ndarray:
        scale = horizon_days / self.horizon_days_
        return np.clip(self.model_.predict(rows[self.columns_]), 0, None) * scale


# --- training: the lifecycle verb ----------------------------------------------------------


@dataclass
class ChurnResult:
    dataset: str
    as_of: str
    horizon_days: float
    cuts: list[str]
    train_rows: int
    validation_auc: float
    baseline_auc: float
    run_id: str


def training_cuts(
    as_of: pd.Timestamp, horizon_days: float, count: int = 3, step_days: int = 30
) -> list[pd.Timestamp]:
    """``count`` cuts, ``step_days`` apart, the latest one horizon before ``as_of``: every
    label they carry is known by ``as_of``."""
    latest = as_of - pd.Timedelta(days=horizon_days)
    return [latest - pd.Timedelta(days=step_days * i) for i in reversed(range(count))]


def train_churn(
    settings: Settings, dataset: str, as_of: str | pd.Timestamp, horizon_days: float = 92.0
) -> ChurnResult:
    """Train the churn model on the lake's events up to ``as_of``: cuts whose horizons end
    by ``as_of``; the latest cut is held out to measure it (AUC against BG/NBD's ranking on
    the same rows), then the model is fitted on all of them. Tracked in MLflow (experiment
    ``churn-<dataset>``)."""
    if horizon_days <= 0:
        raise ValueError(f"the horizon must be a positive number of days, got {horizon_days}")
    moment = pd.Timestamp(as_of)
    moment = moment.tz_localize("UTC") if moment.tzinfo is None else moment.tz_convert("UTC")
    events = load_person_events(Lake(settings.lake_url), dataset)
    cuts = training_cuts(moment, horizon_days)
    first_event = pd.to_datetime(events["timestamp"], utc=True).min()
    if cuts[0] <= first_event:
        raise ValueError(
            f"{dataset} starts {first_event.date()}: too little history before {moment.date()} "
            f"for {len(cuts)} cuts with a {horizon_days:g}-day horizon; pick a later --as-of "
            "or a shorter --horizon-days"
        )
    fit_rows = training_set(events, cuts[:-1], horizon_days)
    held_out = person_rows(events, cuts[-1], horizon_days)
    probability = ChurnModel().fit(fit_rows).predict_proba(held_out)
    validation_auc = float(roc_auc_score(held_out["churned"], probability))
    baseline_auc = float(roc_auc_score(held_out["churned"], -held_out["bgnbd_expected"]))
    model = ChurnModel().fit(pd.concat([fit_rows, held_out.assign(cut=cuts[-1])]))
    with (
        tracking.session(settings, f"churn-{dataset}") as experiment,
        mlflow.start_run(run_name=f"churn {dataset}", experiment_id=experiment) as run,
    ):
        mlflow.set_tags(tracking.run_tags(settings, dataset=dataset, as_of=str(moment)))
        mlflow.log_params({"horizon_days": horizon_days, "cuts": [str(c.date()) for c in cuts],
                           **{f"lgbm_{k}": v for k, v in _LGBM.items()}})  # fmt: skip
        mlflow.log_metrics({"validation_auc": validation_auc, "bgnbd_auc": baseline_auc,
                            "train_rows": len(fit_rows) + len(held_out)})  # fmt: skip
        booster = model.model_.calibrated_classifiers_[0].estimator
        mlflow.log_dict(
            {"features": model.columns_, "importance": dict(zip(model.columns_, booster.feature_importances_.tolist(), strict=True))},
            "churn/features.json",
        )  # fmt: skip
        run_id = run.info.run_id
    return ChurnResult(
        dataset=dataset, as_of=str(moment), horizon_days=horizon_days,
        cuts=[str(c.date()) for c in cuts], train_rows=len(fit_rows) + len(held_out),
        validation_auc=validation_auc, baseline_auc=baseline_auc, run_id=run_id,
    )  # fmt: skip
