"""Shared fixtures: isolated settings, a lake per test, the real datasets, lake snapshots.

The real datasets are read from ``BESPOKE_DATASETS_DIR`` (``make test`` exports it as
``../shared/data``); they are never copied into the repository. A missing or unset folder
fails the tests that need it instead of skipping them, so CI cannot pass without data.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from bespoke.features import collect, sources
from bespoke.features.lake import Lake
from bespoke.settings import get_settings
from bespoke.training.postgres_server import PostgresServer, postgres_binaries, start_postgres

#: A fixed 32-byte HMAC key, so pseudonyms are the same in every run.
KEY = bytes(range(32))

#: Where pytest was started: a relative BESPOKE_DATASETS_DIR is relative to it, whatever
#: folder a test later moves into.
_INVOCATION_DIR = Path.cwd()

DATASETS = ("ml-100k", "ml-1m", "cdnow")

#: Every setting a developer's shell might carry that would point tests at real state.
_STATE_VARIABLES = (
    "BESPOKE_ROOT",
    "BESPOKE_LAKE_URL",
    "BESPOKE_HMAC_KEY",
    "BESPOKE_MLFLOW_TRACKING_URI",
    "BESPOKE_MLFLOW_ARTIFACTS_DIR",
    "BESPOKE_OPTUNA_STORAGE_URL",
    "BESPOKE_REPORTS_DIR",
    "BESPOKE_TUNED_PARAMS_FILE",
    "BESPOKE_MODEL_SOURCE",
    "BESPOKE_WEBHOOK_URL",
    "BESPOKE_WEBHOOK_SECRET",
    "BESPOKE_EXPERIMENTS_PATH",
    "BESPOKE_SERVING_DATASET",
)


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point BESPOKE_HOME at the test's tmp_path so no test touches the repository's var/.

    The working directory moves there too, so a ``.env`` in the checkout is not read and
    the project root (for the mlruns/ default) is the temporary folder.
    """
    home = tmp_path / "home"
    monkeypatch.setenv("BESPOKE_HOME", str(home))
    # BentoML's model store is a person-data store a deletion rewrites: never the
    # developer's own.
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "bentoml"))
    for name in _STATE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    yield home
    get_settings.cache_clear()


@pytest.fixture
def key() -> bytes:
    return KEY


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    """An empty local lake in the test's own folder (created on first write)."""
    return Lake(str(tmp_path / "lake"))


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    """The folder holding ml-100k/, ml-1m/ and cdnow/ (read-only)."""
    value = os.environ.get("BESPOKE_DATASETS_DIR")
    if not value:
        pytest.fail(
            "BESPOKE_DATASETS_DIR is not set: the data tests need the real datasets. Run "
            "`make test` (it exports ../shared/data) or export "
            "BESPOKE_DATASETS_DIR=/path/to/data holding ml-100k/, ml-1m/ and cdnow/.",
            pytrace=False,
        )
    path = (_INVOCATION_DIR / Path(value).expanduser()).resolve()
    missing = [name for name in DATASETS if not (path / name).is_dir()]
    if missing:
        pytest.fail(
            f"BESPOKE_DATASETS_DIR={value} (resolved to {path}) lacks {missing}; it must "
            f"hold {', '.join(d + '/' for d in DATASETS)}.",
            pytrace=False,
        )
    return path


def _ingested(
    factory: pytest.TempPathFactory, batch: collect.SourceBatch
) -> tuple[Lake, collect.IngestResult]:
    lake = Lake(str(factory.mktemp(batch.dataset) / "lake"))
    return lake, collect.ingest(batch, lake, KEY)


@pytest.fixture(scope="session")
def ml100k_lake(
    datasets_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Lake, collect.IngestResult]:
    """ML-100K ingested once per test process. Read-only: copy it before writing."""
    return _ingested(tmp_path_factory, sources.movielens_100k(datasets_dir / "ml-100k"))


@pytest.fixture(scope="session")
def cdnow_lake(
    datasets_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Lake, collect.IngestResult]:
    """CDNOW ingested once per test process. Read-only: copy it before writing."""
    return _ingested(tmp_path_factory, sources.cdnow(datasets_dir / "cdnow"))


# --- helpers handed out as fixtures ------------------------------------------------------

Snapshot = list[tuple[str, str]]


def lake_snapshot(root: str | Path) -> Snapshot:
    """Sorted (relative path, sha256) of every file under ``root``."""
    root = Path(root)
    if not root.exists():
        return []
    return sorted(
        (str(p.relative_to(root)), hashlib.sha256(p.read_bytes()).hexdigest())
        for p in root.rglob("*")
        if p.is_file()
    )


@pytest.fixture
def snapshot() -> Callable[[str | Path], Snapshot]:
    return lake_snapshot


@pytest.fixture
def write_csv(tmp_path: Path) -> Callable[..., Path]:
    """``write_csv(name, rows)``: rows (dicts; the first one's keys are the header) or raw
    text/bytes written to ``<tmp>/input/<name>``."""

    def write(name: str, rows: Iterable[Mapping[str, Any]] | str | bytes) -> Path:
        folder = tmp_path / "input"
        folder.mkdir(exist_ok=True)
        path = folder / name
        if isinstance(rows, bytes):
            path.write_bytes(rows)
        elif isinstance(rows, str):
            path.write_text(rows, encoding="utf-8")
        else:
            rows = list(rows)
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
            path.write_text(buffer.getvalue(), encoding="utf-8")
        return path

    return write


#: The column mapping most generic-CSV tests use: source names differ from field names.
SHOP_MAPPING = {
    "user_id": "customer",
    "item_id": "sku",
    "timestamp": "ts",
    "event_type": "action",
    "value": "amount",
    "default_consent": ["personalization"],
}


def _shop_rows(days: int = 3, per_day: int = 4) -> list[dict[str, str]]:
    """A small valid shop log: ``days`` UTC dates × ``per_day`` events, all distinct."""
    rows = []
    for day in range(days):
        for n in range(per_day):
            rows.append(
                {
                    "customer": f"c{n}",
                    "sku": f"sku-{day}-{n}",
                    "ts": f"2024-01-{day + 1:02d}T{10 + n:02d}:00:00Z",
                    "action": "purchase" if n % 2 else "view",
                    "amount": f"{10 + n}.5" if n % 2 else "",
                }
            )
    return rows


@pytest.fixture
def shop_rows() -> Callable[..., list[dict[str, str]]]:
    """``shop_rows(days=3, per_day=4)``: a small valid shop log (see :data:`SHOP_MAPPING`)."""
    return _shop_rows


@pytest.fixture
def shop_mapping() -> Callable[..., sources.ColumnMapping]:
    """``shop_mapping(**overrides)``: :data:`SHOP_MAPPING` with overrides."""

    def build(**overrides: Any) -> sources.ColumnMapping:
        return sources.ColumnMapping.model_validate({**SHOP_MAPPING, **overrides})

    return build


#: A three-genre miniature of ML-100K's genre list (index order = u.item flag order).
MINI_GENRES = ("unknown", "Action", "Comedy")


@pytest.fixture
def mini_movielens(tmp_path: Path) -> Callable[..., Path]:
    """``mini_movielens(users=..., items=..., ratings=..., name=...)`` writes a folder in
    the ML-100K format (u.data, u.user, u.item latin-1, u.genre) and returns it.

    users: (id, age, gender, occupation, zip); items: (id, title, release date "01-Jan-1995"
    or "", genre names); ratings: (user, item, rating, unix time).
    """

    def build(
        users: Iterable[tuple[Any, ...]],
        items: Iterable[tuple[Any, ...]],
        ratings: Iterable[tuple[Any, ...]],
        name: str = "mini-ml",
    ) -> Path:
        folder = tmp_path / name
        folder.mkdir(exist_ok=True)
        (folder / "u.genre").write_text(
            "".join(f"{g}|{i}\n" for i, g in enumerate(MINI_GENRES)) + "\n"
        )
        (folder / "u.user").write_text("".join("|".join(map(str, u)) + "\n" for u in users))
        lines = []
        for item_id, title, released, genres in items:
            flags = ["1" if g in genres else "0" for g in MINI_GENRES]
            lines.append(
                "|".join([str(item_id), title, released, "", f"http://x/{item_id}", *flags])
            )
        (folder / "u.item").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
        (folder / "u.data").write_text("".join("\t".join(map(str, r)) + "\n" for r in ratings))
        return folder

    return build


# --- the service's prepared home (tests/model, tests/browser) -----------------------------

_KEY_FILE = "test-api-key"


def _prepared_home(folder: Path, datasets_dir: Path) -> Path:
    """``folder/home`` prepared once (the key kept beside it), whoever asks first."""
    from bespoke.serving.local import prepare_local_home

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
    """``(home, api_key)``: ML-100K ingested, EASE and ranker ``@champion`` models, an API
    key; prepared once per run and shared (under xdist the first worker prepares it behind
    a file lock), so copy it before serving it."""
    # Under xdist the parent of each worker's base folder belongs to this run alone.
    base = tmp_path_factory.getbasetemp()
    shared = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "service-prepared"
    shared.mkdir(exist_ok=True)
    home = _prepared_home(shared, datasets_dir)
    return home, (shared / _KEY_FILE).read_text()


# --- a private PostgreSQL server (shared tuning studies, MLflow tracking) ----------------


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A private PostgreSQL cluster for the test session (one per xdist worker), stopped
    and removed at its end; a test creates the fresh databases it needs. Skipped, saying
    why, where Debian's postgresql or the ``postgres`` extra's driver is missing."""
    if postgres_binaries() is None:
        pytest.skip(
            "PostgreSQL's initdb is not installed: install Debian's postgresql "
            "(scripts/test-system-packages does it where it runs as root with apt-get)"
        )
    pytest.importorskip(
        "psycopg2", reason="psycopg2 (the `postgres` extra) is missing: `make test` syncs it"
    )
    server = start_postgres(databases=())
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def spark() -> Iterator[Any]:
    """One local Spark session for the test process (a start costs seconds): the batch
    engine's parity tests and the Spark families use it. Skipped, saying why, without
    pyspark or Java. Tests using it carry ``xdist_group("spark")`` so that one worker
    runs them all and one JVM starts."""
    import importlib.util
    import shutil

    if importlib.util.find_spec("pyspark") is None:
        pytest.skip("pyspark is not installed: it is the `spark` extra, which `make test` "
                    "installs (uv sync --all-extras)")  # fmt: skip
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.skip("java is not installed: Spark needs Java 17; install "
                    "openjdk-17-jre-headless; scripts/test-system-packages does it")  # fmt: skip
    from bespoke.engine.engines import spark_session

    session = spark_session("local[2]")
    yield session
    session.stop()
