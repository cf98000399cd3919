"""The event lake: idempotent runs, all-or-nothing writes, views, fsspec URLs, attribute
history, date partitions and the consent gate."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb
import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from bespoke.cli import app as cli
from bespoke.features import collect, report, sources
from bespoke.features.lake import DAMAGED_DIR, TMP_SUFFIX, UNDATED, Lake
from bespoke.features.schema import EVENT_SCHEMA, TABLES, person_id_of
from bespoke.settings import get_settings

VIEWS = [
    "events", "users", "items", "quarantine", "users_history", "items_history", "ingest_runs",
    "identity_graph", "identity_links", "persons", "segments", "segments_history",
]  # fmt: skip


def _ingest(path: Path, mapping: sources.ColumnMapping, lake: Lake, key: bytes, dataset="shop"):
    return collect.ingest(sources.interactions_file(path, mapping, dataset), lake, key)


def _count(lake: Lake, sql: str) -> int:
    return lake.connect().execute(sql).fetchone()[0]


# --- idempotency ----------------------------------------------------------------------------


def test_ingesting_the_same_csv_twice_stores_nothing_the_second_time(
    lake: Lake, key: bytes, write_csv, shop_rows, shop_mapping
) -> None:
    path = write_csv("log.csv", shop_rows(days=3, per_day=4))
    first = _ingest(path, shop_mapping(), lake, key)
    assert first.counts("events")["stored"] == 12
    assert first.counts("events")["already_present"] == 0
    parquet_before = sorted(lake.files("events"))

    second = _ingest(path, shop_mapping(), lake, key)
    assert second.counts("events")["stored"] == 0
    assert second.counts("events")["already_present"] == 12
    assert _count(lake, "SELECT count(*) FROM events") == 12
    assert sorted(lake.files("events")) == parquet_before
    assert [r["run_id"] for r in lake.runs()] == [first.run_id, second.run_id]


def test_an_overlapping_file_adds_only_its_new_rows(
    lake: Lake, key: bytes, write_csv, shop_rows, shop_mapping
) -> None:
    rows = shop_rows(days=2, per_day=4)
    _ingest(write_csv("a.csv", rows[:6]), shop_mapping(), lake, key)
    result = _ingest(write_csv("b.csv", rows[3:]), shop_mapping(), lake, key)
    assert result.counts("events")["already_present"] == 3
    assert result.counts("events")["stored"] == 2
    assert _count(lake, "SELECT count(*) FROM events") == 8
    assert _count(lake, "SELECT count(DISTINCT event_id) FROM events") == 8


def test_reingesting_quarantined_rows_does_not_quarantine_them_again(
    lake: Lake, key: bytes, write_csv, shop_rows, shop_mapping
) -> None:
    rows = [*shop_rows(days=1, per_day=2), shop_rows(days=1, per_day=2)[1] | {"amount": "-1"}]
    path = write_csv("log.csv", rows)
    first = _ingest(path, shop_mapping(), lake, key)
    assert first.manifest["quarantine_written"] == 1
    second = _ingest(path, shop_mapping(), lake, key)
    assert second.manifest["quarantine_written"] == 0
    assert _count(lake, "SELECT count(*) FROM quarantine") == 1


def test_a_sender_event_id_makes_resending_idempotent_even_when_content_changes(
    lake: Lake, key: bytes, write_csv, shop_mapping
) -> None:
    mapping = shop_mapping(source_event_id="id")
    row = {"id": "evt-1", "customer": "c1", "sku": "a", "ts": "2024-01-01T00:00:00Z"}
    row |= {"action": "purchase", "amount": "5"}
    _ingest(write_csv("a.csv", [row]), mapping, lake, key)
    result = _ingest(write_csv("b.csv", [row | {"amount": "6"}]), mapping, lake, key)
    assert result.counts("events")["already_present"] == 1
    assert _count(lake, "SELECT count(*) FROM events") == 1


def test_the_same_rows_in_two_datasets_are_kept_apart(
    lake: Lake, key: bytes, write_csv, shop_rows, shop_mapping
) -> None:
    path = write_csv("log.csv", shop_rows(days=1, per_day=3))
    _ingest(path, shop_mapping(), lake, key, dataset="shop-a")
    result = _ingest(path, shop_mapping(), lake, key, dataset="shop-b")
    assert result.counts("events")["stored"] == 3
    rows = (
        lake.connect()
        .execute("SELECT dataset, count(*) FROM events GROUP BY ALL ORDER BY ALL")
        .fetchall()
    )
    assert rows == [("shop-a", 3), ("shop-b", 3)]


# --- all or nothing -------------------------------------------------------------------------


def test_a_write_failing_mid_run_removes_every_file_of_the_run(
    lake: Lake, key: bytes, write_csv, shop_rows, shop_mapping, snapshot, monkeypatch
) -> None:
    rows = shop_rows(days=5, per_day=2)
    _ingest(write_csv("seed.csv", rows[:2]), shop_mapping(), lake, key)
    before = snapshot(lake.url)

    real_write = pq.write_table
    calls = itertools.count(1)
    attempted: list[str] = []

    def failing_write(table, where, *args, **kwargs):
        attempted.append(str(where))
        if next(calls) == 3:  # next() on a count is atomic: writes may run in threads
            raise OSError("disk full (injected)")
        return real_write(table, where, *args, **kwargs)

    monkeypatch.setattr(pq, "write_table", failing_write)
    path = write_csv("big.csv", rows)
    with pytest.raises(OSError, match="injected"):
        _ingest(path, shop_mapping(), lake, key)
    assert len(attempted) >= 3, "the injected failure fired on the third write"
    for written in attempted:
        assert not Path(written).exists(), written
    assert snapshot(lake.url) == before
    run_ids = {Path(p).name.split(".")[0] for p in attempted}
    assert len(run_ids) == 1
    (run_id,) = run_ids
    leftovers = [p for p in Path(lake.url).rglob("*") if p.is_file() and run_id in p.name]
    assert leftovers == []
    assert len(lake.runs()) == 1

    monkeypatch.setattr(pq, "write_table", real_write)
    again = _ingest(path, shop_mapping(), lake, key)
    assert again.counts("events")["stored"] == 8, "the failed run left no ids behind"


def test_a_partition_that_cannot_be_created_rolls_the_whole_run_back(
    lake: Lake, key: bytes, write_csv, shop_rows, shop_mapping, snapshot
) -> None:
    rows = shop_rows(days=4, per_day=2)
    _ingest(write_csv("seed.csv", rows[:2]), shop_mapping(), lake, key)
    # a plain file where the third day's folder must go: that day's write fails
    blocker = Path(lake.url) / "events" / "dataset=shop" / "event_date=2024-01-03"
    blocker.write_text("not a folder")
    before = snapshot(lake.url)
    with pytest.raises(OSError):
        _ingest(write_csv("log.csv", rows), shop_mapping(), lake, key)
    assert snapshot(lake.url) == before
    assert len(lake.runs()) == 1
    assert _count(lake, "SELECT count(*) FROM events") == 2


# --- crash safety ---------------------------------------------------------------------------
# A real SIGKILL of `bespoke ingest` and `bespoke events flush` is in
# tests/data/test_crash_safety.py; here each state a crash can leave is made exactly.


def _tmp_files(lake: Lake) -> list[Path]:
    return sorted(Path(lake.url).rglob(f"*{TMP_SUFFIX}"))


def test_a_run_writes_under_temporary_names_and_its_manifest_lists_what_it_added(
    lake: Lake, key: bytes, write_csv, shop_rows, shop_mapping
) -> None:
    result = _ingest(write_csv("log.csv", shop_rows(days=3, per_day=2)), shop_mapping(), lake, key)
    listed = result.manifest["lake_files"]
    assert listed == lake.runs()[0]["lake_files"]
    assert sorted(lake.path(f) for f in listed) == sorted(
        lake.files("events") + lake.files("users") + lake.files("items") + lake.files("quarantine")
    )
    assert len(listed) == 3 and all(f.endswith(f"{result.run_id}.parquet") for f in listed)
    assert _tmp_files(lake) == []
    assert lake.check().healthy


def test_a_crash_after_the_commit_is_rolled_forward_by_the_next_run(
    lake: Lake, key: bytes, write_csv, shop_rows, shop_mapping, monkeypatch
) -> None:
    rows = shop_rows(days=4, per_day=2)
    real_publish = Lake._publish

    def crash_on_data_files(self: Lake, temporary: str) -> None:
        if temporary.endswith(".parquet" + TMP_SUFFIX):
            raise OSError("power cut (injected) after the commit")
        real_publish(self, temporary)

    monkeypatch.setattr(Lake, "_publish", crash_on_data_files)
    path = write_csv("log.csv", rows)
    with pytest.raises(OSError, match="injected"):
        _ingest(path, shop_mapping(), lake, key)
    monkeypatch.setattr(Lake, "_publish", real_publish)
    (run,) = lake.runs()  # committed: the manifest is there ...
    assert _count(lake, "SELECT count(*) FROM events") == 0  # ... its files not visible yet
    health = lake.check()
    assert len(health.to_publish) == 4 and not health.to_remove and not health.healthy

    again = _ingest(path, shop_mapping(), lake, key)  # settles first, then dedupes
    counts = again.counts("events")
    assert (counts["stored"], counts["already_present"]) == (0, 8)
    assert lake.connect().execute(
        "SELECT count(*), count(DISTINCT event_id) FROM events"
    ).fetchone() == (8, 8)
    assert {r["run_id"] for r in lake.runs()} == {run["run_id"], again.run_id}
    assert _tmp_files(lake) == [] and lake.check().healthy


def _leave_uncommitted_files(lake: Lake) -> list[Path]:
    """What a writer killed before its commit leaves: one complete and one truncated
    temporary file, under a run id with no manifest."""
    (existing,) = [Path(f) for f in lake.files("events")][:1]
    complete = existing.with_name(f"20240101T000000Z-deadbeef.parquet{TMP_SUFFIX}")
    complete.write_bytes(existing.read_bytes())
    folder = existing.parent.with_name("event_date=2030-01-01")
    folder.mkdir()
    truncated = folder / f"20240101T000000Z-deadbeef.parquet{TMP_SUFFIX}"
    truncated.write_bytes(existing.read_bytes()[:100])
    return [complete, truncated]


def test_leftovers_of_a_killed_writer_are_invisible_reported_and_removed(
    lake: Lake, key: bytes, write_csv, shop_rows, shop_mapping, caplog, monkeypatch
) -> None:
    monkeypatch.setenv("BESPOKE_LAKE_URL", lake.url)  # what `bespoke data doctor` checks
    get_settings.cache_clear()
    _ingest(write_csv("log.csv", shop_rows(days=1, per_day=3)), shop_mapping(), lake, key)
    leftovers = _leave_uncommitted_files(lake)
    with caplog.at_level("WARNING", logger="bespoke.features.lake"):
        assert _count(lake, "SELECT count(*) FROM events") == 3  # readable, nothing extra
    assert "2 file(s) left by an interrupted write" in caplog.text
    health = lake.check()
    assert sorted(health.to_remove) == sorted(str(p) for p in leftovers)
    assert not health.to_publish and not health.unreadable

    result = CliRunner().invoke(cli, ["data", "doctor"])
    assert result.exit_code == 1, result.output
    assert "never committed" in result.output and all(p.exists() for p in leftovers)
    fixed = CliRunner().invoke(cli, ["data", "doctor", "--fix"])
    assert fixed.exit_code == 0, fixed.output
    assert not any(p.exists() for p in leftovers)
    healthy = CliRunner().invoke(cli, ["data", "doctor"])
    assert healthy.exit_code == 0 and "healthy" in healthy.output


def test_the_next_run_removes_uncommitted_leftovers_before_it_writes(
    lake: Lake, key: bytes, write_csv, shop_rows, shop_mapping
) -> None:
    rows = shop_rows(days=2, per_day=3)
    _ingest(write_csv("a.csv", rows[:3]), shop_mapping(), lake, key)
    leftovers = _leave_uncommitted_files(lake)
    result = _ingest(write_csv("b.csv", rows), shop_mapping(), lake, key)
    assert result.counts("events")["stored"] == 3
    assert not any(p.exists() for p in leftovers)
    assert _count(lake, "SELECT count(DISTINCT event_id) FROM events") == 6


def test_the_files_of_a_write_in_progress_are_not_reported_as_leftovers(
    lake: Lake, key: bytes, write_csv, shop_rows, shop_mapping, caplog
) -> None:
    _ingest(write_csv("log.csv", shop_rows(days=1, per_day=3)), shop_mapping(), lake, key)
    _leave_uncommitted_files(lake)
    with lake._lock(), caplog.at_level("WARNING", logger="bespoke.features.lake"):
        lake.connect()
        assert lake.check().writer_active
    assert "interrupted" not in caplog.text


def test_an_unreadable_file_is_found_and_moved_out_of_every_view(
    lake: Lake, key: bytes, write_csv, shop_rows, shop_mapping
) -> None:
    _ingest(write_csv("log.csv", shop_rows(days=2, per_day=3)), shop_mapping(), lake, key)
    # what an in-place writer (before crash-safe writes) left under the final name
    _, second = (Path(f) for f in lake.files("events"))
    second.write_bytes(second.read_bytes()[:64])
    with pytest.raises(duckdb.Error):
        _count(lake, "SELECT count(*) FROM events")
    health = lake.check()
    assert list(health.unreadable) == [str(second)]
    lake.repair()
    assert not second.exists()
    moved = Path(lake.url) / DAMAGED_DIR / second.relative_to(lake.url)
    assert moved.stat().st_size == 64
    assert _count(lake, "SELECT count(*) FROM events") == 3
    after = lake.check()
    assert after.healthy and after.damaged == [str(second)]


# --- views ----------------------------------------------------------------------------------


@pytest.mark.parametrize("view", VIEWS)
def test_every_view_exists_on_an_empty_lake_and_has_no_rows(lake: Lake, view: str) -> None:
    con = lake.connect()
    assert con.execute(f"SELECT count(*) FROM {view}").fetchone() == (0,)


def test_empty_views_have_their_tables_columns(lake: Lake) -> None:
    con = lake.connect()
    for table, (_, arrow) in TABLES.items():
        columns = [d[0] for d in con.execute(f"SELECT * FROM {table}").description]
        assert columns[: len(arrow.names)] == arrow.names, table
    events = [d[0] for d in con.execute("SELECT * FROM events").description]
    assert events[-2:] == ["event_date", "person_id"]


def test_opening_and_querying_an_empty_lake_creates_nothing(lake: Lake) -> None:
    lake.connect().execute("SELECT * FROM events").fetchall()
    assert lake.runs() == []
    assert lake.files("events") == []
    assert not Path(lake.url).exists()


def test_the_data_report_of_an_empty_lake_is_empty_and_an_unknown_dataset_is_refused(
    lake: Lake,
) -> None:
    summary = report.data_report(lake)
    assert summary.events.empty and summary.quarantine.empty
    with pytest.raises(KeyError, match="nosuch"):
        report.data_report(lake, "nosuch")


def test_views_see_new_files_after_a_refresh(
    lake: Lake, key: bytes, write_csv, shop_rows, shop_mapping
) -> None:
    con = lake.connect()
    _ingest(write_csv("log.csv", shop_rows(days=1, per_day=3)), shop_mapping(), lake, key)
    lake.refresh(con)
    assert con.execute("SELECT count(*) FROM events").fetchone() == (3,)
    assert con.execute("SELECT count(*) FROM ingest_runs").fetchone() == (1,)


# --- any fsspec URL -------------------------------------------------------------------------


def test_a_memory_url_lake_works_end_to_end(key: bytes, write_csv, shop_rows, shop_mapping) -> None:
    name = f"bespoke-test-{uuid.uuid4().hex}"
    memory = fsspec.filesystem("memory")
    try:
        lake = Lake(f"memory://{name}")
        assert not lake.is_local
        path = write_csv("log.csv", shop_rows(days=2, per_day=3))
        first = _ingest(path, shop_mapping(), lake, key)
        assert first.counts("events")["stored"] == 6
        con = lake.connect()
        assert con.execute(
            "SELECT count(*), count(DISTINCT event_date) FROM events"
        ).fetchone() == (
            6,
            2,
        )
        assert con.execute("SELECT count(*) FROM ingest_runs").fetchone() == (1,)
        assert memory.exists(f"/{name}/_runs/{first.run_id}.json")
        second = _ingest(path, shop_mapping(), lake, key)
        assert second.counts("events")["already_present"] == 6
        assert not Path(name).exists(), "nothing was written to the local disk"
    finally:
        if memory.exists(f"/{name}"):
            memory.rm(f"/{name}", recursive=True)


# --- attribute and catalog history ---------------------------------------------------------

USERS = [
    (1, 24, "M", "technician", "85711"),
    (2, 53, "F", "other", "94043"),
    (3, 23, "M", "writer", "T8H1N"),
]
ITEMS = [
    (1, "Toy Story (1995)", "01-Jan-1995", {"Comedy"}),
    (2, "GoldenEye (1995)", "01-Jan-1995", {"Action"}),
]
RATINGS = [(1, 1, 5, 874965758), (2, 1, 4, 874965759), (3, 2, 3, 874965760)]


def test_a_changed_user_attribute_adds_a_version_and_the_view_shows_the_latest(
    lake: Lake, key: bytes, mini_movielens
) -> None:
    first = collect.ingest(
        sources.movielens_100k(mini_movielens(USERS, ITEMS, RATINGS, "v1"), "mini"), lake, key
    )
    assert first.counts("users")["stored"] == 3
    changed = [u if u[0] != 2 else (2, 54, "F", "engineer", "94043") for u in USERS]
    second = collect.ingest(
        sources.movielens_100k(mini_movielens(changed, ITEMS, RATINGS, "v2"), "mini"), lake, key
    )
    assert second.counts("users")["stored"] == 1
    assert second.counts("users")["already_present"] == 2
    assert second.counts("events")["already_present"] == 3
    con = lake.connect()
    assert con.execute("SELECT count(*) FROM users").fetchone() == (3,)
    assert con.execute("SELECT count(*) FROM users_history").fetchone() == (4,)
    assert con.execute("SELECT age, occupation FROM users WHERE user_id = '2'").fetchall() == [
        (54, "engineer")
    ]
    history = con.execute(
        "SELECT occupation, run_id FROM users_history WHERE user_id = '2' ORDER BY ingested_at"
    ).fetchall()
    assert history == [("other", first.run_id), ("engineer", second.run_id)]
    assert con.execute("SELECT occupation FROM users WHERE user_id = '1'").fetchall() == [
        ("technician",)
    ]


def test_reverting_an_attribute_records_a_new_latest_version(
    lake: Lake, key: bytes, mini_movielens
) -> None:
    changed = [u if u[0] != 2 else (2, 53, "F", "engineer", "94043") for u in USERS]
    for name, users in [("v1", USERS), ("v2", changed), ("v3", USERS)]:
        folder = mini_movielens(users, ITEMS, RATINGS, name)
        result = collect.ingest(sources.movielens_100k(folder, "mini"), lake, key)
    assert result.counts("users")["stored"] == 1
    con = lake.connect()
    assert con.execute("SELECT occupation FROM users WHERE user_id = '2'").fetchall() == [
        ("other",)
    ]
    assert con.execute("SELECT count(*) FROM users_history WHERE user_id = '2'").fetchone() == (3,)


def test_unchanged_attributes_and_catalog_store_nothing_on_reingest(
    lake: Lake, key: bytes, mini_movielens
) -> None:
    folder = mini_movielens(USERS, ITEMS, RATINGS)
    collect.ingest(sources.movielens_100k(folder, "mini"), lake, key)
    files = {t: lake.files(t) for t in ("users", "items", "events")}
    again = collect.ingest(sources.movielens_100k(folder, "mini"), lake, key)
    for entity in ("users", "items", "events"):
        assert again.counts(entity)["stored"] == 0, entity
    assert again.counts("users")["already_present"] == 3
    assert again.counts("items")["already_present"] == 2
    assert {t: lake.files(t) for t in files} == files


def test_a_changed_item_adds_a_catalog_version_and_the_view_shows_the_latest(
    lake: Lake, key: bytes, mini_movielens
) -> None:
    collect.ingest(
        sources.movielens_100k(mini_movielens(USERS, ITEMS, RATINGS, "v1"), "mini"), lake, key
    )
    renamed = [(1, "Toy Story (1995)", "01-Jan-1995", {"Comedy", "Action"}), ITEMS[1]]
    result = collect.ingest(
        sources.movielens_100k(mini_movielens(USERS, renamed, RATINGS, "v2"), "mini"), lake, key
    )
    assert result.counts("items")["stored"] == 1
    con = lake.connect()
    assert con.execute("SELECT genres FROM items WHERE item_id = '1'").fetchall() == [
        (["Action", "Comedy"],)
    ]
    assert con.execute("SELECT count(*) FROM items_history").fetchone() == (3,)


def test_ratings_of_items_missing_from_the_catalog_are_quarantined(
    lake: Lake, key: bytes, mini_movielens
) -> None:
    ratings = [*RATINGS, (1, 77, 4, 874965761)]
    folder = mini_movielens(USERS, ITEMS, ratings)
    result = collect.ingest(sources.movielens_100k(folder, "mini"), lake, key)
    assert result.counts("events")["quarantined"] == {"unknown_item": 1}
    # a later run with only events still checks against the catalog in the lake
    later = mini_movielens(USERS, ITEMS, [(2, 78, 1, 874965762), (2, 2, 1, 874965763)], "later")
    batch = sources.movielens_100k(later, "mini")
    batch.items = None
    batch.users = None
    result = collect.ingest(batch, lake, key)
    assert result.counts("events")["quarantined"] == {"unknown_item": 1}
    assert result.counts("events")["stored"] == 1


def test_user_zip_codes_become_state_region_country_and_a_keyed_hash(
    lake: Lake, key: bytes, mini_movielens
) -> None:
    from bespoke.features import privacy

    collect.ingest(sources.movielens_100k(mini_movielens(USERS, ITEMS, RATINGS), "mini"), lake, key)
    rows = (
        lake.connect()
        .execute("SELECT user_id, state, region, country, zip_hash FROM users ORDER BY user_id")
        .fetchall()
    )
    assert rows == [
        ("1", "AZ", "West", "US", privacy.pseudonym(key, "zip", "85711")),
        ("2", "CA", "West", "US", privacy.pseudonym(key, "zip", "94043")),
        ("3", None, None, "CA", privacy.pseudonym(key, "zip", "T8H1N")),
    ]


# --- partitions -----------------------------------------------------------------------------


def test_events_files_are_grouped_in_utc_event_date_folders(
    lake: Lake, key: bytes, write_csv, shop_mapping
) -> None:
    stamps = [
        "2024-01-01T00:00:00Z",
        "2024-01-01T23:59:59Z",
        "2024-01-01T23:30:00-05:00",  # 04:30 UTC on the 2nd
        "2024-01-02T12:00:00+00:00",
        "2024-01-03T01:00:00+02:00",  # 23:00 UTC on the 2nd
        "2024-03-10T08:00:00Z",
    ]
    rows = [
        {"customer": f"c{n % 2}", "sku": f"s{n}", "ts": ts, "action": "view", "amount": ""}
        for n, ts in enumerate(stamps)
    ]
    _ingest(write_csv("log.csv", rows), shop_mapping(), lake, key)
    per_folder: dict[str, int] = {}
    for path in lake.files("events"):
        folder = Path(path).parent.name
        assert Path(path).parent.parent.name == "dataset=shop"
        day = date.fromisoformat(folder.removeprefix("event_date="))
        table = pq.read_table(path)
        days = {d.date() for d in table.column("timestamp").to_pylist()}
        assert days == {day}, path
        per_folder[folder] = per_folder.get(folder, 0) + table.num_rows
    assert per_folder == {
        "event_date=2024-01-01": 2,
        "event_date=2024-01-02": 3,
        "event_date=2024-03-10": 1,
    }
    dates = (
        lake.connect()
        .execute("SELECT event_date, count(*) FROM events GROUP BY ALL ORDER BY ALL")
        .fetchall()
    )
    assert dates == [(date(2024, 1, 1), 2), (date(2024, 1, 2), 3), (date(2024, 3, 10), 1)]


def test_each_events_file_is_sorted_by_user_id(
    lake: Lake, key: bytes, write_csv, shop_mapping
) -> None:
    # The lake promises this (lake.py docstring): a person's rows are then found through
    # Parquet statistics without reading whole files (deletion requests rely on it).
    rows = [
        {"customer": f"c{n % 3}", "sku": f"s{n}", "ts": f"2024-01-01T{n:02d}:00:00Z"}
        | {"action": "view", "amount": ""}
        for n in range(12)
    ]
    _ingest(write_csv("log.csv", rows), shop_mapping(), lake, key)
    files = lake.files("events")
    assert len(files) == 1
    table = pq.read_table(files[0])
    users = table.column("user_id").to_pylist()
    assert users == sorted(users)


def test_a_source_without_timestamps_goes_to_the_undated_folder(
    lake: Lake, key: bytes, write_csv, shop_rows, shop_mapping
) -> None:
    rows = [{k: v for k, v in r.items() if k != "ts"} for r in shop_rows(days=1, per_day=3)]
    result = _ingest(write_csv("log.csv", rows), shop_mapping(timestamp=None), lake, key)
    assert result.counts("events")["stored"] == 3
    folders = {Path(p).parent.name for p in lake.files("events")}
    assert folders == {f"event_date={UNDATED}"}
    assert _count(lake, "SELECT count(*) FROM events WHERE timestamp IS NULL") == 3


def test_a_log_without_value_or_quantity_columns_is_stored_with_empty_values(
    lake: Lake, key: bytes, write_csv
) -> None:
    rows = [{"who": f"u{n}", "what": f"i{n}", "when": "2024-01-01T00:00:00Z"} for n in range(3)]
    mapping = sources.ColumnMapping(
        user_id="who",
        item_id="what",
        timestamp="when",
        event_type_constant="view",
        default_consent=["personalization"],
    )
    result = _ingest(write_csv("views.csv", rows), mapping, lake, key)
    assert result.counts("events")["stored"] == 3
    assert _count(lake, "SELECT count(*) FROM events WHERE value IS NULL AND quantity IS NULL") == 3


def test_every_events_file_holds_all_the_columns_of_the_schema(
    lake: Lake, key: bytes, write_csv, shop_rows, shop_mapping
) -> None:
    _ingest(write_csv("log.csv", shop_rows()), shop_mapping(), lake, key)
    schema = TABLES["events"][1]
    for path in lake.files("events"):
        assert pq.read_schema(path).names == schema.names


# --- consent --------------------------------------------------------------------------------


def test_events_without_personalization_consent_are_not_stored_and_are_counted(
    lake: Lake, key: bytes, write_csv, shop_mapping
) -> None:
    consents = [
        "personalization",
        "analytics",
        "Personalization;Analytics",
        "",
        "marketing|necessary",
        "analytics, personalization",
    ]
    rows = [
        {"customer": "c1", "sku": f"s{n}", "ts": "2024-01-01T10:00:00Z", "action": "view"}
        | {"amount": "", "consent": consent}
        for n, consent in enumerate(consents)
    ]
    mapping = shop_mapping(consent="consent", default_consent=[])
    result = _ingest(write_csv("log.csv", rows), mapping, lake, key)
    events = result.counts("events")
    assert events["excluded_no_consent"] == 3
    assert events["stored"] == 3
    assert result.manifest["events"]["excluded_no_consent"] == 3
    con = lake.connect()
    stored = con.execute("SELECT item_id FROM events ORDER BY item_id").fetchall()
    assert stored == [("s0",), ("s2",), ("s5",)]
    assert con.execute("SELECT count(*) FROM quarantine").fetchone() == (0,)
    manifest = lake.runs()[0]
    assert manifest["events"]["excluded_no_consent"] == 3
    assert report.data_report(lake).consent["excluded_no_consent"].tolist() == [3]


@pytest.mark.parametrize(
    "spelling",
    [
        "personalization|analytics",
        "analytics|personalization",
        "Analytics;Personalization",
        "analytics, personalization",
        " personalization ,analytics",
        "analytics|personalization|analytics",
    ],
)
def test_consent_is_stored_as_sorted_distinct_purposes_whatever_the_spelling(
    lake: Lake, key: bytes, write_csv, shop_mapping, spelling: str
) -> None:
    row = {"customer": "c1", "sku": "s0", "ts": "2024-01-01T10:00:00Z", "action": "view"}
    path = write_csv("log.csv", [row | {"amount": "", "consent": spelling}])
    _ingest(path, shop_mapping(consent="consent", default_consent=[]), lake, key)
    stored = lake.connect().execute("SELECT consent FROM events").fetchall()
    assert stored == [(["analytics", "personalization"],)]


def test_rows_without_consent_of_their_own_take_the_default(
    lake: Lake, key: bytes, write_csv, shop_mapping
) -> None:
    rows = [
        {"customer": "c1", "sku": "s0", "ts": "2024-01-01T10:00:00Z", "action": "view"}
        | {"amount": "", "consent": ""},
        {"customer": "c1", "sku": "s1", "ts": "2024-01-01T10:00:00Z", "action": "view"}
        | {"amount": "", "consent": "analytics"},
    ]
    mapping = shop_mapping(consent="consent", default_consent=["personalization", "analytics"])
    result = _ingest(write_csv("log.csv", rows), mapping, lake, key)
    assert result.counts("events")["stored"] == 1
    assert result.counts("events")["excluded_no_consent"] == 1
    stored = lake.connect().execute("SELECT item_id, consent FROM events").fetchall()
    assert stored == [("s0", ["analytics", "personalization"])]


def test_every_read_row_is_stored_quarantined_excluded_or_already_present(
    lake: Lake, key: bytes, write_csv, shop_rows, shop_mapping
) -> None:
    rows = shop_rows(days=2, per_day=4)
    rows[1] = rows[1] | {"amount": "0"}  # zero-value purchase
    rows[2] = rows[2] | {"consent": "analytics"}
    for row in rows:
        row.setdefault("consent", "")
    mapping = shop_mapping(consent="consent")
    _ingest(write_csv("a.csv", rows[:3]), mapping, lake, key)
    result = _ingest(write_csv("b.csv", rows), mapping, lake, key)
    counts = result.counts("events")
    parts = (
        counts["stored"]
        + counts["already_present"]
        + counts["excluded_no_consent"]
        + sum(counts["quarantined"].values())
    )
    assert counts["read"] == parts == 8
    assert counts["already_present"] == 1
    total = pc.sum(pc.equal(lake.read_column("events", "dataset", "shop"), "shop")).as_py()
    assert total == 6


def test_rows_without_a_sender_id_are_told_apart_by_content_when_others_have_one(
    lake: Lake, key: bytes, write_csv, shop_mapping
) -> None:
    # Some senders give ids for some rows only; the rows without one must still be
    # deduplicated by their content, not collapse into one id.
    rows = [
        {"id": "evt-1", "customer": "c1", "sku": "a", "ts": "2024-01-01T00:00:00Z"},
        {"id": "", "customer": "c2", "sku": "b", "ts": "2024-01-01T00:00:00Z"},
        {"id": "", "customer": "c3", "sku": "c", "ts": "2024-01-01T00:00:00Z"},
        {"id": "", "customer": "c4", "sku": "d", "ts": "2024-01-02T00:00:00Z"},
    ]
    rows = [r | {"action": "view", "amount": ""} for r in rows]
    mapping = shop_mapping(source_event_id="id")
    result = _ingest(write_csv("mixed.csv", rows), mapping, lake, key)
    assert result.counts("events")["quarantined"] == {}
    assert result.counts("events")["stored"] == 4
    assert _count(lake, "SELECT count(DISTINCT event_id) FROM events") == 4


def test_files_written_before_a_column_was_added_still_read(
    lake: Lake, key: bytes, tmp_path: Path
) -> None:
    """A lake written by an older version (events without device_id and crm_id) opens,
    and its events get their person."""
    old = pa.schema([f for f in EVENT_SCHEMA if f.name not in ("device_id", "crm_id")])
    row = {f.name: None for f in old}
    row.update(event_id="e1", dataset="old", user_id="u1", event_type="view", channel="web",
               consent=["personalization"], imputed=[], run_id="r1",
               ingested_at=datetime(2024, 1, 1, tzinfo=UTC))  # fmt: skip
    folder = tmp_path / "lake" / "events" / "dataset=old" / "event_date=undated"
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([row], schema=old), folder / "r1.parquet")
    rows = lake.connect().execute("SELECT device_id, crm_id, person_id FROM events").fetchall()
    assert rows == [(None, None, person_id_of("user_id", "u1"))]
