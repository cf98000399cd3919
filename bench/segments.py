"""Segments, churn and lifetime value on CDNOW's classic split (calibration
1997-01-01..09-30, holdout 1997-10-01..1998-06-30), against the buy-till-you-die
baselines.

- ``bgnbd_auc``: BG/NBD's expected holdout purchases ranking holdout buyers (published
  set-up; the issue measured 0.763).
- ``churn_auc``: the calibrated LightGBM churn model (``bespoke.segments.churn``), trained
  leak-free on cuts inside the calibration period (each with a 92-day horizon ending by
  1997-09-30), scored on the holdout: AUC of P(no purchase) against no purchase.
- ``clv_mae``: the value model's holdout spend per customer, MAE; ``bgnbd_gg_mae``: BG/NBD
  expected purchases × Gamma–Gamma expected order value; ``zero_mae``: predicting no spend
  for everyone (MAE rewards medians, and most customers spend nothing: read it beside).
- ``segment_stability_ari``: bootstrap ARI of the chosen k-means; ``value_ratio_best_to_
  worst_segment``: holdout value per person, best segment over worst.
- ``rescore_ms_per_event``: not built yet (real-time re-scoring), reported as null.

Events come from the CDNOW source the lake ingests (``bespoke ingest cdnow``), before the
lake's cleaning rules (which quarantine 80 zero-value purchases and 255 exact duplicates).

    python bench/segments.py --out FILE [--datasets-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table
from sklearn.metrics import roc_auc_score

from bespoke.features import sources
from bespoke.segments.behaviour import Segmenter
from bespoke.segments.churn import ChurnModel, ValueModel, person_rows, training_set
from bespoke.segments.clv import BetaGeo, GammaGamma, rfm_summary
from bespoke.segments.features import person_features

CALIBRATION_END, HOLDOUT_END, HOLDOUT_DAYS = "1997-09-30", "1998-06-30", 273
TRAINING_CUTS, TRAINING_HORIZON_DAYS = ("1997-04-30", "1997-05-31", "1997-06-30"), 92
GOALS = {
    "churn_auc": (">=", 0.78),
    "segment_stability_ari": (">=", 0.9),
    "value_ratio_best_to_worst_segment": (">=", 5.0),
}
COMMAND = "python bench/segments.py --out FILE"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument(
        "--datasets-dir", default=os.environ.get("BESPOKE_DATASETS_DIR", "../shared/data")
    )
    args = parser.parse_args()
    console = Console()
    events = sources.cdnow(Path(args.datasets_dir) / "cdnow").events.rename(
        columns={"user_id": "person"}
    )
    events["timestamp"] = pd.to_datetime(events["timestamp"], utc=True)
    figures: dict[str, object] = {}

    console.print("BG/NBD and Gamma–Gamma on the calibration period…")
    summary = rfm_summary(
        events.rename(columns={"person": "customer_id"}), CALIBRATION_END, HOLDOUT_END
    )
    history = (summary["frequency"], summary["recency"], summary["T"])
    bg = BetaGeo().fit(*history)
    expected = bg.expected_purchases(HOLDOUT_DAYS / 7, *history)
    bought = summary["holdout_frequency"] > 0
    figures["bgnbd_auc"] = roc_auc_score(bought, expected)
    gg = GammaGamma().fit(summary["frequency"], summary["monetary_value"])
    spend = expected * gg.expected_average_value(summary["frequency"], summary["monetary_value"])
    figures["bgnbd_gg_mae"] = float(np.abs(spend - summary["holdout_value"]).mean())
    figures["zero_mae"] = float(summary["holdout_value"].abs().mean())

    console.print("churn and value models, trained on cuts inside the calibration period…")
    start = time.perf_counter()
    train = training_set(events, TRAINING_CUTS, TRAINING_HORIZON_DAYS)
    test = person_rows(events, CALIBRATION_END, HOLDOUT_DAYS)
    churn = ChurnModel().fit(train)
    figures["churn_auc"] = roc_auc_score(test["churned"], churn.predict_proba(test))
    value = ValueModel().fit(train, TRAINING_HORIZON_DAYS).predict(test, HOLDOUT_DAYS)
    figures["clv_mae"] = float(np.abs(value - test["horizon_value"]).mean())
    figures["models_seconds"] = time.perf_counter() - start

    console.print("segments…")
    features = person_features(events, CALIBRATION_END)
    segmenter = Segmenter().fit(features)
    segment = segmenter.predict(features)
    per_person = summary["holdout_value"].groupby(segment.reindex(summary.index)).mean()
    figures["segment_stability_ari"] = segmenter.stability_
    figures["segments"] = {
        name: {"people": int((segment == name).sum()), "holdout_value_per_person": float(per_person[name]),
               "description": description}
        for name, description in zip(segmenter.names_, segmenter.descriptions_, strict=True)
    }  # fmt: skip
    figures["value_ratio_best_to_worst_segment"] = float(per_person.max() / per_person.min())
    figures["rescore_ms_per_event"] = None
    figures["command"] = COMMAND
    figures["goals"] = {key: (figures[key] >= goal) for key, (_, goal) in GOALS.items()} | {
        "clv_mae": figures["clv_mae"] <= 0.95 * figures["bgnbd_gg_mae"]
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
        ("rescore_ms_per_event", "not built yet", "≤ 1 ms"),
    ]
    for key, value_text, goal in rows:
        verdict = figures["goals"].get(key)
        table.add_row(key, value_text, goal, {True: "✓", False: "✗"}.get(verdict, ""))
    console.print(table)
    for name, info in figures["segments"].items():
        console.print(f"  {name}: {info['people']:,} people, ${info['holdout_value_per_person']:.2f} each "
                      f"in the holdout — {info['description']}")  # fmt: skip
    console.print(f"written to {args.out}")


if __name__ == "__main__":
    main()
