"""The experiments' statistics engine: what an A/B test's readout needs, in one place.

Fixed-horizon comparisons (one :class:`Comparison` each: both groups' estimates, the
difference with its interval, the relative lift with its interval, a two-sided p-value):

- :func:`compare_proportions`: conversion rates. Two-proportion z test with the pooled
  standard error (statsmodels ``proportions_ztest``; the same as the uncorrected 2×2
  chi-square), an unpooled Wald interval for the difference (statsmodels
  ``confint_proportions_2indep(method="wald")``).
- :func:`compare_means`: per-person averages. Welch's t test and its Welch–Satterthwaite
  interval (statsmodels ``CompareMeans``); with pre-experiment covariates, CUPED first
  (:func:`cuped_theta`, :func:`cuped_adjust`).
- :func:`compare_ratios`: ratio metrics whose unit is not the randomised one (revenue per
  order with people randomised): the delta method for each group's ratio, then a z test.

Every relative lift (treatment / control − 1) gets a delta-method normal interval; the
libraries have no such interval for independent samples, so it is written here.

Health and many tests at once: :func:`sample_ratio_mismatch` (chi-square goodness of fit,
scipy) and :func:`adjust_p_values` (Holm or Benjamini–Hochberg, statsmodels).

Peeking: :func:`msprt_path` / :func:`msprt`, the normal-mixture sequential probability
ratio test, whose p-values and confidence sequences stay valid however often one looks
(Johari, Pekelis & Walsh 2017). Neither scipy nor statsmodels has it.

Bayesian readout: :func:`bayesian`, chance to win and expected loss from a Gaussian
approximation of the difference with a flat prior (as GrowthBook's engine reports them).

Planning: :func:`power_proportions`, :func:`sample_size_proportions`,
:func:`power_means`, :func:`sample_size_means` (statsmodels ``NormalIndPower``).

Bad input raises :class:`ValueError` naming the argument. Results are frozen dataclasses
whose ``as_dict()`` is plain JSON (a non-finite number becomes ``None``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, fields
from numbers import Integral, Real
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike
from scipy import special
from scipy.stats import chisquare
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    proportion_effectsize,
    proportions_ztest,
)
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

#: GrowthBook's default p-value threshold for a sample-ratio mismatch: strict, because the
#: check runs on every experiment at every look and a false alarm stops a healthy test.
SRM_THRESHOLD = 0.001

_POWER = NormalIndPower()


# --------------------------------------------------------------------------- results


def _plain(value: Any) -> Any:
    """A JSON value: numbers as Python ints/floats (non-finite ones as None), sequences
    and arrays as lists."""
    if value is None or isinstance(value, (bool, np.bool_, str)):
        return bool(value) if isinstance(value, np.bool_) else value
    if isinstance(value, (Integral, np.integer)):
        return int(value)
    if isinstance(value, (Real, np.floating)):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, np.ndarray):
        return [_plain(item) for item in value.tolist()]
    if isinstance(value, (tuple, list)):
        return [_plain(item) for item in value]
    return value


class _AsDict:
    def as_dict(self) -> dict[str, Any]:
        """The fields as plain JSON values (non-finite numbers become None)."""
        return {field.name: _plain(getattr(self, field.name)) for field in fields(self)}


@dataclass(frozen=True)
class Comparison(_AsDict):
    """Treatment against control on one metric."""

    kind: str  # "proportion" | "mean" | "ratio"
    n_control: int
    n_treatment: int
    control: float  # the estimate in each group: rate, mean or ratio
    treatment: float
    difference: float  # treatment - control
    difference_ci: tuple[float, float]
    lift: float  # treatment / control - 1 (NaN with relative=False)
    lift_ci: tuple[float, float]  # delta method
    p_value: float  # two-sided
    statistic: float  # z (proportions, ratios) or Welch's t (means)
    alpha: float
    variance_reduction: float | None = None  # CUPED: 1 - var(adjusted diff) / var(raw diff)
    df: float | None = None  # Welch–Satterthwaite degrees of freedom (means only)


@dataclass(frozen=True)
class SampleRatio(_AsDict):
    """A sample-ratio check: the counts seen, the counts the weights expect."""

    observed: tuple[int, ...]
    expected: tuple[float, ...]
    statistic: float  # chi-square
    p_value: float
    mismatch: bool  # p_value < threshold
    threshold: float


@dataclass(frozen=True)
class Sequential(_AsDict):
    """The mixture SPRT at the latest look."""

    likelihood_ratio: float  # Λ at the latest look
    p_value: float  # always-valid p (running minimum over the looks given)
    ci: tuple[float, float]  # confidence sequence (running intersection over the looks)
    rejected: bool  # p_value <= alpha
    tau2: float
    alpha: float


@dataclass(frozen=True, eq=False)  # arrays have no single truth value, so no __eq__
class SequentialPath(_AsDict):
    """The mixture SPRT at every look (last axis), for one path or many (first axis).

    The arrays are read-only. ``first_rejection`` is the first look with
    ``p_value <= alpha``: an int or None for one path, an int array with -1 for "never"
    for many."""

    likelihood_ratio: np.ndarray
    p_value: np.ndarray  # running minimum along the last axis: never rises
    lower: np.ndarray  # confidence sequence: running intersection of the per-look intervals
    upper: np.ndarray
    rejected: np.ndarray  # bool, p_value <= alpha
    first_rejection: int | np.ndarray | None
    tau2: float
    alpha: float


@dataclass(frozen=True)
class Bayesian(_AsDict):
    """Gaussian approximation of the difference, flat prior."""

    chance_to_win: float  # P(difference > 0)
    expected_loss: float  # E[max(0, -difference)]: what shipping treatment costs if wrong
    credible_interval: tuple[float, float]


# --------------------------------------------------------------------------- validation


def _number(name: str, value: Any) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (Real, np.number)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {number}")
    return number


def _probability(name: str, value: Any) -> float:
    """A number strictly inside (0, 1): alpha, power, a threshold, a baseline rate."""
    number = _number(name, value)
    if not 0 < number < 1:
        raise ValueError(f"{name} must be in (0, 1), got {number}")
    return number


def _count(name: str, value: Any, *, minimum: int = 0) -> int:
    """A whole number ≥ minimum (an integral float such as a pandas sum is accepted)."""
    whole = isinstance(value, (Integral, np.integer)) or (
        isinstance(value, (Real, np.floating)) and float(value).is_integer()
    )
    if isinstance(value, (bool, np.bool_)) or not whole:
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    count = int(value)
    if count < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {count}")
    return count


def _sample(name: str, values: ArrayLike, *, minimum: int = 2) -> np.ndarray:
    """A 1-D float array of finite values, at least ``minimum`` long (a variance needs 2)."""
    try:
        array = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an array of numbers") from None
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if array.size < minimum:
        raise ValueError(f"{name} needs at least {minimum} values, got {array.size}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def _same_length(name: str, array: np.ndarray, other_name: str, other: np.ndarray) -> None:
    if array.size != other.size:
        raise ValueError(f"{name} has {array.size} values but {other_name} has {other.size}")


# --------------------------------------------------------------------------- shared pieces


def _z(alpha: float) -> float:
    """The two-sided normal critical value (ndtri is scipy.stats.norm.ppf without its
    per-call overhead, which matters at thousands of calls)."""
    return float(special.ndtri(1 - alpha / 2))


def _z_test(difference: float, standard_error: float) -> tuple[float, float]:
    """Two-sided z test of difference = 0. A zero standard error (constant data) is no
    evidence when the difference is 0 and certainty otherwise, rather than NaN."""
    if standard_error == 0:
        return (0.0, 1.0) if difference == 0 else (math.copysign(math.inf, difference), 0.0)
    statistic = difference / standard_error
    return statistic, float(2 * special.ndtr(-abs(statistic)))


def _lift(
    control: float,
    treatment: float,
    var_control: float,
    var_treatment: float,
    z: float,
    relative: bool,
) -> tuple[float, tuple[float, float]]:
    """treatment / control − 1 and its delta-method normal interval.

    ``var_*`` are the variances of the two estimates (already divided by n). For
    g(c, t) = t / c − 1 with independent groups, the gradient is (−t/c², 1/c), so
    var(g) ≈ var(t)/c² + t² var(c)/c⁴ (Casella & Berger, Statistical Inference, §5.5.4;
    the same form as Deng et al. 2018, "Applying the delta method in metric analytics").
    """
    if not relative:
        return math.nan, (math.nan, math.nan)
    lift = treatment / control - 1
    half = z * math.sqrt(var_treatment / control**2 + treatment**2 * var_control / control**4)
    return lift, (lift - half, lift + half)


def _interval(low: Any, high: Any) -> tuple[float, float]:
    return float(low), float(high)


# --------------------------------------------------------------------------- comparisons


def compare_proportions(
    successes_control: int,
    n_control: int,
    successes_treatment: int,
    n_treatment: int,
    *,
    alpha: float = 0.05,
    relative: bool = True,
) -> Comparison:
    """Compare two conversion rates.

    The p-value is the two-proportion z test with the pooled standard error (statsmodels
    ``proportions_ztest``; z² is the uncorrected 2×2 chi-square). The difference interval
    is the unpooled Wald interval (statsmodels ``confint_proportions_2indep``), so at the
    margin it can disagree with the pooled test. The lift interval is the delta method:
    var(lift) ≈ p_t(1−p_t)/(n_t p_c²) + p_t² p_c(1−p_c)/(n_c p_c⁴).

    With no successes in control the lift is undefined: ``relative=False`` skips it (lift
    and its interval are NaN) instead of raising. When both groups are all failures (or all
    successes) there is no variance: the statistic is 0 and the p-value 1.
    """
    n_c = _count("n_control", n_control, minimum=1)
    n_t = _count("n_treatment", n_treatment, minimum=1)
    s_c = _count("successes_control", successes_control)
    s_t = _count("successes_treatment", successes_treatment)
    if s_c > n_c:
        raise ValueError(f"successes_control ({s_c}) exceeds n_control ({n_c})")
    if s_t > n_t:
        raise ValueError(f"successes_treatment ({s_t}) exceeds n_treatment ({n_t})")
    alpha = _probability("alpha", alpha)
    if relative and s_c == 0:
        raise ValueError(
            "successes_control is 0: the control rate is 0, so the relative lift is "
            "undefined (pass relative=False for the difference alone)"
        )
    p_c, p_t = s_c / n_c, s_t / n_t
    if 0 < s_c + s_t < n_c + n_t:
        statistic, p_value = proportions_ztest(np.array([s_t, s_c]), np.array([n_t, n_c]))
    else:
        statistic, p_value = 0.0, 1.0  # statsmodels would divide 0 by 0
    low, high = confint_proportions_2indep(
        s_t, n_t, s_c, n_c, method="wald", compare="diff", alpha=alpha
    )
    lift, lift_ci = _lift(
        p_c, p_t, p_c * (1 - p_c) / n_c, p_t * (1 - p_t) / n_t, _z(alpha), relative
    )
    return Comparison(
        kind="proportion",
        n_control=n_c,
        n_treatment=n_t,
        control=p_c,
        treatment=p_t,
        difference=p_t - p_c,
        difference_ci=_interval(low, high),
        lift=lift,
        lift_ci=lift_ci,
        p_value=float(p_value),
        statistic=float(statistic),
        alpha=alpha,
    )


def cuped_theta(y: ArrayLike, x: ArrayLike) -> float:
    """CUPED's θ = cov(y, x) / var(x) (Deng, Xu, Kohavi & Walker 2013, eq. 3): the OLS
    slope of the metric on its pre-experiment covariate, which minimises var(y − θx).

    A constant covariate gives 0: with no variation in x every θ adjusts by nothing."""
    y_ = _sample("y", y)
    x_ = _sample("x", x)
    _same_length("x", x_, "y", y_)
    x_centred = x_ - x_.mean()
    var_x = x_centred @ x_centred
    if var_x == 0:
        return 0.0
    return float(x_centred @ (y_ - y_.mean()) / var_x)


def cuped_adjust(
    y: ArrayLike, x: ArrayLike, *, theta: float | None = None, x_mean: float | None = None
) -> np.ndarray:
    """y − θ (x − mean x): the CUPED-adjusted metric (Deng et al. 2013, eq. 2).

    θ defaults to :func:`cuped_theta` of ``(y, x)`` and ``x_mean`` to the mean of ``x``;
    pass both when adjusting one group with values fitted on both, as
    :func:`compare_means` does, so that the two groups are shifted alike and the
    difference stays unbiased."""
    y_ = _sample("y", y)
    x_ = _sample("x", x)
    _same_length("x", x_, "y", y_)
    theta = cuped_theta(y_, x_) if theta is None else _number("theta", theta)
    x_mean = float(x_.mean()) if x_mean is None else _number("x_mean", x_mean)
    return y_ - theta * (x_ - x_mean)


def compare_means(
    control: ArrayLike,
    treatment: ArrayLike,
    *,
    alpha: float = 0.05,
    covariate_control: ArrayLike | None = None,
    covariate_treatment: ArrayLike | None = None,
    relative: bool = True,
) -> Comparison:
    """Compare two means with Welch's t test (statsmodels ``CompareMeans``, unequal
    variances; the interval uses the Welch–Satterthwaite degrees of freedom, reported as
    ``df``). The lift interval is the delta method, var_t/(n_t μ_c²) + μ_t² var_c/(n_c μ_c⁴),
    normal.

    With ``covariate_control`` and ``covariate_treatment`` (each unit's pre-experiment
    value of the metric, say), CUPED (Deng et al. 2013): θ and the covariate's mean are
    pooled over both groups, y_adj = y − θ (x − x̄), and the same Welch test runs on y_adj.
    Then ``control`` is still the unadjusted control mean — the lift's denominator —
    ``difference`` the adjusted difference, ``treatment`` = control + difference, and
    ``variance_reduction`` = 1 − var(adjusted difference) / var(raw difference).

    A zero control mean makes the lift undefined: ``relative=False`` skips it.
    """
    y_c = _sample("control", control)
    y_t = _sample("treatment", treatment)
    alpha = _probability("alpha", alpha)
    if (covariate_control is None) != (covariate_treatment is None):
        raise ValueError("covariate_control and covariate_treatment must be given together")
    n_c, n_t = y_c.size, y_t.size
    mean_c = float(y_c.mean())  # unadjusted: the lift's denominator either way
    if relative and mean_c == 0:
        raise ValueError(
            "control has mean 0, so the relative lift is undefined "
            "(pass relative=False for the difference alone)"
        )
    variance_reduction = None
    if covariate_control is not None and covariate_treatment is not None:
        x_c = _sample("covariate_control", covariate_control)
        x_t = _sample("covariate_treatment", covariate_treatment)
        _same_length("covariate_control", x_c, "control", y_c)
        _same_length("covariate_treatment", x_t, "treatment", y_t)
        raw = y_c.var(ddof=1) / n_c + y_t.var(ddof=1) / n_t
        x = np.concatenate([x_c, x_t])
        theta = cuped_theta(np.concatenate([y_c, y_t]), x)
        x_mean = x.mean()
        y_c = y_c - theta * (x_c - x_mean)
        y_t = y_t - theta * (x_t - x_mean)
        adjusted = y_c.var(ddof=1) / n_c + y_t.var(ddof=1) / n_t
        variance_reduction = float(1 - adjusted / raw) if raw > 0 else 0.0
    var_c, var_t = float(y_c.var(ddof=1)), float(y_t.var(ddof=1))
    difference = float(y_t.mean() - y_c.mean())
    if var_c == 0 and var_t == 0:
        # Both groups constant: statsmodels would return NaN for t, df and the interval.
        statistic, p_value = _z_test(difference, 0.0)
        df, low, high = math.nan, difference, difference
    else:
        # CompareMeans(d1, d2) tests d1 − d2, so treatment goes first.
        means = CompareMeans(DescrStatsW(y_t), DescrStatsW(y_c))
        statistic, p_value, df = means.ttest_ind(usevar="unequal")
        low, high = means.tconfint_diff(alpha=alpha, usevar="unequal")
    treatment_mean = mean_c + difference
    lift, lift_ci = _lift(mean_c, treatment_mean, var_c / n_c, var_t / n_t, _z(alpha), relative)
    return Comparison(
        kind="mean",
        n_control=n_c,
        n_treatment=n_t,
        control=mean_c,
        treatment=treatment_mean,
        difference=difference,
        difference_ci=_interval(low, high),
        lift=lift,
        lift_ci=lift_ci,
        p_value=float(p_value),
        statistic=float(statistic),
        alpha=alpha,
        variance_reduction=variance_reduction,
        df=float(df),
    )


def _ratio(
    numerator: np.ndarray, denominator: np.ndarray, denominator_name: str
) -> tuple[float, float]:
    """sum(num)/sum(den) and its delta-method variance over n units:
    var(R) ≈ (1/n)(var_num/μ_den² − 2 μ_num cov/μ_den³ + μ_num² var_den/μ_den⁴)
    (Deng et al. 2018, "Applying the delta method in metric analytics", eq. 4)."""
    n = numerator.size
    mu_num, mu_den = numerator.mean(), denominator.mean()
    if mu_den == 0:
        raise ValueError(f"{denominator_name} sums to 0, so the ratio is undefined")
    d_num, d_den = numerator - mu_num, denominator - mu_den
    var_num, var_den = d_num @ d_num / (n - 1), d_den @ d_den / (n - 1)
    cov = d_num @ d_den / (n - 1)
    variance = (
        var_num / mu_den**2 - 2 * mu_num * cov / mu_den**3 + mu_num**2 * var_den / mu_den**4
    ) / n
    return float(mu_num / mu_den), max(float(variance), 0.0)  # rounding can dip below 0


def compare_ratios(
    numerator_control: ArrayLike,
    denominator_control: ArrayLike,
    numerator_treatment: ArrayLike,
    denominator_treatment: ArrayLike,
    *,
    alpha: float = 0.05,
    relative: bool = True,
) -> Comparison:
    """Compare a ratio metric whose unit of analysis is not the randomised unit: average
    order value = Σ revenue / Σ orders with people randomised, one array entry per person.

    Each group's R = Σ num / Σ den with the delta-method variance (:func:`_ratio`), a z test
    on R_t − R_c with a normal interval, and the lift R_t/R_c − 1 by the delta method.
    A control ratio of 0 makes the lift undefined: ``relative=False`` skips it.
    """
    num_c = _sample("numerator_control", numerator_control)
    den_c = _sample("denominator_control", denominator_control)
    num_t = _sample("numerator_treatment", numerator_treatment)
    den_t = _sample("denominator_treatment", denominator_treatment)
    _same_length("denominator_control", den_c, "numerator_control", num_c)
    _same_length("denominator_treatment", den_t, "numerator_treatment", num_t)
    alpha = _probability("alpha", alpha)
    ratio_c, var_c = _ratio(num_c, den_c, "denominator_control")
    ratio_t, var_t = _ratio(num_t, den_t, "denominator_treatment")
    if relative and ratio_c == 0:
        raise ValueError(
            "numerator_control sums to 0, so the relative lift is undefined "
            "(pass relative=False for the difference alone)"
        )
    difference = ratio_t - ratio_c
    standard_error = math.sqrt(var_c + var_t)
    statistic, p_value = _z_test(difference, standard_error)
    z = _z(alpha)
    lift, lift_ci = _lift(ratio_c, ratio_t, var_c, var_t, z, relative)
    return Comparison(
        kind="ratio",
        n_control=num_c.size,
        n_treatment=num_t.size,
        control=ratio_c,
        treatment=ratio_t,
        difference=difference,
        difference_ci=(difference - z * standard_error, difference + z * standard_error),
        lift=lift,
        lift_ci=lift_ci,
        p_value=p_value,
        statistic=statistic,
        alpha=alpha,
    )


# --------------------------------------------------------------------------- health


def sample_ratio_mismatch(
    counts: Sequence[int], weights: Sequence[float], *, threshold: float = SRM_THRESHOLD
) -> SampleRatio:
    """Whether the people counted per variation fit the configured weights: a chi-square
    goodness-of-fit test (scipy ``chisquare``) against counts ∝ weights (normalised here).
    A mismatch (p < ``threshold``) means assignment or logging is broken and the
    experiment's results should not be trusted."""
    observed = tuple(_count(f"counts[{i}]", count) for i, count in enumerate(counts))
    if len(observed) < 2:
        raise ValueError(f"counts needs at least 2 variations, got {len(observed)}")
    shares = _sample("weights", weights)
    _same_length("weights", shares, "counts", np.asarray(observed))
    if (shares <= 0).any():
        raise ValueError("weights must all be positive")
    threshold = _probability("threshold", threshold)
    total = sum(observed)
    if total == 0:
        raise ValueError("counts are all 0: nothing to check")
    expected = total * shares / shares.sum()
    statistic, p_value = chisquare(np.asarray(observed, dtype=float), expected)
    return SampleRatio(
        observed=observed,
        expected=tuple(float(value) for value in expected),
        statistic=float(statistic),
        p_value=float(p_value),
        mismatch=bool(p_value < threshold),
        threshold=threshold,
    )


def adjust_p_values(p_values: ArrayLike, method: Literal["holm", "bh"] = "holm") -> np.ndarray:
    """p-values adjusted for testing many metrics or variations at once (statsmodels
    ``multipletests``): ``"holm"`` controls the family-wise error rate, ``"bh"``
    (Benjamini–Hochberg) the false discovery rate. Same order as given."""
    methods = {"holm": "holm", "bh": "fdr_bh"}
    if method not in methods:
        raise ValueError(f"method must be 'holm' or 'bh', got {method!r}")
    p = _sample("p_values", p_values, minimum=0)
    if ((p < 0) | (p > 1)).any():
        raise ValueError("p_values must all be in [0, 1]")
    if p.size == 0:
        return p
    return multipletests(p, method=methods[method])[1]


# --------------------------------------------------------------------------- sequential


def default_tau2(minimum_detectable_effect_abs: float) -> float:
    """The mixture variance τ² = MDE²: the normal mixture over effects is spread at the
    size of effect one hopes to detect, which is where the mSPRT is most powerful (Johari
    et al. 2017, §4.2: τ² matched to the anticipated effect). Same units as the difference
    (absolute, not relative)."""
    mde = _number("minimum_detectable_effect_abs", minimum_detectable_effect_abs)
    if mde == 0:
        raise ValueError("minimum_detectable_effect_abs must not be 0")
    return mde**2


def msprt_path(
    differences: ArrayLike,
    variances: ArrayLike,
    *,
    tau2: float,
    alpha: float = 0.05,
) -> SequentialPath:
    """The mixture sequential probability ratio test at every look.

    ``differences[..., k]`` is the estimated difference at look k (cumulative data) and
    ``variances[..., k]`` its variance; 1-D is one experiment's looks, 2-D is simulations ×
    looks (``variances`` broadcasts, e.g. one row of variances for every simulation).

    For H0: difference = 0 against a N(0, τ²) mixture of alternatives (Robbins 1970;
    Johari, Pekelis & Walsh 2017, "Always valid inference", eq. 11):
    Λ = sqrt(v/(v+τ²)) · exp(τ² d² / (2 v (v+τ²))). The always-valid p-value is
    p_k = min(1, p_{k−1}, 1/Λ_k), and the per-look interval
    d ± sqrt(v (v+τ²)/τ² · (log((v+τ²)/v) − 2 log α)) is the set of effects θ whose Λ(d − θ)
    stays below 1/α (Howard et al. 2021, normal mixture boundary). ``lower``/``upper`` are
    the running intersection of those intervals, the confidence sequence that matches the
    running-minimum p (0 is outside it exactly when ``rejected``); it can be empty (lower
    > upper), which happens with probability ≤ α under the model.
    """
    d = np.asarray(differences, dtype=float)
    if d.ndim not in (1, 2) or d.shape[-1] == 0:
        raise ValueError(
            f"differences must be 1-D (looks) or 2-D (simulations × looks), got shape {d.shape}"
        )
    if not np.isfinite(d).all():
        raise ValueError("differences contains NaN or infinite values")
    v = np.asarray(variances, dtype=float)
    try:
        v = np.broadcast_to(v, d.shape)
    except ValueError:
        raise ValueError(
            f"variances has shape {v.shape}, which does not fit differences' {d.shape}"
        ) from None
    if not (np.isfinite(v) & (v > 0)).all():
        raise ValueError("variances must all be positive and finite")
    tau2 = _number("tau2", tau2)
    if tau2 <= 0:
        raise ValueError(f"tau2 must be positive, got {tau2}")
    alpha = _probability("alpha", alpha)

    spread = v + tau2
    # In logs: Λ overflows a float for a large d²/v long before its reciprocal underflows.
    log_lr = 0.5 * np.log(v / spread) + tau2 * d * d / (2 * v * spread)
    with np.errstate(over="ignore"):
        likelihood_ratio = np.exp(log_lr)
    p_value = np.minimum.accumulate(np.minimum(1.0, np.exp(-log_lr)), axis=-1)
    half = np.sqrt(v * spread / tau2 * (np.log(spread / v) - 2 * math.log(alpha)))
    lower = np.maximum.accumulate(d - half, axis=-1)
    upper = np.minimum.accumulate(d + half, axis=-1)
    rejected = p_value <= alpha
    if rejected.ndim == 1:
        first: int | np.ndarray | None = int(rejected.argmax()) if rejected.any() else None
    else:
        first = np.where(rejected.any(axis=-1), rejected.argmax(axis=-1), -1)
        first.setflags(write=False)
    for array in (likelihood_ratio, p_value, lower, upper, rejected):
        array.setflags(write=False)
    return SequentialPath(
        likelihood_ratio=likelihood_ratio,
        p_value=p_value,
        lower=lower,
        upper=upper,
        rejected=rejected,
        first_rejection=first,
        tau2=tau2,
        alpha=alpha,
    )


def msprt(
    difference: ArrayLike, variance: ArrayLike, *, tau2: float, alpha: float = 0.05
) -> Sequential:
    """The mixture SPRT (:func:`msprt_path`) at the latest look. ``difference`` and
    ``variance`` are one look's numbers, or 1-D sequences of every look so far, so that the
    p-value is the running minimum and the interval the running intersection over them."""
    d = np.atleast_1d(np.asarray(difference, dtype=float))
    if d.ndim != 1:
        raise ValueError(f"difference must be a number or 1-D looks, got shape {d.shape}")
    path = msprt_path(d, variance, tau2=tau2, alpha=alpha)
    return Sequential(
        likelihood_ratio=float(path.likelihood_ratio[-1]),
        p_value=float(path.p_value[-1]),
        ci=(float(path.lower[-1]), float(path.upper[-1])),
        rejected=bool(path.rejected[-1]),
        tau2=path.tau2,
        alpha=path.alpha,
    )


# --------------------------------------------------------------------------- Bayesian


def bayesian(difference: float, standard_error: float, *, alpha: float = 0.05) -> Bayesian:
    """Chance to win and expected loss with the difference's posterior N(d, se²) (a flat
    prior and the normal approximation, as GrowthBook's engine uses):
    chance_to_win = Φ(d/se); expected loss of shipping treatment = E[max(0, −X)] =
    se·φ(d/se) − d·Φ(−d/se) (the normal partial expectation); interval d ± z_{1−α/2} se."""
    d = _number("difference", difference)
    se = _number("standard_error", standard_error)
    if se <= 0:
        raise ValueError(f"standard_error must be positive, got {se}")
    alpha = _probability("alpha", alpha)
    z = d / se
    density = math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    half = _z(alpha) * se
    return Bayesian(
        chance_to_win=float(special.ndtr(z)),
        expected_loss=float(se * density - d * special.ndtr(-z)),
        credible_interval=(d - half, d + half),
    )


# --------------------------------------------------------------------------- power


def _effect_proportions(baseline: float, relative_lift: float) -> float:
    """Cohen's h between baseline × (1 + lift) and the baseline (statsmodels
    ``proportion_effectsize``: 2 asin √p₁ − 2 asin √p₂)."""
    baseline = _probability("baseline", baseline)
    lift = _number("relative_lift", relative_lift)
    treated = baseline * (1 + lift)
    if not 0 < treated < 1:
        raise ValueError(
            f"relative_lift {lift} puts the treatment rate at {treated}, outside (0, 1)"
        )
    return float(proportion_effectsize(treated, baseline))


def _power(effect: float, n_per_group: int, alpha: float) -> float:
    return float(
        _POWER.power(
            effect_size=effect, nobs1=n_per_group, alpha=alpha, ratio=1.0, alternative="two-sided"
        )
    )


def _sample_size(effect: float, power: float, alpha: float) -> int:
    """The smallest n per group with power ≥ ``power``: statsmodels' solution, rounded up
    and then checked against the power function itself so that the contract holds at the
    rounding edge (and where the solver fails to converge, for very large effects)."""
    effect = abs(effect)
    with warnings.catch_warnings(), np.errstate(invalid="ignore"):
        warnings.simplefilter("ignore")
        solved = _POWER.solve_power(
            effect_size=effect, nobs1=None, alpha=alpha, power=power, ratio=1.0
        )
    solved = float(np.squeeze(solved))
    if not (math.isfinite(solved) and solved > 0):
        # The one-tail approximation, n = 2 ((z_{α/2} + z_β) / h)², never too small.
        solved = 2 * ((_z(alpha) + special.ndtri(power)) / effect) ** 2
    n = max(1, math.ceil(solved))
    while _power(effect, n, alpha) < power:
        n += 1
    while n > 1 and _power(effect, n - 1, alpha) >= power:
        n -= 1
    return n


def _power_target(power: float, alpha: float) -> float:
    power = _probability("power", power)
    if power <= alpha:
        raise ValueError(f"power must exceed alpha ({alpha}), got {power}")
    return power


def power_proportions(
    baseline: float, relative_lift: float, n_per_group: int, *, alpha: float = 0.05
) -> float:
    """Power of the two-sided two-proportion test to detect ``baseline`` → ``baseline ×
    (1 + relative_lift)`` with ``n_per_group`` in each group: statsmodels
    ``NormalIndPower`` on Cohen's h (``proportion_effectsize``), normal approximation."""
    effect = _effect_proportions(baseline, relative_lift)
    n = _count("n_per_group", n_per_group, minimum=1)
    return _power(effect, n, _probability("alpha", alpha))


def sample_size_proportions(
    baseline: float, relative_lift: float, *, power: float = 0.8, alpha: float = 0.05
) -> int:
    """People per group for the two-sided two-proportion test to reach ``power``
    (statsmodels ``NormalIndPower`` on Cohen's h), rounded up."""
    effect = _effect_proportions(baseline, relative_lift)
    if effect == 0:
        raise ValueError("relative_lift must not be 0: no sample detects no effect")
    alpha = _probability("alpha", alpha)
    return _sample_size(effect, _power_target(power, alpha), alpha)


def _effect_means(difference: float, sd: float) -> float:
    """Cohen's d = difference / sd."""
    difference = _number("difference", difference)
    sd = _number("sd", sd)
    if sd <= 0:
        raise ValueError(f"sd must be positive, got {sd}")
    return difference / sd


def power_means(difference: float, sd: float, n_per_group: int, *, alpha: float = 0.05) -> float:
    """Power of the two-sided two-sample test of means to detect ``difference`` when each
    group's standard deviation is ``sd``: statsmodels ``NormalIndPower`` with effect size
    d = difference / sd (normal approximation)."""
    effect = _effect_means(difference, sd)
    n = _count("n_per_group", n_per_group, minimum=1)
    return _power(effect, n, _probability("alpha", alpha))


def sample_size_means(
    difference: float, sd: float, *, power: float = 0.8, alpha: float = 0.05
) -> int:
    """Units per group for the two-sided two-sample test of means to reach ``power``
    (statsmodels ``NormalIndPower``, d = difference / sd), rounded up."""
    effect = _effect_means(difference, sd)
    if effect == 0:
        raise ValueError("difference must not be 0: no sample detects no effect")
    alpha = _probability("alpha", alpha)
    return _sample_size(effect, _power_target(power, alpha), alpha)
