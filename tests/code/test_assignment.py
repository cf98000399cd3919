"""Assignment is the same as GrowthBook's: every function checked against GrowthBook's own
Python SDK (the reference implementation its cross-SDK cases are run against) on
thousands of generated inputs — ASCII, accented and astral-plane text, every hash
version, valid and invalid weights, coverage outside [0, 1]."""

from __future__ import annotations

import random
import string

import numpy as np
import pytest
from growthbook import core as reference

from bespoke.experiments import assignment

ALPHABET = string.ascii_letters + string.digits + "-_ .@éüßøЖ中文🙂🎉"


def _text(rng: random.Random) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 24)))


@pytest.fixture(scope="module")
def texts() -> list[tuple[str, str]]:
    rng = random.Random(7)
    return [(_text(rng), _text(rng)) for _ in range(3000)]


def test_hashes_are_growthbooks(texts: list[tuple[str, str]]) -> None:
    for seed, value in texts:
        assert assignment.fnv1a32(seed + value) == reference.fnv1a32(seed + value)
        for version in (1, 2, 3, 0):
            assert assignment.hash(seed, value, version) == reference.gbhash(seed, value, version)
    # Known values: a character outside the BMP counts as its two UTF-16 surrogates.
    assert assignment.fnv1a32("🙂") != assignment.fnv1a32("\u263a")
    assert assignment.hash("", "a", 2) == reference.gbhash("", "a", 2)


def test_vectorised_hashes_equal_one_at_a_time(texts: list[tuple[str, str]]) -> None:
    values = [value for _, value in texts]
    for version in (1, 2):
        many = assignment.hash_many("exp-seed", values, version)
        one = [assignment.hash("exp-seed", v, version) for v in values]
        np.testing.assert_array_equal(many, np.array(one))
    assert np.isnan(assignment.hash_many("s", ["a", "b"], 9)).all()
    # Edge cases of the vectorised path: empty, trailing NULs, astral characters, and first
    # hashes with every number of digits (10, 100, … 10^9 included).
    edge = ["", "a\0", "\0", "🙂x", "x🙂", "\x01", *[str(10**k) for k in range(10)]]
    for version in (1, 2):
        np.testing.assert_array_equal(
            assignment.hash_many("", edge, version),
            [reference.gbhash("", v, version) for v in edge],
        )
    numbers = np.array([0, 9, 10, 99, 100, 10**9 - 1, 10**9, 2**32 - 1], dtype=np.uint64)
    np.testing.assert_array_equal(
        assignment._fnv_of_digits(numbers), [reference.fnv1a32(str(int(n))) for n in numbers]
    )
    assert len(assignment.hash_many("s", [], 2)) == 0


def test_bucket_ranges_and_choices_are_growthbooks() -> None:
    rng = random.Random(11)
    for _ in range(3000):
        n = rng.randint(0, 5)
        coverage = rng.choice([rng.uniform(-0.5, 1.5), rng.random(), 1.0, 0.0])
        kind = rng.randrange(5)
        if kind == 0:
            weights = None
        elif kind == 1:  # valid
            raw = [rng.random() + 1e-3 for _ in range(n)]
            weights = [w / sum(raw) for w in raw] if n else []
        elif kind == 2:  # not summing to 1
            weights = [rng.random() for _ in range(n)]
        elif kind == 3:  # wrong length
            weights = [1 / (n + 1)] * (n + 1)
        else:  # negative
            weights = [1.2, -0.2] + [0.0] * max(n - 2, 0) if n >= 2 else [1.0] * n
        ours = assignment.bucket_ranges(n, coverage, weights)
        theirs = reference.getBucketRanges(n, coverage, weights)
        assert ours == theirs, (n, coverage, weights)
        for _ in range(5):
            point = rng.random()
            assert assignment.choose_variation(point, ours) == reference.chooseVariation(
                point, theirs
            )
        points = np.array([rng.random() for _ in range(50)] + [0.0, 0.5, 1.0])
        assert assignment.choose_many(points, ours).tolist() == [
            reference.chooseVariation(p, theirs) for p in points
        ]


def test_namespaces_are_growthbooks(texts: list[tuple[str, str]]) -> None:
    rng = random.Random(3)
    for user, name in texts[:1500]:
        start = rng.random()
        space = (name, start, min(1.0, start + rng.random()))
        assert assignment.in_namespace(user, space) == reference.inNamespace(user, space)


def test_raising_coverage_never_moves_an_assigned_person() -> None:
    people = [f"user-{i}" for i in range(20_000)]
    n = assignment.hash_many("checkout-test", people, 2)
    before = assignment.choose_many(n, assignment.bucket_ranges(2, 0.05, [0.5, 0.5]))
    after = assignment.choose_many(n, assignment.bucket_ranges(2, 0.5, [0.5, 0.5]))
    assigned = before >= 0
    assert assigned.mean() == pytest.approx(0.05, abs=0.005)
    assert (after[assigned] == before[assigned]).all()
    assert (after >= 0).mean() == pytest.approx(0.5, abs=0.01)


def test_a_person_gets_the_variant_a_growthbook_client_gives_them() -> None:
    from growthbook import Experiment, GrowthBook

    rng = random.Random(5)
    for case in range(400):
        n = rng.randint(2, 4)
        raw = [rng.random() + 0.05 for _ in range(n)]
        weights = [w / sum(raw) for w in raw]
        coverage = rng.choice([1.0, 0.5, 0.05, rng.random()])
        version = rng.choice([1, 2])
        start = rng.random() * 0.5
        space = rng.choice([None, (f"ns-{case}", start, start + 0.5)])
        seed = rng.choice([f"exp-{case}", _text(rng) or "s"])
        experiment = Experiment(key=f"exp-{case}", variations=list(range(n)), weights=weights,
                                coverage=coverage, hashVersion=version, namespace=space,
                                seed=seed)  # fmt: skip
        for _ in range(10):
            user = rng.choice([_text(rng), str(rng.randint(1, 10**6)), ""])
            client = GrowthBook(attributes={"id": user})
            result = client.run(experiment)
            ours = assignment.assign(user, seed=seed, weights=weights, coverage=coverage,
                                     hash_version=version, namespace=space)  # fmt: skip
            assert ours == (result.variationId if result.inExperiment else -1), (case, user)
            client.destroy()
