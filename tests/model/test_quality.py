"""Behavioural floors on real data: the protocol and metrics of the benchmark, small
enough to run in the suite (the full comparison lives in bench/)."""

from __future__ import annotations

import pytest

from bespoke.training.als import ALS
from bespoke.training.data import load_interactions
from bespoke.training.ease import EASE
from bespoke.training.evaluate import evaluate
from bespoke.training.popularity import Popularity
from bespoke.training.split import Split, ms_stratified


@pytest.fixture(scope="module")
def split(ml100k_lake) -> Split:
    lake, _ = ml100k_lake
    return ms_stratified(load_interactions(lake, "ml-100k"), ratio=0.75, seed=42)


@pytest.fixture(scope="module")
def popularity_ndcg(split: Split) -> float:
    return evaluate(Popularity().fit(split.train), split)["ndcg@10"]


def test_ease_reaches_the_published_best_on_ml100k(split: Split, popularity_ndcg: float) -> None:
    metrics = evaluate(EASE(l2=500.0).fit(split.train), split)
    # Microsoft Recommenders' best on this protocol: BiVAE, nDCG@10 0.475, P@10 0.412.
    assert metrics["ndcg@10"] >= 0.475
    assert metrics["precision@10"] >= 0.412
    assert metrics["ndcg@10"] > popularity_ndcg + 0.15
    assert metrics["users"] == 943


def test_als_beats_popularity(split: Split, popularity_ndcg: float) -> None:
    metrics = evaluate(ALS(factors=32, iterations=10, random_state=42).fit(split.train), split)
    assert metrics["ndcg@10"] > popularity_ndcg + 0.05
    assert metrics["coverage@10"] > 0.1  # not just the blockbusters
