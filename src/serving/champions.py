"""Where the service's models come from: the MLflow registry's ``@champion`` aliases, or
the copies of them packaged into a Bento.

Both sources hold the same files: the native model folders of the registered versions
(see :mod:`bespoke.training.registry`, which owns names, aliases and loading).

- ``registry`` (the default from source): resolve ``@champion`` in the tracking server,
  download that version's artifacts. :class:`ChampionWatcher` polls the aliases and swaps
  a new champion in without a restart.
- ``bento`` (the default inside a built Bento): :func:`export_champions` copied the
  champions into BentoML's model store before ``bentoml build`` (``make bento``), the
  Bento packages them (bentofile ``models:``), and the service reads them from there —
  no tracking server needed, and the models are frozen with the Bento.

The setting ``model_source`` (``BESPOKE_MODEL_SOURCE=registry|bento``) overrides the
default.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bespoke.serving.engine import Engine, Models
from bespoke.settings import Settings
from bespoke.training.registry import ARTIFACTS, KINDS, Registry, load_native, registered_name

logger = logging.getLogger(__name__)

SOURCES = ("registry", "bento")


def bento_model_name(kind: str, dataset: str) -> str:
    """The BentoML model a champion is exported as, e.g. ``bespoke-recommender-ml-100k``."""
    return f"bespoke-{kind}-{dataset}"


def champion_versions(tracking_uri: str, dataset: str) -> dict[str, str | None]:
    """The registry version aliased ``@champion`` of each kind (``None``: none)."""
    return Registry(tracking_uri).champion_versions(dataset)


def _models(dataset: str, loaded: dict[str, tuple[Any, str]]) -> Models:
    recommender, recommender_version = loaded.get("recommender", (None, None))
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
    tracking_uri: str,
    dataset: str,
    versions: dict[str, str | None] | None = None,
    *,
    catalog: bool = True,
) -> Models:
    """The recommender (required when the dataset has a ``catalog``) and ranker (when
    registered) aliased ``@champion``; ``versions`` pins what :func:`champion_versions`
    found."""
    registry = Registry(tracking_uri)
    versions = versions or registry.champion_versions(dataset)
    if versions.get("recommender") is None and catalog:
        raise _no_recommender(dataset, tracking_uri)
    loaded: dict[str, tuple[Any, str]] = {}
    for kind, version in versions.items():
        if version is not None:
            found = registry.load(kind, dataset, version)
            assert found is not None
            loaded[kind] = (found.model, version)
    return _models(dataset, loaded)


def export_champions(tracking_uri: str, dataset: str) -> list[str]:
    """Copy the ``@champion`` versions into BentoML's model store (``BENTOML_HOME``) as
    ``bespoke-<kind>-<dataset>:v<version>``; the tags, for the bentofile's ``models:``.
    A version already exported is reused."""
    import tempfile

    import bentoml
    from bentoml.exceptions import NotFound

    registry = Registry(tracking_uri)
    versions = registry.champion_versions(dataset)
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
                folder = registry.download(kind, dataset, version, Path(scratch))
                with bentoml.models.create(
                    tag,
                    labels={"dataset": dataset, "kind": kind, "registry_version": version},
                    metadata={
                        "registered_model": registered_name(kind, dataset),
                        "registry_version": version,
                        "alias": "champion",
                        "tracking_uri": tracking_uri,
                    },
                ) as model:
                    shutil.copytree(folder / ARTIFACTS[kind], Path(model.path) / ARTIFACTS[kind])
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
        loaded[kind] = (load_native(kind, Path(stored.path) / ARTIFACTS[kind]), version)
    if "recommender" not in loaded:
        raise RuntimeError(
            f"no packaged recommender for {dataset!r} in the BentoML model store: build the "
            f"Bento with `make bento` (it exports the @champions first), or serve from the "
            f"registry with BESPOKE_MODEL_SOURCE=registry"
        )
    return _models(dataset, loaded)


def model_source(settings: Settings, in_bento: bool) -> str:
    """The settings' ``model_source`` when set, else ``bento`` inside a Bento, ``registry``
    otherwise."""
    return settings.model_source or ("bento" if in_bento else "registry")


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


def engine_for(settings: Settings, dataset: str) -> tuple[Engine, Any]:
    """The engine the service answers with (the ``@champion`` models, the catalog's
    categories, the rules file), for a job that fills pages or e-mails outside the service
    (campaigns); and the catalog. No experiment variants: a job serves the control."""
    from bespoke.features.lake import Lake
    from bespoke.segments.live import LiveScorer, known_segments
    from bespoke.serving.rules import SHIPPED_RULES_DIR, RulesFile
    from bespoke.training.data import catalog_categories, event_counts, load_catalog

    lake = Lake(settings.lake_url or "")
    _, item_events = event_counts(lake, dataset)
    models = load_from_registry(settings.mlflow_tracking_uri or "", dataset,
                                catalog=bool(item_events))  # fmt: skip
    catalog = load_catalog(lake, dataset)
    categories = catalog_categories(catalog)
    try:
        segmenter = LiveScorer.load(settings, dataset).segmenter
    except Exception:  # no segment model: the rules name no behavioural segment
        segmenter = None
    rules = RulesFile(settings.rules_path or SHIPPED_RULES_DIR,
                      segments=known_segments(segmenter, lake, dataset))  # fmt: skip
    return Engine(models, categories, rules), catalog
