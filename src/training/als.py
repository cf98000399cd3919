"""ALS (implicit's conjugate-gradient alternating least squares) on binary interactions
with confidence 1 + alpha."""

from __future__ import annotations

import contextlib

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from bespoke.training.base import FitCallback, Recommender, StopTraining, notify


class ALS(Recommender):
    family = "als"
    state_arrays = ("user_factors", "item_factors")
    iterative = True

    def __init__(
        self,
        factors: int = 64,
        regularization: float = 0.05,
        alpha: float = 1.0,
        iterations: int = 15,
        random_state: int = 42,
    ) -> None:
        self.factors = factors
        self.regularization = regularization
        self.alpha = alpha
        self.iterations = iterations
        self.random_state = random_state

    def _fit(
        self, matrix: sp.csr_matrix, callback: FitCallback | None, show_progress: bool
    ) -> None:
        from implicit.cpu.als import AlternatingLeastSquares

        def report(iteration: int, elapsed: float, loss: float) -> None:
            if callback is not None:
                # The factors so far, so that the callback can score the model (pruning).
                self.user_factors_ = np.asarray(model.user_factors, dtype=np.float32)
                self.item_factors_ = np.asarray(model.item_factors, dtype=np.float32)
                notify(callback, iteration, {"loss": float(loss), "elapsed_s": float(elapsed)})

        # implicit parallelises itself; BLAS threads on top of it only contend.
        with threadpool_limits(1, "blas"):
            model = AlternatingLeastSquares(
                factors=self.factors,
                regularization=self.regularization,
                alpha=self.alpha,
                iterations=self.iterations,
                random_state=self.random_state,
                calculate_training_loss=callback is not None,
            )
            # implicit's ALS ignores its callback's answer: a stop is raised through it.
            with contextlib.suppress(StopTraining):  # stopped early: the factors so far
                model.fit(matrix, show_progress=show_progress, callback=report)
        self.user_factors_ = np.asarray(model.user_factors, dtype=np.float32)
        self.item_factors_ = np.asarray(model.item_factors, dtype=np.float32)

    def _scores(self, history: sp.csr_matrix, users: np.ndarray | None) -> np.ndarray:
        factors = self.user_factors_[users] if users is not None else self._fold_in(history)
        return factors @ self.item_factors_.T

    def _fold_in_terms(self) -> tuple[np.ndarray, np.ndarray]:
        """The item factors in float64 and their regularised Gram matrix, computed once
        per fitted state: a live request should not pay for them."""
        key = id(self.item_factors_)
        cached = getattr(self, "_fold_in_cache", None)
        if cached is None or cached[0] != key:
            items = self.item_factors_.astype(np.float64)
            gram = items.T @ items + self.regularization * np.eye(items.shape[1])
            self._fold_in_cache = (key, items, gram)
            cached = self._fold_in_cache
        return cached[1], cached[2]

    def _fold_in(self, history: sp.csr_matrix) -> np.ndarray:
        """The user factors ALS would solve for, given only these histories."""
        items, gram = self._fold_in_terms()
        out = np.zeros((history.shape[0], items.shape[1]), np.float32)
        for row in range(history.shape[0]):
            seen = history.indices[history.indptr[row] : history.indptr[row + 1]]
            if len(seen) == 0:
                continue
            chosen = items[seen]
            a = gram + self.alpha * chosen.T @ chosen
            b = (1.0 + self.alpha) * chosen.sum(axis=0)
            out[row] = np.linalg.solve(a, b)
        return out


def als(
    factors: int = 64,
    regularization: float = 0.05,
    alpha: float = 1.0,
    iterations: int = 15,
    random_state: int = 42,
) -> ALS:
    return ALS(factors, regularization, alpha, iterations, random_state)
