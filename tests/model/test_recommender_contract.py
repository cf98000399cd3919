"""The contract every recommender family keeps (like implicit's RecommenderBaseTestMixin):
one mixin, one subclass per family, all on real MovieLens 100K interactions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bespoke.training.als import ALS
from bespoke.training.base import STATE_FILE, NotFittedError, Recommender, rename_saved_users
from bespoke.training.bpr import BPR
from bespoke.training.content import ContentBased
from bespoke.training.data import Interactions, load_interactions, load_item_text
from bespoke.training.ease import EASE
from bespoke.training.evaluate import evaluate
from bespoke.training.families import FAMILIES
from bespoke.training.hybrid import Hybrid
from bespoke.training.itemknn import ItemKNN
from bespoke.training.popularity import Popularity
from bespoke.training.spark_als import SparkALS
from bespoke.training.split import ms_stratified


@pytest.fixture(scope="module")
def interactions(ml100k_lake) -> Interactions:
    lake, _ = ml100k_lake
    return ms_stratified(load_interactions(lake, "ml-100k")).train


@pytest.fixture(scope="module")
def item_text(ml100k_lake) -> dict[str, str]:
    lake, _ = ml100k_lake
    return load_item_text(lake, "ml-100k")


USERS = ["1", "2", "196", "943"]


class RecommenderContract:
    """Subclasses say how to build a small, fast, seeded model of their family."""

    @classmethod
    def make(cls) -> Recommender:
        raise NotImplementedError

    @pytest.fixture(scope="class")
    @classmethod
    def fit_kwargs(cls) -> dict[str, Any]:
        """Keywords ``fit`` needs besides the interactions (a subclass overrides it)."""
        return {}

    @pytest.fixture(scope="class")
    @classmethod
    def fitted(cls, interactions: Interactions, fit_kwargs: dict[str, Any]) -> Recommender:
        return cls.make().fit(interactions, **fit_kwargs)

    def test_init_does_no_work_and_unfitted_use_fails_clearly(self) -> None:
        model = self.make()
        assert not [name for name in vars(model) if name.endswith("_")]
        with pytest.raises(NotFittedError, match="fit"):
            model.recommend(USERS)

    def test_fit_returns_self_and_sets_fitted_attributes(
        self, interactions: Interactions, fit_kwargs: dict[str, Any]
    ) -> None:
        model = self.make()
        assert model.fit(interactions, **fit_kwargs) is model
        assert {"item_ids_", "user_ids_", "seen_"} <= set(vars(model))
        assert all(hasattr(model, f"{name}_") for name in model.state_arrays)

    def test_recommendations_have_the_asked_shape_and_descending_scores(
        self, fitted: Recommender
    ) -> None:
        ids, scores = fitted.recommend(USERS, k=10)
        assert ids.shape == scores.shape == (len(USERS), 10)
        assert set(ids.ravel()) <= set(fitted.item_ids_)
        assert (np.diff(scores, axis=1) <= 1e-6).all()
        assert all(len(set(row)) == len(row) for row in ids)

    def test_seen_items_are_filtered_unless_asked_not_to(
        self, fitted: Recommender, interactions: Interactions
    ) -> None:
        ids, _ = fitted.recommend(USERS, k=50)
        for user, row in zip(USERS, ids, strict=True):
            index = interactions.user_index([user])[0]
            seen = set(interactions.item_ids[interactions.items[interactions.users == index]])
            assert not seen & set(row)
        unfiltered, _ = fitted.recommend(USERS, k=50, filter_seen=False)
        assert unfiltered.shape == (len(USERS), 50)

    def test_excluded_items_are_never_recommended(self, fitted: Recommender) -> None:
        first, _ = fitted.recommend(USERS, k=5)
        banned = set(first[:, 0])
        again, _ = fitted.recommend(USERS, k=5, exclude=banned)
        assert not banned & set(again.ravel())

    def test_unknown_users_get_the_most_popular_unseen_items(self, fitted: Recommender) -> None:
        ids, scores = fitted.recommend(["no-such-user"], k=5)
        expected = fitted.item_ids_[np.argsort(-fitted.popularity_, kind="stable")[:5]]
        assert list(ids[0]) == list(expected)
        assert np.isfinite(scores).all()

    def test_an_empty_history_gets_popularity_and_a_history_is_not_repeated(
        self, fitted: Recommender
    ) -> None:
        empty, _ = fitted.recommend_from_history([], k=5)
        cold, _ = fitted.recommend(["no-such-user"], k=5)
        assert list(empty) == list(cold[0])
        history = ["1", "50", "181"]
        ids, scores = fitted.recommend_from_history(history, k=10)
        assert len(ids) == 10 and not set(history) & set(ids)
        assert (np.diff(scores) <= 1e-6).all()

    def test_evaluation_scores_through_the_path_the_service_calls(
        self, fitted: Recommender, interactions: Interactions
    ) -> None:
        """What evaluation (and so the champion gate) ranks for a training user is what
        ``recommend_from_history`` serves for their history: for ALS and BPR a fold-in
        of the history, not the learned user factors."""
        users = interactions.user_index(USERS)
        evaluated = fitted.recommend_indices(users, 10)
        for index, row in zip(users, evaluated, strict=True):
            history = interactions.item_ids[interactions.items[interactions.users == index]]
            served, _ = fitted.recommend_from_history(history, k=10)
            assert list(fitted.item_ids_[row]) == list(served)

    def test_the_same_seed_gives_the_same_recommendations(
        self, fitted: Recommender, interactions: Interactions, fit_kwargs: dict[str, Any]
    ) -> None:
        again = self.make().fit(interactions, **fit_kwargs)
        assert (fitted.recommend(USERS, k=10)[0] == again.recommend(USERS, k=10)[0]).all()

    def test_save_and_load_give_identical_scores_without_pickle(
        self, fitted: Recommender, tmp_path: Path
    ) -> None:
        folder = fitted.save(tmp_path / "model")
        assert not list(folder.glob("*.pkl")) and not list(folder.glob("*.pickle"))
        loaded = type(fitted).load(folder)
        for a, b in zip(fitted.recommend(USERS, k=10), loaded.recommend(USERS, k=10), strict=True):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(
            fitted.recommend_from_history(["1", "2"], k=10)[1],
            loaded.recommend_from_history(["1", "2"], k=10)[1],
        )

    def test_a_renamed_user_keeps_their_recommendations(
        self, fitted: Recommender, tmp_path: Path
    ) -> None:
        """A key rotation renames user ids that are e-mail pseudonyms in saved states
        (every state file of the model, a hybrid's components' too)."""
        folder = fitted.save(tmp_path / "model")
        new_name = "e" * 64
        renamed = [rename_saved_users(state, lambda u: new_name if u == USERS[0] else u)
                   for state in sorted(folder.rglob(STATE_FILE))]  # fmt: skip
        assert renamed and all(n == 1 for n in renamed)
        loaded = type(fitted).load(folder)
        assert USERS[0] not in set(loaded.user_ids_) and new_name in set(loaded.user_ids_)
        before = fitted.recommend([USERS[0]], k=10)
        after = loaded.recommend([new_name], k=10)
        np.testing.assert_array_equal(before[0], after[0])

    def test_the_callback_hears_each_round_and_an_iterative_fit_stops_when_asked(
        self, interactions: Interactions, fit_kwargs: dict[str, Any]
    ) -> None:
        calls: list[tuple[int, dict[str, float]]] = []
        model = self.make().fit(interactions, callback=lambda i, m: calls.append((i, m)),
                                **fit_kwargs)  # fmt: skip
        assert calls, "fit reports through its callback"
        assert [i for i, _ in calls] == list(range(len(calls)))
        assert all(np.isfinite(list(metrics.values())).all() for _, metrics in calls)
        if not model.iterative:
            return
        assert len(calls) == model.iterations
        asked: list[int] = []
        early = self.make().fit(interactions, callback=lambda i, m: asked.append(i) or False,
                                **fit_kwargs)  # fmt: skip
        assert asked == [0], "returning False stops training after that round"
        _, scores = early.recommend(USERS, k=5)
        assert np.isfinite(scores).all()

    def test_a_k_beyond_the_catalog_is_padded(self, fitted: Recommender) -> None:
        k = len(fitted.item_ids_) + 3
        ids, scores = fitted.recommend(["no-such-user"], k=k)
        assert ids.shape == (1, k)
        assert ids[0, -3:].tolist() == [None] * 3 and np.isneginf(scores[0, -3:]).all()


class TestPopularity(RecommenderContract):
    @classmethod
    def make(cls) -> Recommender:
        return Popularity()


class TestEASE(RecommenderContract):
    @classmethod
    def make(cls) -> Recommender:
        return EASE(l2=300.0)


class TestALS(RecommenderContract):
    @classmethod
    def make(cls) -> Recommender:
        return ALS(factors=16, iterations=5, random_state=7)


class TestItemKNN(RecommenderContract):
    @classmethod
    def make(cls) -> Recommender:
        return ItemKNN(similarity="bm25", neighbours=50)


class TestBPR(RecommenderContract):
    @classmethod
    def make(cls) -> Recommender:
        return BPR(factors=16, iterations=10, random_state=7)

    def test_the_callback_sees_every_epoch_and_can_stop_training(
        self, interactions: Interactions
    ) -> None:
        seen: list[tuple[int, dict[str, float]]] = []
        self.make().fit(interactions, callback=lambda i, m: seen.append((i, m)))
        assert [i for i, _ in seen] == list(range(10))
        assert all(0.0 <= m["train_auc"] <= 1.0 and "skipped" in m for _, m in seen)
        stopped: list[int] = []
        model = self.make().fit(interactions, callback=lambda i, m: stopped.append(i) or i < 2)
        assert stopped == [0, 1, 2] and np.isfinite(model.item_factors_).all()

    def test_the_callback_can_score_the_model_so_far(self, interactions: Interactions) -> None:
        model = self.make()
        tops: list[np.ndarray] = []
        model.fit(interactions, callback=lambda i, m: tops.append(model.recommend_indices([0], 5)))
        assert len(tops) == 10 and (tops[-1] == model.recommend_indices([0], 5)).all()


class TestContentBased(RecommenderContract):
    @classmethod
    def make(cls) -> Recommender:
        return ContentBased()

    @pytest.fixture(scope="class")
    @classmethod
    def fit_kwargs(cls, item_text: dict[str, str]) -> dict[str, Any]:
        return {"item_text": item_text}

    def test_fit_without_item_text_fails_clearly(self, interactions: Interactions) -> None:
        with pytest.raises(ValueError, match="item_text"):
            self.make().fit(interactions)
        with pytest.raises(ValueError, match="no text"):
            self.make().fit(interactions, item_text={"no-such-item": "Toy Story"})


class TestHybrid(RecommenderContract):
    @classmethod
    def make(cls) -> Recommender:
        return Hybrid(
            components={"ease": {"l2": 300.0}, "content": {}},
            weights={"ease": 0.8, "content": 0.2},
        )

    @pytest.fixture(scope="class")
    @classmethod
    def fit_kwargs(cls, item_text: dict[str, str]) -> dict[str, Any]:
        return {"item_text": item_text}

    def test_components_are_saved_in_their_own_folders(
        self, fitted: Recommender, tmp_path: Path
    ) -> None:
        folder = fitted.save(tmp_path / "model")
        assert sorted(p.name for p in (folder / "components").iterdir()) == ["content", "ease"]
        assert EASE.load(folder / "components" / "ease").l2 == 300.0

    @pytest.mark.parametrize(
        ("components", "weights", "message"),
        [
            ({}, None, "at least one"),
            ({"ease": {}}, {"als": 1.0}, "exactly the components"),
            ({"ease": {}}, {"ease": -1.0}, "non-negative"),
            ({"no-such-family": {}}, None, "unknown component .no-such-family.; a blend takes"),
            ({"ease": {"no_such_param": 1}}, None, "component 'ease'"),
        ],
    )
    def test_bad_components_or_weights_fail_clearly(
        self,
        interactions: Interactions,
        components: dict[str, dict[str, Any]],
        weights: dict[str, float] | None,
        message: str,
    ) -> None:
        model = Hybrid(components, weights)
        with pytest.raises(ValueError, match=message):
            model.fit(interactions)
        assert not hasattr(model, "item_ids_")


@pytest.mark.usefixtures("spark")
@pytest.mark.xdist_group("spark")
class TestSparkALS(RecommenderContract):
    @classmethod
    def make(cls) -> Recommender:
        # One block: bit-for-bit the same factors for a seed (see SparkALS).
        return SparkALS(factors=8, iterations=5, random_state=7, blocks=1)

    def test_folding_in_a_training_history_gives_mllibs_own_user_factors(
        self, fitted: Recommender
    ) -> None:
        """MLlib solves the users last, against the final item factors: the fold-in (what
        serving and evaluation use) solves its equations, its scaled ridge term too."""
        users = np.arange(100)
        folded = fitted._fold_in(fitted.seen_[users])
        np.testing.assert_allclose(folded, fitted.user_factors_[users], rtol=1e-4, atol=1e-5)

    def test_it_ranks_clearly_better_than_popularity_on_ml100k(
        self, fitted: Recommender, ml100k_lake
    ) -> None:
        lake, _ = ml100k_lake
        split = ms_stratified(load_interactions(lake, "ml-100k"))
        popular = evaluate(Popularity().fit(split.train), split)["ndcg@10"]
        # Rank 8 and 5 iterations: 0.44 against popularity's 0.25.
        assert evaluate(fitted, split)["ndcg@10"] > popular + 0.1

    def test_a_saved_model_serves_where_pyspark_is_not_installed(
        self, fitted: Recommender, tmp_path: Path
    ) -> None:
        """Spark only fits: a served model is loaded and scored by NumPy alone."""
        folder = fitted.save(tmp_path / "model")
        script = (
            "import json, sys\n"
            "sys.modules['pyspark'] = None  # an install without the spark extra\n"
            "from bespoke.training.families import family\n"
            "model = family('spark-als').load(sys.argv[1])\n"
            "ids, scores = model.recommend_from_history(['1', '50', '181'], k=10)\n"
            "print(json.dumps([list(ids), scores.tolist()]))\n"
        )
        done = subprocess.run([sys.executable, "-c", script, str(folder)],
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert done.returncode == 0, done.stderr
        ids, scores = json.loads(done.stdout)
        expected_ids, expected_scores = fitted.recommend_from_history(["1", "50", "181"], k=10)
        assert ids == list(expected_ids)
        np.testing.assert_array_equal(np.float32(scores), expected_scores)


def _contracts(base: type) -> list[type]:
    return [c for sub in base.__subclasses__() for c in (sub, *_contracts(sub))]


def test_every_registered_family_keeps_the_contract() -> None:
    """A family added to the registry without a subclass of the contract fails here."""
    covered = {contract.make().family for contract in _contracts(RecommenderContract)}
    assert covered == set(FAMILIES), f"no contract test for {set(FAMILIES) - covered}"
