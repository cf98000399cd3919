"""Top-k ranking metrics with binary relevance, vectorised over users (NumPy/SciPy only).

This is Bespoke's one definition of the ranking metrics (DESIGN.md, "Measuring"). It follows
Microsoft Recommenders' ``python_evaluation`` (``precision_at_k``, ``recall_at_k``,
``ndcg_at_k`` with binary scores, ``map``, ``map_at_k``), so numbers can be set beside the
published benchmark figures.

Inputs
------
``recommended`` is an integer array of shape ``(n_users, n_cols)``: row ``u`` lists item
indices for user ``u``, best first; ``-1`` means "no item" (padding). Only the first ``k``
columns count; if ``n_cols < k`` the missing positions are treated as padding.
``relevant`` is a SciPy sparse matrix (or sparse array) of shape ``(n_users, n_items)``
holding the held-out (test) interactions: every stored entry whose value is non-zero is
relevant (binary relevance; the value itself is ignored, explicit zeros are not relevant).

Removing items the user already saw in training is the recommender's job (its
``recommend(..., filter_seen=True)``); the metrics take the list as given, so a training
item left in the list simply occupies a position and, not being in the test set, misses.

Definitions
-----------
Let ``R_u`` be the set of relevant items of user ``u`` and ``n_u = |R_u|``.

* Evaluated users: the users with ``n_u >= 1``. Every average below is the plain mean over
  the evaluated users; users without relevant items are skipped, not counted as zeros. A
  user who has relevant items but no recommendations (all padding) is evaluated and scores
  0 on every per-user metric.
* Hits: ``hit(u, r)`` (rank ``r = 1..k``) is true when the item at rank ``r`` is in ``R_u``.
  Padding is never a hit. An item repeated within a row counts only at its first
  occurrence: later occurrences are treated exactly like padding by every metric (no hit,
  not counted for coverage or popularity), but they still use up their rank position.
  ``h_u = sum_r hit(u, r)`` is the number of hits in the top k.
* ``precision@k = h_u / k`` (always divided by ``k``, even for a shorter list).
* ``recall@k = h_u / n_u``.
* ``ndcg@k = DCG_u / IDCG_u`` with ``DCG_u = sum_{r: hit(u, r)} 1 / log2(r + 1)`` and
  ``IDCG_u = sum_{r=1}^{min(n_u, k)} 1 / log2(r + 1)``. (The log base cancels, so this
  equals Microsoft Recommenders' natural-log default.)
* Average precision: with ``P_u(r) = (hits of u in ranks 1..r) / r`` and
  ``S_u = sum_{r <= k: hit(u, r)} P_u(r)``,
  ``map`` averages ``AP_u = S_u / n_u`` (Microsoft Recommenders' "MAP", divided by the
  number of relevant items) and ``map@k`` averages ``AP@k_u = S_u / min(k, n_u)``.
* ``hit_rate@k``: the share of evaluated users with ``h_u >= 1``.
* ``coverage@k``: the number of distinct items recommended (non-padding, within the top k)
  to evaluated users, divided by ``n_items``.
* ``mean_popularity@k``: the mean of ``item_popularity`` over every recommended item
  (non-padding, first occurrences, within the top k) of the evaluated users, pooled over
  positions (an item recommended to 100 users counts 100 times); NaN when
  ``item_popularity`` is None or nothing was recommended.

With no evaluated user at all, the per-user averages are NaN and coverage is 0.0.

Difference from Microsoft Recommenders: there, only users present in both the test data
and the predictions are evaluated, so a user with no recommendations at all is dropped;
here such a user is evaluated and scores 0. With a recommender that returns ``k`` items
for every user (as in the published benchmarks) the two agree.

Errors
------
``TypeError`` when ``relevant`` is not a SciPy sparse matrix, ``recommended`` is not an
integer array or ``k`` is not an integer; ``ValueError`` when ``recommended`` is not 2-D,
its row count differs from ``relevant``'s, ``k < 1``, any entry of ``recommended`` (all
columns, not only the top k) is below -1 or at least ``n_items``, or ``item_popularity``
does not have shape ``(n_items,)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

__all__ = [
    "PAD",
    "UserMetrics",
    "hits_matrix",
    "per_user_metrics",
    "ranking_metrics",
]

#: The padding value in ``recommended``: no item at this position.
PAD = -1


@dataclass(frozen=True)
class UserMetrics:
    """Per-user values for the evaluated users (those with at least one relevant item).

    Every array has one entry per evaluated user, in the order of ``users``.
    """

    users: np.ndarray  # int64 row indices into ``recommended`` / ``relevant``
    n_relevant: np.ndarray  # int64, n_u
    n_hits: np.ndarray  # int64, h_u
    precision: np.ndarray  # float64, precision@k
    recall: np.ndarray  # float64, recall@k
    ndcg: np.ndarray  # float64, ndcg@k
    ap: np.ndarray  # float64, AP_u (divided by n_u), averaged by "map"
    ap_at_k: np.ndarray  # float64, AP@k_u (divided by min(k, n_u)), averaged by "map@k"
    hit: np.ndarray  # bool, h_u >= 1


@dataclass(frozen=True)
class _Prepared:
    top: np.ndarray  # (n_users, k) int64, repeats and missing columns set to PAD
    n_relevant: np.ndarray  # (n_users,) int64
    hits: np.ndarray  # (n_users, k) bool
    n_items: int


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer):
        raise TypeError(f"k must be an integer, got {type(k).__name__}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    return int(k)


def _relevant_keys(relevant: sp.spmatrix | sp.sparray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique ``user * n_items + item`` keys of the relevant pairs, and n_u per user."""
    n_users, n_items = relevant.shape
    coo = sp.coo_matrix(relevant)
    nonzero = coo.data != 0
    rows = coo.row[nonzero].astype(np.int64)
    cols = coo.col[nonzero].astype(np.int64)
    keys = np.unique(rows * n_items + cols)  # also merges duplicate stored entries
    if n_items == 0:
        return keys, np.zeros(n_users, dtype=np.int64)
    n_relevant = np.bincount(keys // n_items, minlength=n_users).astype(np.int64)
    return keys, n_relevant


def _top_k(recommended: np.ndarray, k: int) -> np.ndarray:
    """The first k columns as int64 (padded to k), with repeats within a row set to PAD."""
    n_users, n_cols = recommended.shape
    top = np.full((n_users, k), PAD, dtype=np.int64)
    used = min(k, n_cols)
    top[:, :used] = recommended[:, :used]
    if used > 1:
        # A stable sort keeps equal items in rank order, so within each run of equal items
        # every element after the first is a later occurrence.
        order = np.argsort(top[:, :used], axis=1, kind="stable")
        ordered = np.take_along_axis(top[:, :used], order, axis=1)
        rows, cols = np.nonzero(ordered[:, 1:] == ordered[:, :-1])
        top[rows, order[rows, cols + 1]] = PAD
    return top


def _prepare(recommended: np.ndarray, relevant: sp.spmatrix | sp.sparray, k: int) -> _Prepared:
    if not sp.issparse(relevant):
        raise TypeError(
            f"relevant must be a scipy.sparse matrix (users x items), got {type(relevant).__name__}"
        )
    k = _check_k(k)
    recommended = np.asarray(recommended)
    if recommended.ndim != 2:
        raise ValueError(f"recommended must be 2-D (n_users, k), got shape {recommended.shape}")
    if not np.issubdtype(recommended.dtype, np.integer):
        raise TypeError(
            f"recommended must hold integer item indices, got dtype {recommended.dtype}"
        )
    n_users, n_items = relevant.shape
    if recommended.shape[0] != n_users:
        raise ValueError(
            f"recommended has {recommended.shape[0]} rows but relevant has {n_users} "
            "(one row per user in both)"
        )
    if recommended.size:
        low, high = int(recommended.min()), int(recommended.max())
        if low < PAD:
            raise ValueError(
                f"recommended holds item index {low}; the smallest allowed is -1 (padding)"
            )
        if high >= n_items:
            raise ValueError(
                f"recommended holds item index {high}, but relevant has only {n_items} items "
                f"(valid indices 0..{n_items - 1}, or -1 for padding)"
            )
    top = _top_k(recommended, k)
    keys, n_relevant = _relevant_keys(relevant)
    hits = np.zeros(top.shape, dtype=bool)
    rows, cols = np.nonzero(top != PAD)
    if rows.size and keys.size:
        wanted = rows.astype(np.int64) * n_items + top[rows, cols]
        at = np.searchsorted(keys, wanted)
        found = keys[np.minimum(at, keys.size - 1)] == wanted
        hits[rows[found], cols[found]] = True
    return _Prepared(top=top, n_relevant=n_relevant, hits=hits, n_items=n_items)


def hits_matrix(
    recommended: np.ndarray, relevant: sp.spmatrix | sp.sparray, k: int = 10
) -> np.ndarray:
    """``hit(u, r)`` for every user and rank: a bool array of shape ``(n_users, k)``.

    Column ``r - 1`` is rank ``r``. Padding, positions beyond the given columns and later
    occurrences of a repeated item are False.
    """
    return _prepare(recommended, relevant, k).hits


def _per_user(prepared: _Prepared, k: int) -> UserMetrics:
    users = np.flatnonzero(prepared.n_relevant > 0)
    hits = prepared.hits[users]
    n_relevant = prepared.n_relevant[users]
    n_hits = hits.sum(axis=1, dtype=np.int64)
    discount = 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))  # rank r -> 1/log2(r+1)
    dcg = hits.astype(np.float64) @ discount
    idcg = np.cumsum(discount)[np.minimum(n_relevant, k) - 1]
    precision_at_rank = np.cumsum(hits, axis=1) / np.arange(1, k + 1, dtype=np.float64)
    ap_sum = np.where(hits, precision_at_rank, 0.0).sum(axis=1)
    return UserMetrics(
        users=users.astype(np.int64),
        n_relevant=n_relevant,
        n_hits=n_hits,
        precision=n_hits / k,
        recall=n_hits / n_relevant,
        ndcg=dcg / idcg,
        ap=ap_sum / n_relevant,
        ap_at_k=ap_sum / np.minimum(n_relevant, k),
        hit=n_hits > 0,
    )


def per_user_metrics(
    recommended: np.ndarray, relevant: sp.spmatrix | sp.sparray, k: int = 10
) -> UserMetrics:
    """Per-user precision@k, recall@k, ndcg@k, AP and AP@k for the evaluated users.

    Averaging these arrays gives the values :func:`ranking_metrics` reports.
    """
    k = _check_k(k)
    return _per_user(_prepare(recommended, relevant, k), k)


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else float("nan")


def ranking_metrics(
    recommended: np.ndarray,
    relevant: sp.spmatrix | sp.sparray,
    k: int = 10,
    item_popularity: np.ndarray | None = None,
) -> dict[str, float]:
    """All ranking metrics of the module docstring, keyed with the literal k.

    Returns ``{"ndcg@k", "precision@k", "recall@k", "map", "map@k", "hit_rate@k",
    "coverage@k", "mean_popularity@k"}`` with ``k`` replaced by its value, e.g.
    ``"ndcg@10"``. ``item_popularity`` (shape ``(n_items,)``) is the popularity of each
    item in the training data; without it ``mean_popularity@k`` is NaN.
    """
    k = _check_k(k)
    prepared = _prepare(recommended, relevant, k)
    if item_popularity is not None:
        item_popularity = np.asarray(item_popularity, dtype=np.float64)
        if item_popularity.shape != (prepared.n_items,):
            raise ValueError(
                f"item_popularity must have shape ({prepared.n_items},), one value per item, "
                f"got {item_popularity.shape}"
            )
    users = _per_user(prepared, k)
    shown = prepared.top[users.users]
    shown = shown[shown != PAD]
    coverage = np.unique(shown).size / prepared.n_items if shown.size else 0.0
    if item_popularity is None or shown.size == 0:
        mean_popularity = float("nan")
    else:
        mean_popularity = float(item_popularity[shown].mean())
    return {
        f"ndcg@{k}": _mean(users.ndcg),
        f"precision@{k}": _mean(users.precision),
        f"recall@{k}": _mean(users.recall),
        "map": _mean(users.ap),
        f"map@{k}": _mean(users.ap_at_k),
        f"hit_rate@{k}": _mean(users.hit.astype(np.float64)),
        f"coverage@{k}": float(coverage),
        f"mean_popularity@{k}": mean_popularity,
    }


def calibration_metrics(
    probabilities: np.ndarray, labels: np.ndarray, bins: int = 10
) -> dict[str, float]:
    """How good and how honest predicted click probabilities are.

    ``auc`` (ROC), ``logloss``, ``brier`` (mean squared error of the probability) and
    ``ece``: the expected calibration error over ``bins`` equal-width probability bins,
    ``sum_b (n_b / n) * |mean(label in b) - mean(probability in b)|``.
    """
    from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64)
    if probabilities.shape != labels.shape or probabilities.ndim != 1:
        raise ValueError(
            f"probabilities {probabilities.shape} and labels {labels.shape} must be "
            "one-dimensional and of the same length"
        )
    if len(np.unique(labels)) < 2:
        raise ValueError("calibration metrics need both positive and negative labels")
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    clipped = np.clip(probabilities, 1e-7, 1 - 1e-7)
    which = np.minimum((probabilities * bins).astype(np.int64), bins - 1)
    mean_label = np.bincount(which, weights=labels, minlength=bins)
    mean_probability = np.bincount(which, weights=probabilities, minlength=bins)
    ece = float(np.abs(mean_label - mean_probability).sum() / len(labels))
    return {
        "auc": float(roc_auc_score(labels, probabilities)),
        "logloss": float(log_loss(labels, clipped, labels=[0, 1])),
        "brier": float(brier_score_loss(labels, probabilities)),
        "ece": ece,
    }
