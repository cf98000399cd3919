"""Rule segments: JSON conditions in the rules' language over person features and
attributes, with errors that name the file and the path."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from bespoke.training.segments import RuleSegmentError, load_rule_segments, rule_memberships

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
