"""Evaluate a recommender on a split: one metric definition (:mod:`.metrics`), seen items
removed, the test part used only here."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd

from bespoke.training.base import Recommender
from bespoke.training.metrics import ranking_metrics
from bespoke.training.split import Split


def evaluate(
    model: Recommender, split: Split, k: int = 10, batch_size: int = 2048
) -> dict[str, Any]:
    """Ranking metrics of ``model`` (fitted on ``split.train``) on ``split.test``.

    Every test user gets ``k`` recommendations with their training items removed; a
    test user without training history gets the popularity fallback. Also reports
    ``recommend_s``, the time to recommend for every test user.
    """
    test_users = np.unique(split.test.users)
    relevant = split.test.matrix("binary")[test_users]
    start = time.perf_counter()
    recommended = np.vstack(
        [
            model.recommend_indices(test_users[first : first + batch_size], k)
            for first in range(0, len(test_users), batch_size)
        ]
    )
    elapsed = time.perf_counter() - start
    metrics = ranking_metrics(
        recommended, relevant, k=k, item_popularity=split.train.item_popularity()
    )
    return {**metrics, "users": len(test_users), "recommend_s": round(elapsed, 3)}


def compare(
    models: dict[str, Recommender],
    split: Split,
    *,
    k: int = 10,
    item_text: dict[str, str] | None = None,
) -> pd.DataFrame:
    """Fit each model on ``split.train`` and evaluate it on ``split.test``: one row per
    model, best nDCG first. Models that need item text are skipped without it."""
    rows = []
    for name, model in models.items():
        if model.needs_item_text() and not item_text:
            rows.append({"model": name, "skipped": "no item text in this dataset"})
            continue
        start = time.perf_counter()
        model.fit(split.train, **({"item_text": item_text} if model.needs_item_text() else {}))
        train_s = time.perf_counter() - start
        rows.append({"model": name, **evaluate(model, split, k=k), "train_s": round(train_s, 3)})
    frame = pd.DataFrame(rows)
    return frame.sort_values(f"ndcg@{k}", ascending=False, na_position="last", ignore_index=True)
