"""Training verbs: behavioural and rule segments with history in the lake; churn and
lifetime value, registered through the champion gate."""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
from sklearn.metrics import roc_auc_score

from bespoke.engine.engines import open_engine
from bespoke.features.collect import new_run_id
from bespoke.features.lake import Lake
from bespoke.features.schema import SEGMENT_SCHEMA
from bespoke.privacy.gate import consented_lake
from bespoke.segments.behaviour import Segmenter
from bespoke.segments.churn import ChurnModel, ValueModel, baseline_value, person_rows, recipe
from bespoke.segments.features import build_person_features, load_person_events
from bespoke.segments.pyfunc import ENTRY_POINT, signature
from bespoke.segments.rules import load_rule_segments, rule_memberships
from bespoke.settings import Settings
from bespoke.training import tracking
from bespoke.training.registry import ALL_DATA, ARTIFACTS, Registry, experiment_name

# --- membership with history ---------------------------------------------------------------


def write_assignments(
    lake: Lake,
    dataset: str,
    assignments: pd.DataFrame,
    valid_from: str | datetime,
    model: str,
) -> int:
    """Keep ``assignments`` (indexed by person; ``segment`` and ``rule_segments``) as of
    ``valid_from`` in the lake's ``segments`` table, as one lake run. Only people whose
    segments changed since their latest assignment (or who have none) get a row, so the
    ``segments_history`` view shows each change once, with when it stopped being true.
    Returns the rows written."""
    moment = pd.Timestamp(valid_from)
    moment = moment.tz_localize("UTC") if moment.tzinfo is None else moment.tz_convert("UTC")
    frame = pd.DataFrame(
        {
            "person": assignments.index.astype(str),
            "segment": assignments.get("segment", pd.Series(None, index=assignments.index)).to_numpy(),
            "rule_segments": [sorted(v) if isinstance(v, list) else [] for v in
                              assignments.get("rule_segments", pd.Series([[]] * len(assignments), index=assignments.index))],
        }
    )  # fmt: skip
    latest = (
        lake.connect()
        .execute("SELECT person, segment, rule_segments FROM segments WHERE dataset = ?", [dataset])
        .df()
    )
    if len(latest):
        before = {p: (s, list(r)) for p, s, r in latest.itertuples(index=False)}
        keep = [before.get(p) != (s, r) for p, s, r in frame.itertuples(index=False)]
        frame = frame[keep]
    if frame.empty:
        return 0
    now = datetime.now(UTC)
    run_id = new_run_id(now)
    table = pa.Table.from_pandas(
        frame.assign(dataset=dataset, valid_from=moment, model=model, run_id=run_id,
                     written_at=pd.Timestamp(now)),
        schema=SEGMENT_SCHEMA, preserve_index=False,
    )  # fmt: skip
    with lake.transaction(run_id) as writer:
        writer.write("segments", table, dataset)
        writer.commit({"run_id": run_id, "dataset": dataset, "source": "segments",
                       "started_at": now.isoformat(), "valid_from": moment.isoformat(),
                       "model": model, "assignments_written": len(frame)})  # fmt: skip
    return len(frame)


# --- training: the lifecycle verb ----------------------------------------------------------


@dataclass
class SegmentsResult:
    dataset: str
    as_of: str
    model: Segmenter
    people: int
    sizes: dict[str, int]
    rule_sizes: dict[str, int]
    written: int
    run_id: str
    version: str
    promoted: bool
    decision: str


#: A refit segmentation less stable than this does not replace a champion.
MIN_STABILITY = 0.9


def champion_segmenter(settings: Settings, dataset: str) -> Segmenter | None:
    """The ``@champion`` of ``bespoke-segments-<dataset>`` (what the service re-scores with
    and whose names the next fit keeps), or None."""
    loaded = Registry.of(settings).load("segments", dataset)
    return None if loaded is None else loaded.model


def train_segments(
    settings: Settings,
    dataset: str,
    as_of: str | datetime,
    rules_path: str | Path | None = None,
    k_range: tuple[int, int] = (3, 7),
) -> SegmentsResult:
    """Person features as of ``as_of`` → behavioural segments (names kept from the
    ``@champion`` segment model) and rule segments → assignments with history in the
    lake. The run is tracked in MLflow (experiment ``segments-<dataset>``: parameters, k,
    silhouettes, stability) and the model registered as ``bespoke-segments-<dataset>``;
    it becomes ``@champion`` when it is the first or its bootstrap stability reaches
    :data:`MIN_STABILITY` (an unstable refit would relabel people at random)."""
    rules = load_rule_segments(rules_path) if rules_path else []
    lake = consented_lake(settings)  # who withdrew personalization is left out
    engine = open_engine(settings, lake)  # DuckDB, or Spark (BESPOKE_ENGINE)
    moment = pd.Timestamp(as_of)
    moment = moment.tz_localize("UTC") if moment.tzinfo is None else moment.tz_convert("UTC")
    features = build_person_features(engine, dataset, moment)
    registry = Registry.of(settings)
    previous = champion_segmenter(settings, dataset)
    model = Segmenter(k_range=k_range).fit(features, previous=previous)
    attributes = engine.frame(
        "SELECT user_id, * EXCLUDE (user_id, dataset, imputed, run_id, ingested_at) FROM users "
        "WHERE dataset = ?", [dataset]
    ).set_index("user_id")  # fmt: skip
    members = rule_memberships(rules, features, attributes) if rules else pd.Series(
        [[] for _ in range(len(features))], index=features.index
    )  # fmt: skip
    with (
        tracking.session(settings, experiment_name("segments", dataset)) as experiment,
        mlflow.start_run(run_name=f"segments {dataset}", experiment_id=experiment) as run,
    ):
        mlflow.set_tags(tracking.run_tags(settings, dataset=dataset, as_of=str(as_of)))
        mlflow.log_params({"k_range": list(k_range), "features": list(model.features),
                           "rules": str(rules_path or ""), "previous": str(previous is not None)})  # fmt: skip
        mlflow.log_metrics({"k": model.k_, "stability_ari": model.stability_,
                            **{f"silhouette_k{k}": v for k, v in model.silhouettes_.items()}})  # fmt: skip
        run_id = run.info.run_id
        example = features[list(model.features)].head(3)
        with tempfile.TemporaryDirectory() as scratch:
            folder = Path(scratch) / ARTIFACTS["segments"]
            model.save(folder / "segments.json")
            version = registry.register(
                "segments", dataset, ENTRY_POINT, {ARTIFACTS["segments"]: str(folder)},
                signature("segments", list(model.features)), example,
                held_out=model.stability_, trained_on=ALL_DATA,
                data_fingerprint=_features_fingerprint(features),
            )  # fmt: skip
        promoted = previous is None or model.stability_ >= MIN_STABILITY
        decision = (
            "no champion yet: promoted" if previous is None else
            f"stability ARI {model.stability_:.3f} {'≥' if promoted else '<'} {MIN_STABILITY}: "
            + ("promoted" if promoted else "not promoted, the champion's segments stay")
        )  # fmt: skip
        mlflow.set_tags({"gate.decision": decision, "gate.promoted": str(promoted)})
        if promoted:
            registry.promote("segments", dataset, version)
    served = model if promoted or previous is None else previous
    segment = served.predict(features)
    written = write_assignments(
        lake, dataset, pd.DataFrame({"segment": segment, "rule_segments": members}),
        moment, f"bespoke-segments-{dataset}/{version if served is model else 'champion'}",
    )  # fmt: skip
    rule_sizes = {r.name: int(sum(r.name in m for m in members)) for r in rules}
    return SegmentsResult(
        dataset=dataset, as_of=str(as_of), model=served, people=len(features),
        sizes=segment.value_counts().to_dict(), rule_sizes=rule_sizes, written=written,
        run_id=run_id, version=version, promoted=promoted, decision=decision,
    )  # fmt: skip


# --- churn and lifetime value --------------------------------------------------------------


@dataclass
class PersonModelResult:
    """One person model's training: its held-out score, the baseline's, and the gate."""

    kind: str
    metric: str
    held_out: float
    baseline: float
    version: str | None = None
    promoted: bool = False
    decision: str = ""


@dataclass
class ChurnResult:
    dataset: str
    as_of: str
    horizon_days: float
    cuts: list[str]
    train_rows: int
    churn: PersonModelResult
    clv: PersonModelResult
    params: dict[str, dict[str, object]]
    run_id: str


def training_cuts(
    as_of: pd.Timestamp, horizon_days: float, count: int = 3, step_days: int = 30
) -> list[pd.Timestamp]:
    """``count`` cuts, ``step_days`` apart, the latest one horizon before ``as_of``: every
    label they carry is known by ``as_of``."""
    latest = as_of - pd.Timedelta(days=horizon_days)
    return [latest - pd.Timedelta(days=step_days * i) for i in reversed(range(count))]


def tune_churn(
    fit: pd.DataFrame, check: pd.DataFrame, trials: int, seed: int = 0
) -> dict[str, object]:
    """LightGBM parameters for the churn model, by an Optuna study (TPE) maximising the
    AUC on ``check`` of models fitted on ``fit``; ``{}`` (the defaults) when ``trials`` is
    0 or no trial beats the defaults."""
    if trials <= 0:
        return {}
    import optuna

    default = roc_auc_score(check["churned"], ChurnModel().fit(fit).predict_proba(check))

    def objective(trial: optuna.Trial) -> float:
        params = {
            "num_leaves": trial.suggest_int("num_leaves", 3, 31, log=True),
            "min_child_samples": trial.suggest_int("min_child_samples", 20, 1000, log=True),
            "learning_rate": trial.suggest_float("learning_rate", 0.005, 0.1, log=True),
            "n_estimators": trial.suggest_int("n_estimators", 100, 1000, step=100),
            "colsample_bytree": trial.suggest_float("colsample_bytree", 0.4, 1.0),
        }
        model = ChurnModel(**params).fit(fit)
        return float(roc_auc_score(check["churned"], model.predict_proba(check)))

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    study.optimize(objective, n_trials=trials)
    return dict(study.best_params) if study.best_value > default else {}


def tune_value(
    fit: pd.DataFrame, check: pd.DataFrame, horizon_days: float, trials: int, seed: int = 0
) -> dict[str, object]:
    """LightGBM parameters for the value model, by an Optuna study minimising the MAE on
    ``check`` of models fitted on ``fit``; ``{}`` when ``trials`` is 0 or no trial beats
    the defaults."""
    if trials <= 0:
        return {}
    import optuna

    def mae(model: ValueModel) -> float:
        fitted = model.fit(fit, horizon_days)
        return float(np.abs(fitted.predict(check) - check["horizon_value"]).mean())

    default = mae(ValueModel())

    def objective(trial: optuna.Trial) -> float:
        return mae(ValueModel(
            num_leaves=trial.suggest_int("num_leaves", 3, 31, log=True),
            min_child_samples=trial.suggest_int("min_child_samples", 20, 1000, log=True),
            learning_rate=trial.suggest_float("learning_rate", 0.005, 0.1, log=True),
            n_estimators=trial.suggest_int("n_estimators", 100, 800, step=100),
        ))  # fmt: skip

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed))
    study.optimize(objective, n_trials=trials)
    return dict(study.best_params) if study.best_value < default else {}


def train_churn(
    settings: Settings,
    dataset: str,
    as_of: str | pd.Timestamp,
    horizon_days: float = 92.0,
    trials: int = 0,
) -> ChurnResult:
    """Churn and lifetime value from the lake's events up to ``as_of``.

    Training rows are cuts whose horizons end by ``as_of``; the latest cut is held out.
    Parameters are tuned (``trials`` Optuna trials: fitted on the oldest cuts, checked
    on the next), the models fitted on the older cuts are scored on the held-out one
    against the classic baselines (BG/NBD's ranking for churn, BG/NBD × Gamma–Gamma for
    value), then refit on every cut and registered as ``bespoke-churn-<dataset>`` and
    ``bespoke-clv-<dataset>``. Each passes the champion gate only when it beats its
    baseline and the champion's configuration refit and scored on the same cuts. The run
    goes to MLflow experiment ``churn-<dataset>``."""
    if horizon_days <= 0:
        raise ValueError(f"the horizon must be a positive number of days, got {horizon_days}")
    moment = pd.Timestamp(as_of)
    moment = moment.tz_localize("UTC") if moment.tzinfo is None else moment.tz_convert("UTC")
    lake = consented_lake(settings)
    events = load_person_events(open_engine(settings, lake), dataset)
    cuts = training_cuts(moment, horizon_days)
    first_event = pd.to_datetime(events["timestamp"], utc=True).min()
    if cuts[0] <= first_event:
        raise ValueError(
            f"{dataset} starts {first_event.date()}: too little history before {moment.date()} "
            f"for {len(cuts)} cuts with a {horizon_days:g}-day horizon; pick a later --as-of "
            "or a shorter --horizon-days"
        )
    by_cut = [person_rows(events, cut, horizon_days).assign(cut=cut) for cut in cuts]
    fit_rows, held_out = pd.concat(by_cut[:-1]), by_cut[-1]
    params = tune_churn(by_cut[0], by_cut[1], trials)
    value_params = tune_value(by_cut[0], by_cut[1], horizon_days, trials)

    def churn_auc(model: ChurnModel) -> float:
        fitted = type(model)(**model.get_params()).fit(fit_rows)
        return float(roc_auc_score(held_out["churned"], fitted.predict_proba(held_out)))

    def value_mae(model: ValueModel) -> float:
        fitted = type(model)(**model.get_params()).fit(fit_rows, horizon_days)
        return float(np.abs(fitted.predict(held_out) - held_out["horizon_value"]).mean())

    classic = baseline_value(events, cuts[-1], horizon_days).reindex(held_out.index).fillna(0.0)
    results = {
        "churn": PersonModelResult(
            "churn", "auc", churn_auc(ChurnModel(**params)),
            float(roc_auc_score(held_out["churned"], -held_out["bgnbd_expected"])),
        ),
        "clv": PersonModelResult(
            "clv", "mae", value_mae(ValueModel(**value_params)),
            float(np.abs(classic - held_out["horizon_value"]).mean()),
        ),
    }  # fmt: skip
    every = pd.concat(by_cut)
    how = recipe(events, moment, horizon_days)
    models: dict[str, ChurnModel | ValueModel] = {
        "churn": ChurnModel(**params).fit(every),
        "clv": ValueModel(**value_params).fit(every, horizon_days),
    }
    for model in models.values():
        model.recipe_ = how
    scorers = {"churn": churn_auc, "clv": value_mae}
    baselines = {"churn": "BG/NBD", "clv": "BG/NBD × Gamma–Gamma"}
    registry = Registry.of(settings)
    with (
        tracking.session(settings, experiment_name("churn", dataset)) as experiment,
        mlflow.start_run(run_name=f"churn {dataset}", experiment_id=experiment) as run,
    ):
        mlflow.set_tags(tracking.run_tags(settings, dataset=dataset, as_of=str(moment)))
        mlflow.log_params({"horizon_days": horizon_days, "cuts": [str(c.date()) for c in cuts],
                           "trials": trials, **{f"churn_{k}": v for k, v in params.items()},
                           **{f"clv_{k}": v for k, v in value_params.items()}})  # fmt: skip
        mlflow.log_metrics({"validation_auc": results["churn"].held_out,
                            "bgnbd_auc": results["churn"].baseline,
                            "validation_mae": results["clv"].held_out,
                            "bgnbd_gg_mae": results["clv"].baseline,
                            "train_rows": len(every)})  # fmt: skip
        importance = models["churn"].boosters_[0].feature_importance().tolist()
        mlflow.log_dict({"features": models["churn"].columns_,
                         "importance": dict(zip(models["churn"].columns_, importance, strict=True))},
                        "churn/features.json")  # fmt: skip
        run_id = run.info.run_id
        fingerprint = _fingerprint(events, moment)
        example = every[models["churn"].columns_].head(3)
        for kind, model in models.items():
            result = results[kind]
            with tempfile.TemporaryDirectory() as scratch:
                folder = model.save(Path(scratch) / ARTIFACTS[kind])
                result.version = registry.register(
                    kind, dataset, ENTRY_POINT, {ARTIFACTS[kind]: str(folder)},
                    signature(kind, model.columns_), example, held_out=result.held_out, trained_on=ALL_DATA,
                    data_fingerprint=fingerprint,
                )  # fmt: skip
            decision = registry.gate(
                kind, dataset, result.version, result.held_out, run_id,
                lambda champion, kind=kind: scorers[kind](champion.model),
                baseline=(baselines[kind], result.baseline),
            )  # fmt: skip
            result.promoted, result.decision = decision.promoted, decision.text
    return ChurnResult(
        dataset=dataset, as_of=str(moment), horizon_days=horizon_days,
        cuts=[str(c.date()) for c in cuts], train_rows=len(every), churn=results["churn"],
        clv=results["clv"], params={"churn": params, "clv": value_params}, run_id=run_id,
    )  # fmt: skip


def _features_fingerprint(features: pd.DataFrame) -> str:
    """A digest of the person features a model was fitted on, the same whichever engine
    computed them (rounded below the last bits where the engines' sums may differ)."""
    digest = pd.util.hash_pandas_object(features.round(9), index=True)
    return hashlib.sha256(digest.to_numpy().tobytes()).hexdigest()[:16]


def _fingerprint(events: pd.DataFrame, moment: pd.Timestamp) -> str:
    """A digest of the events a model was fitted on (up to ``moment``)."""
    past = events[pd.to_datetime(events["timestamp"], utc=True) <= moment]
    digest = pd.util.hash_pandas_object(past[["person", "timestamp", "value"]], index=False)
    return hashlib.sha256(digest.to_numpy().tobytes()).hexdigest()[:16]
