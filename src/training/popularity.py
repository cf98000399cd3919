"""Popularity: everyone gets the most interacted-with items, optionally time-decayed."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from bespoke.training.base import FitCallback, Recommender
from bespoke.training.data import Interactions


class Popularity(Recommender):
    """Items ranked by how many users interacted with them. With ``half_life_days``, an
    interaction counts ``0.5 ** (age / half_life)``, its age taken from the newest one."""

    family = "popularity"
    state_arrays = ("item_scores",)

    def __init__(self, half_life_days: float | None = None) -> None:
        self.half_life_days = half_life_days

    def fit(
        self,
        interactions: Interactions,
        *,
        callback: FitCallback | None = None,
        show_progress: bool = False,
    ) -> Popularity:
        super().fit(interactions, callback=callback, show_progress=show_progress)
        if self.half_life_days is not None:
            times = interactions.timestamps
            if np.isnat(times).any():
                raise ValueError("a time-decayed popularity needs a timestamp on every interaction")
            age_days = (times.max() - times) / np.timedelta64(1, "D")
            weights = np.power(0.5, age_days / self.half_life_days).astype(np.float32)
            self.item_scores_ = np.bincount(
                interactions.items, weights=weights, minlength=interactions.n_items
            ).astype(np.float32)
        return self

    def _fit(
        self, matrix: sp.csr_matrix, callback: FitCallback | None, show_progress: bool
    ) -> None:
        self.item_scores_ = self.popularity_.copy()
        if callback is not None:
            callback(0, {})

    def _scores(self, history: sp.csr_matrix, users: np.ndarray | None) -> np.ndarray:
        return np.tile(self.item_scores_, (history.shape[0], 1))


def popularity(half_life_days: float | None = None) -> Popularity:
    return Popularity(half_life_days=half_life_days)
