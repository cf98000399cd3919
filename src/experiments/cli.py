"""``bespoke experiment list|status|ramp|check|stop|resume|flush|analyze``: parse, call
:mod:`bespoke.experiments.rollout` and :mod:`bespoke.experiments.analysis`, print.

The definitions come from ``BESPOKE_EXPERIMENTS_PATH`` (or ``--file``); state, audit and
exposures from the online store the service writes. Exit codes: 0 done, 1 bad input or a
step that cannot be taken (nothing changed), 3 the guardrails halted the experiment (so a
scheduler can alert).
"""

from __future__ import annotations

import getpass
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

experiment_app = typer.Typer(
    help="Experiments: rollout with guardrails, exposures and analysis.", no_args_is_help=True
)
console = Console()
errors = Console(stderr=True)
#: The exit code of a ramp or check that halted the experiment.
EXIT_HALTED = 3

FileOption = Annotated[
    Path | None,
    typer.Option("--file", help="The experiments file (default: BESPOKE_EXPERIMENTS_PATH)."),
]
ActorOption = Annotated[
    str | None, typer.Option("--actor", help="Who acts, for the audit trail (default: $USER).")
]


def _fail(message: str) -> typer.Exit:
    errors.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code=1)


def _context(file: Path | None) -> tuple[Any, list[Any], Any, Any]:
    """(settings, experiments, ledger, lake) or a clear error."""
    from bespoke.experiments.definitions import ExperimentError, load_experiments
    from bespoke.experiments.ledger import ExperimentLedger
    from bespoke.features.lake import Lake
    from bespoke.privacy.audit import audit_log
    from bespoke.serving.store import open_store
    from bespoke.settings import get_settings

    settings = get_settings()
    path = file or settings.experiments_path
    if path is None:
        raise _fail("no experiments file: export BESPOKE_EXPERIMENTS_PATH=… or pass --file")
    try:
        experiments = load_experiments(path)
    except ExperimentError as error:
        raise _fail(str(error)) from None
    ledger = ExperimentLedger(open_store(settings).database(), audit=audit_log(settings))
    return settings, experiments, ledger, Lake(settings.lake_url)


def _chosen(experiments: list[Any], key: str | None, every: bool) -> list[Any]:
    if every:
        if key is not None:
            raise _fail("give an experiment key or --all, not both")
        return [e for e in experiments if e.ramp] or experiments
    if key is None:
        raise _fail("give an experiment key (or --all)")
    found = [e for e in experiments if e.key == key]
    if not found:
        known = ", ".join(e.key for e in experiments) or "none"
        raise _fail(f"no experiment {key!r} is defined (defined: {known})")
    return found


@experiment_app.command("list")
def experiment_list(file: FileOption = None) -> None:
    """Every defined experiment with its state, coverage and people exposed."""
    from bespoke.experiments.rollout import coverage_in_force

    _, experiments, ledger, _ = _context(file)
    states = ledger.states()
    table = Table("experiment", "status", "coverage", "ramp", "variants", "exposed",
                  "primary metric", header_style="bold")  # fmt: skip
    for e in experiments:
        state = states.get(e.key)
        counts = ledger.exposure_counts(e.key)
        table.add_row(
            e.key, state.status if state else "running", f"{coverage_in_force(e, state):g}",
            " → ".join(f"{s:g}" for s in e.ramp) or "—",
            ", ".join(f"{v.key} {v.weight:g}" for v in e.variants),
            ", ".join(f"{v.key} {counts.get(v.key, 0):,}" for v in e.variants),
            e.primary_metric,
        )  # fmt: skip
    console.print(table if experiments else "No experiment is defined.")


@experiment_app.command("status")
def experiment_status(
    key: Annotated[str, typer.Argument(help="The experiment's key.")], file: FileOption = None
) -> None:
    """One experiment: state, coverage, people exposed and errors per variant, audit trail."""
    from bespoke.experiments.rollout import coverage_in_force

    _, experiments, ledger, _ = _context(file)
    (experiment,) = _chosen(experiments, key, False)
    state = ledger.state(key)
    counts, failed = ledger.exposure_counts(key), ledger.errors(key)
    forced = ledger.exposure_counts(key, forced=True)
    console.print(f"[bold]{key}[/]: {state.status if state else 'running'} at coverage "
                  f"{coverage_in_force(experiment, state):g}"
                  + (f" — {escape(state.reason)}" if state and state.reason else ""))  # fmt: skip
    table = Table("variant", "weight", "exposed", "QA overrides", "failed answers",
                  header_style="bold")  # fmt: skip
    for v in experiment.variants:
        table.add_row(v.key, f"{v.weight:g}", f"{counts.get(v.key, 0):,}",
                      f"{forced.get(v.key, 0) - counts.get(v.key, 0):,}",
                      f"{failed.get(v.key, 0):,}")  # fmt: skip
    console.print(table)
    trail = ledger.audit(key)
    if trail:
        audit = Table("at", "action", "by", "coverage", "reason", header_style="bold")
        for entry in trail:
            audit.add_row(entry["at"], entry["action"], entry["actor"],
                          f"{entry['coverage']:g}", escape(entry.get("reason") or ""))  # fmt: skip
        console.print(audit)


def _decide(verb: str, key: str | None, every: bool, file: Path | None, actor: str | None) -> None:
    from bespoke.experiments import rollout

    settings, experiments, ledger, lake = _context(file)
    who = actor or getpass.getuser()
    halted = False
    for experiment in _chosen(experiments, key, every):
        step = rollout.ramp if verb == "ramp" else rollout.check
        try:
            dataset = experiment.dataset or settings.serving_dataset
            decision = step(experiment, ledger, lake, dataset, actor=who)
        except rollout.RolloutError as error:
            if every:
                errors.print(f"{experiment.key}: skipped: {escape(str(error))}")
                continue
            raise _fail(str(error)) from None
        colour = {"halted": "bold red", "ramped": "bold green"}.get(decision.action, "bold")
        console.print(f"[{colour}]{experiment.key}: {decision.action}[/] (coverage "
                      f"{decision.coverage_before:g} → {decision.coverage_after:g})")  # fmt: skip
        for check in decision.checks:
            mark = "[green]pass[/]" if check.passed else "[red]FAIL[/]"
            console.print(f"  {mark} {check.name}: {escape(check.detail)}")
        halted |= decision.action == "halted"
    if halted:
        raise typer.Exit(code=EXIT_HALTED)


@experiment_app.command("ramp")
def experiment_ramp(
    key: Annotated[str | None, typer.Argument(help="The experiment's key.")] = None,
    every: Annotated[
        bool, typer.Option("--all", help="Every running experiment with a ramp (for a schedule).")
    ] = False,
    file: FileOption = None,
    actor: ActorOption = None,
) -> None:
    """Move to the ramp's next coverage if the guardrails pass; halt if they fail (exit 3)."""
    _decide("ramp", key, every, file, actor)


@experiment_app.command("check")
def experiment_check(
    key: Annotated[str | None, typer.Argument(help="The experiment's key.")] = None,
    every: Annotated[
        bool, typer.Option("--all", help="Every running experiment (for a schedule).")
    ] = False,
    file: FileOption = None,
    actor: ActorOption = None,
) -> None:
    """Check the guardrails without moving; halt if they fail (exit 3)."""
    _decide("check", key, every, file, actor)


@experiment_app.command("stop")
def experiment_stop(
    key: Annotated[str, typer.Argument(help="The experiment's key.")],
    reason: Annotated[str, typer.Option("--reason", help="Why, for the audit trail.")],
    file: FileOption = None,
    actor: ActorOption = None,
) -> None:
    """End an experiment: everyone gets the control from now on."""
    from bespoke.experiments.rollout import stop

    _, experiments, ledger, _ = _context(file)
    (experiment,) = _chosen(experiments, key, False)
    state = stop(experiment, ledger, actor=actor or getpass.getuser(), reason=reason)
    console.print(f"{key}: stopped at coverage {state.coverage:g}")


@experiment_app.command("resume")
def experiment_resume(
    key: Annotated[str, typer.Argument(help="The experiment's key.")],
    file: FileOption = None,
    actor: ActorOption = None,
) -> None:
    """Restart a halted or stopped experiment at the coverage it had."""
    from bespoke.experiments.rollout import RolloutError, resume

    _, experiments, ledger, _ = _context(file)
    (experiment,) = _chosen(experiments, key, False)
    try:
        state = resume(experiment, ledger, actor=actor or getpass.getuser())
    except RolloutError as error:
        raise _fail(str(error)) from None
    console.print(f"{key}: running again at coverage {state.coverage:g}")


@experiment_app.command("flush")
def experiment_flush(file: FileOption = None) -> None:
    """Move the exposures the service recorded to the lake (analysis reads them there)."""
    _, _, ledger, lake = _context(file)
    console.print(f"{ledger.flush(lake):,} exposures written to the lake")


@experiment_app.command("analyze")
def experiment_analyze(
    key: Annotated[str, typer.Argument(help="The experiment's key.")],
    out: Annotated[Path, typer.Option("--out", help="Where to write the HTML report.")],
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="Analyse as of this ISO date-time (default: now).")
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the figures as JSON here.")
    ] = None,
    file: FileOption = None,
) -> None:
    """Results per metric (lift, interval, p-value, chance to win), the sequential boundary,
    the sample-ratio check and the segment breakdown, as a self-contained HTML report."""
    from bespoke.experiments.analysis import AnalysisError, analyze
    from bespoke.experiments.report import render_html

    settings, experiments, ledger, lake = _context(file)
    (experiment,) = _chosen(experiments, key, False)
    moment = datetime.now(UTC)
    if as_of is not None:
        try:
            moment = datetime.fromisoformat(as_of)
        except ValueError:
            raise _fail(f"--as-of: not an ISO date-time: {as_of!r}") from None
        moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    ledger.flush(lake)
    try:
        dataset = experiment.dataset or settings.serving_dataset
        analysis = analyze(lake, experiment, dataset, as_of=moment)
    except AnalysisError as error:
        raise _fail(str(error)) from None
    state = ledger.state(key)
    page = render_html(analysis, state=state, audit=ledger.audit(key))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(analysis.as_dict(), indent=2, default=str))
    table = Table("metric", "variant", "lift", "interval", "p", "Holm p", "chance to win",
                  header_style="bold")  # fmt: skip
    for r in analysis.results:
        c = r.comparison
        table.add_row(r.metric + (" (primary)" if r.role == "primary" else ""), r.variant,
                      f"{c.lift:+.2%}", f"[{c.lift_ci[0]:+.2%}, {c.lift_ci[1]:+.2%}]",
                      f"{c.p_value:.4f}", f"{r.adjusted_p:.4f}",
                      f"{r.bayesian.chance_to_win:.1%}")  # fmt: skip
    console.print(table)
    if analysis.srm is not None and analysis.srm.mismatch:
        errors.print(f"[bold red]sample ratio mismatch[/] (p = {analysis.srm.p_value:.3g}): "
                     "the split is not what the weights say; distrust these results")  # fmt: skip
    console.print(f"report written to {out}")
