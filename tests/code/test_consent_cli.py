"""``bespoke privacy consent set|show|import``: decisions recorded and shown, audited by
pseudonym, and bad input (an unknown purpose, a naive time, a bad CSV row) refused with
the reason and a non-zero exit, recording nothing."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from bespoke.cli import app
from bespoke.privacy.audit import audit_log
from bespoke.privacy.consent import ConsentLedger
from bespoke.serving.db import Database, sqlite_path
from bespoke.settings import get_settings


def _consent(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["privacy", "consent", *args])
    return result.exit_code, result.output


def _ledger() -> ConsentLedger:
    return ConsentLedger(Database(sqlite_path(get_settings().online_store_url)))


def test_decisions_are_recorded_shown_and_audited(tmp_path: Path) -> None:
    code, out = _consent("set", "--user-id", "alice-7", "personalization=false", "+marketing",
                         "--source", "cmp", "--at", "2026-11-30T09:00:00+01:00")  # fmt: skip
    assert code == 0, out
    assert "personalization" in out and "no" in out and "2 decisions recorded" in out
    assert _ledger().allows("ml-100k", "marketing", user_id="alice-7") is True
    code, out = _consent("show", "--user-id", "alice-7")
    assert code == 0 and "cmp" in out
    csv = tmp_path / "cmp-export.csv"
    csv.write_text("user_id,anonymous_id,purpose,granted,decided_at,source\n"
                   "alice-7,,personalization,true,2026-12-01T10:00:00Z,cmp\n"
                   ",browser-3,analytics,false,2026-12-01T10:00:00Z,\n")  # fmt: skip
    code, out = _consent("import", str(csv))
    assert code == 0 and "2 decisions recorded" in out, out
    assert _ledger().allows("ml-100k", "personalization", user_id="alice-7") is True
    entries = audit_log().entries()
    assert [e["action"] for e in entries] == ["consent.changed"] * 3
    assert all("alice" not in str(e) and "browser-3" not in str(e) for e in entries)
    assert audit_log().verify().ok


def test_bad_decisions_are_refused_and_record_nothing(tmp_path: Path) -> None:
    for args, message in (
        (["set", "--user-id", "a1", "profiling=false"], "'profiling' is not a purpose"),
        (["set", "--user-id", "a1", "marketing=maybe"], "true or false"),
        (["set", "marketing=false"], "name the person"),
        (["set", "--user-id", "a1", "marketing=false", "--at", "2026-01-01T00:00"], "no time zone"),
        (["set", "--user-id", "a1", "marketing=false", "--source", "fax"], "--source 'fax'"),
        (["show"], "name the person"),
    ):
        code, out = _consent(*args)
        assert code == 1 and message in " ".join(out.split()), (args, out)
    csv = tmp_path / "bad.csv"
    csv.write_text("user_id,purpose,granted,decided_at\n"
                   "a1,marketing,true,2026-12-01T10:00:00Z\n"
                   "a2,marketing,true,2026-12-01 10:00\n")  # fmt: skip
    code, out = _consent("import", str(csv))
    assert code == 1 and "bad.csv, line 3, decided_at" in " ".join(out.split()), out
    assert _ledger().people("ml-100k") == 0  # not even the good first row
    assert audit_log().entries() == []
