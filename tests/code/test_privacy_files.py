"""Logs and reports as person-data stores: structured lines, JSON objects and CSV rows
naming the person go, a report naming one of their ids in free text is removed, and
everyone else's lines and rows stay as they were."""

from __future__ import annotations

import json
from pathlib import Path

from bespoke.privacy.stores import FileStore
from bespoke.privacy.subjects import Subject

PERSON = Subject("ml-100k", frozenset({"7"}), frozenset({"browser-7f3a9c"}))


def test_logs_and_reports_lose_the_person_and_keep_everyone_else(tmp_path: Path) -> None:
    reports, logs = tmp_path / "reports", tmp_path / "logs"
    (reports / "2026").mkdir(parents=True)
    logs.mkdir()
    (reports / "2026" / "top.json").write_text(json.dumps(
        {"title": "top spenders", "people": [{"user_id": "7", "spend": 3}, {"user_id": "8", "spend": 2}]}))  # fmt: skip
    (reports / "2026" / "export.csv").write_text("person,segment\n7,loyal\n70,loyal\n8,new\n")
    (reports / "2026" / "kpi.html").write_text("<p>visitors: 912</p>")
    (reports / "2026" / "debug.html").write_text("<td>browser-7f3a9c</td>")
    (logs / "jobs.log").write_text(
        '{"event": "scored", "user_id": "7"}\n{"event": "scored", "user_id": "8"}\n'
        "merged browser-7f3a9c into a known user\nstarted\n"
    )
    stores = [FileStore("reports", [reports]), FileStore("logs", [logs])]
    assert {s.name: s.verify(PERSON)["files"] for s in stores} == {"reports": 3, "logs": 2}
    assert stores[0].export(PERSON)["files"][0]["entries"] >= 1

    assert {s.name: s.delete(PERSON)["files"] for s in stores} == {"reports": 3, "logs": 2}
    assert all(s.verify(PERSON) == {"files": 0} for s in stores)
    assert json.loads((reports / "2026" / "top.json").read_text())["people"] == [
        {"user_id": "8", "spend": 2}]  # fmt: skip
    assert (reports / "2026" / "export.csv").read_text() == "person,segment\n70,loyal\n8,new\n"
    assert (reports / "2026" / "kpi.html").read_text() == "<p>visitors: 912</p>"
    assert not (reports / "2026" / "debug.html").exists()  # named in free text: recomputed
    assert (logs / "jobs.log").read_text() == '{"event": "scored", "user_id": "8"}\nstarted\n'
    assert all(s.delete(PERSON) == {"files": 0} for s in stores)
