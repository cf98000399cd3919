"""MovieLens 1M (the shared copy without timestamps) in the lake: the full 1M ratings,
all undated."""

from __future__ import annotations

from pathlib import Path

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
