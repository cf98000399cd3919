"""Retention on ML-100K: rows older than their table's period are deleted from the lake
(files rewritten atomically) and the online store; newer rows are untouched; a dry run
and a bad setting change nothing."""

from __future__ import annotations

import hashlib
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bespoke.features.lake import Lake
from bespoke.privacy.audit import AuditLog
from bespoke.privacy.retention import RetentionError, enforce
from bespoke.serving.db import Database

NOW = datetime(1998, 4, 23, tzinfo=UTC)  # ML-100K's last rating is on 1998-04-22
CUTOFF = datetime(1998, 3, 24, tzinfo=UTC)


def _digest(lake: Lake, where: str) -> tuple[int, str]:
    rows = (
        lake.connect()
        .execute(f"SELECT * EXCLUDE (run_id) FROM events WHERE {where} ORDER BY event_id")
        .fetchall()
    )
    return len(rows), hashlib.sha256(repr(rows).encode()).hexdigest()


def test_rows_older_than_their_period_go_and_the_rest_stay(ml100k_lake, tmp_path: Path) -> None:
    source, _ = ml100k_lake
    shutil.copytree(source.path(), tmp_path / "lake")
    lake = Lake(str(tmp_path / "lake"))
    online = Database(tmp_path / "online.db")
    with online.write() as con:
        con.execute("CREATE TABLE refused_aliases (dataset TEXT, anonymous_id TEXT, "
                    "user_id TEXT, refused_at INTEGER, reason TEXT)")  # fmt: skip
        con.executemany("INSERT INTO refused_aliases VALUES ('ml-100k', ?, 'u', ?, 'shared')",
                        [("old", 0), ("new", int(NOW.timestamp() * 1e6))])  # fmt: skip
    old = _digest(lake, f"timestamp < TIMESTAMPTZ '{CUTOFF.isoformat()}'")
    kept = _digest(lake, f"timestamp >= TIMESTAMPTZ '{CUTOFF.isoformat()}'")
    assert old[0] > 0 and kept[0] > 0
    periods = {"lake:events": 30, "online:refused_aliases": 30}
    counted = enforce(periods, lake=lake, online=online, now=NOW, dry_run=True)
    assert counted == {"lake:events": old[0], "online:refused_aliases": 1}
    assert _digest(lake, "true")[0] == 100_000  # the dry run changed nothing

    audit = AuditLog(tmp_path / "audit.jsonl")
    removed = enforce(periods, lake=lake, online=online, audit=audit, actor="cron", now=NOW)
    assert removed == counted
    assert _digest(lake, "true") == kept  # exactly the newer events remain, unchanged
    assert lake.check().healthy
    with online.read() as con:
        assert [r[0] for r in con.execute("SELECT anonymous_id FROM refused_aliases")] == ["new"]
    (entry,) = audit.entries()
    assert entry["action"] == "retention" and entry["detail"]["removed"] == removed
    assert enforce(periods, lake=lake, online=online, now=NOW) == dict.fromkeys(periods, 0)


def test_a_bad_period_is_refused_naming_it(tmp_path: Path, monkeypatch) -> None:
    lake, online = Lake(str(tmp_path / "lake")), Database(tmp_path / "online.db")
    with pytest.raises(RetentionError, match="'lake:items' is not a table retention applies"):
        enforce({"lake:items": 3}, lake=lake, online=online)
    with pytest.raises(RetentionError, match="'lake:events' must be a positive"):
        enforce({"lake:events": 0}, lake=lake, online=online)
    from bespoke.cli import app
    from bespoke.settings import get_settings

    monkeypatch.setenv("BESPOKE_RETENTION_DAYS", '{"online:consent_ledger": 30}')
    get_settings.cache_clear()
    result = CliRunner().invoke(app, ["privacy", "retention"])
    assert result.exit_code == 1 and "'online:consent_ledger' is not a table" in result.output
