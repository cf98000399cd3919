"""Ranking metrics match hand-computed cases, handle padding, repeats, truncation and
users without relevant items as documented, reject bad input, and agree with a slow
pure-Python reference on random data."""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

import numpy as np
import pytest
import scipy.sparse as sp

from bespoke.training.metrics import (
    UserMetrics,
    hits_matrix,
    per_user_metrics,
    ranking_metrics,
)

log2 = math.log2


def _relevant(rows: Sequence[Sequence[int]], n_items: int) -> sp.csr_matrix:
    """One row of relevant item indices per user, as a binary CSR matrix."""
    users = [u for u, items in enumerate(rows) for _ in items]
    items = [i for row in rows for i in row]
    return sp.csr_matrix(
        (np.ones(len(items)), (users, items)), shape=(len(rows), n_items), dtype=np.float64
    )


def _approx(expected: float) -> object:
    return pytest.approx(expected, rel=1e-12, abs=1e-15)


# --- the main hand-computed case: k = 4, 12 items -------------------------------------
#
# user 0: relevant {1, 3, 5};              list [1, 2, 3, 9]    hits at ranks 1 and 3
# user 1: relevant {0, 2, 4, 6, 8, 9};     list [7, 4, 5, 0]    hits at ranks 2 and 4
# user 2: no relevant item (skipped);      list [10, 11, 1, 2]
# user 3: relevant {7};                    list [2, 6, -1, -1]  no hit, padded
K = 4
N_ITEMS = 12
RECOMMENDED = np.array([[1, 2, 3, 9], [7, 4, 5, 0], [10, 11, 1, 2], [2, 6, -1, -1]])
RELEVANT = _relevant([[1, 3, 5], [0, 2, 4, 6, 8, 9], [], [7]], N_ITEMS)
POPULARITY = np.arange(N_ITEMS) / 100  # item i has popularity i/100

PRECISION = [Fraction(2, 4), Fraction(2, 4), Fraction(0, 4)]
RECALL = [Fraction(2, 3), Fraction(2, 6), Fraction(0, 1)]
NDCG = [
    (1 / log2(2) + 1 / log2(4)) / (1 / log2(2) + 1 / log2(3) + 1 / log2(4)),
    (1 / log2(3) + 1 / log2(5)) / (1 / log2(2) + 1 / log2(3) + 1 / log2(4) + 1 / log2(5)),
    0.0,
]
# Precision at each hit rank: user 0 -> 1/1 and 2/3; user 1 -> 1/2 and 2/4.
AP = [(Fraction(1, 1) + Fraction(2, 3)) / 3, (Fraction(1, 2) + Fraction(2, 4)) / 6, Fraction(0)]
AP_AT_K = [
    (Fraction(1, 1) + Fraction(2, 3)) / min(K, 3),
    (Fraction(1, 2) + Fraction(2, 4)) / min(K, 6),
    Fraction(0),
]


def test_hand_computed_case() -> None:
    result = ranking_metrics(RECOMMENDED, RELEVANT, k=K, item_popularity=POPULARITY)

    assert list(result) == [
        "ndcg@4",
        "precision@4",
        "recall@4",
        "map",
        "map@4",
        "hit_rate@4",
        "coverage@4",
        "mean_popularity@4",
    ]
    assert result["precision@4"] == _approx(float(sum(PRECISION) / 3))
    assert result["precision@4"] == _approx(1 / 3)
    assert result["recall@4"] == _approx(float(sum(RECALL) / 3))
    assert result["recall@4"] == _approx(1 / 3)
    assert result["ndcg@4"] == _approx(sum(NDCG) / 3)
    assert result["map"] == _approx(float(sum(AP) / 3))
    assert result["map"] == _approx(float(Fraction(5, 9) + Fraction(1, 6)) / 3)
    assert result["map@4"] == _approx(float(sum(AP_AT_K) / 3))
    assert result["map@4"] == _approx(float(Fraction(5, 9) + Fraction(1, 4)) / 3)
    assert result["hit_rate@4"] == _approx(2 / 3)
    # Items shown to users 0, 1 and 3: {0, 1, 2, 3, 4, 5, 6, 7, 9}; 10 and 11 only went to
    # user 2, who is not evaluated.
    assert result["coverage@4"] == _approx(9 / 12)
    # Pooled over the 10 shown positions of users 0, 1, 3 (item 2 shown twice).
    assert result["mean_popularity@4"] == _approx(
        (1 + 2 + 3 + 9 + 7 + 4 + 5 + 0 + 2 + 6) / 10 / 100
    )


def test_hand_computed_per_user() -> None:
    users = per_user_metrics(RECOMMENDED, RELEVANT, k=K)

    assert isinstance(users, UserMetrics)
    np.testing.assert_array_equal(users.users, [0, 1, 3])
    np.testing.assert_array_equal(users.n_relevant, [3, 6, 1])
    np.testing.assert_array_equal(users.n_hits, [2, 2, 0])
    np.testing.assert_array_equal(users.hit, [True, True, False])
    np.testing.assert_allclose(users.precision, [float(x) for x in PRECISION], rtol=1e-12)
    np.testing.assert_allclose(users.recall, [float(x) for x in RECALL], rtol=1e-12)
    np.testing.assert_allclose(users.ndcg, NDCG, rtol=1e-12)
    np.testing.assert_allclose(users.ap, [float(x) for x in AP], rtol=1e-12)
    np.testing.assert_allclose(users.ap_at_k, [float(x) for x in AP_AT_K], rtol=1e-12)


def test_hand_computed_hits_matrix() -> None:
    np.testing.assert_array_equal(
        hits_matrix(RECOMMENDED, RELEVANT, k=K),
        [
            [True, False, True, False],
            [False, True, False, True],
            [False, False, False, False],
            [False, False, False, False],
        ],
    )


def test_rank_order_matters() -> None:
    """The same hits earlier in the list score higher on ndcg and map, not on P/R."""
    relevant = _relevant([[0, 1]], 5)
    early = ranking_metrics(np.array([[0, 1, 2, 3]]), relevant, k=4)
    late = ranking_metrics(np.array([[2, 3, 0, 1]]), relevant, k=4)

    assert early["ndcg@4"] == _approx(1.0)
    assert late["ndcg@4"] == _approx((1 / log2(4) + 1 / log2(5)) / (1 / log2(2) + 1 / log2(3)))
    assert late["map"] == _approx((1 / 3 + 2 / 4) / 2)
    assert early["precision@4"] == late["precision@4"] == _approx(2 / 4)
    assert early["recall@4"] == late["recall@4"] == _approx(2 / 2)


def test_only_the_first_k_columns_count() -> None:
    """Relevant items after column k change nothing; the keys carry the given k."""
    wide = np.hstack([RECOMMENDED, np.array([[5, 3], [8, 9], [0, 1], [7, 0]])])

    assert ranking_metrics(wide, RELEVANT, k=K, item_popularity=POPULARITY) == ranking_metrics(
        RECOMMENDED, RELEVANT, k=K, item_popularity=POPULARITY
    )
    two = ranking_metrics(wide, RELEVANT, k=2)
    # Top 2: user 0 [1, 2] -> hit at 1; user 1 [7, 4] -> hit at 2; user 3 [2, 6] -> none.
    assert two["precision@2"] == _approx((1 / 2 + 1 / 2 + 0) / 3)
    assert two["recall@2"] == _approx((1 / 3 + 1 / 6 + 0) / 3)
    assert two["ndcg@2"] == _approx(
        (1 / (1 + 1 / log2(3)) + (1 / log2(3)) / (1 + 1 / log2(3)) + 0) / 3
    )
    assert two["map"] == _approx((1 / 3 + (1 / 2) / 6 + 0) / 3)
    assert two["map@2"] == _approx((1 / 2 + (1 / 2) / 2 + 0 / 1) / 3)
    assert two["coverage@2"] == _approx(len({1, 2, 7, 4, 6}) / 12)


def test_k_larger_than_the_list() -> None:
    """Missing positions are padding; precision still divides by k."""
    relevant = _relevant([[0, 1, 2, 3, 4, 5]], 8)
    result = ranking_metrics(np.array([[0, 1]]), relevant, k=5)

    assert result["precision@5"] == _approx(2 / 5)
    assert result["recall@5"] == _approx(2 / 6)
    assert result["ndcg@5"] == _approx(
        (1 / log2(2) + 1 / log2(3)) / sum(1 / log2(r + 1) for r in range(1, 6))
    )
    assert result["map"] == _approx((1 / 1 + 2 / 2) / 6)
    assert result["map@5"] == _approx((1 / 1 + 2 / 2) / 5)
    assert hits_matrix(np.array([[0, 1]]), relevant, k=5).tolist() == [
        [True, True, False, False, False]
    ]


def test_perfect_ranking_scores_one() -> None:
    relevant = _relevant([[4, 2, 7], [1]], 9)
    result = ranking_metrics(np.array([[7, 4, 2], [1, 0, 3]]), relevant, k=3)

    assert result["ndcg@3"] == _approx(1.0)
    assert result["recall@3"] == _approx(1.0)
    assert result["map"] == _approx(1.0)
    assert result["map@3"] == _approx(1.0)
    assert result["hit_rate@3"] == _approx(1.0)
    assert result["precision@3"] == _approx((3 / 3 + 1 / 3) / 2)


def test_more_relevant_than_k_caps_idcg_and_map_at_k() -> None:
    """IDCG sums only min(n_u, k) ranks, so k hits out of many relevant give ndcg 1."""
    relevant = _relevant([list(range(10))], 10)
    result = ranking_metrics(np.array([[3, 1, 4]]), relevant, k=3)

    assert result["ndcg@3"] == _approx(1.0)
    assert result["map@3"] == _approx(1.0)
    assert result["map"] == _approx((1 / 1 + 2 / 2 + 3 / 3) / 10)
    assert result["recall@3"] == _approx(3 / 10)


def test_repeated_item_counts_once() -> None:
    relevant = _relevant([[3, 4]], 6)
    recommended = np.array([[5, 3, 3, 4]])
    popularity = np.array([0.0, 0.0, 0.0, 0.3, 0.4, 0.5])
    result = ranking_metrics(recommended, relevant, k=4, item_popularity=popularity)

    assert hits_matrix(recommended, relevant, k=4).tolist() == [[False, True, False, True]]
    assert result["precision@4"] == _approx(2 / 4)
    assert result["recall@4"] == _approx(2 / 2)
    assert result["ndcg@4"] == _approx((1 / log2(3) + 1 / log2(5)) / (1 / log2(2) + 1 / log2(3)))
    assert result["map"] == _approx((1 / 2 + 2 / 4) / 2)
    # The repeat is not counted again: mean over items 5, 3, 4.
    assert result["mean_popularity@4"] == _approx((0.5 + 0.3 + 0.4) / 3)
    # A list of one relevant item repeated is one hit, not three.
    single = ranking_metrics(np.array([[3, 3, 3]]), _relevant([[3]], 6), k=3)
    assert single["precision@3"] == _approx(1 / 3)
    assert single["recall@3"] == _approx(1.0)
    assert single["ndcg@3"] == _approx(1.0)


def test_users_without_relevant_items_are_skipped_not_zeroed() -> None:
    """Adding a user with no relevant items (and any list) changes no number."""
    base = ranking_metrics(RECOMMENDED, RELEVANT, k=K, item_popularity=POPULARITY)
    recommended = np.vstack([RECOMMENDED, [[11, 10, 8, 0]]])
    relevant = sp.vstack([RELEVANT, sp.csr_matrix((1, N_ITEMS))]).tocsr()

    assert ranking_metrics(recommended, relevant, k=K, item_popularity=POPULARITY) == base


def test_user_with_relevant_items_but_no_list_scores_zero() -> None:
    recommended = np.array([[0, 1], [-1, -1]])
    relevant = _relevant([[0], [1]], 3)
    result = ranking_metrics(recommended, relevant, k=2, item_popularity=np.array([0.5, 0.1, 0.0]))

    assert result["precision@2"] == _approx((1 / 2 + 0) / 2)
    assert result["recall@2"] == _approx((1 + 0) / 2)
    assert result["ndcg@2"] == _approx((1 + 0) / 2)
    assert result["hit_rate@2"] == _approx(1 / 2)
    assert result["coverage@2"] == _approx(2 / 3)
    assert result["mean_popularity@2"] == _approx((0.5 + 0.1) / 2)


def test_all_padding() -> None:
    relevant = _relevant([[0], [1, 2]], 4)
    result = ranking_metrics(np.full((2, 3), -1), relevant, k=3, item_popularity=np.ones(4))

    for name in ("ndcg@3", "precision@3", "recall@3", "map", "map@3", "hit_rate@3"):
        assert result[name] == 0.0
    assert result["coverage@3"] == 0.0
    assert math.isnan(result["mean_popularity@3"])


def test_no_evaluated_user_gives_nan_averages() -> None:
    result = ranking_metrics(np.array([[0, 1], [2, 3]]), sp.csr_matrix((2, 4)), k=2)

    for name in ("ndcg@2", "precision@2", "recall@2", "map", "map@2", "hit_rate@2"):
        assert math.isnan(result[name])
    assert result["coverage@2"] == 0.0
    assert per_user_metrics(np.array([[0, 1], [2, 3]]), sp.csr_matrix((2, 4)), k=2).users.size == 0


def test_no_users_and_an_empty_list() -> None:
    result = ranking_metrics(np.zeros((0, 10), dtype=np.int64), sp.csr_matrix((0, 5)))
    assert math.isnan(result["ndcg@10"])
    assert result["coverage@10"] == 0.0
    zero_columns = ranking_metrics(np.zeros((1, 0), dtype=np.int64), _relevant([[2]], 5), k=3)
    assert zero_columns["precision@3"] == 0.0
    assert zero_columns["ndcg@3"] == 0.0


def test_mean_popularity_without_popularity_is_nan() -> None:
    assert math.isnan(ranking_metrics(RECOMMENDED, RELEVANT, k=K)["mean_popularity@4"])


def test_relevance_is_binary_and_ignores_explicit_zeros() -> None:
    """Any non-zero value is relevant once; stored zeros and repeated entries are handled."""
    # Entries: (0, 1) = 5.0, (0, 2) = 0.0 stored explicitly, (0, 3) = -2.0, (0, 1) again.
    relevant = sp.csr_matrix(
        (np.array([5.0, 0.0, -2.0, 1.0]), (np.array([0, 0, 0, 0]), np.array([1, 2, 3, 1]))),
        shape=(1, 5),
    )
    relevant.has_canonical_format = False  # keep the duplicate stored
    result = ranking_metrics(np.array([[2, 1, 3]]), relevant, k=3)

    assert hits_matrix(np.array([[2, 1, 3]]), relevant, k=3).tolist() == [[False, True, True]]
    assert result["recall@3"] == _approx(2 / 2)  # items 1 and 3 are relevant; item 2 is not
    assert result["map"] == _approx((1 / 2 + 2 / 3) / 2)


def test_relevance_from_coo_duplicates_and_sparse_arrays() -> None:
    coo = sp.coo_matrix((np.ones(3), (np.array([0, 0, 0]), np.array([2, 2, 4]))), shape=(1, 6))
    recommended = np.array([[4, 2]])
    expected = {"recall@2": 1.0, "precision@2": 1.0, "ndcg@2": 1.0}
    for relevant in (coo, coo.tocsr(), sp.csr_array(coo), sp.csc_matrix(coo)):
        result = ranking_metrics(recommended, relevant, k=2)
        for name, value in expected.items():
            assert result[name] == _approx(value), (type(relevant).__name__, name)


def test_inputs_are_not_modified() -> None:
    recommended = np.array([[1, 1, 2], [3, -1, 3]], dtype=np.int32)
    relevant = _relevant([[1], [3]], 4)
    before = recommended.copy(), relevant.toarray().copy()
    ranking_metrics(recommended, relevant, k=3, item_popularity=np.ones(4))

    np.testing.assert_array_equal(recommended, before[0])
    np.testing.assert_array_equal(relevant.toarray(), before[1])


@pytest.mark.parametrize(
    ("recommended", "relevant", "kwargs", "error", "match"),
    [
        (np.zeros((3, 2), dtype=int), sp.csr_matrix((2, 5)), {}, ValueError, "3 rows"),
        (np.zeros((2, 2), dtype=int), sp.csr_matrix((2, 5)), {"k": 0}, ValueError, "at least 1"),
        (np.zeros((2, 2), dtype=int), sp.csr_matrix((2, 5)), {"k": -3}, ValueError, "at least 1"),
        (np.array([[0, 5], [1, 2]]), sp.csr_matrix((2, 5)), {}, ValueError, "index 5"),
        (np.array([[0, -2], [1, 2]]), sp.csr_matrix((2, 5)), {}, ValueError, "index -2"),
        (np.array([0, 1]), sp.csr_matrix((2, 5)), {}, ValueError, "2-D"),
        (np.zeros((2, 2)), sp.csr_matrix((2, 5)), {}, TypeError, "integer"),
        (np.zeros((2, 2), dtype=int), np.zeros((2, 5)), {}, TypeError, "scipy.sparse"),
        (np.zeros((2, 2), dtype=int), sp.csr_matrix((2, 5)), {"k": 2.0}, TypeError, "k must"),
        (np.zeros((2, 2), dtype=int), sp.csr_matrix((2, 5)), {"k": True}, TypeError, "k must"),
        (
            np.zeros((2, 2), dtype=int),
            sp.csr_matrix((2, 5)),
            {"item_popularity": np.ones(4)},
            ValueError,
            r"shape \(5,\)",
        ),
    ],
)
def test_bad_input_is_rejected(
    recommended: np.ndarray,
    relevant: object,
    kwargs: dict,
    error: type[Exception],
    match: str,
) -> None:
    with pytest.raises(error, match=match):
        ranking_metrics(recommended, relevant, **kwargs)  # type: ignore[arg-type]


def test_invalid_index_beyond_k_is_still_rejected() -> None:
    with pytest.raises(ValueError, match="index 9"):
        ranking_metrics(np.array([[0, 1, 9]]), sp.csr_matrix((1, 5)), k=2)


def test_building_blocks_validate_too() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        hits_matrix(RECOMMENDED, RELEVANT, k=0)
    with pytest.raises(ValueError, match="rows"):
        per_user_metrics(RECOMMENDED[:2], RELEVANT, k=K)


# --- randomized cross-check against a slow, obviously-correct reference ---------------


def _reference(
    recommended: list[list[int]],
    relevant: list[set[int]],
    n_items: int,
    k: int,
    popularity: list[float] | None,
) -> dict[str, float]:
    """The module docstring's definitions, one user at a time, in plain Python."""
    ndcg, precision, recall, ap, ap_at_k, hit = [], [], [], [], [], []
    shown_items: set[int] = set()
    shown_popularity: list[float] = []
    for row, rel in zip(recommended, relevant, strict=True):
        if not rel:
            continue
        seen: set[int] = set()
        hits = []
        for rank in range(1, k + 1):
            item = row[rank - 1] if rank <= len(row) else -1
            first = item != -1 and item not in seen
            if first:
                seen.add(item)
                shown_items.add(item)
                if popularity is not None:
                    shown_popularity.append(popularity[item])
            hits.append(first and item in rel)
        n_hits = sum(hits)
        precision.append(n_hits / k)
        recall.append(n_hits / len(rel))
        dcg = sum(1 / math.log2(r + 1) for r in range(1, k + 1) if hits[r - 1])
        idcg = sum(1 / math.log2(r + 1) for r in range(1, min(len(rel), k) + 1))
        ndcg.append(dcg / idcg)
        precisions_at_hits = [sum(hits[:r]) / r for r in range(1, k + 1) if hits[r - 1]]
        ap.append(sum(precisions_at_hits) / len(rel))
        ap_at_k.append(sum(precisions_at_hits) / min(k, len(rel)))
        hit.append(1.0 if n_hits else 0.0)

    def mean(values: list[float]) -> float:
        return sum(values) / len(values) if values else float("nan")

    return {
        f"ndcg@{k}": mean(ndcg),
        f"precision@{k}": mean(precision),
        f"recall@{k}": mean(recall),
        "map": mean(ap),
        f"map@{k}": mean(ap_at_k),
        f"hit_rate@{k}": mean(hit),
        f"coverage@{k}": len(shown_items) / n_items if shown_items else 0.0,
        f"mean_popularity@{k}": mean(shown_popularity) if popularity is not None else math.nan,
    }


@pytest.mark.parametrize("seed", range(12))
def test_matches_reference_on_random_data(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_users = int(rng.integers(1, 40))
    n_items = int(rng.integers(1, 30))
    n_cols = int(rng.integers(0, 14))
    k = int(rng.choice([1, 2, 3, 5, 10, 20]))
    # Items drawn with replacement (repeats happen), about 20% padding.
    recommended = rng.integers(0, n_items, size=(n_users, n_cols))
    recommended[rng.random((n_users, n_cols)) < 0.2] = -1
    dense = rng.random((n_users, n_items)) < rng.uniform(0.02, 0.5)
    dense[rng.random(n_users) < 0.2] = False  # some users without relevant items
    relevant = sp.csr_matrix(dense * rng.integers(1, 6, size=dense.shape))
    popularity = rng.random(n_items)

    got = ranking_metrics(recommended, relevant, k=k, item_popularity=popularity)
    want = _reference(
        recommended.tolist(),
        [set(np.flatnonzero(row).tolist()) for row in dense],
        n_items,
        k,
        popularity.tolist(),
    )

    assert list(got) == list(want)
    for name, value in want.items():
        assert got[name] == pytest.approx(value, rel=1e-9, abs=1e-12, nan_ok=True), name
    users = per_user_metrics(recommended, relevant, k=k)
    np.testing.assert_array_equal(users.users, np.flatnonzero(dense.any(axis=1)))
    if users.users.size:
        assert float(users.ndcg.mean()) == pytest.approx(want[f"ndcg@{k}"], rel=1e-9)
        assert float(users.ap.mean()) == pytest.approx(want["map"], rel=1e-9)
