"""Point-in-time ranking features, built by one code path offline and online.

A row describes (person, candidate item, request time): who the person is, what they did
before the request, what the item is and how it was doing before the request, how the
retrieval models score the pair, and when the request happens. Offline, the history is
cut from the lake at an as-of time; online, it is the profile the service keeps. Both are
turned into a :class:`Histories` batch and go through :meth:`FeatureBuilder.transform`,
so a model never sees a feature computed differently from the one it was trained on.

Nothing after the as-of time reaches a row: :meth:`FeatureBuilder.fit` keeps only
interactions before it for every item statistic, :func:`histories` cuts every person's
history at it, and the retrieval models are fitted by the caller on the same cut.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

if TYPE_CHECKING:
    from bespoke.training.base import Recommender
    from bespoke.training.data import Interactions

#: Lower edges of the age bands (MovieLens 1M's: under 18, 18-24, 25-34, …, 56+).
AGE_BAND_EDGES = (18, 25, 35, 45, 50, 56)
#: Activity and popularity windows, in days before the request.
WINDOWS_DAYS = (7, 30, 90)
#: How many of the latest items "similarity to the last items" looks at.
LAST_ITEMS = 5
#: Size of the item embeddings behind that similarity (truncated SVD of item × user).
EMBEDDING_DIM = 32
#: User attributes encoded as LightGBM categories (codes; unknown → missing).
USER_CATEGORIES = ("gender", "occupation", "state", "region")
_SECONDS_PER_DAY = 86_400.0


def _days(times: Any) -> np.ndarray:
    """Days since the epoch as float64; NaT → NaN."""
    values = np.asarray(times, dtype="datetime64[us]")
    days = values.astype(np.int64).astype(np.float64) / (_SECONDS_PER_DAY * 1e6)
    days[np.isnat(values)] = np.nan
    return days


def _as_datetime64(moment: datetime | np.datetime64 | str | None) -> np.datetime64:
    if moment is None:
        return np.datetime64("NaT", "us")
    stamp = pd.Timestamp(moment)
    if stamp.tzinfo is not None:
        stamp = stamp.tz_convert("UTC").tz_localize(None)
    return np.datetime64(stamp.to_datetime64(), "us")


@dataclass
class Profile:
    """What is known about one person at a moment: attributes and interactions so far.

    This is the online profile's shape; offline, :func:`histories` cuts the same thing
    from the lake. Items, values and timestamps are parallel; a missing value is NaN and
    an unknown time NaT.
    """

    user_id: str
    attributes: Mapping[str, Any] = field(default_factory=dict)
    items: Sequence[Any] = ()
    values: Sequence[float] = ()
    timestamps: Sequence[Any] = ()
    #: The person's segment, rule segments, churn probability and expected value, where
    #: scored (the rules read them as ``profile.segment`` …).
    scores: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Histories:
    """A batch of people's histories over one item index, each sorted by time (CSR-like:
    person ``r`` holds ``items[indptr[r]:indptr[r + 1]]``), with their attributes."""

    user_ids: np.ndarray
    indptr: np.ndarray
    items: np.ndarray
    values: np.ndarray
    days: np.ndarray
    attributes: pd.DataFrame  # one row per person: age plus USER_CATEGORIES

    def __len__(self) -> int:
        return len(self.user_ids)

    def rows(self, start: int, stop: int) -> Histories:
        """People ``start`` to ``stop`` (exclusive) as a batch of their own."""
        low, high = self.indptr[start], self.indptr[stop]
        return Histories(
            user_ids=self.user_ids[start:stop],
            indptr=self.indptr[start : stop + 1] - low,
            items=self.items[low:high],
            values=self.values[low:high],
            days=self.days[low:high],
            attributes=self.attributes.iloc[start:stop].reset_index(drop=True),
        )

    def row_of_each(self) -> np.ndarray:
        """The person (row) of each interaction."""
        return np.repeat(np.arange(len(self)), np.diff(self.indptr))

    def matrix(self, n_items: int) -> sp.csr_matrix:
        """Binary person × item matrix (what the retrieval models score)."""
        matrix = sp.csr_matrix(
            (np.ones(len(self.items), np.float32), self.items, self.indptr),
            shape=(len(self), n_items),
        )
        matrix.sum_duplicates()
        matrix.data[:] = 1.0
        return matrix

    @classmethod
    def from_profiles(
        cls, profiles: Sequence[Profile], item_ids: np.ndarray | Mapping[str, int]
    ) -> Histories:
        """Profiles over ``item_ids`` (a model's item index, or a ready id → position
        mapping); items it does not know are dropped, since no model can score them."""
        lookup = item_ids if isinstance(item_ids, Mapping) else item_positions(item_ids)
        parts_items, parts_values, parts_days, lengths = [], [], [], []
        for profile in profiles:
            index = np.fromiter(
                (lookup.get(str(item), -1) for item in profile.items), np.int64, len(profile.items)
            )
            n = len(index)
            values = (
                np.asarray(profile.values, dtype=np.float64)
                if len(profile.values)
                else np.full(n, np.nan)
            )
            days = _days(profile.timestamps) if len(profile.timestamps) else np.full(n, np.nan)
            known = index >= 0
            order = np.argsort(np.where(np.isnan(days[known]), -np.inf, days[known]), kind="stable")
            parts_items.append(index[known][order])
            parts_values.append(values[known][order])
            parts_days.append(days[known][order])
            lengths.append(int(known.sum()))
        attributes = pd.DataFrame(
            [
                {name: p.attributes.get(name) for name in ("age", *USER_CATEGORIES)}
                for p in profiles
            ],
            columns=["age", *USER_CATEGORIES],
        )
        return cls(
            user_ids=np.asarray([p.user_id for p in profiles], dtype=object),
            indptr=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            items=np.concatenate(parts_items or [np.empty(0, np.int64)]).astype(np.int64),
            values=np.concatenate(parts_values or [np.empty(0)]),
            days=np.concatenate(parts_days or [np.empty(0)]),
            attributes=attributes,
        )


def item_positions(item_ids: np.ndarray) -> dict[str, int]:
    """Item id → position in a model's item index."""
    return {str(item): position for position, item in enumerate(item_ids)}


def histories(
    interactions: Interactions,
    users: np.ndarray,
    attributes: pd.DataFrame | None = None,
    as_of: datetime | np.datetime64 | str | None = None,
) -> Histories:
    """The histories of the people at ``users`` (indices into ``interactions.user_ids``)
    as of ``as_of``: only interactions strictly before it (all of them when ``None``).

    ``attributes`` is a users table (``user_id``, ``age``, ``gender``, …), e.g. the lake's
    ``users`` view; people missing from it have unknown attributes.
    """
    users = np.asarray(users, dtype=np.int64)
    keep = np.isin(interactions.users, users)
    cut = _as_datetime64(as_of)
    if not np.isnat(cut):
        keep &= interactions.timestamps < cut
    position = np.full(interactions.n_users, -1, np.int64)
    position[users] = np.arange(len(users))
    rows = position[interactions.users[keep]]
    days = _days(interactions.timestamps[keep])
    order = np.lexsort((np.where(np.isnan(days), -np.inf, days), rows))
    counts = np.bincount(rows, minlength=len(users))
    user_ids = interactions.user_ids[users]
    return Histories(
        user_ids=user_ids,
        indptr=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        items=interactions.items[keep][order].astype(np.int64),
        values=interactions.values[keep][order].astype(np.float64),
        days=days[order],
        attributes=_attributes_of(user_ids, attributes),
    )


def _attributes_of(user_ids: np.ndarray, table: pd.DataFrame | None) -> pd.DataFrame:
    columns = ["age", *USER_CATEGORIES]
    if table is None or table.empty:
        return pd.DataFrame({c: [None] * len(user_ids) for c in columns})
    indexed = table.assign(user_id=table["user_id"].astype(str)).set_index("user_id")
    indexed = indexed.reindex(columns=columns)
    found = indexed.reindex(pd.Index(user_ids.astype(str)))
    return found.reset_index(drop=True).astype(object).where(found.notna().to_numpy(), None)


class FeatureBuilder:
    """Turns (histories, candidates, request time) into the ranker's feature matrix.

    ``fit`` learns what must be known before any request: item statistics as of the
    cut, the catalog (genres, release year), category levels and item embeddings. The
    retrieval models are fitted by the caller on the same cut and handed in.
    """

    def __init__(
        self,
        windows_days: tuple[int, ...] = WINDOWS_DAYS,
        last_items: int = LAST_ITEMS,
        embedding_dim: int = EMBEDDING_DIM,
        random_state: int = 42,
    ) -> None:
        self.windows_days = windows_days
        self.last_items = last_items
        self.embedding_dim = embedding_dim
        self.random_state = random_state

    # --- fitting ---------------------------------------------------------------------

    def fit(
        self,
        history: Interactions,
        retrievers: Mapping[str, Recommender],
        *,
        users: pd.DataFrame | None = None,
        items: pd.DataFrame | None = None,
        as_of: datetime | np.datetime64 | str | None = None,
    ) -> FeatureBuilder:
        """Learn item statistics from ``history`` before ``as_of`` (all of it when
        ``None``; the request time then defaults to its latest timestamp)."""
        cut = _as_datetime64(as_of)
        keep = np.ones(len(history), bool) if np.isnat(cut) else history.timestamps < cut
        if np.isnat(cut) and len(history) and not np.isnat(history.timestamps).all():
            cut = history.timestamps[~np.isnat(history.timestamps)].max()
        self.as_of_ = cut
        self.item_ids_ = history.item_ids
        n_items = history.n_items
        item = history.items[keep]
        values = history.values[keep].astype(np.float64)
        days = _days(history.timestamps[keep])
        now = _days(np.array([cut]))[0]

        # Shares, not counts: the fit stage holds less history than the test stage (and
        # than live traffic), and counts would shift with it.
        counts = np.bincount(item, minlength=n_items).astype(np.float64)
        self.item_share_ = 1000.0 * counts / max(counts.sum(), 1.0)
        windows = []
        for w in self.windows_days:
            if np.isnan(now):
                windows.append(np.full(n_items, np.nan))
                continue
            recent = np.bincount(item[days >= now - w], minlength=n_items).astype(np.float64)
            windows.append(1000.0 * recent / max(recent.sum(), 1.0))
        self.item_window_shares_ = np.stack(windows, axis=1).reshape(n_items, -1)
        active = np.bincount(history.users[keep], minlength=history.n_users)
        self.mean_user_count_ = np.array(active[active > 0].mean() if (active > 0).any() else 1.0)
        rated = ~np.isnan(values)
        sums = np.bincount(item[rated], weights=values[rated], minlength=n_items)
        counts = np.bincount(item[rated], minlength=n_items)
        with np.errstate(invalid="ignore", divide="ignore"):
            self.item_mean_value_ = np.where(counts > 0, sums / counts, np.nan)
        first = np.full(n_items, np.inf)
        timed = ~np.isnan(days)
        np.minimum.at(first, item[timed], days[timed])
        self.item_first_day_ = np.where(np.isinf(first), np.nan, first)

        self.genres_, self.item_genres_, self.release_year_ = _catalog(items, history.item_ids)
        self.time_edges_, self.item_time_shares_ = _time_shares(item, days, n_items, now)
        segment = _segments(_attributes_of(history.user_ids, users))[history.users[keep]]
        self.item_segment_shares_ = _segment_shares(item, segment, n_items)
        self.categories_ = {
            name: sorted({str(v) for v in users[name].dropna()})
            if users is not None and name in users
            else []
            for name in USER_CATEGORIES
        }
        self.embeddings_ = self._embeddings(item, history.users[keep], history.n_users, n_items)
        self.retrievers_ = dict(retrievers)
        for name, model in self.retrievers_.items():
            if len(model.item_ids_) != n_items or (model.item_ids_ != history.item_ids).any():
                raise ValueError(f"retriever {name!r} was fitted over another item index")
        self.feature_names_, self.categorical_features_ = self._names()
        return self

    def _embeddings(
        self, items: np.ndarray, users: np.ndarray, n_users: int, n_items: int
    ) -> np.ndarray:
        from sklearn.decomposition import TruncatedSVD

        matrix = sp.csr_matrix(
            (np.ones(len(items), np.float32), (items, users)), shape=(n_items, n_users)
        )
        matrix.sum_duplicates()
        matrix.data[:] = 1.0
        dim = max(1, min(self.embedding_dim, min(matrix.shape) - 1))
        vectors = TruncatedSVD(dim, random_state=self.random_state).fit_transform(matrix)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return (vectors / np.where(norms > 0, norms, 1.0)).astype(np.float32)

    def _names(self) -> tuple[list[str], list[str]]:
        windows = [f"{w}d" for w in self.windows_days]
        names = [
            "user_age_band", *[f"user_{c}" for c in USER_CATEGORIES],
            "user_activity", *[f"user_activity_{w}" for w in windows],
            "user_days_since_last", "user_days_since_first", "user_mean_value",
            *[f"user_genre_share_{g}" for g in self.genres_],
            *[f"item_genre_{g}" for g in self.genres_],
            "item_release_year", "item_age_years",
            "item_share", *[f"item_share_{w}" for w in windows],
            "item_mean_value", "item_days_since_first",
            *[f"{r}_{what}" for r in self.retrievers_ for what in ("score", "rank")],
            "genre_match", "last_items_max_similarity", "last_items_mean_similarity",
            "item_segment_lift", "item_share_while_user_active", "item_first_minus_user_last",
            "release_year_gap",
            "context_day_of_week", "context_hour",
        ]  # fmt: skip
        categorical = ["user_age_band", *[f"user_{c}" for c in USER_CATEGORIES]]
        return names, categorical

    # --- transforming ----------------------------------------------------------------

    def retrieval_scores(self, batch: Histories) -> dict[str, np.ndarray]:
        """Each retriever's scores over the catalog (people × items), seen items at -inf."""
        matrix = batch.matrix(len(self.item_ids_))
        out = {}
        for name, model in self.retrievers_.items():
            scores = model.score_histories(matrix).astype(np.float32, copy=False)
            rows = batch.row_of_each()
            scores[rows, batch.items] = -np.inf
            out[name] = scores
        return out

    def transform(
        self,
        batch: Histories,
        candidates: np.ndarray,
        now: datetime | np.datetime64 | str | Sequence[Any] | None = None,
        scores: Mapping[str, np.ndarray] | None = None,
    ) -> np.ndarray:
        """Features (people × candidates rows, person-major) as float32; categories are
        codes, unknowns NaN. ``candidates`` are item indices (people × C, -1 padding);
        ``now`` is the request time, one for all or one per person (default: the as-of
        time); ``scores`` reuses :meth:`retrieval_scores` when the caller has them."""
        n, c = candidates.shape
        if n != len(batch):
            raise ValueError(f"{len(batch)} histories but {n} candidate rows")
        if now is None:
            moments = np.full(n, self.as_of_)
        elif isinstance(now, (str, datetime, np.datetime64, pd.Timestamp)):
            moments = np.full(n, _as_datetime64(now))
        else:
            moments = np.array([_as_datetime64(m) for m in now], dtype="datetime64[us]")
        now_days = _days(moments)
        cand = np.maximum(candidates, 0)
        padded = candidates < 0

        columns: list[np.ndarray] = []

        def per_user(values: np.ndarray) -> None:  # one value per person → every row
            columns.append(np.repeat(np.asarray(values, np.float64), c))

        def per_row(values: np.ndarray) -> None:  # (n, C) → rows
            columns.append(np.asarray(values, np.float64).reshape(-1))

        # who they are
        attributes = batch.attributes
        ages = pd.to_numeric(attributes["age"], errors="coerce").to_numpy(np.float64)
        band = np.searchsorted(AGE_BAND_EDGES, ages, side="right").astype(np.float64)
        per_user(np.where(np.isnan(ages), np.nan, band))
        for name in USER_CATEGORIES:
            levels = {level: code for code, level in enumerate(self.categories_[name])}
            codes = np.array(
                [
                    -1 if v is None or pd.isna(v) else levels.get(str(v), -1)
                    for v in attributes[name]
                ],
                dtype=np.int64,
            )
            per_user(np.where(codes >= 0, codes, np.nan))

        # what they did before the request
        rows = batch.row_of_each()
        length = np.diff(batch.indptr).astype(np.float64)
        # Activity relative to the mean person's, for the same reason as item shares.
        per_user(length / float(self.mean_user_count_))
        for w in self.windows_days:
            recent = (batch.days >= now_days[rows] - w) & (batch.days < now_days[rows])
            counts = np.bincount(rows[recent], minlength=n) / float(self.mean_user_count_)
            per_user(np.where(np.isnan(now_days), np.nan, counts))
        last = np.full(n, -np.inf)
        first = np.full(n, np.inf)
        timed = ~np.isnan(batch.days)
        np.maximum.at(last, rows[timed], batch.days[timed])
        np.minimum.at(first, rows[timed], batch.days[timed])
        per_user(np.where(np.isinf(last), np.nan, now_days - last))
        per_user(np.where(np.isinf(first), np.nan, now_days - first))
        rated = ~np.isnan(batch.values)
        sums = np.bincount(rows[rated], weights=batch.values[rated], minlength=n)
        rated_counts = np.bincount(rows[rated], minlength=n)
        with np.errstate(invalid="ignore", divide="ignore"):
            per_user(np.where(rated_counts > 0, sums / rated_counts, np.nan))
        genre_share = np.zeros((n, len(self.genres_)))
        if len(self.genres_):
            np.add.at(genre_share, rows, self.item_genres_[batch.items])
            genre_share /= np.maximum(length, 1.0)[:, None]
        for g in range(len(self.genres_)):
            per_user(genre_share[:, g])

        # what the item is and how it was doing before the request
        item_genres = self.item_genres_[cand]  # (n, C, G)
        for g in range(len(self.genres_)):
            per_row(item_genres[:, :, g])
        year = self.release_year_[cand]
        per_row(year)
        now_year = 1970.0 + now_days / 365.2425
        per_row(now_year[:, None] - year)
        per_row(self.item_share_[cand])
        for w in range(len(self.windows_days)):
            per_row(self.item_window_shares_[cand, w])
        per_row(self.item_mean_value_[cand])
        per_row(now_days[:, None] - self.item_first_day_[cand])

        # how the retrieval models score the pair
        scores = scores if scores is not None else self.retrieval_scores(batch)
        for name in self.retrievers_:
            full = scores[name]
            order = np.argsort(-full, axis=1, kind="stable")
            ranks = np.empty_like(order)
            np.put_along_axis(ranks, order, np.arange(full.shape[1])[None, :], axis=1)
            # Standardised per person over the unseen catalog: raw scales differ
            # between models fitted on more or less history.
            finite = np.where(np.isinf(full), np.nan, full).astype(np.float64)
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                centre = np.nanmean(finite, axis=1, keepdims=True)
                spread = np.nanstd(finite, axis=1, keepdims=True)
            picked = np.take_along_axis(finite, cand, axis=1)
            per_row((picked - centre) / np.where(spread > 0, spread, 1.0))
            per_row(np.take_along_axis(ranks, cand, axis=1) + 1.0)
        if len(self.genres_):
            norm = np.linalg.norm(genre_share, axis=1, keepdims=True)
            share = genre_share / np.where(norm > 0, norm, 1.0)
            per_row(np.einsum("ng,ncg->nc", share, item_genres))
        else:
            per_row(np.full((n, c), np.nan))
        per_row_max, per_row_mean = self._last_items_similarity(batch, cand)
        per_row(per_row_max)
        per_row(per_row_mean)
        # How the item does among people like them (age band × gender), relative to all.
        segment_share = self.item_segment_shares_[cand, _segments(attributes)[:, None]]
        with np.errstate(all="ignore"):
            per_row(
                np.where(self.item_share_[cand] > 0, segment_share / self.item_share_[cand], np.nan)
            )
        # How popular the item was while they were active, and whether it existed then.
        per_row(self._share_while_active(batch, rows, cand))
        per_row(self.item_first_day_[cand] - np.where(np.isinf(last), np.nan, last)[:, None])
        years = self.release_year_[batch.items]
        dated = ~np.isnan(years)
        year_sum = np.bincount(rows[dated], weights=years[dated], minlength=n)
        year_count = np.bincount(rows[dated], minlength=n)
        with np.errstate(all="ignore"):
            mean_year = np.where(year_count > 0, year_sum / year_count, np.nan)
        per_row(self.release_year_[cand] - mean_year[:, None])

        # when the request happens
        stamps = pd.DatetimeIndex(moments)
        per_user(np.where(np.isnat(moments), np.nan, stamps.dayofweek.to_numpy(np.float64)))
        per_user(np.where(np.isnat(moments), np.nan, stamps.hour.to_numpy(np.float64)))

        features = np.column_stack(columns).astype(np.float32)
        features[padded.reshape(-1)] = np.nan
        return features

    def _share_while_active(
        self, batch: Histories, rows: np.ndarray, cand: np.ndarray
    ) -> np.ndarray:
        n_bins = self.item_time_shares_.shape[1]
        if n_bins == 0:
            return np.full(cand.shape, np.nan)
        timed = ~np.isnan(batch.days)
        which = np.clip(np.searchsorted(self.time_edges_, batch.days[timed], side="right") - 1,
                        0, n_bins - 1)  # fmt: skip
        weights = np.zeros((len(batch), n_bins))
        np.add.at(weights, (rows[timed], which), 1.0)
        total = weights.sum(axis=1, keepdims=True)
        weights = np.where(total > 0, weights / np.where(total > 0, total, 1.0), np.nan)
        return np.einsum("nb,ncb->nc", weights, self.item_time_shares_[cand])

    def _last_items_similarity(
        self, batch: Histories, cand: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        n = len(cand)
        last = np.full((n, self.last_items), -1, np.int64)
        for row in range(n):  # histories are time-sorted: the tail is the latest
            tail = batch.items[batch.indptr[row] : batch.indptr[row + 1]][-self.last_items :]
            last[row, : len(tail)] = tail
        valid = last >= 0
        sims = np.einsum(
            "ncd,nld->ncl", self.embeddings_[cand], self.embeddings_[np.maximum(last, 0)]
        ).astype(np.float64)
        sims[~np.broadcast_to(valid[:, None, :], sims.shape)] = np.nan
        has = valid.any(axis=1)[:, None]
        with np.errstate(all="ignore"):
            best = np.where(has, np.nanmax(np.where(np.isnan(sims), -np.inf, sims), axis=2), np.nan)
            mean = np.where(
                has,
                np.nansum(np.nan_to_num(sims), axis=2) / np.maximum(valid.sum(1), 1)[:, None],
                np.nan,
            )
        return best, mean


def _catalog(
    items: pd.DataFrame | None, item_ids: np.ndarray
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Genre names, the items' genre indicator matrix and release years (NaN unknown)."""
    n = len(item_ids)
    if items is None or items.empty:
        return [], np.zeros((n, 0), np.float32), np.full(n, np.nan)
    table = (
        items.assign(item_id=items["item_id"].astype(str))
        .drop_duplicates("item_id")
        .set_index("item_id")
    )
    table = table.reindex(pd.Index(item_ids.astype(str)))
    genre_lists = [
        [str(g) for g in genres] if isinstance(genres, (list, tuple, np.ndarray)) else []
        for genres in table.get("genres", pd.Series([None] * n))
    ]
    names = sorted({g for genres in genre_lists for g in genres})
    position = {g: i for i, g in enumerate(names)}
    matrix = np.zeros((n, len(names)), np.float32)
    for row, genres in enumerate(genre_lists):
        for g in genres:
            matrix[row, position[g]] = 1.0
    years = pd.to_numeric(table.get("release_year", pd.Series([None] * n)), errors="coerce")
    return names, matrix, years.to_numpy(np.float64)


_BUILDER_ARRAYS = (
    "item_ids", "item_share", "item_window_shares", "mean_user_count", "item_mean_value",
    "item_first_day", "time_edges", "item_time_shares", "item_segment_shares",
    "item_genres", "release_year", "embeddings",
)  # fmt: skip


def save_builder(builder: FeatureBuilder, folder: str | Path) -> Path:
    """Write a fitted builder's state (NumPy arrays and JSON, no pickle); its retrievers
    are saved by their owner."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {name: getattr(builder, f"{name}_") for name in _BUILDER_ARRAYS}
    arrays["item_ids"] = arrays["item_ids"].astype(str)
    np.savez(folder / "builder.npz", **arrays)
    meta = {
        "params": {
            "windows_days": list(builder.windows_days),
            "last_items": builder.last_items,
            "embedding_dim": builder.embedding_dim,
            "random_state": builder.random_state,
        },
        "as_of": None if np.isnat(builder.as_of_) else str(builder.as_of_),
        "genres": builder.genres_,
        "categories": builder.categories_,
        "retrievers": list(builder.retrievers_),
    }
    (folder / "builder.json").write_text(json.dumps(meta, indent=2))
    return folder


def load_builder(folder: str | Path, retrievers: Mapping[str, Recommender]) -> FeatureBuilder:
    """A builder written by :func:`save_builder`, with its (loaded) retrievers."""
    folder = Path(folder)
    meta = json.loads((folder / "builder.json").read_text())
    params = meta["params"]
    builder = FeatureBuilder(**{**params, "windows_days": tuple(params["windows_days"])})
    with np.load(folder / "builder.npz", allow_pickle=False) as arrays:
        for name in _BUILDER_ARRAYS:
            setattr(builder, f"{name}_", arrays[name])
    builder.item_ids_ = builder.item_ids_.astype(object)
    builder.as_of_ = _as_datetime64(meta["as_of"])
    builder.genres_ = list(meta["genres"])
    builder.categories_ = {k: list(v) for k, v in meta["categories"].items()}
    missing = [name for name in meta["retrievers"] if name not in retrievers]
    if missing:
        raise ValueError(f"{folder}: the builder needs the retrievers {missing}")
    builder.retrievers_ = {name: retrievers[name] for name in meta["retrievers"]}
    builder.feature_names_, builder.categorical_features_ = builder._names()
    return builder


#: Time bins of "popularity while the person was active".
TIME_BINS = 32
_GENDERS = ("F", "M")


def _time_shares(items: np.ndarray, days: np.ndarray, n_items: int, now: float
                 ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Bin edges over the history's time span and each item's share (per thousand) of the
    interactions of each bin; empty when the history has no times."""
    timed = ~np.isnan(days)
    if not timed.any() or np.isnan(now):
        return np.zeros(0), np.zeros((n_items, 0))
    edges = np.linspace(days[timed].min(), max(now, days[timed].max()), TIME_BINS + 1)
    which = np.clip(np.searchsorted(edges, days[timed], side="right") - 1, 0, TIME_BINS - 1)
    counts = np.zeros((n_items, TIME_BINS))
    np.add.at(counts, (items[timed], which), 1.0)
    totals = counts.sum(axis=0, keepdims=True)
    return edges, 1000.0 * counts / np.where(totals > 0, totals, 1.0)


def _segments(attributes: pd.DataFrame) -> np.ndarray:
    """Segment index (age band × gender, unknowns their own level) of each person."""
    ages = pd.to_numeric(attributes["age"], errors="coerce").to_numpy(np.float64)
    band = np.where(np.isnan(ages), len(AGE_BAND_EDGES) + 1,
                    np.searchsorted(AGE_BAND_EDGES, ages, side="right"))  # fmt: skip
    gender = np.array([_GENDERS.index(g) if g in _GENDERS else len(_GENDERS)
                       for g in attributes["gender"]], dtype=np.int64)  # fmt: skip
    return (band * (len(_GENDERS) + 1) + gender).astype(np.int64)


N_SEGMENTS = (len(AGE_BAND_EDGES) + 2) * (len(_GENDERS) + 1)


def _segment_shares(items: np.ndarray, segment: np.ndarray, n_items: int) -> np.ndarray:
    counts = np.zeros((n_items, N_SEGMENTS))
    np.add.at(counts, (items, segment), 1.0)
    totals = counts.sum(axis=0, keepdims=True)
    # A segment nobody was in is unknown (NaN), not "nobody like them took anything".
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, 1000.0 * counts / totals, np.nan)
