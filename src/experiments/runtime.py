"""Experiments at request time: who is in which variant, and what the variant changes.

:class:`ExperimentsFile` keeps the definitions current (hot-reloaded like the rules; a
broken file, or one naming a model version the registry does not hold, keeps the last good
version in force). :class:`Experimenter` decides each request's assignments:

1. an experiment outside its start/stop window is skipped; one halted by a guardrail or
   stopped by a person gives everyone its control (``in_experiment`` false), unrecorded;
2. a QA override (``force``, which the service accepts only from a secret API key) serves
   the variant asked for and records the exposure as forced (analysis leaves it out);
3. a person already exposed keeps their variant (sticky: a change of weights or a login
   never moves them);
4. otherwise the targeting condition must hold (the rules' evaluator, over the same
   request document), then GrowthBook's namespace, hash and bucket ranges decide at the
   coverage in force (the ledger's, moved by the ramp) — raising the coverage only widens
   the ranges, so nobody assigned earlier moves;
5. every new in-experiment assignment is written to the ledger before the answer returns.

:func:`treatment` merges what a person's variants change into one :class:`Treatment` the
engine applies (pinned recommender version, ranker on or off, another rules file, content).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from bespoke.experiments.assignment import assign
from bespoke.experiments.definitions import Experiment, ExperimentError, load_experiments
from bespoke.experiments.ledger import ExperimentLedger, Exposure, State
from bespoke.serving.conditions import compile_condition
from bespoke.serving.rules import RulesError, RuleSet
from bespoke.serving.watched import WatchedFile

#: How long a worker trusts the states it read (a ramp or halt reaches every worker within).
STATE_TTL_S = 1.0


class ForcedVariantError(ValueError):
    """A QA override naming an experiment or variant that does not exist."""


@dataclass(frozen=True)
class Assignment:
    """A person's place in one experiment for one request."""

    experiment: str
    variant: str
    variant_index: int
    in_experiment: bool
    hash_version: int
    forced: bool = False
    changes: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "experiment": self.experiment,
            "variant": self.variant,
            "in_experiment": self.in_experiment,
            "forced": self.forced,
            "hash_version": self.hash_version,
        }


@dataclass(frozen=True)
class Treatment:
    """What a person's variants change, merged (the first experiment wins a conflict)."""

    recommender_version: str | None = None
    recommender_family: str | None = None
    ranker: bool | None = None
    rules: str | None = None
    content: tuple[dict[str, Any], ...] = ()

    @property
    def key(self) -> tuple[Any, ...]:
        """What makes two treatments serve differently (part of the answer cache's key)."""
        return (
            self.recommender_version,
            self.recommender_family,
            self.ranker,
            self.rules,
            tuple(sorted(map(str, self.content))),
        )


def treatment(assignments: Sequence[Assignment]) -> Treatment:
    merged: dict[str, Any] = {}
    content: list[dict[str, Any]] = []
    for assignment in assignments:
        for name, value in assignment.changes.items():
            if value is None:
                continue
            if name == "content":
                content.append({"block_id": f"experiment:{assignment.experiment}",
                                "payload": value, "rule": None,
                                "experiment": assignment.experiment,
                                "variant": assignment.variant})  # fmt: skip
            else:
                merged.setdefault(name, value)
    return Treatment(**merged, content=tuple(content))


class ExperimentsFile(WatchedFile[list[Experiment]]):
    """An experiments file that reloads itself when it changes. ``check`` validates what
    the file refers to outside itself (model versions), raising
    :class:`~bespoke.experiments.definitions.ExperimentError`."""

    def __init__(
        self,
        path: str | Path,
        *,
        check: Callable[[list[Experiment], str], None] | None = None,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        def load(where: Path) -> list[Experiment]:
            experiments = load_experiments(where)
            if check is not None:
                check(experiments, str(where))
            return experiments

        super().__init__(
            path,
            load,
            error=ExperimentError,
            unreadable=lambda source, message: ExperimentError(source, [message]),
            what="experiments",
            interval=interval,
            clock=clock,
        )

    def status(self) -> dict[str, Any]:
        return {**super().status(), "experiments": [e.key for e in self._value]}


def reference_check(registry: Any, dataset: str) -> Callable[[list[Experiment], str], None]:
    """A check for :class:`ExperimentsFile`: every pinned recommender version and family is
    registered for ``dataset`` in ``registry`` (a :class:`~bespoke.training.registry.Registry`),
    and every variant's rules file loads. Raises one ExperimentError listing each problem."""

    def check(experiments: list[Experiment], source: str) -> None:
        problems = []
        for i, experiment in enumerate(experiments):
            for j, variant in enumerate(experiment.variants):
                where = f"experiments[{i}].variants[{j}].changes"
                changes = variant.changes
                if changes.recommender_version is not None and not registry.has_version(
                    "recommender", dataset, changes.recommender_version
                ):
                    problems.append(
                        f"{where}.recommender_version: version {changes.recommender_version} of "
                        f"the {dataset} recommender is not registered"
                    )
                if (
                    changes.recommender_family is not None
                    and registry.latest_of_family(
                        "recommender", dataset, changes.recommender_family
                    )
                    is None
                ):
                    problems.append(
                        f"{where}.recommender_family: no {changes.recommender_family!r} "
                        f"recommender is registered for {dataset}"
                    )
                if changes.rules is not None:
                    try:
                        RuleSet.load(changes.rules)
                    except RulesError as error:
                        problems.append(f"{where}.rules: {error}")
        if problems:
            raise ExperimentError(source, problems)

    return check


def no_pinned_models(experiments: list[Experiment], source: str) -> None:
    """The check for a service that serves a Bento's packaged models alone: no variant may
    pin another recommender version or family."""
    pinned = [e.key for e in experiments for v in e.variants
              if v.changes.recommender_version or v.changes.recommender_family]  # fmt: skip
    if pinned:
        raise ExperimentError(source, [f"{key}: a Bento serves only its packaged models; no "
                                       "variant may pin another" for key in pinned])  # fmt: skip


class Experimenter:
    """Assignments for one dataset's requests, from a definitions file and the ledger."""

    def __init__(
        self,
        experiments: ExperimentsFile | Callable[[], list[Experiment]],
        ledger: ExperimentLedger,
        dataset: str,
        *,
        state_ttl_s: float = STATE_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._experiments = (
            experiments.current if isinstance(experiments, ExperimentsFile) else experiments
        )
        self.ledger = ledger
        self.dataset = dataset
        self._state_ttl_s = state_ttl_s
        self._clock = clock
        self._states: dict[str, State] = {}
        self._states_at = -float("inf")
        self._lock = threading.Lock()
        self._compiled: dict[int, Any] = {}

    def experiments(self) -> list[Experiment]:
        """The experiments of this dataset (those naming another one are not served here)."""
        return [e for e in self._experiments() if e.dataset in (None, self.dataset)]

    def config_version(self) -> tuple[Any, ...]:
        """What assignments depend on besides the person: the definitions loaded and the
        states in force (part of the service's answer-cache key)."""
        states = self.states()
        return (
            id(self._experiments()),  # the loaded list: the same object until a reload
            tuple(sorted((k, s.coverage, s.status) for k, s in states.items())),
        )

    def states(self) -> dict[str, State]:
        if self._clock() - self._states_at >= self._state_ttl_s:
            with self._lock:
                if self._clock() - self._states_at >= self._state_ttl_s:
                    self._states = self.ledger.states()
                    self._states_at = self._clock()
        return self._states

    def _targeting(self, experiment: Experiment) -> Any:
        compiled = self._compiled.get(id(experiment))
        if compiled is None or compiled[0] is not experiment:
            compiled = (experiment, compile_condition(experiment.targeting))
            self._compiled[id(experiment)] = compiled
        return compiled[1]

    def assign(
        self,
        person: str | None,
        *,
        anonymous: bool,
        document: Mapping[str, Any],
        now: datetime,
        force: Mapping[str, str] | None = None,
    ) -> list[Assignment]:
        """This request's assignments (see the module docstring); new exposures stored."""
        experiments = self.experiments()
        force = dict(force or {})
        known = {e.key: e for e in experiments}
        for key, variant in force.items():
            if key not in known:
                raise ForcedVariantError(f"force.{key}: no experiment {key!r} is defined")
            if variant not in {v.key for v in known[key].variants}:
                raise ForcedVariantError(
                    f"force.{key}: experiment {key!r} has no variant {variant!r} "
                    f"(its variants: {', '.join(v.key for v in known[key].variants)})"
                )
        if not experiments or (person is None and not force):
            return []
        states = self.states()
        live = [e for e in experiments if _active(e, now)]
        previous = (
            self.ledger.assigned(self.dataset, person, anonymous, [e.key for e in live])
            if person is not None
            else {}
        )
        out: list[Assignment] = []
        new: list[Exposure] = []
        for experiment in live:
            state = states.get(experiment.key)
            control = experiment.variants[0]
            if state is not None and state.status != "running":
                out.append(_assignment(experiment, 0, in_experiment=False))
                continue
            if experiment.key in force:
                index = [v.key for v in experiment.variants].index(force[experiment.key])
                chosen = _assignment(experiment, index, in_experiment=True, forced=True)
            elif experiment.key in previous:
                variant, was_forced = previous[experiment.key]
                keys = [v.key for v in experiment.variants]
                if was_forced or variant not in keys:
                    index = self._hash(experiment, person, state)
                    if index < 0:
                        out.append(_assignment(experiment, 0, in_experiment=False))
                        continue
                else:
                    index = keys.index(variant)
                out.append(_assignment(experiment, index, in_experiment=True))
                continue
            else:
                if self._targeting(experiment)(document, now) is not True:
                    continue
                index = self._hash(experiment, person, state)
                if index < 0:
                    out.append(_assignment(experiment, 0, in_experiment=False))
                    continue
                chosen = _assignment(experiment, index, in_experiment=True)
            out.append(chosen)
            if person is not None:
                new.append(
                    Exposure(self.dataset, experiment.key, person, anonymous, chosen.variant,
                             chosen.variant_index, experiment.hash_version, chosen.forced, now)
                )  # fmt: skip
            del control
        self.ledger.record(new)
        return out

    @staticmethod
    def _hash(experiment: Experiment, person: str | None, state: State | None) -> int:
        namespace = experiment.namespace
        return assign(
            person,
            seed=experiment.hash_seed,
            weights=experiment.weights,
            coverage=state.coverage if state is not None else experiment.coverage,
            hash_version=experiment.hash_version,
            namespace=(namespace.id, namespace.start, namespace.end) if namespace else None,
        )


def _active(experiment: Experiment, now: datetime) -> bool:
    if experiment.start is not None and now < experiment.start:
        return False
    return experiment.stop is None or now < experiment.stop


def _assignment(
    experiment: Experiment, index: int, *, in_experiment: bool, forced: bool = False
) -> Assignment:
    variant = experiment.variants[index]
    changes = variant.changes.model_dump(exclude_none=True) if in_experiment else {}
    return Assignment(
        experiment.key,
        variant.key,
        index,
        in_experiment,
        experiment.hash_version,
        forced,
        changes,
    )
