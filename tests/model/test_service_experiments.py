"""Experiments in the served service: a real ``bentoml serve`` over ML-100K with an
experiments file, called over loopback as an application would."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bespoke.experiments.assignment import assign
from bespoke.experiments.ledger import ExperimentLedger
from bespoke.serving.db import Database
from bespoke.serving.local import local_settings, start_local_service, stop_local_service

RANKER = {
    "key": "ranker-on",
    "hypothesis": "Reranking the recommendations lifts conversion",
    "variants": [
        {"key": "control", "weight": 0.5, "changes": {"ranker": False}},
        {"key": "ranker", "weight": 0.5, "changes": {"ranker": True}},
    ],
    "coverage": 0.5,
    "ramp": [0.5, 1.0],
    "primary_metric": "conversion",
    "guardrail_metrics": ["events_per_user"],
    "minimum_detectable_effect": 0.05,
}
BANNER = {
    "key": "winter-banner",
    "hypothesis": "A winter banner lifts engagement",
    "variants": [
        {"key": "control", "weight": 0.5},
        {"key": "winter", "weight": 0.5, "changes": {"content": {"title": "Winter picks"}}},
    ],
    "targeting": {"profile.attributes.gender": "F"},
    "primary_metric": "events_per_user",
    "minimum_detectable_effect": 0.1,
}
PINNED = {
    "key": "pinned-v1",
    "hypothesis": "The first registered recommender is as good",
    "variants": [
        {"key": "control", "weight": 0.5},
        {"key": "v1", "weight": 0.5, "changes": {"recommender_version": "1"}},
    ],
    "primary_metric": "conversion",
    "minimum_detectable_effect": 0.05,
}


#: A weekday, so that the shipped weekend rule does not re-label the items' reasons.
WEEKDAY = {"day_of_week": "wednesday"}


def _write(path: Path, experiments: list[dict[str, Any]] | str) -> None:
    text = (
        experiments
        if isinstance(experiments, str)
        else json.dumps({"version": 1, "experiments": experiments})
    )
    path.write_text(text)
    stamp = time.time_ns() + 10**9
    os.utime(path, ns=(stamp, stamp))


@pytest.fixture(scope="module")
def served(
    prepared_service_home: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str, Path, Path]]:
    """``(url, key, home, experiments file)`` of a server running three experiments."""
    import shutil

    prepared, key = prepared_service_home
    home = tmp_path_factory.mktemp("experiments-home")
    shutil.copytree(prepared, home, dirs_exist_ok=True)
    experiments = home / "experiments.json"
    _write(experiments, [RANKER, BANNER, PINNED])
    url, process = start_local_service(home, env={"BESPOKE_EXPERIMENTS_PATH": str(experiments)})
    try:
        yield url, key, home, experiments
    finally:
        stop_local_service(process)


def _post(url: str, path: str, body: dict, key: str) -> httpx.Response:
    return httpx.post(url + path, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def _ledger(home: Path) -> ExperimentLedger:
    return ExperimentLedger(
        Database(local_settings(home).online_store_url.removeprefix("sqlite:///"))
    )


def test_people_get_growthbooks_variants_and_each_variants_changes(served) -> None:
    url, key, home, _ = served
    users = [str(u) for u in range(1, 121)]
    seen_ranker = seen_control = 0
    for user in users:
        answer = _post(url, "/v1/recommend", {"user_id": user, "k": 5, "context": WEEKDAY}, key)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        by_key = {e["experiment"]: e for e in body["experiments"]}
        index = assign(user, seed="ranker-on", weights=[0.5, 0.5], coverage=0.5)
        ranker = by_key["ranker-on"]
        assert ranker["in_experiment"] is (index >= 0)
        if index >= 0:
            assert ranker["variant"] == ["control", "ranker"][index]
        reasons = {item["reason"] for item in body["items"]}
        if ranker["variant"] == "ranker" and ranker["in_experiment"]:
            seen_ranker += 1
            assert "model:ranker" in reasons and not any(
                r.startswith("model:ease") for r in reasons
            )
        elif by_key["pinned-v1"]["variant"] == "control":
            seen_control += 1
            assert "model:ranker" not in reasons, reasons  # the control: retrieval order
    assert seen_ranker > 10 and seen_control > 10
    # exposures: one per person in each experiment, written before the answers returned
    ledger = _ledger(home)
    counts = ledger.exposure_counts("ranker-on")
    assert 30 < sum(counts.values()) < 90  # coverage 0.5 of 120 people
    for user in users[:20]:  # asked again: no new exposure
        _post(url, "/v1/recommend", {"user_id": user, "k": 5}, key)
    assert ledger.exposure_counts("ranker-on") == counts


def test_targeting_and_content_variants_in_personalize(served) -> None:
    url, key, _home, _ = served
    slots = [{"id": "banner", "kind": "content"}, {"id": "top", "k": 3}]
    banners = 0
    for user in range(1, 80):
        body = _post(url, "/v1/personalize", {"user_id": str(user), "slots": slots}, key).json()
        by_key = {e["experiment"]: e for e in body["experiments"]}
        profile = _post(url, "/v1/profiles", {"user_id": str(user)}, key).json()
        woman = profile["attributes"].get("gender") == "F"
        assert ("winter-banner" in by_key) is woman  # targeting: only women enter
        blocks = body["slots"][0]["content"]
        winter = [b for b in blocks if b["block_id"] == "experiment:winter-banner"]
        if woman and by_key["winter-banner"]["variant"] == "winter":
            banners += 1
            assert winter[0]["payload"] == {"title": "Winter picks"}
        else:
            assert winter == []
        first = next((e for e in body["experiments"] if e["in_experiment"]), None)
        assert body["variant"] == (first["variant"] if first else None)
    assert banners > 3


def test_qa_overrides_are_served_recorded_as_forced_and_checked(served) -> None:
    url, key, home, _ = served
    asked = {"user_id": "500", "force": {"ranker-on": "ranker"}, "context": WEEKDAY}
    body = _post(url, "/v1/recommend", asked, key)
    assert body.status_code == 200
    forced = next(e for e in body.json()["experiments"] if e["experiment"] == "ranker-on")
    assert (forced["variant"], forced["forced"], forced["in_experiment"]) == ("ranker", True, True)
    assert "model:ranker" in {i["reason"] for i in body.json()["items"]}
    for force, message in [
        ({"nope": "control"}, "force.nope: no experiment 'nope' is defined"),
        ({"ranker-on": "treatment"}, "force.ranker-on: experiment 'ranker-on' has no variant"),
    ]:
        refused = _post(url, "/v1/recommend", {"user_id": "501", "force": force}, key)
        assert refused.status_code == 404 and refused.json()["error"].startswith(message)
    refused = _post(
        url, "/v1/recommend", {"user_id": "501", "force": {"ranker-on": "Bad Key"}}, key
    )
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"][:2] == [
        "force",
        "ranker-on",
    ]
    assert _ledger(home).assigned("ml-100k", "501", False, ["ranker-on"]) == {}


def test_a_halt_serves_everyone_the_control_and_a_broken_file_changes_nothing(served) -> None:
    url, key, home, experiments = served
    _write(experiments, "{ not json")
    broken = [dict(PINNED, variants=[PINNED["variants"][0],
                                     {**PINNED["variants"][1], "changes": {"recommender_version": "999"}}])]  # fmt: skip
    time.sleep(1.2)
    still = _post(url, "/v1/recommend", {"user_id": "3"}, key).json()
    assert {e["experiment"] for e in still["experiments"]} >= {"ranker-on", "pinned-v1"}
    _write(experiments, broken)
    time.sleep(1.2)
    still = _post(url, "/v1/recommend", {"user_id": "3"}, key).json()
    assert {e["experiment"] for e in still["experiments"]} >= {"ranker-on", "pinned-v1"}
    _write(experiments, [RANKER, BANNER, PINNED])
    ledger = _ledger(home)
    ledger.change("ranker-on", coverage=0.5, status="halted", action="halt", actor="test",
                  reason="a guardrail failed")  # fmt: skip
    time.sleep(1.2)
    for user in range(1, 30):
        body = _post(url, "/v1/recommend", {"user_id": str(user)}, key).json()
        ranker = next(e for e in body["experiments"] if e["experiment"] == "ranker-on")
        assert (ranker["variant"], ranker["in_experiment"]) == ("control", False)
    ledger.change("ranker-on", coverage=0.5, status="running", action="resume", actor="test")
