"""Bulk ingestion throughput: MovieLens 100K replicated to ≥ 1M events.

Each copy shifts the user ids, so every copy's events are new to the lake (no dedupe
shortcut). Times the whole run an operator would time: reading and type-checking the
files, pseudonyms, consent gate, rules, imputation, dedupe against the lake and the
Parquet writes. Target: ≥ 200,000 events/s on 2 cores.

    python bench/ingest.py --out bench/results/ingest.json [--copies 10]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from bespoke.features.collect import ingest
from bespoke.features.lake import Lake
from bespoke.features.sources import movielens_100k

TARGET_EVENTS_PER_S = 200_000
USER_ID_STRIDE = 10_000  # above ML-100K's largest user id (943)


def replicate(source: Path, target: Path, copies: int) -> None:
    """Write an ML-100K folder whose u.data and u.user hold ``copies`` shifted copies."""
    target.mkdir(parents=True)
    for name in ("u.item", "u.genre"):
        shutil.copy(source / name, target / name)
    for name, sep, user_column in (("u.data", "\t", 0), ("u.user", "|", 0)):
        frame = pd.read_csv(source / name, sep=sep, header=None, dtype=str)
        parts = []
        for copy in range(copies):
            part = frame.copy()
            part[user_column] = (part[user_column].astype(int) + copy * USER_ID_STRIDE).astype(str)
            parts.append(part)
        pd.concat(parts).to_csv(target / name, sep=sep, header=False, index=False)


def run(datasets_dir: Path, copies: int) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "ml-100k-x"
        replicate(datasets_dir / "ml-100k", folder, copies)
        lake = Lake(str(Path(scratch) / "lake"))
        start = time.perf_counter()
        batch = movielens_100k(folder, dataset="bench")
        read_s = time.perf_counter() - start
        result = ingest(batch, lake, b"bench-key" * 4)
        total_s = time.perf_counter() - start
        events = result.manifest["events"]
        assert events["stored"] == events["read"], events
        start = time.perf_counter()
        again = ingest(movielens_100k(folder, dataset="bench"), lake, b"bench-key" * 4)
        reingest_s = time.perf_counter() - start
        assert again.manifest["events"]["stored"] == 0
        lake_bytes = sum(
            p.stat().st_size for p in (Path(scratch) / "lake").rglob("*") if p.is_file()
        )
    return {
        "rows": events["read"],
        "events_per_s": round(events["read"] / total_s),
        "seconds": round(total_s, 3),
        "read_and_typecheck_s": round(read_s, 3),
        "reingest_noop_s": round(reingest_s, 3),
        "lake_mb": round(lake_bytes / 2**20, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "target_events_per_s": TARGET_EVENTS_PER_S,
        "meets_target": events["read"] / total_s >= TARGET_EVENTS_PER_S,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON result file")
    parser.add_argument("--copies", type=int, default=10, help="copies of ML-100K (10 → 1M events)")
    parser.add_argument(
        "--datasets-dir",
        type=Path,
        default=os.environ.get("BESPOKE_DATASETS_DIR"),
        help="folder holding ml-100k/ (default: BESPOKE_DATASETS_DIR)",
    )
    args = parser.parse_args()
    if args.datasets_dir is None:
        parser.error("set BESPOKE_DATASETS_DIR or pass --datasets-dir")
    result = run(Path(args.datasets_dir), args.copies)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    table = Table(title=f"Bulk ingestion, ML-100K × {args.copies}", header_style="bold")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name, value in result.items():
        table.add_row(
            name,
            f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value),
        )
    Console().print(table)
    Console().print(f"written to {args.out}")


if __name__ == "__main__":
    main()
