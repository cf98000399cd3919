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

from bespoke.privacy.audit import audit_log, person_pseudonym

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


def _person(
    dataset: str | None, user_id: str | None, anonymous_id: str | None, email: str | None
) -> tuple[Any, list[Any], str]:
    """(subject, stores, what the person was named by) or a clear error."""
    from bespoke.features.lake import Lake
    from bespoke.identity.vault import Vault
    from bespoke.privacy.stores import registry
    from bespoke.privacy.subjects import SubjectError, resolve
    from bespoke.serving.store import open_store
    from bespoke.settings import get_settings

    named = [(k, v) for k, v in (("user_id", user_id), ("anonymous_id", anonymous_id),
                                 ("email", email)) if v]  # fmt: skip
    if len(named) != 1:
        raise _fail("name the person by exactly one of --user-id, --anonymous-id, --email")
    settings = get_settings()
    online = open_store(settings).database()
    lake = Lake(settings.lake_url)
    try:
        subject = resolve(
            dataset or settings.serving_dataset, lake=lake, online=online,
            key=settings.pseudonym_key(), user_id=user_id, anonymous_id=anonymous_id,
            email=email,
        )  # fmt: skip
    except SubjectError as error:
        raise _fail(str(error)) from None
    stores = registry(online=online, lake=lake, vault=Vault.from_settings(settings))
    kind, value = named[0]
    return subject, stores, f"{kind}:{value}"


def _traces(subject: Any, stores: list[Any]) -> dict[str, dict[str, int]]:
    return {store.name: store.verify(subject) for store in stores}


@privacy_app.command("export")
def privacy_export(
    out: Annotated[Path, typer.Option("--out", help="Where to write the JSON.")],
    user_id: UserOption = None,
    anonymous_id: AnonymousOption = None,
    email: EmailOption = None,
    dataset: DatasetOption = None,
) -> None:
    """Everything held about a person, from every store, as JSON (the right of access)."""
    from bespoke.privacy.stores import as_json, export_subject
    from bespoke.settings import get_settings

    subject, stores, named = _person(dataset, user_id, anonymous_id, email)
    document = export_subject(subject, stores)
    if not any(document["stores"].values()):
        raise _fail("no data is held about this person")
    settings = get_settings()
    audit_log(settings).append(
        "export", actor=getpass.getuser(),
        person=person_pseudonym(settings.pseudonym_key(), subject.dataset, named),
    )  # fmt: skip
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
    subject, stores, _ = _person(dataset, user_id, anonymous_id, email)
    found = _traces(subject, stores)
    table = Table("store", "where", "traces", header_style="bold")
    for name, places in found.items():
        for place, count in places.items():
            table.add_row(name, place, str(count))
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
    from bespoke.privacy.requests import DeletionBusy, Deletions
    from bespoke.serving.store import open_store
    from bespoke.settings import get_settings

    subject, stores, named = _person(dataset, user_id, anonymous_id, email)
    if not any(n for places in _traces(subject, stores).values() for n in places.values()):
        raise _fail("no data is held about this person")
    settings = get_settings()
    deletions = Deletions(open_store(settings).database(), settings.pseudonym_key(),
                          audit=audit_log(settings), actor=getpass.getuser())  # fmt: skip
    try:
        request = deletions.delete(subject, stores, named=named)
    except DeletionBusy as error:
        raise _fail(str(error), EXIT_BUSY) from None
    _print_request(request)
    if request.status != "done":
        raise typer.Exit(code=EXIT_PARTIAL)


@privacy_app.command("requests")
def privacy_requests() -> None:
    """The deletion requests and their outcome per store."""
    from bespoke.privacy.requests import Deletions
    from bespoke.serving.store import open_store
    from bespoke.settings import get_settings

    settings = get_settings()
    found = Deletions(open_store(settings).database(), settings.pseudonym_key()).list()
    for request in found:
        _print_request(request)
    if not found:
        console.print("No deletion request.")


@privacy_app.command("resume")
def privacy_resume() -> None:
    """Finish the deletions a crash interrupted, and retry the partial ones."""
    from bespoke.features.lake import Lake
    from bespoke.identity.vault import Vault
    from bespoke.privacy.requests import DeletionBusy, Deletions
    from bespoke.privacy.stores import registry
    from bespoke.serving.store import open_store
    from bespoke.settings import get_settings

    settings = get_settings()
    online = open_store(settings).database()
    stores = registry(online=online, lake=Lake(settings.lake_url),
                      vault=Vault.from_settings(settings))  # fmt: skip
    deletions = Deletions(online, settings.pseudonym_key(), audit=audit_log(settings),
                          actor=getpass.getuser())  # fmt: skip
    try:
        finished = deletions.resume(stores)
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
