"""Bulk ingestion throughput: MovieLens 100K replicated to ≥ 1M events.

Each copy shifts the user ids, so every copy's events are new to the lake (no dedupe
shortcut). Times the whole run an operator would time: reading and type-checking the
files, pseudonyms, consent gate, rules, imputation, dedupe against the lake and the
Parquet writes. Each repeat runs in a fresh process on an empty lake (no warm caches);
the figure is the median. Target: ≥ 200,000 events/s on 2 cores.

    python bench/ingest.py --out bench/results/ingest.json [--copies 10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from bespoke.features.collect import ingest
from bespoke.features.lake import Lake
from bespoke.features.sources import movielens_100k

TARGET_EVENTS_PER_S = 200_000
USER_ID_STRIDE = 10_000  # above ML-100K's largest user id (943)
KEY = b"bench-key" * 4


def replicate(source: Path, target: Path, copies: int) -> None:
    """Write an ML-100K folder whose u.data and u.user hold ``copies`` shifted copies."""
    target.mkdir(parents=True)
    for name in ("u.item", "u.genre"):
        shutil.copy(source / name, target / name)
    for name, sep in (("u.data", "\t"), ("u.user", "|")):
        frame = pd.read_csv(source / name, sep=sep, header=None, dtype=str)
        parts = []
        for copy in range(copies):
            part = frame.copy()
            part[0] = (part[0].astype(int) + copy * USER_ID_STRIDE).astype(str)
            parts.append(part)
        pd.concat(parts).to_csv(target / name, sep=sep, header=False, index=False)


def run_once(folder: Path, lake_dir: Path) -> dict:
    """One timed ingestion into an empty lake, then a no-op re-ingestion (in this process)."""
    lake = Lake(str(lake_dir))
    start = time.perf_counter()
    batch = movielens_100k(folder, dataset="bench")
    read_s = time.perf_counter() - start
    result = ingest(batch, lake, KEY)
    total_s = time.perf_counter() - start
    events = result.manifest["events"]
    assert events["stored"] == events["read"], events
    start = time.perf_counter()
    again = ingest(movielens_100k(folder, dataset="bench"), lake, KEY)
    reingest_s = time.perf_counter() - start
    assert again.manifest["events"]["stored"] == 0
    return {
        "rows": events["read"],
        "seconds": total_s,
        "read_and_typecheck_s": read_s,
        "reingest_noop_s": reingest_s,
        "lake_mb": sum(p.stat().st_size for p in lake_dir.rglob("*") if p.is_file()) / 2**20,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run(datasets_dir: Path, copies: int, repeats: int) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "ml-100k-x"
        replicate(datasets_dir / "ml-100k", folder, copies)
        runs = []
        for repeat in range(repeats):
            # A fresh interpreter per repeat: nothing is warm that a first run lacks.
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
                runs.append(
                    pool.submit(run_once, folder, Path(scratch) / f"lake-{repeat}").result()
                )
    rates = [r["rows"] / r["seconds"] for r in runs]
    median = statistics.median(rates)
    return {
        "rows": runs[0]["rows"],
        "events_per_s": round(median),
        "events_per_s_min": round(min(rates)),
        "events_per_s_max": round(max(rates)),
        "repeats": repeats,
        "seconds_median": round(statistics.median(r["seconds"] for r in runs), 3),
        "read_and_typecheck_s": round(
            statistics.median(r["read_and_typecheck_s"] for r in runs), 3
        ),
        "reingest_noop_s": round(statistics.median(r["reingest_noop_s"] for r in runs), 3),
        "lake_mb": round(runs[0]["lake_mb"], 1),
        "peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs)),
        "target_events_per_s": TARGET_EVENTS_PER_S,
        "meets_target": median >= TARGET_EVENTS_PER_S,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON result file")
    parser.add_argument("--copies", type=int, default=10, help="copies of ML-100K (10 → 1M events)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="fresh-process runs; the median counts"
    )
    parser.add_argument(
        "--datasets-dir",
        type=Path,
        default=os.environ.get("BESPOKE_DATASETS_DIR"),
        help="folder holding ml-100k/ (default: BESPOKE_DATASETS_DIR)",
    )
    args = parser.parse_args()
    if args.datasets_dir is None:
        parser.error("set BESPOKE_DATASETS_DIR or pass --datasets-dir")
    result = run(Path(args.datasets_dir), args.copies, args.repeats)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    table = Table(title=f"Bulk ingestion, ML-100K × {args.copies}", header_style="bold")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name, value in result.items():
        shown = (
            f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)
        )
        table.add_row(name, shown)
    Console().print(table)
    Console().print(f"written to {args.out}")


if __name__ == "__main__":
    main()
