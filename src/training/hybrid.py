"""Hybrid: a weighted blend of other families' scores.

``components`` maps a family name to its parameters (``{"ease": {"l2": 500.0},
"content": {}}``); ``weights`` maps the same names to their weight (default: equal).

Families score on different scales (EASE's regression weights, ALS's dot products, sums
of cosines), so each component's scores are min-max normalised per user row before the
blend: ``(s - min) / (max - min)`` over the items NOT in that row's history (those are
filtered out of recommendations anyway, and item-item models give them the largest
scores, which would otherwise squash everyone else's range). A row whose remaining scores
are all equal normalises to 0. The blend is ``Σ weight · normalised``; every component
sees the same interactions, so their user and item indices coincide.

Each component is saved with its own ``save`` in ``components/<name>/`` under the
hybrid's folder, so the whole is still NumPy arrays and JSON, no pickle.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

import numpy as np
import scipy.sparse as sp

from bespoke.training.base import FitCallback, Recommender
from bespoke.training.components import component
from bespoke.training.data import Interactions

_COMPONENTS_DIR = "components"


class Hybrid(Recommender):
    family = "hybrid"

    def __init__(
        self, components: dict[str, dict[str, Any]], weights: dict[str, float] | None = None
    ) -> None:
        self.components = components
        self.weights = weights

    def needs_item_text(self) -> bool:
        return any(model.needs_item_text() for model in self._build().values())

    def fit(
        self,
        interactions: Interactions,
        *,
        item_text: Mapping[str, str] | None = None,
        callback: FitCallback | None = None,
        show_progress: bool = False,
    ) -> Hybrid:
        """Fit every component on ``interactions`` (``item_text`` goes to those whose
        ``fit`` takes it, e.g. ``content``); ``callback(i, {"weight": w})`` is called
        after the ``i``-th component is fitted (the blend cannot stop early)."""
        weights = self._weights()
        models = self._build()
        for index, (name, model) in enumerate(models.items()):
            kwargs: dict[str, Any] = {"show_progress": show_progress}
            if model.needs_item_text():
                kwargs["item_text"] = item_text
            model.fit(interactions, **kwargs)
            if callback is not None:
                callback(index, {"weight": weights[name]})
        super().fit(interactions, show_progress=show_progress)
        self.components_ = models
        self.blend_weights_ = weights
        return self

    def _fit(
        self, matrix: sp.csr_matrix, callback: FitCallback | None, show_progress: bool
    ) -> None:
        """Nothing to learn beyond the components (fitted in :meth:`fit`)."""

    def _weights(self) -> dict[str, float]:
        if not self.components:
            raise ValueError("a hybrid needs at least one component")
        names = list(self.components)
        if self.weights is None:
            return {name: 1.0 / len(names) for name in names}
        missing = [name for name in names if name not in self.weights]
        extra = [name for name in self.weights if name not in self.components]
        if missing or extra:
            raise ValueError(
                f"weights must name exactly the components {names}: "
                f"missing {missing}, not a component {extra}"
            )
        weights = {name: float(self.weights[name]) for name in names}
        bad = {name: w for name, w in weights.items() if not (math.isfinite(w) and w >= 0)}
        if bad or not any(weights.values()):
            raise ValueError(
                f"weights must be finite, non-negative and not all zero, got {self.weights}"
            )
        return weights

    def _build(self) -> dict[str, Recommender]:
        models = {}
        for name, params in self.components.items():
            model_class = component(name)
            try:
                models[name] = model_class(**(params or {}))
            except TypeError as error:
                raise ValueError(f"component {name!r}: bad parameters {params}: {error}") from None
        return models

    def _scores(self, history: sp.csr_matrix, users: np.ndarray | None) -> np.ndarray:
        blended = np.zeros(history.shape, np.float32)
        for name, model in self.components_.items():
            scores = np.asarray(model._scores(history, users), dtype=np.float32)
            blended += self.blend_weights_[name] * _min_max(scores, history)
        return blended

    # --- persistence -----------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """The hybrid's own state, then each component in ``components/<name>/``."""
        folder = super().save(path)
        for name, model in self.components_.items():
            model.save(folder / _COMPONENTS_DIR / name)
        return folder

    @classmethod
    def load(cls, path: str | Path) -> Self:
        model = super().load(path)
        folder = Path(path)
        components = {
            name: component(name).load(folder / _COMPONENTS_DIR / name) for name in model.components
        }
        for name, fitted in components.items():
            if not np.array_equal(fitted.item_ids_, model.item_ids_):
                raise ValueError(f"{folder}: component {name!r} has another item catalog")
        model.components_ = components
        model.blend_weights_ = model._weights()
        return model


def _min_max(scores: np.ndarray, history: sp.csr_matrix) -> np.ndarray:
    """``scores`` scaled to [0, 1] per row over the items outside the row's history."""
    in_history = np.zeros(scores.shape, bool)
    in_history[history.nonzero()] = True
    low = np.where(in_history, np.inf, scores).min(axis=1, keepdims=True)
    high = np.where(in_history, -np.inf, scores).max(axis=1, keepdims=True)
    everything = ~np.isfinite(low)  # every item in the history: scale over all of them
    low = np.where(everything, scores.min(axis=1, keepdims=True), low)
    high = np.where(everything, scores.max(axis=1, keepdims=True), high)
    span = high - low
    return np.where(span > 0, (scores - low) / np.where(span > 0, span, 1.0), 0.0).astype(
        np.float32
    )


def hybrid(
    components: dict[str, dict[str, Any]], weights: dict[str, float] | None = None
) -> Hybrid:
    return Hybrid(components=components, weights=weights)
