"""The real ``bentoml serve`` for the service tests (test_service.py, test_service_schema.py,
test_bento.py).

One server per test process, shared by every test that asks for ``service``. The home it
serves (ML-100K ingested, EASE and ranker ``@champion`` models, an API key) is prepared
once per run: under pytest-xdist the first worker prepares it behind a file lock and every
server gets its own copy, so no two servers share an online store.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from bespoke.serving.local import LOG_FILE, start_local_service, stop_local_service


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
