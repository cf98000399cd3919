"""Analysis and rollout on CDNOW's real purchases: exposures joined to outcomes in the
attribution window, figures equal to the statistics engine on independently computed
outcomes, and the guardrails halting a ramp on a planted sample-ratio mismatch or a
planted harm."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bespoke.experiments import stats
from bespoke.experiments.analysis import AnalysisError, analyze
from bespoke.experiments.assignment import bucket_ranges, choose_many, hash_many
from bespoke.experiments.definitions import parse_experiments
from bespoke.experiments.ledger import ExperimentLedger, Exposure
from bespoke.experiments.rollout import RolloutError, check, ramp, resume, stop
from bespoke.features.lake import Lake
from bespoke.serving.db import Database

START = datetime(1997, 4, 1, tzinfo=UTC)
AS_OF = datetime(1997, 9, 30, tzinfo=UTC)


def definition(key: str, **overrides) -> object:
    spec = {
        "key": key,
        "hypothesis": "A new recommender lifts CDNOW purchases",
        "variants": [{"key": "control", "weight": 0.5}, {"key": "treatment", "weight": 0.5}],
        "coverage": 0.5,
        "ramp": [0.5, 1.0],
        "primary_metric": "conversion",
        "guardrail_metrics": ["revenue_per_user"],
        "minimum_detectable_effect": 0.05,
        "attribution_window_days": 60,
        **overrides,
    }
    return parse_experiments({"version": 1, "experiments": [spec]})[0]


@pytest.fixture
def lake(cdnow_lake, tmp_path: Path) -> Lake:
    source, _ = cdnow_lake
    shutil.copytree(source.path(), tmp_path / "lake")
    return Lake(str(tmp_path / "lake"))


@pytest.fixture
def customers(lake: Lake) -> pd.DataFrame:
    """Every CDNOW customer who bought before 1997-04-01, exposed on 1997-03-01 (or at their
    first purchase, when that came later in March)."""
    return (
        lake.connect()
        .execute(
            "SELECT user_id AS person, greatest(min(timestamp), TIMESTAMPTZ '1997-03-01') AS exposed_at "
            "FROM events WHERE dataset = 'cdnow' AND timestamp < TIMESTAMPTZ '1997-04-01' "
            "GROUP BY 1 ORDER BY 1"
        )
        .df()
    )


def expose(
    ledger: ExperimentLedger, lake: Lake, experiment, people: pd.DataFrame, variants
) -> None:
    rows = [
        Exposure("cdnow", experiment.key, person, False, experiment.variants[v].key, int(v),
                 experiment.hash_version, False, pd.Timestamp(at).to_pydatetime())
        for person, at, v in zip(people["person"], people["exposed_at"], variants, strict=True)
        if v >= 0
    ]  # fmt: skip
    ledger.record(rows)
    ledger.flush(lake)


def hashed(experiment, people: pd.DataFrame, coverage: float = 1.0) -> np.ndarray:
    n = hash_many(experiment.hash_seed, people["person"].to_numpy(), experiment.hash_version)
    return choose_many(n, bucket_ranges(2, coverage, experiment.weights))


def test_analysis_equals_the_statistics_engine_on_independent_outcomes(
    lake: Lake, customers: pd.DataFrame, tmp_path: Path
) -> None:
    experiment = definition("cdnow-aa")
    ledger = ExperimentLedger(Database(tmp_path / "online.sqlite"))
    variants = hashed(experiment, customers)
    expose(ledger, lake, experiment, customers, variants)
    result = analyze(lake, experiment, "cdnow", as_of=AS_OF)
    assert result.exposed == {
        "control": int((variants == 0).sum()),
        "treatment": int((variants == 1).sum()),
    }
    assert result.srm is not None and not result.srm.mismatch
    # the outcome, computed here straight from the events
    events = (
        lake.connect()
        .execute(
            "SELECT user_id AS person, timestamp, value FROM events WHERE dataset = 'cdnow' "
            "AND event_type = 'purchase'"
        )
        .df()
    )
    joined = events.merge(customers.assign(variant=variants), on="person")
    offset = pd.to_datetime(joined["timestamp"], utc=True) - pd.to_datetime(
        joined["exposed_at"], utc=True
    )
    inside = joined[(offset >= pd.Timedelta(0)) & (offset < pd.Timedelta(days=60))]
    buyers = inside.groupby("person")["variant"].first()
    control_n, treatment_n = (variants == 0).sum(), (variants == 1).sum()
    expected = stats.compare_proportions(
        int((buyers == 0).sum()), int(control_n), int((buyers == 1).sum()), int(treatment_n)
    )
    conversion = result.result("conversion", "treatment")
    assert conversion.comparison.p_value == pytest.approx(expected.p_value, abs=1e-9)
    assert conversion.comparison.lift == pytest.approx(expected.lift, abs=1e-9)
    assert (
        conversion.role == "primary"
        and result.result("revenue_per_user", "treatment").role == "guardrail"
    )
    # an A/A split: nothing significant after Holm, and the CUPED covariate helps revenue
    assert all(r.adjusted_p > 0.05 for r in result.results)
    assert result.result("revenue_per_user", "treatment").comparison.variance_reduction > 0
    # the sequential path: always-valid p never rises, the last look holds everyone
    path = result.sequential["treatment"]
    assert (np.diff(path["p_value"].to_numpy()) <= 1e-12).all()
    assert path["people"].iloc[-1] == len(customers)
    # each look saw only what had happened by its day: the last (after every window closed)
    # equals the final comparison, an earlier one differs
    assert path["difference"].iloc[-1] == pytest.approx(conversion.comparison.difference, abs=1e-12)
    assert pd.Timestamp(path["day"].iloc[-1]) <= pd.Timestamp(
        customers["exposed_at"].max()
    ) + pd.Timedelta(days=61)
    middle = path.iloc[len(path) // 2]
    assert middle["people"] == len(customers)  # everyone was exposed by 1997-03-01
    assert middle["difference"] != pytest.approx(conversion.comparison.difference, abs=1e-9)
    assert set(result.segments["variant"]) == {"control", "treatment"}
    assert result.as_dict()["results"][0]["metric"] == "conversion"


def test_forced_exposures_and_later_ones_are_left_out(
    lake: Lake, customers: pd.DataFrame, tmp_path: Path
) -> None:
    experiment = definition("cdnow-forced")
    ledger = ExperimentLedger(Database(tmp_path / "online.sqlite"))
    first = customers.iloc[:300]
    expose(ledger, lake, experiment, first, hashed(experiment, first))
    ledger.record(
        [Exposure("cdnow", experiment.key, "qa-person", False, "treatment", 1, 2, True, START)]
    )
    ledger.flush(lake)
    result = analyze(lake, experiment, "cdnow", as_of=AS_OF)
    assert sum(result.exposed.values()) == 300
    with pytest.raises(AnalysisError, match="has no exposures in 'cdnow' up to 1997-02-01"):
        analyze(lake, experiment, "cdnow", as_of=datetime(1997, 2, 1, tzinfo=UTC))


def test_a_ramp_moves_while_guardrails_pass_and_halts_on_a_planted_mismatch(
    lake: Lake, customers: pd.DataFrame, tmp_path: Path
) -> None:
    experiment = definition("cdnow-ramp")
    ledger = ExperimentLedger(Database(tmp_path / "online.sqlite"))
    variants = hashed(experiment, customers, coverage=0.5)
    expose(ledger, lake, experiment, customers, variants)
    moved = ramp(experiment, ledger, lake, "cdnow", actor="alice", now=AS_OF)
    assert (moved.action, moved.coverage_before, moved.coverage_after) == ("ramped", 0.5, 1.0)
    assert all(c.passed for c in moved.checks)
    assert (
        ramp(experiment, ledger, lake, "cdnow", actor="alice", now=AS_OF).action
        == "at-full-coverage"
    )
    # plant a sample-ratio mismatch: 800 more control people than the weights allow
    extra = customers[variants < 0].iloc[:800]
    expose(ledger, lake, experiment, extra, np.zeros(len(extra), dtype=int))
    halted = check(experiment, ledger, lake, "cdnow", actor="scheduler", now=AS_OF)
    assert halted.action == "halted", halted.checks
    assert [c.name for c in halted.checks if not c.passed] == ["sample ratio"]
    state = ledger.state(experiment.key)
    assert state.status == "halted" and "sample ratio" in state.reason
    trail = ledger.audit(experiment.key)
    assert [(e["action"], e["actor"]) for e in trail] == [("ramp", "alice"), ("halt", "scheduler")]
    assert trail[1]["checks"][0]["name"] == "sample ratio"
    with pytest.raises(RolloutError, match=r"is halted .*resume"):
        ramp(experiment, ledger, lake, "cdnow", actor="alice", now=AS_OF)
    assert resume(experiment, ledger, actor="alice").status == "running"
    assert stop(experiment, ledger, actor="alice", reason="done").status == "stopped"


def test_a_planted_harm_to_a_guardrail_metric_halts_the_ramp(
    lake: Lake, customers: pd.DataFrame, tmp_path: Path
) -> None:
    experiment = definition(
        "cdnow-harm",
        primary_metric="events_per_user",
        guardrail_metrics=["revenue_per_user", "conversion"],
    )
    ledger = ExperimentLedger(Database(tmp_path / "online.sqlite"))
    # the "treatment" gets the people who went on to spend least: a planted harm, in a
    # 50/50 split so that only the metrics can catch it
    spend = (
        lake.connect()
        .execute(
            "SELECT user_id AS person, sum(value) AS spend FROM events WHERE dataset = 'cdnow' "
            "AND timestamp >= TIMESTAMPTZ '1997-03-01' AND timestamp < TIMESTAMPTZ '1997-06-01' GROUP BY 1"
        )
        .df()
    )
    ranked = customers.merge(spend, on="person", how="left").fillna({"spend": 0.0})
    ranked = ranked.sample(frac=1.0, random_state=7).sort_values("spend", kind="stable")
    variants = np.where(np.arange(len(ranked)) < len(ranked) // 2, 1, 0)
    expose(ledger, lake, experiment, ranked, variants)
    decision = ramp(experiment, ledger, lake, "cdnow", actor="alice", now=AS_OF)
    assert decision.action == "halted"
    failed = {c.name: c for c in decision.checks if not c.passed}
    assert list(failed) == ["guardrail metrics"]
    assert "revenue_per_user is worse in treatment" in failed["guardrail metrics"].detail
    assert ledger.state(experiment.key).coverage == 0.5


def test_the_experiment_commands_ramp_halt_analyze_and_refuse_bad_input(
    cdnow_lake, customers: pd.DataFrame, isolated_settings: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json as json_module

    from typer.testing import CliRunner

    from bespoke.cli import app
    from bespoke.serving.store import open_store
    from bespoke.settings import get_settings

    source, _ = cdnow_lake
    shutil.copytree(source.path(), isolated_settings / "lake")
    spec = {"key": "cdnow-cli", "hypothesis": "A new recommender lifts CDNOW purchases",
            "variants": [{"key": "control", "weight": 0.5}, {"key": "treatment", "weight": 0.5}],
            "coverage": 0.5, "ramp": [0.5, 1.0], "primary_metric": "conversion",
            "guardrail_metrics": ["revenue_per_user"], "minimum_detectable_effect": 0.05,
            "attribution_window_days": 60}  # fmt: skip
    path = isolated_settings / "experiments.json"
    path.write_text(json_module.dumps({"version": 1, "experiments": [spec]}))
    monkeypatch.setenv("BESPOKE_EXPERIMENTS_PATH", str(path))
    monkeypatch.setenv("BESPOKE_SERVING_DATASET", "cdnow")
    get_settings.cache_clear()
    experiment = parse_experiments({"version": 1, "experiments": [spec]})[0]
    ledger = ExperimentLedger(open_store(get_settings()).database())
    variants = hashed(experiment, customers, coverage=0.5)
    rows = [Exposure("cdnow", "cdnow-cli", p, False, experiment.variants[v].key, int(v), 2, False,
                     pd.Timestamp(at).to_pydatetime())
            for p, at, v in zip(customers["person"], customers["exposed_at"], variants, strict=True)
            if v >= 0]  # fmt: skip
    ledger.record(rows)  # as the service does; the commands flush them to the lake
    runner = CliRunner()

    def run(*args: str) -> tuple[int, str]:
        result = runner.invoke(app, ["experiment", *args])
        return result.exit_code, result.output

    code, out = run("list")
    assert code == 0 and "cdnow-cli" in out and "running" in out
    code, out = run("ramp", "cdnow-cli", "--actor", "alice")
    assert code == 0 and "cdnow-cli: ramped" in out and "0.5 → 1" in out, out
    report = isolated_settings / "reports" / "cdnow-cli.html"
    code, out = run("analyze", "cdnow-cli", "--out", str(report), "--as-of", "1997-09-30",
                    "--json", str(report.with_suffix(".json")))  # fmt: skip
    assert code == 0, out
    page = report.read_text()
    for part in ("Experiment cdnow-cli", "Sample ratio", "Sequential boundary", "By segment",
                 "Rollout audit trail", "alice", "Plotly"):  # fmt: skip
        assert part in page, part
    figures = json_module.loads(report.with_suffix(".json").read_text())
    assert figures["exposed"]["control"] + figures["exposed"]["treatment"] == len(rows)
    code, out = run("status", "cdnow-cli")
    assert code == 0 and "running at coverage 1" in out and "ramp" in out
    # a planted mismatch: the scheduled check halts it and says so with exit code 3
    extra = customers[variants < 0].iloc[:800]
    ledger.record([Exposure("cdnow", "cdnow-cli", p, False, "control", 0, 2, False, START)
                   for p in extra["person"]])  # fmt: skip
    code, out = run("check", "--all", "--actor", "scheduler")
    assert code == 3 and "cdnow-cli: halted" in out and "FAIL sample ratio" in out, out
    code, out = run("ramp", "cdnow-cli")
    assert code == 1 and "is halted" in out
    # bad input: clear messages, nothing changed
    for args, message in [
        (("status", "nope"), "no experiment 'nope' is defined (defined: cdnow-cli)"),
        (("analyze", "cdnow-cli", "--out", "x.html", "--as-of", "soon"), "--as-of: not an ISO"),
        (("ramp",), "give an experiment key (or --all)"),
    ]:
        code, out = run(*args)
        assert code == 1 and message in out, out
    path.write_text(
        json_module.dumps({"version": 1, "experiments": [{**spec, "primary_metric": "nps"}]})
    )
    code, out = run("list")
    assert code == 1 and "experiments[0].primary_metric: unknown metric 'nps'" in out
    assert ledger.state("cdnow-cli").status == "halted"
