"""Point-in-time person features from the lake's events: nothing after the as-of time
reaches a row, and the RFM columns agree with the classic customer-base summary."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bespoke.features import collect, sources
from bespoke.features.lake import Lake
from bespoke.segments.clv import rfm_summary
from bespoke.segments.features import load_person_events, person_features

AS_OF = "1997-09-30"


@pytest.fixture(scope="module")
def cdnow_events(cdnow_lake: tuple[Lake, object]) -> pd.DataFrame:
    lake, _ = cdnow_lake
    return load_person_events(lake, "cdnow")


def test_nothing_after_the_as_of_time_reaches_a_row(cdnow_events: pd.DataFrame) -> None:
    before = person_features(cdnow_events, AS_OF)
    later = pd.to_datetime(cdnow_events["timestamp"], utc=True) > pd.Timestamp(
        AS_OF, tz="UTC"
    ) + pd.Timedelta(days=1)
    future = cdnow_events.assign(
        value=np.where(later, cdnow_events["value"] * 50, cdnow_events["value"])
    )
    future = pd.concat([future, future[later].assign(channel="web")], ignore_index=True)
    pd.testing.assert_frame_equal(before, person_features(future, AS_OF))
    bought = cdnow_events[
        pd.to_datetime(cdnow_events["timestamp"], utc=True) <= pd.Timestamp(AS_OF, tz="UTC")
    ]
    assert len(before) == bought["person"].nunique() > 23000


def test_rfm_columns_agree_with_the_customer_base_summary(cdnow_events: pd.DataFrame) -> None:
    features = person_features(cdnow_events, AS_OF)
    summary = rfm_summary(cdnow_events.rename(columns={"person": "customer_id"}), AS_OF)
    joined = features.join(summary, how="inner")
    assert len(joined) == len(summary)
    np.testing.assert_allclose(joined["repeat_orders"], joined["frequency"])
    np.testing.assert_allclose(joined["tenure_days"] / 7, joined["T"])
    np.testing.assert_allclose(
        (joined["tenure_days"] - joined["recency_days"]) / 7, joined["recency"]
    )


def test_a_dataset_without_timestamps_is_refused(tmp_path: Path, key: bytes) -> None:
    lake = Lake(str(tmp_path / "lake"))
    log = tmp_path / "log.csv"
    log.write_text("user,item\nu1,i1\n")
    mapping = sources.ColumnMapping(user_id="user", item_id="item", event_type_constant="rate",
                                    default_consent=["personalization"])  # fmt: skip
    collect.ingest(sources.interactions_file(log, mapping, "untimed"), lake, key)
    with pytest.raises(ValueError, match="has no timestamps"):
        load_person_events(lake, "untimed")
