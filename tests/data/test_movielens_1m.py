"""MovieLens 1M (the shared copy without timestamps) in the lake: the full 1M ratings,
all undated, and the users' attributes from users.dat."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from bespoke.features import collect, sources
from bespoke.features.lake import UNDATED, Lake

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ml1m(datasets_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    lake = Lake(str(tmp_path_factory.mktemp("ml1m") / "lake"))
    result = collect.ingest(sources.movielens_1m(datasets_dir / "ml-1m"), lake, bytes(range(32)))
    return lake, result, lake.connect()


def test_every_rating_is_read_and_stored(ml1m) -> None:
    _, result, _ = ml1m
    events = result.counts("events")
    assert events["read"] == 1_000_209
    assert events["stored"] == 1_000_209
    assert events["quarantined"] == {}
    assert events["excluded_no_consent"] == 0


def test_1000209_rate_events_by_6040_users_on_3706_items(ml1m) -> None:
    _, _, con = ml1m
    row = con.execute(
        "SELECT count(*), count(DISTINCT user_id), count(DISTINCT item_id), "
        "count(DISTINCT event_id) FROM events"
    ).fetchone()
    assert row == (1_000_209, 6_040, 3_706, 1_000_209)
    assert con.execute("SELECT DISTINCT event_type FROM events").fetchall() == [("rate",)]
    values = con.execute("SELECT DISTINCT value FROM events ORDER BY 1").fetchall()
    assert values == [(1.0,), (2.0,), (3.0,), (4.0,), (5.0,)]


def test_timestamps_are_all_missing_and_nothing_is_quarantined_for_it(ml1m) -> None:
    _, _, con = ml1m
    assert con.execute("SELECT count(timestamp) FROM events").fetchone() == (0,)
    assert con.execute("SELECT count(*) FROM quarantine").fetchone() == (0,)
    assert con.execute("SELECT count(*) FROM events WHERE event_date IS NULL").fetchone() == (
        1_000_209,
    )


def test_all_events_sit_in_the_undated_folder(ml1m) -> None:
    lake, _, _ = ml1m
    files = lake.files("events", "ml-1m")
    assert {Path(p).parent.name for p in files} == {f"event_date={UNDATED}"}
    assert sum(pq.ParquetFile(p).metadata.num_rows for p in files) == 1_000_209


def test_item_ids_stay_in_the_reindexed_range(ml1m) -> None:
    _, _, con = ml1m
    low, high = con.execute("SELECT min(item_id::INT), max(item_id::INT) FROM events").fetchone()
    assert (low, high) == (1, 3_706)


@pytest.fixture(scope="module")
def users(ml1m) -> pd.DataFrame:
    _, _, con = ml1m
    return con.execute(
        "SELECT user_id, age, gender, occupation, state, region, country FROM users "
        "WHERE dataset = 'ml-1m'"
    ).df()


@pytest.fixture(scope="module")
def users_dat(datasets_dir: Path) -> pd.DataFrame:
    """users.dat as the README describes it, read with pandas alone."""
    return pd.read_csv(
        datasets_dir / "ml-1m" / "users.dat",
        sep="::",
        engine="python",
        names=["user_id", "gender", "age", "occupation", "zip"],
        dtype={"user_id": str, "zip": str},
    )


def test_users_dat_is_ingested_for_the_6040_users_who_rated(ml1m, users) -> None:
    _, result, con = ml1m
    counts = result.counts("users")
    assert (counts["read"], counts["stored"], counts["quarantined"]) == (6_040, 6_040, {})
    assert len(users) == users["user_id"].nunique() == 6_040
    raters = {u for (u,) in con.execute("SELECT DISTINCT user_id FROM events").fetchall()}
    assert set(users["user_id"]) == raters
    assert set(users["gender"]) == {"F", "M"}


def test_ages_are_the_lower_bounds_of_the_bands_with_17_for_under_18(users, users_dat) -> None:
    assert set(users["age"]) == {17, 18, 25, 35, 45, 50, 56}
    expected = users_dat["age"].replace(1, 17).value_counts().to_dict()
    assert users["age"].value_counts().to_dict() == expected
    assert expected[17] == (users_dat["age"] == 1).sum() > 0


def test_occupations_are_the_readme_names_not_codes(users, users_dat) -> None:
    occupations = users["occupation"]
    assert occupations.notna().all()
    assert not occupations.str.fullmatch(r"\d+").any()
    assert occupations.nunique() == 21
    assert {"programmer", "writer", "retired", "other", "k-12 student"} <= set(occupations)
    # code 12 is "programmer", code 0 "other" (README)
    assert (occupations == "programmer").sum() == (users_dat["occupation"] == 12).sum() > 0
    assert (occupations == "other").sum() == (users_dat["occupation"] == 0).sum() > 0


def test_most_users_have_a_state_and_region_from_their_zip_code(ml1m, users) -> None:
    assert users["state"].notna().mean() > 0.95
    assert users["region"].notna().mean() > 0.95
    assert set(users["region"].dropna()) == {"Midwest", "Northeast", "South", "West"}
    # users.dat's first line: 1::F::1::10::48067 (Royal Oak, Michigan)
    first = users.set_index("user_id").loc["1"]
    assert (first["gender"], first["age"], first["occupation"]) == ("F", 17, "k-12 student")
    assert (first["state"], first["region"], first["country"]) == ("MI", "Midwest", "US")
    # the zip code itself is not kept, only a keyed hash of it
    _, _, con = ml1m
    columns = {name for (name, *_) in con.execute("DESCRIBE users").fetchall()}
    assert "zip" not in columns and "zip_hash" in columns
