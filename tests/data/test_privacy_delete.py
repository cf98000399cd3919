"""One real person erased from every registered store, and nobody else touched: ML-100K
user 1 through batch ingestion (the lake), live events with a browser id that a login
linked (the online store), an experiment (exposures in the ledger and the lake), segment
assignments (the lake; trained models are erased in tests/model/test_privacy_models.py); then
export, delete, verify zero traces (rows, and bytes on disk with the log), and checksums
of every other person's rows unchanged."""

from __future__ import annotations

import hashlib
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from bespoke.experiments.ledger import ExperimentLedger, Exposure
from bespoke.features.lake import TMP_SUFFIX, Lake
from bespoke.features.schema import EventIn
from bespoke.privacy.stores import ONLINE_TABLES, export_subject, registry
from bespoke.privacy.subjects import resolve
from bespoke.segments.train import write_assignments
from bespoke.serving.store import SQLiteStore

BROWSER = "browser-of-user-one-7f3a"


def _event(user: str | None, anonymous: str | None, item: str, day: int) -> EventIn:
    return EventIn.model_validate({
        "user_id": user, "anonymous_id": anonymous, "event_type": "click", "item_id": item,
        "consent": ["personalization"], "timestamp": datetime(1998, 5, day, tzinfo=UTC).isoformat(),
    })  # fmt: skip


def _checksums(lake: Lake, store: SQLiteStore, gone: set[str]) -> dict[str, str]:
    """A digest of everyone else's rows, per lake table and online table."""
    con = lake.connect()
    out = {}
    for table, where in (("events", "user_id"), ("users", "user_id"), ("exposures", "person"),
                         ("segments", "person")):  # fmt: skip
        rows = con.execute(
            f"SELECT * EXCLUDE (run_id) FROM {table} WHERE {where} NOT IN (SELECT unnest(?)) ORDER BY ALL",
            [sorted(gone)],
        ).fetchall()
        out[f"lake:{table}"] = hashlib.sha256(repr(rows).encode()).hexdigest()
    with store.database().read() as db:
        present = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        for table in ONLINE_TABLES:
            found = db.execute(f"SELECT * FROM {table}").fetchall() if table in present else []
            rows = sorted(map(repr, found))
            kept = [r for r in rows if not any(f"'{g}'" in r for g in gone)]
            out[f"online:{table}"] = hashlib.sha256(repr(kept).encode()).hexdigest()
    return out


def test_a_person_is_erased_everywhere_and_nobody_else_changes(
    ml100k_lake, tmp_path: Path, key: bytes
) -> None:
    source, _ = ml100k_lake
    shutil.copytree(source.path(), tmp_path / "lake")
    lake = Lake(str(tmp_path / "lake"))
    store = SQLiteStore(f"sqlite:///{tmp_path / 'online.db'}", key)
    # browsing before logging in, then the login links the browser to user 1
    store.accept_events(
        [_event(None, BROWSER, "50", 1), _event(None, BROWSER, "172", 1)], "ml-100k"
    )
    store.accept_events([_event("1", BROWSER, "181", 2), _event("2", None, "50", 2)], "ml-100k")
    ledger = ExperimentLedger(store.database())
    ledger.record([
        Exposure("ml-100k", "ranker-on", person, False, "control", 0, 2, False,
                 datetime(1998, 5, 1, tzinfo=UTC))
        for person in ("1", "2", "3")
    ])  # fmt: skip
    ledger.flush(lake)
    # everyone's segment, kept in the lake as the segment job keeps it
    counts = lake.connect().execute(
        "SELECT user_id, count(*) AS n FROM events GROUP BY user_id").df().set_index("user_id")  # fmt: skip
    segments = pd.DataFrame({"segment": ["heavy" if n > 100 else "light" for n in counts["n"]]},
                            index=counts.index)  # fmt: skip
    assert write_assignments(lake, "ml-100k", segments, "1998-04-23", "test") == 943
    subject = resolve("ml-100k", lake=lake, online=store.database(), key=key, user_id="1")
    assert subject.user_ids == {"1"} and subject.anonymous_ids == {BROWSER}
    stores = registry(online=store.database(), lake=lake, vault=None)

    exported = export_subject(subject, stores)
    assert len(exported["stores"]["lake"]["events"]) == 272  # user 1's ratings in ML-100K
    assert exported["stores"]["lake"]["users"][0]["user_id"] == "1"
    assert len(exported["stores"]["online"]["inbox"]) == 3  # two before login, one after
    assert exported["stores"]["online"]["exposures"][0]["person"] == "1"

    # a crashed writer left a copy of one of their files under a temporary name
    (held, *_) = lake.files_holding("ml-100k", "1")
    shutil.copy(held, held + TMP_SUFFIX)
    before = _checksums(lake, store, {"1", BROWSER})
    assert any(n for s in stores for n in s.verify(subject).values())
    assert stores[-1].verify(subject)["leftovers"] > 0  # found on disk, though no reader sees it
    removed = {s.name: s.delete(subject) for s in stores}
    assert removed["lake"]["events"] == 272 and removed["lake"]["exposures"] == 1
    assert removed["lake"]["segments"] == 1
    assert removed["online"]["inbox"] == 3 and removed["online"]["aliases"] == 1
    traces = {s.name: s.verify(subject) for s in stores}
    assert all(n == 0 for found in traces.values() for n in found.values()), traces
    assert "bytes:online.db" in traces["online"]  # the file and its log were scanned
    assert _checksums(lake, store, {"1", BROWSER}) == before
    assert lake.check().healthy
    # the service's reads agree: nothing left of them, everyone else intact
    assert not store.profile("1", "ml-100k").known
    assert not store.profile(BROWSER, "ml-100k", anonymous=True).known
    assert store.profile("2", "ml-100k").known
    # a second deletion finds nothing and changes nothing
    again = {s.name: s.delete(subject) for s in stores}
    assert all(n == 0 for found in again.values() for n in found.values())
    assert _checksums(lake, store, {"1", BROWSER}) == before


def test_a_deletion_request_is_recorded_resumes_after_a_failure_and_refuses_a_second_one(
    ml100k_lake, tmp_path: Path, key: bytes
) -> None:
    import fcntl

    import pytest

    from bespoke.privacy.requests import DeletionBusy, Deletions

    source, _ = ml100k_lake
    shutil.copytree(source.path(), tmp_path / "lake")
    lake = Lake(str(tmp_path / "lake"))
    store = SQLiteStore(f"sqlite:///{tmp_path / 'online.db'}", key)
    store.accept_events([_event("5", BROWSER, "50", 1)], "ml-100k")
    subject = resolve("ml-100k", lake=lake, online=store.database(), key=key, user_id="5")
    stores = registry(online=store.database(), lake=lake, vault=None)
    deletions = Deletions(store.database(), key)
    # one of their lake files is damaged: the online store is erased, the lake is not
    (damaged, *_) = lake.files_holding("ml-100k", "5")
    kept = tmp_path / "kept.parquet"
    shutil.copy(damaged, kept)
    Path(damaged).write_bytes(b"not parquet")
    first = deletions.delete(subject, stores, named="user_id:5")
    assert first.status == "partial"
    assert first.results["online"]["verified"] and not first.results["lake"]["verified"]
    assert "error" in first.results["lake"]
    shutil.copy(kept, damaged)  # repaired (e.g. from a backup), the request is finished
    (finished,) = deletions.resume(stores)
    assert (finished.id, finished.status) == (first.id, "done")
    assert all(n == 0 for s in stores for n in s.verify(subject).values())
    # the identifiers waited outside the store, and are gone once done
    assert not list((tmp_path / "online.db.privacy").glob("*"))
    with store.database().read() as con:
        (row,) = con.execute("SELECT target, pseudonyms FROM privacy_requests").fetchall()
    assert "5" not in json.loads(row[1]) and BROWSER not in row[1]
    # while one deletion holds the lock, another is refused and changes nothing
    lock = (tmp_path / "online.db.privacy.lock").open("w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        with pytest.raises(DeletionBusy, match="another deletion is running"):
            deletions.delete(subject, stores, named="user_id:5")
    finally:
        lock.close()
    assert len(deletions.list()) == 1


def test_the_privacy_commands_export_delete_verify_and_refuse_bad_input(
    ml100k_lake, isolated_settings: Path, monkeypatch
) -> None:
    from typer.testing import CliRunner

    from bespoke.cli import app
    from bespoke.serving.store import open_store
    from bespoke.settings import get_settings

    source, _ = ml100k_lake
    shutil.copytree(source.path(), isolated_settings / "lake")
    monkeypatch.setenv("BESPOKE_HMAC_KEY", "k" * 32)
    get_settings.cache_clear()
    open_store(get_settings()).accept_events(
        [_event(None, BROWSER, "50", 1), _event("9", BROWSER, "181", 2)], "ml-100k"
    )
    runner = CliRunner()

    def run(*args: str) -> tuple[int, str]:
        result = runner.invoke(app, ["privacy", *args])
        return result.exit_code, result.output

    out = isolated_settings / "export.json"
    code, text = run("export", "--anonymous-id", BROWSER, "--out", str(out))
    assert code == 0, text
    exported = json.loads(out.read_text())
    assert exported["subject"]["user_ids"] == ["9"]  # the browser's login found the user
    assert len(exported["stores"]["lake"]["events"]) == 22  # user 9's ML-100K ratings
    code, text = run("verify", "--user-id", "9")
    assert code == 2 and "traces of" in text
    code, text = run("delete", "--user-id", "9")
    assert code == 0 and ": done" in text, text
    code, text = run("verify", "--user-id", "9")
    assert code == 0 and "0 traces" in text
    code, text = run("requests")
    assert (
        code == 0 and ": done" in text and "lake: 23 removed, 0 traces" in text
    )  # 22 events, 1 user
    for args, message in [
        (("delete", "--user-id", "9"), "no data is held about this person"),
        (("delete",), "name the person by exactly one of"),
        (("verify", "--user-id", "1", "--email", "a@b.c"), "exactly one of"),
        (("export", "--user-id", "9", "--out", str(out)), "no data is held"),
    ]:
        code, text = run(*args)
        assert code == 1 and message in text, text
    # a batch: one request, every store rewritten once for all of them
    listed = isolated_settings / "erase.txt"
    listed.write_text(
        "# erasure requests of the week\n10\nuser_id:11\n\nanonymous_id:nobody-seen-1\n"
    )
    code, text = run("delete", "--file", str(listed))
    assert code == 0 and ": done" in text and "lake: 367 removed" in text, (
        text
    )  # 184 + 181 ratings, 2 users
    for user in ("10", "11"):
        assert run("verify", "--user-id", user)[0] == 0
    listed.write_text("10\nphone:555\n")
    code, text = run("delete", "--file", str(listed))
    assert code == 1 and "erase.txt, line 2" in text, text


def test_a_deletion_killed_mid_run_resumes_to_zero_traces_and_loses_nobody_else(
    ml100k_lake, isolated_settings: Path, monkeypatch
) -> None:
    """``kill -9`` of a real ``bespoke privacy delete`` process as soon as its request is
    running; ``bespoke privacy resume`` then finishes it: 0 traces of the person, everyone
    else's rows as they were, the lake healthy."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from typer.testing import CliRunner

    from bespoke.cli import app
    from bespoke.serving.store import open_store
    from bespoke.settings import get_settings

    source, _ = ml100k_lake
    shutil.copytree(source.path(), isolated_settings / "lake")
    monkeypatch.setenv("BESPOKE_HMAC_KEY", "k" * 32)
    get_settings.cache_clear()
    settings = get_settings()
    store = open_store(settings)
    store.accept_events([_event(None, BROWSER, "50", 1), _event("13", BROWSER, "181", 2),
                         _event("14", None, "181", 2)], "ml-100k")  # fmt: skip
    lake = Lake(settings.lake_url)
    gone = {"13", BROWSER}
    before = _checksums(lake, store, gone)
    command = [
        str(Path(sys.executable).with_name("bespoke")),
        "privacy",
        "delete",
        "--user-id",
        "13",
    ]
    process = subprocess.Popen(command, env=os.environ.copy(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    status = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with store.database().read() as con:
                row = con.execute("SELECT status FROM privacy_requests").fetchone()
        except Exception:  # the table is not there yet
            row = None
        if row is not None and row[0] == "running":
            os.kill(process.pid, signal.SIGKILL)
            status = "running"
            break
        time.sleep(0.005)
    process.wait(timeout=30)
    assert status == "running" and process.returncode == -signal.SIGKILL
    with store.database().read() as con:
        assert con.execute("SELECT status FROM privacy_requests").fetchone()[0] == "running"

    result = CliRunner().invoke(app, ["privacy", "resume"])
    assert result.exit_code == 0 and ": done" in result.output, result.output
    result = CliRunner().invoke(app, ["privacy", "verify", "--user-id", "14"])
    assert result.exit_code == 2  # someone else is still there
    assert _checksums(lake, store, gone) == before
    assert lake.check().healthy
    assert not store.profile("13", "ml-100k").known and store.profile("14", "ml-100k").known
    from bespoke.privacy.installation import Installation
    from bespoke.privacy.subjects import Subject

    place = Installation.from_settings(settings)
    subject = Subject("ml-100k", frozenset({"13"}), frozenset({BROWSER}))
    traces = place.traces(subject)
    assert all(n == 0 for found in traces.values() for n in found.values()), traces
