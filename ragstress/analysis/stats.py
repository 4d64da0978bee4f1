"""Percentiles with honest confidence intervals.

Queue latencies are autocorrelated: a request that waits long is followed by others that do.
Intervals that assume independent samples are then far too narrow. We use **batch means**:
split the samples, in arrival order, into ``k`` contiguous batches, estimate the statistic in
each, and take a Student-t interval over the k batch estimates. Batches long compared with the
correlation time are nearly independent, so the interval is honest for steady-state output.

When there are too few samples for each batch to estimate a quantile (fewer than
``10 / (1 − q)`` per batch), we fall back to the distribution-free order-statistic interval
(binomial, exact for independent samples) and say so in the returned method.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = ["PERCENTILES", "Estimate", "batch_means_ci", "describe", "quantile_ci"]

PERCENTILES: dict[str, float] = {
    "p50": 50.0,
    "p90": 90.0,
    "p95": 95.0,
    "p99": 99.0,
    "p99_9": 99.9,
}
BATCHES = 20


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float
    method: str  # "batch-means", "order-statistic" or "none"


def batch_means_ci(
    samples: np.ndarray,
    statistic: str = "mean",
    q: float = 0.5,
    batches: int = BATCHES,
    level: float = 0.95,
) -> Estimate:
    """Batch-means interval for the mean (``statistic="mean"``) or quantile ``q`` of
    ``samples`` taken in time order. The point estimate uses all samples."""
    x = np.asarray(samples, dtype=float)
    x = x[~np.isnan(x)]
    if x.size == 0:
        return Estimate(math.nan, math.nan, math.nan, "none")
    point = float(x.mean()) if statistic == "mean" else float(np.quantile(x, q))
    if x.size < batches * 2:
        return Estimate(point, math.nan, math.nan, "none")
    usable = x[: x.size - x.size % batches].reshape(batches, -1)
    per_batch = usable.mean(axis=1) if statistic == "mean" else np.quantile(usable, q, axis=1)
    sd = float(per_batch.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, batches - 1)) * sd / math.sqrt(batches)
    return Estimate(point, point - half, point + half, "batch-means")


def _order_statistic_ci(x_sorted: np.ndarray, q: float, level: float) -> tuple[float, float]:
    n = x_sorted.size
    lo_rank = int(stats.binom.ppf((1 - level) / 2, n, q))
    hi_rank = int(stats.binom.ppf(0.5 + level / 2, n, q)) + 1
    lo = x_sorted[max(lo_rank - 1, 0)]
    hi = x_sorted[min(hi_rank - 1, n - 1)]
    return float(lo), float(hi)


def quantile_ci(samples: np.ndarray, q: float, level: float = 0.95) -> Estimate:
    """Quantile ``q`` (0–1) of time-ordered ``samples`` with a confidence interval."""
    x = np.asarray(samples, dtype=float)
    x = x[~np.isnan(x)]
    if x.size == 0:
        return Estimate(math.nan, math.nan, math.nan, "none")
    if x.size // BATCHES >= 10 / (1 - q):
        return batch_means_ci(x, "quantile", q, BATCHES, level)
    point = float(np.quantile(x, q))
    lo, hi = _order_statistic_ci(np.sort(x), q, level)
    return Estimate(point, min(lo, point), max(hi, point), "order-statistic")


def describe(samples: np.ndarray) -> dict[str, object]:
    """Mean and the standard percentiles, with 95 % intervals for p50, p95 and p99."""
    x = np.asarray(samples, dtype=float)
    x = x[~np.isnan(x)]
    out: dict[str, object] = {"count": int(x.size)}
    if x.size == 0:
        out.update({"mean": math.nan, **dict.fromkeys(PERCENTILES, math.nan)})
        out["ci95"] = {name: [math.nan, math.nan] for name in ("p50", "p95", "p99")}
        out["ci_method"] = dict.fromkeys(("p50", "p95", "p99"), "none")
        return out
    out["mean"] = float(x.mean())
    values = np.percentile(x, list(PERCENTILES.values()))
    out.update({k: float(v) for k, v in zip(PERCENTILES, values, strict=True)})
    ci: dict[str, list[float]] = {}
    methods: dict[str, str] = {}
    for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
        est = quantile_ci(x, q)
        ci[name] = [est.low, est.high]
        methods[name] = est.method
    out["ci95"] = ci
    out["ci_method"] = methods
    return out
