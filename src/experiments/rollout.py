"""Incremental rollout with guardrails: ramp, check, halt, stop, resume.

An experiment with a ``ramp`` (e.g. ``[0.01, 0.05, 0.2, 0.5, 1.0]``) starts at its file's
``coverage`` and moves one step at a time — by ``bespoke experiment ramp KEY`` or a
scheduled ``bespoke experiment ramp --all`` — only while its guardrails pass:

- **sample ratio**: the people exposed per variant (the ledger's live counts) match the
  weights (chi-square, mismatch when p < 0.001, GrowthBook's threshold);
- **guardrail metrics**: no guardrail metric (nor the primary) is significantly worse in
  any variant than in the control (Holm-adjusted, from the lake: the ledger is flushed
  first);
- **service errors**: no variant's failed answers per exposed person are significantly
  above the control's (two-proportion test).

A failed check halts the experiment at once — everyone gets the control, in every worker
within a second — and the audit trail records who, when and the evidence. ``check`` runs
the same guardrails without moving (for a frequent schedule); ``stop`` ends an
experiment by hand; ``resume`` restarts a halted one at the coverage it had. Raising the
coverage only widens GrowthBook's bucket ranges, so nobody already assigned moves.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from bespoke.experiments import stats
from bespoke.experiments.analysis import AnalysisError, analyze
from bespoke.experiments.definitions import Experiment
from bespoke.experiments.ledger import ExperimentLedger, State
from bespoke.features.lake import Lake

#: Fewer exposed people than this: the checks that need data pass as "not judged yet".
MIN_PEOPLE = 100

Action = Literal["ramped", "halted", "held", "at-full-coverage", "checked"]


class RolloutError(ValueError):
    """A rollout step that cannot be taken (a stopped experiment, no ramp…)."""


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str
    figures: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    experiment: str
    action: Action
    coverage_before: float
    coverage_after: float
    checks: list[Check]

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "checks": [asdict(c) for c in self.checks]}


def coverage_in_force(experiment: Experiment, state: State | None) -> float:
    return state.coverage if state is not None else experiment.coverage


def check_guardrails(
    experiment: Experiment,
    ledger: ExperimentLedger,
    lake: Lake,
    dataset: str,
    *,
    now: datetime | None = None,
    alpha: float = 0.05,
) -> list[Check]:
    """The guardrails as they stand (see the module docstring)."""
    now = now or datetime.now(UTC)
    keys = [v.key for v in experiment.variants]
    counts = ledger.exposure_counts(experiment.key)
    observed = [counts.get(k, 0) for k in keys]
    checks = []
    if sum(observed) < MIN_PEOPLE:
        checks.append(Check("sample ratio", True,
                            f"{sum(observed)} people exposed: too few to judge yet",
                            {"exposed": dict(zip(keys, observed, strict=True))}))  # fmt: skip
    else:
        srm = stats.sample_ratio_mismatch(observed, experiment.weights)
        checks.append(Check(
            "sample ratio", not srm.mismatch,
            f"p = {srm.p_value:.3g} for {dict(zip(keys, observed, strict=True))} against "
            f"weights {experiment.weights}" + (" (mismatch)" if srm.mismatch else ""),
            {"p_value": srm.p_value, "exposed": dict(zip(keys, observed, strict=True))},
        ))  # fmt: skip
    ledger.flush(lake)
    try:
        analysis = analyze(lake, experiment, dataset, as_of=now, alpha=alpha)
    except AnalysisError as error:
        checks.append(Check("guardrail metrics", True, f"not judged yet: {error}"))
    else:
        watched = {experiment.primary_metric, *experiment.guardrail_metrics}
        worse = [r for r in analysis.results if r.metric in watched and r.significantly_worse]
        checks.append(Check(
            "guardrail metrics", not worse,
            "; ".join(f"{r.metric} is worse in {r.variant}: lift {r.comparison.lift:+.2%}, "
                      f"adjusted p = {r.adjusted_p:.3g}" for r in worse)
            or f"none of {sorted(watched)} is significantly worse in any variant",
            {"worse": [r.as_dict() for r in worse]},
        ))  # fmt: skip
    errors = ledger.errors(experiment.key)
    failing = []
    control_exposed = max(counts.get(keys[0], 0), errors.get(keys[0], 0))
    for key in keys[1:]:
        exposed = max(counts.get(key, 0), errors.get(key, 0))
        if exposed == 0 or control_exposed == 0 or not errors.get(key):
            continue
        test = stats.compare_proportions(
            errors.get(keys[0], 0), control_exposed, errors[key], exposed, relative=False
        )
        if test.difference > 0 and test.p_value < alpha:
            failing.append(f"{key}: {errors[key]} failed answers for {exposed} people "
                           f"(control {errors.get(keys[0], 0)} for {control_exposed}), "
                           f"p = {test.p_value:.3g}")  # fmt: skip
    checks.append(Check("service errors", not failing,
                        "; ".join(failing) or f"errors per variant {errors or 'none'}",
                        {"errors": errors}))  # fmt: skip
    return checks


def _halt(
    experiment: Experiment,
    ledger: ExperimentLedger,
    coverage: float,
    checks: list[Check],
    actor: str,
    now: datetime,
) -> None:
    failed = [c for c in checks if not c.passed]
    ledger.change(
        experiment.key, coverage=coverage, status="halted", action="halt", actor=actor,
        reason="; ".join(f"{c.name}: {c.detail}" for c in failed),
        detail={"checks": [asdict(c) for c in checks]}, now=now,
    )  # fmt: skip


def _running(experiment: Experiment, state: State | None) -> None:
    if state is not None and state.status != "running":
        raise RolloutError(
            f"experiment {experiment.key!r} is {state.status}"
            + (f" ({state.reason})" if state.reason else "")
            + (": `bespoke experiment resume` it first" if state.status == "halted" else "")
        )


def _guarded(
    experiment: Experiment,
    ledger: ExperimentLedger,
    lake: Lake,
    dataset: str,
    actor: str,
    now: datetime,
) -> tuple[float, list[Check], bool]:
    """(coverage in force, checks, halted): the guardrails of a running experiment, which
    halt it when one fails."""
    state = ledger.state(experiment.key)
    _running(experiment, state)
    coverage = coverage_in_force(experiment, state)
    checks = check_guardrails(experiment, ledger, lake, dataset, now=now)
    halted = not all(c.passed for c in checks)
    if halted:
        _halt(experiment, ledger, coverage, checks, actor, now)
    return coverage, checks, halted


def ramp(
    experiment: Experiment,
    ledger: ExperimentLedger,
    lake: Lake,
    dataset: str,
    *,
    actor: str,
    now: datetime | None = None,
) -> Decision:
    """Move to the ramp's next step if the guardrails pass; halt if they fail."""
    now = now or datetime.now(UTC)
    if not experiment.ramp:
        raise RolloutError(f"experiment {experiment.key!r} has no ramp")
    before, checks, halted = _guarded(experiment, ledger, lake, dataset, actor, now)
    if halted:
        return Decision(experiment.key, "halted", before, before, checks)
    later = [step for step in experiment.ramp if step > before]
    if not later:
        return Decision(experiment.key, "at-full-coverage", before, before, checks)
    ledger.change(experiment.key, coverage=later[0], status="running", action="ramp",
                  actor=actor, detail={"from": before, "checks": [asdict(c) for c in checks]},
                  now=now)  # fmt: skip
    return Decision(experiment.key, "ramped", before, later[0], checks)


def check(
    experiment: Experiment,
    ledger: ExperimentLedger,
    lake: Lake,
    dataset: str,
    *,
    actor: str,
    now: datetime | None = None,
) -> Decision:
    """The guardrails without moving: halt if they fail."""
    now = now or datetime.now(UTC)
    coverage, checks, halted = _guarded(experiment, ledger, lake, dataset, actor, now)
    return Decision(experiment.key, "halted" if halted else "checked", coverage, coverage, checks)


def stop(experiment: Experiment, ledger: ExperimentLedger, *, actor: str, reason: str) -> State:
    """End an experiment by hand: everyone gets the control from now on."""
    state = ledger.state(experiment.key)
    return ledger.change(experiment.key, coverage=coverage_in_force(experiment, state),
                         status="stopped", action="stop", actor=actor, reason=reason)  # fmt: skip


def resume(experiment: Experiment, ledger: ExperimentLedger, *, actor: str) -> State:
    """Restart a halted or stopped experiment at the coverage it had."""
    state = ledger.state(experiment.key)
    if state is None or state.status == "running":
        raise RolloutError(f"experiment {experiment.key!r} is running already")
    return ledger.change(experiment.key, coverage=state.coverage, status="running",
                         action="resume", actor=actor)  # fmt: skip
