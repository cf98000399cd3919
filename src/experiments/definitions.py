"""Experiment definitions: JSON files validated by pydantic, errors naming the path.

A file holds ``{"version": 1, "experiments": [ … ]}``; each experiment::

    {"key": "ranker-on", "hypothesis": "Reranking lifts clicks on the home page",
     "variants": [{"key": "control", "weight": 0.5},
                  {"key": "ranker", "weight": 0.5, "changes": {"ranker": true}}],
     "targeting": {"profile.segment": {"$in": ["Active high-value frequent buyers"]}},
     "coverage": 0.2, "ramp": [0.01, 0.05, 0.2, 0.5, 1.0],
     "namespace": {"id": "home-page", "start": 0, "end": 0.5},
     "start": "2026-12-01T00:00:00Z", "stop": null, "hash_version": 2,
     "primary_metric": "conversion", "guardrail_metrics": ["revenue_per_user"],
     "minimum_detectable_effect": 0.05, "attribution_window_days": 7}

What a variant changes (``changes``): the recommender family or a pinned champion
version, the ranker on or off, a rule set, content. The first variant is the control.
Weights must sum to 1; variant keys are unique; the ramp rises and ends at or above the
coverage; a targeting condition is compiled by the rules' evaluator (one condition
language for rules and targeting); experiments sharing a namespace take disjoint ranges.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from bespoke.features.schema import DatasetName
from bespoke.serving.rules import ConditionError, compile_condition

#: What an experiment can be judged on (the analysis computes each from the lake).
METRICS = {
    "conversion": "share of exposed people who convert within the attribution window",
    "click_through": "share of exposed people who click a shown item",
    "events_per_user": "events per exposed person within the attribution window",
    "revenue_per_user": "purchase value per exposed person within the attribution window",
    "average_order_value": "purchase value per order (a ratio metric)",
}
#: How far from 1 the weights may sum (rounding in hand-written files).
WEIGHT_TOLERANCE = 1e-6

Key = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Changes(_Model):
    """What a variant serves instead of the default."""

    recommender_family: str | None = None
    recommender_version: str | None = Field(
        default=None, description="A registered version pinned for this variant."
    )
    ranker: bool | None = None
    rules: str | None = Field(default=None, description="A rules file or folder.")
    content: dict[str, Any] | None = None


class Variant(_Model):
    key: Key
    name: str = ""
    weight: float = Field(ge=0, le=1)
    changes: Changes = Changes()


class Namespace(_Model):
    id: Key
    start: float = Field(ge=0, le=1)
    end: float = Field(ge=0, le=1)

    @model_validator(mode="after")
    def _ordered(self) -> Namespace:
        if self.end <= self.start:
            raise ValueError(f"end {self.end} must be after start {self.start}")
        return self

    def overlaps(self, other: Namespace) -> bool:
        return self.id == other.id and self.start < other.end and other.start < self.end


class Experiment(_Model):
    key: Key
    hypothesis: str = Field(min_length=1)
    dataset: DatasetName | None = Field(
        default=None, description="The dataset it runs on (default: the one served)."
    )
    variants: list[Variant] = Field(min_length=2, max_length=20)
    targeting: dict[str, Any] = Field(default_factory=dict)
    coverage: float = Field(default=1.0, ge=0, le=1)
    ramp: list[float] = Field(default_factory=list)
    namespace: Namespace | None = None
    start: datetime | None = None
    stop: datetime | None = None
    hash_version: Literal[1, 2] = 2
    seed: str | None = Field(default=None, description="Hash seed (default: the key).")
    primary_metric: str
    guardrail_metrics: list[str] = Field(default_factory=list)
    minimum_detectable_effect: float = Field(gt=0, le=10)
    attribution_window_days: float = Field(default=7.0, gt=0, le=365)

    @field_validator("targeting")
    @classmethod
    def _condition(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            compile_condition(value)
        except ConditionError as error:
            raise ValueError(str(error)) from None
        return value

    @field_validator("primary_metric")
    @classmethod
    def _primary(cls, value: str) -> str:
        return _known_metric(value)

    @field_validator("guardrail_metrics")
    @classmethod
    def _guardrails(cls, value: list[str]) -> list[str]:
        return [_known_metric(v) for v in value]

    @model_validator(mode="after")
    def _consistent(self) -> Experiment:
        total = sum(v.weight for v in self.variants)
        if not math.isclose(total, 1.0, abs_tol=WEIGHT_TOLERANCE):
            raise ValueError(f"variants: the weights sum to {total:g}, not 1")
        keys = [v.key for v in self.variants]
        if len(set(keys)) != len(keys):
            raise ValueError(f"variants: duplicate variant keys in {keys}")
        if self.ramp:
            if any(not 0 < step <= 1 for step in self.ramp) or self.ramp != sorted(set(self.ramp)):
                raise ValueError(f"ramp: steps must rise strictly within (0, 1], got {self.ramp}")
            if self.coverage not in self.ramp:
                raise ValueError(f"coverage {self.coverage} is not a step of the ramp {self.ramp}")
        if self.start and self.stop and self.stop <= self.start:
            raise ValueError(
                f"stop {self.stop.isoformat()} is not after start {self.start.isoformat()}"
            )
        if self.primary_metric in self.guardrail_metrics:
            raise ValueError(f"{self.primary_metric!r} is both the primary and a guardrail metric")
        return self

    @property
    def hash_seed(self) -> str:
        return self.seed or self.key

    @property
    def weights(self) -> list[float]:
        return [v.weight for v in self.variants]


def _known_metric(value: str) -> str:
    if value not in METRICS:
        raise ValueError(f"unknown metric {value!r} (one of {', '.join(sorted(METRICS))})")
    return value


class ExperimentsFile(_Model):
    version: Literal[1]
    experiments: list[Experiment] = Field(default_factory=list)

    @model_validator(mode="after")
    def _across(self) -> ExperimentsFile:
        seen: dict[str, int] = {}
        for index, experiment in enumerate(self.experiments):
            if experiment.key in seen:
                raise ValueError(
                    f"experiments[{index}].key: {experiment.key!r} is also experiments[{seen[experiment.key]}]"
                )
            seen[experiment.key] = index
        for i, first in enumerate(self.experiments):
            for j in range(i + 1, len(self.experiments)):
                second = self.experiments[j]
                if (
                    first.namespace
                    and second.namespace
                    and first.namespace.overlaps(second.namespace)
                ):
                    raise ValueError(
                        f"experiments[{j}].namespace: {second.key!r} takes "
                        f"[{second.namespace.start}, {second.namespace.end}) of namespace "
                        f"{second.namespace.id!r}, overlapping {first.key!r} at "
                        f"[{first.namespace.start}, {first.namespace.end})"
                    )
        return self


class ExperimentError(ValueError):
    """An invalid experiments file: ``problems`` lists each one with its path."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = list(problems)
        listed = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid experiments in {source}:\n{listed}")


def _path(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _problems(error: ValidationError) -> list[str]:
    problems = []
    for item in error.errors():
        path = _path(item["loc"])
        message = str(item["msg"]).removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field"
        elif item["type"] == "missing":
            message = "required field is missing"
        if not path and message.startswith("experiments["):
            problems.append(message)  # a check across experiments names its own path
        else:
            problems.append(f"{path or '<file>'}: {message}")
    return problems


def parse_experiments(data: Any, source: str = "<experiments>") -> list[Experiment]:
    """Experiments from a parsed document; :class:`ExperimentError` lists every problem."""
    try:
        return ExperimentsFile.model_validate(data).experiments
    except ValidationError as error:
        raise ExperimentError(source, _problems(error)) from None


def load_experiments(path: str | Path) -> list[Experiment]:
    """Experiments from a JSON file."""
    path = Path(path)
    try:
        data = json.loads(path.read_bytes())
    except OSError as error:
        raise ExperimentError(str(path), [f"cannot read: {error.strerror or error}"]) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ExperimentError(str(path), [f"not JSON: {error}"]) from None
    return parse_experiments(data, str(path))
