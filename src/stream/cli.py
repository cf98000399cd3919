"""``bespoke stream consume|status``: parse, call :mod:`bespoke.stream.events`, print.
Exit codes: 0 done, 1 no stream configured or unreachable."""

from __future__ import annotations

import os
import signal
import socket
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

stream_app = typer.Typer(
    help="The event stream (BESPOKE_EVENT_STREAM_URL): workers that apply it, its backlog.",
    no_args_is_help=True,
)
console = Console()
errors = Console(stderr=True)


def _stream() -> Any:
    from bespoke.settings import get_settings
    from bespoke.stream.events import RedisEventStream

    url = get_settings().event_stream_url
    if not url:
        errors.print("[bold red]error:[/] no event stream is set: export "
                     "BESPOKE_EVENT_STREAM_URL=redis://host:6379/0")  # fmt: skip
        raise typer.Exit(code=1)
    return RedisEventStream(url)


@stream_app.command("consume")
def stream_consume(
    group: Annotated[str, typer.Option("--group", help="The consumer group.")] = "bespoke",
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            help="This worker's name (default: host-pid); "
            "a restarted worker under the same name takes back its batch.",
        ),
    ] = None,
    batch: Annotated[int, typer.Option("--batch", help="Events per micro-batch.", min=1)] = 500,
    until_empty: Annotated[
        bool, typer.Option("--until-empty", help="Stop when nothing is left (else run on).")
    ] = False,
    flush_every: Annotated[
        float, typer.Option("--flush-every", help="Seconds between writes to the lake.", min=0.0)
    ] = 5.0,
) -> None:
    """Apply the stream to profiles and the lake in micro-batches: at least once, each
    event applied once (event ids); a killed worker's batch is taken back."""
    import redis

    from bespoke.features.lake import Lake
    from bespoke.segments.live import LiveScorer
    from bespoke.serving.store import open_store
    from bespoke.settings import get_settings
    from bespoke.stream.events import consume

    stream = _stream()
    settings = get_settings()
    stopping = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stopping.update(now=True))
    worker = name or f"{socket.gethostname()}-{os.getpid()}"
    try:
        scorer = LiveScorer.load(settings, settings.serving_dataset)
    except Exception:  # no models: events are applied without live scores
        scorer = None
    try:
        report = consume(stream, open_store(settings), Lake(settings.lake_url or ""),
                         group=group, consumer=worker, batch=batch, scorer=scorer,
                         until_empty=until_empty, stop=lambda: stopping["now"],
                         flush_every_s=flush_every)  # fmt: skip
    except redis.ConnectionError as error:
        errors.print(f"[bold red]error:[/] the stream is unreachable: {escape(str(error))}")
        raise typer.Exit(code=1) from None
    console.print(
        f"{worker}: {report.batches} batches, {report.applied} events applied, "
        f"{report.duplicates} already applied, {report.rejected} refused, "
        f"{report.reclaimed} taken back, {report.flushed} written to the lake"
    )


@stream_app.command("status")
def stream_status(
    group: Annotated[str, typer.Option("--group", help="The consumer group.")] = "bespoke",
) -> None:
    """Entries in the stream and those read but not yet acknowledged."""
    stream = _stream()
    stream.ensure_group(group)
    console.print(f"{stream.length()} entries; {stream.pending(group)} pending in {group!r}")
