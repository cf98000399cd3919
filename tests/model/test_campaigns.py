"""E-mail campaigns on real data: ML-100K's behavioural segments (the segment job), the
EASE and ranker @champions the service answers with, the consent ledger, the suppression
list and the PII vault. Only members with marketing consent who were not erased get an
e-mail, each filled with their own recommendations and first name; a second run within the
cap sends nothing; a malformed template is refused before anything is written; an erasure
removes the person's e-mails and manifest lines."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bespoke.cli import app
from bespoke.features.lake import Lake
from bespoke.features.schema import ConsentPurpose
from bespoke.identity.vault import Vault
from bespoke.privacy.consent import ConsentLedger, ConsentSource
from bespoke.privacy.stores import CampaignFiles
from bespoke.privacy.subjects import Subject
from bespoke.privacy.suppression import SuppressionList
from bespoke.segments.train import train_segments
from bespoke.serving.db import Database, sqlite_path
from bespoke.serving.local import local_settings
from bespoke.settings import get_settings

TEMPLATE = Path(__file__).resolve().parents[2] / "src" / "channels" / "templates"


@pytest.fixture(scope="module")
def home(prepared_service_home, tmp_path_factory) -> Path:
    prepared, _ = prepared_service_home
    target = tmp_path_factory.mktemp("campaigns") / "home"
    shutil.copytree(prepared, target, ignore=shutil.ignore_patterns("service.log"))
    train_segments(local_settings(target), "ml-100k", "1998-04-23")
    return target


def _use(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in local_settings(home).as_environment().items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()


def test_a_segment_gets_personal_e_mails_only_where_it_may(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use(home, monkeypatch)
    settings = get_settings()
    lake = Lake(settings.lake_url or "")
    sizes = (
        lake.connect()
        .execute(
            "SELECT segment, count(*) AS n FROM segments_history WHERE valid_to IS NULL "
            "GROUP BY 1 ORDER BY n DESC"
        )
        .fetchall()
    )
    segment, size = sizes[0]
    members = [r[0] for r in lake.connect().execute(
        "SELECT person FROM segments_history WHERE valid_to IS NULL AND segment = ? "
        "ORDER BY person", [segment]).fetchall()]  # fmt: skip
    assert size >= 40
    database = Database(sqlite_path(settings.online_store_url or ""))
    ledger = ConsentLedger(database)
    granted, withdrawn, erased = members[:30], members[:2], members[2]
    for person in granted:
        ledger.record("ml-100k", {ConsentPurpose.MARKETING: True}, source=ConsentSource.IMPORT,
                      user_id=person)  # fmt: skip
    for person in withdrawn:  # a later withdrawal wins
        ledger.record("ml-100k", {ConsentPurpose.MARKETING: False}, source=ConsentSource.API,
                      user_id=person)  # fmt: skip
    SuppressionList(database, settings.pseudonym_key()).add("ml-100k", [f"user_id:{erased}"])
    named = members[3]
    Vault.from_settings(settings).put(f"crm-{named}", [("crm-1", {"first_name": "ADA"})],
                                      identifiers=[f"user_id:{named}"])  # fmt: skip
    out = tmp_path / "out"
    runner = CliRunner()
    command = ["campaign", "render", "--segment", segment, "--template",
               str(TEMPLATE / "recommendations.html.j2"), "--out", str(out), "--k", "4"]  # fmt: skip
    done = runner.invoke(app, command)
    assert done.exit_code == 0, done.output
    lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    sent, summary = lines[:-1], lines[-1]
    expected = [p for p in granted if p not in withdrawn and p != erased]
    assert sorted(e["user_id"] for e in sent) == sorted(expected)
    assert summary["skipped"] == {"no_marketing_consent": size - 30 + 2, "suppressed": 1}
    seen = dict(lake.connect().execute(
        "SELECT user_id, list(item_id) FROM events WHERE dataset = 'ml-100k' GROUP BY 1"
    ).fetchall())  # fmt: skip
    for entry in sent:
        html = (out / entry["file"]).read_text()
        assert len(entry["items"]) == 4 and not set(entry["items"]) & set(seen[entry["user_id"]])
        assert html.count("<li>") == 4 and "imdb.com" in html  # the catalog's links
        assert entry["user_id"] not in entry["file"]  # files are numbered, not named after people
    ada = next(e for e in sent if e["user_id"] == named)
    assert "Hello Ada," in (out / ada["file"]).read_text()
    assert "Ada" not in (out / "manifest.jsonl").read_text()  # decrypted into the e-mail only
    assert len({tuple(e["items"]) for e in sent}) > 1  # each person's own

    again = runner.invoke(app, [*command[:-3], str(tmp_path / "again"), "--k", "4"])
    assert again.exit_code == 0, again.output
    summary = json.loads((tmp_path / "again" / "manifest.jsonl").read_text().splitlines()[-1])
    assert summary["rendered"] == 0 and summary["skipped"]["frequency_cap"] == len(expected)

    # an erasure reaches the e-mails and the manifest
    files = CampaignFiles(database)
    person = Subject("ml-100k", user_ids=frozenset({expected[0]}))
    assert files.verify(person) == {"emails": 1, "manifests": 1}  # the capped run named nobody
    assert files.delete(person)["emails"] == 1
    assert files.verify(person) == {"emails": 0, "manifests": 0}
    assert len(list(out.glob("*.html"))) == len(expected) - 1


def test_a_bad_template_or_segment_is_refused_and_nothing_is_written(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use(home, monkeypatch)
    broken = tmp_path / "broken.html.j2"
    broken.write_text("<p>Hello</p>\n{% for item in items %}<li>{{ item.title }}</li>\n")
    out = tmp_path / "out"
    runner = CliRunner()
    segment = Lake(get_settings().lake_url or "").connect().execute(
        "SELECT segment FROM segments LIMIT 1").fetchone()[0]  # fmt: skip
    bad = runner.invoke(app, ["campaign", "render", "--segment", segment, "--template",
                              str(broken), "--out", str(out)])  # fmt: skip
    assert bad.exit_code == 1 and "broken.html.j2: line 2" in bad.output and "endfor" in bad.output
    unknown = runner.invoke(app, ["campaign", "render", "--segment", "No such people",
                                  "--template", str(TEMPLATE / "recommendations.html.j2"),
                                  "--out", str(out)])  # fmt: skip
    assert unknown.exit_code == 1 and "nobody is in segment 'No such people'" in unknown.output
    assert not out.exists()
