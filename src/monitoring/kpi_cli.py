"""``bespoke report kpi``: parses, calls :mod:`bespoke.monitoring.kpi`, prints. Exit codes
follow the monitoring commands: 0 written, 2 bad input (nothing written)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bespoke.monitoring.apps import report_app

if TYPE_CHECKING:
    import pandas as pd

console = Console()
errors = Console(stderr=True)

#: Monitoring's exit code for an error (1 means "drift" there, so it cannot mean "error").
EXIT_ERROR = 2


@report_app.command("kpi")
def report_kpi(
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset in the lake, e.g. ml-100k.")],
    window: Annotated[
        str | None,
        typer.Option(
            "--window",
            help="2024-01-01..2024-03-31, 'last 90 days' or 'previous 90 days' (counted back "
            "from the latest event); default: the whole dataset.",
        ),
    ] = None,
    by: Annotated[
        list[str] | None,
        typer.Option(
            "--by",
            help="Breakdown, repeatable or comma-separated: segment, age_band, gender, "
            "occupation, state, region, channel, device, cohort, variant (default: "
            "segment,channel).",
        ),
    ] = None,
    grain: Annotated[str, typer.Option("--grain", help="day, week or month.")] = "week",
    conversion: Annotated[
        str | None,
        typer.Option(
            "--conversion",
            help="purchase, add_to_cart, signup, positive-rating, like or click; default: the "
            "first of these the data holds.",
        ),
    ] = None,
    experiment: Annotated[
        str | None,
        typer.Option(
            "--experiment",
            metavar="KEY",
            help="The experiment whose variants the report breaks down by (from the lake's "
            "exposures; see `bespoke experiment flush`); default: the one exposed most "
            "recently in the dataset.",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Folder for kpi.html (default: <reports_dir>/<timestamp>/, BESPOKE_REPORTS_DIR or <repo>/reports).",
        ),
    ] = None,
) -> None:
    """Engagement and conversion over time, overall and by segment and channel (and by
    experiment variant once the dataset has exposures): one self-contained HTML file."""
    from bespoke.monitoring.kpi import (
        VARIANT_COLUMN,
        KpiError,
        headline_table,
        levels_table,
        write_kpi_report,
    )
    from bespoke.settings import get_settings

    try:
        report, path = write_kpi_report(
            get_settings(),
            dataset,
            window=window,
            by=by,
            grain=grain,
            conversion=conversion,
            experiment=experiment,
            out=out,
        )
    except (KpiError, OSError) as error:  # OSError: the report's folder cannot be written
        errors.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=EXIT_ERROR) from error

    frame = headline_table(report)
    table = Table(
        title=f"{dataset}: {report.window_text}, by {report.grain}",
        title_justify="left",
        header_style="bold",
    )
    _add_rows(table, frame)
    console.print(table)
    asked = {part.strip().lower() for text in by or [] for part in text.split(",")}
    if VARIANT_COLUMN in asked and report.experiment is not None:
        _print_levels(
            levels_table(report, VARIANT_COLUMN),
            f"by variant of experiment {report.experiment}, over the window",
        )
    if report.conversion is not None:
        console.print(
            f"[dim]conversion: share of active users who {report.conversion.label}. "
            f"{report.conversion.why}[/]",
            highlight=False,
        )
    for note in report.notes:
        console.print(f"[dim]{note}[/]", highlight=False)
    console.print(f"[bold green]KPI report[/] {path}", highlight=False, soft_wrap=True)


def _add_rows(table: Table, frame: pd.DataFrame) -> None:
    for index, column in enumerate(frame.columns):
        # Figures never wrap (a split number misreads); the metric names may.
        table.add_column(str(column), justify="left" if index == 0 else "right", no_wrap=index > 0)
    for row in frame.itertuples(index=False):
        table.add_row(*map(str, row))


def _print_levels(frame: pd.DataFrame, title: str) -> None:
    table = Table(title=title, title_justify="left", header_style="bold")
    _add_rows(table, frame)
    console.print(table)
