"""``bespoke privacy export|verify|delete|requests|resume``: parse, call
:mod:`bespoke.privacy`, print. A person is named by ``--user-id``, ``--anonymous-id`` or
``--email``. Exit codes: 0 done, 1 bad input or nobody to act on (nothing changed), 2 a
deletion ended partial, 4 another deletion is running (nothing changed)."""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bespoke.privacy.audit import audit_log

privacy_app = typer.Typer(
    help="A person's data: export it, erase it everywhere, prove nothing is left.",
    no_args_is_help=True,
)
console = Console()
errors = Console(stderr=True)
EXIT_PARTIAL = 2
EXIT_BUSY = 4

UserOption = Annotated[str | None, typer.Option("--user-id", help="The person's user id.")]
AnonymousOption = Annotated[
    str | None, typer.Option("--anonymous-id", help="A browser or device id of theirs.")
]
EmailOption = Annotated[
    str | None, typer.Option("--email", help="Their e-mail address (looked up by pseudonym).")
]
DatasetOption = Annotated[
    str | None, typer.Option("--dataset", help="Default: the dataset the service serves.")
]


def _fail(message: str, code: int = 1) -> typer.Exit:
    errors.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code=code)


def _installation() -> Any:
    from bespoke.privacy.installation import Installation
    from bespoke.settings import get_settings

    return Installation.from_settings(get_settings())


def _person(
    place: Any,
    dataset: str | None,
    user_id: str | None,
    anonymous_id: str | None,
    email: str | None,
) -> tuple[Any, str]:
    """(subject, what the person was named by) or a clear error."""
    from bespoke.privacy.subjects import SubjectError

    try:
        return place.person(dataset, user_id=user_id, anonymous_id=anonymous_id, email=email)
    except SubjectError as error:
        raise _fail(str(error)) from None


@privacy_app.command("export")
def privacy_export(
    out: Annotated[Path, typer.Option("--out", help="Where to write the JSON.")],
    user_id: UserOption = None,
    anonymous_id: AnonymousOption = None,
    email: EmailOption = None,
    dataset: DatasetOption = None,
) -> None:
    """Everything held about a person, from every store, as JSON (the right of access)."""
    from bespoke.privacy.stores import as_json
    from bespoke.privacy.subjects import SubjectError

    place = _installation()
    subject, named = _person(place, dataset, user_id, anonymous_id, email)
    try:
        document = place.export(subject, named, actor=getpass.getuser())
    except SubjectError as error:
        raise _fail(str(error)) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(as_json(document))
    counts = {name: sum(map(len, tables.values())) for name, tables in document["stores"].items()}
    console.print(f"written to {out}: " + ", ".join(f"{n} {c} rows" for n, c in counts.items()))


@privacy_app.command("verify")
def privacy_verify(
    user_id: UserOption = None,
    anonymous_id: AnonymousOption = None,
    email: EmailOption = None,
    dataset: DatasetOption = None,
) -> None:
    """Traces of a person in every store (rows, and bytes of the online store's files);
    exit 0 when there are none, 2 otherwise."""
    place = _installation()
    subject, _ = _person(place, dataset, user_id, anonymous_id, email)
    found = place.traces(subject)
    table = Table("store", "where", "traces", header_style="bold")
    for name, places in found.items():
        for where, count in places.items():
            table.add_row(name, where, str(count))
    console.print(table)
    total = sum(n for places in found.values() for n in places.values())
    console.print(f"{total} traces of {len(subject.typed)} identifiers")
    if total:
        raise typer.Exit(code=EXIT_PARTIAL)


@privacy_app.command("delete")
def privacy_delete(
    user_id: UserOption = None,
    anonymous_id: AnonymousOption = None,
    email: EmailOption = None,
    dataset: DatasetOption = None,
) -> None:
    """Erase a person from every store, then verify 0 traces (resumes an unfinished one)."""
    from bespoke.privacy.requests import DeletionBusy
    from bespoke.privacy.subjects import SubjectError

    place = _installation()
    subject, named = _person(place, dataset, user_id, anonymous_id, email)
    try:
        request = place.delete(subject, named, actor=getpass.getuser())
    except SubjectError as error:
        raise _fail(str(error)) from None
    except DeletionBusy as error:
        raise _fail(str(error), EXIT_BUSY) from None
    _print_request(request)
    if request.status != "done":
        raise typer.Exit(code=EXIT_PARTIAL)


@privacy_app.command("requests")
def privacy_requests() -> None:
    """The deletion requests and their outcome per store."""
    found = _installation().deletions(actor=getpass.getuser()).list()
    for request in found:
        _print_request(request)
    if not found:
        console.print("No deletion request.")


@privacy_app.command("resume")
def privacy_resume() -> None:
    """Finish the deletions a crash interrupted, and retry the partial ones."""
    from bespoke.privacy.requests import DeletionBusy

    place = _installation()
    try:
        finished = place.deletions(actor=getpass.getuser()).resume(place.stores)
    except DeletionBusy as error:
        raise _fail(str(error), EXIT_BUSY) from None
    for request in finished:
        _print_request(request)
    console.print(f"{len(finished)} requests run")
    if any(r.status != "done" for r in finished):
        raise typer.Exit(code=EXIT_PARTIAL)


def _print_request(request: Any) -> None:
    colour = "bold green" if request.status == "done" else "bold red"
    console.print(f"[{colour}]{request.id}: {request.status}[/] ({request.dataset}, "
                  f"{request.created_at})")  # fmt: skip
    for store, outcome in request.results.items():
        removed = sum((outcome.get("removed") or {}).values())
        detail = outcome.get("error") or (
            f"traces left: {outcome['traces']}" if outcome.get("traces") else "0 traces"
        )
        console.print(f"  {store}: {removed} removed, {escape(str(detail))}")


audit_app = typer.Typer(help="The hash-chained audit log.", no_args_is_help=True)


@audit_app.command("verify")
def audit_verify() -> None:
    """Check the chain: exit 0 when whole, 2 naming the first entry edited, inserted or
    removed."""
    verdict = audit_log().verify()
    if not verdict.ok:
        raise _fail(f"the audit log is broken: {verdict.problem}", EXIT_PARTIAL)
    console.print(f"the audit log is whole: {verdict.entries} entries")


@audit_app.command("show")
def audit_show(last: Annotated[int, typer.Option("--last", help="How many entries.")] = 20) -> None:
    """The latest entries."""
    table = Table("seq", "at", "action", "actor", "person", "detail", header_style="bold")
    for entry in audit_log().entries()[-last:]:
        table.add_row(str(entry["seq"]), entry["at"], entry["action"], entry["actor"],
                      (entry["person"] or "")[:12], escape(str(entry["detail"]))[:80])  # fmt: skip
    console.print(table)
