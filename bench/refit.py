"""Refit benchmark: does "select on held-out data, then refit on all data" serve better
than registering the model fitted for selection? A backtest, so that the answer is
measured on data that neither model saw.

For each dataset and protocol the protocol's split is taken once: its training part is
"all the data up to now", its test part "what happens next". Inside the past, training
runs exactly as ``bespoke train`` does (its own split: selection on held-out data);
then both candidates for serving are scored on the future, through the served path:

- ``selected``: the model fitted for selection (the past's own training part; for the
  ranker, the fit stage's ranker over retrievers and item statistics of the whole past,
  the pipeline without a ranker refit);
- ``refit``: the same configuration refit on the whole past (what is registered; for the
  ranker, :func:`bespoke.training.ranking.refit_for_serving`).

Recommenders: the families with their packaged tuned parameters (ms-stratified ones for
both protocols when the temporal ones are missing). Rankers: logistic regression and
LightGBM binary with the tuned ranker parameters, over EASE's 100 candidates.

    python bench/refit.py --datasets ml-100k --out FILE [--protocols temporal,ms-stratified]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from bespoke.features.collect import ingest
from bespoke.features.lake import Lake
from bespoke.features.sources import BUILTIN_SOURCES
from bespoke.settings import Settings
from bespoke.training import ranking
from bespoke.training.data import load_interactions
from bespoke.training.evaluate import evaluate
from bespoke.training.families import family
from bespoke.training.params import PACKAGED, tuned_params, tuned_ranker_params
from bespoke.training.ranker import RankingPipeline
from bespoke.training.split import make_split

SOURCE_OF = {"ml-100k": "movielens-100k", "ml-1m": "movielens-1m"}
FAMILIES = ("ease", "als", "itemknn")
RANKERS = ("logistic", "binary")


def _params(dataset: str, protocol: str, name: str) -> dict:
    return tuned_params(PACKAGED, dataset, protocol, name) or tuned_params(
        PACKAGED, dataset, "ms-stratified", name
    )


def run_one(settings: Settings, lake: Lake, dataset: str, protocol: str) -> dict:
    interactions = load_interactions(lake, dataset)
    outer = make_split(interactions, protocol)  # type: ignore[arg-type]
    past = outer.train
    inner = make_split(past, protocol)  # type: ignore[arg-type]
    row: dict = {"past_interactions": len(past), "future_interactions": len(outer.test)}
    for name in FAMILIES:
        params = _params(dataset, protocol, name)
        selected = family(name)(**params).fit(inner.train)
        refit = family(name)(**params).fit(past)
        row[name] = {
            "selected_ndcg@10": round(float(evaluate(selected, outer)["ndcg@10"]), 4),
            "refit_ndcg@10": round(float(evaluate(refit, outer)["ndcg@10"]), 4),
        }
    retrievers = {name: _params(dataset, protocol, name) for name in ranking.RETRIEVERS}
    data = ranking.prepare(lake, dataset, protocol, retrievers, interactions=past)  # type: ignore[arg-type]
    future = ranking.stage_of(outer)
    tuned = tuned_ranker_params(PACKAGED, dataset, protocol)
    tuned.pop("objective", None)
    for objective in RANKERS:
        start = time.perf_counter()
        result = ranking.train_ranker(
            settings, dataset, protocol=protocol, objective=objective,  # type: ignore[arg-type]
            params={} if objective == "logistic" else tuned, retriever_params=retrievers,
            data=data, register=False,
        )  # fmt: skip
        served = ranking.refit_for_serving(result, data)
        selected = RankingPipeline(
            served.builder, result.pipeline.ranker, served.primary, served.n_candidates
        )
        row[f"ranker_{objective}"] = {
            "retrieval_ndcg@10": round(
                ranking.pipeline_ndcg(served, future, data.users, reranked=False), 4
            ),
            "selected_ndcg@10": round(ranking.pipeline_ndcg(selected, future, data.users), 4),
            "refit_ndcg@10": round(ranking.pipeline_ndcg(served, future, data.users), 4),
            "held_out_ndcg@10": round(float(result.metrics["reranked_ndcg@10"]), 4),
            "labelled_people": int(
                len(data.train.users) + len(data.valid.users) + len(result.test_set.users)
            ),
            "seconds": round(time.perf_counter() - start, 1),
        }
    return row


def run(datasets: list[str], protocols: list[str], datasets_dir: Path) -> dict:
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bespoke-bench-refit-") as scratch:
        root = Path(scratch)
        settings = Settings(
            root=root, home=root / "home", lake_url=str(root / "lake"),
            datasets_dir=datasets_dir, mlflow_tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
            mlflow_artifacts_dir=root / "artifacts",
        )  # fmt: skip
        lake = Lake(settings.lake_url)
        for dataset in datasets:
            adapter, folder = BUILTIN_SOURCES[SOURCE_OF[dataset]]
            ingest(adapter(datasets_dir / folder), lake, b"bench" * 8)
            results[dataset] = {}
            for protocol in protocols:
                Console().print(f"[bold]{dataset}[/], {protocol}: backtest…")
                results[dataset][protocol] = run_one(settings, lake, dataset, protocol)
    return results


def show(results: dict) -> None:
    table = Table(title="Selected vs refit on all data, scored on the next period (nDCG@10)",
                  header_style="bold")  # fmt: skip
    for column in ("dataset", "protocol", "model", "retrieval", "selected", "refit", "change"):
        table.add_column(column, justify="left" if column in ("dataset", "protocol", "model")
                         else "right")  # fmt: skip
    for dataset, by_protocol in results.items():
        for protocol, row in by_protocol.items():
            for model, figures in row.items():
                if not isinstance(figures, dict):
                    continue
                selected, refit = figures["selected_ndcg@10"], figures["refit_ndcg@10"]
                change = refit / selected - 1 if selected else float("nan")
                retrieval = figures.get("retrieval_ndcg@10")
                table.add_row(
                    dataset, protocol, model, "" if retrieval is None else f"{retrieval:.4f}",
                    f"{selected:.4f}", f"{refit:.4f}",
                    f"[{'green' if change > 0 else 'red'}]{change:+.1%}[/]",
                )  # fmt: skip
    Console().print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="ml-100k")
    parser.add_argument("--protocols", default="temporal,ms-stratified")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--datasets-dir",
        type=Path,
        default=Path(os.environ.get("BESPOKE_DATASETS_DIR", "../shared/data")),
    )
    args = parser.parse_args()
    np.seterr(all="ignore")
    results = run(args.datasets.split(","), args.protocols.split(","), args.datasets_dir)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    show(results)


if __name__ == "__main__":
    main()
