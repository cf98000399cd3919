"""Consent enforced on real data (ML-100K): a person who withdrew personalization leaves
the next training set and segment input, and is not stored again by a batch import; an
erased person's re-imported old ratings stay out."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from bespoke.features.collect import ingest
from bespoke.features.lake import Lake
from bespoke.features.report import data_report, manifest_summary
from bespoke.features.schema import ConsentPurpose
from bespoke.features.sources import movielens_100k
from bespoke.privacy.consent import ConsentLedger, ConsentSource
from bespoke.privacy.gate import PersonGate, consented_lake
from bespoke.privacy.suppression import SuppressionList
from bespoke.segments.features import load_person_events
from bespoke.settings import get_settings
from bespoke.training.data import load_interactions

P = ConsentPurpose.PERSONALIZATION


def test_a_withdrawal_leaves_the_next_training_set_and_a_grant_brings_it_back(
    ml100k_lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake, _ = ml100k_lake
    monkeypatch.setenv("BESPOKE_LAKE_URL", lake.url)
    get_settings.cache_clear()
    settings = get_settings()
    everyone = load_interactions(consented_lake(settings), "ml-100k")
    assert everyone.n_users == 943
    gate = PersonGate.from_settings(settings)
    gate.ledger.record("ml-100k", {P: False}, source=ConsentSource.API, user_id="1")
    gate.ledger.record("ml-100k", {ConsentPurpose.MARKETING: False}, source=ConsentSource.API,
                       user_id="2")  # another purpose: stays  # fmt: skip
    without = load_interactions(consented_lake(settings), "ml-100k")
    assert without.n_users == 942 and "1" not in set(without.user_ids)
    assert len(without) == len(everyone) - 272  # user 1's ratings
    people = load_person_events(consented_lake(settings), "ml-100k")
    assert "1" not in set(people["person"].astype(str)) and "2" in set(people["person"].astype(str))
    # withdrawal is not erasure: the rows stay in the lake for a later grant
    assert len(lake.files_holding("ml-100k", "1")) > 0
    gate.ledger.record("ml-100k", {P: True}, source=ConsentSource.API, user_id="1",
                       decided_at=datetime.now(UTC))  # fmt: skip
    assert load_interactions(consented_lake(settings), "ml-100k").n_users == 943


def test_a_batch_import_leaves_out_who_withdrew_and_who_was_erased(
    datasets_dir: Path, tmp_path: Path, key: bytes
) -> None:
    from bespoke.serving.db import Database

    database = Database(tmp_path / "online.db")
    gate = PersonGate(database, key)
    ConsentLedger(database).record("ml-100k", {P: False}, source=ConsentSource.CMP, user_id="3")
    SuppressionList(database, key).add("ml-100k", ["user_id:5"])  # erased today
    lake = Lake(str(tmp_path / "lake"))
    result = ingest(movielens_100k(datasets_dir / "ml-100k"), lake, key, gate=gate)
    counts = result.counts("events")
    assert counts["excluded_withdrawn"] == 54  # user 3's ratings
    assert counts["excluded_erased"] == 175  # user 5's, all from 1997-98
    assert counts["stored"] == 100_000 - 54 - 175
    summary = manifest_summary(result.manifest)
    assert "54 of people who withdrew personalization" in summary
    assert "175 of erased people (suppressed)" in summary
    consent = data_report(lake, "ml-100k").consent.iloc[0]
    assert (consent["excluded_withdrawn"], consent["excluded_erased"]) == (54, 175)
    stored = {
        r[0] for r in lake.connect().execute("SELECT DISTINCT user_id FROM events").fetchall()
    }
    assert "3" not in stored and "5" not in stored and "4" in stored
