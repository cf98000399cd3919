"""MovieLens 100K in the lake: what the data README promises, geography, catalog,
privacy of zip codes, and idempotent re-ingestion."""

from __future__ import annotations

import re
import shutil
from datetime import UTC, date, datetime
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from bespoke.features import collect, privacy, sources
from bespoke.features.lake import Lake
from bespoke.features.report import data_report


@pytest.fixture(scope="module")
def con(ml100k_lake):
    lake, _ = ml100k_lake
    return lake.connect()


def _one(con, sql: str):
    return con.execute(sql).fetchone()


def test_the_run_read_and_stored_every_rating_user_and_movie(ml100k_lake) -> None:
    _, result = ml100k_lake
    assert result.counts("events")["read"] == 100_000
    assert result.counts("events")["stored"] == 100_000
    assert result.counts("users")["stored"] == 943
    assert result.counts("items")["stored"] == 1_682
    assert result.counts("events")["excluded_no_consent"] == 0


def test_nothing_is_quarantined(ml100k_lake, con) -> None:
    _, result = ml100k_lake
    for entity in ("events", "users", "items"):
        assert result.counts(entity)["quarantined"] == {}, entity
    assert result.manifest["quarantine_written"] == 0
    assert _one(con, "SELECT count(*) FROM quarantine") == (0,)


def test_100000_rate_events_by_943_users_on_1682_items(con) -> None:
    assert _one(con, "SELECT count(*) FROM events") == (100_000,)
    assert _one(con, "SELECT count(DISTINCT event_id) FROM events") == (100_000,)
    assert con.execute("SELECT DISTINCT event_type FROM events").fetchall() == [("rate",)]
    assert _one(con, "SELECT count(DISTINCT user_id), count(DISTINCT item_id) FROM events") == (
        943,
        1_682,
    )
    assert _one(con, "SELECT count(*) FROM users") == (943,)
    assert _one(con, "SELECT count(*) FROM items") == (1_682,)


def test_ratings_are_whole_stars_from_1_to_5(con) -> None:
    values = con.execute("SELECT DISTINCT value FROM events ORDER BY value").fetchall()
    assert values == [(1.0,), (2.0,), (3.0,), (4.0,), (5.0,)]


def test_timestamps_span_1997_09_20_to_1998_04_22_utc(con) -> None:
    first, last, missing = _one(
        con, "SELECT min(timestamp), max(timestamp), count(*) - count(timestamp) FROM events"
    )
    assert missing == 0
    assert first.tzinfo is not None and last.tzinfo is not None
    assert first.astimezone(UTC).date() == date(1997, 9, 20)
    assert last.astimezone(UTC).date() == date(1998, 4, 22)
    # u.data's first line: user 196 rated item 242 at unix time 881250949
    stamp = _one(con, "SELECT timestamp FROM events WHERE user_id = '196' AND item_id = '242'")[0]
    assert stamp == datetime.fromtimestamp(881250949, UTC)


def test_every_user_has_at_least_20_ratings(con) -> None:
    fewest = _one(con, "SELECT min(n) FROM (SELECT count(*) AS n FROM events GROUP BY user_id)")
    assert fewest[0] >= 20


def test_events_files_sit_in_their_utc_day_folder(ml100k_lake, con) -> None:
    lake, _ = ml100k_lake
    files = lake.files("events", "ml-100k")
    days = _one(con, "SELECT count(DISTINCT event_date) FROM events")[0]
    assert len(files) == days
    for path in files[:: max(1, len(files) // 20)]:
        folder = Path(path).parent.name
        assert re.fullmatch(r"event_date=\d{4}-\d{2}-\d{2}", folder)
        stamps = pq.read_table(path, columns=["timestamp"]).column("timestamp").to_pylist()
        assert {s.date() for s in stamps} == {date.fromisoformat(folder.split("=")[1])}


def test_user_1_zip_85711_is_in_arizona_in_the_west(con, key: bytes) -> None:
    row = _one(con, "SELECT state, region, country, zip_hash FROM users WHERE user_id = '1'")
    assert row == ("AZ", "West", "US", privacy.pseudonym(key, "zip", "85711"))


@pytest.mark.parametrize(
    ("user_id", "state", "region"),
    # u.user: 2 → 94043, 3 → 32067, 4 → 43537, 5 → 15213
    [("2", "CA", "West"), ("3", "FL", "South"), ("4", "OH", "Midwest"), ("5", "PA", "Northeast")],
)
def test_zip_codes_resolve_to_state_and_census_region(con, user_id, state, region) -> None:
    row = _one(con, f"SELECT state, region, country FROM users WHERE user_id = '{user_id}'")
    assert row == (state, region, "US")


def test_canadian_postal_codes_resolve_to_country_ca(datasets_dir: Path, con) -> None:
    canadian = re.compile(r"^[A-Z]\d[A-Z]\d[A-Z](\d)?$")
    expected = set()
    for line in (datasets_dir / "ml-100k" / "u.user").read_text().splitlines():
        user_id, _, _, _, zip_code = line.split("|")
        if canadian.match(zip_code.strip().upper()):
            expected.add(user_id)
    assert len(expected) >= 15  # 74 T8H1N, 145 V3N4P, 167 L9G2B, ...
    rows = con.execute("SELECT user_id, state, region FROM users WHERE country = 'CA'").fetchall()
    assert {r[0] for r in rows} == expected
    assert all(state is None and region is None for _, state, region in rows)


def test_almost_every_user_is_placed_in_a_country(con) -> None:
    placed, total = _one(con, "SELECT count(country), count(*) FROM users")
    assert total == 943 and placed >= 940
    in_states = _one(con, "SELECT count(state) FROM users WHERE country = 'US'")[0]
    assert in_states >= 900


def test_no_raw_zip_code_is_stored_in_the_users_files(
    datasets_dir: Path, ml100k_lake, con, key: bytes
) -> None:
    lake, _ = ml100k_lake
    zips = {
        line.split("|")[4].strip()
        for line in (datasets_dir / "ml-100k" / "u.user").read_text().splitlines()
    }
    files = lake.files("users", "ml-100k")
    assert files
    for path in files:
        table = pq.read_table(path)
        assert not any(name == "zip" or name.startswith("zip_code") for name in table.schema.names)
        for column in table.column_names:
            values = {str(v) for v in table.column(column).to_pylist() if v is not None}
            assert not values & zips, column
        blob = Path(path).read_bytes()
        # Letter-digit codes cannot occur by chance in hex digests; check their bytes too.
        for code in (z for z in zips if re.search("[G-Z]", z)):
            assert code.encode() not in blob, code
    stored = {r[0] for r in con.execute("SELECT DISTINCT zip_hash FROM users").fetchall()}
    assert stored == {privacy.pseudonym(key, "zip", z) for z in zips}


def test_the_movie_without_a_release_date_gets_an_imputed_release_year(con) -> None:
    row = _one(con, "SELECT release_date, release_year, imputed FROM items WHERE item_id = '267'")
    assert row[0] is None
    assert 1900 < row[1] < 2000
    assert "release_year" in row[2]
    median = _one(
        con,
        "SELECT median(release_year) FROM items WHERE NOT list_contains(imputed, 'release_year')",
    )[0]
    assert row[1] == round(median)
    assert _one(con, "SELECT count(*) FROM items WHERE len(imputed) > 0") == (1,)


def test_toy_story_is_an_animated_childrens_comedy_from_1995(con) -> None:
    row = _one(
        con, "SELECT title, genres, release_date, release_year FROM items WHERE item_id = '1'"
    )
    assert row == (
        "Toy Story (1995)",
        ["Animation", "Children's", "Comedy"],
        date(1995, 1, 1),
        1995,
    )


def test_latin1_titles_are_decoded(con) -> None:
    titles = [r[0] for r in con.execute("SELECT title FROM items").fetchall()]
    assert any("é" in t for t in titles)
    assert not any("\ufffd" in t or "Ã" in t for t in titles)


def test_the_data_report_summarises_the_dataset(ml100k_lake) -> None:
    lake, _ = ml100k_lake
    report = data_report(lake, "ml-100k")
    events = report.events.to_dict("records")
    assert len(events) == 1
    row = events[0]
    assert (row["source"], row["event_type"], row["rows"], row["people"], row["items"]) == (
        "movielens-100k",
        "rate",
        100_000,
        943,
        1_682,
    )
    assert row["first"].date() == date(1997, 9, 20) and row["last"].date() == date(1998, 4, 22)
    assert sorted(map(tuple, report.tables[["table", "rows"]].to_numpy().tolist())) == [
        ("items", 1682),
        ("users", 943),
    ]
    assert report.quarantine.empty
    assert report.imputed[["table", "field", "rows"]].to_numpy().tolist() == [
        ["items", "release_year", 1]
    ]
    assert report.consent["excluded_no_consent"].tolist() == [0]


def test_reingesting_adds_nothing(
    ml100k_lake, datasets_dir: Path, tmp_path: Path, key: bytes
) -> None:
    original, _ = ml100k_lake
    copy = tmp_path / "lake"
    shutil.copytree(original.url, copy)
    lake = Lake(str(copy))
    parquet = {t: lake.files(t) for t in ("events", "users", "items", "quarantine")}
    result = collect.ingest(sources.movielens_100k(datasets_dir / "ml-100k"), lake, key)
    events = result.counts("events")
    assert events["already_present"] == 100_000
    assert events["stored"] == 0
    assert result.counts("users")["stored"] == 0
    assert result.counts("items")["stored"] == 0
    assert {t: lake.files(t) for t in parquet} == parquet
    assert lake.connect().execute("SELECT count(*) FROM events").fetchone() == (100_000,)


def test_a_persons_rows_are_found_file_by_file_for_deletion(ml100k_lake) -> None:
    lake, _ = ml100k_lake
    files = lake.files_holding("ml-100k", "196")
    con = lake.connect()
    days = con.execute(
        "SELECT count(DISTINCT event_date) FROM events WHERE dataset = 'ml-100k' AND user_id = '196'"
    ).fetchone()[0]
    assert len(files) == days > 0  # one file per day the person was active, nothing else
    assert all(f in lake.files("events", "ml-100k") for f in files)
    assert lake.files_holding("ml-100k", "no-such-user") == []
