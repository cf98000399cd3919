"""CDNOW purchases in the lake: every line accounted for, the original's duplicates and
zero-dollar orders quarantined with their reason, values and dates as published."""

from __future__ import annotations

import json
import shutil
from datetime import date
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bespoke.cli import app
from bespoke.features import collect, sources
from bespoke.features.lake import Lake
from bespoke.features.report import data_report
from bespoke.settings import get_settings

READ = 69_659
DUPLICATES = 255
ZERO_VALUE = 80
STORED = READ - DUPLICATES - ZERO_VALUE  # 69,324


@pytest.fixture(scope="module")
def con(cdnow_lake):
    lake, _ = cdnow_lake
    return lake.connect()


def _one(con, sql: str):
    return con.execute(sql).fetchone()


def test_every_purchase_line_is_read(cdnow_lake) -> None:
    _, result = cdnow_lake
    assert result.counts("events")["read"] == READ


def test_the_manifest_counts_255_duplicates_and_80_zero_value_purchases(cdnow_lake) -> None:
    _, result = cdnow_lake
    events = result.counts("events")
    assert events["quarantined"] == {
        "exact_duplicate": DUPLICATES,
        "zero_value_purchase": ZERO_VALUE,
    }
    assert events["stored"] == STORED == 69_324
    assert events["stored"] + sum(events["quarantined"].values()) == events["read"]
    assert events["excluded_no_consent"] == 0
    assert events["already_present"] == 0
    assert result.manifest["quarantine_written"] == DUPLICATES + ZERO_VALUE


def test_the_quarantine_table_holds_exactly_those_rows(con) -> None:
    rows = con.execute(
        "SELECT entity, reason, count(*) FROM quarantine GROUP BY ALL ORDER BY ALL"
    ).fetchall()
    assert rows == [
        ("events", "exact_duplicate", DUPLICATES),
        ("events", "zero_value_purchase", ZERO_VALUE),
    ]
    assert _one(con, "SELECT count(DISTINCT quarantine_id) FROM quarantine") == (335,)


def test_stored_plus_quarantined_rows_in_the_lake_equal_the_lines_read(con) -> None:
    stored = _one(con, "SELECT count(*) FROM events")[0]
    quarantined = _one(con, "SELECT count(*) FROM quarantine")[0]
    assert stored == STORED
    assert stored + quarantined == READ


def test_quarantined_rows_point_at_their_line_in_the_source_file(datasets_dir: Path, con) -> None:
    lines = (datasets_dir / "cdnow" / "CDNOW_master.txt").read_text().splitlines()
    first_seen: dict[tuple[str, ...], int] = {}
    for number, line in enumerate(lines, start=1):
        first_seen.setdefault(tuple(line.split()), number)
    rows = con.execute(
        "SELECT source, source_row, reason, record FROM quarantine ORDER BY source_row"
    ).fetchall()
    for source, line_number, reason, record in rows:
        assert source == "CDNOW_master.txt"
        customer, day, cds, dollars = lines[line_number - 1].split()
        stored = json.loads(record)
        assert stored["user_id"] == customer
        assert stored["timestamp"].startswith(f"{day[:4]}-{day[4:6]}-{day[6:]}T00:00:00")
        assert stored["quantity"] == int(cds)
        assert stored["value"] == pytest.approx(float(dollars))
        if reason == "zero_value_purchase":
            assert float(dollars) == 0
        else:  # an exact duplicate repeats an earlier line
            assert first_seen[tuple(lines[line_number - 1].split())] < line_number


def test_every_customer_is_in_the_lake_or_its_quarantine(con) -> None:
    customers = _one(
        con,
        "SELECT count(DISTINCT user_id) FROM (SELECT user_id FROM events UNION ALL "
        "SELECT json_extract_string(record, '$.user_id') FROM quarantine)",
    )
    assert customers == (23_570,)


def test_customer_ids_keep_their_leading_zeros(con) -> None:
    assert _one(con, "SELECT count(*) FROM events WHERE user_id = '00001'") == (1,)
    assert _one(con, "SELECT min(length(user_id)), max(length(user_id)) FROM events") == (5, 5)


def test_stored_purchases_have_positive_values_and_quantities(con) -> None:
    row = _one(
        con,
        "SELECT min(value), min(quantity), count(*) - count(value), count(*) - count(quantity), "
        "count(DISTINCT event_type) FROM events",
    )
    low_value, low_quantity, no_value, no_quantity, types = row
    assert low_value > 0 and low_quantity > 0
    assert no_value == 0 and no_quantity == 0
    assert types == 1
    assert _one(con, "SELECT DISTINCT event_type FROM events") == ("purchase",)


def test_dates_span_1997_01_01_to_1998_06_30(con) -> None:
    first, last = _one(con, "SELECT min(timestamp), max(timestamp) FROM events")
    assert first.date() == date(1997, 1, 1)
    assert last.date() == date(1998, 6, 30)
    assert _one(con, "SELECT count(*) FROM events WHERE timestamp IS NULL") == (0,)


def test_the_first_line_is_stored_as_published(con) -> None:
    # CDNOW_master.txt line 2: "00001 19970101 1 11.77"
    row = _one(con, "SELECT timestamp, quantity, value FROM events WHERE user_id = '00001'")
    assert (row[0].date(), row[1], row[2]) == (date(1997, 1, 1), 1, 11.77)


def test_the_data_report_shows_the_quarantine_by_reason(cdnow_lake) -> None:
    lake, _ = cdnow_lake
    report = data_report(lake, "cdnow")
    assert report.events[["source", "event_type", "rows"]].to_numpy().tolist() == [
        ["cdnow", "purchase", STORED]
    ]
    assert report.quarantine[["reason", "rows"]].to_numpy().tolist() == [
        ["exact_duplicate", DUPLICATES],
        ["zero_value_purchase", ZERO_VALUE],
    ]


def test_reingesting_adds_nothing(cdnow_lake, datasets_dir: Path, tmp_path: Path, key) -> None:
    original, _ = cdnow_lake
    shutil.copytree(original.url, tmp_path / "lake")
    lake = Lake(str(tmp_path / "lake"))
    result = collect.ingest(sources.cdnow(datasets_dir / "cdnow"), lake, key)
    events = result.counts("events")
    assert events["stored"] == 0
    assert events["already_present"] == STORED
    assert events["quarantined"] == {
        "exact_duplicate": DUPLICATES,
        "zero_value_purchase": ZERO_VALUE,
    }
    assert result.manifest["quarantine_written"] == 0
    con = lake.connect()
    assert _one(con, "SELECT count(*) FROM events") == (STORED,)
    assert _one(con, "SELECT count(*) FROM quarantine") == (DUPLICATES + ZERO_VALUE,)


def test_the_cli_ingests_cdnow_from_the_datasets_dir_and_reports_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, datasets_dir: Path
) -> None:
    monkeypatch.setenv("BESPOKE_DATASETS_DIR", str(datasets_dir))
    monkeypatch.setenv("BESPOKE_LAKE_URL", str(tmp_path / "cli-lake"))
    get_settings.cache_clear()
    runner = CliRunner()
    result = runner.invoke(app, ["ingest", "cdnow"])
    assert result.exit_code == 0, result.output
    assert f"{READ} read, {STORED} stored" in result.output
    assert "335 quarantined" in result.output
    get_settings.cache_clear()
    shown = runner.invoke(app, ["data", "report", "--dataset", "cdnow"])
    assert shown.exit_code == 0, shown.output
    assert "zero_value_purchase" in shown.output and "exact_duplicate" in shown.output
