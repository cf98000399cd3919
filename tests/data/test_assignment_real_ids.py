"""Assignment on the real datasets' people: the vectorised path equals GrowthBook's SDK
id by id, and a 50/50 split of each dataset's people shows no sample-ratio mismatch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from growthbook import core as reference
from scipy.stats import chisquare

from bespoke.experiments import assignment
from bespoke.features import sources


def test_real_people_split_as_growthbook_splits_them(datasets_dir: Path) -> None:
    people = {
        "ml-100k": sources.movielens_100k(datasets_dir / "ml-100k").events["user_id"],
        "cdnow": sources.cdnow(datasets_dir / "cdnow").events["user_id"],
    }
    for name, ids in people.items():
        unique = sorted({str(i) for i in ids})
        for version in (1, 2):
            n = assignment.hash_many(f"aa-{name}", unique, version)
            expected = [reference.gbhash(f"aa-{name}", u, version) for u in unique]
            np.testing.assert_array_equal(n, expected)
            variant = assignment.choose_many(n, assignment.bucket_ranges(2))
            counts = np.bincount(variant, minlength=2)
            assert counts.sum() == len(unique)
            assert chisquare(counts).pvalue > 0.001, (name, version, counts)
