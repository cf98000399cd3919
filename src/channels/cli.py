"""``bespoke campaign render``: parse, call :mod:`bespoke.channels.campaigns`, print.
Exit codes: 0 rendered (or nobody may get one), 1 bad input (nothing written)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

campaign_app = typer.Typer(
    help="Personalized e-mail campaigns rendered from the engine's recommendations.",
    no_args_is_help=True,
)
console = Console()
errors = Console(stderr=True)


@campaign_app.command("render")
def campaign_render(
    segment: Annotated[str, typer.Option("--segment", help="The segment whose members get it.")],
    template: Annotated[Path, typer.Option("--template", help="A Jinja2 template (.html.j2).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the e-mails and manifest.")],
    dataset: Annotated[
        str | None, typer.Option("--dataset", help="Default: the dataset the service serves.")
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="The campaign's name (default: segment-template).")
    ] = None,
    k: Annotated[int, typer.Option("--k", help="Recommendations per e-mail.", min=1)] = 5,
    cap: Annotated[
        int, typer.Option("--cap", help="At most this many campaign e-mails a person…", min=1)
    ] = 1,
    cap_days: Annotated[float, typer.Option("--cap-days", help="…in this many days.")] = 7.0,
) -> None:
    """Render one e-mail per member of SEGMENT with marketing consent, not erased and under
    the frequency cap; tokens: person.first_name (from the vault), items (recommendations
    with title, categories, url), segment, campaign. A manifest lists who got what."""
    from bespoke.channels.campaigns import SKIP_REASONS, CampaignError, render_campaign
    from bespoke.settings import get_settings

    try:
        result = render_campaign(get_settings(), segment=segment, template=template, out_dir=out,
                                 dataset=dataset, campaign=name, k=k, cap=cap,
                                 cap_days=cap_days)  # fmt: skip
    except CampaignError as error:
        errors.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=1) from None
    table = Table("members of the segment", "e-mails", *SKIP_REASONS, header_style="bold")
    table.add_row(str(result.members), str(result.rendered),
                  *(str(result.skipped.get(r, 0)) for r in SKIP_REASONS))  # fmt: skip
    console.print(table)
    console.print(
        f"campaign {result.campaign!r}: {result.rendered} e-mails in {result.out_dir} "
        f"({result.rate:.0f}/s); who got what: {result.out_dir / 'manifest.jsonl'}"
    )
