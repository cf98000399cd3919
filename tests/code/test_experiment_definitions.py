"""Experiment files: a valid one loads; every kind of bad input is refused with its path."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from bespoke.experiments.definitions import ExperimentError, load_experiments, parse_experiments

GOOD = {
    "version": 1,
    "experiments": [
        {
            "key": "ranker-on", "hypothesis": "Reranking lifts conversion on the home page",
            "variants": [{"key": "control", "weight": 0.5},
                         {"key": "ranker", "weight": 0.5, "changes": {"ranker": True}}],
            "targeting": {"profile.churn_probability": {"$lt": 0.8}},
            "coverage": 0.05, "ramp": [0.01, 0.05, 0.2, 0.5, 1.0],
            "namespace": {"id": "home", "start": 0, "end": 0.5},
            "primary_metric": "conversion", "guardrail_metrics": ["revenue_per_user"],
            "minimum_detectable_effect": 0.05, "attribution_window_days": 7,
        },
        {
            "key": "content-based", "hypothesis": "Content-based picks help new visitors",
            "variants": [{"key": "control", "weight": 0.34},
                         {"key": "content", "weight": 0.33,
                          "changes": {"recommender_family": "content"}},
                         {"key": "popular", "weight": 0.33,
                          "changes": {"recommender_family": "popularity"}}],
            "namespace": {"id": "home", "start": 0.5, "end": 1},
            "primary_metric": "click_through", "minimum_detectable_effect": 0.1,
        },
    ],
}  # fmt: skip


def _problems(change) -> list[str]:
    document = copy.deepcopy(GOOD)
    change(document)
    with pytest.raises(ExperimentError) as refused:
        parse_experiments(document, "x.json")
    return refused.value.problems


def test_a_valid_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "experiments.json"
    path.write_text(json.dumps(GOOD))
    first, second = load_experiments(path)
    assert (
        first.key == "ranker-on" and first.weights == [0.5, 0.5] and first.hash_seed == "ranker-on"
    )
    assert first.variants[1].changes.ranker is True and second.hash_version == 2
    assert second.variants[1].changes.recommender_family == "content"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d["experiments"][0]["variants"][1].update(weight=0.4),
         "experiments[0]: variants: the weights sum to 0.9, not 1"),
        (lambda d: d["experiments"][0].update(primary_metric="happiness"),
         "experiments[0].primary_metric: unknown metric 'happiness'"),
        (lambda d: d["experiments"][1]["namespace"].update(start=0.4),
         "experiments[1].namespace: 'content-based' takes [0.4, 1.0) of namespace 'home', "
         "overlapping 'ranker-on' at [0.0, 0.5)"),
        (lambda d: d["experiments"][0].update(targeting={"profile.age": {"$between": [1, 2]}}),
         "experiments[0].targeting: profile.age: unknown operator $between"),
        (lambda d: d["experiments"][0].update(ramp=[0.5, 0.2]),
         "experiments[0]: ramp: steps must rise strictly"),
        (lambda d: d["experiments"][0].update(coverage=0.3),
         "experiments[0]: coverage 0.3 is not a step of the ramp"),
        (lambda d: d["experiments"][0]["variants"][1].update(key="control"),
         "experiments[0]: variants: duplicate variant keys"),
        (lambda d: d["experiments"][0].update(colour="blue"), "experiments[0].colour: unknown field"),
        (lambda d: d["experiments"][1].update(key="ranker-on"),
         "experiments[1].key: 'ranker-on' is also experiments[0]"),
        (lambda d: d["experiments"][0].update(hash_version=3), "experiments[0].hash_version"),
        (lambda d: d["experiments"][0]["namespace"].update(end=0), "experiments[0].namespace: end 0"),
    ],
)  # fmt: skip
def test_bad_definitions_are_refused_with_their_path(change, expected: str) -> None:
    problems = _problems(change)
    assert any(p.startswith(expected) for p in problems), problems


def test_unreadable_files_say_so(tmp_path: Path) -> None:
    with pytest.raises(ExperimentError, match="cannot read"):
        load_experiments(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ExperimentError, match="not JSON"):
        load_experiments(tmp_path / "broken.json")
