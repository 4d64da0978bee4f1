"""Percentile intervals, goodput and SLO verdicts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ragstress.analysis import batch_means_ci, describe, good_mask, quantile_ci, slo_report
from ragstress.config.scenario import Slo
from ragstress.results.schema import BASE_COLUMNS, Manifest, RunResult


def _ar1(rng: np.random.Generator, n: int, phi: float) -> np.ndarray:
    """A strongly autocorrelated series with mean 0 and known stationary variance."""
    noise = rng.standard_normal(n)
    out = np.empty(n)
    out[0] = noise[0] / math.sqrt(1 - phi * phi)
    for i in range(1, n):
        out[i] = phi * out[i - 1] + noise[i]
    return out


def test_batch_means_covers_the_mean_of_autocorrelated_data() -> None:
    # With phi = 0.9 an iid interval would be ~4x too narrow; batch means must still cover
    # the true mean (0) about 95 % of the time.
    rng = np.random.default_rng(11)
    hits = 0
    trials = 200
    for _ in range(trials):
        est = batch_means_ci(_ar1(rng, 20_000, 0.9))
        hits += est.low <= 0.0 <= est.high
    assert 0.90 <= hits / trials <= 0.99


def test_naive_interval_would_fail_where_batch_means_holds() -> None:
    # The reason for batch means: the iid standard error undercovers autocorrelated data.
    rng = np.random.default_rng(12)
    naive_hits = 0
    trials = 200
    for _ in range(trials):
        x = _ar1(rng, 20_000, 0.9)
        half = 1.96 * x.std(ddof=1) / math.sqrt(x.size)
        naive_hits += abs(x.mean()) <= half
    assert naive_hits / trials < 0.6


def test_quantile_interval_covers_the_true_quantile_of_iid_data() -> None:
    rng = np.random.default_rng(13)
    true_p95 = -math.log(0.05)  # exponential(1)
    hits_bm = hits_os = 0
    trials = 200
    for _ in range(trials):
        big = quantile_ci(rng.exponential(1.0, 20_000), 0.95)
        small = quantile_ci(rng.exponential(1.0, 500), 0.95)
        assert big.method == "batch-means"
        assert small.method == "order-statistic"
        hits_bm += big.low <= true_p95 <= big.high
        hits_os += small.low <= true_p95 <= small.high
    assert 0.88 <= hits_bm / trials <= 1.0
    assert 0.90 <= hits_os / trials <= 1.0


def test_describe_reports_all_percentiles_and_handles_empty() -> None:
    x = np.arange(1, 10_001, dtype=float)
    d = describe(x)
    assert d["count"] == 10_000
    assert d["p50"] == pytest.approx(5000.5)
    assert d["p99"] == pytest.approx(9900.01)
    assert d["p99_9"] == pytest.approx(9990.001)
    lo, hi = d["ci95"]["p95"]  # type: ignore[index]
    assert lo <= d["p95"] <= hi  # type: ignore[operator]
    empty = describe(np.array([math.nan]))
    assert empty["count"] == 0
    assert math.isnan(empty["p95"])  # type: ignore[arg-type]


def _result(outcome: list[str], latency: list[float], ttft: list[float]) -> RunResult:
    n = len(outcome)
    cols = {c: np.zeros(n) for c in BASE_COLUMNS}
    cols["id"] = np.arange(n)
    cols["outcome"] = np.array(outcome)
    cols["latency_s"] = np.array(latency)
    cols["ttft_s"] = np.array(ttft)
    manifest = Manifest(
        source="measured",
        scenario={"name": "t"},
        profile=None,
        seed=0,
        stages=[],
        duration_s=10.0,
        ragstress_version="test",
    )
    return RunResult(manifest=manifest, requests=cols)


def test_goodput_counts_answers_within_the_loosest_targets() -> None:
    result = _result(
        ["ok", "ok", "ok", "shed", "ok_degraded"],
        [1.0, 3.0, 1.0, 0.1, 1.5],
        [0.2, 0.2, 0.9, math.nan, 0.1],
    )
    slo = Slo.model_validate({"latency_s": {"p50": 1.0, "p95": 2.0}, "ttft_s": {"p95": 0.5}})
    # request 1 too slow end to end (3 > 2), 2 too slow to first token, 3 shed
    assert good_mask(result, slo).tolist() == [True, False, False, False, True]
    assert good_mask(result, Slo()).tolist() == [True, True, True, False, True]


def test_slo_report_verdicts() -> None:
    slo = Slo.model_validate({"latency_s": {"p95": 2.0}, "error_rate": 0.1})
    summary = {"latency_s": {"p95": 2.5}, "ttft_s": {}, "error_rate": 0.05}
    rows = slo_report(summary, slo)
    assert rows == [
        {"objective": "latency_s.p95", "target": 2.0, "value": 2.5, "met": False},
        {"objective": "error_rate", "target": 0.1, "value": 0.05, "met": True},
    ]
    summary["latency_s"]["p95"] = math.nan
    assert slo_report(summary, slo)[0]["met"] is False
