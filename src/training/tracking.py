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


def configure(settings: Settings, experiment: str) -> str:
    """Point MLflow at the settings' store and make ``experiment`` current; returns its id.

    New experiments keep their artifacts under ``mlflow_artifacts_dir``.
    """
    import logging

    import mlflow

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # keep the CLI's output readable
    # "Failed to resolve installed pip version" on every logged model: we state the
    # requirements ourselves (requirements()), so pip's version does not matter.
    logging.getLogger("mlflow.utils.environment").setLevel(logging.ERROR)
    # Download progress bars on every model load (the champion gate loads one per run).
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    assert settings.mlflow_artifacts_dir is not None
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    if settings.mlflow_tracking_uri and settings.mlflow_tracking_uri.startswith("sqlite:///"):
        Path(settings.mlflow_tracking_uri.removeprefix("sqlite:///")).parent.mkdir(
            parents=True, exist_ok=True
        )
    found = mlflow.get_experiment_by_name(experiment)
    if found is not None:
        experiment_id = found.experiment_id
    else:
        location = settings.mlflow_artifacts_dir / experiment
        experiment_id = mlflow.create_experiment(experiment, artifact_location=location.as_uri())
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


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
def _quiet_mlflow() -> Iterator[None]:
    """MLflow's event stream (``eprint``: "Successfully registered model …") off."""
    from mlflow.utils.logging_utils import MLFLOW_LOGGING_STREAM

    enabled = MLFLOW_LOGGING_STREAM.enabled
    MLFLOW_LOGGING_STREAM.enabled = False
    try:
        yield
    finally:
        MLFLOW_LOGGING_STREAM.enabled = enabled


def log_and_register(
    entry_point: Path,
    artifacts: dict[str, str],
    signature: Any,
    example: Any,
    registered_name: str,
    gate_metric: str,
) -> str:
    """Log a pyfunc model from code with its artifacts, register it under
    ``registered_name`` and tag the version with its gate metric; returns the version."""
    import mlflow

    with _quiet_mlflow():  # "Successfully registered …": the caller reports the version
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(entry_point),
            artifacts=artifacts,
            signature=signature,
            input_example=example,
            registered_model_name=registered_name,
            # Stated, not inferred: inference loads the model in a subprocess (slow).
            pip_requirements=requirements(),
        )
    version = str(info.registered_model_version)
    mlflow.MlflowClient().set_model_version_tag(
        registered_name, version, "gate_metric", gate_metric
    )
    return version
