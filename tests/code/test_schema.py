"""The pydantic records and the Arrow schemas of the lake stay in step; incoming events
are strictly validated."""

from __future__ import annotations

import typing
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from pydantic import ValidationError

from bespoke.experiments.ledger import ExperimentLedger, Exposure
from bespoke.features import collect, schema, sources
from bespoke.features.lake import Lake
from bespoke.identity.build import build_graph
from bespoke.segments.train import write_assignments
from bespoke.serving.db import Database


@pytest.mark.parametrize("table", sorted(schema.TABLES))
def test_model_fields_match_the_arrow_schema_names_in_order(table: str) -> None:
    model, arrow = schema.TABLES[table]
    assert list(model.model_fields) == arrow.names


@pytest.mark.parametrize("table", sorted(schema.TABLES))
def test_model_optional_fields_are_exactly_the_nullable_arrow_fields(table: str) -> None:
    model, arrow = schema.TABLES[table]
    for field in arrow:
        annotation = model.model_fields[field.name].annotation
        optional = type(None) in typing.get_args(annotation)
        assert optional == field.nullable, f"{table}.{field.name}"


@pytest.mark.parametrize("table", sorted(schema.TABLES))
def test_list_columns_are_lists_in_both(table: str) -> None:
    model, arrow = schema.TABLES[table]
    for field in arrow:
        annotation = model.model_fields[field.name].annotation
        assert pa.types.is_list(field.type) == (typing.get_origin(annotation) is list), field.name


@pytest.mark.parametrize("table", sorted(schema.TABLES))
def test_timestamps_in_the_lake_are_utc(table: str) -> None:
    _, arrow = schema.TABLES[table]
    stamps = [f for f in arrow if pa.types.is_timestamp(f.type)]
    assert stamps, "every table records when its rows arrived"
    assert all(f.type.tz == "UTC" for f in stamps)


def test_rows_written_to_the_lake_validate_against_their_models(
    lake: Lake, key: bytes, mini_movielens, tmp_path: Path
) -> None:
    folder = mini_movielens(
        users=[(1, 24, "M", "technician", "85711"), (2, 53, "F", "other", "T8H1N")],
        items=[(1, "Toy Story (1995)", "01-Jan-1995", {"Comedy"}), (2, "Nobody", "", set())],
        # item 9 is not in the catalog: it goes to quarantine
        ratings=[(1, 1, 5, 881250949), (2, 2, 3, 881250950), (2, 9, 4, 881250951)],
    )
    collect.ingest(sources.movielens_100k(folder, dataset="mini"), lake, key)
    login = folder / "login.csv"  # a visitor logs in: a link for the identity tables
    login.write_text("user,cookie,item,ts\n1,c-1,1,2024-01-01T10:00:00Z\n")
    mapping = sources.ColumnMapping(user_id="user", anonymous_id="cookie", item_id="item",
                                    timestamp="ts", event_type_constant="view",
                                    default_consent=["personalization"])  # fmt: skip
    collect.ingest(sources.interactions_file(login, mapping, "mini"), lake, key)
    build_graph(lake, "mini", key)
    write_assignments(lake, "mini", pd.DataFrame({"segment": ["Active"], "rule_segments": [["All"]]},
                                                  index=["1"]), "1998-01-01", "segments-v1")  # fmt: skip
    ledger = ExperimentLedger(Database(tmp_path / "online.sqlite"))
    ledger.record([Exposure("mini", "ranker-on", "1", False, "control", 0, 2, False,
                            datetime(2024, 1, 2, tzinfo=UTC))])  # fmt: skip
    ledger.flush(lake)
    con = lake.connect()
    for table, (model, arrow) in schema.TABLES.items():
        rows = con.execute(f"SELECT {', '.join(arrow.names)} FROM {table}").to_arrow_table()
        assert rows.num_rows > 0, table
        for row in rows.to_pylist():
            model.model_validate(row)


# --- EventIn: what a client may send ---------------------------------------------------

VALID = {
    "user_id": "u1",
    "event_type": "purchase",
    "item_id": "sku-1",
    "value": 12.5,
    "timestamp": "2024-03-01T10:00:00+01:00",
    "context": {"device": "ios", "ip": "203.0.113.7"},
    "email": "someone@example.com",
    "consent": ["personalization"],
}


def test_a_valid_event_is_accepted_and_its_time_kept_aware() -> None:
    event = schema.EventIn.model_validate(VALID)
    assert event.timestamp == datetime(2024, 3, 1, 9, 0, tzinfo=UTC)
    assert event.event_type == "purchase"
    assert event.channel == "api"


def test_an_anonymous_id_alone_is_enough_identity() -> None:
    data = {k: v for k, v in VALID.items() if k != "user_id"} | {"anonymous_id": "cookie-9"}
    assert schema.EventIn.model_validate(data).anonymous_id == "cookie-9"


@pytest.mark.parametrize(
    ("change", "field_in_error"),
    [
        ({"colour": "blue"}, "colour"),
        ({"context": {"device": "ios", "gps": "1,2"}}, "gps"),
        ({"event_type": "teleport"}, "event_type"),
        ({"event_type": None}, "event_type"),
        ({"timestamp": "2024-03-01T10:00:00"}, "timestamp"),
        ({"timestamp": datetime(2024, 3, 1, 10, 0)}, "timestamp"),
        ({"value": float("inf")}, "value"),
        ({"channel": "carrier-pigeon"}, "channel"),
        ({"consent": ["advertising"]}, "consent"),
        ({"user_id": ""}, "user_id"),
    ],
    ids=[
        "unknown-field",
        "unknown-context-field",
        "unknown-event-type",
        "missing-event-type",
        "naive-datetime-text",
        "naive-datetime-object",
        "infinite-value",
        "unknown-channel",
        "unknown-consent-purpose",
        "empty-user-id",
    ],
)
def test_invalid_events_are_rejected_naming_the_field(change: dict, field_in_error: str) -> None:
    with pytest.raises(ValidationError) as caught:
        schema.EventIn.model_validate(VALID | change)
    locations = {".".join(str(p) for p in e["loc"]) for e in caught.value.errors()}
    assert any(field_in_error in loc for loc in locations), locations


def test_an_event_without_user_or_anonymous_id_is_rejected() -> None:
    data = {k: v for k, v in VALID.items() if k != "user_id"}
    with pytest.raises(ValidationError, match="user_id or anonymous_id"):
        schema.EventIn.model_validate(data)


def test_every_event_type_and_channel_is_a_lower_case_code() -> None:
    for enum in (schema.EventType, schema.Channel, schema.ConsentPurpose):
        for member in enum:
            assert member.value == member.value.lower().strip()
    assert {"view", "click", "add_to_cart", "purchase", "rate", "impression"} <= {
        e.value for e in schema.EventType
    }


@pytest.mark.parametrize("name", ["ml-100k", "cdnow", "shop_2024.v1", "a"])
def test_valid_dataset_names_pass(name: str) -> None:
    assert schema.check_dataset_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "ML-100K", "has space", "../escape", "a/b", "-leading", "x" * 65, "dataset=x"]
)
def test_dataset_names_that_cannot_be_folder_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="invalid dataset name"):
        schema.check_dataset_name(name)


def test_stored_events_have_no_raw_pii_columns() -> None:
    names = set(schema.EVENT_SCHEMA.names) | set(schema.USER_SCHEMA.names)
    for raw, hashed in schema.PII_FIELDS.items():
        assert raw not in names
        assert hashed in names
    assert {"email_hash", "phone_hash", "ip_hash"} <= set(schema.EVENT_SCHEMA.names)
    assert "zip_hash" in schema.USER_SCHEMA.names
