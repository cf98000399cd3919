"""Churn and value models on CDNOW, trained leak-free inside the calibration period and
judged on the classic holdout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from bespoke.cli import app
from bespoke.features import collect, sources
from bespoke.features.lake import Lake
from bespoke.segments.churn import ChurnModel, ValueModel, person_rows, training_set
from bespoke.segments.report import compute
from bespoke.settings import get_settings
from bespoke.training.registry import Registry


@pytest.fixture(scope="module")
def purchases(datasets_dir: Path) -> pd.DataFrame:
    events = sources.cdnow(datasets_dir / "cdnow").events.rename(columns={"user_id": "person"})
    return events.assign(timestamp=pd.to_datetime(events["timestamp"], utc=True))


def test_churn_and_value_trained_before_the_holdout_rank_it(purchases: pd.DataFrame) -> None:
    train = training_set(purchases, ["1997-05-31", "1997-06-30"], 92)
    # Every training label ends by the calibration end: nothing of the holdout is seen.
    assert (train["cut"] + pd.Timedelta(days=92)).max() <= pd.Timestamp("1997-09-30")
    test = person_rows(purchases, "1997-09-30", 273)
    probability = ChurnModel().fit(train).predict_proba(test)
    assert probability.min() >= 0 and probability.max() <= 1
    assert roc_auc_score(test["churned"], probability) >= 0.76
    # The baseline it is compared with, from the same rows.
    assert roc_auc_score(test["churned"], -test["bgnbd_expected"]) == pytest.approx(
        0.763, abs=0.002
    )
    value = ValueModel().fit(train, 92).predict(test, 273)
    assert (value >= 0).all()
    assert np.abs(value - test["horizon_value"]).mean() < test["horizon_value"].mean()


def test_saved_models_predict_what_scikit_learn_calibrated(
    purchases: pd.DataFrame, tmp_path: Path
) -> None:
    import lightgbm as lgb
    from sklearn.calibration import CalibratedClassifierCV

    from bespoke.segments.churn import _LGBM, feature_columns

    train = training_set(purchases, ["1997-05-31"], 92)
    test = person_rows(purchases, "1997-06-30", 92)
    columns = feature_columns(train)
    reference = CalibratedClassifierCV(
        lgb.LGBMClassifier(**_LGBM, random_state=0), method="isotonic", cv=3
    ).fit(train[columns], train["churned"])
    model = ChurnModel().fit(train)
    expected = reference.predict_proba(test[columns])[:, 1]
    np.testing.assert_allclose(model.predict_proba(test), expected, atol=1e-12)
    loaded = ChurnModel.load(model.save(tmp_path / "churn"))
    np.testing.assert_allclose(loaded.predict_proba(test), expected, atol=1e-12)
    value = ValueModel().fit(train, 92)
    again = ValueModel.load(value.save(tmp_path / "clv"))
    np.testing.assert_allclose(again.predict(test, 273), value.predict(test, 273))
    assert again.predict(test, 273).sum() == pytest.approx(3 * again.predict(test, 91).sum())


def test_a_horizon_of_zero_is_refused(purchases: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="positive number of days"):
        person_rows(purchases, "1997-09-30", 0)


def test_the_train_churn_command(datasets_dir: Path) -> None:
    settings = get_settings()
    collect.ingest(
        sources.cdnow(datasets_dir / "cdnow"), Lake(settings.lake_url), settings.pseudonym_key()
    )
    runner = CliRunner()
    command = ["train", "churn", "--dataset", "cdnow", "--as-of", "1997-09-30", "--trials", "0"]
    done = runner.invoke(app, command)
    assert done.exit_code == 0, done.output
    text = " ".join(done.output.split())
    assert "cuts 1997-05-01, 1997-05-31, 1997-06-30" in text
    registry = Registry.of(settings)
    for kind in ("churn", "clv"):
        loaded = registry.load(kind, "cdnow")
        assert loaded is not None and loaded.version == "1", done.output
        assert loaded.version_tags["trained_on"] == "all data"
        assert loaded.model.recipe_["order_types"] == ["purchase"]
    # The registered churn model beat BG/NBD's ranking on the held-out cut (the gate
    # would have refused it otherwise); the same configuration again cannot beat itself.
    churn = registry.load("churn", "cdnow")
    assert float(churn.version_tags["auc"]) > churn.metrics["bgnbd_auc"]
    # The segments report shows the churn model's calibration and lift where outcomes are known.
    assert (
        runner.invoke(
            app, ["train", "segments", "--dataset", "cdnow", "--as-of", "1997-09-30"]
        ).exit_code
        == 0
    )
    deciles = compute(settings, "cdnow").churn
    assert deciles["observed"].iloc[0] > 2 * deciles["observed"].iloc[-1]  # it ranks
    assert (deciles["predicted"] - deciles["observed"]).abs().mean() < 0.1  # and is calibrated
    again = runner.invoke(app, command)
    assert again.exit_code == 0 and "not promoted" in " ".join(again.output.split())
    assert str(registry.champion("churn", "cdnow").version) == "1"
    early = runner.invoke(app, ["train", "churn", "--dataset", "cdnow", "--as-of", "1997-04-01"])
    assert early.exit_code == 1 and "too little history" in early.output
    zero = runner.invoke(app, ["train", "churn", "--dataset", "cdnow", "--as-of", "1997-09-30",
                               "--horizon-days", "0"])  # fmt: skip
    assert zero.exit_code == 1 and "positive number of days" in zero.output
