"""The experiments' statistics engine against independent computations: every figure is
recomputed here with statsmodels or scipy (or from the textbook formula), checked against
published reference values where they exist (R's Welch test on the ``sleep`` data), and
the approximations (delta-method lifts, CUPED, mSPRT, the Bayesian summaries) are checked
by seeded simulation."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from scipy import optimize
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    proportion_effectsize,
    proportions_ztest,
)
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

from bespoke.experiments import stats

TOL = 1e-6

# R: t.test(extra ~ group, data = sleep)
SLEEP_1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
SLEEP_2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]


def _lift_interval(c: float, t: float, var_c: float, var_t: float, alpha: float) -> np.ndarray:
    """The delta-method interval for t/c − 1, written out from the formula."""
    lift = t / c - 1
    se = math.sqrt(var_t / c**2 + t**2 * var_c / c**4)
    return lift + np.array([-1, 1]) * sps.norm.ppf(1 - alpha / 2) * se


# --------------------------------------------------------------------------- proportions


@pytest.mark.parametrize(
    ("s_c", "n_c", "s_t", "n_t", "alpha"),
    [(100, 1000, 120, 1000, 0.05), (37, 420, 25, 390, 0.1), (5000, 100000, 5210, 99000, 0.01)],
)
def test_proportions_equal_statsmodels(s_c: int, n_c: int, s_t: int, n_t: int, alpha: float):
    result = stats.compare_proportions(s_c, n_c, s_t, n_t, alpha=alpha)
    z, p = proportions_ztest([s_t, s_c], [n_t, n_c])
    low, high = confint_proportions_2indep(s_t, n_t, s_c, n_c, method="wald", alpha=alpha)
    p_c, p_t = s_c / n_c, s_t / n_t
    assert result.kind == "proportion"
    assert (result.n_control, result.n_treatment) == (n_c, n_t)
    assert result.control == pytest.approx(p_c, abs=TOL)
    assert result.treatment == pytest.approx(p_t, abs=TOL)
    assert result.difference == pytest.approx(p_t - p_c, abs=TOL)
    assert result.statistic == pytest.approx(z, abs=TOL)
    assert result.p_value == pytest.approx(p, abs=TOL)
    np.testing.assert_allclose(result.difference_ci, (low, high), atol=TOL)
    assert result.lift == pytest.approx(p_t / p_c - 1, abs=TOL)
    expected = _lift_interval(p_c, p_t, p_c * (1 - p_c) / n_c, p_t * (1 - p_t) / n_t, alpha)
    np.testing.assert_allclose(result.lift_ci, expected, atol=TOL)
    assert result.alpha == alpha and result.variance_reduction is None


def test_z_test_is_the_uncorrected_chi_square() -> None:
    for s_c, n_c, s_t, n_t in [(100, 1000, 120, 1000), (12, 80, 3, 95), (480, 5000, 455, 5100)]:
        result = stats.compare_proportions(s_c, n_c, s_t, n_t)
        table = [[s_c, n_c - s_c], [s_t, n_t - s_t]]
        chi2, p, _, _ = sps.chi2_contingency(table, correction=False)
        assert result.statistic**2 == pytest.approx(chi2, abs=TOL)
        assert result.p_value == pytest.approx(p, abs=TOL)


def test_proportions_without_any_variance_and_without_a_lift() -> None:
    result = stats.compare_proportions(0, 100, 0, 120, relative=False)
    assert (result.statistic, result.p_value, result.difference_ci) == (0.0, 1.0, (0.0, 0.0))
    assert math.isnan(result.lift)
    assert json.loads(json.dumps(result.as_dict(), allow_nan=False))["lift_ci"] == [None, None]
    with pytest.raises(ValueError, match="successes_control"):
        stats.compare_proportions(0, 100, 3, 120)


def test_lift_intervals_cover_the_true_lift() -> None:
    """Delta-method intervals cover the true relative lift in ~95% of experiments:
    proportions, skewed means and ratio metrics, 2,000 seeded experiments each."""
    rng = np.random.default_rng(2024)
    runs = 2000
    # Proportions: 10% → 11% with 20,000 people a group.
    p_c, p_t, n = 0.10, 0.11, 20_000
    s_c, s_t = rng.binomial(n, p_c, runs), rng.binomial(n, p_t, runs)
    covered = [
        lo <= p_t / p_c - 1 <= hi
        for lo, hi in (
            stats.compare_proportions(a, n, b, n).lift_ci for a, b in zip(s_c, s_t, strict=True)
        )
    ]
    assert np.mean(covered) == pytest.approx(0.95, abs=0.02)
    # Skewed (exponential) means: 2.0 → 2.2, 1,000 a group.
    covered = []
    for _ in range(runs):
        result = stats.compare_means(rng.exponential(2.0, 1000), rng.exponential(2.2, 1000))
        covered.append(result.lift_ci[0] <= 0.1 <= result.lift_ci[1])
    assert np.mean(covered) == pytest.approx(0.95, abs=0.02)
    # Ratios: orders per person 1 + Poisson(1), order value per person Gamma; the true
    # ratio is the mean order value (2.0 → 2.1), so the true lift is 0.05.
    lift_covered, difference_covered = [], []
    for _ in range(runs):
        den_c, den_t = 1 + rng.poisson(1.0, 500), 1 + rng.poisson(1.0, 500)
        num_c = den_c * rng.gamma(2.0, 1.0, 500)
        num_t = den_t * rng.gamma(2.0, 1.05, 500)
        result = stats.compare_ratios(num_c, den_c, num_t, den_t)
        lift_covered.append(result.lift_ci[0] <= 0.05 <= result.lift_ci[1])
        difference_covered.append(result.difference_ci[0] <= 0.1 <= result.difference_ci[1])
    assert np.mean(lift_covered) == pytest.approx(0.95, abs=0.02)
    assert np.mean(difference_covered) == pytest.approx(0.95, abs=0.02)


# --------------------------------------------------------------------------- means


def test_welch_equals_r_on_the_sleep_data() -> None:
    # R's difference is group 1 − group 2: group 1 is our treatment.
    result = stats.compare_means(SLEEP_2, SLEEP_1)
    assert round(result.statistic, 4) == -1.8608
    assert round(result.df, 3) == 17.776
    assert round(result.p_value, 5) == 0.07939
    assert [round(bound, 7) for bound in result.difference_ci] == [-3.3654832, 0.2054832]
    assert result.difference == pytest.approx(0.75 - 2.33, abs=1e-12)
    # The other way round, the signs flip.
    swapped = stats.compare_means(SLEEP_1, SLEEP_2)
    assert round(swapped.statistic, 4) == 1.8608
    assert [round(bound, 7) for bound in swapped.difference_ci] == [-0.2054832, 3.3654832]


@pytest.mark.parametrize("alpha", [0.05, 0.1])
def test_means_equal_scipy_and_statsmodels(alpha: float) -> None:
    rng = np.random.default_rng(11)
    control, treatment = rng.lognormal(1.0, 0.8, 300), rng.lognormal(1.1, 0.9, 250)
    result = stats.compare_means(control, treatment, alpha=alpha)
    welch = sps.ttest_ind(treatment, control, equal_var=False)
    interval = welch.confidence_interval(1 - alpha)
    assert result.kind == "mean"
    assert result.statistic == pytest.approx(welch.statistic, abs=TOL)
    assert result.p_value == pytest.approx(welch.pvalue, abs=TOL)
    assert result.df == pytest.approx(welch.df, abs=TOL)
    np.testing.assert_allclose(result.difference_ci, (interval.low, interval.high), atol=TOL)
    c, t = control.mean(), treatment.mean()
    assert (result.control, result.treatment) == pytest.approx((c, t), abs=TOL)
    assert result.lift == pytest.approx(t / c - 1, abs=TOL)
    expected = _lift_interval(c, t, control.var(ddof=1) / 300, treatment.var(ddof=1) / 250, alpha)
    np.testing.assert_allclose(result.lift_ci, expected, atol=TOL)


def test_constant_groups_and_a_zero_control_mean() -> None:
    same = stats.compare_means([1.0, 1.0], [1.0, 1.0])
    assert (same.statistic, same.p_value, same.difference_ci) == (0.0, 1.0, (0.0, 0.0))
    apart = stats.compare_means([1.0, 1.0], [2.0, 2.0])
    assert (apart.statistic, apart.p_value) == (math.inf, 0.0)
    assert apart.as_dict()["statistic"] is None and apart.as_dict()["df"] is None
    with pytest.raises(ValueError, match="control has mean 0"):
        stats.compare_means([-1.0, 1.0], [2.0, 3.0])
    assert math.isnan(stats.compare_means([-1.0, 1.0], [2.0, 3.0], relative=False).lift)


# --------------------------------------------------------------------------- CUPED


def _correlated(rng: np.random.Generator, n: int, rho: float, effect: float = 0.0):
    """y with correlation rho to its covariate x (both unit variance), plus an effect."""
    x = rng.normal(size=n)
    y = 5 + rho * x + math.sqrt(1 - rho**2) * rng.normal(size=n) + effect
    return y, x


def test_cuped_theta_is_the_ols_slope_and_adjusts_as_documented() -> None:
    rng = np.random.default_rng(5)
    y, x = _correlated(rng, 1000, 0.6)
    assert stats.cuped_theta(y, x) == pytest.approx(sps.linregress(x, y).slope, abs=TOL)
    theta = stats.cuped_theta(y, x)
    np.testing.assert_allclose(stats.cuped_adjust(y, x), y - theta * (x - x.mean()), atol=TOL)
    np.testing.assert_allclose(
        stats.cuped_adjust(y, x, theta=0.5, x_mean=1.0), y - 0.5 * (x - 1.0), atol=TOL
    )
    assert stats.cuped_theta(y, np.full_like(y, 3.0)) == 0.0  # nothing to adjust by


def test_cuped_is_welch_on_the_pooled_adjustment() -> None:
    rng = np.random.default_rng(6)
    (y_c, x_c), (y_t, x_t) = _correlated(rng, 800, 0.7), _correlated(rng, 900, 0.7, 0.1)
    result = stats.compare_means(y_c, y_t, covariate_control=x_c, covariate_treatment=x_t)
    x = np.concatenate([x_c, x_t])
    theta = sps.linregress(x, np.concatenate([y_c, y_t])).slope
    adj_c, adj_t = y_c - theta * (x_c - x.mean()), y_t - theta * (x_t - x.mean())
    welch = sps.ttest_ind(adj_t, adj_c, equal_var=False)
    interval = welch.confidence_interval()
    assert result.statistic == pytest.approx(welch.statistic, abs=TOL)
    assert result.p_value == pytest.approx(welch.pvalue, abs=TOL)
    np.testing.assert_allclose(result.difference_ci, (interval.low, interval.high), atol=TOL)
    # The lift's denominator is the unadjusted control mean.
    assert result.control == pytest.approx(y_c.mean(), abs=TOL)
    assert result.difference == pytest.approx(adj_t.mean() - adj_c.mean(), abs=TOL)
    assert result.lift == pytest.approx(result.difference / y_c.mean(), abs=TOL)
    raw = y_c.var(ddof=1) / 800 + y_t.var(ddof=1) / 900
    adjusted = adj_c.var(ddof=1) / 800 + adj_t.var(ddof=1) / 900
    assert result.variance_reduction == pytest.approx(1 - adjusted / raw, abs=TOL)


def test_cuped_reduces_variance_by_rho_squared_without_bias() -> None:
    rng = np.random.default_rng(7)
    rho, effect = 0.8, 0.05
    (y_c, x_c), (y_t, x_t) = _correlated(rng, 20_000, rho), _correlated(rng, 20_000, rho, effect)
    result = stats.compare_means(y_c, y_t, covariate_control=x_c, covariate_treatment=x_t)
    assert result.variance_reduction == pytest.approx(rho**2, abs=0.02)
    # Unbiased, and the spread of the estimates shrinks by sqrt(1 − ρ²), over 500 experiments.
    raw, adjusted = [], []
    for _ in range(500):
        (y_c, x_c), (y_t, x_t) = _correlated(rng, 400, rho), _correlated(rng, 400, rho, effect)
        raw.append(stats.compare_means(y_c, y_t).difference)
        adjusted.append(
            stats.compare_means(y_c, y_t, covariate_control=x_c, covariate_treatment=x_t).difference
        )
    standard_error = np.std(adjusted) / math.sqrt(len(adjusted))
    assert abs(np.mean(adjusted) - effect) < 4 * standard_error
    assert np.var(adjusted) / np.var(raw) == pytest.approx(1 - rho**2, abs=0.06)


# --------------------------------------------------------------------------- ratios


def test_ratio_with_unit_denominators_is_the_z_test_of_means() -> None:
    """With every denominator 1 the ratio is the mean and the delta method reduces to
    var/n: statsmodels' unequal-variance z test."""
    rng = np.random.default_rng(8)
    num_c, num_t = rng.gamma(2.0, 3.0, 400), rng.gamma(2.2, 3.0, 350)
    result = stats.compare_ratios(num_c, np.ones(400), num_t, np.ones(350), alpha=0.1)
    means = CompareMeans(DescrStatsW(num_t), DescrStatsW(num_c))
    z, p = means.ztest_ind(usevar="unequal")
    assert result.kind == "ratio"
    assert result.statistic == pytest.approx(z, abs=TOL)
    assert result.p_value == pytest.approx(p, abs=TOL)
    np.testing.assert_allclose(
        result.difference_ci, means.zconfint_diff(alpha=0.1, usevar="unequal"), atol=TOL
    )


def test_ratio_variance_is_the_delta_method() -> None:
    rng = np.random.default_rng(9)
    den_c, den_t = 1 + rng.poisson(2, 300), 1 + rng.poisson(2, 300)
    num_c, num_t = den_c * rng.gamma(3, 1, 300), den_t * rng.gamma(3, 1.1, 300)
    result = stats.compare_ratios(num_c, den_c, num_t, den_t)

    def ratio_and_variance(num: np.ndarray, den: np.ndarray) -> tuple[float, float]:
        (var_n, cov), (_, var_d) = np.cov(num, den)
        m_n, m_d = num.mean(), den.mean()
        variance = var_n / m_d**2 - 2 * m_n * cov / m_d**3 + m_n**2 * var_d / m_d**4
        return m_n / m_d, variance / num.size

    (r_c, v_c), (r_t, v_t) = ratio_and_variance(num_c, den_c), ratio_and_variance(num_t, den_t)
    assert (result.control, result.treatment) == pytest.approx((r_c, r_t), abs=TOL)
    z = (r_t - r_c) / math.sqrt(v_c + v_t)
    assert result.statistic == pytest.approx(z, abs=TOL)
    assert result.p_value == pytest.approx(2 * sps.norm.sf(abs(z)), abs=TOL)
    np.testing.assert_allclose(result.lift_ci, _lift_interval(r_c, r_t, v_c, v_t, 0.05), atol=TOL)


# --------------------------------------------------------------------------- SRM


def test_sample_ratio_mismatch_equals_scipy() -> None:
    result = stats.sample_ratio_mismatch([5100, 2400, 2600], [50, 25, 25])
    statistic, p = sps.chisquare([5100, 2400, 2600], [5050, 2525, 2525])
    assert result.statistic == pytest.approx(statistic, abs=TOL)
    assert result.p_value == pytest.approx(p, abs=TOL)
    assert result.expected == pytest.approx((5050, 2525, 2525), abs=TOL)
    assert result.observed == (5100, 2400, 2600)
    assert result.mismatch == (p < 0.001) and result.threshold == 0.001


def test_sample_ratio_mismatch_flags_a_half_percent_skew_at_200k() -> None:
    skewed = stats.sample_ratio_mismatch([101_000, 99_000], [0.5, 0.5])
    assert skewed.mismatch and skewed.p_value < 1e-5
    even = stats.sample_ratio_mismatch([100_000, 100_000], [0.5, 0.5])
    assert not even.mismatch and even.p_value == pytest.approx(1.0)
    # Weights are normalised, and the threshold is the caller's.
    assert stats.sample_ratio_mismatch([101_000, 99_000], [1, 1]) == skewed
    assert not stats.sample_ratio_mismatch([101_000, 99_000], [1, 1], threshold=1e-6).mismatch


# --------------------------------------------------------------------------- many tests


@pytest.mark.parametrize(("method", "reference"), [("holm", "holm"), ("bh", "fdr_bh")])
def test_adjusted_p_values_equal_multipletests(method: str, reference: str) -> None:
    p = np.random.default_rng(10).uniform(0, 0.2, 25)
    adjusted = stats.adjust_p_values(p, method)  # type: ignore[arg-type]
    np.testing.assert_allclose(adjusted, multipletests(p, method=reference)[1], atol=TOL)
    assert stats.adjust_p_values([], method).size == 0  # type: ignore[arg-type]


# --------------------------------------------------------------------------- mSPRT


def test_msprt_likelihood_ratio_and_p_value_are_the_closed_form() -> None:
    d = np.array([0.3, -0.1, 0.8, 0.05, 1.2])
    v = np.array([0.5, 0.3, 0.2, 0.1, 0.05])
    tau2 = 0.25
    path = stats.msprt_path(d, v, tau2=tau2)
    closed = np.sqrt(v / (v + tau2)) * np.exp(tau2 * d**2 / (2 * v * (v + tau2)))
    np.testing.assert_allclose(path.likelihood_ratio, closed, rtol=1e-10)
    expected_p = np.minimum.accumulate(np.minimum(1, 1 / closed))
    np.testing.assert_allclose(path.p_value, expected_p, rtol=1e-10)
    np.testing.assert_array_equal(path.rejected, expected_p <= 0.05)
    assert path.first_rejection == int(np.argmax(expected_p <= 0.05))
    single = stats.msprt(d, v, tau2=tau2)
    assert single.likelihood_ratio == pytest.approx(closed[-1], rel=1e-10)
    assert single.p_value == pytest.approx(expected_p[-1], rel=1e-10)
    assert single.ci == (path.lower[-1], path.upper[-1])
    assert not path.likelihood_ratio.flags.writeable


def test_msprt_confidence_interval_is_the_effects_not_rejected() -> None:
    d, v, tau2, alpha = 0.4, 0.03, 0.05, 0.05
    result = stats.msprt(d, v, tau2=tau2, alpha=alpha)

    def log_lr_minus_bound(theta: float) -> float:
        shifted = d - theta
        lr = math.sqrt(v / (v + tau2)) * math.exp(tau2 * shifted**2 / (2 * v * (v + tau2)))
        return math.log(lr) - math.log(1 / alpha)

    low = optimize.brentq(log_lr_minus_bound, d - 2, d, xtol=1e-14)
    high = optimize.brentq(log_lr_minus_bound, d, d + 2, xtol=1e-14)
    np.testing.assert_allclose(result.ci, (low, high), atol=1e-9)
    assert result.rejected == (not low < 0 < high)
    # One look on its own: the interval is d ± the half-width, exactly.
    half = math.sqrt(v * (v + tau2) / tau2 * (math.log((v + tau2) / v) - 2 * math.log(alpha)))
    np.testing.assert_allclose(result.ci, (d - half, d + half), atol=TOL)


def test_msprt_under_the_null_keeps_alpha_where_peeking_does_not() -> None:
    rng = np.random.default_rng(12)
    sims, looks, per_look, alpha = 2000, 20, 100, 0.05
    n = per_look * np.arange(1, looks + 1)
    # Cumulative means of N(0, 1) data in each group, from the per-look sums.
    sums = rng.normal(0, math.sqrt(per_look), (2, sims, looks)).cumsum(axis=-1)
    differences = (sums[1] - sums[0]) / n
    variances = 2 / n
    tau2 = stats.default_tau2(2.8 * math.sqrt(variances[-1]))
    path = stats.msprt_path(differences, variances, tau2=tau2, alpha=alpha)
    assert path.p_value.shape == (sims, looks)
    assert (np.diff(path.p_value, axis=-1) <= 0).all()  # never rises
    assert path.rejected.any(axis=-1).mean() <= alpha
    naive = (np.abs(differences / np.sqrt(variances)) > sps.norm.ppf(1 - alpha / 2)).any(axis=-1)
    assert naive.mean() > 0.1
    # Rejected exactly when 0 has left the confidence sequence; rows equal one path alone.
    np.testing.assert_array_equal(path.rejected, (path.lower > 0) | (path.upper < 0))
    first = path.first_rejection
    assert isinstance(first, np.ndarray) and first.shape == (sims,)
    for row in [*np.flatnonzero(first >= 0)[:5].tolist(), int(np.argmin(first))]:
        alone = stats.msprt_path(differences[row], variances, tau2=tau2, alpha=alpha)
        np.testing.assert_array_equal(alone.p_value, path.p_value[row])
        assert (alone.first_rejection if alone.first_rejection is not None else -1) == first[row]
    # With a real effect (4 final standard errors), it mostly rejects by the last look.
    effect = 4 * math.sqrt(variances[-1])
    alternative = stats.msprt_path(differences + effect, variances, tau2=tau2, alpha=alpha)
    assert alternative.rejected[:, -1].mean() > 0.8


def test_default_tau2_is_the_squared_effect() -> None:
    assert stats.default_tau2(0.02) == pytest.approx(0.0004)
    assert stats.default_tau2(-0.02) == pytest.approx(0.0004)


# --------------------------------------------------------------------------- Bayesian


@pytest.mark.parametrize(("d", "se"), [(0.1, 0.05), (-0.02, 0.03), (0.0, 1.0)])
def test_bayesian_equals_the_normal_formulas_and_monte_carlo(d: float, se: float) -> None:
    result = stats.bayesian(d, se, alpha=0.1)
    assert result.chance_to_win == pytest.approx(sps.norm.cdf(d / se), abs=TOL)
    loss = se * sps.norm.pdf(d / se) - d * sps.norm.cdf(-d / se)
    assert result.expected_loss == pytest.approx(loss, abs=TOL)
    np.testing.assert_allclose(result.credible_interval, sps.norm.interval(0.9, d, se), atol=TOL)
    draws = np.random.default_rng(13).normal(d, se, 200_000)
    assert result.chance_to_win == pytest.approx((draws > 0).mean(), abs=0.01)
    assert result.expected_loss == pytest.approx(np.maximum(0, -draws).mean(), abs=0.01)


# --------------------------------------------------------------------------- power


@pytest.mark.parametrize(("baseline", "lift", "alpha"), [(0.1, 0.1, 0.05), (0.03, -0.2, 0.1)])
def test_power_and_sample_size_for_proportions(baseline: float, lift: float, alpha: float):
    h = proportion_effectsize(baseline * (1 + lift), baseline)
    power = stats.power_proportions(baseline, lift, 5000, alpha=alpha)
    assert power == pytest.approx(NormalIndPower().power(h, 5000, alpha), abs=TOL)
    n = stats.sample_size_proportions(baseline, lift, power=0.8, alpha=alpha)
    assert n == math.ceil(NormalIndPower().solve_power(h, power=0.8, alpha=alpha))
    assert stats.power_proportions(baseline, lift, n, alpha=alpha) >= 0.8
    assert stats.power_proportions(baseline, lift, n - 1, alpha=alpha) < 0.8


@pytest.mark.parametrize(("difference", "sd", "power"), [(0.5, 1.0, 0.8), (-2.0, 10.0, 0.9)])
def test_power_and_sample_size_for_means(difference: float, sd: float, power: float):
    assert stats.power_means(difference, sd, 100) == pytest.approx(
        NormalIndPower().power(difference / sd, 100, 0.05), abs=TOL
    )
    n = stats.sample_size_means(difference, sd, power=power)
    assert stats.power_means(difference, sd, n) >= power > stats.power_means(difference, sd, n - 1)
    # The textbook normal approximation, n = 2 (z_{α/2} + z_β)² / d².
    textbook = 2 * (sps.norm.ppf(0.975) + sps.norm.ppf(power)) ** 2 / (difference / sd) ** 2
    assert n == math.ceil(textbook)


def test_sample_size_for_a_huge_effect_where_the_solver_gives_up() -> None:
    assert stats.sample_size_means(5.0, 1.0) == 1
    assert stats.power_means(5.0, 1.0, 1) >= 0.8


# --------------------------------------------------------------------------- results


def test_results_are_frozen_and_plain_json() -> None:
    results = [
        stats.compare_proportions(10, 100, 12, 100),
        stats.compare_means([1.0, 2.0, 3.0], [2.0, 3.0, 5.0], covariate_control=[1, 2, 2],
                            covariate_treatment=[1, 2, 4]),
        stats.compare_ratios([1.0, 2.0], [1, 2], [2.0, 2.0], [1, 3]),
        stats.sample_ratio_mismatch([10, 12], [1, 1]),
        stats.msprt(0.1, 0.01, tau2=0.01),
        stats.msprt_path([[0.1, 0.2]], [0.01, 0.005], tau2=0.01),
        stats.bayesian(0.1, 0.1),
    ]  # fmt: skip
    for result in results:
        data = result.as_dict()
        assert json.loads(json.dumps(data, allow_nan=False)) == data
        assert {type(value) for value in data.values()} <= {int, float, bool, str, list, type(None)}
        with pytest.raises(dataclasses.FrozenInstanceError):
            result.alpha = 0.5  # type: ignore[misc, union-attr]


# --------------------------------------------------------------------------- bad input


GOOD = [1.0, 2.0, 3.0]
BAD_INPUT = [
    (lambda: stats.compare_proportions(-1, 100, 5, 100), "successes_control"),
    (lambda: stats.compare_proportions(10, 100, 101, 100), "successes_treatment"),
    (lambda: stats.compare_proportions(10, 0, 5, 100), "n_control"),
    (lambda: stats.compare_proportions(10, 100, 5, -3), "n_treatment"),
    (lambda: stats.compare_proportions(10, 100.5, 5, 100), "n_control"),
    (lambda: stats.compare_proportions(10, 100, 5, 100, alpha=0), "alpha"),
    (lambda: stats.compare_proportions(10, 100, 5, 100, alpha=1.5), "alpha"),
    (lambda: stats.compare_means([1.0], GOOD), "control"),
    (lambda: stats.compare_means(GOOD, [2.0]), "treatment"),
    (lambda: stats.compare_means(GOOD, [1.0, math.nan]), "treatment"),
    (lambda: stats.compare_means([[1.0, 2.0]], GOOD), "control"),
    (lambda: stats.compare_means(GOOD, GOOD, alpha=-0.1), "alpha"),
    (lambda: stats.compare_means(GOOD, GOOD, covariate_control=GOOD), "covariate_treatment"),
    (
        lambda: stats.compare_means(GOOD, GOOD, covariate_control=[1, 2], covariate_treatment=GOOD),
        "covariate_control",
    ),
    (
        lambda: stats.compare_means(GOOD, GOOD, covariate_control=GOOD, covariate_treatment=[1, 2]),
        "covariate_treatment",
    ),
    (lambda: stats.compare_means([0.0, 0.0], GOOD), "control"),
    (lambda: stats.compare_ratios(GOOD, [1, 2], GOOD, GOOD), "denominator_control"),
    (lambda: stats.compare_ratios(GOOD, GOOD, GOOD, [0, 0, 0]), "denominator_treatment"),
    (lambda: stats.compare_ratios([0.0, 0.0], [1, 2], GOOD, GOOD), "numerator_control"),
    (lambda: stats.compare_ratios([1.0], [1.0], GOOD, GOOD), "numerator_control"),
    (lambda: stats.compare_ratios(GOOD, GOOD, GOOD, GOOD, alpha=1), "alpha"),
    (lambda: stats.cuped_theta(GOOD, [1.0, 2.0]), "x"),
    (lambda: stats.cuped_theta([1.0], [1.0]), "y"),
    (lambda: stats.cuped_adjust(GOOD, GOOD, theta=math.inf), "theta"),
    (lambda: stats.sample_ratio_mismatch([100, -1], [1, 1]), "counts"),
    (lambda: stats.sample_ratio_mismatch([100], [1]), "counts"),
    (lambda: stats.sample_ratio_mismatch([0, 0], [1, 1]), "counts"),
    (lambda: stats.sample_ratio_mismatch([100, 100], [1, 1, 1]), "weights"),
    (lambda: stats.sample_ratio_mismatch([100, 100], [1, 0]), "weights"),
    (lambda: stats.sample_ratio_mismatch([100, 100], [1, 1], threshold=0), "threshold"),
    (lambda: stats.msprt_path([0.1, 0.2], [0.1, -0.1], tau2=0.1), "variances"),
    (lambda: stats.msprt_path([0.1, 0.2], [0.1, 0.1, 0.1], tau2=0.1), "variances"),
    (lambda: stats.msprt_path([], [], tau2=0.1), "differences"),
    (lambda: stats.msprt_path(np.zeros((2, 2, 2)), 0.1, tau2=0.1), "differences"),
    (lambda: stats.msprt_path([0.1], [0.1], tau2=0.0), "tau2"),
    (lambda: stats.msprt_path([0.1], [0.1], tau2=0.1, alpha=1.0), "alpha"),
    (lambda: stats.msprt([[0.1]], [[0.1]], tau2=0.1), "difference"),
    (lambda: stats.default_tau2(0.0), "minimum_detectable_effect_abs"),
    (lambda: stats.bayesian(0.1, 0.0), "standard_error"),
    (lambda: stats.bayesian(math.nan, 0.1), "difference"),
    (lambda: stats.bayesian(0.1, 0.1, alpha=2), "alpha"),
    (lambda: stats.adjust_p_values([0.1, 1.2]), "p_values"),
    (lambda: stats.adjust_p_values([0.1], "bonferroni"), "method"),  # type: ignore[arg-type]
    (lambda: stats.power_proportions(1.2, 0.1, 100), "baseline"),
    (lambda: stats.power_proportions(0.5, 1.5, 100), "relative_lift"),
    (lambda: stats.power_proportions(0.1, 0.1, 0), "n_per_group"),
    (lambda: stats.sample_size_proportions(0.1, 0.0), "relative_lift"),
    (lambda: stats.sample_size_proportions(0.1, 0.1, power=1.0), "power"),
    (lambda: stats.sample_size_proportions(0.1, 0.1, power=0.01), "power"),
    (lambda: stats.power_means(1.0, -1.0, 100), "sd"),
    (lambda: stats.sample_size_means(0.0, 1.0), "difference"),
    (lambda: stats.sample_size_means(1.0, 1.0, alpha=0.0), "alpha"),
]


@pytest.mark.parametrize(("call", "argument"), BAD_INPUT)
def test_bad_input_raises_naming_the_argument(call, argument: str) -> None:
    with pytest.raises(ValueError, match=argument):
        call()
