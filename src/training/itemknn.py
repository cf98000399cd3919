"""Item-kNN: implicit's nearest-neighbour item-item model (cosine or BM25 weighting),
each item keeping its ``neighbours`` most similar items.

A user's score for item ``j`` is the sum of ``similarity[i, j]`` over the items ``i`` in
their history (what implicit's recommend computes), so known users, new histories and
real-time users are all scored the same way. The similarity is kept as CSR arrays.
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from bespoke.training.base import FitCallback, Recommender
from bespoke.training.data import Interactions

Similarity = Literal["cosine", "bm25"]


class ItemKNN(Recommender):
    """``similarity`` weights the user × item matrix before the item-item dot products:
    ``"cosine"`` (each item's column L2-normalised) or ``"bm25"`` (``bm25_k1`` and
    ``bm25_b`` as in implicit's ``BM25Recommender``)."""

    family = "itemknn"
    state_arrays = ("similarity_data", "similarity_indices", "similarity_indptr")

    def __init__(
        self,
        similarity: Similarity = "bm25",
        neighbours: int = 100,
        bm25_k1: float = 1.2,
        bm25_b: float = 0.75,
    ) -> None:
        self.similarity = similarity
        self.neighbours = neighbours
        self.bm25_k1 = bm25_k1
        self.bm25_b = bm25_b

    def fit(
        self,
        interactions: Interactions,
        *,
        callback: FitCallback | None = None,
        show_progress: bool = False,
    ) -> ItemKNN:
        if self.similarity not in ("cosine", "bm25"):
            raise ValueError(f"similarity must be 'cosine' or 'bm25', got {self.similarity!r}")
        if self.neighbours < 1:
            raise ValueError(f"neighbours must be at least 1, got {self.neighbours}")
        return super().fit(interactions, callback=callback, show_progress=show_progress)

    def _fit(
        self, matrix: sp.csr_matrix, callback: FitCallback | None, show_progress: bool
    ) -> None:
        from implicit.nearest_neighbours import BM25Recommender, CosineRecommender
        from implicit.utils import ParameterWarning

        # implicit parallelises itself; BLAS threads on top of it only contend.
        with threadpool_limits(1, "blas"):
            model = (
                CosineRecommender(K=self.neighbours)
                if self.similarity == "cosine"
                else BM25Recommender(K=self.neighbours, K1=self.bm25_k1, B=self.bm25_b)
            )
            with warnings.catch_warnings():
                # implicit's own weighting hands its kNN a COO matrix and warns about it
                warnings.simplefilter("ignore", ParameterWarning)
                model.fit(matrix, show_progress=show_progress)  # no callback here
        similarity = sp.csr_matrix(model.similarity, dtype=np.float32)
        similarity.sort_indices()
        self.similarity_data_ = similarity.data
        self.similarity_indices_ = similarity.indices
        self.similarity_indptr_ = similarity.indptr
        self._after_load()
        if callback is not None:
            callback(0, {"similarities": float(similarity.nnz)})

    def _after_load(self) -> None:
        n_items = len(self.item_ids_)
        self.item_similarity_ = sp.csr_matrix(
            (self.similarity_data_, self.similarity_indices_, self.similarity_indptr_),
            shape=(n_items, n_items),
        )

    def _scores(self, history: sp.csr_matrix, users: np.ndarray | None) -> np.ndarray:
        return (history @ self.item_similarity_).toarray().astype(np.float32, copy=False)


def itemknn(
    similarity: Similarity = "bm25",
    neighbours: int = 100,
    bm25_k1: float = 1.2,
    bm25_b: float = 0.75,
) -> ItemKNN:
    return ItemKNN(similarity, neighbours, bm25_k1, bm25_b)
