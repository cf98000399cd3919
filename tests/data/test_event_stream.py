"""The event stream on a real ``redis-server`` (Debian's package, installed by
scripts/test-system-packages; skipped with the reason where it is missing): 3,000 real
ML-100K ratings appended; a ``bespoke stream consume`` worker killed with ``kill -9`` after
a batch is applied but before it is acknowledged; another worker takes the batch back and
finishes: every event is in the online store and the lake exactly once."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from bespoke.features.lake import Lake
from bespoke.features.schema import EventIn
from bespoke.serving.store import open_store
from bespoke.settings import get_settings
from bespoke.stream.events import RedisEventStream, consume, start_redis

TOTAL, BATCH = 3000, 200


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed: `make test` installs Debian's redis-server "
                    "where it runs as root with apt-get (scripts/test-system-packages)")  # fmt: skip
    server, url = start_redis(tmp_path / "redis")
    try:
        yield url
    finally:
        server.kill()
        server.wait()


def _ratings(datasets_dir: Path) -> list[EventIn]:
    frame = pd.read_csv(datasets_dir / "ml-100k" / "u.data", sep="\t",
                        names=["user", "item", "rating", "ts"]).head(TOTAL)  # fmt: skip
    return [
        EventIn.model_validate(
            {
                "user_id": str(r.user),
                "item_id": str(r.item),
                "event_type": "rate",
                "value": float(r.rating),
                "consent": ["personalization"],
                "timestamp": pd.Timestamp(r.ts, unit="s", tz="UTC").isoformat(),
            }
        )
        for r in frame.itertuples()
    ]


def _inbox(settings) -> tuple[int, int]:
    with open_store(settings).database().read() as con:
        return con.execute(
            "SELECT count(*), count(DISTINCT source_event_id) FROM inbox WHERE dataset = 'ml-100k'"
        ).fetchone()


def test_a_worker_killed_mid_batch_loses_nothing_and_duplicates_nothing(
    datasets_dir: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BESPOKE_EVENT_STREAM_URL", redis_url)
    get_settings.cache_clear()
    settings = get_settings()
    stream = RedisEventStream(redis_url)
    ids = stream.append("ml-100k", _ratings(datasets_dir))
    assert len(ids) == TOTAL == stream.length()

    worker = subprocess.Popen(
        [str(Path(sys.executable).with_name("bespoke")), "stream", "consume", "--name", "w1",
         "--batch", str(BATCH), "--flush-every", "20"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    try:
        # kill it once batches are applied to the store, before they are written to the
        # lake and acknowledged (that happens every 20 s, or when the stream runs dry)
        while True:
            stored, _ = _inbox(settings)
            if 2 * BATCH <= stored < TOTAL:
                os.killpg(worker.pid, signal.SIGKILL)
                break
            assert worker.poll() is None, worker.stdout.read().decode()
            assert time.monotonic() < deadline, "the worker applied nothing"
            time.sleep(0.002)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
    stream.ensure_group()
    assert stream.pending() > 0  # it read a batch and never acknowledged it
    killed_at, _ = _inbox(settings)
    assert killed_at < TOTAL

    # another worker takes back the dead one's batch (idle for a moment) and finishes
    report = consume(stream, open_store(settings), Lake(settings.lake_url or ""),
                     consumer="w2", batch=BATCH, until_empty=True, claim_idle_ms=200,
                     flush_every_s=0.1)  # fmt: skip
    assert report.reclaimed > 0 and report.duplicates > 0  # the taken-back batches, applied once
    assert report.applied == TOTAL - killed_at
    assert _inbox(settings) == (TOTAL, TOTAL)
    assert stream.pending() == 0
    lake = Lake(settings.lake_url or "")
    rows, distinct = lake.connect().execute(
        "SELECT count(*), count(DISTINCT (user_id, item_id, timestamp)) FROM events "
        "WHERE dataset = 'ml-100k'").fetchone()  # fmt: skip
    assert rows == distinct == TOTAL
    # the CLI says how the stream stands
    status = subprocess.run([str(Path(sys.executable).with_name("bespoke")), "stream", "status"],
                            capture_output=True, text=True, check=True)  # fmt: skip
    assert f"{TOTAL} entries; 0 pending" in status.stdout


def test_the_service_appends_to_the_stream_and_a_worker_applies_it(
    prepared_service_home, redis_url: str, tmp_path: Path
) -> None:
    import httpx

    from bespoke.serving.local import local_settings, start_local_service, stop_local_service

    prepared, key = prepared_service_home
    home = tmp_path / "home"
    shutil.copytree(prepared, home, ignore=shutil.ignore_patterns("service.log"))
    url, process = start_local_service(home, env={"BESPOKE_EVENT_STREAM_URL": redis_url})
    try:

        def post(path: str, body: dict) -> httpx.Response:
            return httpx.post(f"{url}{path}", json=body, headers={"X-API-Key": key}, timeout=30)

        event = {"user_id": "streamed", "event_type": "click", "consent": ["personalization"],
                 "timestamp": "2026-12-01T10:00:00Z"}  # fmt: skip
        answer = post("/v1/events", {"events": [
            {**event, "item_id": "50"}, {**event, "item_id": "181"},
            {**event, "item_id": "1", "consent": []},  # no consent: refused at the door
        ]})  # fmt: skip
        assert answer.status_code == 200, answer.text
        assert (answer.json()["accepted"], answer.json()["rejected"]) == (2, 1)
        assert answer.json()["errors"][0]["index"] == 2
        stream = RedisEventStream(redis_url)
        assert stream.length() == 2  # durable in the stream, not applied yet
        assert post("/v1/profiles", {"user_id": "streamed"}).status_code == 404
        env = {**os.environ, **local_settings(home).as_environment(),
               "BESPOKE_EVENT_STREAM_URL": redis_url}  # fmt: skip
        done = subprocess.run([str(Path(sys.executable).with_name("bespoke")), "stream",
                               "consume", "--until-empty"], env=env, capture_output=True,
                              text=True, check=False)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "2 events applied" in done.stdout
        profile = post("/v1/profiles", {"user_id": "streamed"}).json()
        assert {e["item_id"] for e in profile["recent"]} == {"50", "181"}
    finally:
        stop_local_service(process)
