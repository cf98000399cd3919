"""``bespoke monitor drift``: parse, call :func:`bespoke.monitoring.drift.run_drift`, format.

Exit codes, for cron and CI: 0 = no drift, 1 = drift, 2 = error (bad window, unknown
dataset, empty window, broken config — nothing is written then).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from bespoke.monitoring.apps import monitor_app

if TYPE_CHECKING:
    from bespoke.monitoring.drift import DriftResult

console = Console()
errors = Console(stderr=True)

EXIT_OK, EXIT_DRIFT, EXIT_ERROR = 0, 1, 2


def _fail(message: str) -> typer.Exit:
    errors.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code=EXIT_ERROR)


@contextmanager
def _clear_errors() -> Iterator[None]:
    """Bad input ends the command with its message and exit code 2. Anything unexpected
    is 2 as well: a traceback's exit code 1 would read as "drift" to cron."""
    try:
        yield
    except typer.Exit:
        raise
    except (FileNotFoundError, ValueError) as error:
        raise _fail(str(error)) from error
    except Exception as error:
        raise _fail(f"{type(error).__name__}: {error}") from error


def summary_table(result: DriftResult) -> Table:
    """One line per feature table: rows, tested and drifted columns, verdict."""
    table = Table(
        title=f"Drift on {result.dataset}: {result.reference.label} → {result.current.label}"
    )
    for column in ("table", "rows (ref → cur)", "columns", "drifted", "share", "verdict"):
        table.add_column(column, justify="left" if column in ("table", "verdict") else "right")
    for name, found in result.tables.items():
        if not found.tested:
            table.add_row(name, f"{found.rows_reference} → {found.rows_current}", "—", "—", "—",
                          f"[dim]not tested: {found.note}[/]")  # fmt: skip
            continue
        table.add_row(
            name,
            f"{found.rows_reference} → {found.rows_current}",
            str(len(found.columns)),
            str(len(found.drifted_columns)),
            f"{found.share_drifted:.0%} [dim](≥ {found.drift_share:.0%})[/]",
            "[bold red]drift[/]" if found.drifted else "[green]no drift[/]",
        )
    return table


def _short(description: str) -> str:
    # The console keeps the first part of each description (the mean, the top level).
    return description.split(", ")[0].removeprefix("mean ")


def top_columns_table(result: DriftResult, n: int = 8) -> Table | None:
    top = result.top_columns(n)
    if not top:
        return None
    table = Table(title="Top drifted columns (mean, or the top level's share)")
    table.add_column("table")
    table.add_column("column", no_wrap=True)
    table.add_column("effect", justify="right", no_wrap=True)
    table.add_column("p-value", justify="right", no_wrap=True)
    table.add_column("reference → current")
    for name, column in top:
        p = "—" if column.p_value is None else f"{column.p_value:.0e}"
        effect = f"{'D' if column.test == 'ks' else 'JS'} {column.distance:.2f}"
        change = f"{_short(column.reference)} → {_short(column.current)}"
        table.add_row(name, column.column, effect, p, change)
    return table


def print_result(result: DriftResult, out: Console | None = None) -> None:
    """The console summary: the tables, the top drifted columns, the verdict, the files."""
    out = out or console
    for note in result.notes:
        out.print(f"[dim]{note}[/]", highlight=False)
    out.print(summary_table(result))
    if (top := top_columns_table(result)) is not None:
        out.print(top)
    if result.drifted:
        out.print(f"[bold red]DRIFT[/] in {', '.join(result.drifted_tables)}", highlight=False)
    else:
        out.print("[bold green]no drift[/]")
    out.print(f"report: {result.report_dir}", highlight=False, soft_wrap=True)
    out.print(f"  {result.json.name}, {', '.join(p.name for p in result.html)}", highlight=False)


@monitor_app.command("drift")
def monitor_drift(
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset in the lake, e.g. ml-100k.")],
    reference: Annotated[
        str,
        typer.Option(
            "--reference",
            help="Reference window: 2024-01-01..2024-02-29 (both days included), "
            "'last N days' or 'previous N days' (before the dataset's latest event).",
        ),
    ],
    current: Annotated[
        str, typer.Option("--current", help="Current window, written like --reference.")
    ],
    config: Annotated[
        Path | None,
        typer.Option("--config", help="Thresholds file (default: the shipped drift.json)."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Report folder (default: <reports_dir>/<timestamp>/, BESPOKE_REPORTS_DIR or <repo>/reports).",
        ),
    ] = None,
) -> None:
    """Did the features that feed the models drift? Exit 0 no, 1 yes, 2 error."""
    from bespoke.monitoring.drift import load_drift_config, run_drift
    from bespoke.settings import get_settings

    with _clear_errors():
        thresholds = load_drift_config(config)
        with console.status("building feature tables and testing them"):
            result = run_drift(
                get_settings(), dataset, reference, current, config=thresholds, out_dir=out
            )
    print_result(result)
    raise typer.Exit(code=EXIT_DRIFT if result.drifted else EXIT_OK)
