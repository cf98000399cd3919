"""The estimator contract every recommender follows (see DESIGN.md).

No work in ``__init__`` (it only keeps the parameters); ``fit`` returns ``self`` and sets
the fitted attributes, which end in ``_``; ``recommend`` and ``recommend_from_history``
return ids and scores; ``save``/``load`` write NumPy arrays and JSON, never pickles.

A family implements three things: ``_fit(matrix, callback, show_progress)``,
``_scores(history) -> (n, n_items) scores`` for rows of a user × item matrix, and the
arrays that make up its state. Everything else — id maps, filtering seen and excluded
items, the popularity fallback for unknown users, top-k — is here, once.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import scipy.sparse as sp

from bespoke.training.data import Interactions

#: ``callback(iteration, metrics) -> bool``: the single hook for progress, logging and
#: pruning; returning False stops training early (as with implicit's fit callbacks).
FitCallback = Callable[[int, dict[str, float]], bool | None]

_STATE_FILE = "state.npz"
_META_FILE = "model.json"


class NotFittedError(RuntimeError):
    """A model was used before ``fit`` or ``load``."""


class StopTraining(Exception):
    """Raised by an iterative family's per-iteration hook when the callback returned
    False; the family catches it and keeps the model as trained so far."""


def notify(callback: FitCallback | None, iteration: int, metrics: dict[str, float]) -> None:
    """Call ``callback``; raise :class:`StopTraining` when it asks to stop."""
    if callback is not None and callback(iteration, metrics) is False:
        raise StopTraining


class Recommender:
    """Base class of every recommender family."""

    family: ClassVar[str]
    #: The names of the fitted arrays (``name_``) that make up the model's state.
    state_arrays: ClassVar[tuple[str, ...]] = ()
    #: Whether ``fit`` runs ``iterations`` rounds, calling the callback after each and
    #: stopping when it returns False (one-shot families call it once, at the end).
    iterative: ClassVar[bool] = False
    #: The optional extra (``pip install 'bespoke[<extra>]'``) that ``fit`` needs, if any:
    #: the base install scores and loads every family, but fits these only with it.
    requires_extra: ClassVar[str | None] = None

    def needs_item_text(self) -> bool:
        """Whether ``fit`` takes the items' text (content models and blends with one)."""
        import inspect

        return "item_text" in inspect.signature(self.fit).parameters

    def get_params(self) -> dict[str, Any]:
        """The constructor's parameters (what ``__init__`` kept)."""
        return {
            k: v for k, v in vars(self).items() if not k.endswith("_") and not k.startswith("_")
        }

    # --- fitting ---------------------------------------------------------------------

    def fit(
        self,
        interactions: Interactions,
        *,
        callback: FitCallback | None = None,
        show_progress: bool = False,
    ) -> Self:
        """Learn from ``interactions``; returns ``self``."""
        matrix = interactions.matrix("binary")
        self.user_ids_ = interactions.user_ids
        self.item_ids_ = interactions.item_ids
        self.seen_ = matrix
        self.popularity_ = np.asarray(matrix.sum(axis=0)).ravel().astype(np.float32)
        self._fit(matrix, callback, show_progress)
        return self

    def _fit(
        self, matrix: sp.csr_matrix, callback: FitCallback | None, show_progress: bool
    ) -> None:
        raise NotImplementedError

    def _scores(self, history: sp.csr_matrix, users: np.ndarray | None) -> np.ndarray:
        """Scores (n, n_items) for rows of ``history``; ``users`` are their training
        indices when they are training users (models with per-user state use them)."""
        raise NotImplementedError

    # --- recommending ----------------------------------------------------------------

    def recommend(
        self,
        user_ids: Iterable[Any],
        k: int = 10,
        filter_seen: bool = True,
        exclude: Iterable[Any] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The top ``k`` item ids and scores for each user, best first.

        Users the model has not seen get the most popular items. Rows are padded with
        ``None`` ids and ``-inf`` scores when fewer than ``k`` items are left.
        """
        self._check_fitted()
        users = _index(self.user_ids_, list(user_ids))
        known = users >= 0
        scores = np.empty((len(users), len(self.item_ids_)), np.float32)
        if known.any():
            scores[known] = self._user_scores(users[known])
        if (~known).any():
            scores[~known] = self.popularity_
        history = None
        if filter_seen:  # the seen items of known users; unknown users have none
            rows = np.flatnonzero(known)
            pick = sp.csr_matrix(
                (np.ones(len(rows), np.float32), (rows, users[known])),
                shape=(len(users), len(self.user_ids_)),
            )
            history = (pick @ self.seen_).tocsr()
        return self._top(scores, k, history, exclude)

    def recommend_from_history(
        self, items: Iterable[Any], k: int = 10, exclude: Iterable[Any] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The top ``k`` item ids and scores for someone who interacted with ``items``
        (a new or real-time user); items in the history are not recommended."""
        self._check_fitted()
        indices = _index(self.item_ids_, items if isinstance(items, list) else list(items))
        known = np.zeros(len(self.item_ids_), bool)  # distinct and sorted, as CSR wants
        known[indices[indices >= 0]] = True
        indices = np.flatnonzero(known)
        if len(indices):
            # One CSR row built from its parts (a live request's cost is in microseconds:
            # the (row, col) constructor converts through COO first).
            history = sp.csr_matrix(
                (np.ones(len(indices), np.float32), indices, np.array([0, len(indices)])),
                shape=(1, len(self.item_ids_)),
            )
            scores = self._scores(history, None)
        else:
            scores = self.popularity_[None, :].astype(np.float32)
        scores[0, indices] = -np.inf  # the history itself is not recommended
        ids, values = self._top(scores, k, None, exclude)
        return ids[0], values[0]

    def score_histories(self, history: sp.csr_matrix) -> np.ndarray:
        """Scores (n, n_items) from interaction histories alone (rows over the model's
        item index), whoever the users are: the path shared by offline ranking features
        and live requests. An empty history gets the popularity scores."""
        self._check_fitted()
        history = sp.csr_matrix(history, dtype=np.float32)
        scores = self._scores(history, None)
        empty = np.diff(history.indptr) == 0
        if empty.any():
            scores[empty] = self.popularity_
        return scores

    def recommend_indices(
        self, users: np.ndarray, k: int = 10, filter_seen: bool = True
    ) -> np.ndarray:
        """Top-``k`` item indices (-1 padded) for training-user indices: the evaluation path."""
        self._check_fitted()
        scores = self._user_scores(users)
        if filter_seen:
            _mask(scores, self.seen_[users])
        return _top_indices(scores, k)

    def _user_scores(self, users: np.ndarray) -> np.ndarray:
        """Scores for training-user indices, from their training histories alone: what
        :meth:`recommend_from_history` (the service's call) computes for them, so that
        evaluation, and the champion gate through it, measure what is served. Models
        with learned user factors (ALS, BPR) fold the history in rather than use them.
        A user with no training history gets the popularity fallback."""
        return self.score_histories(self.seen_[users])

    def _top(
        self,
        scores: np.ndarray,
        k: int,
        history: sp.csr_matrix | None,
        exclude: Iterable[Any] | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if history is not None:
            _mask(scores, history)
        if exclude is not None:
            excluded = _index(self.item_ids_, list(exclude))
            scores[:, excluded[excluded >= 0]] = -np.inf
        top = _top_indices(scores, k)
        found = np.maximum(top, 0)
        ids = np.where(top >= 0, self.item_ids_[found], None)
        values = np.where(top >= 0, scores[np.arange(len(scores))[:, None], found], -np.inf)
        return ids, values.astype(np.float32)

    def _check_fitted(self) -> None:
        if not hasattr(self, "item_ids_"):
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted: call fit() or load() first"
            )

    # --- persistence -----------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the model to the folder ``path`` (NumPy arrays and JSON, no pickle)."""
        self._check_fitted()
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        seen = self.seen_.tocsr()
        arrays = {
            "user_ids": self.user_ids_.astype(str),
            "item_ids": self.item_ids_.astype(str),
            "seen_indptr": seen.indptr,
            "seen_indices": seen.indices,
            "popularity": self.popularity_,
            **{name: getattr(self, f"{name}_") for name in self.state_arrays},
        }
        np.savez(folder / _STATE_FILE, **arrays)
        meta = {"family": self.family, "params": self.get_params()}
        (folder / _META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        return folder

    @classmethod
    def load(cls, path: str | Path) -> Self:
        """A model written by :meth:`save`."""
        folder = Path(path)
        meta = json.loads((folder / _META_FILE).read_text())
        if meta["family"] != cls.family:
            raise ValueError(f"{folder} holds a {meta['family']!r} model, not {cls.family!r}")
        model = cls(**meta["params"])
        with np.load(folder / _STATE_FILE, allow_pickle=False) as arrays:
            model.user_ids_ = arrays["user_ids"].astype(object)
            model.item_ids_ = arrays["item_ids"].astype(object)
            shape = (len(model.user_ids_), len(model.item_ids_))
            indices = arrays["seen_indices"]
            model.seen_ = sp.csr_matrix(
                (np.ones(len(indices), np.float32), indices, arrays["seen_indptr"]), shape=shape
            )
            model.popularity_ = arrays["popularity"]
            for name in cls.state_arrays:
                setattr(model, f"{name}_", arrays[name])
        model._after_load()
        return model

    def _after_load(self) -> None:
        """Rebuild anything derived from the state arrays (e.g. a library's model)."""


STATE_FILE = _STATE_FILE


def saved_users(state_file: Path, user_ids: Iterable[str]) -> int:
    """How many of ``user_ids`` a saved model's state (:meth:`Recommender.save`) holds."""
    with np.load(state_file, allow_pickle=False) as arrays:
        return int(np.isin(arrays["user_ids"].astype(str), list(user_ids)).sum())


def rename_saved_users(state_file: Path, renamed: Callable[[str], str]) -> int:
    """Write a saved model's state again with its user ids renamed (an HMAC key rotation
    re-keys ids that are e-mail pseudonyms); the new file replaces the old one
    atomically. Returns how many were renamed (0: the file is left untouched)."""
    import os

    with np.load(state_file, allow_pickle=False) as stored:
        arrays = {name: stored[name] for name in stored.files}
    users = arrays["user_ids"].astype(str)
    new = np.array([renamed(u) for u in users], dtype=str) if len(users) else users
    moved = int((new != users).sum())
    if not moved:
        return 0
    arrays["user_ids"] = new
    temporary = state_file.with_name(state_file.stem + ".tmp.npz")
    np.savez(temporary, **arrays)
    with open(temporary, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(temporary, state_file)
    return moved


def remove_saved_users(state_file: Path, user_ids: Iterable[str]) -> int:
    """Write a saved model's state again without ``user_ids``: their index entries, the
    items they were seen with and every per-user array (``user_*`` with a row per user,
    such as ALS's factors); item-side state is left as it is. The new file replaces the
    old one atomically. Returns how many users were removed."""
    import os

    with np.load(state_file, allow_pickle=False) as stored:
        arrays = {name: stored[name] for name in stored.files}
    users = arrays["user_ids"].astype(str)
    drop = np.isin(users, list(user_ids))
    if not drop.any():
        return 0
    keep = np.flatnonzero(~drop)
    indices = arrays["seen_indices"]
    seen = sp.csr_matrix(
        (np.ones(len(indices), np.float32), indices, arrays["seen_indptr"]),
        shape=(len(users), len(arrays["item_ids"])),
    )[keep]
    arrays["seen_indptr"], arrays["seen_indices"] = seen.indptr, seen.indices
    for name, values in arrays.items():
        if name.startswith("user_") and values.ndim and values.shape[0] == len(users):
            arrays[name] = values[keep]
    temporary = state_file.with_name(state_file.stem + ".tmp.npz")
    np.savez(temporary, **arrays)
    with open(temporary, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(temporary, state_file)
    return int(drop.sum())


#: id(item index array) -> (a weak reference to it, its id -> position mapping): a live
#: request looks up a handful of ids, and building a hash table over the whole catalog
#: each time would cost more than the lookups.
_LOOKUPS: dict[int, tuple[weakref.ref, dict[str, int]]] = {}


def _index(ids: np.ndarray, wanted: list[Any]) -> np.ndarray:
    """Positions of ``wanted`` (compared as strings) in ``ids``; -1 where absent."""
    cached = _LOOKUPS.get(id(ids))
    if cached is None or cached[0]() is not ids:
        lookup = {str(item): position for position, item in enumerate(ids)}
        key = id(ids)
        _LOOKUPS[key] = (weakref.ref(ids, lambda _, key=key: _LOOKUPS.pop(key, None)), lookup)
    else:
        lookup = cached[1]
    return np.fromiter((lookup.get(str(w), -1) for w in wanted), np.int64, len(wanted))


def _mask(scores: np.ndarray, history: sp.csr_matrix) -> None:
    """Every item of each row's history to ``-inf`` (read from the CSR arrays: no COO)."""
    history = history.tocsr()
    rows = np.repeat(np.arange(history.shape[0]), np.diff(history.indptr))
    scores[rows, history.indices] = -np.inf


def _top_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` best scores per row, best first (ties: lower index); -1 where
    fewer than ``k`` finite scores remain."""
    k_eff = min(k, scores.shape[1])
    negated = -scores
    part = (
        np.argpartition(negated, k_eff - 1, axis=1)[:, :k_eff]
        if k_eff < scores.shape[1]
        else np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    )
    # Plain fancy indexing over (rows, columns): take_along_axis costs more per call on
    # the one-row arrays of live requests.
    rows = np.arange(len(scores))[:, None]
    order = np.lexsort((part, negated[rows, part]), axis=1)
    top = part[rows, order]
    top = np.where(np.isfinite(scores[rows, top]), top, -1)
    if k_eff < k:
        top = np.hstack([top, np.full((len(top), k - k_eff), -1)])
    return top
