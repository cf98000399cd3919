"""Online store benchmark: the write-ahead log under sustained writes and reads.

A writer process stores live events through ``SQLiteStore.accept_events`` (batches of
``--batch`` ML-100K ratings, as ``/v1/events`` does) while ``--readers`` processes read
profiles through ``SQLiteStore.snapshot`` (the service's hot path) without pause, for
``--seconds`` per case. The WAL file's size is sampled every 20 ms. Two cases on the same
load: ``bounded`` (the store as shipped: a TRUNCATE checkpoint after a commit that leaves
the log above ``WAL_LIMIT_BYTES``) and ``sqlite_alone`` (SQLite's own checkpoints only,
what the store did before), so the table shows what the bound costs and saves.

    python bench/online_store.py --out FILE [--seconds 20] [--readers 2] [--batch 100]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table

from bespoke.features.schema import EventIn
from bespoke.serving.db import WAL_LIMIT_BYTES
from bespoke.serving.store import SQLiteStore
from bespoke.settings import Settings

KEY = bytes(range(32))
DATASET = "bench"


def _events(datasets_dir: Path) -> list[dict[str, Any]]:
    ratings = pd.read_csv(
        datasets_dir / "ml-100k" / "u.data", sep="\t", names=["user", "item", "rating", "ts"]
    )
    return [
        {"user_id": str(u), "event_type": "rate", "item_id": str(i), "value": float(r),
         "timestamp": datetime.fromtimestamp(int(t), UTC), "consent": ["personalization"]}
        for u, i, r, t in ratings.itertuples(index=False)
    ]  # fmt: skip


def _open(url: str, bounded: bool) -> SQLiteStore:
    store = SQLiteStore(url, KEY)
    if not bounded:
        store.db.wal_limit_bytes = None
    return store


def _writer(url: str, bounded: bool, rows: list[dict], batch: int, until: float, out: Any) -> None:
    store = _open(url, bounded)
    models = [EventIn.model_validate(row) for row in rows]
    written, position = 0, 0
    while time.time() < until:
        chunk = models[position : position + batch]
        position = (position + batch) % (len(models) - batch)
        written += store.accept_events(chunk, DATASET).accepted
    out.put(("written", written))


def _reader(url: str, bounded: bool, users: list[str], until: float, out: Any) -> None:
    store = _open(url, bounded)
    reads = 0
    while time.time() < until:
        store.snapshot(users[reads % len(users)], DATASET)
        reads += 1
    out.put(("reads", reads))


def run_case(
    bounded: bool, rows: list[dict], seconds: float, readers: int, batch: int
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-online-") as folder:
        url = f"sqlite:///{folder}/online.db"
        store = _open(url, bounded)
        store.accept_events([EventIn.model_validate(rows[0])], DATASET)  # schema in place
        wal = Path(folder) / "online.db-wal"
        users = sorted({row["user_id"] for row in rows})
        until = time.time() + seconds
        out: Any = mp.get_context("spawn").Queue()
        context = mp.get_context("spawn")
        workers = [context.Process(target=_writer, args=(url, bounded, rows, batch, until, out))]
        workers += [
            context.Process(target=_reader, args=(url, bounded, users, until, out))
            for _ in range(readers)
        ]
        for worker in workers:
            worker.start()
        peak, samples = 0, 0
        while any(worker.is_alive() for worker in workers):
            peak = max(peak, wal.stat().st_size if wal.exists() else 0)
            samples += 1
            time.sleep(0.02)
        totals: dict[str, int] = {"written": 0, "reads": 0}
        for _ in workers:
            kind, count = out.get(timeout=60)
            totals[kind] += count
        for worker in workers:
            worker.join()
        return {
            "wal_max_bytes": peak,
            "wal_final_bytes": wal.stat().st_size if wal.exists() else 0,
            "db_bytes": (Path(folder) / "online.db").stat().st_size,
            "events_written": totals["written"],
            "events_per_s": round(totals["written"] / seconds, 1),
            "reads": totals["reads"],
            "reads_per_s": round(totals["reads"] / seconds, 1),
            "wal_samples": samples,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--readers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--datasets-dir", type=Path, default=None)
    args = parser.parse_args()
    datasets_dir = args.datasets_dir or Settings().dataset_path(".")
    rows = _events(datasets_dir)
    cases = {
        name: run_case(bounded, rows, args.seconds, args.readers, args.batch)
        for name, bounded in (("bounded", True), ("sqlite_alone", False))
    }
    result = {
        "wal_limit_bytes": WAL_LIMIT_BYTES,
        "seconds": args.seconds,
        "readers": args.readers,
        "batch": args.batch,
        "cases": cases,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    table = Table("case", "WAL max MB", "WAL final MB", "DB MB", "events/s", "reads/s",
                  title=f"Online store, {args.seconds:g} s of writes and {args.readers} readers")  # fmt: skip
    for name, case in cases.items():
        table.add_row(
            name,
            f"{case['wal_max_bytes'] / 1e6:.1f}",
            f"{case['wal_final_bytes'] / 1e6:.1f}",
            f"{case['db_bytes'] / 1e6:.1f}",
            f"{case['events_per_s']:,.0f}",
            f"{case['reads_per_s']:,.0f}",
        )
    Console().print(table)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
