"""The hash-chained audit log: an edited, inserted or removed entry is found, and what is
recorded (API keys, experiment halts) names people by pseudonym only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bespoke.cli import app
from bespoke.experiments.ledger import ExperimentLedger
from bespoke.privacy.audit import AuditLog, audit_log, person_pseudonym
from bespoke.serving.db import Database
from bespoke.serving.keys import ApiKeys
from bespoke.settings import get_settings


def _filled(tmp_path: Path, n: int = 6) -> AuditLog:
    log = AuditLog(tmp_path / "audit" / "audit.jsonl")
    for i in range(n):
        log.append("export", actor="alice", person=person_pseudonym(b"k" * 32, "ml-100k", f"user_id:{i}"),
                   detail={"i": i})  # fmt: skip
    return log


def _rewrite(log: AuditLog, lines: list[str]) -> None:
    log.path.write_text("".join(line + "\n" for line in lines))


def test_a_whole_log_verifies_and_names_nobody(tmp_path: Path) -> None:
    log = _filled(tmp_path)
    verdict = log.verify()
    assert verdict.ok and verdict.entries == 6
    text = log.path.read_text()
    assert '"user_id:3"' not in text and "ml-100k:user_id" not in text
    assert [e["seq"] for e in log.entries()] == [1, 2, 3, 4, 5, 6]
    assert all(
        e["prev"] == p["hash"] for p, e in zip(log.entries(), log.entries()[1:], strict=False)
    )


@pytest.mark.parametrize(
    ("tamper", "problem"),
    [
        ("edit", "entry 3 was edited"),
        ("insert", "entry 2 where 3 was due"),
        ("remove", "entry 4 where 3 was due"),
        ("cut", "the log ends at entry 5 but its head records entry 6"),
        ("reorder", "entry 4 where 3 was due"),
        ("rechain", "entry 4 does not follow the entry before it"),
    ],
)
def test_tampering_is_found(tmp_path: Path, tamper: str, problem: str) -> None:
    log = _filled(tmp_path)
    lines = log.path.read_text().splitlines()
    entries = [json.loads(line) for line in lines]
    if tamper == "edit":
        entries[2]["actor"] = "mallory"
        lines[2] = json.dumps(entries[2], sort_keys=True)
    elif tamper == "insert":
        lines.insert(2, lines[1])
    elif tamper == "remove":
        del lines[2]
    elif tamper == "cut":
        del lines[-1]
    elif tamper == "reorder":
        lines[2], lines[3] = lines[3], lines[2]
    elif tamper == "rechain":  # an edit whose own hash was recomputed: the next link breaks
        from bespoke.privacy.audit import _digest

        entries[2]["actor"] = "mallory"
        entries[2]["hash"] = _digest(entries[2])
        lines[2] = json.dumps(entries[2], sort_keys=True)
    _rewrite(log, lines)
    verdict = log.verify()
    assert not verdict.ok and problem in (verdict.problem or ""), verdict


def test_keys_and_experiment_changes_are_recorded_and_the_command_verifies(
    tmp_path: Path, isolated_settings: Path
) -> None:
    log = audit_log(get_settings())
    database = Database(tmp_path / "online.db")
    keys = ApiKeys(database, audit=log, actor="ops")
    keys.create("shop")
    keys.revoke("shop")
    ledger = ExperimentLedger(database, audit=log)
    ledger.change("ranker-on", coverage=0.2, status="halted", action="halt", actor="scheduler",
                  reason="sample ratio")  # fmt: skip
    actions = [(e["action"], e["actor"]) for e in log.entries()]
    assert actions == [("api_key.created", "ops"), ("api_key.revoked", "ops"),
                       ("experiment.halt", "scheduler")]  # fmt: skip
    runner = CliRunner()
    result = runner.invoke(app, ["audit", "verify"])
    assert result.exit_code == 0 and "3 entries" in result.output
    lines = log.path.read_text().splitlines()
    _rewrite(log, [lines[0], lines[2]])
    result = runner.invoke(app, ["audit", "verify"])
    assert result.exit_code == 2 and "entry 3 where 2 was due" in result.output
