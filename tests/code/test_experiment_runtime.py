"""Experiments at request time: the ledger (state, audit, exposures → lake) and the
Experimenter's assignments, on a real SQLite file and a real Parquet lake."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bespoke.experiments.assignment import assign
from bespoke.experiments.definitions import ExperimentError, parse_experiments
from bespoke.experiments.ledger import ExperimentLedger
from bespoke.experiments.runtime import (
    Experimenter,
    ExperimentsFile,
    ForcedVariantError,
    treatment,
)
from bespoke.features.lake import Lake
from bespoke.serving.db import Database
from bespoke.serving.rules import request_document

NOW = datetime(2026, 12, 5, 12, tzinfo=UTC)


def experiment(**overrides: Any) -> dict[str, Any]:
    base = {
        "key": "ranker-on",
        "hypothesis": "Reranking lifts clicks",
        "variants": [
            {"key": "control", "weight": 0.5},
            {"key": "ranker", "weight": 0.5, "changes": {"ranker": True}},
        ],
        "coverage": 0.2,
        "ramp": [0.2, 0.5, 1.0],
        "primary_metric": "conversion",
        "minimum_detectable_effect": 0.05,
    }
    return {**base, **overrides}


def experimenter(tmp_path: Path, *specs: dict[str, Any]) -> Experimenter:
    experiments = parse_experiments({"version": 1, "experiments": list(specs)})
    ledger = ExperimentLedger(Database(tmp_path / "online.sqlite"))
    return Experimenter(lambda: experiments, ledger, "ml-100k", state_ttl_s=0)


def document(profile: dict[str, Any] | None = None) -> dict[str, Any]:
    return request_document(profile or {}, {}, NOW)


PEOPLE = [str(i) for i in range(1, 2001)]


def test_assignments_are_growthbooks_and_recorded_once(tmp_path: Path) -> None:
    runner = experimenter(tmp_path, experiment())
    served: dict[str, str] = {}
    for person in PEOPLE:
        found = runner.assign(person, anonymous=False, document=document(), now=NOW)
        index = assign(person, seed="ranker-on", weights=[0.5, 0.5], coverage=0.2)
        if index < 0:
            assert found == [] or not found[0].in_experiment
            continue
        (assignment,) = found
        assert assignment.in_experiment and assignment.variant_index == index
        served[person] = assignment.variant
    assert 300 < len(served) < 500  # about 20% of 2,000
    counts = runner.ledger.exposure_counts("ranker-on")
    assert sum(counts.values()) == len(served)
    # asking again records nothing new and answers the same
    for person in list(served)[:50]:
        (again,) = runner.assign(person, anonymous=False, document=document(), now=NOW)
        assert again.variant == served[person]
    assert sum(runner.ledger.exposure_counts("ranker-on").values()) == len(served)


def test_ramping_widens_coverage_without_moving_anyone_and_is_audited(tmp_path: Path) -> None:
    runner = experimenter(tmp_path, experiment())
    before = {}
    for person in PEOPLE:
        found = runner.assign(person, anonymous=False, document=document(), now=NOW)
        if found and found[0].in_experiment:
            before[person] = found[0].variant
    runner.ledger.change("ranker-on", coverage=1.0, status="running", action="ramp", actor="test")
    after = {}
    for person in PEOPLE:
        (found,) = runner.assign(person, anonymous=False, document=document(), now=NOW)
        after[person] = found.variant
    assert len(after) == len(PEOPLE)
    assert all(after[p] == v for p, v in before.items())
    (entry,) = runner.ledger.audit("ranker-on")
    assert entry["action"] == "ramp" and entry["coverage"] == 1.0 and entry["actor"] == "test"


def test_a_halted_experiment_serves_everyone_the_control_unrecorded(tmp_path: Path) -> None:
    runner = experimenter(tmp_path, experiment(coverage=1.0, ramp=[]))
    runner.ledger.change("ranker-on", coverage=1.0, status="halted", action="halt",
                         actor="guardrail", reason="srm")  # fmt: skip
    for person in PEOPLE[:200]:
        (found,) = runner.assign(person, anonymous=False, document=document(), now=NOW)
        assert (found.variant, found.in_experiment, found.changes) == ("control", False, {})
    assert runner.ledger.exposure_counts("ranker-on") == {}


def test_sticky_variants_survive_a_change_of_weights(tmp_path: Path) -> None:
    first = experimenter(tmp_path, experiment(coverage=1.0, ramp=[]))
    served = {p: first.assign(p, anonymous=False, document=document(), now=NOW)[0].variant
              for p in PEOPLE[:300]}  # fmt: skip
    reweighted = experiment(coverage=1.0, ramp=[], variants=[
        {"key": "control", "weight": 0.1},
        {"key": "ranker", "weight": 0.9, "changes": {"ranker": True}}])  # fmt: skip
    second = Experimenter(
        lambda: parse_experiments({"version": 1, "experiments": [reweighted]}),
        first.ledger, "ml-100k", state_ttl_s=0,
    )  # fmt: skip
    for person, variant in served.items():
        assert (
            second.assign(person, anonymous=False, document=document(), now=NOW)[0].variant
            == variant
        )


def test_targeting_windows_and_forced_variants(tmp_path: Path) -> None:
    targeted = experiment(
        key="ny-only", coverage=1.0, ramp=[],
        targeting={"profile.attributes.state": "NY"},
        start=(NOW - timedelta(days=1)).isoformat(), stop=(NOW + timedelta(days=1)).isoformat(),
    )  # fmt: skip
    runner = experimenter(tmp_path, targeted)
    ny, ca = document({"attributes": {"state": "NY"}}), document({"attributes": {"state": "CA"}})
    assert runner.assign("7", anonymous=False, document=ca, now=NOW) == []
    assert runner.assign("7", anonymous=False, document=ny, now=NOW)[0].in_experiment
    assert runner.assign("8", anonymous=False, document=ny, now=NOW + timedelta(days=2)) == []
    forced = runner.assign("9", anonymous=False, document=ca, now=NOW, force={"ny-only": "ranker"})
    assert (forced[0].variant, forced[0].forced, forced[0].changes) == (
        "ranker",
        True,
        {"ranker": True},
    )
    # person 7 only: the forced exposure is left out of what analysis counts
    assert sum(runner.ledger.exposure_counts("ny-only").values()) == 1
    assert sum(runner.ledger.exposure_counts("ny-only", forced=True).values()) == 2
    with pytest.raises(
        ForcedVariantError, match=r"force.ny-only: experiment 'ny-only' has no variant 'x'"
    ):
        runner.assign("9", anonymous=False, document=ny, now=NOW, force={"ny-only": "x"})
    with pytest.raises(ForcedVariantError, match=r"force.nope: no experiment 'nope'"):
        runner.assign("9", anonymous=False, document=ny, now=NOW, force={"nope": "control"})


def test_treatment_merges_changes_first_experiment_first(tmp_path: Path) -> None:
    content = experiment(key="banner", coverage=1.0, ramp=[], namespace=None, variants=[
        {"key": "control", "weight": 0.5},
        {"key": "winter", "weight": 0.5, "changes": {"content": {"title": "Winter"}, "ranker": False}},
    ])  # fmt: skip
    runner = experimenter(tmp_path, experiment(coverage=1.0, ramp=[]), content)
    for person in PEOPLE[:100]:
        found = runner.assign(person, anonymous=False, document=document(), now=NOW)
        merged = treatment(found)
        variants = {a.experiment: a.variant for a in found}
        if variants["ranker-on"] == "ranker":
            assert merged.ranker is True
        elif variants["banner"] == "winter":
            assert merged.ranker is False
        if variants["banner"] == "winter":
            assert merged.content[0]["payload"] == {"title": "Winter"}
        else:
            assert merged.content == ()


def test_exposures_reach_the_lake_once_even_when_a_flush_is_resent(tmp_path: Path) -> None:
    runner = experimenter(tmp_path, experiment(coverage=1.0, ramp=[]))
    for person in PEOPLE[:500]:
        runner.assign(person, anonymous=False, document=document(), now=NOW)
    runner.assign("anon-1", anonymous=True, document=document(), now=NOW)
    lake = Lake(str(tmp_path / "lake"))
    assert runner.ledger.pending() == 501
    assert runner.ledger.flush(lake) == 501
    assert runner.ledger.pending() == 0 and runner.ledger.flush(lake) == 0
    # a crash after the lake commit, before the rows were marked: they are sent again
    with runner.ledger.database.write() as con:
        con.execute("UPDATE exposures SET flushed = 0 WHERE seq <= 100")
    assert runner.ledger.flush(lake) == 100
    con = lake.connect()
    rows = con.execute(
        "SELECT count(*), count(DISTINCT person), sum(anonymous::INT), "
        "min(exposed_at) = max(exposed_at) FROM exposures WHERE dataset = 'ml-100k'"
    ).fetchone()
    assert rows == (501, 501, 1, True)
    by_variant = dict(con.execute("SELECT variant, count(*) FROM exposures GROUP BY 1").fetchall())
    assert by_variant == runner.ledger.exposure_counts("ranker-on")


def test_an_experiments_file_reloads_and_keeps_the_last_good_version(tmp_path: Path) -> None:
    path = tmp_path / "experiments.json"
    path.write_text(json.dumps({"version": 1, "experiments": [experiment()]}))

    def no_pins(experiments: list, source: str) -> None:
        for i, e in enumerate(experiments):
            for j, v in enumerate(e.variants):
                if v.changes.recommender_version == "999":
                    raise ExperimentError(source, [
                        f"experiments[{i}].variants[{j}].changes.recommender_version: "
                        "no version 999 is registered"])  # fmt: skip

    watched = ExperimentsFile(path, check=no_pins, interval=0)
    assert [e.key for e in watched.current()] == ["ranker-on"]

    def rewrite(data: Any) -> None:
        path.write_text(data if isinstance(data, str) else json.dumps(data))
        stamp = path.stat().st_mtime_ns + 10**9
        os.utime(path, ns=(stamp, stamp))

    bad_weights = experiment(variants=[{"key": "control", "weight": 0.5},
                                       {"key": "b", "weight": 0.6}])  # fmt: skip
    for broken, message in [
        ("{", "not JSON"),
        ({"version": 1, "experiments": [bad_weights]}, "the weights sum to 1.1, not 1"),
        ({"version": 1, "experiments": [experiment(primary_metric="nps")]}, "unknown metric 'nps'"),
        (
            {
                "version": 1,
                "experiments": [
                    experiment(
                        variants=[
                            {"key": "control", "weight": 0.5},
                            {
                                "key": "pinned",
                                "weight": 0.5,
                                "changes": {"recommender_version": "999"},
                            },
                        ]
                    )
                ],
            },
            "variants[1].changes.recommender_version: no version 999",
        ),
    ]:
        rewrite(broken)
        assert watched.current()[0].key == "ranker-on"
        assert message in (watched.last_error or ""), watched.last_error
    rewrite({"version": 1, "experiments": [experiment(key="ranker-on-2")]})
    assert [e.key for e in watched.current()] == ["ranker-on-2"]
    assert watched.last_error is None and watched.status()["experiments"] == ["ranker-on-2"]


def test_an_experiment_naming_another_dataset_is_not_served_here(tmp_path: Path) -> None:
    runner = experimenter(
        tmp_path,
        experiment(key="cdnow-only", coverage=1.0, ramp=[], dataset="cdnow"),
        experiment(key="here", coverage=1.0, ramp=[], dataset="ml-100k"),
    )
    found = runner.assign("7", anonymous=False, document=document(), now=NOW)
    assert [a.experiment for a in found] == ["here"]
    with pytest.raises(ExperimentError, match=r"experiments\[0\]\.dataset"):
        parse_experiments({"version": 1, "experiments": [experiment(dataset="Not a name!")]})


def test_the_configuration_version_changes_only_with_definitions_or_states(tmp_path: Path) -> None:
    runner = experimenter(tmp_path, experiment(dataset="ml-100k"))
    first = runner.config_version()
    assert runner.config_version() == first  # the answer cache's key stays put
    runner.ledger.change("ranker-on", coverage=0.5, status="running", action="ramp", actor="t")
    assert runner.config_version() != first
