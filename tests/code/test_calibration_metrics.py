"""Calibration metrics of click probabilities (AUC, log loss, Brier score and the
expected calibration error over equal-width bins) match hand-computed cases and reject
bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bespoke.training.metrics import calibration_metrics


def _approx(expected: float) -> object:
    return pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_a_small_case_computed_by_hand() -> None:
    # probability  label   bin (of 10)
    #   0.10         0       1
    #   0.40         1       4
    #   0.35         0       3
    #   0.80         1       8
    probabilities = np.array([0.1, 0.4, 0.35, 0.8])
    labels = np.array([0, 1, 0, 1])
    out = calibration_metrics(probabilities, labels)

    # AUC: every positive (0.4, 0.8) outranks every negative (0.1, 0.35).
    assert out["auc"] == _approx(1.0)
    logloss = -(math.log(0.9) + math.log(0.4) + math.log(0.65) + math.log(0.8)) / 4
    assert out["logloss"] == _approx(logloss)
    brier = (0.1**2 + 0.6**2 + 0.35**2 + 0.2**2) / 4
    assert out["brier"] == _approx(brier)
    # one item per bin: ECE is the mean absolute gap between label and probability
    ece = (0.1 + 0.6 + 0.35 + 0.2) / 4
    assert out["ece"] == _approx(ece)
    assert set(out) == {"auc", "logloss", "brier", "ece"}


def test_the_ece_averages_within_bins_before_taking_the_gap() -> None:
    # bin 2 ([0.2, 0.3)): 0.2, 0.25, 0.28 with labels 1, 0, 0 -> |1/3 - 0.73/3|
    # bin 9 ([0.9, 1.0]): 0.95, 1.0 with labels 1, 1     -> |2/2 - 1.95/2|
    # (1.0 sits in the last bin, not an eleventh one)
    probabilities = np.array([0.2, 0.25, 0.28, 0.95, 1.0])
    labels = np.array([1, 0, 0, 1, 1])
    out = calibration_metrics(probabilities, labels)
    gap_low = abs(1 - (0.2 + 0.25 + 0.28))  # summed over the bin: n_b * |mean gap|
    gap_high = abs(2 - (0.95 + 1.0))
    assert out["ece"] == _approx((gap_low + gap_high) / 5)
    # within-bin errors of opposite sign cancel: per-item gaps would give far more
    per_item = np.abs(labels - probabilities).mean()
    assert out["ece"] < per_item


def test_auc_counts_ties_as_half_and_reversed_scores_as_zero() -> None:
    labels = np.array([0, 1, 0, 1])
    # positive 0.3 ties negative 0.3; the other pairs are ordered right: (3 + 0.5) / 4
    out = calibration_metrics(np.array([0.3, 0.3, 0.1, 0.6]), labels)
    assert out["auc"] == _approx(3.5 / 4)
    reversed_ = calibration_metrics(np.array([0.9, 0.1, 0.8, 0.2]), labels)
    assert reversed_["auc"] == _approx(0.0)


def test_fewer_bins_pool_more_and_one_bin_is_the_global_gap() -> None:
    probabilities = np.array([0.1, 0.4, 0.35, 0.8])
    labels = np.array([0, 1, 0, 1])
    one_bin = calibration_metrics(probabilities, labels, bins=1)
    assert one_bin["ece"] == _approx(abs(labels.mean() - probabilities.mean()))
    # two bins: [0, 0.5) holds 0.1, 0.4, 0.35 (one positive), [0.5, 1] holds 0.8
    two_bins = calibration_metrics(probabilities, labels, bins=2)
    assert two_bins["ece"] == _approx((abs(1 - 0.85) + abs(1 - 0.8)) / 4)
    # bins only change the ECE
    ten = calibration_metrics(probabilities, labels)
    for name in ("auc", "logloss", "brier"):
        assert one_bin[name] == ten[name] == two_bins[name]


def test_perfectly_calibrated_bins_give_zero_ece_but_not_zero_brier() -> None:
    # four items at 0.25 with one positive, four at 0.75 with three positives
    probabilities = np.array([0.25] * 4 + [0.75] * 4)
    labels = np.array([1, 0, 0, 0, 1, 1, 1, 0])
    out = calibration_metrics(probabilities, labels)
    assert out["ece"] == _approx(0.0)
    assert out["brier"] == _approx(0.1875)  # (0.75² + 3 · 0.25²) per half, over 8
    # pairs: 3 × 3 won, 3 + 3 tied (half each), 1 lost, out of 16
    assert out["auc"] == _approx(12 / 16)


def test_certain_wrong_predictions_are_clipped_not_infinite() -> None:
    out = calibration_metrics(np.array([0.0, 1.0, 1.0]), np.array([1, 0, 1]))
    # log(1e-7) per wrong answer, log(1 - 1e-7) for the right one
    expected = -(2 * math.log(1e-7) + math.log(1 - 1e-7)) / 3
    assert out["logloss"] == pytest.approx(expected, rel=1e-9)
    assert math.isfinite(out["logloss"])
    assert out["brier"] == _approx(2 / 3)


def test_labels_may_be_booleans_or_floats() -> None:
    probabilities = np.array([0.1, 0.4, 0.35, 0.8])
    as_ints = calibration_metrics(probabilities, np.array([0, 1, 0, 1]))
    assert calibration_metrics(probabilities, np.array([False, True, False, True])) == as_ints
    assert calibration_metrics(list(probabilities), [0.0, 1.0, 0.0, 1.0]) == as_ints


@pytest.mark.parametrize(
    ("probabilities", "labels"),
    [
        ([0.1, 0.2, 0.3], [0, 1]),
        ([0.1, 0.2], [0, 1, 1]),
        ([[0.1, 0.2], [0.3, 0.4]], [[0, 1], [1, 0]]),
    ],
)
def test_shapes_must_match_and_be_one_dimensional(probabilities, labels) -> None:
    with pytest.raises(ValueError, match="one-dimensional and of the same length"):
        calibration_metrics(np.array(probabilities), np.array(labels))


@pytest.mark.parametrize("labels", [[0, 0, 0], [1, 1, 1]])
def test_a_single_class_is_rejected(labels) -> None:
    with pytest.raises(ValueError, match="both positive and negative"):
        calibration_metrics(np.array([0.2, 0.5, 0.9]), np.array(labels))


@pytest.mark.parametrize("bins", [0, -3])
def test_bins_must_be_at_least_one(bins: int) -> None:
    with pytest.raises(ValueError, match="bins must be at least 1"):
        calibration_metrics(np.array([0.2, 0.9]), np.array([0, 1]), bins=bins)
