"""``bespoke monitor quality`` and ``bespoke retrain``: parse, call
:mod:`bespoke.monitoring.quality` / :mod:`bespoke.monitoring.retrain`, format.

Exit codes, for cron and CI: ``monitor quality`` 0 = ok, 1 = degraded, 2 = error;
``retrain`` 0 = nothing to do or retrained (promoted or not), 2 = error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from bespoke.monitoring.apps import monitor_app

console = Console()
errors = Console(stderr=True)

EXIT_OK, EXIT_DEGRADED, EXIT_ERROR = 0, 1, 2

DatasetOption = Annotated[str, typer.Option("--dataset", help="Dataset in the lake, e.g. ml-100k.")]


def _fail(message: str) -> typer.Exit:
    errors.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code=EXIT_ERROR)


@contextmanager
def _clear_errors() -> Iterator[None]:
    """Bad input and unusable data end the command with a message and exit code 2."""
    try:
        yield
    except (FileNotFoundError, KeyError, ValueError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
        raise _fail(message) from error
    except typer.Exit:
        raise
    except Exception as error:  # cron reads the exit code: anything unexpected is 2, not 1
        raise _fail(f"{type(error).__name__}: {error}") from error


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def _change(value: float | None) -> str:
    return "—" if value is None else f"{value:+.0%}"


_VERDICT_STYLE = {
    "ok": "[green]ok[/]",
    "degraded": "[bold red]degraded[/]",
    "no baseline": "[yellow]no baseline[/]",
    "not measured": "[yellow]not measured[/]",
}


def quality_table(model: Any, confidence: float) -> Table:
    """One model's metrics: at training, now, its interval, change, threshold, verdict."""
    from rich import box

    table = Table(
        title=f"{model.kind} v{model.version} ({model.protocol}), {model.people} people",
        title_justify="left",
        header_style="bold",
        box=box.SIMPLE_HEAD,
        collapse_padding=True,
        show_edge=False,
    )
    table.add_column("metric")
    for name in ("at training", "now", f"{round(confidence * 100)}% CI", "change", "threshold"):
        table.add_column(name, justify="right")
    table.add_column("verdict")
    for check in model.checks:
        interval = check.interval
        table.add_row(
            check.metric,
            _number(check.at_training),
            _number(check.now),
            "—" if interval is None else f"{interval[0]:.3f}–{interval[1]:.3f}",
            _change(check.change),
            check.threshold,
            _VERDICT_STYLE[check.verdict],
        )
    return table


def print_quality(result: Any) -> None:
    window = result.window
    console.print(
        f"quality of the @champion models of {result.dataset} on {window.label!r}: "
        f"{window.start:%Y-%m-%d} to {window.end:%Y-%m-%d} (end excluded; data to "
        f"{result.anchor:%Y-%m-%d}); {result.active_people} people active, "
        f"{result.active_people - result.new_people} with earlier history scored",
        highlight=False,
    )
    for model in result.models:
        console.print(quality_table(model, result.config.confidence))
        console.print(f"[dim]MLflow run {model.run_id}[/]", highlight=False)
        for note in model.notes:
            console.print(f"[yellow]note:[/] {note}", highlight=False)
    verdict = "[bold red]degraded[/]" if result.degraded else "[green]ok[/]"
    console.print(f"quality: {verdict} · report {result.json}", highlight=False)


@monitor_app.command("quality")
def quality_command(
    dataset: DatasetOption,
    window: Annotated[
        str | None,
        typer.Option(
            "--window",
            help="'last N days' (counted back from the latest event) or "
            "YYYY-MM-DD..YYYY-MM-DD; default: the config's (last 30 days).",
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="Thresholds (JSON); default: the shipped quality.json."),
    ] = None,
) -> None:
    """Ranking metrics of the @champion recommender and calibration of the @champion
    ranker on the window's interactions (people asked from their history before it),
    against the metrics logged when they were trained. Writes
    <reports>/<timestamp>/quality.json. Exit 0 ok, 1 degraded, 2 error."""
    from bespoke.monitoring.quality import run_quality
    from bespoke.settings import get_settings

    with _clear_errors(), console.status(f"judging the @champion models of {dataset}"):
        result = run_quality(get_settings(), dataset, window=window, config=config)
    print_quality(result)
    raise typer.Exit(code=EXIT_DEGRADED if result.degraded else EXIT_OK)


def print_retrain(result: Any) -> None:
    drift = result.drift
    if drift is not None:
        state = (
            f"[bold red]drift[/] in {', '.join(drift.drifted_tables)}"
            if drift.drifted
            else "[green]no drift[/]"
        )
        console.print(f"drift ({result.reference} → {result.current}): {state}", highlight=False)
    if result.quality is not None:
        print_quality(result.quality)
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    if not result.triggered:
        console.print("nothing to do: no drift, quality holds — nothing trained", highlight=False)
    else:
        console.print(f"retrained because: {'; '.join(result.reasons)}", highlight=False)
        for kind, outcome in result.trained.items():
            if kind == "segments":
                console.print(f"segments: k = {outcome['k']}, stability ARI "
                              f"{outcome['stability_ari']:.3f}, {outcome['written']:,} changed "
                              f"assignments; MLflow run {outcome['run_id']}", highlight=False)  # fmt: skip
                continue
            if kind == "churn":
                for model in ("churn", "clv"):
                    done = outcome[model]
                    state = (
                        "[green]promoted to @champion[/]" if done["promoted"] else "not promoted"
                    )
                    console.print(f"{model}: new version {done['version']}, {state} "
                                  f"({done['decision']}); MLflow run {outcome['run_id']}",
                                  highlight=False, soft_wrap=True)  # fmt: skip
                continue
            state = "[green]promoted to @champion[/]" if outcome["promoted"] else "not promoted"
            console.print(
                f"{kind} ({outcome['family']}, {outcome['protocol']}): new version "
                f"{outcome['version']}, {state} ({outcome['decision']}); "
                f"MLflow run {outcome['run_id']}",
                highlight=False,
                soft_wrap=True,
            )
    console.print(f"report {result.report_dir}", highlight=False, soft_wrap=True)


def retrain_command(
    dataset: DatasetOption,
    if_drift: Annotated[
        bool,
        typer.Option(
            "--if-drift",
            help="Train only when drift is found, quality degraded or there is no "
            "champion (without it: always).",
        ),
    ] = False,
    reference: Annotated[
        str | None,
        typer.Option(
            "--reference", help="Drift reference window; default: the one before --current."
        ),
    ] = None,
    current: Annotated[
        str | None,
        typer.Option(
            "--current", help="Current window (drift and quality); default: last 30 days."
        ),
    ] = None,
    trials: Annotated[int, typer.Option("--trials", help="Optuna trials per model.")] = 10,
    every: Annotated[
        str | None,
        typer.Option("--every", help="Repeat every DURATION (90s, 30m, 6h, 1d) until stopped."),
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Family to train; default: the champion's.")
    ] = None,
    protocol: Annotated[
        str | None,
        typer.Option("--protocol", help="ms-stratified or temporal; default: the champion's."),
    ] = None,
    drift_config: Annotated[
        Path | None, typer.Option("--drift-config", help="Drift thresholds (JSON).")
    ] = None,
    quality_config: Annotated[
        Path | None, typer.Option("--quality-config", help="Quality thresholds (JSON).")
    ] = None,
    params_file: Annotated[
        Path | None,
        typer.Option("--params-file", help="Also write the best parameters here (default: not)."),
    ] = None,
) -> None:
    """Check drift and the champions' quality; retrain, gate and log when needed.

    With --if-drift, tuning and training (the recommender, and the ranker when
    one is registered) run only when the drift report drifts, quality degraded
    or there is no champion yet; without it, always. The champion gate decides
    promotion; the drift report, quality.json and retrain.json are attached to
    the challenger's MLflow run (artifacts under monitoring/).

    Exit codes: 0 nothing to do, or retrained (promoted or not); 2 error.

    Cron, nightly at 03:15 (a lock in BESPOKE_HOME keeps runs from overlapping;
    append >> var/retrain.log 2>&1 to keep the output):

    15 3 * * * cd /srv/bespoke && .venv/bin/bespoke retrain --dataset ml-100k --if-drift

    Without cron: --every 6h repeats it, sleeping in between; a failed run is
    logged and the loop goes on.
    """
    from bespoke.monitoring.retrain import check_inputs, parse_duration
    from bespoke.settings import get_settings

    def once() -> None:
        from bespoke.monitoring.retrain import retrain

        with console.status(f"retrain {dataset}") as status:
            result = retrain(
                get_settings(), dataset, if_drift=if_drift, reference=reference,
                current=current, trials=trials, model=model, protocol=protocol,
                drift_config=drift_config, quality_config=quality_config,
                params_file=params_file, progress=lambda message: status.update(message),
            )  # fmt: skip
        print_retrain(result)

    if every is None:
        with _clear_errors():
            once()
        return
    with _clear_errors():
        period = parse_duration(every)
        check_inputs(
            trials=trials, model=model, protocol=protocol, reference=reference,
            current=current, drift_config=drift_config, quality_config=quality_config,
        )  # fmt: skip
    _loop(once, period)


def _loop(once: Callable[[], None], period: Any) -> None:
    from datetime import datetime

    from bespoke.monitoring.retrain import run_every

    def started() -> None:
        console.rule(f"retrain run at {datetime.now():%Y-%m-%d %H:%M:%S}")
        once()

    def failed(error: Exception) -> None:
        errors.print(
            f"[bold red]error:[/] {error} [dim](the loop goes on)[/]",
            highlight=False,
            soft_wrap=True,
        )

    console.print(f"retraining check every {period} (Ctrl-C stops)")
    try:
        run_every(started, period, on_error=failed)
    except KeyboardInterrupt:
        console.print("stopped")
