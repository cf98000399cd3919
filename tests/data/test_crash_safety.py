"""kill -9 of a real lake writer: `bespoke ingest movielens-100k` and `bespoke events flush`
are killed with SIGKILL the moment their first file appears in the lake, three times
each; the lake must stay readable, show nothing of the killed runs, and the run that
finally completes must store every event exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from bespoke.features.collect import IngestResult
from bespoke.features.lake import TMP_SUFFIX, Lake
from bespoke.features.schema import EventIn
from bespoke.serving.store import MAX_BATCH, open_store
from bespoke.settings import Settings, get_settings

KILLS = 3
#: Live events put in the inbox for the flush test (ML-100K ratings: many days, many files).
INBOX_EVENTS = 20_000


def _bespoke(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("bespoke")), *args]


def _files(root: Path) -> set[Path]:
    return (
        {p for p in root.rglob("*") if p.is_file() and p.name != ".lock"}
        if root.exists()
        else set()
    )


def _kill_at_first_file(command: list[str], lake: Path, env: dict[str, str]) -> list[Path]:
    """Run ``command`` and SIGKILL it as soon as a file it writes appears under ``lake``;
    returns the files it left."""
    before = _files(lake)
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            if new := _files(lake) - before:
                os.kill(process.pid, signal.SIGKILL)
                break
            if process.poll() is not None:
                pytest.fail(f"{command} ended before writing: {process.stderr.read().decode()}")
            time.sleep(0.001)
        else:
            pytest.fail(f"{command} wrote nothing in 300 s")
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL
    return sorted(_files(lake) - before) or sorted(new)


def _environment(settings: Settings) -> dict[str, str]:
    return {**os.environ, **settings.as_environment()}


def _visible(lake: Lake) -> tuple[int, int, int]:
    """Events, distinct event ids and runs the readers see (the lake must open)."""
    con = lake.connect()
    events, distinct = con.execute(
        "SELECT count(*), count(DISTINCT event_id) FROM events"
    ).fetchone()
    return events, distinct, con.execute("SELECT count(*) FROM ingest_runs").fetchone()[0]


def _killed_at_first_file(
    command: list[str], settings: Settings, check: Callable[[], None] = lambda: None
) -> tuple[Lake, dict[str, str]]:
    """Run ``command`` KILLS times, each killed at its first file; after each kill, only
    temporary files were left, the lake opens and shows none of it, the leftovers are
    found, and ``check`` holds. Returns the lake and the command's environment."""
    lake = Lake(str(settings.lake_url))
    env = _environment(settings)
    for attempt in range(KILLS):
        left = _kill_at_first_file(command, Path(lake.url), env)
        assert any(p.name.endswith(TMP_SUFFIX) for p in left), (attempt, left)
        assert all(p.name.endswith(TMP_SUFFIX) or p.name == ".lock" for p in left), left
        assert _visible(lake) == (0, 0, 0), f"kill {attempt + 1} left rows visible"
        assert not lake.check().healthy
        check()
    return lake, env


def test_a_killed_ingest_leaves_nothing_visible_and_the_rerun_stores_each_event_once(
    ml100k_lake: tuple[Lake, IngestResult],
) -> None:
    reference = ml100k_lake[1].manifest
    settings = get_settings()
    command = _bespoke("ingest", "movielens-100k")
    lake, env = _killed_at_first_file(command, settings)  # the leftovers are found ...
    lake_dir = Path(lake.url)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    stored = reference["events"]["stored"]
    assert _visible(lake) == (stored, stored, 1)  # ... and settled by the run that completes
    con = lake.connect()
    for table in ("users", "items"):
        count = con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        assert count == reference[table]["stored"], table
    assert not list(lake_dir.rglob(f"*{TMP_SUFFIX}"))
    doctor = subprocess.run(_bespoke("data", "doctor"), env=env, capture_output=True, text=True)
    assert doctor.returncode == 0 and "healthy" in doctor.stdout, doctor.stdout + doctor.stderr
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert _visible(lake) == (stored, stored, 2)  # the same source again adds nothing


def _fill_inbox(settings: Settings, datasets_dir: Path) -> int:
    ratings = pd.read_csv(
        datasets_dir / "ml-100k" / "u.data", sep="\t", names=["user", "item", "rating", "ts"]
    ).head(INBOX_EVENTS)
    events = [
        EventIn(
            user_id=str(user),
            event_type="rate",
            item_id=str(item),
            value=float(rating),
            timestamp=pd.Timestamp(ts, unit="s", tz="UTC").to_pydatetime(),
            consent=["personalization"],
        )
        for user, item, rating, ts in ratings.itertuples(index=False)
    ]
    store = open_store(settings)
    accepted = 0
    for start in range(0, len(events), MAX_BATCH):
        accepted += store.accept_events(events[start : start + MAX_BATCH], "live").accepted
    return accepted


def test_a_killed_flush_loses_nothing_and_the_rerun_stores_each_event_once(
    datasets_dir: Path,
) -> None:
    settings = get_settings()
    accepted = _fill_inbox(settings, datasets_dir)
    assert accepted == INBOX_EVENTS

    def inbox_intact() -> None:
        assert open_store(settings).pending() == INBOX_EVENTS

    command = _bespoke("events", "flush")
    lake, env = _killed_at_first_file(command, settings, inbox_intact)
    lake_dir = Path(lake.url)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"{INBOX_EVENTS} flushed → {INBOX_EVENTS} stored" in done.stdout, done.stdout
    assert _visible(lake) == (INBOX_EVENTS, INBOX_EVENTS, 1)
    assert open_store(settings).pending() == 0
    assert not list(lake_dir.rglob(f"*{TMP_SUFFIX}"))
