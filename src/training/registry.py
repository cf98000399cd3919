"""The model registry, in one place: registered names, the ``@champion`` alias, the
champion gate, promotion, listing, and loading a version's native artifacts.

Training, tuning, retraining, monitoring and the service all reach MLflow's registry
through :class:`Registry`, which holds one explicit client for one tracking URI (never a
process-wide ``mlflow.set_tracking_uri``: a notebook's or a test's own MLflow settings
stay as they were).

The service recommends with ``bespoke-recommender-<dataset>`` (a recommender family) and
``bespoke-ranker-<dataset>`` (a retrieval + click-through ranking pipeline); people are
scored by ``bespoke-segments-<dataset>``, ``bespoke-churn-<dataset>`` and
``bespoke-clv-<dataset>`` (:mod:`bespoke.segments`). Each version is an MLflow pyfunc whose artifacts hold the model's own
folder (``recommender``: NumPy + JSON, see :meth:`bespoke.training.base.Recommender.save`;
``ranking_pipeline``: LightGBM text or logistic coefficients + NumPy + JSON, see
:meth:`bespoke.training.ranker.RankingPipeline.save`), which :meth:`Registry.load` reads
with the training code's own loaders: the pyfunc's path minus MLflow's model-loading
machinery.

**Selection, then refit.** A version is registered after its configuration (family and
parameters) was scored on held-out data; the registered model itself is refit on all the
data up to now. The version carries the held-out score (tag ``<metric>``), what it was
fitted on (``trained_on``) and that data's fingerprint (``data_fingerprint``). Because a
refit champion has seen every held-out interaction, the gate never scores the stored
champion: it refits the champion's *configuration* on the candidate's training part and
scores it on the candidate's held-out part, through the same function that scored the
candidate.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd

from bespoke.settings import Settings

if TYPE_CHECKING:
    from mlflow import MlflowClient

logger = logging.getLogger(__name__)

CHAMPION = "champion"
Kind = Literal["recommender", "ranker", "segments", "churn", "clv"]
#: What the service recommends with.
KINDS: tuple[Kind, ...] = ("recommender", "ranker")
#: What scores people (:mod:`bespoke.segments`): segment, churn probability, lifetime value.
PERSON_KINDS: tuple[Kind, ...] = ("segments", "churn", "clv")
#: What the gate compares, per kind.
GATE_METRICS: dict[str, str] = {
    "recommender": "ndcg@10", "ranker": "reranked_ndcg@10", "segments": "stability_ari",
    "churn": "auc", "clv": "mae",
}  # fmt: skip
#: Kinds whose gate metric is an error: the candidate must be lower.
LOWER_IS_BETTER = frozenset({"clv"})
#: The artifact folder of each kind's pyfunc model that holds the native model.
ARTIFACTS: dict[str, str] = {
    "recommender": "recommender", "ranker": "ranking_pipeline", "segments": "segment_model",
    "churn": "churn_model", "clv": "clv_model",
}  # fmt: skip
#: What a registered version was fitted on: everything up to now (selection, then
#: refit), or the split's training part only (``refit=False``: tests, benchmarks).
ALL_DATA = "all data"
TRAIN_PART = "training part"
#: The interactions and attributes a ranker version was fitted with (pyfunc and monitoring).
HISTORY_ARTIFACT = "history"


def _check_kind(kind: str) -> None:
    if kind not in KINDS + PERSON_KINDS:
        raise ValueError(f"unknown kind {kind!r}; use one of {', '.join(KINDS + PERSON_KINDS)}")


def registered_name(kind: str, dataset: str) -> str:
    """``bespoke-<kind>-<dataset>``: ``bespoke-recommender-ml-100k``, ``bespoke-churn-cdnow``…"""
    _check_kind(kind)
    return f"bespoke-{kind}-{dataset}"


def experiment_name(kind: str, dataset: str) -> str:
    """The MLflow experiment a kind's runs go to: ``recommenders-<dataset>``,
    ``rankers-<dataset>``, ``segments-<dataset>``, or ``churn-<dataset>`` for both the
    churn and the value model."""
    _check_kind(kind)
    if kind in ("churn", "clv"):
        return f"churn-{dataset}"
    return f"segments-{dataset}" if kind == "segments" else f"{kind}s-{dataset}"


def beats(kind: str, candidate: float, other: float) -> bool:
    """Whether ``candidate`` is strictly better than ``other`` on ``kind``'s gate metric."""
    return candidate < other if kind in LOWER_IS_BETTER else candidate > other


def metric_key(metric: str) -> str:
    """An MLflow metric or tag name for ``metric`` (``@`` is not allowed there)."""
    return metric.replace("@", "_at_")


@dataclass
class Loaded:
    """A registered version, loaded: its native model and what its run recorded."""

    kind: str
    name: str
    version: str
    run_id: str
    model: Any  # a Recommender, or a RankingPipeline
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    #: The version's own tags (held-out score, trained_on, data_fingerprint).
    version_tags: dict[str, str] = field(default_factory=dict)
    #: For a ranker: the interactions and user attributes it was fitted with.
    history: pd.DataFrame | None = None
    users: pd.DataFrame | None = None

    @property
    def protocol(self) -> str:
        return self.tags.get("protocol") or self.params.get("protocol") or "unknown"


@dataclass
class Decision:
    """What the gate decided, and why."""

    promoted: bool
    champion_metric: float | None
    text: str


def load_native(kind: str, folder: Path) -> Any:
    """The native model in a version's artifact folder, with the training code's loader."""
    _check_kind(kind)
    if kind == "recommender":
        from bespoke.training.families import family

        meta = json.loads((folder / "model.json").read_text())
        return family(meta["family"]).load(folder)
    if kind == "segments":
        from bespoke.segments.behaviour import Segmenter

        return Segmenter.load(folder / "segments.json")
    if kind in PERSON_KINDS:
        from bespoke.segments.churn import ChurnModel, ValueModel

        return (ChurnModel if kind == "churn" else ValueModel).load(folder)
    from bespoke.training.ranker import RankingPipeline

    return RankingPipeline.load(folder)


def _word(kind: str, better: bool) -> str:
    if kind in LOWER_IS_BETTER:
        return "<" if better else ">="
    return ">" if better else "<="


class Registry:
    """The registry of one tracking store, through one explicit MLflow client."""

    def __init__(self, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri
        self._client: MlflowClient | None = None

    @classmethod
    def of(cls, settings: Settings) -> Registry:
        assert settings.mlflow_tracking_uri is not None
        return cls(settings.mlflow_tracking_uri)

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            import mlflow

            # Tracking and registry both here: a models:/ URI is otherwise resolved
            # through the process-wide registry, whatever client one holds.
            self._client = mlflow.MlflowClient(
                tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri
            )
        return self._client

    # --- reading -----------------------------------------------------------------------

    def champion(self, kind: str, dataset: str) -> Any | None:
        """The model version aliased ``@champion`` (an MLflow ``ModelVersion``), or None."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version_by_alias(registered_name(kind, dataset), CHAMPION)
        except MlflowException:
            return None

    def champion_versions(self, dataset: str) -> dict[str, str | None]:
        """The ``@champion`` version number of each kind (``None``: none)."""
        versions: dict[str, str | None] = {}
        for kind in KINDS:
            found = self.champion(kind, dataset)
            versions[kind] = None if found is None else str(found.version)
        return versions

    def has_version(self, kind: str, dataset: str, version: str) -> bool:
        """Whether ``version`` of the kind's registered model exists."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_model_version(registered_name(kind, dataset), str(version))
        except MlflowException:
            return False
        return True

    def latest_of_family(self, kind: str, dataset: str, family: str) -> str | None:
        """The newest registered version trained as ``family`` (its run's ``model`` tag),
        or None: what an experiment variant naming a family serves."""
        from mlflow.exceptions import MlflowException

        try:
            versions = self.client.search_model_versions(
                f"name = '{registered_name(kind, dataset)}'"
            )
        except MlflowException:
            return None
        for found in sorted(versions, key=lambda v: -int(v.version)):
            if self.client.get_run(found.run_id).data.tags.get("model") == family:
                return str(found.version)
        return None

    def champion_run(self, kind: str, dataset: str) -> tuple[Any, Any] | None:
        """``(model version, training run)`` of the ``@champion``; None without one."""
        version = self.champion(kind, dataset)
        return None if version is None else (version, self.client.get_run(version.run_id))

    def download(self, kind: str, dataset: str, version: str, into: Path) -> Path:
        """The artifacts folder of one version (holding ``recommender`` or
        ``ranking_pipeline``, and a ranker's ``history``), downloaded under ``into``."""
        import os

        import mlflow

        # A service's log or a CLI's output is no place for download progress bars.
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        name = registered_name(kind, dataset)
        location = self.client.get_model_version_download_uri(name, version)
        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=location, dst_path=str(into), tracking_uri=self.tracking_uri
            )
        )
        folder = local / "artifacts"
        if not (folder / ARTIFACTS[kind]).is_dir():
            raise RuntimeError(
                f"models:/{name}/{version} has no {ARTIFACTS[kind]!r} artifact: not a Bespoke model"
            )
        return folder

    def load(
        self, kind: str, dataset: str, version: str | None = None, *, history: bool = False
    ) -> Loaded | None:
        """Version ``version`` (default: the ``@champion``; None when there is none) with
        its native model, and (``history``, rankers only) the histories it was fitted
        with."""
        if version is None:
            found = self.champion(kind, dataset)
            if found is None:
                return None
        else:
            found = self.client.get_model_version(registered_name(kind, dataset), version)
        run = self.client.get_run(found.run_id)
        frames: dict[str, pd.DataFrame] = {}
        with tempfile.TemporaryDirectory(prefix="bespoke-model-") as scratch:
            folder = self.download(kind, dataset, str(found.version), Path(scratch))
            model = load_native(kind, folder / ARTIFACTS[kind])
            stored = folder / HISTORY_ARTIFACT
            if history and stored.is_dir():
                frames = {
                    "history": pd.read_parquet(stored / "interactions.parquet"),
                    "users": pd.read_parquet(stored / "users.parquet"),
                }
        return Loaded(
            kind,
            registered_name(kind, dataset),
            str(found.version),
            found.run_id,
            model,
            dict(run.data.tags),
            dict(run.data.params),
            dict(run.data.metrics),
            dict(found.tags or {}),
            frames.get("history"),
            frames.get("users"),
        )

    def list_models(self) -> pd.DataFrame:
        """Every registered version: its aliases, held-out score and what it was fitted on."""
        rows = []
        for model in self.client.search_registered_models():
            aliases: dict[str, list[str]] = {}
            for alias, number in (model.aliases or {}).items():
                aliases.setdefault(str(number), []).append(alias)
            for version in self.client.search_model_versions(f"name = '{model.name}'"):
                tags = version.tags or {}
                metric = tags.get("gate_metric", "")
                rows.append(
                    {
                        "model": model.name,
                        "version": int(version.version),
                        "aliases": ",".join(sorted(aliases.get(str(version.version), []))),
                        "gate_metric": metric,
                        "held_out": float(tags.get(metric_key(metric), "nan")),
                        "trained_on": tags.get("trained_on", ""),
                        "run_id": version.run_id,
                    }
                )
        columns = ["model", "version", "aliases", "gate_metric", "held_out", "trained_on", "run_id"]
        return pd.DataFrame(rows, columns=columns).sort_values(["model", "version"])

    # --- writing -----------------------------------------------------------------------

    def register(
        self,
        kind: str,
        dataset: str,
        entry_point: Path,
        artifacts: Mapping[str, str],
        signature: Any,
        example: Any,
        *,
        held_out: float,
        trained_on: str,
        data_fingerprint: str,
    ) -> str:
        """Log a pyfunc model from code with its artifacts under the active run (see
        :func:`bespoke.training.tracking.session`), register it and tag the version with
        its held-out score and what it was fitted on; returns the version."""
        import mlflow

        from bespoke.training import tracking

        name = registered_name(kind, dataset)
        metric = GATE_METRICS[kind]
        with tracking.quiet_events():  # "Successfully registered …": the caller reports it
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(entry_point),
                artifacts=dict(artifacts),
                signature=signature,
                input_example=example,
                registered_model_name=name,
                # Stated, not inferred: inference loads the model in a subprocess (slow).
                pip_requirements=tracking.requirements(),
            )
        version = str(info.registered_model_version)
        tags = {
            "gate_metric": metric,
            metric_key(metric): repr(float(held_out)),
            "trained_on": trained_on,
            "data_fingerprint": data_fingerprint,
        }
        for key, value in tags.items():
            self.client.set_model_version_tag(name, version, key, value)
        return version

    def gate(
        self,
        kind: str,
        dataset: str,
        version: str,
        candidate: float,
        run_id: str,
        champion_score: Callable[[Loaded], float],
        *,
        baseline: tuple[str, float] | None = None,
    ) -> Decision:
        """Move ``@champion`` to ``version`` only if its held-out score ``candidate`` beats
        the current champion's configuration, refit and scored on the same split by
        ``champion_score(loaded champion)``, and beats ``baseline`` (the simpler path the
        model would replace, ``(what, score)`` on the same data) when one is given. A
        champion that no longer beats the baseline loses the alias, so that the simpler
        path is served. The scores and the decision go to run ``run_id``."""
        name = registered_name(kind, dataset)
        key = metric_key(GATE_METRICS[kind])
        reasons, promoted, champion_metric = [], True, None
        if baseline is not None:
            what, floor = baseline
            better = beats(kind, candidate, floor)
            promoted &= better
            reasons.append(f"candidate {candidate:.4f} {_word(kind, better)} {what} {floor:.4f}")
            self.client.log_metric(run_id, f"gate.baseline_{key}", floor)
        current = self.champion(kind, dataset)
        if current is None or str(current.version) == str(version):
            reasons.append("no champion yet")
        else:
            loaded = self.load(kind, dataset, str(current.version))
            assert loaded is not None
            champion_metric = float(champion_score(loaded))
            better = beats(kind, candidate, champion_metric)
            promoted &= better
            reasons.append(
                f"candidate {candidate:.4f} {_word(kind, better)} champion v{current.version}"
                f"'s configuration {champion_metric:.4f}, refit and scored on the same split"
            )
            if math.isfinite(champion_metric):
                self.client.log_metric(run_id, f"gate.champion_{key}", champion_metric)
            if (
                not promoted
                and baseline is not None
                and not beats(kind, champion_metric, baseline[1])
            ):
                self.client.delete_registered_model_alias(name, CHAMPION)
                reasons.append(
                    f"champion v{current.version} no longer beats {baseline[0]}: alias "
                    f"removed, {baseline[0]} is served"
                )
        text = "; ".join(reasons) + (": promoted" if promoted else ": not promoted")
        self.client.log_metric(run_id, f"gate.candidate_{key}", candidate)
        self.client.set_tag(run_id, "gate.decision", text)
        self.client.set_tag(run_id, "gate.promoted", str(promoted))
        if promoted:
            self.client.set_registered_model_alias(name, CHAMPION, version)
        return Decision(promoted, champion_metric, text)

    def promote(self, kind: str, dataset: str, version: str) -> None:
        """Move ``@champion`` to ``version`` by hand (overrides the gate)."""
        from mlflow.exceptions import MlflowException

        name = registered_name(kind, dataset)
        try:
            self.client.get_model_version(name, version)
        except MlflowException as error:
            raise ValueError(f"{name} has no version {version!r}") from error
        self.client.set_registered_model_alias(name, CHAMPION, version)
