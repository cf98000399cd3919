"""Rule segments: JSON conditions in the rules' language over person features and
attributes, with errors that name the file and the path."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from bespoke.cli import app
from bespoke.features import collect, sources
from bespoke.features.lake import Lake
from bespoke.segments.rules import RuleSegmentError, load_rule_segments, rule_memberships
from bespoke.segments.train import write_assignments
from bespoke.serving.store import SQLiteStore
from bespoke.settings import get_settings

SEGMENTS = {
    "segments": [
        {"name": "Frequent mobile buyers 25-34", "description": "the app's regulars",
         "when": {"profile.attributes.age": {"$gte": 25, "$lte": 34},
                  "profile.features.orders_90d": {"$gte": 3},
                  "profile.features.channel_share_mobile": {"$gte": 0.5}}},
        {"name": "Big spenders", "when": {"profile.features.monetary_total": {"$gt": 500}}},
    ]
}  # fmt: skip


def _write(tmp_path: Path, document: object) -> Path:
    path = tmp_path / "segments.json"
    path.write_text(json.dumps(document))
    return path


def test_people_get_every_rule_segment_they_match(tmp_path: Path) -> None:
    segments = load_rule_segments(_write(tmp_path, SEGMENTS))
    features = pd.DataFrame(
        {"orders_90d": [4, 4, 1, 5], "channel_share_mobile": [0.8, 0.2, 0.9, 0.6],
         "monetary_total": [120.0, 900.0, 30.0, 800.0]},
        index=["ann", "bob", "cy", "dee"],
    )  # fmt: skip
    attributes = pd.DataFrame({"age": [29, 30, 27, None]}, index=["ann", "bob", "cy", "dee"])
    members = rule_memberships(segments, features, attributes)
    assert members.to_dict() == {
        "ann": ["Frequent mobile buyers 25-34"],
        "bob": ["Big spenders"],
        "cy": [],
        "dee": ["Big spenders"],  # no age: not in the age-bounded segment
    }


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"segments": []}, "at least one segment"),
        ({"segments": [{"name": "x", "when": {"profile.a": {"$gtt": 1}}}]},
         r"segments\[0\]\.when\.profile\.a: unknown operator \$gtt"),
        ({"segments": [{"name": "x", "when": {"context.channel": "web"}}]}, r"segments\[0\]\.when"),
        ({"segments": [{"name": "x", "when": {}}, {"name": "x", "when": {}}]}, "defined twice"),
        ({"segments": [{"when": {}}]}, r"segments\[0\]\.name: a segment needs a name"),
        ({"segments": [{"name": "x", "colour": "red"}]}, "name, description and when only"),
    ],
)  # fmt: skip
def test_bad_rule_segment_files_are_named(tmp_path: Path, document: object, message: str) -> None:
    with pytest.raises(RuleSegmentError, match=message) as error:
        load_rule_segments(_write(tmp_path, document))
    assert "segments.json" in str(error.value)


def test_assignments_are_kept_with_their_history(tmp_path: Path) -> None:
    lake = Lake(str(tmp_path / "lake"))
    first = pd.DataFrame({"segment": ["Active", "Lapsed"], "rule_segments": [["Big spenders"], []]},
                         index=["ann", "bob"])  # fmt: skip
    assert write_assignments(lake, "shop", first, "2024-01-01", "segments-v1") == 2
    # A month later bob comes back; ann is unchanged, cy is new.
    second = pd.DataFrame(
        {"segment": ["Active", "Active", "New"], "rule_segments": [["Big spenders"], [], []]},
        index=["ann", "bob", "cy"],
    )
    assert write_assignments(lake, "shop", second, "2024-02-01", "segments-v1") == 2
    assert write_assignments(lake, "shop", second, "2024-02-02", "segments-v1") == 0
    con = lake.connect()
    latest = dict(con.execute("SELECT person, segment FROM segments ORDER BY person").fetchall())
    assert latest == {"ann": "Active", "bob": "Active", "cy": "New"}
    history = con.execute(
        "SELECT person, segment, valid_from::DATE, valid_to::DATE FROM segments_history "
        "ORDER BY person, valid_from"
    ).fetchall()
    assert [(p, s, str(f), None if t is None else str(t)) for p, s, f, t in history] == [
        ("ann", "Active", "2024-01-01", None),
        ("bob", "Lapsed", "2024-01-01", "2024-02-01"),
        ("bob", "Active", "2024-02-01", None),
        ("cy", "New", "2024-02-01", None),
    ]


def test_seeding_puts_the_latest_segments_on_the_live_profile(tmp_path: Path, key: bytes) -> None:
    lake = Lake(str(tmp_path / "lake"))
    log = tmp_path / "log.csv"
    log.write_text("user,item,ts\nann,i1,2024-01-01T10:00:00Z\nbob,i2,2024-01-02T10:00:00Z\n")
    mapping = sources.ColumnMapping(user_id="user", item_id="item", timestamp="ts",
                                    event_type_constant="purchase", default_consent=["personalization"])  # fmt: skip
    collect.ingest(sources.interactions_file(log, mapping, "shop"), lake, key)
    write_assignments(lake, "shop", pd.DataFrame({"segment": ["Active", "Lapsed"],
                                                  "rule_segments": [["Big spenders"], []]},
                                                 index=["ann", "bob"]), "2024-01-03", "segments-v1")  # fmt: skip
    store = SQLiteStore(f"sqlite:///{tmp_path / 'online.db'}", key)
    store.seed_history(lake, "shop")
    ann = store.profile("ann", "shop")
    assert (ann.segment, ann.segments) == ("Active", ["Big spenders"])
    assert store.snapshot("bob", "shop").profile.scores["segment"] == "Lapsed"
    assert store.profile("nobody", "shop").segment is None


def test_a_rule_naming_an_unknown_segment_is_refused(tmp_path: Path) -> None:
    from bespoke.serving.rules import RulesError, RuleSet, RulesFile

    def rules(segment: object) -> dict:
        return {"version": 1, "rules": [{
            "id": "win-back", "when": {"$or": [{"profile.segment": segment},
                                               {"profile.churn_probability": {"$gt": 0.9}}]},
            "then": [{"type": "show_content", "block_id": "b", "payload": {}}],
        }]}  # fmt: skip

    known = {"Lapsed one-time buyers", "Active frequent buyers"}
    good = RuleSet.from_data(rules({"$in": ["Lapsed one-time buyers"]}))
    assert good.check_segments(known, "r.json") is good
    bad = RuleSet.from_data(rules({"$in": ["Lapsed one-time buyers", "Lapsed buyers"]}))
    with pytest.raises(RulesError) as refused:
        bad.check_segments(known, "r.json")
    assert refused.value.problems == [
        "rule 'win-back': when.$or[0].profile.segment.$in[1]: unknown segment 'Lapsed buyers' "
        "(the segments are Active frequent buyers, Lapsed one-time buyers)"
    ]
    assert bad.check_segments(None, "r.json") is bad  # nothing trained: nothing to check
    # A running service keeps its last good rules when an edit names an unknown segment.
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(rules("Active frequent buyers")))
    live = RulesFile(path, interval=0, segments=known)
    path.write_text(json.dumps(rules("Big spenders")))
    assert live.reload() is False and "unknown segment 'Big spenders'" in (live.last_error or "")
    assert live.current().rules[0].when["$or"][0] == {"profile.segment": "Active frequent buyers"}
    with pytest.raises(RulesError, match="unknown segment"):
        RulesFile(path, segments=known)
    # The CLI says the same, with a non-zero exit, against the segments in the lake.
    runner = CliRunner()
    done = runner.invoke(app, ["rules", "check", str(path), "--dataset", "shop"])
    assert done.exit_code == 0 and "not checked" in done.output  # no segments yet
    assigned = pd.DataFrame({"segment": ["Active frequent buyers"], "rule_segments": [["Big spenders"]]},
                            index=["ann"])  # fmt: skip
    write_assignments(Lake(get_settings().lake_url), "shop", assigned, "2024-01-01", "v1")
    assert runner.invoke(app, ["rules", "check", str(path), "--dataset", "shop"]).exit_code == 0
    path.write_text(json.dumps(rules("Lapsed one-time buyers")))
    refused = runner.invoke(app, ["rules", "check", str(path), "--dataset", "shop"])
    assert refused.exit_code == 1
    assert "unknown segment 'Lapsed one-time buyers'" in " ".join(refused.output.split())
