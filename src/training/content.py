"""Content-based: items described by their text (title and genres, see
:func:`bespoke.training.data.load_item_text`), compared by TF-IDF cosine similarity.

A user's score for an item is the sum of its cosine similarities to the items in their
history, ``history @ T @ Tᵀ`` with ``T`` the L2-normalised TF-IDF item matrix (the
model's state, kept as CSR arrays). Interactions only say which items are in a history,
never how an item is scored, so an item nobody has interacted with yet — in the
catalog of the interactions but absent from training — is scored from its text like
any other: the cold-start item case. An item without text scores 0.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import scipy.sparse as sp

from bespoke.training.base import FitCallback, Recommender
from bespoke.training.data import Interactions


class ContentBased(Recommender):
    """``min_df`` drops terms found in fewer items; ``sublinear_tf`` uses 1 + log(tf).

    Fit it with ``fit(interactions, item_text=...)``: ``item_text`` maps item id → text
    for the items of ``interactions``' catalog (others are ignored).
    """

    family = "content"
    state_arrays = ("tfidf_data", "tfidf_indices", "tfidf_indptr", "tfidf_shape")

    def __init__(self, min_df: int = 1, sublinear_tf: bool = True) -> None:
        self.min_df = min_df
        self.sublinear_tf = sublinear_tf

    def fit(
        self,
        interactions: Interactions,
        *,
        item_text: Mapping[str, str] | None = None,
        callback: FitCallback | None = None,
        show_progress: bool = False,
    ) -> ContentBased:
        """Learn from ``interactions`` and the items' text; returns ``self``."""
        if item_text is None:
            raise ValueError(
                "ContentBased.fit needs item_text (item id -> text), e.g. "
                "fit(interactions, item_text=load_item_text(lake, dataset))"
            )
        texts = [str(item_text.get(str(item), "") or "") for item in interactions.item_ids]
        if not any(text.strip() for text in texts):
            raise ValueError(
                "item_text has no text for any item of these interactions: a content model "
                "needs a catalog with titles or genres"
            )
        from sklearn.feature_extraction.text import TfidfVectorizer

        vectorizer = TfidfVectorizer(
            min_df=self.min_df, sublinear_tf=self.sublinear_tf, norm="l2", dtype=np.float32
        )
        tfidf = sp.csr_matrix(vectorizer.fit_transform(texts), dtype=np.float32)
        tfidf.sort_indices()
        self.tfidf_data_ = tfidf.data
        self.tfidf_indices_ = tfidf.indices
        self.tfidf_indptr_ = tfidf.indptr
        self.tfidf_shape_ = np.asarray(tfidf.shape, np.int64)
        return super().fit(interactions, callback=callback, show_progress=show_progress)

    def _fit(
        self, matrix: sp.csr_matrix, callback: FitCallback | None, show_progress: bool
    ) -> None:
        self._after_load()  # the TF-IDF matrix was built from the text in fit
        if callback is not None:
            callback(0, {"terms": float(self.tfidf_.shape[1])})

    def _after_load(self) -> None:
        self.tfidf_ = sp.csr_matrix(
            (self.tfidf_data_, self.tfidf_indices_, self.tfidf_indptr_),
            shape=tuple(int(n) for n in self.tfidf_shape_),
        )

    def _scores(self, history: sp.csr_matrix, users: np.ndarray | None) -> np.ndarray:
        # (history @ T) @ Tᵀ, computed as T @ profilesᵀ: one sparse × dense product, no
        # items × items matrix, so it scales with the catalog's text, not its square.
        profiles = np.asarray((history @ self.tfidf_).toarray(), dtype=np.float32)
        return np.ascontiguousarray((self.tfidf_ @ profiles.T).T, dtype=np.float32)


def content(min_df: int = 1, sublinear_tf: bool = True) -> ContentBased:
    return ContentBased(min_df=min_df, sublinear_tf=sublinear_tf)
