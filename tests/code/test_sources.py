"""The generic interaction-log adapter: file formats, timestamp formats, value mappings,
and the built-in adapters on miniature files."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from bespoke.features import collect, privacy, sources
from bespoke.features.lake import Lake
from bespoke.features.schema import EventIn


def _stored(lake: Lake, columns: str = "user_id, item_id, event_type, timestamp") -> list[tuple]:
    return lake.connect().execute(f"SELECT {columns} FROM events ORDER BY item_id").fetchall()


def _mapping(**fields) -> sources.ColumnMapping:
    return sources.ColumnMapping(default_consent=["personalization"], **fields)


JAN_1_10H = datetime(2024, 1, 1, 10, tzinfo=UTC)


@pytest.mark.parametrize(
    ("fmt", "text", "expected"),
    [
        ("iso", "2024-01-01T10:00:00Z", JAN_1_10H),
        ("iso", "2024-01-01T11:00:00+01:00", JAN_1_10H),
        ("iso", "2024-01-01T10:00:00", JAN_1_10H),  # no offset: read as UTC
        ("iso", "2024-01-01 10:00:00", JAN_1_10H),
        ("unix_s", "1704103200", JAN_1_10H),
        ("unix_ms", "1704103200000", JAN_1_10H),
        ("%d/%m/%Y %H:%M", "01/01/2024 10:00", JAN_1_10H),
    ],
)
def test_timestamp_formats_are_read_as_utc_instants(
    lake: Lake, key: bytes, write_csv, fmt: str, text: str, expected: datetime
) -> None:
    path = write_csv("log.csv", [{"u": "1", "i": "a", "t": text}])
    mapping = _mapping(
        user_id="u", item_id="i", timestamp="t", timestamp_format=fmt, event_type_constant="view"
    )
    collect.ingest(sources.interactions_file(path, mapping, "shop"), lake, key)
    assert _stored(lake, "timestamp") == [(expected,)]


def test_a_unix_time_that_is_not_a_number_is_a_type_error(write_csv) -> None:
    path = write_csv(
        "log.csv", [{"u": "1", "i": "a", "t": "1704103200"}, {"u": "2", "i": "b", "t": "soon"}]
    )
    mapping = _mapping(
        user_id="u",
        item_id="i",
        timestamp="t",
        timestamp_format="unix_s",
        event_type_constant="view",
    )
    with pytest.raises(collect.IngestError, match=r"line 3.*'soon'.*unix time"):
        sources.interactions_file(path, mapping, "shop")


def test_source_event_type_names_are_mapped_and_case_is_ignored(
    lake: Lake, key: bytes, write_csv
) -> None:
    rows = [
        {"u": "1", "i": "a", "t": "2024-01-01T00:00:00Z", "what": "buy"},
        {"u": "1", "i": "b", "t": "2024-01-01T00:00:00Z", "what": "look"},
        {"u": "1", "i": "c", "t": "2024-01-01T00:00:00Z", "what": "CLICK"},
    ]
    mapping = _mapping(
        user_id="u",
        item_id="i",
        timestamp="t",
        event_type="what",
        event_type_values={"buy": "purchase", "look": "view"},
    )
    collect.ingest(
        sources.interactions_file(write_csv("log.csv", rows), mapping, "shop"), lake, key
    )
    assert _stored(lake, "item_id, event_type") == [
        ("a", "purchase"),
        ("b", "view"),
        ("c", "click"),
    ]


def test_a_parquet_log_is_ingested_like_a_csv(lake: Lake, key: bytes, tmp_path: Path) -> None:
    path = tmp_path / "log.parquet"
    pd.DataFrame(
        {
            "u": ["1", "2"],
            "i": ["a", "b"],
            "t": ["2024-01-01T10:00:00Z", "2024-01-02T10:00:00Z"],
            "kind": ["view", "purchase"],
            "v": [None, 4.5],
        }
    ).to_parquet(path)
    mapping = _mapping(user_id="u", item_id="i", timestamp="t", event_type="kind", value="v")
    result = collect.ingest(sources.interactions_file(path, mapping, "shop"), lake, key)
    assert result.counts("events")["stored"] == 2
    assert _stored(lake, "item_id, event_type, value") == [
        ("a", "view", None),
        ("b", "purchase", 4.5),
    ]


def test_an_unreadable_parquet_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 but not really")
    with pytest.raises(collect.IngestError, match=r"broken\.parquet.*Parquet"):
        sources.interactions_file(path, _mapping(user_id="u", event_type_constant="view"), "x")


def test_a_tsv_log_is_read_by_its_extension(lake: Lake, key: bytes, write_csv) -> None:
    path = write_csv("log.tsv", "u\ti\tt\tch\n1\ta\t2024-01-01T00:00:00Z\tWeb\n")
    mapping = _mapping(
        user_id="u", item_id="i", timestamp="t", channel="ch", event_type_constant="view"
    )
    collect.ingest(sources.interactions_file(path, mapping, "shop"), lake, key)
    assert _stored(lake, "user_id, item_id, channel") == [("1", "a", "web")]


def test_an_unmapped_channel_takes_the_mapping_constant(lake: Lake, key: bytes, write_csv) -> None:
    path = write_csv("log.csv", [{"u": "1", "i": "a"}])
    mapping = _mapping(user_id="u", item_id="i", event_type_constant="view", channel_constant="crm")
    collect.ingest(sources.interactions_file(path, mapping, "shop"), lake, key)
    assert _stored(lake, "channel") == [("crm",)]


def test_the_same_events_from_files_with_different_optional_columns_are_recognised(
    lake: Lake, key: bytes, write_csv
) -> None:
    base = {"u": "1", "i": "a", "t": "2024-01-01T00:00:00Z"}
    plain = write_csv("plain.csv", [base])
    wider = write_csv("wider.csv", [base | {"device": "", "page": ""}])
    collect.ingest(
        sources.interactions_file(
            plain,
            _mapping(user_id="u", item_id="i", timestamp="t", event_type_constant="view"),
            "shop",
        ),
        lake,
        key,
    )
    mapping = _mapping(
        user_id="u",
        item_id="i",
        timestamp="t",
        device="device",
        page="page",
        event_type_constant="view",
    )
    result = collect.ingest(sources.interactions_file(wider, mapping, "shop"), lake, key)
    assert result.counts("events")["already_present"] == 1
    assert result.counts("events")["stored"] == 0


def test_the_manifest_fingerprints_the_source_files(lake: Lake, key: bytes, write_csv) -> None:
    import hashlib

    path = write_csv("log.csv", [{"u": "1", "i": "a"}])
    mapping = _mapping(user_id="u", item_id="i", event_type_constant="view")
    result = collect.ingest(sources.interactions_file(path, mapping, "shop"), lake, key)
    assert result.manifest["files"] == [
        {
            "name": "log.csv",
            "bytes": path.stat().st_size,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        }
    ]
    assert lake.runs()[0]["files"] == result.manifest["files"]


def test_progress_is_reported_through_the_callback(lake: Lake, key: bytes, write_csv) -> None:
    seen: list[tuple[str, int, int]] = []
    path = write_csv("log.csv", [{"u": "1", "i": "a"}])
    mapping = _mapping(user_id="u", item_id="i", event_type_constant="view")
    collect.ingest(
        sources.interactions_file(path, mapping, "shop"),
        lake,
        key,
        callback=lambda stage, done, total: seen.append((stage, done, total)),
    )
    assert seen[-1][0] == "done" and seen[-1][1] == seen[-1][2]
    assert [done for _, done, _ in seen] == sorted(done for _, done, _ in seen)


def test_validated_event_models_are_ingested_like_any_source(lake: Lake, key: bytes) -> None:
    events = [
        EventIn(
            user_id="u1",
            event_type="purchase",
            item_id="sku-1",
            value=12.5,
            quantity=1,
            timestamp=datetime(2024, 5, 1, 12, tzinfo=UTC),
            context={"device": "mobile", "ip": "203.0.113.9"},
            email="Ann@Example.com",
            consent=["personalization", "analytics"],
        ),
        EventIn(anonymous_id="cookie-7", event_type="view", item_id="sku-2", consent=["analytics"]),
    ]
    result = collect.ingest(sources.event_models(events, "web"), lake, key)
    counts = result.counts("events")
    assert (counts["stored"], counts["excluded_no_consent"]) == (1, 1)
    row = (
        lake.connect()
        .execute(
            "SELECT user_id, channel, device, ip_hash, email_hash, consent, timestamp FROM events"
        )
        .fetchone()
    )
    assert row[:3] == ("u1", "api", "mobile")
    assert row[3] == privacy.pseudonym(key, "ip", "203.0.113.9")
    assert row[4] == privacy.pseudonym(key, "email", "ann@example.com")
    assert row[5] == ["analytics", "personalization"]
    assert row[6] == datetime(2024, 5, 1, 12, tzinfo=UTC)
    # sending the same events again adds nothing
    again = collect.ingest(sources.event_models(events, "web"), lake, key)
    assert again.counts("events")["stored"] == 0
