"""Behavioural segments: k-means on scaled point-in-time person features, with names a
marketer can read and that stay put across retrains.

- Features (:mod:`bespoke.segments.features`) are log-scaled where skewed and standardised.
- ``k`` is chosen in a range by the silhouette score (on a fixed sample), then checked by
  a bootstrap: k-means refitted on resamples must label everyone the same way (adjusted
  Rand index against the chosen model; ``stability_``).
- Each segment gets a human name and a one-line description derived from its centroid
  (how recent, frequent, valuable and new its people are against everyone), e.g.
  "High-value frequent buyers" or "Lapsed one-time buyers".
- Retrained with the previous model given, new centroids are matched to the old ones
  (Hungarian assignment on their distance) and keep their names, so nobody is relabelled
  because a cluster's index changed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, silhouette_score
from sklearn.preprocessing import StandardScaler

#: What segments are computed from (columns of :func:`bespoke.segments.features.person_features`).
SEGMENT_FEATURES = (
    "recency_days", "orders", "monetary_total", "average_order_value", "tenure_days",
    "orders_90d",
)  # fmt: skip
#: Skewed features, log-scaled before standardising.
_LOGGED = ("orders", "monetary_total", "average_order_value", "orders_90d")
#: How strongly a centroid must differ from everyone (in standard deviations) to be named so.
_NOTABLE = 0.5


class Segmenter:
    """``fit(features, previous=None)`` returns self; fitted: ``k_``, ``names_``,
    ``descriptions_``, ``centroids_`` (medians per segment, original units),
    ``silhouettes_`` (per k tried), ``stability_`` (mean bootstrap ARI)."""

    def __init__(
        self,
        k_range: tuple[int, int] = (3, 7),
        features: Sequence[str] = SEGMENT_FEATURES,
        bootstrap: int = 10,
        sample: int = 5000,
        random_state: int = 0,
    ) -> None:
        self.k_range = k_range
        self.features = tuple(features)
        self.bootstrap = bootstrap
        self.sample = sample
        self.random_state = random_state

    def _matrix(self, frame: pd.DataFrame) -> np.ndarray:
        missing = [f for f in self.features if f not in frame]
        if missing:
            raise ValueError(f"person features lack {missing}")
        values = frame[list(self.features)].astype(float).fillna(0.0).copy()
        for column in _LOGGED:
            if column in values:
                values[column] = np.log1p(values[column].clip(lower=0))
        return values.to_numpy()

    def fit(self, features: pd.DataFrame, previous: Segmenter | None = None) -> Segmenter:
        low, high = self.k_range
        if not 2 <= low <= high:
            raise ValueError(f"k_range must be 2 ≤ low ≤ high, got {self.k_range}")
        if len(features) < high * 10:
            raise ValueError(f"{len(features)} people are too few for up to {high} segments")
        rng = np.random.default_rng(self.random_state)
        self.scaler_ = StandardScaler().fit(self._matrix(features))
        scaled = self.scaler_.transform(self._matrix(features))
        sample = rng.choice(len(scaled), size=min(self.sample, len(scaled)), replace=False)
        models, self.silhouettes_ = {}, {}
        for k in range(low, high + 1):
            model = KMeans(n_clusters=k, n_init=10, random_state=self.random_state).fit(scaled)
            models[k] = model
            self.silhouettes_[k] = float(silhouette_score(scaled[sample], model.labels_[sample]))
        self.k_ = max(self.silhouettes_, key=self.silhouettes_.get)
        model = models[self.k_]
        inherited: dict[int, str] = {}
        if previous is not None:
            # The old centres in this model's scale; each new centre takes the name of the
            # old one it is matched to.
            old = self.scaler_.transform(previous.inverse_centers_())
            rows, cols = linear_sum_assignment(
                np.linalg.norm(model.cluster_centers_[:, None, :] - old[None, :, :], axis=2)
            )
            inherited = {int(r): previous.names_[int(c)] for r, c in zip(rows, cols, strict=True)}
        self.model_ = model
        centers = model.cluster_centers_
        labels = model.predict(scaled)
        self.stability_ = self._stability(scaled, labels, rng)
        frame = features[list(self.features)].assign(_segment=labels)
        self.centroids_ = frame.groupby("_segment").median()
        self.sizes_ = frame.groupby("_segment").size()
        z = pd.DataFrame(centers, columns=list(self.features))
        fresh = [_name(z.loc[i]) for i in range(len(z))]
        self.names_ = _unique([inherited.get(i, fresh[i]) for i in range(len(z))])
        self.descriptions_ = [_describe(self.centroids_.loc[i]) for i in range(len(z))]
        return self

    def inverse_centers_(self) -> np.ndarray:
        """The cluster centres in the features' (log-scaled) units."""
        return self.scaler_.inverse_transform(self.model_.cluster_centers_)

    def _stability(self, scaled: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> float:
        scores = []
        for _ in range(self.bootstrap):
            draw = rng.choice(len(scaled), size=len(scaled), replace=True)
            refit = KMeans(n_clusters=self.k_, n_init=3, random_state=int(rng.integers(1 << 31)))
            scores.append(adjusted_rand_score(labels, refit.fit(scaled[draw]).predict(scaled)))
        return float(np.mean(scores)) if scores else float("nan")

    def predict(self, features: pd.DataFrame) -> pd.Series:
        """Each person's segment name: that of the nearest centre (what k-means assigns;
        the same online, where one person at a time is re-scored)."""
        if not hasattr(self, "model_"):
            raise RuntimeError("fit the segmenter first")
        labels = self._nearest(self._matrix(features))
        return pd.Series(
            np.asarray(self.names_, dtype=object)[labels], index=features.index, name="segment"
        )

    def predict_one(self, features: Mapping[str, float | None]) -> str:
        """One person's segment from their features (a mapping, as the online store
        computes them): the same scaling and nearest centre as :meth:`predict`."""
        row = np.array([[_number(features.get(f)) for f in self.features]])
        for index, name in enumerate(self.features):
            if name in _LOGGED:
                row[0, index] = np.log1p(max(row[0, index], 0.0))
        return self.names_[int(self._nearest(row)[0])]

    def _nearest(self, matrix: np.ndarray) -> np.ndarray:
        scaled = (matrix - self.scaler_.mean_) / self.scaler_.scale_
        centers = self.model_.cluster_centers_
        return ((scaled[:, None, :] - centers[None, :, :]) ** 2).sum(axis=2).argmin(axis=1)

    def save(self, path: str | Path) -> Path:
        """The fitted model as JSON (no pickle): features, scaling, centres, names."""
        if not hasattr(self, "model_"):
            raise RuntimeError("fit the segmenter first")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({
            "params": {"k_range": list(self.k_range), "features": list(self.features),
                       "bootstrap": self.bootstrap, "sample": self.sample,
                       "random_state": self.random_state},
            "mean": self.scaler_.mean_.tolist(), "scale": self.scaler_.scale_.tolist(),
            "centers": self.model_.cluster_centers_.tolist(), "names": self.names_,
            "descriptions": self.descriptions_, "k": self.k_, "stability": self.stability_,
            "silhouettes": {str(k): v for k, v in self.silhouettes_.items()},
            "centroids": self.centroids_.to_dict("index"), "sizes": self.sizes_.to_dict(),
        }, indent=1, default=float))  # fmt: skip
        return path

    @classmethod
    def load(cls, path: str | Path) -> Segmenter:
        """A model :meth:`save` wrote."""
        data = json.loads(Path(path).read_text())
        params = data["params"]
        model = cls(k_range=tuple(params["k_range"]), features=params["features"],
                    bootstrap=params["bootstrap"], sample=params["sample"],
                    random_state=params["random_state"])  # fmt: skip
        model.scaler_ = StandardScaler()
        model.scaler_.mean_ = np.asarray(data["mean"])
        model.scaler_.scale_ = np.asarray(data["scale"])
        model.scaler_.var_ = model.scaler_.scale_**2
        model.scaler_.n_features_in_ = len(model.features)
        centers = np.asarray(data["centers"])
        model.model_ = KMeans(n_clusters=len(centers), init=centers, n_init=1)
        model.model_.cluster_centers_ = centers
        model.names_, model.descriptions_ = data["names"], data["descriptions"]
        model.k_, model.stability_ = int(data["k"]), float(data["stability"])
        model.silhouettes_ = {int(k): v for k, v in data["silhouettes"].items()}
        model.centroids_ = pd.DataFrame.from_dict(data["centroids"], orient="index")
        model.centroids_.index = model.centroids_.index.astype(int)
        model.sizes_ = pd.Series({int(k): v for k, v in data["sizes"].items()})
        return model


def _number(value: float | None) -> float:
    """A feature value as k-means takes it: missing is 0 (as in :meth:`Segmenter._matrix`)."""
    return 0.0 if value is None or value != value else float(value)


def _name(z: pd.Series) -> str:
    """A segment's name from its centre, in standard deviations from everyone."""
    words = []
    if z.get("monetary_total", 0) > _NOTABLE:
        words.append("high-value")
    elif z.get("monetary_total", 0) < -_NOTABLE:
        words.append("low-value")
    if z.get("orders", 0) > _NOTABLE:
        words.append("frequent")
    elif z.get("orders", 0) < -_NOTABLE:
        words.append("one-time")
    if z.get("recency_days", 0) > _NOTABLE:
        words.insert(0, "lapsed")
    elif z.get("orders_90d", 0) > _NOTABLE:
        words.insert(0, "active")
    if z.get("tenure_days", 0) < -_NOTABLE:
        words.insert(0, "new")
    name = " ".join(words) if words else "typical"
    return (name + " buyers").capitalize()


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name} ({seen[name]})")
    return out


def _describe(median: pd.Series) -> str:
    return (
        f"median {median.get('orders', float('nan')):.0f} orders, last one "
        f"{median.get('recency_days', float('nan')):.0f} days ago, "
        f"{median.get('monetary_total', float('nan')):.0f} spent in total, "
        f"customer for {median.get('tenure_days', float('nan')):.0f} days"
    )
