"""``bespoke retrain`` on real MovieLens 100K champions and a real MLflow store: nothing
is trained when the data holds still and quality holds; a degraded champion is
challenged (tuned, refit, gated) with the evidence attached to the challenger's run; a
forced run records the real drift check; bad input registers nothing.

The drift check is the real :func:`~bespoke.monitoring.drift.run_drift`, with its ranker
table off and small HTML samples to stay quick. "No drift" compares a window with
itself, so these tests do not hinge on the drift thresholds (the drift tests own them).
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from bespoke.features.lake import Lake
from bespoke.monitoring.quality_cli import retrain_command
from bespoke.monitoring.retrain import ARTIFACT_PATH
from bespoke.monitoring.windows import parse_window
from bespoke.serving.local import local_settings
from bespoke.settings import Settings, get_settings
from bespoke.training.data import Interactions, load_interactions
from bespoke.training.registry import CHAMPION, Registry, registered_name
from bespoke.training.train import train_recommender

NAME = registered_name("recommender", "ml-100k")
SAME_WINDOW = ["--reference", "last 30 days", "--current", "last 30 days"]


def home(folder: Path, lake: Lake) -> Settings:
    """Settings of a home of its own (MLflow store, reports) over the shared lake."""
    return local_settings(folder).model_copy(update={"lake_url": lake.url, "root": folder})


def use(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the command (``get_settings``) at ``settings``."""
    for variable, value in settings.as_environment().items():
        monkeypatch.setenv(variable, value)
    get_settings.cache_clear()


def invoke(*args: str) -> object:
    cli = typer.Typer()
    cli.command("retrain")(retrain_command)
    return CliRunner().invoke(cli, ["--dataset", "ml-100k", "--trials", "2", *args])


@pytest.fixture(scope="module")
def interactions(ml100k_lake) -> Interactions:
    lake, _ = ml100k_lake
    return load_interactions(lake, "ml-100k")


@pytest.fixture(scope="module")
def before_the_window(interactions: Interactions) -> Interactions:
    latest = interactions.timestamps.max().astype("datetime64[us]").item()
    start = parse_window("last 30 days", latest).start.replace(tzinfo=None)
    return interactions.subset(interactions.timestamps < np.datetime64(start, "us"))


@pytest.fixture
def drift_config(tmp_path: Path) -> Path:
    path = tmp_path / "drift.json"
    path.write_text(json.dumps({"tables": {"ranker": {"enabled": False}},
                                "html": {"max_rows": 200}}))  # fmt: skip
    return path


@pytest.fixture
def healthy(ml100k_lake, before_the_window, tmp_path, monkeypatch) -> Settings:
    """A temporal EASE champion trained on what happened before the last 30 days."""
    lake, _ = ml100k_lake
    settings = home(tmp_path / "healthy", lake)
    train_recommender(settings, "ml-100k", "ease", {"l2": 500.0}, protocol="temporal",
                      interactions=before_the_window)  # fmt: skip
    use(settings, monkeypatch)
    return settings


@pytest.fixture
def degraded(ml100k_lake, interactions, tmp_path, monkeypatch) -> Settings:
    """An EASE champion of a random split, registered as fitted: the quality check flags
    it (its held-out figures read from the same period as its training data)."""
    lake, _ = ml100k_lake
    settings = home(tmp_path / "degraded", lake)
    train_recommender(settings, "ml-100k", "ease", {"l2": 500.0}, protocol="ms-stratified",
                      refit=False, interactions=interactions)  # fmt: skip
    use(settings, monkeypatch)
    return settings


def _client(settings: Settings) -> mlflow.MlflowClient:
    return Registry.of(settings).client


def _versions(settings: Settings) -> list[str]:
    client = _client(settings)
    return sorted(str(v.version) for v in client.search_model_versions(f"name = '{NAME}'"))


def _runs(settings: Settings) -> int:
    client = _client(settings)
    experiments = [e.experiment_id for e in client.search_experiments()]
    return len(client.search_runs(experiments))


def _report(settings: Settings) -> Path:
    (folder,) = settings.reports_dir.iterdir()
    return folder


def test_no_drift_and_quality_holding_trains_nothing(healthy: Settings, drift_config) -> None:
    runs = _runs(healthy)
    result = invoke("--if-drift", *SAME_WINDOW, "--drift-config", str(drift_config))
    assert result.exit_code == 0, result.output
    assert "no drift" in result.output and "nothing to do" in result.output
    assert _versions(healthy) == ["1"] and _runs(healthy) == runs
    folder = _report(healthy)
    assert {"drift.json", "quality.json", "retrain.json"} <= {p.name for p in folder.iterdir()}
    summary = json.loads((folder / "retrain.json").read_text())
    assert summary["triggered"] is False and summary["reasons"] == []
    assert summary["drift"]["drifted"] is False and summary["quality"]["degraded"] is False


def test_degraded_quality_challenges_the_champion_with_the_evidence_attached(
    degraded: Settings, drift_config
) -> None:
    result = invoke("--if-drift", *SAME_WINDOW, "--drift-config", str(drift_config))
    assert result.exit_code == 0, result.output
    output = result.output.replace("\n", " ")
    assert "quality degraded: recommender ndcg@10" in output
    assert "new version 2" in output
    assert _versions(degraded) == ["1", "2"]

    folder = _report(degraded)
    summary = json.loads((folder / "retrain.json").read_text())
    trained = summary["trained"]["recommender"]
    assert summary["triggered"] is True and trained["version"] == "2"
    assert (trained["family"], trained["protocol"]) == ("ease", "ms-stratified")
    assert trained["tuning"]["trials"] == 2
    client = _client(degraded)
    run = client.get_run(trained["run_id"])
    # the gate decided on the same held-out data and said so in the run
    assert run.data.tags["gate.promoted"] == str(trained["promoted"])
    assert run.data.tags["gate.decision"] == trained["decision"]
    assert "gate.champion_ndcg_at_10" in run.data.metrics
    champion = str(client.get_model_version_by_alias(NAME, CHAMPION).version)
    assert champion == ("2" if trained["promoted"] else "1")
    assert ("promoted to @champion" if trained["promoted"] else "not promoted") in output
    # the evidence travels with the challenger
    assert run.data.tags["retrain.reasons"].startswith("quality degraded")
    attached = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, ARTIFACT_PATH)}
    assert {"drift.json", "quality.json", "retrain.json"} <= attached
    assert any(name.startswith("drift-") and name.endswith(".html") for name in attached)
    local = mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path=f"{ARTIFACT_PATH}/quality.json",
        tracking_uri=degraded.mlflow_tracking_uri,
    )  # fmt: skip
    assert json.loads(Path(local).read_text())["verdict"] == "degraded"


def test_a_forced_run_retrains_and_records_the_real_drift_check(
    healthy: Settings, drift_config
) -> None:
    """Without --if-drift it trains whatever the checks say; the first two months of
    ML-100K against its last two go through the real drift check."""
    result = invoke("--reference", "1997-09-20..1997-11-19", "--current", "last 60 days",
                    "--drift-config", str(drift_config))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert _versions(healthy) == ["1", "2"]
    folder = _report(healthy)
    summary = json.loads((folder / "retrain.json").read_text())
    drift = json.loads((folder / "drift.json").read_text())
    assert summary["reasons"][0] == "forced (run without --if-drift)"
    assert summary["drift"]["drifted"] == drift["drifted"]
    assert any(r.startswith("drift in") for r in summary["reasons"]) == drift["drifted"]
    assert summary["trained"]["recommender"]["protocol"] == "temporal"  # the champion's
    run = _client(healthy).get_run(summary["trained"]["recommender"]["run_id"])
    assert run.data.tags["protocol"] == "temporal"
    assert "forced" in run.data.tags["retrain.reasons"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--if-drift", "--dataset", "nope"], "'nope'"),
        (["--dataset", "nope"], "dataset 'nope' has no events"),
        (["--if-drift", "--reference", "2019-01-01..2019-01-31", "--current", "last 30 days"],
         "reference window '2019-01-01..2019-01-31'"),
    ],
)  # fmt: skip
def test_bad_input_exits_2_and_registers_nothing(
    ml100k_lake, tmp_path: Path, monkeypatch, drift_config, args: list[str], message: str
) -> None:
    lake, _ = ml100k_lake
    settings = home(tmp_path / "empty", lake)  # no champion: a check passing would train
    use(settings, monkeypatch)
    result = invoke("--drift-config", str(drift_config), *args)
    assert result.exit_code == 2, result.output
    assert message in result.output.replace("\n", " ")
    assert "Traceback" not in result.output
    assert _versions(settings) == [] and _runs(settings) == 0
    assert not settings.reports_dir.exists() or not any(settings.reports_dir.iterdir())
