"""Point-in-time ranking features on real MovieLens 100K: nothing at or after the as-of
time reaches a row, the offline path (lake histories) and the online path (profiles)
give the same vectors, a saved builder gives the same features, and unknown people and
items give missing values instead of errors."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bespoke.features.build import (
    USER_CATEGORIES,
    FeatureBuilder,
    Histories,
    Profile,
    histories,
    load_builder,
    save_builder,
)
from bespoke.training.base import Recommender
from bespoke.training.data import Interactions, load_catalog, load_interactions, load_users
from bespoke.training.families import family
from bespoke.training.ranking import fit_retrievers
from bespoke.training.split import temporal

DAY = np.timedelta64(86_400_000_000, "us")
N_CANDIDATES = 20


# --- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def interactions(ml100k_lake) -> Interactions:
    lake, _ = ml100k_lake
    return load_interactions(lake, "ml-100k")


@pytest.fixture(scope="module")
def users_table(ml100k_lake) -> pd.DataFrame:
    lake, _ = ml100k_lake
    return load_users(lake, "ml-100k")


@pytest.fixture(scope="module")
def catalog(ml100k_lake) -> pd.DataFrame:
    lake, _ = ml100k_lake
    return load_catalog(lake, "ml-100k")


@pytest.fixture(scope="module")
def events(ml100k_lake) -> pd.DataFrame:
    """The lake's rows, read independently of :mod:`bespoke.training.data` (UTC, naive)."""
    lake, _ = ml100k_lake
    frame = (
        lake.connect()
        .execute(
            "SELECT event_id, user_id, item_id, value, timestamp FROM events "
            "WHERE dataset = 'ml-100k' ORDER BY timestamp, event_id"
        )
        .df()
    )
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True).dt.tz_localize(None)
    return frame


@pytest.fixture(scope="module")
def cut(interactions: Interactions) -> np.datetime64:
    """The temporal split's cut: inside the timeline, with 20% of the ratings after it."""
    value = np.datetime64(temporal(interactions).params["cut"], "us")
    assert interactions.timestamps.min() < value < interactions.timestamps.max()
    return value


@pytest.fixture(scope="module")
def retrievers(interactions: Interactions, cut: np.datetime64) -> dict[str, Recommender]:
    """EASE, ALS and ItemKNN fitted on the interactions before the cut only."""
    return fit_retrievers(interactions.subset(interactions.timestamps < cut))


@pytest.fixture(scope="module")
def builder(interactions, retrievers, users_table, catalog, cut) -> FeatureBuilder:
    return FeatureBuilder().fit(
        interactions, retrievers, users=users_table, items=catalog, as_of=cut
    )


@pytest.fixture(scope="module")
def candidates(interactions: Interactions) -> np.ndarray:
    """The same random candidates for every user, by position, with some -1 padding
    (never the first, so that column 0 carries every person's values)."""
    rng = np.random.default_rng(7)
    chosen = rng.integers(0, interactions.n_items, size=(interactions.n_users, N_CANDIDATES))
    padding = rng.random(chosen.shape) < 0.05
    padding[:, 0] = False
    chosen[padding] = -1
    return chosen


def _column(
    builder: FeatureBuilder, features: np.ndarray, name: str, c: int = N_CANDIDATES
) -> np.ndarray:
    """One feature as (people × candidates)."""
    return features[:, builder.feature_names_.index(name)].reshape(-1, c)


def _altered_after(interactions: Interactions, cut: np.datetime64) -> Interactions:
    """Every interaction at or after ``cut`` changed (other item, other value, other
    time, still not before the cut), plus 5,000 invented ones after it; the id maps and
    everything before the cut untouched."""
    rng = np.random.default_rng(0)
    late = interactions.timestamps >= cut
    assert late.sum() > 10_000  # the cut leaves a real future to tamper with
    items = interactions.items.copy()
    items[late] = rng.permutation(items[late])
    items[late] = (items[late] + 1) % interactions.n_items
    values = interactions.values.copy()
    values[late] = 6.0 - values[late]
    timestamps = interactions.timestamps.copy()
    timestamps[late] = cut + rng.integers(0, 60, late.sum()) * DAY
    extra = 5_000
    return replace(
        interactions,
        users=np.concatenate(
            [interactions.users, rng.integers(0, interactions.n_users, extra)]
        ).astype(interactions.users.dtype),
        items=np.concatenate([items, rng.integers(0, interactions.n_items, extra)]).astype(
            interactions.items.dtype
        ),
        values=np.concatenate([values, rng.integers(1, 6, extra)]).astype(np.float32),
        timestamps=np.concatenate(
            [timestamps, cut + rng.integers(0, 30 * 86_400, extra) * np.timedelta64(1, "s")]
        ),
    )


def _features(
    history: Interactions,
    retrievers: dict[str, Recommender],
    users_table: pd.DataFrame,
    catalog: pd.DataFrame,
    as_of: np.datetime64,
    candidates: np.ndarray,
) -> np.ndarray:
    """Fit a builder on ``history`` as of ``as_of`` and build the rows of the first
    ``len(candidates)`` people."""
    built = FeatureBuilder().fit(history, retrievers, users=users_table, items=catalog, as_of=as_of)
    people = np.arange(len(candidates))
    return built.transform(histories(history, people, users_table, as_of), candidates)


# --- no leakage ------------------------------------------------------------------------


def test_nothing_at_or_after_the_as_of_time_reaches_a_feature(
    builder, interactions, retrievers, users_table, catalog, cut, candidates
) -> None:
    altered = _altered_after(interactions, cut)
    assert len(altered) == len(interactions) + 5_000
    before = interactions.timestamps < cut
    assert (
        altered.timestamps[: len(interactions)][before] == interactions.timestamps[before]
    ).all()

    original = _features(interactions, retrievers, users_table, catalog, cut, candidates)
    tampered = _features(altered, retrievers, users_table, catalog, cut, candidates)
    assert original.shape == (interactions.n_users * N_CANDIDATES, len(builder.feature_names_))
    assert np.isfinite(original).mean() > 0.9  # real values, not an all-NaN matrix
    np.testing.assert_array_equal(tampered, original)

    # The check has teeth: one day later, the tampered future is part of the past.
    later, some = cut + DAY, candidates[:200]
    np.testing.assert_raises(
        AssertionError,
        np.testing.assert_array_equal,
        _features(altered, retrievers, users_table, catalog, later, some),
        _features(interactions, retrievers, users_table, catalog, later, some),
    )


def test_the_builder_rejects_retrievers_over_another_item_index(
    interactions, retrievers, cut
) -> None:
    fewer = interactions.subset(interactions.items < 1_000)
    other = Interactions.from_frame(
        pd.DataFrame(
            {
                "user_id": fewer.user_ids[fewer.users],
                "item_id": fewer.item_ids[fewer.items],
                "timestamp": fewer.timestamps,
            }
        )
    )
    with pytest.raises(ValueError, match="another item index"):
        FeatureBuilder().fit(other, retrievers, as_of=cut)


def test_features_agree_with_pandas_over_the_lake_rows_before_the_cut(
    builder, interactions, users_table, events, cut, candidates
) -> None:
    people = np.arange(interactions.n_users)
    features = builder.transform(histories(interactions, people, users_table, cut), candidates)
    past = events[events["timestamp"] < pd.Timestamp(cut)]
    assert 0 < len(past) < len(events)

    # item_share: the item's share (per mille) of all ratings before the cut
    item_ids = np.where(candidates >= 0, interactions.item_ids[np.maximum(candidates, 0)], None)
    share = 1000.0 * past["item_id"].value_counts() / len(past)
    expected = (
        pd.Series(item_ids.ravel()).map(share).fillna(0.0).to_numpy().reshape(candidates.shape)
    )
    real = candidates >= 0
    got = _column(builder, features, "item_share")
    np.testing.assert_allclose(got[real], expected[real], rtol=1e-6)
    assert np.isnan(got[~real]).all()  # padding rows are all missing

    # item_share_7d: the same over the last week before the cut
    week = past[past["timestamp"] >= pd.Timestamp(cut) - pd.Timedelta(days=7)]
    share_7d = 1000.0 * week["item_id"].value_counts() / len(week)
    expected_7d = pd.Series(item_ids.ravel()).map(share_7d).fillna(0.0).to_numpy()
    got_7d = _column(builder, features, "item_share_7d")
    np.testing.assert_allclose(got_7d[real], expected_7d.reshape(candidates.shape)[real], rtol=1e-6)

    # item_mean_value: the item's mean rating before the cut (missing when never rated)
    means = past.groupby("item_id")["value"].mean()
    expected_mean = pd.Series(item_ids.ravel()).map(means).to_numpy(np.float64)
    got_mean = _column(builder, features, "item_mean_value")[real]
    np.testing.assert_allclose(got_mean, expected_mean.reshape(candidates.shape)[real], rtol=1e-6)

    # user_activity: ratings before the cut, over the mean of the people active before it
    user_ids = interactions.user_ids.astype(str)
    counts = past["user_id"].value_counts()
    activity = counts.reindex(user_ids).fillna(0.0).to_numpy() / counts.mean()
    np.testing.assert_allclose(
        _column(builder, features, "user_activity")[:, 0], activity, rtol=1e-6
    )

    # user_mean_value and user_days_since_last, missing for people new after the cut
    mean_value = past.groupby("user_id")["value"].mean().reindex(user_ids).to_numpy()
    got_user_mean = _column(builder, features, "user_mean_value")[:, 0]
    np.testing.assert_allclose(got_user_mean, mean_value, rtol=1e-6)
    newcomers = counts.reindex(user_ids).isna().to_numpy()
    assert newcomers.sum() > 0 and np.isnan(got_user_mean[newcomers]).all()
    last = past.groupby("user_id")["timestamp"].max().reindex(user_ids)
    since = ((pd.Timestamp(cut) - last) / pd.Timedelta(days=1)).to_numpy(np.float64)
    np.testing.assert_allclose(
        _column(builder, features, "user_days_since_last")[:, 0], since, rtol=1e-5
    )

    # every row of a person carries the person's values
    per_person = _column(builder, features, "user_activity")
    assert (np.nanmax(per_person, axis=1) == np.nanmin(per_person, axis=1)).all()


# --- one feature path ------------------------------------------------------------------


def _profiles(
    user_ids: list[str], events: pd.DataFrame, users_table: pd.DataFrame, cut: np.datetime64
) -> list[Profile]:
    """Profiles as a live service would keep them: the lake's events before the cut and
    the users table, with pandas only."""
    past = events[events["timestamp"] < pd.Timestamp(cut)]
    attributes = users_table.set_index("user_id")
    profiles = []
    for user in user_ids:
        mine = past[past["user_id"] == user]
        row = attributes.loc[user] if user in attributes.index else pd.Series(dtype=object)
        profiles.append(
            Profile(
                user_id=user,
                attributes={
                    name: (None if pd.isna(row.get(name)) else row.get(name))
                    for name in ("age", *USER_CATEGORIES)
                },
                items=mine["item_id"].tolist(),
                values=mine["value"].to_numpy(),
                timestamps=mine["timestamp"].to_numpy("datetime64[us]"),
            )
        )
    return profiles


def test_offline_histories_and_online_profiles_give_the_same_features(
    builder, interactions, users_table, events, cut
) -> None:
    rng = np.random.default_rng(3)
    people = np.sort(rng.choice(interactions.n_users, 40, replace=False))
    late_starters = np.flatnonzero(
        ~np.isin(np.arange(interactions.n_users), interactions.users[interactions.timestamps < cut])
    )
    people = np.concatenate([people, late_starters[:3]])  # some with nothing before the cut
    user_ids = interactions.user_ids[people].astype(str).tolist()
    offline = histories(interactions, people, users_table, cut)
    online = Histories.from_profiles(
        _profiles(user_ids, events, users_table, cut), builder.item_ids_
    )
    assert np.diff(offline.indptr).sum() > 1_000
    assert (np.diff(online.indptr) == np.diff(offline.indptr)).all()

    scores = builder.retrieval_scores(offline)["ease"]
    candidates = np.argsort(-scores, axis=1, kind="stable")[:, :N_CANDIDATES]
    candidates[:, -2:] = rng.integers(0, interactions.n_items, (len(people), 2))
    now = "1998-03-09T15:30:00"
    offline_features = builder.transform(offline, candidates, now)
    online_features = builder.transform(online, candidates, now)
    np.testing.assert_array_equal(online_features, offline_features)
    assert np.isfinite(offline_features).mean() > 0.9
    # the request time is the one given, not the as-of time
    assert (_column(builder, offline_features, "context_hour") == 15).all()
    # the comparison is sensitive: profiles that also hold what came after the cut differ
    later = _profiles(user_ids, events, users_table, cut + 60 * DAY)
    leaky = Histories.from_profiles(later, builder.item_ids_)
    assert np.diff(leaky.indptr).sum() > np.diff(online.indptr).sum()
    assert not np.array_equal(
        builder.transform(leaky, candidates, now), offline_features, equal_nan=True
    )


def test_the_online_path_matches_for_every_request_time_given_per_person(
    builder, interactions, users_table, events, cut
) -> None:
    people = np.arange(0, interactions.n_users, 97)
    user_ids = interactions.user_ids[people].astype(str).tolist()
    offline = histories(interactions, people, users_table, cut)
    online = Histories.from_profiles(
        _profiles(user_ids, events, users_table, cut), builder.item_ids_
    )
    candidates = np.tile(np.arange(N_CANDIDATES), (len(people), 1))
    now = [cut + np.timedelta64(int(h), "h") for h in np.arange(len(people)) * 5]
    offline_features = builder.transform(offline, candidates, now)
    np.testing.assert_array_equal(builder.transform(online, candidates, now), offline_features)
    hours = _column(builder, offline_features, "context_hour")[:, 0]
    assert len(np.unique(hours)) > 1


# --- saving and loading ----------------------------------------------------------------


def test_a_saved_builder_gives_the_same_features(
    builder, retrievers, interactions, users_table, candidates, cut, tmp_path: Path
) -> None:
    folder = save_builder(builder, tmp_path / "features")
    assert sorted(p.name for p in folder.iterdir()) == ["builder.json", "builder.npz"]
    # the retrievers travel on their own: load them back from their own files too
    loaded_retrievers = {}
    for name, model in retrievers.items():
        model.save(tmp_path / "retrievers" / name)
        loaded_retrievers[name] = family(name).load(tmp_path / "retrievers" / name)
    loaded = load_builder(folder, loaded_retrievers)

    assert loaded.feature_names_ == builder.feature_names_
    assert loaded.categorical_features_ == builder.categorical_features_
    assert loaded.as_of_ == builder.as_of_ == cut
    assert loaded.categories_ == builder.categories_
    assert (loaded.item_ids_ == builder.item_ids_).all()

    people = np.arange(300)
    batch = histories(interactions, people, users_table, cut)
    for now in (None, "1998-04-01T08:00:00"):
        np.testing.assert_array_equal(
            loaded.transform(batch, candidates[people], now),
            builder.transform(batch, candidates[people], now),
        )


def test_loading_a_builder_without_its_retrievers_fails(
    builder, retrievers, tmp_path: Path
) -> None:
    folder = save_builder(builder, tmp_path / "features")
    partial = {name: model for name, model in retrievers.items() if name != "als"}
    with pytest.raises(ValueError, match="als"):
        load_builder(folder, partial)


def test_an_undated_builder_round_trips_and_leaves_time_features_missing(
    interactions, retrievers, users_table, catalog, tmp_path: Path
) -> None:
    undated = replace(
        interactions, timestamps=np.full(len(interactions), np.datetime64("NaT"), "datetime64[us]")
    )
    built = FeatureBuilder().fit(undated, retrievers, users=users_table, items=catalog)
    assert np.isnat(built.as_of_)
    loaded = load_builder(save_builder(built, tmp_path / "undated"), retrievers)
    assert np.isnat(loaded.as_of_)
    people = np.arange(50)
    batch = histories(undated, people, users_table)
    chosen = np.tile(np.arange(N_CANDIDATES), (len(people), 1))
    features = built.transform(batch, chosen)
    np.testing.assert_array_equal(loaded.transform(batch, chosen), features)
    for name in ("user_activity_7d", "user_days_since_last", "item_share_30d", "context_hour"):
        assert np.isnan(_column(built, features, name)).all(), name
    assert np.isfinite(_column(built, features, "user_activity")).all()
    assert np.isfinite(_column(built, features, "item_share")).all()


# --- unknown people and items ----------------------------------------------------------


def test_unknown_people_and_empty_profiles_get_missing_values_not_errors(
    builder, interactions
) -> None:
    profiles = [
        Profile(user_id="nobody"),
        Profile(
            user_id="stranger", attributes={"age": 30, "gender": "X", "occupation": "astronaut"}
        ),
    ]
    batch = Histories.from_profiles(profiles, builder.item_ids_)
    assert batch.indptr.tolist() == [0, 0, 0]
    candidates = np.tile(np.arange(N_CANDIDATES), (2, 1))
    features = builder.transform(batch, candidates, "1998-03-10T10:00:00")
    assert features.shape == (2 * N_CANDIDATES, len(builder.feature_names_))

    def column(name: str) -> np.ndarray:
        return _column(builder, features, name)

    # who they are: nothing known for "nobody"; for "stranger" the age band is known and
    # the categories never seen in training are missing
    for name in ("user_age_band", "user_gender", "user_occupation", "user_state"):
        assert np.isnan(column(name)[0]).all(), name
    assert (column("user_age_band")[1] == 2).all()  # 25-34
    assert np.isnan(column("user_gender")[1]).all() and np.isnan(column("user_occupation")[1]).all()
    # what they did: nothing
    assert (column("user_activity") == 0).all()
    for name in (
        "user_days_since_last",
        "user_mean_value",
        "last_items_max_similarity",
        "item_share_while_user_active",
        "item_first_minus_user_last",
        "release_year_gap",
    ):
        assert np.isnan(column(name)).all(), name
    # the item and the retrievers still speak (popularity for an empty history)
    assert np.isfinite(column("item_share")).all()
    assert np.isfinite(column("ease_rank")).all() and np.isfinite(column("als_score")).all()
    popularity = builder.retrievers_["ease"].popularity_
    popular = np.argsort(-popularity, kind="stable")[:3]
    ranks = builder.transform(batch.rows(0, 1), popular[None, :], "1998-03-10")
    assert _column(builder, ranks, "ease_rank", 3).tolist() == [[1.0, 2.0, 3.0]]

    # the same through the offline path: a user index without attributes or history
    offline = histories(interactions, np.array([0]), None, "1990-01-01")
    assert len(offline.items) == 0
    out = builder.transform(offline, candidates[:1])
    assert np.isnan(_column(builder, out, "user_gender")).all()
    assert (_column(builder, out, "user_activity") == 0).all()


def test_the_segment_lift_of_people_of_an_unseen_segment_is_missing(builder) -> None:
    profiles = [
        Profile("nobody"),
        Profile("ageless", {"age": 30}),
        Profile("known", {"age": 30, "gender": "M"}),
    ]
    batch = Histories.from_profiles(profiles, builder.item_ids_)
    candidates = np.tile(np.arange(N_CANDIDATES), (3, 1))
    lift = _column(builder, builder.transform(batch, candidates, "1998-03-10"), "item_segment_lift")
    assert np.isfinite(lift[2]).all() and (lift[2] > 0).any()  # a segment seen in training
    assert np.isnan(lift[:2]).all()


def test_unknown_items_in_a_profile_are_dropped(builder, interactions, cut) -> None:
    items = interactions.item_ids[:6].astype(str).tolist()
    times = [cut - np.timedelta64(d, "D") for d in range(6, 0, -1)]
    known = Profile("p", {"age": 40}, items, [4.0] * 6, times)
    mixed = Profile(
        "p",
        {"age": 40},
        [items[0], "no-such-item", *items[1:], "another-unknown"],
        [4.0, 1.0, *[4.0] * 5, 1.0],
        [times[0], cut - np.timedelta64(1, "h"), *times[1:], cut - np.timedelta64(2, "h")],
    )
    batches = [Histories.from_profiles([p], builder.item_ids_) for p in (known, mixed)]
    assert len(batches[1].items) == 6
    candidates = np.arange(100, 100 + N_CANDIDATES)[None, :]
    features = [builder.transform(b, candidates, cut) for b in batches]
    np.testing.assert_array_equal(features[1], features[0])
    assert (_column(builder, features[0], "user_mean_value") == 4.0).all()
    # a profile of only unknown items is an empty one
    only_unknown = Histories.from_profiles(
        [Profile("q", items=["nope", "nada"], values=[5.0, 5.0], timestamps=times[:2])],
        builder.item_ids_,
    )
    out = builder.transform(only_unknown, candidates, cut)
    assert (_column(builder, out, "user_activity") == 0).all()
    assert np.isnan(_column(builder, out, "user_mean_value")).all()


def test_a_profile_without_values_or_times_is_read_as_unknown(builder, interactions) -> None:
    items = interactions.item_ids[:5].astype(str).tolist()
    batch = Histories.from_profiles([Profile("r", items=items)], builder.item_ids_)
    assert np.isnan(batch.values).all() and np.isnan(batch.days).all()
    out = builder.transform(batch, np.arange(N_CANDIDATES)[None, :], "1998-03-10")
    assert np.isnan(_column(builder, out, "user_mean_value")).all()
    assert np.isnan(_column(builder, out, "user_days_since_last")).all()
    assert (_column(builder, out, "user_activity") > 0).all()
    assert np.isfinite(_column(builder, out, "last_items_max_similarity")).all()
