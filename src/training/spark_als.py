"""Spark MLlib's implicit ALS: the matrix factorisation for catalogs too large for EASE's
dense item × item inverse, trained on a Spark cluster (local mode by default).

Spark is only needed to *fit*: the learned user and item factors are kept as NumPy
arrays, so scoring (evaluation and the service alike, through the base class) runs
without Spark, and a history not seen in training is folded in with MLlib's own least
squares over the item factors. ``pyspark`` is the optional ``spark`` extra
(``pip install 'bespoke[spark]'``, Java 17+); it is imported when a model is fitted.

MLlib's formulation is implicit's (confidence ``1 + alpha`` on each interaction, the
unobserved entries as zeros) except for the ridge term, which MLlib scales by the
number of interactions of the row being solved ("ALS-WR"): ``regularization`` here is
MLlib's ``regParam``, so its good values differ from the ``als`` family's.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Self

import numpy as np
import pandas as pd
import scipy.sparse as sp

from bespoke.engine.engines import spark_session
from bespoke.settings import get_settings
from bespoke.training.base import FitCallback, Recommender
from bespoke.training.data import Interactions

if TYPE_CHECKING:
    from pyspark.sql import DataFrame


class SparkALS(Recommender):
    """``factors`` is MLlib's ``rank``, ``regularization`` its ``regParam`` (scaled per row
    by the row's interaction count), ``iterations`` its ``maxIter``, ``random_state`` its
    ``seed``, ``alpha`` its ``alpha``; ``blocks`` is how many user blocks and item blocks
    MLlib splits the factors into across the cluster (its ``numUserBlocks`` and
    ``numItemBlocks``; its default, 10). The defaults are MLlib's, with implicit's
    ``alpha`` and the ``als`` family's rank and iterations.

    Reproducible for a seed: with ``blocks=1`` bit for bit (one partition, so every
    shuffle sees its rows in one order). With several blocks Spark adds the blocks'
    partial sums (such as the factors' Gram matrix) in the order its tasks finish, so
    two runs may differ in the last bits, and a near tie in the ranking with them.
    """

    family = "spark-als"
    state_arrays = ("user_factors", "item_factors")
    requires_extra = "spark"

    def __init__(
        self,
        factors: int = 64,
        regularization: float = 0.1,
        alpha: float = 1.0,
        iterations: int = 15,
        random_state: int = 42,
        blocks: int = 10,
    ) -> None:
        self.factors = factors
        self.regularization = regularization
        self.alpha = alpha
        self.iterations = iterations
        self.random_state = random_state
        self.blocks = blocks

    def fit(
        self,
        interactions: Interactions,
        *,
        callback: FitCallback | None = None,
        show_progress: bool = False,
    ) -> Self:
        """Learn from ``interactions`` on Spark; returns ``self``. Bad parameters, or no
        pyspark or Java, fail before anything is set. MLlib runs every iteration in one
        call, with no hook between them and no warm start: the callback hears one round,
        at the end (as EASE's does), and ``show_progress`` has nothing to show."""
        self._check_params()
        spark_session(get_settings().spark_master)  # started (or found) before any fitted attribute
        return super().fit(interactions, callback=callback, show_progress=show_progress)

    def _fit(
        self, matrix: sp.csr_matrix, callback: FitCallback | None, show_progress: bool
    ) -> None:
        started = time.perf_counter()
        session = spark_session(get_settings().spark_master)
        from pyspark.ml.recommendation import ALS as MLlibALS

        coo = matrix.tocoo()
        ratings = session.createDataFrame(
            _ratings_frame(coo.row, coo.col), schema="user int, item int, rating float"
        )
        estimator = MLlibALS(
            rank=self.factors,
            maxIter=self.iterations,
            regParam=self.regularization,
            alpha=self.alpha,
            implicitPrefs=True,
            seed=self.random_state,
            numUserBlocks=self.blocks,
            numItemBlocks=self.blocks,
            userCol="user",
            itemCol="item",
            ratingCol="rating",
            coldStartStrategy="drop",
        )
        # One block is fed one partition: MLlib's shuffles then see their rows in a fixed
        # order, and the same seed gives the same factors bit for bit.
        model = estimator.fit(
            ratings.coalesce(1) if self.blocks == 1 else ratings.repartition(self.blocks)
        )
        # Users and items without training interactions get no factors from MLlib:
        # zeros (their scores come from popularity, as for any empty history).
        self.user_factors_ = _dense_factors(model.userFactors, matrix.shape[0], self.factors)
        self.item_factors_ = _dense_factors(model.itemFactors, matrix.shape[1], self.factors)
        if callback is not None:
            callback(0, {"elapsed_s": time.perf_counter() - started})

    def _check_params(self) -> None:
        for name in ("factors", "iterations", "blocks"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("regularization", "alpha"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be finite and non-negative, got {value!r}")
        if not isinstance(self.random_state, int):
            raise ValueError(f"random_state must be an integer, got {self.random_state!r}")

    def _scores(self, history: sp.csr_matrix, users: np.ndarray | None) -> np.ndarray:
        factors = self.user_factors_[users] if users is not None else self._fold_in(history)
        return factors @ self.item_factors_.T

    def _fold_in_terms(self) -> tuple[np.ndarray, np.ndarray]:
        """The item factors in float64 and their Gram matrix, computed once per fitted
        state: a live request should not pay for them."""
        key = id(self.item_factors_)
        cached = getattr(self, "_fold_in_cache", None)
        if cached is None or cached[0] != key:
            items = self.item_factors_.astype(np.float64)
            self._fold_in_cache = (key, items, items.T @ items)
            cached = self._fold_in_cache
        return cached[1], cached[2]

    def _fold_in(self, history: sp.csr_matrix) -> np.ndarray:
        """The user factors MLlib solves for, given only these histories: the same
        normal equations, its ridge term ``regParam`` times the history's length."""
        items, gram = self._fold_in_terms()
        identity = np.eye(items.shape[1])
        out = np.zeros((history.shape[0], items.shape[1]), np.float32)
        for row in range(history.shape[0]):
            seen = history.indices[history.indptr[row] : history.indptr[row + 1]]
            if len(seen) == 0:
                continue
            chosen = items[seen]
            a = gram + self.alpha * chosen.T @ chosen + self.regularization * len(seen) * identity
            b = (1.0 + self.alpha) * chosen.sum(axis=0)
            out[row] = np.linalg.solve(a, b)
        return out


def _ratings_frame(users: np.ndarray, items: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user": users.astype(np.int32),
            "item": items.astype(np.int32),
            "rating": np.ones(len(users), np.float32),
        }
    )


def _dense_factors(frame: DataFrame, rows: int, rank: int) -> np.ndarray:
    """MLlib's ``(id, features)`` factor table as a ``rows × rank`` array (zeros where an
    id has no row)."""
    table = frame.toPandas()
    out = np.zeros((rows, rank), np.float32)
    if len(table):
        out[table["id"].to_numpy()] = np.stack(table["features"].to_numpy()).astype(np.float32)
    return out
