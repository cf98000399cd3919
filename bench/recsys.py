"""Recommender benchmark beside Microsoft Recommenders' published rows.

Every family with the parameters a tuning run wrote to the packaged ``tuned_params.json`` (its
defaults when there are none), trained on the protocol's training part and evaluated on
its test part with the one metric definition (``bespoke.training.metrics``).

    python bench/recsys.py --datasets ml-100k,ml-1m --protocol ms-stratified --out FILE
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bespoke.features.collect import ingest
from bespoke.features.lake import Lake
from bespoke.features.sources import BUILTIN_SOURCES
from bespoke.training.data import load_interactions, load_item_text
from bespoke.training.evaluate import compare
from bespoke.training.families import FAMILIES
from bespoke.training.params import PACKAGED as TUNED
from bespoke.training.params import model_for
from bespoke.training.split import make_split

SOURCE_OF = {"ml-100k": "movielens-100k", "ml-1m": "movielens-1m"}
#: Microsoft Recommenders' published rows (../shared/data/README.md): nDCG@10, P@10, R@10, MAP.
PUBLISHED = {
    "ml-100k": {
        "BiVAE": (0.475, 0.412, 0.219, 0.146),
        "BPR": (0.442, 0.388, 0.213, 0.132),
        "LightGCN": (0.420, None, None, None),
        "NCF": (0.396, None, None, None),
        "SAR": (0.382, None, None, None),
    },
    "ml-1m": {
        "BiVAE": (0.438, 0.399, 0.150, 0.0946),
        "LightGCN": (0.424, None, None, None),
        "BPR": (0.391, None, None, None),
        "NCF": (0.358, None, None, None),
        "SAR": (0.314, None, None, None),
    },
}
METRICS = ("ndcg@10", "precision@10", "recall@10", "map")


def run(datasets: list[str], protocol: str, datasets_dir: Path, models: list[str]) -> dict:
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as scratch:
        lake = Lake(str(Path(scratch) / "lake"))
        for dataset in datasets:
            adapter, folder = BUILTIN_SOURCES[SOURCE_OF[dataset]]
            ingest(adapter(datasets_dir / folder), lake, b"bench" * 8)
            split = make_split(load_interactions(lake, dataset), protocol)  # type: ignore[arg-type]
            item_text = load_item_text(lake, dataset)
            candidates = {name: model_for(TUNED, dataset, protocol, name) for name in models}
            table = compare(candidates, split, item_text=item_text)
            results[dataset] = {
                row["model"]: {"skipped": row["skipped"]}
                if isinstance(row.get("skipped"), str)
                else {
                    **{m: round(float(row[m]), 4) for m in (*METRICS, "coverage@10")},
                    "train_s": row["train_s"],
                    "recommend_s": row["recommend_s"],
                }
                for row in table.to_dict("records")
            }
    return results


def show(results: dict, protocol: str) -> None:
    console = Console()
    for dataset, rows in results.items():
        table = Table(title=f"{dataset}, {protocol} (k = 10)", header_style="bold")
        for column in ("model", *METRICS, "train_s"):
            table.add_column(column, justify="left" if column == "model" else "right")
        ranked = sorted(rows.items(), key=lambda kv: -kv[1].get("ndcg@10", -1))
        for name, row in ranked:
            if "skipped" in row:
                table.add_row(f"bespoke {name}", "skipped", "", "", "", "")
                continue
            table.add_row(
                f"bespoke {name}", *(f"{row[m]:.4f}" for m in METRICS), f"{row['train_s']:.2f}"
            )
        if protocol == "ms-stratified":
            for name, values in PUBLISHED.get(dataset, {}).items():
                table.add_row(
                    f"[dim]published {name}[/]",
                    *(f"[dim]{v:.4f}[/]" if v is not None else "" for v in values),
                    "",
                )
        console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="ml-100k,ml-1m")
    parser.add_argument(
        "--protocol", default="ms-stratified", choices=["ms-stratified", "temporal"]
    )
    parser.add_argument("--models", default=",".join(FAMILIES), help="families, comma-separated")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--datasets-dir", type=Path, default=os.environ.get("BESPOKE_DATASETS_DIR"))
    args = parser.parse_args()
    if args.datasets_dir is None:
        parser.error("set BESPOKE_DATASETS_DIR or pass --datasets-dir")
    results = run(
        args.datasets.split(","), args.protocol, Path(args.datasets_dir), args.models.split(",")
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    show(results, args.protocol)
    Console().print(f"written to {args.out}")


if __name__ == "__main__":
    main()
