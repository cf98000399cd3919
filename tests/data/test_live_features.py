"""The online store's counters give exactly the offline person features and model inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bespoke.features import sources
from bespoke.segments.churn import ChurnModel, ValueModel, person_rows, recipe, training_set
from bespoke.segments.features import person_features
from bespoke.segments.live import Counters, LiveScorer, counters_from_events, features_at

CUT = pd.Timestamp("1997-09-30", tz="UTC")


@pytest.fixture(scope="module")
def purchases(datasets_dir: Path) -> pd.DataFrame:
    events = sources.cdnow(datasets_dir / "cdnow").events.rename(columns={"user_id": "person"})
    return events.assign(timestamp=pd.to_datetime(events["timestamp"], utc=True))


def test_counters_give_the_offline_features(purchases: pd.DataFrame) -> None:
    offline = person_features(purchases, CUT)
    counters = counters_from_events(purchases[purchases["timestamp"] <= CUT])
    people = offline.sample(800, random_state=0).index
    online = pd.DataFrame(
        {p: features_at(counters[str(p)], CUT.value // 1000) for p in people}
    ).T.reindex(columns=offline.columns)
    online.index = people
    pd.testing.assert_frame_equal(online.astype(float), offline.loc[people].astype(float),
                                  check_names=False, rtol=1e-9)  # fmt: skip
    # Events one at a time (as the service counts them) give the same counters.
    person = str(people[0])
    one = Counters()
    for row in purchases[purchases["person"].astype(str) == person].itertuples():
        if row.timestamp <= CUT:
            one.add(row.timestamp.value // 1000, True, row.value, row.quantity, getattr(row, "channel", None),
                    getattr(row, "device", None))  # fmt: skip
    assert features_at(one, CUT.value // 1000) == pytest.approx(
        features_at(counters[person], CUT.value // 1000), nan_ok=True
    )


def test_the_live_scorer_scores_what_the_models_score_offline(purchases: pd.DataFrame) -> None:
    train = training_set(purchases, ["1997-05-31"], 92)
    churn, value = ChurnModel().fit(train), ValueModel().fit(train, 92)
    churn.recipe_ = value.recipe_ = recipe(purchases, CUT, 92)
    rows = person_rows(purchases, CUT, 92).sample(500, random_state=1)
    counters = counters_from_events(purchases[purchases["timestamp"] <= CUT])
    scorer = LiveScorer(None, churn, value)
    scored = scorer.score_many([counters[str(p)] for p in rows.index], CUT.to_pydatetime())
    np.testing.assert_allclose([s.churn_probability for s in scored], churn.predict_proba(rows),
                               rtol=1e-9)  # fmt: skip
    np.testing.assert_allclose([s.expected_value for s in scored], value.predict(rows), rtol=1e-9)
    # Nobody ordered yet: nothing to score.
    assert scorer.score(Counters(), CUT.value // 1000).churn_probability is None
