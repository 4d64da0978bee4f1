"""The model against exact queueing theory (μ = 1, one FIFO pool stage, Poisson arrivals).

References: Erlang C for M/M/c, Pollaczek–Khinchine for M/G/1 (M/D/1 is its C² = 0 case), and
PASTA for M/G/1's probability of waiting (= ρ). Estimates use batch means: drop the first 5% of
requests as warm-up, cut the rest in arrival order into 20 contiguous batches, and build a
Student-t interval from the 20 batch means.

All cases are checked in one test so that the coverage of the 95% intervals can be counted
across the whole set: with honest intervals about 1 check in 20 falls outside, so requiring every
check inside its 95% interval would fail by design. With honest intervals the number inside is
Binomial(checks, 0.95), so the test asks for at least the count that such a binomial reaches
with probability 99.5% (30 of 36: a false alarm 1 run in 200, while a biased model misses far
more). Every exact value must also be inside its 99.9% interval, and light-traffic cases must be
within 10%.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from scipy import stats
from scipy.stats import binom

from ragstress.config import Profile, Scenario
from ragstress.model import simulate
from ragstress.workload import build_workload

BASE_SEED = 20_240_611  # fixed once; case k uses BASE_SEED + k so cases are independent
WARMUP_FRACTION = 0.05
BATCHES = 20

EXPONENTIAL: dict[str, Any] = {"kind": "exponential", "mean": 1.0}
DETERMINISTIC: dict[str, Any] = {"kind": "deterministic", "value": 1.0}
GAMMA_CV2: dict[str, Any] = {"kind": "gamma", "mean": 1.0, "cv": 2.0}


def erlang_c(c: int, a: float) -> float:
    """P(wait) in M/M/c with offered load a = λ/μ < c (Erlang B recurrence, then Erlang C)."""
    b = 1.0
    for k in range(1, c + 1):
        b = a * b / (k + a * b)
    return c * b / (c - a * (1.0 - b))


def mmc_wait(c: int, rho: float) -> tuple[float, float]:
    """(P(wait), W_q) for M/M/c with μ = 1 and utilisation ρ."""
    a = rho * c
    p = erlang_c(c, a)
    return p, p / (c - a)


def pollaczek_khinchine(rho: float, mean_s: float, scv: float) -> float:
    """M/G/1 mean wait in queue: W_q = ρ·E[S]·(1 + C²) / (2(1 − ρ))."""
    return rho * mean_s * (1.0 + scv) / (2.0 * (1.0 - rho))


def test_erlang_c_matches_the_design_table() -> None:
    for rho, p_ref, w_ref in [
        (0.5, 0.173913, 0.086957),
        (0.8, 0.596432, 0.745541),
        (0.9, 0.787753, 1.969383),
    ]:
        p, w = mmc_wait(4, rho)
        assert p == pytest.approx(p_ref, abs=1e-6)
        assert w == pytest.approx(w_ref, abs=1e-6)
    # M/M/1: P(wait) = ρ, W_q = ρ/(1 − ρ)
    assert mmc_wait(1, 0.7) == pytest.approx((0.7, 0.7 / 0.3))
    # M/D/1 from Pollaczek–Khinchine with C² = 0
    assert pollaczek_khinchine(0.9, 1.0, 0.0) == pytest.approx(4.5)
    assert pollaczek_khinchine(0.9, 1.0, 1.0) == pytest.approx(mmc_wait(1, 0.9)[1])


@dataclass(frozen=True)
class Case:
    name: str
    servers: int
    rho: float
    service: dict[str, Any]
    p_wait: float
    w_q: float
    requests: int  # simulated requests; heavy traffic relaxes slowly and needs longer runs


def _cases() -> list[Case]:
    out: list[Case] = []
    # Run lengths keep the relative standard error of W_q near 2.5% or below for ρ ≤ 0.7
    # (measured: it grows with c at light load, where waits are rare).
    mmc_requests = {
        (1, 0.5): 100_000,
        (1, 0.7): 200_000,
        (2, 0.5): 120_000,
        (2, 0.7): 200_000,
        (4, 0.5): 200_000,
        (4, 0.7): 250_000,
        (8, 0.5): 500_000,
        (8, 0.7): 400_000,
    }
    for c in (1, 2, 4, 8):
        for rho in (0.5, 0.7, 0.9):
            p, w = mmc_wait(c, rho)
            n = mmc_requests.get((c, rho), 600_000)
            out.append(Case(f"M/M/{c}", c, rho, EXPONENTIAL, p, w, n))
    for rho, n in [(0.5, 60_000), (0.7, 100_000), (0.9, 600_000)]:
        w = pollaczek_khinchine(rho, 1.0, 0.0)
        out.append(Case("M/D/1", 1, rho, DETERMINISTIC, rho, w, n))
    for rho, n in [(0.5, 150_000), (0.7, 250_000), (0.9, 1_200_000)]:
        w = pollaczek_khinchine(rho, 1.0, 4.0)
        out.append(Case("M/G/1 gamma cv=2", 1, rho, GAMMA_CV2, rho, w, n))
    return out


def _single_pool(servers: int, service: dict[str, Any]) -> Profile:
    return Profile.model_validate(
        {
            "name": "single-pool",
            "stages": [
                {
                    "kind": "pool",
                    "name": "pool",
                    "replicas": 1,
                    "concurrency": servers,
                    "service": service,
                }
            ],
        }
    )


def _poisson_scenario(rate: float, requests: int, seed: int) -> Scenario:
    return Scenario.model_validate(
        {
            "name": "poisson",
            "duration_s": requests / rate,
            "seed": seed,
            "max_requests": 2 * requests + 1000,
            "arrivals": {"kind": "poisson", "rate": rate},
        }
    )


def _batch_means(values: np.ndarray) -> np.ndarray:
    kept = values[int(WARMUP_FRACTION * values.size) :]
    size = kept.size // BATCHES
    return kept[: size * BATCHES].reshape(BATCHES, size).mean(axis=1)


def _interval(batches: np.ndarray, level: float) -> tuple[float, float]:
    """(mean, half-width) of the Student-t interval at ``level`` from the batch means."""
    q = stats.t.ppf(0.5 + level / 2, BATCHES - 1)
    return float(batches.mean()), float(q * batches.std(ddof=1) / math.sqrt(BATCHES))


@dataclass(frozen=True)
class Check:
    case: str
    rho: float
    quantity: str
    exact: float
    estimate: float
    half95: float
    half999: float

    @property
    def in95(self) -> bool:
        return abs(self.estimate - self.exact) <= self.half95

    @property
    def in999(self) -> bool:
        return abs(self.estimate - self.exact) <= self.half999

    @property
    def rel_error(self) -> float:
        return abs(self.estimate - self.exact) / self.exact

    def row(self) -> str:
        return (
            f"{self.case:18s} ρ={self.rho:.1f} {self.quantity:7s} exact={self.exact:9.5f} "
            f"est={self.estimate:9.5f} ±95%={self.half95:8.5f} ±99.9%={self.half999:8.5f} "
            f"rel={self.rel_error:6.3f} {'in' if self.in95 else 'OUT'}"
        )


@pytest.mark.slow
def test_waits_match_exact_queueing_theory() -> None:
    checks: list[Check] = []
    for k, case in enumerate(_cases()):
        rate = case.rho * case.servers
        workload = build_workload(_poisson_scenario(rate, case.requests, BASE_SEED + k))
        wait = simulate(workload, _single_pool(case.servers, case.service)).requests["pool_wait_s"]
        assert np.isfinite(wait).all()  # no limits: everyone is served
        for quantity, values, exact in [
            ("P(wait)", (wait > 0).astype(float), case.p_wait),
            ("W_q", wait, case.w_q),
        ]:
            batches = _batch_means(values)
            mean, half95 = _interval(batches, 0.95)
            _, half999 = _interval(batches, 0.999)
            checks.append(Check(case.name, case.rho, quantity, exact, mean, half95, half999))

    table = "\n".join(c.row() for c in checks)
    inside = sum(c.in95 for c in checks)
    print(f"\n{table}\n{inside}/{len(checks)} exact values inside their 95% CI")
    # evaluate every criterion, then report all that failed together with the whole table
    problems: list[str] = []
    # smallest count whose lower tail under Binomial(n, 0.95) is at least 0.5 %
    needed = int(binom.ppf(0.005, len(checks), 0.95))
    if inside < needed:
        problems.append(f"95% CI coverage {inside}/{len(checks)} is below {needed}")
    problems += [f"outside its 99.9% CI: {c.row()}" for c in checks if not c.in999]
    problems += [
        f"relative error ≥ 10% at ρ ≤ 0.7: {c.row()}"
        for c in checks
        if c.rho <= 0.7 and c.rel_error >= 0.10
    ]
    assert not problems, "\n".join(problems) + f"\n\n{table}"


def test_achieved_utilisation_matches_offered_load() -> None:
    servers, rho, requests = 4, 0.7, 100_000
    scenario = _poisson_scenario(rho * servers, requests, BASE_SEED - 1)
    workload = build_workload(scenario)
    result = simulate(workload, _single_pool(servers, EXPONENTIAL))
    service = result.requests["pool_service_s"]
    assert np.isfinite(service).all()
    utilisation = service.sum() / (servers * scenario.duration_s)
    assert utilisation == pytest.approx(rho, rel=0.02)
    # the sampled busy-server count says the same thing
    series = result.timeseries
    assert series is not None
    busy = series["pool_busy"][series["t_s"] < scenario.duration_s]
    assert busy.mean() / servers == pytest.approx(rho, rel=0.03)


@pytest.mark.parametrize(
    ("servers", "service"),
    [(1, DETERMINISTIC), (1, GAMMA_CV2), (3, EXPONENTIAL), (8, GAMMA_CV2)],
    ids=["D/1", "G/1", "M/3", "G/8"],
)
def test_waits_equal_the_fifo_recursion(servers: int, service: dict[str, Any]) -> None:
    """Given the same arrivals and service times, a FIFO c-server queue is fully determined:
    each request in arrival order starts on the earliest free server. The model's waits must
    be exactly these, so any gap to theory above is sampling noise, not queueing logic."""
    workload = build_workload(_poisson_scenario(0.85 * servers, 20_000, BASE_SEED - 2))
    requests = simulate(workload, _single_pool(servers, service)).requests
    arrival, service_s = workload.arrival_s.tolist(), requests["pool_service_s"].tolist()
    free = [0.0] * servers
    expected = []
    for a, s in zip(arrival, service_s, strict=True):
        start = max(a, heapq.heappop(free))
        expected.append(start - a)
        heapq.heappush(free, start + s)
    assert np.allclose(requests["pool_wait_s"], expected, rtol=0, atol=1e-9)
    assert requests["latency_s"] == pytest.approx(np.array(expected) + service_s, abs=1e-9)
