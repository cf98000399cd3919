"""Session-wide test isolation, for the tests and for the notebooks the suite runs.

Notebooks use the settings as a user would (``get_settings()``); their kernels inherit
this process's environment, so pointing ``BESPOKE_HOME`` and the MLflow store at a
scratch folder here keeps the suite away from the checkout's ``var/`` and ``mlruns/``.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

_SCRATCH: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    home = tempfile.mkdtemp(prefix="bespoke-test-home-")
    _SCRATCH.append(home)
    os.environ["BESPOKE_HOME"] = home
    os.environ["BESPOKE_MLFLOW_TRACKING_URI"] = f"sqlite:///{home}/mlruns/mlflow.db"
    os.environ["BESPOKE_MLFLOW_ARTIFACTS_DIR"] = f"{home}/mlruns/artifacts"
    os.environ.pop("BESPOKE_LAKE_URL", None)


def pytest_unconfigure(config: pytest.Config) -> None:
    for folder in _SCRATCH:
        shutil.rmtree(folder, ignore_errors=True)
