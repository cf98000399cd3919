"""The real ``bentoml serve`` for the service tests (test_service.py, test_service_schema.py,
test_bento.py).

One server per test process, shared by every test that asks for ``service``. The home it
serves (ML-100K ingested, EASE and ranker ``@champion`` models, an API key) is prepared
once per run: under pytest-xdist the first worker prepares it behind a file lock and every
server gets its own copy, so no two servers share an online store.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from bespoke.serving.local import (
    LOG_FILE,
    prepare_local_home,
    start_local_service,
    stop_local_service,
)

_KEY_FILE = "test-api-key"


def _prepared_home(folder: Path, datasets_dir: Path) -> Path:
    """``folder/home`` prepared once (the key kept beside it), whoever asks first."""
    home = folder / "home"
    with (folder / "home.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not (folder / _KEY_FILE).exists():
            key = prepare_local_home(home, datasets_dir / "ml-100k", key_name="tests")
            (folder / _KEY_FILE).write_text(key)
    return home


@pytest.fixture(scope="session")
def prepared_service_home(
    tmp_path_factory: pytest.TempPathFactory, datasets_dir: Path
) -> tuple[Path, str]:
    """``(home, api_key)``: prepared once per run and shared, so copy it before serving it."""
    # Under xdist the parent of each worker's base folder belongs to this run alone.
    base = tmp_path_factory.getbasetemp()
    shared = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "service-prepared"
    shared.mkdir(exist_ok=True)
    home = _prepared_home(shared, datasets_dir)
    return home, (shared / _KEY_FILE).read_text()


def _copy_home(prepared: Path, target: Path) -> Path:
    shutil.copytree(prepared, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns(LOG_FILE))
    return target


@pytest.fixture
def service_home(prepared_service_home: tuple[Path, str], tmp_path: Path) -> tuple[Path, str]:
    """``(home, api_key)``: a private copy of the prepared home, for a server of one's own."""
    prepared, key = prepared_service_home
    return _copy_home(prepared, tmp_path / "service-home"), key


@pytest.fixture(scope="session")
def service(
    prepared_service_home: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    """``(url, api_key)`` of a running ``bentoml serve`` of the service."""
    prepared, key = prepared_service_home
    url, process = start_local_service(
        _copy_home(prepared, tmp_path_factory.mktemp("service-home"))
    )
    try:
        yield url, key
    finally:
        stop_local_service(process)
