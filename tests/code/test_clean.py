"""Anomaly rules flag the right rows, the first failed rule is the reason, and gaps are
imputed with the median or mode and recorded."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from bespoke.features import clean, collect, sources
from bespoke.features.lake import Lake

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
YESTERDAY = NOW - timedelta(days=1)
CTX = clean.RuleContext(
    now=NOW, has_timestamps=True, known_items=frozenset({"i1", "i2"}), rating_scale=(1.0, 5.0)
)

#: (description, row changes from a clean purchase, expected reason or None)
CASES: list[tuple[str, dict, str | None]] = [
    ("clean purchase", {}, None),
    ("anonymous id only", {"user_id": None, "anonymous_id": "cookie"}, None),
    ("no identity", {"user_id": None, "anonymous_id": None}, "missing_identity"),
    ("event type not in the enum", {"event_type": "teleport"}, "unknown_event_type"),
    ("channel not in the enum", {"channel": "pigeon"}, "unknown_channel"),
    ("no channel is not an anomaly", {"channel": None}, None),
    ("no timestamp", {"timestamp": pd.NaT}, "missing_timestamp"),
    ("a day ahead", {"timestamp": NOW + timedelta(days=1)}, "future_timestamp"),
    ("within clock skew", {"timestamp": NOW + timedelta(minutes=2)}, None),
    ("item not in the catalog", {"item_id": "ghost"}, "unknown_item"),
    ("no item is not an unknown item", {"item_id": None}, None),
    ("negative purchase value", {"value": -5.0}, "negative_amount"),
    ("negative cart value", {"event_type": "add_to_cart", "value": -1.0}, "negative_amount"),
    ("negative quantity", {"event_type": "view", "value": None, "quantity": -1}, "negative_amount"),
    ("negative value of a non-monetary event", {"event_type": "view", "value": -3.0}, None),
    ("zero-value purchase", {"value": 0.0}, "zero_value_purchase"),
    ("zero-value cart add", {"event_type": "add_to_cart", "value": 0.0}, None),
    ("purchase without value", {"value": None}, None),
    ("rating above the scale", {"event_type": "rate", "value": 6.0}, "rating_out_of_range"),
    ("rating below the scale", {"event_type": "rate", "value": 0.5}, "rating_out_of_range"),
    ("rating on the scale edge", {"event_type": "rate", "value": 5.0}, None),
    ("rating without value", {"event_type": "rate", "value": None}, None),
    ("exact duplicate of the first row", {"event_id": "e0"}, "exact_duplicate"),
]


def _frame(cases: list[tuple[str, dict, str | None]]) -> pd.DataFrame:
    base = {
        "user_id": "u1",
        "anonymous_id": None,
        "event_type": "purchase",
        "channel": "web",
        "timestamp": YESTERDAY,
        "item_id": "i1",
        "value": 10.0,
        "quantity": 1,
    }
    rows = [base | {"event_id": f"e{n}"} | change for n, (_, change, _) in enumerate(cases)]
    df = pd.DataFrame(rows, index=pd.RangeIndex(100, 100 + len(rows)))
    for column in ("user_id", "anonymous_id", "event_type", "channel", "item_id", "event_id"):
        df[column] = df[column].astype("string")
    df["timestamp"] = pd.to_datetime(df["timestamp"], utc=True)
    df["value"] = df["value"].astype("float64")
    df["quantity"] = df["quantity"].astype("Int64")
    return df


def test_each_event_rule_flags_exactly_its_rows() -> None:
    df = _frame(CASES)
    flagged = clean.flag(df, clean.EVENT_RULES, CTX)
    expected = {100 + n: reason for n, (_, _, reason) in enumerate(CASES) if reason}
    got = flagged["reason"].to_dict()
    names = {100 + n: description for n, (description, _, _) in enumerate(CASES)}
    assert {names[i]: r for i, r in got.items()} == {names[i]: r for i, r in expected.items()}
    # a row failing one rule lists just that rule
    assert (flagged["reasons"] == flagged["reason"]).all()


def test_every_event_rule_is_covered_by_a_case() -> None:
    covered = {reason for _, _, reason in CASES if reason}
    assert covered == {rule.reason for rule in clean.EVENT_RULES}


def test_the_reason_is_the_first_failed_rule_and_reasons_lists_all_in_rule_order() -> None:
    df = _frame(
        [
            ("first", {}, None),
            ("everything wrong", {"user_id": None, "value": -5.0, "event_id": "e0"}, None),
            ("zero and duplicate", {"value": 0.0, "event_id": "e0"}, None),
        ]
    )
    flagged = clean.flag(df, clean.EVENT_RULES, CTX)
    assert flagged.loc[101, "reason"] == "missing_identity"
    assert flagged.loc[101, "reasons"] == "missing_identity|negative_amount|exact_duplicate"
    assert flagged.loc[102, "reason"] == "zero_value_purchase"
    assert flagged.loc[102, "reasons"] == "zero_value_purchase|exact_duplicate"
    assert 100 not in flagged.index


def test_rules_that_need_context_are_off_without_it() -> None:
    df = _frame(
        [
            ("no timestamp", {"timestamp": pd.NaT}, None),
            ("unknown item", {"item_id": "ghost"}, None),
            ("rating 9", {"event_type": "rate", "value": 9.0}, None),
        ]
    )
    bare = clean.RuleContext(now=NOW, has_timestamps=False)
    assert clean.flag(df, clean.EVENT_RULES, bare).empty


def test_nothing_flagged_gives_an_empty_frame_with_the_columns() -> None:
    flagged = clean.flag(_frame([("ok", {}, None)]), clean.EVENT_RULES, CTX)
    assert flagged.empty
    assert list(flagged.columns) == ["reason", "reasons"]


@pytest.mark.parametrize(
    ("age", "flagged"), [(3, True), (4, True), (5, False), (40, False), (110, False), (111, True)]
)
def test_implausible_ages_are_flagged(age: int, flagged: bool) -> None:
    users = pd.DataFrame({"user_id": ["u1"], "age": pd.array([age], dtype="Int64")})
    result = clean.flag(users, clean.USER_RULES, clean.RuleContext(now=NOW))
    assert (not result.empty) == flagged
    if flagged:
        assert result["reason"].iloc[0] == "implausible_age"


def test_duplicate_user_and_item_ids_keep_the_first_row() -> None:
    users = pd.DataFrame(
        {"user_id": ["a", "b", "a"], "age": pd.array([20, 30, None], dtype="Int64")}
    )
    flagged = clean.flag(users, clean.USER_RULES, clean.RuleContext(now=NOW))
    assert flagged["reason"].to_dict() == {2: "exact_duplicate"}
    items = pd.DataFrame({"item_id": ["x", "x", "x"]})
    flagged = clean.flag(items, clean.ITEM_RULES, clean.RuleContext(now=NOW))
    assert flagged["reason"].to_dict() == {1: "exact_duplicate", 2: "exact_duplicate"}


# --- imputation ----------------------------------------------------------------------------


def test_user_gaps_are_filled_with_median_and_mode_and_recorded() -> None:
    users = pd.DataFrame(
        {
            "user_id": ["a", "b", "c", "d"],
            "age": pd.array([20, 31, 40, None], dtype="Int64"),
            "gender": pd.array(["F", None, "F", "M"], dtype="string"),
            "occupation": pd.array(["writer", "writer", "artist", "artist"], dtype="string"),
        }
    )
    filled, counts = clean.impute(users, clean.USER_IMPUTATIONS)
    assert filled["age"].tolist() == [20, 31, 40, 31]
    assert filled["gender"].tolist() == ["F", "F", "F", "M"]
    assert filled["imputed"].tolist() == ["", "gender", "", "age"]
    assert counts == {"age": 1, "gender": 1}
    assert users["age"].isna().sum() == 1, "the input frame is not changed"


def test_several_imputed_fields_of_one_row_are_all_recorded() -> None:
    users = pd.DataFrame(
        {
            "user_id": ["a", "b", "c"],
            "age": pd.array([20, 40, None], dtype="Int64"),
            "gender": pd.array(["M", "M", None], dtype="string"),
            "occupation": pd.array(["x", "x", None], dtype="string"),
        }
    )
    filled, counts = clean.impute(users, clean.USER_IMPUTATIONS)
    assert filled.loc[2, "imputed"] == "age|gender|occupation"
    assert counts == {"age": 1, "gender": 1, "occupation": 1}


def test_mode_ties_take_the_smallest_value_so_runs_repeat() -> None:
    users = pd.DataFrame(
        {"user_id": list("abc"), "gender": pd.array(["M", "F", None], dtype="string")}
    )
    filled, _ = clean.impute(users, clean.USER_IMPUTATIONS)
    assert filled.loc[2, "gender"] == "F"


def test_event_values_are_imputed_per_event_type_only_where_they_mean_something() -> None:
    events = pd.DataFrame(
        {
            "event_type": pd.array(
                ["purchase", "purchase", "purchase", "purchase", "view", "rate", "rate", "rate"],
                dtype="string",
            ),
            "value": [10.0, 20.0, 90.0, np.nan, np.nan, 1.0, 2.0, np.nan],
            "quantity": pd.array([1, 3, 3, None, None, None, None, None], dtype="Int64"),
            "channel": pd.array(["web"] * 7 + [None], dtype="string"),
        }
    )
    filled, counts = clean.impute(events, clean.EVENT_IMPUTATIONS)
    assert filled.loc[3, "value"] == 20.0  # median of the purchases
    assert filled.loc[7, "value"] == 1.5  # median of the ratings, not of all values
    assert pd.isna(filled.loc[4, "value"])  # a view has no value to impute
    assert filled.loc[3, "quantity"] == 3
    assert pd.isna(filled.loc[5, "quantity"])  # ratings have no quantity
    assert filled.loc[7, "channel"] == "web"
    assert filled.loc[3, "imputed"] == "value|quantity"
    assert filled.loc[7, "imputed"] == "channel|value"
    assert filled.loc[4, "imputed"] == ""
    assert counts == {"channel": 1, "value": 2, "quantity": 1}


def test_without_values_of_its_own_the_fallback_frame_supplies_the_statistic() -> None:
    items = pd.DataFrame({"item_id": ["a"], "release_year": pd.array([None], dtype="Int64")})
    fallback = pd.DataFrame({"release_year": pd.array([1990, 1994, 2000], dtype="Int64")})
    filled, counts = clean.impute(items, clean.ITEM_IMPUTATIONS, fallback=fallback)
    assert filled.loc[0, "release_year"] == 1994
    assert filled.loc[0, "imputed"] == "release_year"
    assert counts == {"release_year": 1}


def test_a_gap_with_nothing_to_learn_from_stays_a_gap_and_is_not_recorded() -> None:
    items = pd.DataFrame({"item_id": ["a"], "release_year": pd.array([None], dtype="Int64")})
    filled, counts = clean.impute(items, clean.ITEM_IMPUTATIONS)
    assert pd.isna(filled.loc[0, "release_year"])
    assert filled.loc[0, "imputed"] == ""
    assert counts == {}


def test_standard_text_is_stripped_blank_is_missing_and_codes_are_lower_case() -> None:
    codes = clean.standard_text(pa.array([" PURCHASE ", "  ", None]), lower=True)
    assert codes.to_pylist() == ["purchase", None, None]
    assert clean.standard_text(pa.array([" Sku-1 "])).to_pylist() == ["Sku-1"]


# --- through ingestion: flagged rows go to quarantine, nothing is dropped silently ---------


def test_anomalous_rows_go_to_quarantine_with_reason_and_source_line(
    lake: Lake, key: bytes, write_csv, shop_mapping
) -> None:
    rows = [
        {"customer": "c1", "sku": "a", "ts": "2024-01-01T10:00:00Z", "action": "purchase", "amount": "5"},
        {"customer": "c1", "sku": "b", "ts": "2024-01-01T11:00:00Z", "action": "purchase", "amount": "-5"},
        {"customer": "c2", "sku": "c", "ts": "2024-01-01T12:00:00Z", "action": "purchase", "amount": "0"},
        {"customer": "c2", "sku": "d", "ts": "2100-01-01T00:00:00Z", "action": "view", "amount": ""},
        {"customer": "c3", "sku": "e", "ts": "2024-01-02T10:00:00Z", "action": "teleport", "amount": ""},
        {"customer": "", "sku": "f", "ts": "2024-01-02T10:00:00Z", "action": "view", "amount": ""},
        {"customer": "c1", "sku": "a", "ts": "2024-01-01T10:00:00Z", "action": "purchase", "amount": "5"},
        {"customer": "c4", "sku": "g", "ts": "", "action": "view", "amount": ""},
        {"customer": "c5", "sku": "h", "ts": "2024-01-03T10:00:00Z", "action": "View", "amount": ""},
    ]  # fmt: skip
    path = write_csv("anomalies.csv", rows)
    result = collect.ingest(sources.interactions_file(path, shop_mapping(), "shop"), lake, key)
    events = result.counts("events")
    assert events["quarantined"] == {
        "negative_amount": 1,
        "zero_value_purchase": 1,
        "future_timestamp": 1,
        "unknown_event_type": 1,
        "missing_identity": 1,
        "exact_duplicate": 1,
        "missing_timestamp": 1,
    }
    assert events["stored"] == 2  # the first purchase and the upper-case "View"
    assert events["read"] == events["stored"] + sum(events["quarantined"].values())
    con = lake.connect()
    found = con.execute(
        "SELECT source_row, reason, source, entity FROM quarantine ORDER BY source_row"
    ).fetchall()
    # line 1 is the header: data row n is on line n + 1
    assert found == [
        (3, "negative_amount", "anomalies.csv", "events"),
        (4, "zero_value_purchase", "anomalies.csv", "events"),
        (5, "future_timestamp", "anomalies.csv", "events"),
        (6, "unknown_event_type", "anomalies.csv", "events"),
        (7, "missing_identity", "anomalies.csv", "events"),
        (8, "exact_duplicate", "anomalies.csv", "events"),
        (9, "missing_timestamp", "anomalies.csv", "events"),
    ]
    assert con.execute("SELECT count(*) FROM events").fetchone() == (2,)
    assert result.manifest["quarantine_written"] == 7


def test_imputed_event_values_are_stored_with_their_imputed_field(
    lake: Lake, key: bytes, write_csv, shop_mapping
) -> None:
    rows = [
        {"customer": "c1", "sku": "a", "ts": "2024-01-01T10:00:00Z", "action": "purchase", "amount": "4"},
        {"customer": "c2", "sku": "b", "ts": "2024-01-01T11:00:00Z", "action": "purchase", "amount": "10"},
        {"customer": "c3", "sku": "c", "ts": "2024-01-01T12:00:00Z", "action": "purchase", "amount": "30"},
        {"customer": "c4", "sku": "d", "ts": "2024-01-01T13:00:00Z", "action": "purchase", "amount": ""},
        {"customer": "c5", "sku": "e", "ts": "2024-01-01T14:00:00Z", "action": "view", "amount": ""},
    ]  # fmt: skip
    path = write_csv("gaps.csv", rows)
    result = collect.ingest(sources.interactions_file(path, shop_mapping(), "shop"), lake, key)
    assert result.counts("events")["imputed"] == {"value": 1}
    stored = dict(
        lake.connect().execute("SELECT item_id, struct_pack(value, imputed) FROM events").fetchall()
    )
    assert stored["d"] == {"value": 10.0, "imputed": ["value"]}
    assert stored["e"] == {"value": None, "imputed": []}
    assert stored["a"] == {"value": 4.0, "imputed": []}
