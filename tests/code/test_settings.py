"""The one configuration object: environment prefix, absolute paths, defaults, no side
effects, and the HMAC key's life cycle."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bespoke.cli import app
from bespoke.settings import HMAC_KEY_FILE, Settings, find_project_root, get_settings


def _checkout(folder: Path) -> Path:
    """A folder that looks like a Bespoke checkout (its pyproject names the project)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text('[project]\nname = "bespoke"\n')
    return folder


def test_environment_variables_with_the_bespoke_prefix_set_the_fields(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BESPOKE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("BESPOKE_DATASETS_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("BESPOKE_MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    settings = Settings(_env_file=None)
    assert settings.home == tmp_path / "state"
    assert settings.datasets_dir == tmp_path / "data"
    assert settings.mlflow_tracking_uri == "http://mlflow.example:5000"
    assert settings.lake_url == str(tmp_path / "state" / "lake")


def test_variables_without_the_prefix_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BESPOKE_DATASETS_DIR", raising=False)
    monkeypatch.setenv("DATASETS_DIR", "/somewhere/else")
    assert Settings(_env_file=None).datasets_dir is None


def test_relative_paths_become_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BESPOKE_HOME", "state")
    monkeypatch.setenv("BESPOKE_LAKE_URL", "lakes/main")
    monkeypatch.setenv("BESPOKE_DATASETS_DIR", "../data")
    monkeypatch.setenv("BESPOKE_MLFLOW_ARTIFACTS_DIR", "art")
    settings = Settings(_env_file=None)
    for path in (
        settings.root,
        settings.home,
        settings.datasets_dir,
        settings.mlflow_artifacts_dir,
    ):
        assert path is not None and path.is_absolute(), path
    assert settings.home == tmp_path / "state"
    assert settings.datasets_dir == tmp_path.parent / "data"
    assert Path(settings.lake_url).is_absolute()
    assert settings.lake_url == str(tmp_path / "lakes" / "main")


def test_a_lake_url_with_a_protocol_is_kept_as_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BESPOKE_LAKE_URL", "s3://bucket/lake")
    assert Settings(_env_file=None).lake_url == "s3://bucket/lake"


def test_defaults_live_under_the_checkout_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _checkout(tmp_path / "repo")
    (root / "notebooks").mkdir()
    monkeypatch.chdir(root / "notebooks")  # any folder inside the checkout
    monkeypatch.delenv("BESPOKE_HOME")
    monkeypatch.delenv("BESPOKE_DATASETS_DIR", raising=False)
    settings = Settings(_env_file=None)
    assert settings.root == root
    assert settings.home == root / "var"
    assert settings.lake_url == str(root / "var" / "lake")
    assert settings.mlflow_tracking_uri == f"sqlite:///{root}/mlruns/mlflow.db"
    assert settings.mlflow_artifacts_dir == root / "mlruns" / "artifacts"
    assert settings.secrets_dir == root / "var" / "secrets"
    assert settings.datasets_dir is None
    assert settings.hmac_key is None


def test_outside_a_checkout_the_working_directory_is_the_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    (folder / "pyproject.toml").write_text('[project]\nname = "someone-else"\n')
    monkeypatch.chdir(folder)
    assert find_project_root() == folder
    monkeypatch.delenv("BESPOKE_HOME")
    assert Settings(_env_file=None).home == folder / "var"


def test_the_repository_checkout_is_found_as_its_own_root() -> None:
    repo = Path(__file__).resolve().parents[2]
    assert find_project_root(repo / "tests" / "code") == repo


def test_dataset_path_without_a_datasets_dir_says_which_variable_to_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("BESPOKE_DATASETS_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match="BESPOKE_DATASETS_DIR"):
        Settings(_env_file=None).dataset_path("ml-100k")


def test_dataset_path_joins_the_datasets_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BESPOKE_DATASETS_DIR", str(tmp_path))
    assert Settings(_env_file=None).dataset_path("cdnow") == tmp_path / "cdnow"


def test_importing_bespoke_and_reading_settings_creates_no_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BESPOKE_")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    code = (
        "import bespoke, bespoke.cli, bespoke.features.collect, bespoke.features.sources, "
        "bespoke.features.lake, bespoke.features.clean, bespoke.features.geo, "
        "bespoke.features.privacy, bespoke.features.report, bespoke.features.schema, "
        "bespoke.training, bespoke.serving, bespoke.monitoring\n"
        "from bespoke.settings import Settings, get_settings\n"
        "s = Settings(); get_settings(); print(s.home)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=empty, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(empty / "var")
    assert list(empty.iterdir()) == []


def test_pseudonym_key_is_created_once_with_owner_only_permissions(isolated_settings: Path) -> None:
    settings = Settings(_env_file=None)
    path = settings.secrets_dir / HMAC_KEY_FILE
    assert not path.exists()
    first = settings.pseudonym_key()
    assert path.is_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) >= 32
    written = path.read_bytes()
    # Another settings object (another process) reuses the same key and rewrites nothing.
    again = Settings(_env_file=None).pseudonym_key()
    assert again == first
    assert path.read_bytes() == written


def test_two_homes_get_different_random_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BESPOKE_HOME", str(tmp_path / "a"))
    a = Settings(_env_file=None).pseudonym_key()
    monkeypatch.setenv("BESPOKE_HOME", str(tmp_path / "b"))
    b = Settings(_env_file=None).pseudonym_key()
    assert a != b


def test_bespoke_hmac_key_overrides_the_key_file(
    isolated_settings: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    generated = Settings(_env_file=None).pseudonym_key()
    monkeypatch.setenv("BESPOKE_HMAC_KEY", "a-key-from-the-environment")
    settings = Settings(_env_file=None)
    assert settings.pseudonym_key() == b"a-key-from-the-environment"
    assert settings.pseudonym_key() != generated


def test_an_explicit_key_creates_no_key_file(
    isolated_settings: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BESPOKE_HMAC_KEY", "k" * 32)
    settings = Settings(_env_file=None)
    settings.pseudonym_key()
    assert not (settings.secrets_dir / HMAC_KEY_FILE).exists()
    assert not isolated_settings.exists()


def test_the_hmac_key_is_not_shown_in_repr_or_by_the_settings_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BESPOKE_HMAC_KEY", "super-secret-value-123")
    get_settings.cache_clear()
    assert "super-secret-value-123" not in repr(Settings(_env_file=None))
    result = CliRunner().invoke(app, ["settings"])
    assert result.exit_code == 0, result.output
    assert "super-secret-value-123" not in result.output
    assert "BESPOKE_HMAC_KEY" in result.output
    assert "(set)" in result.output


def test_get_settings_is_cached_until_cleared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = get_settings()
    assert get_settings() is first
    monkeypatch.setenv("BESPOKE_HOME", str(tmp_path / "other"))
    assert get_settings().home == first.home
    get_settings.cache_clear()
    assert get_settings().home == tmp_path / "other"


def test_as_environment_gives_another_process_the_same_locations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chosen = Settings(
        root=tmp_path,
        home=tmp_path / "state",
        lake_url="memory://lake",
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'm.db'}",
        hmac_key="not-exported",
    )
    environment = chosen.as_environment()
    assert "BESPOKE_HMAC_KEY" not in environment  # a secret stays where it is
    for variable, value in environment.items():
        monkeypatch.setenv(variable, value)
    assert Settings().model_dump(exclude={"hmac_key"}) == chosen.model_dump(exclude={"hmac_key"})
