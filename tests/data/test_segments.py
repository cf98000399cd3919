"""Behavioural segments on CDNOW's real purchases: a stable k, readable names that
survive a retrain, and segments that mean something for the next nine months' value."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from bespoke.cli import app
from bespoke.features import collect, sources
from bespoke.features.lake import Lake
from bespoke.segments.behaviour import Segmenter
from bespoke.segments.clv import rfm_summary
from bespoke.segments.features import person_features
from bespoke.segments.report import compute
from bespoke.settings import get_settings


@pytest.fixture(scope="module")
def purchases(datasets_dir: Path) -> pd.DataFrame:
    events = sources.cdnow(datasets_dir / "cdnow").events.rename(columns={"user_id": "person"})
    return events.assign(timestamp=pd.to_datetime(events["timestamp"], utc=True))


def test_segments_are_stable_named_and_valuable(purchases: pd.DataFrame) -> None:
    features = person_features(purchases, "1997-09-30")
    model = Segmenter(bootstrap=5).fit(features)
    assert 3 <= model.k_ <= 7 and model.stability_ >= 0.9
    assert len(set(model.names_)) == model.k_ and all(model.descriptions_)
    segment = model.predict(features)
    holdout = rfm_summary(
        purchases.rename(columns={"person": "customer_id"}), "1997-09-30", "1998-06-30"
    )
    value = holdout["holdout_value"].groupby(segment).mean()
    assert value.max() >= 5 * value.min(), value
    # Retrained three months later, segments keep their names (matched centroids).
    later = Segmenter(bootstrap=0).fit(person_features(purchases, "1997-12-31"), previous=model)
    assert len(set(later.names_) & set(model.names_)) == min(later.k_, model.k_)
    people = features.index
    same = (model.predict(features.loc[people]) == later.predict(features.loc[people])).mean()
    assert same >= 0.9


def test_too_few_people_or_a_bad_range_are_refused(purchases: pd.DataFrame) -> None:
    features = person_features(purchases, "1997-09-30")
    with pytest.raises(ValueError, match="too few"):
        Segmenter().fit(features.head(20))
    with pytest.raises(ValueError, match="k_range"):
        Segmenter(k_range=(1, 3)).fit(features)
    with pytest.raises(ValueError, match="lack"):
        Segmenter(features=("recency_days", "favourite_colour")).fit(features)


def test_a_saved_model_assigns_the_same_segments(purchases: pd.DataFrame, tmp_path: Path) -> None:
    features = person_features(purchases, "1997-09-30")
    model = Segmenter(bootstrap=0).fit(features)
    again = Segmenter.load(model.save(tmp_path / "segments.json"))
    pd.testing.assert_series_equal(model.predict(features), again.predict(features))
    assert again.names_ == model.names_ and again.k_ == model.k_
    # The nearest centre is what k-means itself assigns.
    assert (model.model_.predict(model.scaler_.transform(model._matrix(features))) ==
            pd.Series(model.predict(features)).map({n: i for i, n in enumerate(model.names_)}).to_numpy()).all()  # fmt: skip
    later = Segmenter(bootstrap=0).fit(person_features(purchases, "1997-12-31"), previous=again)
    assert len(set(later.names_) & set(model.names_)) == min(later.k_, model.k_)


def test_the_train_segments_command_keeps_names_and_history(
    datasets_dir: Path, tmp_path: Path
) -> None:
    settings = get_settings()
    lake = Lake(settings.lake_url)
    collect.ingest(sources.cdnow(datasets_dir / "cdnow"), lake, settings.pseudonym_key())
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"segments": [
        {"name": "Big spenders", "when": {"profile.features.monetary_total": {"$gte": 200}}}]}))  # fmt: skip
    runner = CliRunner()
    first = runner.invoke(app, ["train", "segments", "--dataset", "cdnow", "--as-of", "1997-09-30",
                                "--rules", str(rules)])  # fmt: skip
    assert first.exit_code == 0, first.output
    assert "Big spenders (rule)" in first.output and "stability ARI" in first.output
    second = runner.invoke(
        app, ["train", "segments", "--dataset", "cdnow", "--as-of", "1997-12-31"]
    )
    assert second.exit_code == 0, second.output
    con = lake.connect()
    runs = con.execute("SELECT count(DISTINCT valid_from) FROM segments_history").fetchone()[0]
    assert runs == 2
    names_then = {
        r[0]
        for r in con.execute(
            "SELECT DISTINCT segment FROM segments_history WHERE valid_to IS NOT NULL"
        ).fetchall()
    }
    names_now = {r[0] for r in con.execute("SELECT DISTINCT segment FROM segments").fetchall()}
    assert names_now & names_then  # the names carried over to the retrained model
    bad = runner.invoke(app, ["train", "segments", "--dataset", "cdnow", "--as-of", "1997-09-30",
                              "--rules", str(tmp_path / "missing.json")])  # fmt: skip
    assert bad.exit_code == 1 and "no such rule-segment file" in bad.output

    # The report: migration between the two assignments, value after the latest one.
    done = runner.invoke(app, ["report", "segments", "--dataset", "cdnow", "--out", str(tmp_path)])
    assert done.exit_code == 0, done.output
    page = (tmp_path / "segments.html").read_text()
    assert "Migration 1997-09-30 → 1997-12-31" in page and "Value after assignment" in page
    assert "no @champion churn model" in done.output  # not trained here: said, not hidden
    report = compute(settings, "cdnow")
    then = dict(con.execute("SELECT person, segment FROM segments_history WHERE "
                            "valid_from::DATE = '1997-09-30' AND (valid_to IS NULL OR "
                            "valid_to::DATE > '1997-09-30')").fetchall())  # fmt: skip
    now = dict(con.execute("SELECT person, segment FROM segments").fetchall())
    moved = pd.crosstab(pd.Series(then).reindex(list(now)).dropna(), pd.Series(now))
    assert report.migration.to_numpy().sum() == moved.to_numpy().sum() == len(set(then) & set(now))
    # Value after: spend from 1998-01-01 to 1998-04-02 per person, by their segment now.
    events = con.execute("SELECT user_id, value, timestamp FROM events WHERE dataset = 'cdnow' "
                         "AND timestamp > '1997-12-31' AND timestamp <= '1998-04-02'").df()  # fmt: skip
    spend = events.groupby("user_id")["value"].sum()
    segment = pd.Series(now)
    expected = spend.reindex(segment.index, fill_value=0.0).groupby(segment).mean()
    got = report.value_after.set_index("segment")["value_per_person"]
    pd.testing.assert_series_equal(got.sort_index(), expected.sort_index(), check_names=False)
    assert runner.invoke(app, ["report", "segments", "--dataset", "nope"]).exit_code == 1
