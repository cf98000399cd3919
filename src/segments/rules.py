"""Rule segments: people named by a condition in the JSON rules' language."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from bespoke.features.parse import IngestError, read_json_file
from bespoke.serving.rules import ConditionError, Predicate, compile_condition

# --- rule segments -------------------------------------------------------------------------


class RuleSegmentError(ValueError):
    """A rule-segment file that cannot be used: the message names the file and the path."""


@dataclass(frozen=True)
class RuleSegment:
    name: str
    description: str
    when: Predicate


def load_rule_segments(path: str | Path) -> list[RuleSegment]:
    """Rule segments from a JSON file: ``{"segments": [{"name", "description", "when"}]}``,
    each ``when`` a condition in the JSON rules' language over a person document
    ``{"profile": {"attributes": …, "features": …, "segment": …}, "now": …}`` —
    e.g. frequent mobile buyers aged 25–34::

        {"name": "Frequent mobile buyers 25-34",
         "when": {"profile.attributes.age": {"$gte": 25, "$lte": 34},
                  "profile.features.orders_90d": {"$gte": 3},
                  "profile.features.channel_share_mobile": {"$gte": 0.5}}}

    Errors name the file and the path (``segments[1].when.profile.x: unknown operator …``);
    names are unique."""
    path = Path(path)
    try:
        document = read_json_file(path, "rule-segment file")
    except IngestError as error:
        raise RuleSegmentError(str(error)) from None
    entries = document.get("segments") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise RuleSegmentError(f'{path}: expected {{"segments": [ … ]}} with at least one segment')
    out, names = [], set()
    for index, entry in enumerate(entries):
        where = f"{path}: segments[{index}]"
        if not isinstance(entry, dict) or set(entry) - {"name", "description", "when"}:
            raise RuleSegmentError(f"{where}: a segment has name, description and when only")
        name = entry.get("name")
        if not isinstance(name, str) or not name.strip():
            raise RuleSegmentError(f"{where}.name: a segment needs a name")
        if name in names:
            raise RuleSegmentError(f"{where}.name: {name!r} is defined twice")
        names.add(name)
        try:
            predicate = compile_condition(
                entry.get("when", {}), roots=frozenset({"profile", "now"})
            )
        except ConditionError as error:
            raise RuleSegmentError(f"{where}.when.{error}") from None
        out.append(RuleSegment(name, str(entry.get("description", "")), predicate))
    return out


def rule_memberships(
    segments: Sequence[RuleSegment],
    features: pd.DataFrame,
    attributes: pd.DataFrame | None = None,
    now: datetime | None = None,
) -> pd.Series:
    """Each person's rule segments (a list of names, possibly empty), from their
    features and attributes (both indexed by person)."""
    now = now or datetime.now(UTC)
    attributes = attributes if attributes is not None else pd.DataFrame(index=features.index)
    feature_rows = features.replace({np.nan: None}).to_dict("index")
    attribute_rows = attributes.reindex(features.index).replace({np.nan: None}).to_dict("index")
    out = {}
    for person, row in feature_rows.items():
        document = {
            "profile": {"features": row, "attributes": attribute_rows.get(person, {})},
            "now": now,
        }
        out[person] = [segment.name for segment in segments if segment.when(document, now)]
    return pd.Series(out, name="segments", dtype=object)
