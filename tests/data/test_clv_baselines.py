"""The buy-till-you-die baselines on CDNOW: the published sample parameters reproduced,
and the classic calibration/holdout figures on the full master file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from bespoke.features import sources
from bespoke.segments.clv import BetaGeo, GammaGamma, rfm_summary

CALIBRATION_END, HOLDOUT_END = "1997-09-30", "1998-06-30"


def test_the_published_cdnow_sample_parameters_are_reproduced(datasets_dir: Path) -> None:
    sample = pd.read_csv(
        datasets_dir / "cdnow" / "CDNOW_sample.txt", sep=r"\s+", header=None,
        names=["customer_id", "sample_id", "date", "cds", "value"], dtype={"customer_id": str, "date": str},
    )  # fmt: skip
    sample["timestamp"] = pd.to_datetime(sample["date"], format="%Y%m%d")
    summary = rfm_summary(sample, CALIBRATION_END)
    assert len(summary) == 2357
    bg = BetaGeo().fit(summary["frequency"], summary["recency"], summary["T"])
    # Fader, Hardie & Lee (2005): r 0.243, α 4.414, a 0.793, b 2.426, LL −9582.4.
    np.testing.assert_allclose(bg.params_, [0.243, 4.414, 0.793, 2.426], atol=0.0015)
    assert bg.log_likelihood_ == pytest.approx(-9582.4, abs=0.1)
    gg = GammaGamma().fit(summary["frequency"], summary["monetary_value"])
    # Fader & Hardie (2013): p 6.25, q 3.74, v 15.44.
    np.testing.assert_allclose(gg.params_, [6.25, 3.74, 15.44], atol=0.01)


def test_the_classic_holdout_figures_on_the_master_file(datasets_dir: Path) -> None:
    events = sources.cdnow(datasets_dir / "cdnow").events.rename(columns={"user_id": "customer_id"})
    summary = rfm_summary(events, CALIBRATION_END, HOLDOUT_END)
    assert len(summary) == 23570
    bg = BetaGeo().fit(summary["frequency"], summary["recency"], summary["T"])
    history = (summary["frequency"], summary["recency"], summary["T"])
    expected = bg.expected_purchases(39.0, *history)
    bought = summary["holdout_frequency"] > 0
    assert roc_auc_score(bought, expected) == pytest.approx(0.763, abs=0.001)
    assert roc_auc_score(bought, bg.p_alive(*history)) == pytest.approx(0.320, abs=0.001)
    gg = GammaGamma().fit(summary["frequency"], summary["monetary_value"])
    value = gg.expected_average_value(summary["frequency"], summary["monetary_value"])
    average = summary["holdout_value"] / summary["holdout_frequency"].where(bought)
    assert np.abs(value[bought] - average[bought]).mean() == pytest.approx(18.14, abs=0.01)


def test_nothing_after_the_calibration_end_reaches_its_columns(datasets_dir: Path) -> None:
    events = sources.cdnow(datasets_dir / "cdnow").events.rename(columns={"user_id": "customer_id"})
    before = rfm_summary(events, CALIBRATION_END)
    later = events["timestamp"] > pd.Timestamp(CALIBRATION_END, tz="UTC") + pd.Timedelta(days=1)
    changed = events.assign(value=np.where(later, events["value"] * 100, events["value"]))
    changed = pd.concat([changed, changed[later]])  # and twice as many later purchases
    pd.testing.assert_frame_equal(before, rfm_summary(changed, CALIBRATION_END))
