"""Training verbs: behavioural and rule segments with history in the lake."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import mlflow
import pandas as pd
import pyarrow as pa

from bespoke.features.collect import new_run_id
from bespoke.features.lake import Lake
from bespoke.features.schema import SEGMENT_SCHEMA
from bespoke.segments.behaviour import Segmenter
from bespoke.segments.features import load_person_events, person_features
from bespoke.segments.rules import load_rule_segments, rule_memberships
from bespoke.settings import Settings
from bespoke.training import tracking

# --- membership with history ---------------------------------------------------------------


def write_assignments(
    lake: Lake,
    dataset: str,
    assignments: pd.DataFrame,
    valid_from: str | datetime,
    model: str,
) -> int:
    """Keep ``assignments`` (indexed by person; ``segment`` and ``rule_segments``) as of
    ``valid_from`` in the lake's ``segments`` table, as one lake run. Only people whose
    segments changed since their latest assignment (or who have none) get a row, so the
    ``segments_history`` view shows each change once, with when it stopped being true.
    Returns the rows written."""
    moment = pd.Timestamp(valid_from)
    moment = moment.tz_localize("UTC") if moment.tzinfo is None else moment.tz_convert("UTC")
    frame = pd.DataFrame(
        {
            "person": assignments.index.astype(str),
            "segment": assignments.get("segment", pd.Series(None, index=assignments.index)).to_numpy(),
            "rule_segments": [sorted(v) if isinstance(v, list) else [] for v in
                              assignments.get("rule_segments", pd.Series([[]] * len(assignments), index=assignments.index))],
        }
    )  # fmt: skip
    latest = (
        lake.connect()
        .execute("SELECT person, segment, rule_segments FROM segments WHERE dataset = ?", [dataset])
        .df()
    )
    if len(latest):
        before = {p: (s, list(r)) for p, s, r in latest.itertuples(index=False)}
        keep = [before.get(p) != (s, r) for p, s, r in frame.itertuples(index=False)]
        frame = frame[keep]
    if frame.empty:
        return 0
    now = datetime.now(UTC)
    run_id = new_run_id(now)
    table = pa.Table.from_pandas(
        frame.assign(dataset=dataset, valid_from=moment, model=model, run_id=run_id,
                     written_at=pd.Timestamp(now)),
        schema=SEGMENT_SCHEMA, preserve_index=False,
    )  # fmt: skip
    with lake.transaction(run_id) as writer:
        writer.write("segments", table, dataset)
        writer.commit({"run_id": run_id, "dataset": dataset, "source": "segments",
                       "started_at": now.isoformat(), "valid_from": moment.isoformat(),
                       "model": model, "assignments_written": len(frame)})  # fmt: skip
    return len(frame)


# --- training: the lifecycle verb ----------------------------------------------------------


@dataclass
class SegmentsResult:
    dataset: str
    as_of: str
    model: Segmenter
    people: int
    sizes: dict[str, int]
    rule_sizes: dict[str, int]
    written: int
    run_id: str
    model_path: Path


def model_path(settings: Settings, dataset: str) -> Path:
    """Where the dataset's current segment model is kept (the next fit keeps its names)."""
    assert settings.home is not None
    return settings.home / "models" / f"segments-{dataset}.json"


def train_segments(
    settings: Settings,
    dataset: str,
    as_of: str | datetime,
    rules_path: str | Path | None = None,
    k_range: tuple[int, int] = (3, 7),
) -> SegmentsResult:
    """Person features as of ``as_of`` → behavioural segments (names kept from the
    previous model) and rule segments → assignments with history in the lake; the run is
    tracked in MLflow (experiment ``segments-<dataset>``: parameters, k, silhouettes,
    stability, the model file)."""
    rules = load_rule_segments(rules_path) if rules_path else []
    lake = Lake(settings.lake_url)
    features = person_features(load_person_events(lake, dataset), as_of)
    path = model_path(settings, dataset)
    previous = Segmenter.load(path) if path.exists() else None
    model = Segmenter(k_range=k_range).fit(features, previous=previous)
    segment = model.predict(features)
    attributes = lake.connect().execute(
        "SELECT user_id, * EXCLUDE (user_id, dataset, imputed, run_id, ingested_at) FROM users "
        "WHERE dataset = ?", [dataset]
    ).df().set_index("user_id")  # fmt: skip
    members = rule_memberships(rules, features, attributes) if rules else pd.Series(
        [[] for _ in range(len(features))], index=features.index
    )  # fmt: skip
    with (
        tracking.session(settings, f"segments-{dataset}") as experiment,
        mlflow.start_run(run_name=f"segments {dataset}", experiment_id=experiment) as run,
    ):
        mlflow.set_tags(tracking.run_tags(settings, dataset=dataset, as_of=str(as_of)))
        mlflow.log_params({"k_range": list(k_range), "features": list(model.features),
                           "rules": str(rules_path or ""), "previous": str(previous is not None)})  # fmt: skip
        mlflow.log_metrics({"k": model.k_, "stability_ari": model.stability_,
                            **{f"silhouette_k{k}": v for k, v in model.silhouettes_.items()}})  # fmt: skip
        model.save(path)
        mlflow.log_artifact(str(path), artifact_path="segments")
        run_id = run.info.run_id
    written = write_assignments(
        lake, dataset, pd.DataFrame({"segment": segment, "rule_segments": members}),
        as_of, f"segments-{dataset}@{run_id[:12]}",
    )  # fmt: skip
    rule_sizes = {r.name: int(sum(r.name in m for m in members)) for r in rules}
    return SegmentsResult(
        dataset=dataset, as_of=str(as_of), model=model, people=len(features),
        sizes=segment.value_counts().to_dict(), rule_sizes=rule_sizes, written=written,
        run_id=run_id, model_path=path,
    )  # fmt: skip
