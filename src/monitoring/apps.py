"""The Typer groups the monitoring commands hang on (``bespoke monitor …``,
``bespoke report …``, ``bespoke retrain``); each command lives beside the code it calls."""

from __future__ import annotations

import typer

monitor_app = typer.Typer(
    help="Is it still working? Drift and model-quality reports (exit 0 ok, 1 drift, 2 error).",
    no_args_is_help=True,
)
report_app = typer.Typer(help="Static HTML reports for people.", no_args_is_help=True)
