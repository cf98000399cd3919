"""The evaluation protocols on real MovieLens 100K: the shapes they promise and no
leakage from test into anything tuning or training sees."""

from __future__ import annotations

import numpy as np
import pytest

from bespoke.training.data import Interactions, load_interactions
from bespoke.training.split import make_split, ms_stratified, temporal, validation


@pytest.fixture(scope="module")
def interactions(ml100k_lake) -> Interactions:
    lake, _ = ml100k_lake
    return load_interactions(lake, "ml-100k")


def _pairs(part: Interactions) -> set[tuple[int, int]]:
    return set(zip(part.users.tolist(), part.items.tolist(), strict=True))


def test_interactions_keep_the_lakes_ids(interactions: Interactions) -> None:
    assert (interactions.n_users, interactions.n_items, len(interactions)) == (943, 1682, 100_000)
    assert interactions.user_index(["196", "nobody"]).tolist()[1] == -1
    assert interactions.item_ids[interactions.item_index(["242"])[0]] == "242"


def test_ms_stratified_splits_each_items_interactions_75_25(interactions: Interactions) -> None:
    split = ms_stratified(interactions, ratio=0.75, seed=42)
    assert len(split.train) + len(split.test) == len(interactions)
    assert not _pairs(split.train) & _pairs(split.test)
    per_item = np.bincount(interactions.items, minlength=interactions.n_items)
    in_train = np.bincount(split.train.items, minlength=interactions.n_items)
    np.testing.assert_array_equal(in_train, np.round(0.75 * per_item))
    assert 0.74 < len(split.train) / len(interactions) < 0.76


def test_ms_stratified_is_fixed_by_its_seed(interactions: Interactions) -> None:
    one, two = ms_stratified(interactions, seed=42), ms_stratified(interactions, seed=42)
    other = ms_stratified(interactions, seed=7)
    assert _pairs(one.test) == _pairs(two.test)
    assert _pairs(one.test) != _pairs(other.test)


def test_temporal_split_leaks_nothing_from_after_the_cut(interactions: Interactions) -> None:
    split = temporal(interactions, test_fraction=0.2)
    assert split.train.timestamps.max() < split.test.timestamps.min()
    assert set(split.test.users.tolist()) <= set(split.train.users.tolist())
    # ML-100K's late raters are mostly new people who rated everything in one sitting:
    # only their interactions (no history before the cut) are left out of the test.
    after = interactions.timestamps >= split.train.timestamps.max()
    after_cut = interactions.subset(interactions.timestamps > split.train.timestamps.max())
    cold = ~np.isin(after_cut.users, split.train.users)
    assert len(split.test) == (~cold).sum() > 1000
    assert after.sum() >= 0.2 * len(interactions)


def test_validation_is_carved_from_train_and_never_touches_test(interactions: Interactions) -> None:
    for protocol in ("ms-stratified", "temporal"):
        split = make_split(interactions, protocol)
        inner = validation(split)
        assert _pairs(inner.train) | _pairs(inner.test) <= _pairs(split.train)
        assert not (_pairs(inner.train) | _pairs(inner.test)) & _pairs(split.test)
        if protocol == "temporal":
            assert inner.test.timestamps.max() <= split.train.timestamps.max()


def test_bad_protocols_and_parameters_are_refused(interactions: Interactions) -> None:
    with pytest.raises(ValueError, match="unknown protocol"):
        make_split(interactions, "random")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ratio"):
        ms_stratified(interactions, ratio=1.5)
