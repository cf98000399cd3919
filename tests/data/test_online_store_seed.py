"""A freshly started service knows MovieLens 100K's people: their attributes and latest
ratings are loaded from the real lake into the online store, and the ranker's profile of
a person is exactly the offline history cut from the lake at the same time."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bespoke.features.build import Histories, histories
from bespoke.features.lake import Lake
from bespoke.features.schema import EventIn
from bespoke.serving.store import RECENT_EVENTS, SQLiteStore
from bespoke.training.data import load_interactions, load_users

DATASET = "ml-100k"
CUT = "1998-02-01"


@pytest.fixture(scope="module")
def lake(ml100k_lake) -> Lake:
    return ml100k_lake[0]


@pytest.fixture(scope="module")
def seeded(lake: Lake, tmp_path_factory: pytest.TempPathFactory) -> tuple[SQLiteStore, int]:
    """Attributes and full history loaded once (read-only for the tests using it)."""
    folder = tmp_path_factory.mktemp("seeded")
    store = SQLiteStore(f"sqlite:///{folder / 'online.db'}", b"k" * 32)
    assert store.load_attributes(lake, DATASET) == 943
    return store, store.seed_history(lake, DATASET)


@pytest.fixture
def store(tmp_path: Path, key: bytes) -> SQLiteStore:
    return SQLiteStore(f"sqlite:///{tmp_path / 'online.db'}", key)


def _per_user(lake: Lake, before: str | None = None) -> pd.Series:
    where = f"AND timestamp < TIMESTAMPTZ '{before}'" if before else ""
    frame = (
        lake.connect()
        .execute(
            f"SELECT user_id, count(*) AS n FROM events WHERE dataset = ? {where} GROUP BY 1",
            [DATASET],
        )
        .df()
    )
    return frame.set_index("user_id")["n"]


def test_every_user_has_the_lakes_attributes(lake: Lake, seeded) -> None:
    store, _ = seeded
    assert store.profile("1", DATASET).attributes == {
        "age": 24,
        "gender": "M",
        "occupation": "technician",
        "state": "AZ",
        "region": "West",
        "country": "US",
    }
    users = load_users(lake, DATASET).set_index("user_id")
    for user_id in users.index[::50]:
        attributes = store.profile(user_id, DATASET).attributes
        expected = users.loc[user_id]
        for name, value in attributes.items():
            assert value == (None if pd.isna(expected[name]) else expected[name]), (user_id, name)


def test_every_user_has_their_latest_ratings_up_to_the_cap(lake: Lake, seeded) -> None:
    store, loaded = seeded
    counts = _per_user(lake)
    assert loaded == int(np.minimum(counts, RECENT_EVENTS).sum())
    assert counts.max() > RECENT_EVENTS  # the cap is exercised
    heaviest = str(counts.idxmax())
    con = lake.connect()
    for user_id in (heaviest, "1", "943"):
        view = store.profile(user_id, DATASET)
        expected = con.execute(
            "SELECT item_id, value, timestamp FROM events WHERE dataset = ? AND user_id = ? "
            "ORDER BY timestamp DESC, event_id DESC LIMIT ?",
            [DATASET, user_id, RECENT_EVENTS],
        ).fetchall()
        assert [(e.item_id, e.value, e.timestamp) for e in view.recent] == [
            (item, value, stamp.astimezone(UTC)) for item, value, stamp in expected
        ]
        assert view.last_event_at == {"rate": expected[0][2].astimezone(UTC)}
        assert len(view.recent) == min(int(counts[user_id]), RECENT_EVENTS)


def test_online_profiles_give_exactly_the_offline_histories(lake: Lake, store: SQLiteStore) -> None:
    store.load_attributes(lake, DATASET)
    store.seed_history(lake, DATASET, as_of=CUT)
    before = _per_user(lake, CUT)
    users = [u for u in before.index if before[u] < RECENT_EVENTS][:80]
    assert len(users) == 80
    interactions = load_interactions(lake, DATASET)
    offline = histories(
        interactions,
        interactions.user_index(users),
        attributes=load_users(lake, DATASET),
        as_of=CUT,
    )
    online = Histories.from_profiles(
        [store.as_profile(u, DATASET) for u in users], interactions.item_ids
    )
    assert offline.indptr[-1] == int(before[users].sum())
    np.testing.assert_array_equal(online.user_ids, offline.user_ids)
    np.testing.assert_array_equal(online.indptr, offline.indptr)
    np.testing.assert_array_equal(online.items, offline.items)
    np.testing.assert_array_equal(online.values, offline.values)
    np.testing.assert_array_equal(online.days, offline.days)
    pd.testing.assert_frame_equal(online.attributes, offline.attributes, check_dtype=False)

    # The one-read snapshot of the request path is the same person as the two reads.
    for user_id in users[:20]:
        snapshot = store.snapshot(user_id, DATASET)
        profile, view = store.as_profile(user_id, DATASET), store.profile(user_id, DATASET)
        assert snapshot.profile.items == profile.items
        assert snapshot.profile.attributes == profile.attributes
        np.testing.assert_array_equal(snapshot.profile.values, profile.values)
        np.testing.assert_array_equal(snapshot.profile.timestamps, profile.timestamps)
        assert [(e["type"], e["item_id"], e["value"], e["timestamp"]) for e in snapshot.events] == [
            (e.event_type, e.item_id, e.value, e.timestamp) for e in view.recent
        ]
        assert snapshot.version is not None


def test_nothing_after_the_seeding_time_reaches_a_profile(lake: Lake, store: SQLiteStore) -> None:
    store.seed_history(lake, DATASET, as_of=CUT)
    cut = datetime.fromisoformat(CUT).replace(tzinfo=UTC)
    for user_id in ("1", "13", "655"):
        view = store.profile(user_id, DATASET)
        assert all(e.timestamp < cut for e in view.recent)
        assert all(at < cut for at in view.last_event_at.values())


def test_live_events_join_seeded_profiles_and_survive_reseeding_and_flushing(
    lake: Lake, store: SQLiteStore, tmp_path: Path
) -> None:
    store.seed_history(lake, DATASET)
    n_before = len(store.profile("1", DATASET).recent)
    live = EventIn(
        user_id="1",
        event_type="rate",
        item_id="50",
        value=5.0,
        timestamp=datetime(1998, 5, 1, 9, 30, tzinfo=UTC),
        consent=["personalization"],
    )
    assert store.accept_events([live], DATASET).accepted == 1

    def latest() -> list[tuple[str | None, datetime | None]]:
        view = store.profile("1", DATASET)
        return [(e.item_id, e.timestamp) for e in view.recent]

    expected = ("50", live.timestamp)
    assert latest()[0] == expected and len(latest()) == n_before + 1
    store.seed_history(lake, DATASET)  # a restart: the pending event is kept once
    assert latest()[0] == expected and latest().count(expected) == 1

    copy = Lake(str(shutil.copytree(Path(lake.url), tmp_path / "lake")))
    result = store.flush(copy)
    assert result.datasets[DATASET]["stored"] == 1
    store.seed_history(copy, DATASET)  # now it comes from the lake, still once
    assert latest()[0] == expected and latest().count(expected) == 1
    assert len(latest()) == n_before + 1


def test_the_cli_seeds_the_store_and_shows_a_person(
    lake: Lake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from bespoke.cli import app
    from bespoke.settings import get_settings

    monkeypatch.setenv("BESPOKE_HOME", str(tmp_path))
    monkeypatch.setenv("BESPOKE_LAKE_URL", str(lake.url))
    monkeypatch.setenv("BESPOKE_ONLINE_STORE_URL", f"sqlite:///{tmp_path / 'online.db'}")
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        missing = runner.invoke(app, ["profiles", "show", "1"])
        assert missing.exit_code == 1 and "no profile for '1'" in missing.output
        seeded = runner.invoke(app, ["profiles", "seed", "--dataset", DATASET, "--as-of", CUT])
        assert seeded.exit_code == 0, seeded.output
        assert "943 people's attributes" in seeded.output
        shown = runner.invoke(app, ["profiles", "show", "1"])
        assert shown.exit_code == 0 and '"occupation": "technician"' in shown.output
        unknown = runner.invoke(app, ["profiles", "seed", "--dataset", "no-such-set"])
        assert unknown.exit_code == 1
    finally:
        get_settings.cache_clear()
