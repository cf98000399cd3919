"""Where the service's models come from: the MLflow registry's ``@champion`` aliases, or
the copies of them packaged into a Bento.

Both sources hold the same files: each registered model version is an MLflow pyfunc
whose artifacts include the model's own folder (``recommender``: NumPy + JSON, see
:meth:`bespoke.training.base.Recommender.save`; ``ranking_pipeline``: LightGBM text + NumPy
+ JSON, see :meth:`bespoke.training.ranker.RankingPipeline.save`). The service loads those
folders directly with the training code's loaders, which is the pyfunc's own path minus
MLflow's model-loading machinery (a second off a start).

- ``registry`` (the default from source): resolve ``@champion`` in the tracking server,
  download that version's artifacts. :class:`ChampionWatcher` polls the aliases and swaps
  a new champion in without a restart.
- ``bento`` (the default inside a built Bento): :func:`export_champions` copied the
  champions into BentoML's model store before ``bentoml build`` (``make bento``), the
  Bento packages them (bentofile ``models:``), and the service reads them from there —
  no tracking server needed, and the models are frozen with the Bento.

``BESPOKE_MODEL_SOURCE=registry|bento`` overrides the default.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bespoke.serving.engine import Models

logger = logging.getLogger(__name__)

SOURCE_ENV = "BESPOKE_MODEL_SOURCE"
SOURCES = ("registry", "bento")
#: The artifact folders of the pyfunc models, by kind.
ARTIFACTS = {"recommender": "recommender", "ranker": "ranking_pipeline"}
KINDS = tuple(ARTIFACTS)


def bento_model_name(kind: str, dataset: str) -> str:
    """The BentoML model a champion is exported as, e.g. ``bespoke-recommender-ml-100k``."""
    return f"bespoke-{kind}-{dataset}"


def _registered_name(kind: str, dataset: str) -> str:
    from bespoke.training.ranking import registered_name as ranker_name
    from bespoke.training.train import registered_name

    return registered_name(dataset) if kind == "recommender" else ranker_name(dataset)


def champion_versions(tracking_uri: str, dataset: str) -> dict[str, str | None]:
    """The registry version aliased ``@champion`` of each kind (``None``: none)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from bespoke.training.train import CHAMPION

    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    versions: dict[str, str | None] = {}
    for kind in KINDS:
        try:
            found = client.get_model_version_by_alias(_registered_name(kind, dataset), CHAMPION)
            versions[kind] = str(found.version)
        except MlflowException:
            versions[kind] = None
    return versions


def _download(tracking_uri: str, kind: str, dataset: str, version: str, into: Path) -> Path:
    """The model folder of one registry version (its artifact ``recommender`` or
    ``ranking_pipeline``), downloaded under ``into``."""
    import os

    import mlflow

    # A service's log is no place for download progress bars.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    name = _registered_name(kind, dataset)
    # An explicit client, not mlflow.set_*_uri: those change the URIs for the whole
    # process (a notebook's or a test's next run would log into this registry), and a
    # models:/ URI is resolved through the process-wide registry whatever one passes.
    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    location = client.get_model_version_download_uri(name, version)
    uri = f"models:/{name}/{version}"
    local = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=location, dst_path=str(into), tracking_uri=tracking_uri
        )
    )
    folder = local / "artifacts" / ARTIFACTS[kind]
    if not folder.is_dir():
        raise RuntimeError(f"{uri} has no {ARTIFACTS[kind]!r} artifact: not a Bespoke model")
    return folder


def _load(kind: str, folder: Path) -> Any:
    if kind == "recommender":
        from bespoke.training.families import family

        meta = json.loads((folder / "model.json").read_text())
        return family(meta["family"]).load(folder)
    from bespoke.training.ranker import RankingPipeline

    return RankingPipeline.load(folder)


def _models(dataset: str, loaded: dict[str, tuple[Any, str]]) -> Models:
    recommender, recommender_version = loaded["recommender"]
    models = Models(dataset, recommender, recommender_version)
    if "ranker" in loaded:
        models.pipeline, models.ranker_version = loaded["ranker"]
    return models


def _no_recommender(dataset: str, where: str) -> RuntimeError:
    return RuntimeError(
        f"no @champion recommender for {dataset!r} in {where}: train one with "
        f"`bespoke train recommender --dataset {dataset} --model ease`"
    )


def load_from_registry(
    tracking_uri: str, dataset: str, versions: dict[str, str | None] | None = None
) -> Models:
    """The recommender (required) and ranker (when registered) aliased ``@champion``;
    ``versions`` pins what :func:`champion_versions` found."""
    import tempfile

    versions = versions or champion_versions(tracking_uri, dataset)
    if versions.get("recommender") is None:
        raise _no_recommender(dataset, tracking_uri)
    loaded: dict[str, tuple[Any, str]] = {}
    with tempfile.TemporaryDirectory(prefix="bespoke-champions-") as scratch:
        for kind, version in versions.items():
            if version is not None:
                folder = _download(tracking_uri, kind, dataset, version, Path(scratch) / kind)
                loaded[kind] = (_load(kind, folder), version)
    return _models(dataset, loaded)


def export_champions(tracking_uri: str, dataset: str) -> list[str]:
    """Copy the ``@champion`` versions into BentoML's model store (``BENTOML_HOME``) as
    ``bespoke-<kind>-<dataset>:v<version>``; the tags, for the bentofile's ``models:``.
    A version already exported is reused."""
    import tempfile

    import bentoml
    from bentoml.exceptions import NotFound

    versions = champion_versions(tracking_uri, dataset)
    if versions.get("recommender") is None:
        raise _no_recommender(dataset, tracking_uri)
    tags = []
    for kind, version in versions.items():
        if version is None:
            continue
        tag = f"{bento_model_name(kind, dataset)}:v{version}"
        try:
            bentoml.models.get(tag)
        except NotFound:
            with tempfile.TemporaryDirectory(prefix="bespoke-export-") as scratch:
                folder = _download(tracking_uri, kind, dataset, version, Path(scratch))
                with bentoml.models.create(
                    tag,
                    labels={"dataset": dataset, "kind": kind, "registry_version": version},
                    metadata={
                        "registered_model": _registered_name(kind, dataset),
                        "registry_version": version,
                        "alias": "champion",
                        "tracking_uri": tracking_uri,
                    },
                ) as model:
                    shutil.copytree(folder, Path(model.path) / ARTIFACTS[kind])
        tags.append(tag)
    return tags


def load_from_bento(dataset: str) -> Models:
    """The champions packaged into the Bento (or exported into the local model store)."""
    import bentoml
    from bentoml.exceptions import NotFound

    loaded: dict[str, tuple[Any, str]] = {}
    for kind in KINDS:
        try:
            stored = bentoml.models.get(f"{bento_model_name(kind, dataset)}:latest")
        except NotFound:
            continue
        version = str(stored.info.labels.get("registry_version", stored.tag.version))
        loaded[kind] = (_load(kind, Path(stored.path) / ARTIFACTS[kind]), version)
    if "recommender" not in loaded:
        raise RuntimeError(
            f"no packaged recommender for {dataset!r} in the BentoML model store: build the "
            f"Bento with `make bento` (it exports the @champions first), or serve from the "
            f"registry with {SOURCE_ENV}=registry"
        )
    return _models(dataset, loaded)


def model_source(in_bento: bool) -> str:
    """``BESPOKE_MODEL_SOURCE`` when set, else ``bento`` inside a Bento, ``registry``
    otherwise."""
    import os

    source = os.environ.get(SOURCE_ENV, "").strip().lower() or ("bento" if in_bento else "registry")
    if source not in SOURCES:
        raise ValueError(f"{SOURCE_ENV}={source!r}: expected one of {', '.join(SOURCES)}")
    return source


class ChampionWatcher:
    """Polls the registry's ``@champion`` aliases every ``interval`` seconds in a daemon
    thread; when one moved, loads the new models off the request path and hands them to
    ``swap`` (which replaces the engine's models in one assignment: requests in flight
    finish on the old ones, none fails). A failed load keeps the current models and is
    retried at the next poll."""

    def __init__(
        self,
        tracking_uri: str,
        dataset: str,
        current: dict[str, str | None],
        swap: Callable[[Models], None],
        interval: float,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.dataset = dataset
        self.current = dict(current)
        self.swap = swap
        self.interval = interval
        self.swaps = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="champion-watcher", daemon=True)

    def start(self) -> ChampionWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def check(self) -> bool:
        """One poll; True when new champions were swapped in."""
        versions = champion_versions(self.tracking_uri, self.dataset)
        if versions == self.current or versions.get("recommender") is None:
            return False
        models = load_from_registry(self.tracking_uri, self.dataset, versions)
        self.swap(models)
        logger.info(
            "new @champion models for %s: %s (were %s)", self.dataset, versions, self.current
        )
        self.current = versions
        self.swaps += 1
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
                self.last_error = None
            except Exception as error:  # keep serving the models we have
                self.last_error = repr(error)
                logger.warning("champion check failed, keeping the current models: %r", error)
