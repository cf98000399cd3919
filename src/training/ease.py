"""EASE (Steck, 2019): a closed-form item-item model, B = I - P·diag(1/diag(P)) with
P = (XᵀX + Λ)⁻¹ and a zero diagonal. Strong on MovieLens-sized catalogs.

With ``dropout`` p > 0, Λ = λI + p/(1-p)·diag(XᵀX): the closed form of training with
input dropout (the "denoising" variant, Steck 2020, "Autoencoders that don't overfit
towards the identity"), which regularises popular items more.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from bespoke.training.base import FitCallback, Recommender


class EASE(Recommender):
    """``l2`` is the ridge strength λ (hundreds to thousands for ML-100K/1M); ``dropout``
    in [0, 1) adds the popularity-proportional part."""

    family = "ease"
    state_arrays = ("weights",)

    def __init__(self, l2: float = 500.0, dropout: float = 0.0) -> None:
        self.l2 = l2
        self.dropout = dropout

    def _fit(
        self, matrix: sp.csr_matrix, callback: FitCallback | None, show_progress: bool
    ) -> None:
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        gram = (matrix.T @ matrix).toarray().astype(np.float64)
        diagonal = np.diag(gram).copy()
        gram[np.diag_indices_from(gram)] += self.l2 + self.dropout / (1.0 - self.dropout) * diagonal
        inverse = np.linalg.inv(gram)
        weights = -inverse / np.diag(inverse)
        weights[np.diag_indices_from(weights)] = 0.0
        self.weights_ = weights.astype(np.float32)
        if callback is not None:
            callback(0, {})

    def _scores(self, history: sp.csr_matrix, users: np.ndarray | None) -> np.ndarray:
        return np.asarray(history @ self.weights_, dtype=np.float32)


def ease(l2: float = 500.0, dropout: float = 0.0) -> EASE:
    return EASE(l2=l2, dropout=dropout)
