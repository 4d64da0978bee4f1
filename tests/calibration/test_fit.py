"""The fitting primitives on samples drawn with known parameters: the family chosen, the
estimates within their own confidence intervals, least squares with honest errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ragstress.calibration.fit import Interval, fit_distribution, fit_linear, sig
from ragstress.config.distributions import Deterministic, Empirical, Exponential, Gamma, LogNormal

N = 3000


def within(est: Interval, true: float, *, rel: float) -> None:
    """The truth lies within 3 standard errors of the estimate (the 95 % interval is 1.96;
    3 keeps a fixed-seed test from sitting on the edge) and within ``rel`` of it."""
    assert abs(est.value - true) <= 3 * est.se, (est, true)
    assert abs(est.value - true) <= rel * true, (est, true)


def test_lognormal_sample_is_fitted_as_lognormal_with_its_mean_and_cv() -> None:
    true = LogNormal(kind="lognormal", mean=0.02, cv=0.5)
    x = true.draw(np.random.default_rng(1), N)
    fit = fit_distribution(x)
    assert fit.family == "lognormal"
    assert isinstance(fit.distribution, LogNormal)
    within(fit.mean, 0.02, rel=0.03)
    assert fit.cv is not None
    within(fit.cv, 0.5, rel=0.05)
    assert fit.ks_p > 0.01
    # the interval is about what theory says: SE(mean) ≈ mean·cv/√n
    assert fit.mean.se == pytest.approx(0.02 * 0.5 / math.sqrt(N), rel=0.15)
    text = fit.describe()
    for part in ("lognormal, n=3000", "KS D=", "AIC"):
        assert part in text


def test_exponential_sample_is_exponential_or_a_gamma_of_shape_one() -> None:
    x = np.random.default_rng(2).exponential(0.05, N)
    fit = fit_distribution(x)
    assert fit.family in ("exponential", "gamma")
    within(fit.mean, 0.05, rel=0.05)
    if isinstance(fit.distribution, Gamma):
        assert fit.distribution.cv == pytest.approx(1.0, abs=0.05)
    else:
        assert isinstance(fit.distribution, Exponential)


def test_gamma_sample_is_fitted_as_gamma() -> None:
    true = Gamma(kind="gamma", mean=0.01, cv=0.4)
    fit = fit_distribution(true.draw(np.random.default_rng(3), N))
    assert fit.family == "gamma"
    within(fit.mean, 0.01, rel=0.03)
    assert fit.cv is not None
    within(fit.cv, 0.4, rel=0.06)


def test_a_near_constant_sample_is_deterministic() -> None:
    x = 0.004 * (1 + 0.001 * np.random.default_rng(4).standard_normal(500))
    fit = fit_distribution(x)
    assert isinstance(fit.distribution, Deterministic)
    assert fit.distribution.value == pytest.approx(0.004, rel=1e-3)
    assert "sample cv" in fit.reason


def test_no_family_fits_a_bimodal_sample_so_it_becomes_empirical() -> None:
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.normal(0.01, 0.0005, N // 2), rng.normal(0.05, 0.002, N // 2)])
    fit = fit_distribution(x)
    assert fit.family == "empirical"
    assert isinstance(fit.distribution, Empirical)
    assert len(fit.distribution.values) == 200
    assert "fails KS" in fit.reason
    assert fit.ks_p > 0.01  # the quantiles themselves describe the sample
    assert fit.distribution.expected() == pytest.approx(float(x.mean()), rel=0.01)


def test_empirical_can_be_forced_and_keeps_small_samples_whole() -> None:
    x = np.random.default_rng(6).exponential(0.05, 80)
    fit = fit_distribution(x, force_empirical=True)
    assert isinstance(fit.distribution, Empirical)
    assert len(fit.distribution.values) == 80
    assert "as asked" in fit.reason


@pytest.mark.parametrize("bad", [[0.1], [0.1, 0.0, 0.2], [0.1, math.nan, 0.2], [0.1, -1.0]])
def test_too_few_or_non_positive_values_are_refused(bad: list[float]) -> None:
    with pytest.raises(ValueError, match=r"at least 2|finite and positive"):
        fit_distribution(bad)


def test_least_squares_recovers_a_line_within_its_standard_errors() -> None:
    rng = np.random.default_rng(7)
    tokens = rng.integers(5, 80, 2000).astype(float)
    y = 0.003 + 5e-5 * tokens + rng.normal(0, 2e-4, tokens.size)
    fit = fit_linear({"base": np.ones(tokens.size), "slope": tokens}, y)
    within(fit["base"], 0.003, rel=0.02)
    within(fit["slope"], 5e-5, rel=0.02)
    assert fit.significant("slope")
    assert fit.r2 > 0.9
    assert fit.resid_sd == pytest.approx(2e-4, rel=0.05)
    # a column that does not matter is not significant
    noise = rng.normal(0, 1, tokens.size)
    fit2 = fit_linear({"base": np.ones(tokens.size), "noise": noise}, y)
    assert not fit2.significant("noise")


def test_least_squares_refuses_collinear_or_too_few_rows() -> None:
    ones = np.ones(10)
    with pytest.raises(ValueError, match="collinear"):
        fit_linear({"a": ones, "b": 2 * ones}, np.arange(10.0))
    with pytest.raises(ValueError, match="more than 2 rows"):
        fit_linear({"a": ones[:2], "b": np.arange(2.0)}, np.arange(2.0))


def test_sig_rounds_to_significant_digits() -> None:
    assert sig(0.0201347) == 0.020135
    assert sig(5.00004e-05) == 5e-05
    assert sig(0.0) == 0.0


def test_an_imprecise_slope_keeps_a_prior_it_does_not_contradict() -> None:
    from ragstress.calibration.common import choose_slope

    rng = np.random.default_rng(7)
    tokens = rng.uniform(400, 1000, 60)  # with this noise the slope is imprecise
    y = 0.01 + 1e-5 * tokens + rng.normal(0, 0.006, tokens.size)
    kept = choose_slope(tokens, y, 1e-5, "per_prefill_token_s")
    assert kept.value == 1e-5
    assert not kept.changed
    assert "inside the imprecise fit's 95 % interval" in kept.why
    # a prior far outside the interval is not kept: the tokens did not show it
    dropped = choose_slope(tokens, y, 1e-3, "per_prefill_token_s")
    assert dropped.value == 0.0
    assert dropped.changed
