"""The KPI report's breakdown by experiment variant, filled from the lake's exposures: real
ML-100K users assigned with GrowthBook's hashing, recorded and flushed by the experiment
ledger, and every figure checked against an independent pandas labelling of the events
(an event is in its person's variant from their first exposure on, ``not exposed`` before
it or without one; QA overrides never count)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from bespoke.cli import app
from bespoke.experiments.assignment import bucket_ranges, choose_many, hash_many
from bespoke.experiments.ledger import ExperimentLedger, Exposure
from bespoke.features import collect, sources
from bespoke.features.lake import Lake
from bespoke.monitoring.kpi import NOT_EXPOSED, KpiError, compute_kpis, render_html
from bespoke.serving.db import Database
from bespoke.settings import get_settings

HOME = "home-recs"  # control / treatment, 80% coverage, exposed at each user's median event
EMAIL = "email-subject"  # three variants, everyone, exposed on one day
QA = "qa-only"  # nothing but QA overrides, exposed last of all


@pytest.fixture
def lake(ml100k_lake, tmp_path: Path) -> Lake:
    """A writable copy of the session's ML-100K lake."""
    source, _ = ml100k_lake
    shutil.copytree(source.path(), tmp_path / "lake")
    return Lake(str(tmp_path / "lake"))


@pytest.fixture
def ledger(tmp_path: Path) -> ExperimentLedger:
    return ExperimentLedger(Database(tmp_path / "online.sqlite"))


@pytest.fixture
def kpi(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    """``kpi(lake, *args)`` runs ``bespoke report kpi`` in-process on ``lake``."""
    runner = CliRunner()

    def run(lake: Lake, *args: str) -> Any:
        monkeypatch.setenv("BESPOKE_LAKE_URL", lake.url)
        get_settings.cache_clear()
        return runner.invoke(app, ["report", "kpi", *map(str, args)])

    return run


def _events(lake: Lake) -> pd.DataFrame:
    """ML-100K's events read with pandas straight from Parquet (no DuckDB, no views)."""
    frame = pd.read_parquet(Path(lake.url) / "events" / "dataset=ml-100k")
    return frame[["user_id", "timestamp", "value"]].assign(
        timestamp=frame.timestamp.dt.tz_convert("UTC")
    )


def _assign(seed: str, people: Sequence[str], weights: Sequence[float], coverage: float):
    """Each person's variant index as the service assigns it (−1: not in the experiment)."""
    n = hash_many(seed, list(people), 2)
    return choose_many(n, bucket_ranges(len(weights), coverage, list(weights)))


def _expose(
    ledger: ExperimentLedger,
    lake: Lake,
    experiment: str,
    people: pd.DataFrame,
    names: Sequence[str],
    *,
    forced: bool = False,
    dataset: str = "ml-100k",
) -> None:
    """Record ``people`` (person, exposed_at, index[, anonymous]) and flush to the lake."""
    rows = [
        Exposure(dataset, experiment, str(row.person), bool(getattr(row, "anonymous", False)),
                 names[int(row.index)], int(row.index), 2, forced,
                 pd.Timestamp(row.exposed_at).to_pydatetime())
        for row in people.itertuples(index=False)
    ]  # fmt: skip
    assert ledger.record(rows) == len(rows)
    ledger.flush(lake)


def _home_recs(events: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(assigned, forced): real ML-100K users hashed into HOME at 80% coverage, each exposed
    at their median event (so they have events on both sides), and 30 users outside the
    coverage given a QA override to the treatment at their first event."""
    ordered = events.sort_values(["user_id", "timestamp"])
    median = ordered.groupby("user_id").timestamp.agg(lambda t: t.iloc[len(t) // 2])
    first = ordered.groupby("user_id").timestamp.min()
    people = median.index.to_numpy()
    index = _assign(HOME, people, [0.5, 0.5], 0.8)
    assigned = pd.DataFrame(
        {"person": people[index >= 0], "exposed_at": median.to_numpy()[index >= 0],
         "index": index[index >= 0]}
    )  # fmt: skip
    outside = people[index < 0][:30]
    forced = pd.DataFrame({"person": outside, "exposed_at": first[outside].to_numpy(), "index": 1})
    return assigned, forced


def _label(events: pd.DataFrame, exposures: pd.DataFrame, names: Sequence[str]) -> pd.Series:
    """Each event's variant, computed here: from the person's exposure on, else not exposed."""
    merged = events.merge(exposures.rename(columns={"person": "user_id"}), on="user_id", how="left")
    after = merged.exposed_at.notna() & (merged.timestamp >= merged.exposed_at)
    variant = merged["index"].map(lambda i: names[int(i)] if i == i else NOT_EXPOSED)
    return pd.Series(np.where(after, variant, NOT_EXPOSED), index=events.index)


def _by_level(events: pd.DataFrame) -> pd.DataFrame:
    return events.groupby("variant").agg(
        active_users=("user_id", "nunique"),
        events=("user_id", "size"),
        converters=("converter", "nunique"),
    )


def test_variant_breakdown_matches_pandas_and_sums_to_the_totals(
    lake: Lake, ledger: ExperimentLedger
) -> None:
    events = _events(lake)
    assigned, forced = _home_recs(events)
    assert 0.75 < len(assigned) / events.user_id.nunique() < 0.85
    _expose(ledger, lake, HOME, assigned, ["control", "treatment"])
    _expose(ledger, lake, HOME, forced, ["control", "treatment"], forced=True)
    report = compute_kpis(lake.connect(), "ml-100k", by=["channel"], grain="week")

    # Found without being asked for, named, control first, then the people not exposed.
    assert report.by == ["channel", "variant"]
    assert report.experiment == HOME and not report.experiment_chosen
    assert report.variants == ["control", "treatment"]
    levels = report.levels("variant")
    assert levels.level.tolist() == ["control", "treatment", NOT_EXPOSED]

    # Every figure equals the labelling done here; QA overrides count as not exposed.
    events["variant"] = _label(events, assigned, ["control", "treatment"])
    events["converter"] = events.user_id.where(events.value >= 4)
    expected = _by_level(events)
    got = levels.set_index("level")[["active_users", "events", "converters"]]
    pd.testing.assert_frame_equal(
        got.sort_index(), expected.sort_index(), check_names=False, check_dtype=False
    )
    qa = events[events.user_id.isin(forced.person)]
    assert len(qa) > 0 and (qa.variant == NOT_EXPOSED).all()
    # Events before the exposure are not exposed, those from it on are in the variant.
    person = assigned.iloc[0]
    mine = events[events.user_id == person.person]
    assert (mine[mine.timestamp < person.exposed_at].variant == NOT_EXPOSED).all()
    assert (mine[mine.timestamp >= person.exposed_at].variant != NOT_EXPOSED).all()
    assert (mine.timestamp < person.exposed_at).any()

    # The breakdown sums to the overall figures: events exactly, in the window and in
    # every week; active users once each, plus those active on both sides of their exposure.
    total = report.levels("all").iloc[0]
    assert levels.events.sum() == total.events == 100_000
    weekly = report.over_time("variant").groupby("period").events.sum()
    overall = report.over_time("all").set_index("period").events
    pd.testing.assert_series_equal(weekly, overall, check_names=False)
    both_sides = (events.groupby("user_id").variant.nunique() == 2).sum()
    assert levels.active_users.sum() == total.active_users + both_sides == 943 + both_sides
    exposed = levels[levels.level != NOT_EXPOSED]
    assert exposed.active_users.sum() == len(assigned)  # every assigned user rated after

    # The weekly lines too, for the control.
    events["week"] = events.timestamp.dt.tz_localize(None).dt.to_period("W-SUN").dt.start_time
    control = events[events.variant == "control"].groupby("week").user_id.nunique()
    drawn = report.over_time("variant").query("level == 'control'").set_index("period")
    assert drawn.active_users.tolist() == control.reindex(drawn.index, fill_value=0).tolist()

    page = render_html(report)
    assert f"By experiment variant: <code>{HOME}</code>" in page
    assert 'id="fig-variant"' in page and "No experiment has exposures" not in page
    table = page[page.index('id="by-variant"') :]
    cells = [table.index(f"<td>{name}</td>") for name in ("control", "treatment", NOT_EXPOSED)]
    assert cells == sorted(cells)


def test_experiment_option_chooses_among_experiments(
    lake: Lake, ledger: ExperimentLedger, kpi, tmp_path: Path
) -> None:
    events = _events(lake)
    assigned, _ = _home_recs(events)
    _expose(ledger, lake, HOME, assigned, ["control", "treatment"])
    people = np.sort(events.user_id.unique())
    email_day = datetime(1998, 1, 15, tzinfo=UTC)
    index = _assign(EMAIL, people, [1 / 3, 1 / 3, 1 / 3], 1.0)
    email = pd.DataFrame({"person": people, "exposed_at": email_day, "index": index})
    _expose(ledger, lake, EMAIL, email, ["control", "short", "long"])
    # QA overrides, later than any other exposure: never the default.
    qa = pd.DataFrame({"person": people[:5], "exposed_at": datetime(1999, 1, 1, tzinfo=UTC),
                       "index": 1})  # fmt: skip
    _expose(ledger, lake, QA, qa, ["control", "on"], forced=True)

    # The default is the experiment with the latest exposure that is not a QA override.
    latest = {HOME: assigned.exposed_at.max(), EMAIL: email_day}
    assert max(latest, key=latest.get) == HOME
    out = tmp_path / "default"
    result = kpi(lake, "--dataset", "ml-100k", "--by", "variant", "--grain", "month", "--out", out)
    assert result.exit_code == 0, result.output
    page = (out / "kpi.html").read_text(encoding="utf-8")
    assert f"By experiment variant: <code>{HOME}</code>" in page
    assert f"by variant of experiment {HOME}" in result.output
    assert "<code>--experiment</code> picks another of" in page and f"<code>{EMAIL}</code>" in page

    out = tmp_path / "email"
    result = kpi(lake, "--dataset", "ml-100k", "--by", "variant", "--experiment", EMAIL,
                 "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    page = (out / "kpi.html").read_text(encoding="utf-8")
    assert f"By experiment variant: <code>{EMAIL}</code>" in page
    report = compute_kpis(lake.connect(), "ml-100k", by=["variant"], experiment=EMAIL)
    assert report.experiment_chosen and report.variants == ["control", "short", "long"]
    levels = report.levels("variant")
    assert levels.level.tolist() == ["control", "short", "long", NOT_EXPOSED]
    events["variant"] = _label(events, email, ["control", "short", "long"])
    events["converter"] = events.user_id.where(events.value >= 4)
    expected = _by_level(events)
    assert levels.set_index("level").events.to_dict() == expected.events.to_dict()
    # The console table lists them in that order, with the window's figures.
    output = result.output
    rows = [output.index(f"│ {name} ") for name in ("control", "short", "long", NOT_EXPOSED)]
    assert rows == sorted(rows)
    assert f"{expected.events['short']:,}" in output

    # An experiment with nothing but QA overrides can be asked for: nobody is exposed.
    only_qa = compute_kpis(lake.connect(), "ml-100k", by=["variant"], experiment=QA)
    assert only_qa.variants == [] and only_qa.levels("variant").level.tolist() == [NOT_EXPOSED]
    assert any("QA override" in note for note in only_qa.notes)


def test_unknown_experiment_is_an_error_naming_it(
    lake: Lake, ledger: ExperimentLedger, kpi, tmp_path: Path, isolated_settings: Path
) -> None:
    events = _events(lake)
    assigned, _ = _home_recs(events)
    _expose(ledger, lake, HOME, assigned, ["control", "treatment"])
    out = tmp_path / "kpi-out"
    result = kpi(lake, "--dataset", "ml-100k", "--experiment", "checkout-v2", "--out", out)
    assert result.exit_code == 2, result.output
    message = result.stderr.replace("\n", " ")
    assert "--experiment 'checkout-v2'" in message and f"'{HOME}'" in message
    assert not out.exists() and not get_settings().reports_dir.exists()
    with pytest.raises(KpiError, match="checkout-v2"):
        compute_kpis(lake.connect(), "ml-100k", experiment="checkout-v2")


def test_no_exposures_says_how_to_get_them(ml100k_lake, kpi, tmp_path: Path) -> None:
    lake, _ = ml100k_lake
    report = compute_kpis(lake.connect(), "ml-100k", by=["gender"])
    assert not report.has_variant and report.experiment is None and report.by == ["gender"]
    page = render_html(report)
    assert "No experiment has exposures in &#x27;ml-100k&#x27; yet" in page
    assert "exposures reach the lake when the ledger is flushed" in page
    assert "BESPOKE_EXPERIMENTS_PATH" in page and 'id="fig-variant"' not in page
    for args in (["--by", "variant"], ["--experiment", HOME]):
        result = kpi(lake, "--dataset", "ml-100k", *args, "--out", tmp_path / "out")
        assert result.exit_code == 2, result.output
        message = result.stderr.replace("\n", " ")
        assert "no experiment has exposures in 'ml-100k' yet" in message
        assert "bespoke experiment flush" in message
    assert not (tmp_path / "out").exists()


def test_anonymous_exposures_match_anonymous_ids(
    tmp_path: Path, write_csv, shop_mapping, ledger: ExperimentLedger
) -> None:
    """A visitor exposed anonymously is in the variant for their anonymous events; a user
    id exposure labels the events carrying that user id, whatever their anonymous id."""
    rows = [
        {"customer": customer, "visitor": visitor, "sku": f"s{n}",
         "ts": f"2024-01-{day:02d}T12:00:00Z", "action": "view", "amount": ""}
        for n, (customer, visitor, day) in enumerate(
            [("", "v1", 1), ("", "v1", 2), ("", "v1", 3),  # exposed as v1 on day 2
             ("c1", "v1", 3),  # logged in: c1 has no exposure, v1 does
             ("c2", "", 1), ("c2", "v2", 2), ("c2", "v2", 3),  # exposed as c2 on day 2
             ("", "v2", 3)]  # v2 is not exposed as a visitor
        )
    ]  # fmt: skip
    lake = Lake(str(tmp_path / "shop-lake"))
    mapping = shop_mapping(anonymous_id="visitor")
    collect.ingest(sources.interactions_file(write_csv("shop.csv", rows), mapping, "shop"),
                   lake, bytes(32))  # fmt: skip
    day2 = datetime(2024, 1, 2, 12, tzinfo=UTC)
    exposures = pd.DataFrame(
        {"person": ["v1", "c2", "v2"], "anonymous": [True, False, False],
         "exposed_at": [day2, day2, day2], "index": [1, 0, 1]}
    )  # fmt: skip
    # "v2" exposed as a user id matches no event: nobody's user id is v2.
    _expose(ledger, lake, "banner", exposures, ["control", "new"], dataset="shop")
    report = compute_kpis(lake.connect(), "shop", by=["variant"], grain="day")
    levels = report.levels("variant").set_index("level")
    assert levels.events.to_dict() == {"control": 2, "new": 3, NOT_EXPOSED: 3}
    assert levels.active_users.to_dict() == {"control": 1, "new": 2, NOT_EXPOSED: 3}
