"""Retrain when the data drifted or the champion's quality degraded.

One run (:func:`retrain`):

1. the checks, both written to one report folder ``<reports_dir>/<timestamp>/``: the
   drift report between a reference and a current window
   (:func:`bespoke.monitoring.drift.run_drift`) and the quality of the ``@champion``
   models on the current window (:func:`bespoke.monitoring.quality.run_quality`);
2. with ``if_drift``, training only when drift was found, quality degraded, or there is
   no ``@champion`` recommender yet; without it, always (the checks still run, for the
   record, and a check that cannot run is noted instead of stopping the retraining);
3. tuning (seeded TPE, ``trials`` trials) and refitting of the champion's family with
   the champion's protocol, registration and the champion gate — the same code as
   ``bespoke tune recommender`` — and likewise the click-through ranker when one is
   registered;
4. the report folder (drift HTML and JSON, ``quality.json``, ``retrain.json`` with the
   reasons and the gate decisions) attached to every challenger's MLflow run under
   ``monitoring/``, with the reasons as the run's ``retrain.reasons`` tag.

Tuning here never rewrites the tuned-parameters file the benchmark reads (unless a
``params_file`` is given). One retraining at a time per home: a second one started while
the first runs stops with an error instead of racing it to the registry.

:func:`run_every` repeats a job on a fixed period for machines without cron, surviving a
failed run.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bespoke.monitoring.quality import (
    NoChampionError,
    QualityConfig,
    QualityError,
    QualityResult,
    load_config,
    new_report_dir,
    run_quality,
)
from bespoke.settings import Settings

if TYPE_CHECKING:
    from bespoke.monitoring.drift import DriftConfig, DriftResult
    from bespoke.training.ranking import RankerResult
    from bespoke.training.train import TrainResult

#: What the report folder is called inside a challenger's MLflow run.
ARTIFACT_PATH = "monitoring"
SUMMARY_FILE = "retrain.json"
LOCK_FILE = "retrain.lock"
#: The family and protocol a first champion is trained with.
DEFAULT_FAMILY = "ease"
DEFAULT_PROTOCOL = "temporal"

_RELATIVE = re.compile(r"^\s*last\s+(\d+)\s*(?:days?|d)\s*$", re.IGNORECASE)
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


class RetrainError(ValueError):
    """The retraining cannot start or run: a specific message for the CLI (exit 2)."""


@dataclass
class RetrainResult:
    """What one retraining run found, did, and where it wrote it."""

    dataset: str
    if_drift: bool
    reference: str
    current: str
    triggered: bool
    reasons: list[str]
    notes: list[str]
    report_dir: Path
    summary: Path
    drift: DriftResult | None = None
    quality: QualityResult | None = None
    recommender: TrainResult | None = None
    ranker: RankerResult | None = None
    trained: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "if_drift": self.if_drift,
            "windows": {"reference": self.reference, "current": self.current},
            "triggered": self.triggered,
            "reasons": self.reasons,
            "notes": self.notes,
            "drift": None
            if self.drift is None
            else {
                "drifted": self.drift.drifted,
                "tables": self.drift.drifted_tables,
                "json": self.drift.json.name,
            },
            "quality": None
            if self.quality is None
            else {"degraded": self.quality.degraded, "json": self.quality.json.name},
            "trained": self.trained,
        }


def parse_duration(text: str) -> timedelta:
    """``90s``, ``30m``, ``6h``, ``1d``, ``1w`` or a sum such as ``1h30m``."""
    cleaned = text.strip()
    parts = _DURATION_PART.findall(cleaned)
    if not parts or _DURATION_PART.sub("", cleaned).strip():
        raise RetrainError(
            f"--every {text!r}: expected a duration such as 90s, 30m, 6h, 1d or 1h30m"
        )
    seconds = sum(float(number) * _UNIT_SECONDS[unit.lower()] for number, unit in parts)
    if seconds < 1:
        raise RetrainError(f"--every {text!r}: the period must be at least one second")
    return timedelta(seconds=seconds)


def default_reference(current: str) -> str:
    """The window just before ``current`` and as long: ``last N days`` →
    ``previous N days``. A date range has no implied reference."""
    match = _RELATIVE.match(current)
    if match is None:
        raise RetrainError(
            f"--current {current!r} is not 'last N days': give --reference too "
            "(e.g. --reference 2024-01-01..2024-01-31)"
        )
    return f"previous {match.group(1)} days"


@contextmanager
def exclusive(settings: Settings) -> Iterator[None]:
    """Hold ``<home>/retrain.lock`` for the duration, or fail at once when another
    retraining holds it."""
    import fcntl

    assert settings.home is not None
    settings.home.mkdir(parents=True, exist_ok=True)
    path = settings.home / LOCK_FILE
    with path.open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            raise RetrainError(
                f"another bespoke retrain is running for {settings.home} (lock {path}); "
                "this run did nothing"
            ) from error
        yield  # the lock goes with the file when it closes


@dataclass(frozen=True)
class Inputs:
    """The checked inputs of a run: both configurations and both windows."""

    quality: QualityConfig
    drift: DriftConfig
    reference: str
    current: str


def check_inputs(
    *,
    trials: int = 10,
    model: str | None = None,
    protocol: str | None = None,
    reference: str | None = None,
    current: str | None = None,
    drift_config: Path | None = None,
    quality_config: Path | None = None,
) -> Inputs:
    """Everything that can be checked without the data: a schedule checks once, before
    its first run, rather than failing the same way at every run."""
    if trials < 1:
        raise RetrainError(f"--trials must be at least 1, got {trials}")
    if protocol is not None and protocol not in ("ms-stratified", "temporal"):
        raise RetrainError(f"--protocol {protocol!r}: use ms-stratified or temporal")
    if model is not None:
        from bespoke.training.families import family

        family(model)  # names the known families
    quality = load_config(quality_config)
    drift = _drift_config(drift_config)
    current = current or quality.window
    _check_window("--current", current)
    reference = reference or default_reference(current)
    _check_window("--reference", reference)
    return Inputs(quality, drift, reference, current)


def retrain(
    settings: Settings,
    dataset: str,
    *,
    if_drift: bool = True,
    reference: str | None = None,
    current: str | None = None,
    trials: int = 10,
    model: str | None = None,
    protocol: str | None = None,
    drift_config: Path | None = None,
    quality_config: Path | None = None,
    params_file: Path | None = None,
    seed: int = 42,
    progress: Callable[[str], None] | None = None,
) -> RetrainResult:
    """Check, and retrain when needed (always without ``if_drift``); see the module doc.

    ``current`` defaults to the quality config's window and ``reference`` to the window
    just before it; ``model`` and ``protocol`` to the champion's (``ease`` and
    ``temporal`` when there is none). Raises :class:`RetrainError` (or another
    ``ValueError`` naming the problem) for bad input, before anything is registered.
    """
    say = progress or (lambda message: None)
    inputs = check_inputs(
        trials=trials, model=model, protocol=protocol, reference=reference, current=current,
        drift_config=drift_config, quality_config=quality_config,
    )  # fmt: skip
    with exclusive(settings):
        folder = new_report_dir(settings)
        try:
            result = _retrain(
                settings, dataset, folder, if_drift, inputs.reference, inputs.current, trials,
                model, protocol, inputs.drift, inputs.quality, params_file, seed, say,
            )  # fmt: skip
        except BaseException:
            _remove_if_empty(folder)
            raise
    return result


def _retrain(
    settings: Settings,
    dataset: str,
    folder: Path,
    if_drift: bool,
    reference: str,
    current: str,
    trials: int,
    model: str | None,
    protocol: str | None,
    drift_config: DriftConfig,
    quality_config: QualityConfig,
    params_file: Path | None,
    seed: int,
    say: Callable[[str], None],
) -> RetrainResult:
    from bespoke.monitoring.drift import run_drift

    reasons: list[str] = [] if if_drift else ["forced (run without --if-drift)"]
    notes: list[str] = []
    result = RetrainResult(
        dataset, if_drift, reference, current, False, reasons, notes, folder,
        folder / SUMMARY_FILE,
    )  # fmt: skip

    say(f"drift: {reference} → {current}")
    try:
        result.drift = run_drift(
            settings, dataset, reference, current, config=drift_config, out_dir=folder
        )
    except ValueError as error:
        if if_drift:
            raise
        notes.append(f"the drift check did not run: {error}")
    if result.drift is not None and result.drift.drifted:
        tables = ", ".join(result.drift.drifted_tables) or "the report"
        reasons.append(f"drift in {tables} ({reference} → {current})")

    items = _has_items(settings, dataset)
    if items:
        say(f"quality of the @champion models on {current}")
        try:
            result.quality = run_quality(
                settings, dataset, window=current, config=quality_config, out_dir=folder
            )
        except NoChampionError:
            reasons.append("no @champion recommender yet")
        except QualityError as error:
            if if_drift:
                raise
            notes.append(f"the quality check did not run: {error}")
    else:
        notes.append(f"{dataset} has no items: no recommender quality to check")
    if result.quality is not None and result.quality.degraded:
        reasons.append(f"quality degraded: {_degraded_metrics(result.quality)}")

    result.triggered = bool(reasons)
    if result.triggered:
        _train(settings, dataset, result, trials, model, protocol, params_file, seed, say)
    _write_summary(result)
    if result.triggered:
        _attach(settings, result)
    return result


def _drift_config(path: Path | None) -> DriftConfig:
    from bespoke.monitoring.drift import load_drift_config

    return load_drift_config(path)


def _check_window(option: str, text: str) -> None:
    """The window parses (whether it holds data is for the checks to say)."""
    from bespoke.monitoring.windows import parse_window

    try:
        parse_window(text, datetime.now(UTC))
    except ValueError as error:
        raise RetrainError(f"{option}: {error}") from error


def _remove_if_empty(folder: Path) -> None:
    with suppress(OSError):
        folder.rmdir()  # only an empty folder goes: a partial report stays as evidence


def _degraded_metrics(quality: QualityResult) -> str:
    return ", ".join(
        f"{model.kind} {check.metric} {check.at_training:.4f} → {check.now:.4f}"
        for model in quality.models
        for check in model.checks
        if check.verdict == "degraded" and check.at_training is not None and check.now is not None
    )


def _champion_tags(settings: Settings, kind: str, dataset: str) -> dict[str, str] | None:
    """The tags of the ``@champion`` version's training run (``model``, ``protocol``),
    or None when there is no champion of ``kind``."""
    from bespoke.training.registry import Registry

    found = Registry.of(settings).champion_run(kind, dataset)
    return None if found is None else dict(found[1].data.tags)


def _train(
    settings: Settings,
    dataset: str,
    result: RetrainResult,
    trials: int,
    model: str | None,
    protocol: str | None,
    params_file: Path | None,
    seed: int,
    say: Callable[[str], None],
) -> None:
    from bespoke.training.params import params_file_of, params_for
    from bespoke.training.train import train_recommender
    from bespoke.training.tune import SEARCH_SPACES, tune_ranker, tune_recommender

    _train_person_models(settings, dataset, result, trials, say)
    if not _has_items(settings, dataset):
        return  # no recommender or ranker to train (noted with the quality check)
    tags = _champion_tags(settings, "recommender", dataset) or {}
    family = model or tags.get("model") or DEFAULT_FAMILY
    chosen = protocol or tags.get("protocol") or DEFAULT_PROTOCOL
    if family in SEARCH_SPACES:
        say(f"tuning {family} ({trials} trials, {chosen}), refit, champion gate")
        tuned = tune_recommender(
            settings, dataset, family, trials, protocol=chosen,  # type: ignore[arg-type]
            seed=seed, params_file=params_file, register=True,
        )  # fmt: skip
        result.recommender = tuned.final  # type: ignore[assignment]
        tuning = {"trials": trials, "best_params": tuned.best_params,
                  "best_validation_ndcg@10": tuned.best_value}  # fmt: skip
    else:
        # Blends and content models have no search space of their own here: refit with
        # the parameters tuning wrote for them.
        source = params_file or params_file_of(settings)
        params = params_for(source, dataset, chosen, family)
        result.notes.append(f"{family} has no search space: refit with its tuned parameters")
        say(f"training {family} ({chosen}), champion gate")
        result.recommender = train_recommender(
            settings,
            dataset,
            family,
            params,
            protocol=chosen,  # type: ignore[arg-type]
        )
        tuning = {"trials": 0, "params": params}
    result.trained["recommender"] = _outcome(result.recommender, family, chosen, tuning)

    ranker_tags = _champion_tags(settings, "ranker", dataset)
    if ranker_tags is not None:
        ranker_protocol = protocol or ranker_tags.get("protocol") or chosen
        say(f"tuning the ranker ({trials} trials, {ranker_protocol}), refit, champion gate")
        tuned_ranker = tune_ranker(
            settings, dataset, trials, protocol=ranker_protocol,  # type: ignore[arg-type]
            seed=seed, params_file=params_file, register=True,
        )  # fmt: skip
        result.ranker = tuned_ranker.final  # type: ignore[assignment]
        if result.ranker is not None:
            result.trained["ranker"] = _outcome(
                result.ranker, "ranker", ranker_protocol,
                {"trials": trials, "best_params": tuned_ranker.best_params},
            )  # fmt: skip
        else:
            result.notes.append("ranker tuning completed no trial: nothing refit")


def _has_items(settings: Settings, dataset: str) -> bool:
    """Whether the dataset's events name items (CDNOW's purchases do not); a dataset
    without events is bad input."""
    from bespoke.features.lake import Lake
    from bespoke.training.data import event_counts

    events, items = event_counts(Lake(settings.lake_url or ""), dataset)
    if not events:
        raise RetrainError(f"dataset {dataset!r} has no events in the lake")
    return bool(items)


def _train_person_models(
    settings: Settings, dataset: str, result: RetrainResult, trials: int, say: Callable[[str], None]
) -> None:
    """Refit what is trained of the segment model (names kept) and the churn and value
    models (through the gate), as of the dataset's latest event."""
    from bespoke.features.lake import Lake
    from bespoke.segments.live import LiveScorer
    from bespoke.segments.train import train_churn, train_segments

    scorer = LiveScorer.load(settings, dataset)
    if not scorer.active:
        return
    (latest,) = Lake(settings.lake_url or "").connect().execute(
        "SELECT max(timestamp) FROM events WHERE dataset = ?", [dataset]
    ).fetchone()  # fmt: skip
    as_of = latest.isoformat()
    if scorer.segmenter is not None:
        say(f"segments as of {as_of} (names kept)")
        segments = train_segments(settings, dataset, as_of)
        result.trained["segments"] = {
            "run_id": segments.run_id, "version": segments.version,
            "promoted": segments.promoted, "decision": segments.decision,
            "k": segments.model.k_, "sizes": segments.sizes,
            "stability_ari": segments.model.stability_, "written": segments.written,
        }  # fmt: skip
    model = scorer.churn or scorer.clv
    if model is not None:
        horizon = float((model.recipe_ or {}).get("horizon_days", 92.0))
        say(f"churn and lifetime value as of {as_of} ({trials} trials), champion gate")
        churn = train_churn(settings, dataset, as_of, horizon, trials)
        result.trained["churn"] = {
            "run_id": churn.run_id,
            **{kind: {"version": r.version, "held_out": r.held_out, "baseline": r.baseline,
                      "promoted": r.promoted, "decision": r.decision}
               for kind, r in (("churn", churn.churn), ("clv", churn.clv))},
        }  # fmt: skip


def _outcome(trained: Any, family: str, protocol: str, tuning: dict[str, Any]) -> dict[str, Any]:
    return {
        "family": family,
        "protocol": protocol,
        "version": trained.version,
        "run_id": trained.run_id,
        "promoted": trained.promoted,
        "decision": trained.decision,
        "champion_metric": trained.champion_metric,
        "tuning": tuning,
    }


def _write_summary(result: RetrainResult) -> None:
    result.summary.write_text(
        json.dumps(result.to_dict(), indent=2, default=str, ensure_ascii=False) + "\n",
        encoding="utf-8",
    )


def _attach(settings: Settings, result: RetrainResult) -> None:
    """The whole report folder into each challenger's run, and why it was trained."""
    from bespoke.training.registry import Registry

    client = Registry.of(settings).client
    for outcome in result.trained.values():
        run_id = outcome["run_id"]
        client.log_artifacts(run_id, str(result.report_dir), ARTIFACT_PATH)
        client.set_tag(run_id, "retrain.reasons", "; ".join(result.reasons))
        client.set_tag(run_id, "retrain.report_dir", str(result.report_dir))


def run_every(
    job: Callable[[], Any],
    every: timedelta,
    *,
    runs: int | None = None,
    on_error: Callable[[Exception], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Run ``job`` every ``every`` (start to start, like cron; a run longer than the
    period is followed by the next at once) until interrupted or ``runs`` runs are done.
    A run that raises is handed to ``on_error`` and the loop goes on. Returns the number
    of failed runs."""
    period = every.total_seconds()
    done = failed = 0
    while runs is None or done < runs:
        started = clock()
        try:
            job()
        except Exception as error:  # a failed run must not end the schedule
            failed += 1
            if on_error is not None:
                on_error(error)
        done += 1
        if runs is not None and done >= runs:
            break
        sleep(max(0.0, period - (clock() - started)))
    return failed
