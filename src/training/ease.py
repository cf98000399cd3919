"""EASE (Steck, 2019): a closed-form item-item model, B = I - P·diag(1/diag(P)) with
P = (XᵀX + λI)⁻¹ and a zero diagonal. Strong on MovieLens-sized catalogs."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from bespoke.training.base import FitCallback, Recommender


class EASE(Recommender):
    """``l2`` is the ridge strength λ (hundreds for ML-100K/1M)."""

    family = "ease"
    state_arrays = ("weights",)

    def __init__(self, l2: float = 500.0) -> None:
        self.l2 = l2

    def _fit(
        self, matrix: sp.csr_matrix, callback: FitCallback | None, show_progress: bool
    ) -> None:
        gram = (matrix.T @ matrix).toarray().astype(np.float64)
        gram[np.diag_indices_from(gram)] += self.l2
        inverse = np.linalg.inv(gram)
        weights = -inverse / np.diag(inverse)
        weights[np.diag_indices_from(weights)] = 0.0
        self.weights_ = weights.astype(np.float32)
        if callback is not None:
            callback(0, {})

    def _scores(self, history: sp.csr_matrix, users: np.ndarray | None) -> np.ndarray:
        return np.asarray(history @ self.weights_, dtype=np.float32)


def ease(l2: float = 500.0) -> EASE:
    return EASE(l2=l2)
