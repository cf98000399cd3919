"""Where tuning studies live (``BESPOKE_OPTUNA_STORAGE_URL``): the embedded SQLite file by
default, a PostgreSQL URL when set, anything else refused naming the setting before a file
is written; and how a study's trials are split between worker processes."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from bespoke.cli import app
from bespoke.settings import Settings, get_settings
from bespoke.training.tune import shown_storage, study_storage, trial_shares


def test_the_default_storage_is_a_sqlite_file_under_the_root(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, root=tmp_path)
    assert settings.optuna_storage_url is None
    assert study_storage(settings) == f"sqlite:///{tmp_path / 'mlruns' / 'optuna.db'}"
    assert (tmp_path / "mlruns").is_dir()  # SQLite needs the folder of its file


def test_postgresql_urls_name_the_installed_driver_and_a_relative_sqlite_path_is_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BESPOKE_OPTUNA_STORAGE_URL", "postgresql+psycopg2://tuner@db.example/s")
    assert study_storage(Settings(_env_file=None)) == "postgresql+psycopg2://tuner@db.example/s"
    # SQLAlchemy 2.1 would read postgresql:// as psycopg 3: the installed driver is named
    monkeypatch.setenv("BESPOKE_OPTUNA_STORAGE_URL", "postgresql://tuner@db.example:5432/s")
    monkeypatch.setenv("BESPOKE_MLFLOW_TRACKING_URI", "postgresql://tracker@db.example/runs")
    settings = Settings(_env_file=None)
    assert study_storage(settings) == "postgresql+psycopg2://tuner@db.example:5432/s"
    assert settings.mlflow_tracking_uri == "postgresql+psycopg2://tracker@db.example/runs"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BESPOKE_OPTUNA_STORAGE_URL", "sqlite:///state/studies.db")
    settings = Settings(_env_file=None)
    assert settings.optuna_storage_url == f"sqlite:///{tmp_path / 'state' / 'studies.db'}"
    # another process (a worker, a job) is handed the same storage
    exported = settings.as_environment()["BESPOKE_OPTUNA_STORAGE_URL"]
    assert exported == settings.optuna_storage_url


def test_a_password_in_the_storage_url_is_not_shown() -> None:
    shown = shown_storage("postgresql://tuner:s3cret@db.example:5432/studies")
    assert "s3cret" not in shown and "tuner" in shown and "db.example:5432/studies" in shown


@pytest.mark.parametrize(
    "url", ["mysql://tuner@db.example/studies", "redis://localhost:6379/0", "studies.db"]
)
def test_an_unsupported_storage_url_is_refused_naming_the_setting(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BESPOKE_OPTUNA_STORAGE_URL", url)
    with pytest.raises(ValidationError, match="BESPOKE_OPTUNA_STORAGE_URL"):
        Settings(_env_file=None)


def test_the_tune_command_refuses_a_bad_storage_url_and_writes_nothing(
    isolated_settings: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BESPOKE_OPTUNA_STORAGE_URL", "mysql://tuner@db.example/studies")
    get_settings.cache_clear()
    root = isolated_settings.parent  # the test's working folder is the project root
    before = sorted(root.rglob("*"))
    result = CliRunner().invoke(
        app, ["tune", "recommender", "--dataset", "ml-100k", "--model", "ease", "--workers", "2"]
    )
    assert result.exit_code == 1, result.output
    assert "BESPOKE_OPTUNA_STORAGE_URL" in result.output
    assert isinstance(result.exception, SystemExit)  # said, not raised
    assert sorted(root.rglob("*")) == before


@pytest.mark.parametrize(
    ("trials", "workers", "shares"),
    [(7, 3, [3, 2, 2]), (6, 3, [2, 2, 2]), (2, 4, [1, 1]), (5, 1, [5]), (0, 2, [0])],
)
def test_trials_are_split_between_workers_to_exactly_the_number_asked(
    trials: int, workers: int, shares: list[int]
) -> None:
    assert trial_shares(trials, workers) == shares


def test_fewer_than_one_worker_is_refused() -> None:
    with pytest.raises(ValueError, match="workers must be at least 1"):
        trial_shares(3, 0)
