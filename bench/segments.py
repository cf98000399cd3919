"""Segments, churn and lifetime value on CDNOW's classic split (calibration
1997-01-01..09-30, holdout 1997-10-01..1998-06-30), against the buy-till-you-die
baselines, computed the way a user would: CDNOW ingested into a lake (``bespoke ingest
cdnow``), models trained by the product's own training verbs (``bespoke train churn``
and ``bespoke train segments`` as of 1997-09-30), the registered versions scored.

- ``bgnbd_auc``: BG/NBD's expected holdout purchases ranking holdout buyers (published
  set-up; the issue measured 0.763 on the raw file).
- ``churn_auc``: ``bespoke-churn-cdnow`` (calibrated LightGBM, trained leak-free on cuts
  whose 92-day horizons end by 1997-09-30, ``--trials`` Optuna trials), scored at
  1997-09-30: AUC of P(no purchase) against no purchase in the holdout.
- ``clv_mae``: ``bespoke-clv-cdnow``'s holdout spend per customer, MAE; ``bgnbd_gg_mae``:
  BG/NBD expected purchases × Gamma–Gamma expected order value; ``zero_mae``: no spend
  for anyone (MAE rewards medians, and most customers spend nothing: read it beside).
- ``segment_stability_ari``: bootstrap ARI of the chosen k-means; ``value_ratio_best_to_
  worst_segment``: holdout value per person, best segment over worst.
- ``rescore_ms_per_event``: the extra CPU an accepted event costs when it re-scores its
  person (counters, features, segment, churn, value, the change record) in the online
  store, against the same events accepted without re-scoring; one purchase each for
  2,000 customers, after the store was seeded and scored as of 1997-09-30.

The lake's cleaning rules quarantine 80 zero-value purchases and 255 exact duplicates, so
its CDNOW holds 70 fewer customers than the raw file.

    python bench/segments.py --out FILE [--datasets-dir DIR] [--trials N]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table
from sklearn.metrics import roc_auc_score

from bespoke.features import collect, sources
from bespoke.features.lake import Lake
from bespoke.features.schema import EventIn
from bespoke.segments.churn import person_rows, transactions
from bespoke.segments.clv import BetaGeo, GammaGamma, rfm_summary
from bespoke.segments.features import load_person_events, person_features
from bespoke.segments.live import LiveScorer
from bespoke.segments.train import train_churn, train_segments
from bespoke.serving.local import local_settings
from bespoke.serving.store import SQLiteStore
from bespoke.settings import SQLITE_PREFIX, Settings
from bespoke.training.registry import Registry

CALIBRATION_END, HOLDOUT_END, HOLDOUT_DAYS = "1997-09-30", "1998-06-30", 273
TRAINING_CUTS, TRAINING_HORIZON_DAYS = ("1997-04-30", "1997-05-31", "1997-06-30"), 92
GOALS = {
    "churn_auc": (">=", 0.78),
    "segment_stability_ari": (">=", 0.9),
    "value_ratio_best_to_worst_segment": (">=", 5.0),
}
COMMAND = "python bench/segments.py --out FILE"
RESCORED = 2000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument(
        "--datasets-dir", default=os.environ.get("BESPOKE_DATASETS_DIR", "../shared/data")
    )
    parser.add_argument("--trials", type=int, default=10, help="Optuna trials (churn).")
    args = parser.parse_args()
    console = Console()
    figures: dict[str, object] = {"trials": args.trials}
    with tempfile.TemporaryDirectory(prefix="bespoke-bench-segments-") as scratch:
        settings = local_settings(Path(scratch))
        lake = Lake(str(settings.lake_url))
        console.print("ingesting CDNOW into a lake…")
        collect.ingest(sources.cdnow(Path(args.datasets_dir) / "cdnow"), lake,
                       settings.pseudonym_key())  # fmt: skip
        events = load_person_events(lake, "cdnow")
        events["timestamp"] = pd.to_datetime(events["timestamp"], utc=True)

        console.print("BG/NBD and Gamma–Gamma on the calibration period…")
        summary = rfm_summary(transactions(events), CALIBRATION_END, HOLDOUT_END)
        history = (summary["frequency"], summary["recency"], summary["T"])
        bg = BetaGeo().fit(*history)
        expected = bg.expected_purchases(HOLDOUT_DAYS / 7, *history)
        figures["customers"] = len(summary)
        figures["bgnbd_auc"] = roc_auc_score(summary["holdout_frequency"] > 0, expected)
        gg = GammaGamma().fit(summary["frequency"], summary["monetary_value"])
        spend = expected * gg.expected_average_value(
            summary["frequency"], summary["monetary_value"]
        )
        figures["bgnbd_gg_mae"] = float(np.abs(spend - summary["holdout_value"]).mean())
        figures["zero_mae"] = float(summary["holdout_value"].abs().mean())

        console.print(f"bespoke train churn --as-of {CALIBRATION_END} --trials {args.trials}…")
        start = time.perf_counter()
        trained = train_churn(settings, "cdnow", CALIBRATION_END, TRAINING_HORIZON_DAYS,
                              trials=args.trials)  # fmt: skip
        figures["train_churn_seconds"] = time.perf_counter() - start
        figures["gate"] = {"churn": trained.churn.decision, "clv": trained.clv.decision}
        registry = Registry.of(settings)
        churn = registry.load("churn", "cdnow", trained.churn.version).model
        value = registry.load("clv", "cdnow", trained.clv.version).model
        test = person_rows(events, CALIBRATION_END, HOLDOUT_DAYS)
        figures["churn_auc"] = roc_auc_score(test["churned"], churn.predict_proba(test))
        predicted = value.predict(test, HOLDOUT_DAYS)
        figures["clv_mae"] = float(np.abs(predicted - test["horizon_value"]).mean())

        console.print(f"bespoke train segments --as-of {CALIBRATION_END}…")
        segmented = train_segments(settings, "cdnow", CALIBRATION_END)
        segmenter = segmented.model
        segment = segmenter.predict(person_features(events, CALIBRATION_END))
        per_person = summary["holdout_value"].groupby(segment.reindex(summary.index)).mean()
        figures["segment_stability_ari"] = segmenter.stability_
        figures["segments"] = {
            name: {"people": int((segment == name).sum()), "holdout_value_per_person": float(per_person[name]),
                   "description": description}
            for name, description in zip(segmenter.names_, segmenter.descriptions_, strict=True)
        }  # fmt: skip
        figures["value_ratio_best_to_worst_segment"] = float(per_person.max() / per_person.min())

        console.print("re-scoring in the online store…")
        figures.update(_rescoring(settings, lake, summary.index[:RESCORED].tolist()))
    figures["command"] = COMMAND
    figures["goals"] = {key: (figures[key] >= goal) for key, (_, goal) in GOALS.items()} | {
        "clv_mae": figures["clv_mae"] <= 0.95 * figures["bgnbd_gg_mae"],
        "rescore_ms_per_event": figures["rescore_ms_per_event"] <= 1.0,
    }
    Path(args.out).write_text(json.dumps(figures, indent=2, default=float))

    table = Table(title="Segments, churn and lifetime value on CDNOW (holdout 1997-10..1998-06)")
    for column in ("figure", "value", "goal", ""):
        table.add_column(column)
    rows = [
        ("churn_auc", f"{figures['churn_auc']:.4f}", "≥ 0.78"),
        ("bgnbd_auc", f"{figures['bgnbd_auc']:.4f}", "(baseline)"),
        (
            "clv_mae",
            f"${figures['clv_mae']:.2f}",
            f"≤ 0.95 × BG/NBD×GG = ${0.95 * figures['bgnbd_gg_mae']:.2f}",
        ),
        ("bgnbd_gg_mae", f"${figures['bgnbd_gg_mae']:.2f}", "(baseline)"),
        ("zero_mae", f"${figures['zero_mae']:.2f}", "(no spend for anyone)"),
        ("segment_stability_ari", f"{figures['segment_stability_ari']:.3f}", "≥ 0.9"),
        (
            "value_ratio_best_to_worst_segment",
            f"{figures['value_ratio_best_to_worst_segment']:.1f}×",
            "≥ 5×",
        ),
        ("rescore_ms_per_event", f"{figures['rescore_ms_per_event']:.3f} ms", "≤ 1 ms"),
    ]
    for key, value_text, goal in rows:
        verdict = figures["goals"].get(key)
        table.add_row(key, value_text, goal, {True: "✓", False: "✗"}.get(verdict, ""))
    console.print(table)
    for name, info in figures["segments"].items():
        console.print(f"  {name}: {info['people']:,} people, ${info['holdout_value_per_person']:.2f} each "
                      f"in the holdout — {info['description']}")  # fmt: skip
    console.print(f"written to {args.out}")


def _rescoring(settings: Settings, lake: Lake, people: list[str]) -> dict[str, float]:
    """Extra CPU per accepted event with re-scoring, against the same events without."""
    scorer = LiveScorer.load(settings, "cdnow")
    costs = {}
    for name, live in (("plain", None), ("rescored", scorer)):
        store = SQLiteStore(f"{SQLITE_PREFIX}{settings.home}/{name}.db", settings.pseudonym_key())
        store.seed_history(lake, "cdnow", as_of=CALIBRATION_END, scorer=live)
        events = [
            EventIn(user_id=person, event_type="purchase", value=25.0, quantity=2,
                    timestamp=datetime(1997, 10, 2, 12, tzinfo=UTC), consent=["personalization"])
            for person in people
        ]  # fmt: skip
        start = time.process_time()
        for event in events:
            store.accept_events([event], "cdnow", scorer=live)
        costs[name] = (time.process_time() - start) / len(events) * 1000
    return {"accept_ms_per_event": costs["plain"], "accept_rescored_ms_per_event": costs["rescored"],
            "rescore_ms_per_event": costs["rescored"] - costs["plain"]}  # fmt: skip


if __name__ == "__main__":
    main()
