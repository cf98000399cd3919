"""MLflow set-up and what every training or tuning run logs: the data fingerprint, the
code version, library versions, seeds and parameters."""

from __future__ import annotations

import math
import os
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from bespoke.settings import Settings

#: Libraries whose versions decide a model's numbers.
TRACKED_LIBRARIES = (
    "bespoke",
    "numpy",
    "scipy",
    "scikit-learn",
    "implicit",
    "optuna",
    "mlflow",
    "duckdb",
    "pandas",
)


def quiet() -> None:
    """MLflow's chatter off: INFO logs, pip-version warnings, download progress bars."""
    import logging

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # keep the CLI's output readable
    # "Failed to resolve installed pip version" on every logged model: we state the
    # requirements ourselves (requirements()), so pip's version does not matter.
    logging.getLogger("mlflow.utils.environment").setLevel(logging.ERROR)
    # Download progress bars on every model load (the champion gate loads one per run).
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def experiment_id(settings: Settings, experiment: str) -> str:
    """The id of ``experiment`` in the settings' store, created on first use with its
    artifacts under ``mlflow_artifacts_dir``."""
    import mlflow

    uri = settings.mlflow_tracking_uri
    assert uri is not None and settings.mlflow_artifacts_dir is not None
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    client = mlflow.MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        return str(found.experiment_id)
    location = settings.mlflow_artifacts_dir / experiment
    return str(client.create_experiment(experiment, artifact_location=location.as_uri()))


@contextmanager
def session(settings: Settings, experiment: str) -> Iterator[str]:
    """MLflow's fluent API (``start_run``, ``log_*``, autologging, ``log_model``) pointed
    at the settings' store for the duration of the block, then back to what it was, so
    that a notebook's or a test's own MLflow settings are untouched; yields the id of
    ``experiment``, which every ``start_run`` in the block names explicitly (the active
    experiment is process-wide state too)."""
    # MLflow's own scoped URI (what its tests use); the public API has only the
    # process-wide setter, which would leave every later run of the process here.
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    quiet()
    identifier = experiment_id(settings, experiment)
    with _use_tracking_uri(str(settings.mlflow_tracking_uri)):
        yield identifier


def code_version(root: Path) -> str:
    """The git commit of ``root`` ("+dirty" when it has uncommitted changes), or "unknown"."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def library_versions() -> dict[str, str]:
    versions = {}
    for name in TRACKED_LIBRARIES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "absent"
    return versions


def run_tags(settings: Settings, **extra: Any) -> dict[str, str]:
    """Tags every run carries: code version and library versions, plus ``extra``."""
    tags = {"bespoke.code_version": code_version(settings.root)}
    tags.update({f"version.{name}": v for name, v in library_versions().items()})
    tags.update({k: str(v) for k, v in extra.items()})
    return tags


#: What a logged recommender needs to load and predict.
SERVING_LIBRARIES = (
    "mlflow",
    "numpy",
    "scipy",
    "pandas",
    "implicit",
    "scikit-learn",
    "threadpoolctl",
)


def requirements() -> list[str]:
    """Pinned requirements of a logged model (``bespoke`` itself ships with the service)."""
    pins = []
    for name in SERVING_LIBRARIES:
        try:
            pins.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            continue
    return pins


def metric_values(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """MLflow metric names (``@`` is not allowed: ``_at_``) for the finite numbers in
    ``metrics``; everything else (counts as text, NaN) is left out."""
    return {
        f"{prefix}{name.replace('@', '_at_')}": float(value)
        for name, value in metrics.items()
        if isinstance(value, int | float) and math.isfinite(value)
    }


@contextmanager
def quiet_events() -> Iterator[None]:
    """MLflow's event stream (``eprint``: "Successfully registered model …") off."""
    from mlflow.utils.logging_utils import MLFLOW_LOGGING_STREAM

    enabled = MLFLOW_LOGGING_STREAM.enabled
    MLFLOW_LOGGING_STREAM.enabled = False
    try:
        yield
    finally:
        MLFLOW_LOGGING_STREAM.enabled = enabled
