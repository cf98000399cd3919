"""The batch engine: the same SQL on DuckDB and on Spark (local mode) over the same
ML-100K lake gives the same rows — the lake's views, the training set, person features
(also equal to the in-memory frame version), the KPI aggregates — and people withheld
from the lake are left out on both."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pyarrow as pa
import pytest

from bespoke.engine.engines import DuckDBEngine, SparkEngine, open_engine
from bespoke.engine.sql import to_spark
from bespoke.features import clean
from bespoke.features.lake import Lake
from bespoke.monitoring.kpi import compute_kpis
from bespoke.segments.features import build_person_features, load_person_events, person_features
from bespoke.settings import Settings
from bespoke.training.data import INTERACTIONS_SQL, load_interactions

pytestmark = [pytest.mark.xdist_group("spark")]

AS_OF = "1998-03-01"


def _same(left: pd.DataFrame, right: pd.DataFrame, keys: list[str] | None = None) -> None:
    """Equal frames: same columns in the same order, same rows (in ``keys`` order when
    given), values equal (floats to 1e-9 relative: the engines add in different orders)."""
    assert list(left.columns) == list(right.columns)
    if keys:
        left = left.sort_values(keys, kind="stable").reset_index(drop=True)
        right = right.sort_values(keys, kind="stable").reset_index(drop=True)
    for frame in (left, right):
        for column in frame.columns:
            if pd.api.types.is_datetime64_any_dtype(frame[column]):
                frame[column] = frame[column].astype("datetime64[us, UTC]" if
                                                     getattr(frame[column].dt, "tz", None)
                                                     else "datetime64[us]")  # fmt: skip
    pd.testing.assert_frame_equal(left, right, check_dtype=False, rtol=1e-9)


@pytest.fixture(scope="module")
def engines(ml100k_lake: tuple[Lake, Any], spark: Any) -> tuple[DuckDBEngine, SparkEngine]:
    lake, _ = ml100k_lake
    return DuckDBEngine(lake), SparkEngine(lake, spark)


def test_queries_keep_duckdbs_parameters_and_bind_them_as_literals() -> None:
    sql = to_spark(
        "SELECT * FROM events WHERE dataset = ? AND list_contains(?, event_type)",
        ["o'brien", ["rate", "click"]],
    )
    assert "dataset = 'o\\'brien'" in sql  # Spark's escape
    assert "ARRAY_CONTAINS(ARRAY('rate', 'click'), event_type)" in sql
    named = to_spark(
        "SELECT 1 WHERE t <= $cut", {"cut": pd.Timestamp("2020-01-02 03:04", tz="Europe/Paris")}
    )
    assert "CAST('2020-01-02 02:04:00' AS TIMESTAMP)" in named  # in UTC, the lake's zone
    with pytest.raises(ValueError, match=r"missing \['cut'\]"):
        to_spark("SELECT 1 WHERE t <= $cut", {"other": 1})
    with pytest.raises(ValueError, match="2 '\\?' parameters, got 1"):
        to_spark("SELECT ?, ?", [1])


def test_the_views_give_the_same_rows(engines: tuple[DuckDBEngine, SparkEngine]) -> None:
    duck, spark = engines
    for view, keys in (("users", ["user_id"]), ("items", ["item_id"])):
        _same(duck.frame(f"SELECT * FROM {view}"), spark.frame(f"SELECT * FROM {view}"), keys)
    # the events view's own columns: the person of each event (a hash of its strongest
    # identifier, sha256 on one engine and sha2 on the other) and its date
    derived = "SELECT event_id, person_id, event_date, user_id, timestamp FROM events"
    both = [engine.frame(derived) for engine in engines]
    assert len(both[0]) == 100_000
    _same(*both, keys=["event_id"])


def test_the_training_set_is_the_same(
    ml100k_lake: tuple[Lake, Any], engines: tuple[DuckDBEngine, SparkEngine]
) -> None:
    lake, _ = ml100k_lake
    duck, spark = (load_interactions(lake, "ml-100k", engine=e) for e in engines)
    assert duck.fingerprint() == spark.fingerprint()  # ids, items, values and times, in order
    params = ["ml-100k", ["rate"]]
    _same(*(e.frame(INTERACTIONS_SQL, params) for e in engines))  # the query's own order


def test_person_features_are_the_same_on_both_engines_and_the_frame_version(
    ml100k_lake: tuple[Lake, Any], engines: tuple[DuckDBEngine, SparkEngine]
) -> None:
    lake, _ = ml100k_lake
    duck, spark = (build_person_features(e, "ml-100k", AS_OF) for e in engines)
    reference = person_features(load_person_events(lake, "ml-100k"), AS_OF)
    assert len(reference) == 736 and "orders_30d" in reference
    _same(reference.reset_index(), duck.reset_index())
    _same(duck.reset_index(), spark.reset_index())


def test_withheld_people_are_left_out_on_both(ml100k_lake: tuple[Lake, Any], spark: Any) -> None:
    lake, _ = ml100k_lake
    withheld = pa.table({"dataset": ["ml-100k"] * 2, "identifier_type": ["user_id"] * 2,
                         "identifier": ["1", "2"]})  # fmt: skip
    gated = Lake(lake.url, withheld=withheld)
    query = "SELECT user_id, count(*) AS n FROM events WHERE dataset = ? GROUP BY user_id"
    duck = DuckDBEngine(gated).frame(query, ["ml-100k"])
    sparked = SparkEngine(gated, spark).frame(query, ["ml-100k"])
    assert not {"1", "2"} & set(duck["user_id"]) and len(duck) == 941
    _same(duck, sparked, keys=["user_id"])
    # the session's views follow the engine asking: the ungated lake sees everyone again
    everyone = SparkEngine(lake, spark).frame(query, ["ml-100k"])
    assert {"1", "2"} <= set(everyone["user_id"]) and len(everyone) == 943


def test_the_setting_chooses_the_engine(ml100k_lake: tuple[Lake, Any], spark: Any) -> None:
    lake, _ = ml100k_lake
    assert isinstance(open_engine(Settings(engine="duckdb"), lake), DuckDBEngine)
    chosen = open_engine(Settings(engine="spark", spark_master="local[2]"), lake)
    assert isinstance(chosen, SparkEngine) and chosen.session is spark  # the running one
    with pytest.raises(ValueError, match="engine"):
        Settings(engine="flink")


def test_the_kpi_aggregates_are_the_same(engines: tuple[DuckDBEngine, SparkEngine]) -> None:
    """One scan with grouping sets, a users join for the gender breakdown, week periods."""
    duck, spark = (compute_kpis(e, "ml-100k", by=["gender"], grain="week") for e in engines)
    assert len(duck.series) > 100 and duck.periods == spark.periods
    keys = [c for c in duck.series.columns if duck.series[c].dtype == object]
    _same(duck.series, spark.series, keys=[*keys, "period"] if "period" in duck.series else keys)
    _same(duck.headline, spark.headline)
    assert duck.notes == spark.notes


def test_the_cleaning_rules_flag_the_same_rows(datasets_dir: Any, spark: Any) -> None:
    """ML-100K ratings with anomalies planted: both engines flag the same rows, with the
    same first reason and the same list, and every planted one is flagged."""
    raw = pd.read_csv(datasets_dir / "ml-100k" / "u.data", sep="\t",
                      names=["user_id", "item_id", "value", "ts"]).head(2_000)  # fmt: skip
    data = pd.DataFrame({
        "event_id": [f"e{i}" for i in range(len(raw))],
        "user_id": raw["user_id"].astype(str), "anonymous_id": None,
        "event_type": "rate", "channel": "web", "item_id": raw["item_id"].astype(str),
        "value": raw["value"].astype(float), "quantity": pd.array([None] * len(raw), "Int64"),
        "timestamp": pd.to_datetime(raw["ts"], unit="s", utc=True),
    })  # fmt: skip
    for column in ("event_id", "user_id", "anonymous_id", "event_type", "channel", "item_id"):
        data[column] = data[column].astype("string")
    planted = {10: "missing_identity", 20: "unknown_event_type", 30: "unknown_channel",
               40: "future_timestamp", 50: "unknown_item", 60: "rating_out_of_range",
               70: "exact_duplicate"}  # fmt: skip
    data.loc[10, "user_id"] = pd.NA
    data.loc[20, "event_type"] = "teleport"
    data.loc[30, "channel"] = "pigeon"
    data.loc[40, "timestamp"] = pd.Timestamp("2100-01-01", tz="UTC")
    data.loc[50, "item_id"] = "99999"
    data.loc[60, "value"] = 9.0
    data.loc[70, "event_id"] = "e0"
    ctx = clean.RuleContext(now=pd.Timestamp("2026-01-01", tz="UTC").to_pydatetime(),
                            known_items=frozenset(raw["item_id"].astype(str)),
                            rating_scale=(1.0, 5.0))  # fmt: skip
    duck = clean.flag(data, clean.EVENT_RULES, ctx)
    sparked = clean.flag(data, clean.EVENT_RULES, ctx, engine=SparkEngine(None, spark))
    assert duck["reason"].to_dict() == planted
    pd.testing.assert_frame_equal(duck, sparked)
