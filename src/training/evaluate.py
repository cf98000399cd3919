"""Evaluate a recommender on a split: one metric definition (:mod:`.metrics`), seen items
removed, the test part used only here."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

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
