"""``bespoke privacy export|verify|delete|requests|resume|consent|retention|rotate-key``: parse, call
:mod:`bespoke.privacy`, print. A person is named by ``--user-id``, ``--anonymous-id`` or
``--email`` (consent: the first two). Exit codes: 0 done, 1 bad input or nobody to act on (nothing changed), 2 a
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
    file: Annotated[
        Path | None,
        typer.Option(
            "--file",
            help="Erase everyone listed: one per line, a user id or "
            "user_id:ID, anonymous_id:ID, email:ADDRESS.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
) -> None:
    """Erase a person (or everyone in --file, in one request) from every store, then
    verify 0 traces (resumes an unfinished one)."""
    from bespoke.privacy.requests import DeletionBusy
    from bespoke.privacy.subjects import SubjectError

    place = _installation()
    try:
        if file is not None:
            if user_id or anonymous_id or email:
                raise SubjectError("name people either in --file or by one option, not both")
            request = place.delete_many(_listed(file), dataset, actor=getpass.getuser())
        else:
            subject, named = _person(place, dataset, user_id, anonymous_id, email)
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


consent_app = typer.Typer(
    help="The consent ledger: record, import and show decisions per purpose.",
    no_args_is_help=True,
)
privacy_app.add_typer(consent_app, name="consent")


def _dataset(place: Any, dataset: str | None) -> str:
    return dataset or place.settings.serving_dataset


@consent_app.command("set")
def consent_set(
    decisions: Annotated[
        list[str],
        typer.Argument(help="purpose=true|false (or +purpose / -purpose), e.g. marketing=false."),
    ],
    user_id: UserOption = None,
    anonymous_id: AnonymousOption = None,
    source: Annotated[
        str, typer.Option("--source", help="api, event, import, cmp or cli.")
    ] = "cli",
    at: Annotated[
        str | None, typer.Option("--at", help="When the person decided (ISO 8601 with a zone).")
    ] = None,
    dataset: DatasetOption = None,
) -> None:
    """Record a person's decisions; enforced from the next event, request and training."""
    from bespoke.privacy.consent import ConsentError, ConsentSource, parse_purposes

    place = _installation()
    try:
        purposes = parse_purposes(decisions)
        origin = _source(source)
        place.consent().record(
            _dataset(place, dataset), purposes, source=ConsentSource(origin),
            user_id=user_id, anonymous_id=anonymous_id, decided_at=_moment(at),
            actor=getpass.getuser(),
        )  # fmt: skip
    except ConsentError as error:
        raise _fail(str(error)) from None
    _print_state(place, _dataset(place, dataset), user_id, anonymous_id)


def _source(text: str) -> str:
    from bespoke.privacy.consent import ConsentError, ConsentSource

    known = [s.value for s in ConsentSource]
    if text not in known:
        raise ConsentError(f"--source {text!r}: one of {', '.join(known)}")
    return text


def _moment(text: str | None) -> Any:
    from datetime import datetime

    from bespoke.privacy.consent import ConsentError

    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ConsentError(f"--at {text!r} is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        raise ConsentError(f"--at {text!r} has no time zone (add Z or +01:00)")
    return moment


@consent_app.command("show")
def consent_show(
    user_id: UserOption = None, anonymous_id: AnonymousOption = None, dataset: DatasetOption = None
) -> None:
    """A person's latest decision per purpose, and their history."""
    if not (user_id or anonymous_id):
        raise _fail("name the person: --user-id or --anonymous-id")
    place = _installation()
    _print_state(place, _dataset(place, dataset), user_id, anonymous_id)


@consent_app.command("import")
def consent_import(
    path: Annotated[
        Path,
        typer.Argument(
            help="CSV: user_id or anonymous_id, purpose, granted, decided_at[, source]",
            exists=True,
            dir_okay=False,
        ),
    ],
    dataset: DatasetOption = None,
) -> None:
    """Record a file of decisions (a consent platform's export) in one go: every row is
    checked first, and one bad row records nothing."""
    from bespoke.privacy.consent import ConsentError, import_decisions

    place = _installation()
    try:
        count = import_decisions(place.consent(), _dataset(place, dataset), path,
                                 actor=getpass.getuser())  # fmt: skip
    except ConsentError as error:
        raise _fail(str(error)) from None
    console.print(f"{count} decisions recorded from {path}")


def _print_state(place: Any, dataset: str, user_id: str | None, anonymous_id: str | None) -> None:
    ledger = place.consent()
    table = Table("purpose", "granted", "decided at", "source", header_style="bold")
    for purpose, decision in sorted(ledger.state(dataset, user_id=user_id,
                                                 anonymous_id=anonymous_id).items()):  # fmt: skip
        table.add_row(purpose.value, "yes" if decision.granted else "no",
                      decision.decided_at.isoformat(), decision.source.value)  # fmt: skip
    console.print(table)
    history = ledger.history(dataset, user_id=user_id, anonymous_id=anonymous_id)
    console.print(f"{len(history)} decisions recorded for this person")


@privacy_app.command("retention")
def privacy_retention(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count what would be deleted; change nothing.")
    ] = False,
    every: Annotated[
        float | None,
        typer.Option("--every", help="Run again every SECONDS until interrupted.", min=1.0),
    ] = None,
) -> None:
    """Delete person data older than each table's retention period (BESPOKE_RETENTION_DAYS,
    e.g. '{"lake:events": 730}'); scheduled with --every or by cron."""
    import time

    from bespoke.privacy.retention import RetentionError, enforce

    place = _installation()
    periods = place.settings.retention_days
    while True:
        try:
            removed = enforce(periods, lake=place.lake, online=place.online, audit=place.audit,
                              actor=getpass.getuser(), dry_run=dry_run)  # fmt: skip
        except RetentionError as error:
            raise _fail(str(error)) from None
        table = Table(
            "table", "days", "would delete" if dry_run else "deleted", header_style="bold"
        )
        for name, rows in removed.items():
            table.add_row(name, str(periods[name]), str(rows))
        console.print(table)
        if every is None:
            return
        time.sleep(every)


@privacy_app.command("rotate-key")
def privacy_rotate_key(
    yes: Annotated[
        bool,
        typer.Option("--yes", help="Confirm that the service and scheduled jobs are stopped."),
    ] = False,
) -> None:
    """Rotate the HMAC key of pseudonyms: a new key version, every stored pseudonym
    re-keyed in every store so that joins with new data hold; run again to finish an
    interrupted rotation. Stop the service and scheduled jobs first (they keep the key
    they started with) and start them after."""
    from bespoke.privacy.requests import DeletionBusy
    from bespoke.privacy.rotation import RotationError, rotate

    if not yes:
        raise _fail("stop the service and scheduled jobs, then run again with --yes")
    place = _installation()
    try:
        done = rotate(place, actor=getpass.getuser())
    except DeletionBusy as error:
        raise _fail(str(error), EXIT_BUSY) from None
    except RotationError as error:
        raise _fail(str(error)) from None
    table = Table("store", "values re-keyed", header_style="bold")
    for store, counts in done.changed.items():
        table.add_row(store, str(sum(counts.values())))
    console.print(table)
    verb = "finished the interrupted rotation" if done.resumed else "rotated"
    console.print(
        f"{verb}: key version {done.from_version} → {done.to_version}, "
        f"{done.pseudonyms} pseudonyms re-keyed; start the service and jobs again"
    )


def _listed(path: Path) -> list[tuple[str, str]]:
    """The people a --file names, as (kind, value); a bad line is an error naming it."""
    from bespoke.privacy.subjects import SubjectError

    kinds = {"user_id", "anonymous_id", "email"}
    people = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        kind, _, value = text.partition(":") if ":" in text else ("user_id", "", text)
        if kind not in kinds or not value.strip():
            raise SubjectError(f"{path.name}, line {number}: write ID or user_id:ID, "
                               "anonymous_id:ID, email:ADDRESS")  # fmt: skip
        people.append((kind, value.strip()))
    return people


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
