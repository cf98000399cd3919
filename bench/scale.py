"""Scale-out benchmark (so far: the event stream). Events per second through a real
``redis-server`` stream into the online store and the lake, with 1 and with 2
``bespoke stream consume`` worker processes in one consumer group, on ML-100K's ratings.

- ``stream_events_per_s``: ``{"1": …, "2": …}``, from the first event appended to the last
  one applied and written to the lake (the backlog is appended first, then the workers
  start: a drain rate);
- ``append_events_per_s``: appending to the stream (what ``/v1/events`` does with a stream).

Still to come (issue 18): the same feature build on DuckDB and Spark, N service replicas
sharing Redis.

    python bench/scale.py --out FILE [--events N] [--datasets-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table

COMMAND = "python bench/scale.py --out FILE"
BATCH = 500


def _events(datasets_dir: Path, n: int) -> list[Any]:
    from bespoke.features.schema import EventIn

    frame = pd.read_csv(datasets_dir / "ml-100k" / "u.data", sep="\t",
                        names=["user", "item", "rating", "ts"]).head(n)  # fmt: skip
    return [EventIn.model_validate({
        "user_id": str(r.user), "item_id": str(r.item), "event_type": "rate",
        "value": float(r.rating), "consent": ["personalization"],
        "timestamp": pd.Timestamp(r.ts, unit="s", tz="UTC").isoformat(),
        "source_event_id": f"ml-100k-{i}"}) for i, r in enumerate(frame.itertuples())]  # fmt: skip


def drain(datasets_dir: Path, workers: int, n: int, scratch: Path) -> dict[str, float]:
    from bespoke.serving.db import Database, sqlite_path
    from bespoke.serving.local import local_settings
    from bespoke.stream.events import RedisEventStream, start_redis

    home = scratch / f"home-{workers}"
    server, url = start_redis(scratch / f"redis-{workers}")
    try:
        stream = RedisEventStream(url)
        events = _events(datasets_dir, n)
        started = time.perf_counter()
        for at in range(0, len(events), 1000):
            stream.append("ml-100k", events[at : at + 1000])
        appended = time.perf_counter() - started
        env = {**os.environ, **local_settings(home).as_environment(),
               "BESPOKE_EVENT_STREAM_URL": url, "BESPOKE_SERVING_DATASET": "ml-100k"}  # fmt: skip
        bespoke = str(Path(sys.executable).with_name("bespoke"))
        begin = time.perf_counter()
        procs = [
            subprocess.Popen(
                [
                    bespoke,
                    "stream",
                    "consume",
                    "--name",
                    f"w{i}",
                    "--batch",
                    str(BATCH),
                    "--until-empty",
                ],
                env=env,
                stdout=subprocess.DEVNULL,
            )
            for i in range(workers)
        ]
        for proc in procs:
            proc.wait()
        drained = time.perf_counter() - begin
        database = Database(sqlite_path(local_settings(home).online_store_url or ""))
        with database.read() as con:
            (stored,) = con.execute("SELECT count(DISTINCT source_event_id) FROM inbox").fetchone()
        assert stored == n, (stored, n)
    finally:
        server.kill()
        server.wait()
    return {"drain_s": round(drained, 2), "events_per_s": round(n / drained),
            "append_events_per_s": round(n / appended)}  # fmt: skip


def run(datasets_dir: Path, n: int, console: Console) -> dict[str, Any]:
    figures: dict[str, Any] = {"events": n, "batch": BATCH}
    with tempfile.TemporaryDirectory(prefix="bespoke-bench-scale-") as scratch:
        results = {}
        for workers in (1, 2):
            console.print(f"stream: {n} events, {workers} worker(s)…")
            results[str(workers)] = drain(datasets_dir, workers, n, Path(scratch))
    figures["stream_events_per_s"] = {k: v["events_per_s"] for k, v in results.items()}
    figures["stream_drain_s"] = {k: v["drain_s"] for k, v in results.items()}
    figures["append_events_per_s"] = results["1"]["append_events_per_s"]
    return figures


def show(figures: dict[str, Any], console: Console) -> None:
    table = Table(title=f"Event stream: {figures['events']} ML-100K ratings through redis-server",
                  header_style="bold")  # fmt: skip
    for column in ("figure", "1 worker", "2 workers"):
        table.add_column(column)
    rate, took = figures["stream_events_per_s"], figures["stream_drain_s"]
    table.add_row("events/s (applied + in the lake)", str(rate["1"]), str(rate["2"]))
    table.add_row("drain time (s)", str(took["1"]), str(took["2"]))
    table.add_row("append events/s", str(figures["append_events_per_s"]), "")
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--datasets-dir", type=Path, default=os.environ.get("BESPOKE_DATASETS_DIR"))
    args = parser.parse_args()
    if args.datasets_dir is None:
        parser.error("set BESPOKE_DATASETS_DIR or pass --datasets-dir")
    if shutil.which("redis-server") is None:
        parser.error("needs redis-server (scripts/test-system-packages installs it)")
    console = Console()
    start = time.perf_counter()
    figures = run(Path(args.datasets_dir), args.events, console)
    figures["total_seconds"] = round(time.perf_counter() - start, 1)
    figures["command"] = COMMAND
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    show(figures, console)
    console.print(f"{figures['total_seconds']:.0f} s; written to {args.out}")


if __name__ == "__main__":
    main()
