"""Personalized e-mail campaigns: one e-mail per member of a segment, filled by the engine
that answers the service.

``render_campaign`` reads the template first (Jinja2, sandboxed, autoescaped, undefined
names are errors), so a malformed one is refused before anything is written. Then, for
each member of the segment (the latest assignment in the lake, behavioural or rule
segment): only people who granted the ``marketing`` purpose (an explicit grant in the
consent ledger), not on the suppression list (erased), and under the frequency cap (at most
``cap`` e-mails in ``cap_days`` days, across campaigns) get one. Their tokens come from the
same engine and ``@champion`` models as ``/v1/recommend`` (channel ``email`` in the rules'
context), with the catalog's title, categories and link; their first name is decrypted
from the PII vault at render time and written nowhere but the e-mail.

Each e-mail is one file (numbered, never named after the person) and ``manifest.jsonl``
lists who got which file with which items; a summary line lists who was left out and why.
The sends are kept in the online store (``campaign_sends``) for the cap and the run's
folder in ``campaign_runs``, so that an erasure finds the person's e-mails and manifest
lines (``bespoke.privacy.stores.CampaignFiles``).
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from jinja2 import StrictUndefined, TemplateError, TemplateSyntaxError
from jinja2.sandbox import SandboxedEnvironment

from bespoke.features.lake import Lake
from bespoke.features.schema import ConsentPurpose
from bespoke.identity.vault import SubjectErased, Vault
from bespoke.privacy.consent import ConsentLedger
from bespoke.privacy.suppression import SuppressionList
from bespoke.serving.champions import engine_for
from bespoke.serving.db import Database, sqlite_path
from bespoke.serving.store import open_store
from bespoke.settings import Settings
from bespoke.training.data import catalog_fields

_SCHEMA = """
CREATE TABLE IF NOT EXISTS campaign_sends (
    dataset TEXT NOT NULL,
    user_id TEXT NOT NULL,
    campaign TEXT NOT NULL,
    sent_at INTEGER NOT NULL,       -- microseconds since the epoch
    PRIMARY KEY (dataset, user_id, campaign, sent_at)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS campaign_runs (
    campaign TEXT NOT NULL,
    dataset TEXT NOT NULL,
    out_dir TEXT NOT NULL,
    rendered INTEGER NOT NULL,
    rendered_at TEXT NOT NULL,
    PRIMARY KEY (campaign, out_dir)
)
"""
MANIFEST = "manifest.jsonl"
#: Why a member of the segment got no e-mail.
SKIP_REASONS = {
    "no_marketing_consent": "has not granted the marketing purpose",
    "suppressed": "was erased (on the suppression list)",
    "frequency_cap": "reached the frequency cap",
}
_FIRST_NAME_FIELDS = ("first_name", "given_name")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class CampaignError(ValueError):
    """A campaign that cannot be rendered (a malformed template, an unknown segment)."""


@dataclass(frozen=True)
class CampaignResult:
    campaign: str
    segment: str
    out_dir: Path
    members: int
    rendered: int
    skipped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        """E-mails rendered per second."""
        return self.rendered / self.seconds if self.seconds else 0.0


def load_template(path: str | Path) -> Any:
    """The template, compiled in a sandbox (a template cannot reach Python's internals),
    autoescaped, with undefined names as errors; a clear CampaignError otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CampaignError(f"no template at {path}")
    environment = SandboxedEnvironment(autoescape=True, undefined=StrictUndefined)
    try:
        return environment.from_string(path.read_text())
    except TemplateSyntaxError as error:
        raise CampaignError(f"{path}: line {error.lineno}: {error.message}") from None


def segment_members(lake: Lake, dataset: str, segment: str) -> list[str]:
    """Who is in ``segment`` now (their latest assignment: behavioural or rule segment)."""
    con = lake.connect()
    try:
        rows = con.execute(
            "SELECT person, segment, rule_segments FROM segments_history "
            "WHERE dataset = ? AND valid_to IS NULL",
            [dataset],
        ).fetchall()
    except Exception as error:  # no segments table: never trained
        raise CampaignError(
            f"no segments of {dataset!r} in the lake: run `bespoke train segments` first"
        ) from error
    members = sorted(
        (
            str(person)
            for person, name, rules in rows
            if name == segment or segment in (rules or [])
        ),
        key=lambda p: (len(p), p),
    )
    if not members:
        known = sorted({n for _, n, _ in rows if n} | {r for *_, rs in rows for r in rs or []})
        raise CampaignError(f"nobody is in segment {segment!r}; segments: {', '.join(known)}")
    return members


class CampaignSends:
    """Who got a campaign e-mail when, and which runs wrote where (the online store's file)."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def _ready(self) -> Database:
        self.database.ensure("campaigns", _SCHEMA)
        return self.database

    def recent(self, dataset: str, since: datetime) -> Counter[str]:
        """E-mails per person sent since ``since``."""
        with self._ready().read() as con:
            rows = con.execute(
                "SELECT user_id, count(*) FROM campaign_sends WHERE dataset = ? AND sent_at >= ? "
                "GROUP BY user_id",
                (dataset, _micros(since)),
            ).fetchall()
        return Counter(dict(rows))

    def record(self, dataset: str, campaign: str, people: list[str], at: datetime) -> None:
        with self._ready().write() as con:
            con.executemany(
                "INSERT OR IGNORE INTO campaign_sends VALUES (?, ?, ?, ?)",
                [(dataset, person, campaign, _micros(at)) for person in people],
            )

    def run(self, campaign: str, dataset: str, out_dir: Path, rendered: int) -> None:
        with self._ready().write() as con:
            con.execute(
                "INSERT INTO campaign_runs VALUES (?, ?, ?, ?, ?) ON CONFLICT (campaign, out_dir) "
                "DO UPDATE SET rendered = rendered + excluded.rendered, "
                "rendered_at = excluded.rendered_at",
                (campaign, dataset, str(out_dir), rendered, datetime.now(UTC).isoformat()),
            )


def _micros(moment: datetime) -> int:
    return int((moment - _EPOCH).total_seconds() * 1_000_000)


def render_campaign(
    settings: Settings,
    *,
    segment: str,
    template: str | Path,
    out_dir: str | Path,
    dataset: str | None = None,
    campaign: str | None = None,
    k: int = 5,
    cap: int = 1,
    cap_days: float = 7.0,
    now: datetime | None = None,
) -> CampaignResult:
    """Render one e-mail per member of ``segment`` who may get one (see the module)."""
    compiled = load_template(template)  # a malformed template: nothing written
    if k < 1 or cap < 1 or cap_days <= 0:
        raise CampaignError("k and the cap are at least 1, and the cap's days more than 0")
    dataset = dataset or settings.serving_dataset
    campaign = campaign or f"{segment}-{Path(template).stem.split('.')[0]}"
    now = now or datetime.now(UTC)
    started = time.perf_counter()
    members = segment_members(Lake(settings.lake_url or ""), dataset, segment)
    database = Database(sqlite_path(settings.control_store_url or ""))
    ledger = ConsentLedger(database)
    grants = {}
    for person in members:
        decision = ledger.state(dataset, user_id=person).get(ConsentPurpose.MARKETING)
        if decision is not None and decision.granted:
            grants[person] = decision.decided_at
    # an erased person's grant from before their erasure went with them; one made after
    # it is theirs anew
    erased = SuppressionList(database, settings.pseudonym_key()).erased(
        dataset, [({"user_id": p}, moment) for p, moment in grants.items()]
    )
    gone = {p for p, hit in zip(grants, erased, strict=True) if hit}
    sends = CampaignSends(database)
    recent = sends.recent(dataset, now - timedelta(days=cap_days))
    skipped: Counter[str] = Counter()
    chosen = []
    for person in members:
        if person not in grants:
            skipped["no_marketing_consent"] += 1
        elif person in gone:
            skipped["suppressed"] += 1
        elif recent[person] >= cap:
            skipped["frequency_cap"] += 1
        else:
            chosen.append(person)
    if chosen:
        engine, catalog = engine_for(settings, dataset)
        fields = catalog_fields(catalog)
        store = open_store(settings)
        vault = Vault.from_settings(settings)
    out = Path(out_dir).expanduser().resolve()
    manifest_lines, written = [], []
    for person in chosen:
        snapshot = store.snapshot(person, dataset)
        answer = engine.recommend(snapshot.profile, snapshot.events, k=k,
                                  context={"channel": "email", "campaign": campaign}, now=now)  # fmt: skip
        items = [{"item_id": i.item_id, "score": i.score, **fields.get(i.item_id, {})}
                 for i in answer.items]  # fmt: skip
        try:
            html = compiled.render(
                person={"user_id": person, "first_name": _first_name(vault, person)},
                segment=segment, campaign=campaign, items=items, dataset=dataset,
            )  # fmt: skip
        except TemplateError as error:
            raise CampaignError(f"{template}: {error}") from None
        name = f"{len(written) + 1:06d}.html"
        out.mkdir(parents=True, exist_ok=True)  # after the first e-mail rendered whole
        _write(out / name, html)
        written.append(person)
        manifest_lines.append(json.dumps({
            "user_id": person, "file": name, "campaign": campaign, "segment": segment,
            "items": [i["item_id"] for i in items], "rendered_at": now.isoformat(),
        }))  # fmt: skip
    summary = json.dumps({"campaign": campaign, "segment": segment, "members": len(members),
                          "rendered": len(written), "skipped": dict(skipped)})  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    with (out / MANIFEST).open("a") as handle:
        handle.write("".join(line + "\n" for line in [*manifest_lines, summary]))
        handle.flush()
        os.fsync(handle.fileno())
    sends.record(dataset, campaign, written, now)
    sends.run(campaign, dataset, out, len(written))
    return CampaignResult(campaign, segment, out, len(members), len(written), dict(skipped),
                          time.perf_counter() - started)  # fmt: skip


def _first_name(vault: Vault, person: str) -> str | None:
    """The person's first name from the vault, decrypted now (None when it holds none)."""
    for subject in vault.subjects_of([f"user_id:{person}"]):
        try:
            records = vault.get(subject)
        except SubjectErased:
            continue
        for record in records.values():
            for name in _FIRST_NAME_FIELDS:
                if record.get(name):
                    return str(record[name]).strip().title()
    return None


def _write(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)
