"""The BG/NBD and Gamma–Gamma baselines on hand-made histories."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bespoke.segments.clv import BetaGeo, GammaGamma, rfm_summary


def test_the_summary_counts_repeat_days_and_weeks() -> None:
    transactions = pd.DataFrame(
        {
            "customer_id": ["a", "a", "a", "a", "b"],
            "timestamp": pd.to_datetime(
                ["2024-01-01", "2024-01-01", "2024-01-15", "2024-03-01", "2024-01-29"]
            ),
            "value": [10.0, 5.0, 20.0, 99.0, 7.0],
        }
    )
    summary = rfm_summary(transactions, "2024-01-29", "2024-03-31")
    a, b = summary.loc["a"], summary.loc["b"]
    # Two purchases on 1 January are one day; the repeat is 15 January, two weeks later.
    assert (a["frequency"], a["recency"], a["T"], a["monetary_value"]) == (1, 2, 4, 20.0)
    assert (a["holdout_frequency"], a["holdout_value"]) == (1, 99.0)
    assert (b["frequency"], b["recency"], b["T"], b["monetary_value"]) == (0, 0, 0, 0.0)


def test_histories_the_models_cannot_take_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one customer"):
        BetaGeo().fit([], [], [])
    with pytest.raises(ValueError, match="recency ≤ T"):
        BetaGeo().fit([1], [5], [3])
    with pytest.raises(ValueError, match="repeat customers"):
        GammaGamma().fit([0, 0], [0, 0])
    with pytest.raises(RuntimeError, match="fit the model first"):
        BetaGeo().p_alive([1], [1], [2])


def test_more_recent_buyers_are_more_alive_and_expected_to_buy_more() -> None:
    rng = np.random.default_rng(0)
    x = rng.poisson(2, 500).astype(float)
    T = np.full(500, 40.0)
    t_x = np.where(x > 0, rng.uniform(0, 40, 500), 0.0)
    model = BetaGeo().fit(x, t_x, T)
    recent, lapsed = model.p_alive([3, 3], [39, 5], [40, 40])
    assert recent > lapsed
    soon, later = model.expected_purchases(10, [3, 3], [39, 5], [40, 40])
    assert soon > later > 0
