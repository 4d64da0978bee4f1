"""Fitting primitives: a service-time family chosen by the data, and least squares with
honest standard errors. Pure: arrays in, results out, no I/O and no randomness.

Families
========

:func:`fit_distribution` fits every candidate family the profile language has by maximum
likelihood — exponential (1 parameter), lognormal and gamma (2 each) — and keeps the one with
the lowest AIC (``2k − 2 ln L``: the extra parameter has to buy at least one unit of
log-likelihood, so an exponential is kept over a gamma whose shape is ≈ 1). Two exceptions:

- **deterministic** when the sample's coefficient of variation is below ``deterministic_cv``
  (default 0.02): the density of a constant is degenerate, so no likelihood compares with it,
  and a queue cannot tell such a small spread from none (M/G/1 waits scale with 1 + cv²).
- **empirical** when the AIC winner still fails a Kolmogorov–Smirnov test at ``alpha``
  (default 0.01), or when asked (``force_empirical``): the fitted value is then ``points``
  (≤ 200) mid-quantiles of the sample, so resampling them reproduces its shape without
  writing thousands of numbers into the profile. The KS p-value uses parameters estimated
  from the same sample, which makes it conservative (too high, Lilliefors): a family it
  rejects is certainly wrong; one it accepts may still be slightly off in the far tail.

Every fit carries its 95 % confidence interval for the mean and, where the family has one,
the coefficient of variation, from the asymptotic (Fisher-information) variances of the
maximum-likelihood estimates — closed forms, so calibration stays fast on large runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import special, stats

from ragstress.config.distributions import (
    Deterministic,
    Empirical,
    Exponential,
    Gamma,
    LogNormal,
)

__all__ = [
    "DETERMINISTIC_CV",
    "EMPIRICAL_POINTS",
    "KS_ALPHA",
    "Candidate",
    "DistributionFit",
    "Interval",
    "LinearFit",
    "fit_distribution",
    "fit_linear",
    "sig",
]

DETERMINISTIC_CV = 0.02
KS_ALPHA = 0.01
EMPIRICAL_POINTS = 200
_Z95 = 1.959963984540054
FitDistribution = Exponential | Deterministic | LogNormal | Gamma | Empirical


def sig(value: float, digits: int = 5) -> float:
    """``value`` rounded to ``digits`` significant digits: what goes into a profile. Fits are
    good to a few parts in a thousand at best, so more digits would only be noise."""
    if value == 0 or not math.isfinite(value):
        return value
    return float(f"{value:.{digits}g}")


@dataclass(frozen=True)
class Interval:
    """An estimate with its 95 % confidence interval; ``se`` is its standard error."""

    value: float
    low: float
    high: float
    se: float

    def text(self, unit: str = "") -> str:
        return f"{self.value:.4g}{unit} [{self.low:.4g}, {self.high:.4g}]"


@dataclass(frozen=True)
class Candidate:
    """One family fitted to the sample: its parameters, likelihood and KS test."""

    family: str
    params: dict[str, float]
    log_likelihood: float
    aic: float
    ks_stat: float
    ks_p: float


@dataclass(frozen=True)
class DistributionFit:
    """The chosen distribution (a profile ``Distribution``), how good it is and why it won."""

    distribution: FitDistribution
    family: str
    n: int
    mean: Interval
    cv: Interval | None
    ks_stat: float
    ks_p: float
    reason: str
    candidates: tuple[Candidate, ...] = field(default=())

    def describe(self) -> str:
        """One line for a YAML comment: family, parameters with CIs, quality, alternatives."""
        parts = [f"{self.family}, n={self.n}", f"mean {self.mean.text(' s')}"]
        if self.cv is not None:
            parts.append(f"cv {self.cv.text()}")
        if math.isfinite(self.ks_stat):
            parts.append(f"KS D={self.ks_stat:.3g} p={self.ks_p:.3g}")
        aics = sorted((c for c in self.candidates if math.isfinite(c.aic)), key=lambda c: c.aic)
        if aics:
            best = aics[0].aic
            parts.append(
                "AIC "
                + ", ".join(
                    f"{c.family} {c.aic:.1f}" + ("" if c.aic == best else f" (+{c.aic - best:.1f})")
                    for c in aics
                )
            )
        parts.append(self.reason)
        return "; ".join(parts)


def _ks(values: np.ndarray, cdf: Any) -> tuple[float, float]:
    res = stats.kstest(values, cdf)
    return float(res.statistic), float(res.pvalue)


def _exponential(x: np.ndarray) -> tuple[Candidate, Interval]:
    n = x.size
    mean = float(x.mean())
    ll = float(-n * math.log(mean) - x.sum() / mean)
    d, p = _ks(x, stats.expon(scale=mean).cdf)
    se = mean / math.sqrt(n)
    cand = Candidate("exponential", {"mean": mean}, ll, 2 * 1 - 2 * ll, d, p)
    return cand, Interval(mean, mean - _Z95 * se, mean + _Z95 * se, se)


def _lognormal(x: np.ndarray) -> tuple[Candidate, Interval, Interval]:
    n = x.size
    logs = np.log(x)
    mu = float(logs.mean())
    sigma = float(logs.std())
    sigma = max(sigma, 1e-12)
    dist = stats.lognorm(s=sigma, scale=math.exp(mu))
    ll = float(dist.logpdf(x).sum())
    d, p = _ks(x, dist.cdf)
    mean = math.exp(mu + sigma * sigma / 2)
    cv = math.sqrt(math.expm1(sigma * sigma))
    # delta method: Var(μ̂) = σ²/n, Var(σ̂) = σ²/(2n), independent
    se_log_mean = math.sqrt(sigma**2 / n + sigma**4 / (2 * n))
    se_sigma = sigma / math.sqrt(2 * n)
    se_cv = sigma * math.exp(sigma * sigma) / cv * se_sigma
    mean_ci = Interval(
        mean,
        mean * math.exp(-_Z95 * se_log_mean),
        mean * math.exp(_Z95 * se_log_mean),
        mean * se_log_mean,
    )
    cv_ci = Interval(cv, max(cv - _Z95 * se_cv, 0.0), cv + _Z95 * se_cv, se_cv)
    cand = Candidate("lognormal", {"mean": mean, "cv": cv}, ll, 2 * 2 - 2 * ll, d, p)
    return cand, mean_ci, cv_ci


def _gamma(x: np.ndarray) -> tuple[Candidate, Interval, Interval]:
    n = x.size
    shape, _, scale = stats.gamma.fit(x, floc=0)
    shape, scale = float(shape), float(scale)
    dist = stats.gamma(shape, scale=scale)
    ll = float(dist.logpdf(x).sum())
    d, p = _ks(x, dist.cdf)
    mean = shape * scale
    cv = 1 / math.sqrt(shape)
    # Fisher information of (shape, mean): the two are orthogonal; Var(mean̂) = mean²/(n·k),
    # Var(k̂) = k / (n (k ψ'(k) − 1))
    se_mean = mean / math.sqrt(n * shape)
    se_shape = math.sqrt(shape / (n * max(shape * float(special.polygamma(1, shape)) - 1, 1e-12)))
    se_cv = 0.5 * shape**-1.5 * se_shape
    mean_ci = Interval(mean, mean - _Z95 * se_mean, mean + _Z95 * se_mean, se_mean)
    cv_ci = Interval(cv, max(cv - _Z95 * se_cv, 0.0), cv + _Z95 * se_cv, se_cv)
    cand = Candidate("gamma", {"mean": mean, "cv": cv}, ll, 2 * 2 - 2 * ll, d, p)
    return cand, mean_ci, cv_ci


def _empirical(x: np.ndarray, points: int) -> Empirical:
    m = min(x.size, points)
    q = (np.arange(m) + 0.5) / m
    values = np.quantile(x, q)
    return Empirical(kind="empirical", values=tuple(sig(float(v), 6) for v in values))


def fit_distribution(
    values: Sequence[float] | np.ndarray,
    *,
    force_empirical: bool = False,
    alpha: float = KS_ALPHA,
    deterministic_cv: float = DETERMINISTIC_CV,
    points: int = EMPIRICAL_POINTS,
) -> DistributionFit:
    """Fit a service-time distribution to positive ``values`` (see the module docstring).

    Raises ValueError for fewer than 2 values or any value that is not finite and positive:
    the callers drop such rows first and say how many.
    """
    x = np.asarray(values, dtype=float)
    if x.size < 2:
        raise ValueError(f"need at least 2 values to fit a distribution, got {x.size}")
    if not np.all(np.isfinite(x) & (x > 0)):
        raise ValueError("service times must be finite and positive")
    n = int(x.size)
    mean = float(x.mean())
    sd = float(x.std(ddof=1))
    sample_cv = sd / mean
    se_mean = sd / math.sqrt(n)
    sample_mean = Interval(mean, mean - _Z95 * se_mean, mean + _Z95 * se_mean, se_mean)
    if sample_cv < deterministic_cv and not force_empirical:
        return DistributionFit(
            distribution=Deterministic(kind="deterministic", value=sig(mean)),
            family="deterministic",
            n=n,
            mean=sample_mean,
            cv=None,
            ks_stat=math.nan,
            ks_p=math.nan,
            reason=(
                f"chosen: sample cv {sample_cv:.3g} < {deterministic_cv:g}, too small a spread "
                "to matter to a queue"
            ),
        )
    expo, expo_mean = _exponential(x)
    logn, logn_mean, logn_cv = _lognormal(x)
    gam, gam_mean, gam_cv = _gamma(x)
    candidates = (logn, gam, expo)
    best = min(candidates, key=lambda c: c.aic)
    if force_empirical or best.ks_p < alpha:
        emp = _empirical(x, points)
        grid = np.sort(np.asarray(emp.values))
        d, p = _ks(x, lambda t: np.searchsorted(grid, t, side="right") / grid.size)
        if force_empirical:
            reason = f"chosen: empirical as asked ({len(emp.values)} quantiles)"
        else:
            reason = (
                f"chosen: empirical ({len(emp.values)} quantiles), since the best family "
                f"({best.family}) fails KS at {alpha:g} (p={best.ks_p:.3g})"
            )
        return DistributionFit(
            distribution=emp,
            family="empirical",
            n=n,
            mean=sample_mean,
            cv=None,
            ks_stat=d,
            ks_p=p,
            reason=reason,
            candidates=candidates,
        )
    reason = f"chosen: lowest AIC, KS passes at {alpha:g}"
    if best is expo:
        dist: FitDistribution = Exponential(kind="exponential", mean=sig(expo.params["mean"]))
        mean_ci, cv_ci = expo_mean, None
    elif best is logn:
        dist = LogNormal(kind="lognormal", mean=sig(logn.params["mean"]), cv=sig(logn.params["cv"]))
        mean_ci, cv_ci = logn_mean, logn_cv
    else:
        dist = Gamma(kind="gamma", mean=sig(gam.params["mean"]), cv=sig(gam.params["cv"]))
        mean_ci, cv_ci = gam_mean, gam_cv
    return DistributionFit(
        distribution=dist,
        family=best.family,
        n=n,
        mean=mean_ci,
        cv=cv_ci,
        ks_stat=best.ks_stat,
        ks_p=best.ks_p,
        reason=reason,
        candidates=candidates,
    )


@dataclass(frozen=True)
class LinearFit:
    """Weighted least squares ``y ≈ X·coef``: estimates, standard errors, fit quality."""

    names: tuple[str, ...]
    coef: np.ndarray
    se: np.ndarray
    n: int
    r2: float
    resid_sd: float  # weighted residual standard deviation (per unit weight)
    resid_q: tuple[float, float, float]  # 5 %, 50 %, 95 % of the unweighted residuals

    def __getitem__(self, name: str) -> Interval:
        k = self.names.index(name)
        v, s = float(self.coef[k]), float(self.se[k])
        return Interval(v, v - _Z95 * s, v + _Z95 * s, s)

    def t(self, name: str) -> float:
        k = self.names.index(name)
        s = float(self.se[k])
        return float(self.coef[k]) / s if s > 0 else math.inf

    def p_positive(self, name: str) -> float:
        """One-sided p-value against ``coef ≤ 0`` (Student t with n − p degrees of freedom)."""
        dof = max(self.n - len(self.names), 1)
        return float(stats.t.sf(self.t(name), dof))

    def significant(self, name: str, *, p: float = 0.01, rel_se: float = 0.25) -> bool:
        """Positive, significant at ``p``, and precise enough (SE below ``rel_se`` of the value)
        to be worth writing into a profile rather than keeping what was there."""
        k = self.names.index(name)
        v, s = float(self.coef[k]), float(self.se[k])
        return v > 0 and self.p_positive(name) < p and s <= rel_se * v

    def describe(self) -> str:
        return f"n={self.n}, R²={self.r2:.3f}, residual sd {self.resid_sd:.3g}"


def fit_linear(
    columns: dict[str, np.ndarray],
    y: np.ndarray,
    weights: np.ndarray | None = None,
) -> LinearFit:
    """Least squares of ``y`` on the named ``columns`` (pass ``np.ones`` for an intercept).

    Standard errors are the classical ones, ``s² (XᵀWX)⁻¹``: rows are independent requests.
    Raises ValueError when there are no more rows than columns or the columns are collinear.
    """
    names = tuple(columns)
    design = np.column_stack([np.asarray(columns[k], dtype=float) for k in names])
    y = np.asarray(y, dtype=float)
    n, p = design.shape
    if n <= p:
        raise ValueError(f"need more than {p} rows for {p} coefficients, got {n}")
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=float)
    sw = np.sqrt(w)
    xw = design * sw[:, None]
    yw = y * sw
    coef, _, rank, _ = np.linalg.lstsq(xw, yw, rcond=None)
    if rank < p:
        raise ValueError(f"the columns {', '.join(names)} are collinear in these data")
    resid_w = yw - xw @ coef
    dof = n - p
    s2 = float(resid_w @ resid_w) / dof
    cov = s2 * np.linalg.inv(xw.T @ xw)
    se = np.sqrt(np.maximum(np.diag(cov), 0.0))
    ybar = float(np.average(y, weights=w))
    ss_tot = float((w * (y - ybar) ** 2).sum())
    r2 = 1 - float(resid_w @ resid_w) / ss_tot if ss_tot > 0 else 1.0
    resid = y - design @ coef
    q = np.quantile(resid, [0.05, 0.5, 0.95])
    return LinearFit(
        names=names,
        coef=np.asarray(coef, dtype=float),
        se=np.asarray(se, dtype=float),
        n=n,
        r2=r2,
        resid_sd=math.sqrt(s2),
        resid_q=(float(q[0]), float(q[1]), float(q[2])),
    )
