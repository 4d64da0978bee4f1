"""Maximum-sustainable-rate search: exact probe sequences on a fake runner, noise handling, and
the answer on a real M/M/c pool against Erlang C."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from scipy.optimize import brentq

from ragstress.capacity import PointRunner
from ragstress.capacity.search import SearchSettings, find_capacities
from ragstress.capacity.sweep import SweepPoint
from ragstress.config import ConfigError, Profile, Scenario

RatioFn = Callable[[SweepPoint], float]


class FakeRunner:
    """Answers each point with ``ratio(point)`` and records every batch it was given."""

    def __init__(self, ratio: RatioFn) -> None:
        self.ratio = ratio
        self.batches: list[list[tuple[str, float, int]]] = []

    def run(self, points: Sequence[SweepPoint]) -> list[dict[str, Any]]:
        self.batches.append([(p.config, p.rate_rps, p.seed) for p in points])
        return [{"config": p.config, "slo_ratio": self.ratio(p)} for p in points]

    def rates(self, config: str = "baseline") -> list[float]:
        seen: list[float] = []
        for batch in self.batches:
            for label, rate, _ in batch:
                if label == config and (not seen or seen[-1] != rate):
                    seen.append(rate)
        return seen


def _linear(capacity: float) -> RatioFn:
    return lambda p: p.rate_rps / capacity


def test_bracket_by_doubling_then_bisect_geometrically() -> None:
    runner = FakeRunner(_linear(100.0))
    settings = SearchSettings(tolerance=0.05, replications=1, max_replications=1)
    (cap,) = find_capacities(runner, [("baseline", {})], settings, start_rps=10.0)
    rates = runner.rates()
    # 10 passes; doubling to 20, 40, 80 passes, 160 fails; then geometric midpoints
    assert rates[:5] == [10.0, 20.0, 40.0, 80.0, 160.0]
    assert rates[5] == pytest.approx(math.sqrt(80 * 160))
    assert cap.low_rps <= 100.0 < cap.high_rps  # type: ignore[operator]
    assert (cap.high_rps - cap.low_rps) / cap.low_rps <= 0.05  # type: ignore[operator]
    assert cap.max_rate_rps == cap.low_rps
    assert cap.confident
    assert cap.runs == len(rates)
    assert all(p.passed == (p.rate_rps <= 100.0) for p in cap.probes)


def test_grid_verdicts_seed_the_bracket_and_its_ends_are_judged_again() -> None:
    runner = FakeRunner(_linear(100.0))
    settings = SearchSettings(tolerance=0.02, replications=1, max_replications=1)
    grid = [
        {"config": "baseline", "rate_rps": r, "slo_ratio": r / 100.0} for r in (50, 90, 110, 150)
    ]
    (cap,) = find_capacities(runner, [("baseline", {})], settings, start_rps=1.0, grid=grid)
    rates = runner.rates()
    assert rates[:2] == [90.0, 110.0]  # the grid's bracket, confirmed; start_rps unused
    assert rates[2] == pytest.approx(math.sqrt(90 * 110))
    assert cap.low_rps <= 100.0 < cap.high_rps  # type: ignore[operator]


def test_a_grid_end_that_flips_makes_the_bracket_grow() -> None:
    runner = FakeRunner(_linear(100.0))
    settings = SearchSettings(tolerance=0.02, replications=1, max_replications=1)
    # a noisy grid claimed 120 passed and 130 failed; 120 is judged again and fails
    grid = [{"config": "baseline", "rate_rps": 120.0, "slo_ratio": 0.9}]
    grid.append({"config": "baseline", "rate_rps": 130.0, "slo_ratio": 1.3})
    (cap,) = find_capacities(runner, [("baseline", {})], settings, start_rps=1.0, grid=grid)
    assert runner.rates()[:2] == [120.0, 60.0]
    assert cap.low_rps <= 100.0 < cap.high_rps  # type: ignore[operator]


def test_noise_cannot_fake_a_crossing() -> None:
    # Seeds alternate ±0.3 around the true ratio: one run can pass at 125 % of capacity
    # or fail at 75 %. Replicated probes see through it; single runs do not.
    def noisy(p: SweepPoint) -> float:
        return p.rate_rps / 100.0 + (0.3 if p.seed % 2 else -0.3)

    single = SearchSettings(tolerance=0.02, replications=1, max_replications=1, seed=0)
    (fooled,) = find_capacities(FakeRunner(noisy), [("baseline", {})], single, start_rps=10.0)
    assert fooled.max_rate_rps > 120.0  # seed 0 is always the lucky one

    replicated = SearchSettings(tolerance=0.02, replications=2, max_replications=8, seed=0)
    runner = FakeRunner(noisy)
    (cap,) = find_capacities(runner, [("baseline", {})], replicated, start_rps=10.0)
    assert cap.low_rps <= 100.0 < cap.high_rps  # type: ignore[operator]
    # each verdict used an even number of seeds, so the noise cancels exactly
    assert all(len(p.ratios) % 2 == 0 for p in cap.probes)
    assert all(p.mean_ratio == pytest.approx(p.rate_rps / 100.0) for p in cap.probes)


def test_an_unclear_verdict_gets_more_replications_then_is_marked() -> None:
    # a ratio that straddles 1 at every rate near the crossing, whatever the replications
    def straddling(p: SweepPoint) -> float:
        return p.rate_rps / 100.0 + (0.5 if p.seed % 2 else -0.5)

    settings = SearchSettings(tolerance=0.05, replications=2, max_replications=8)
    (cap,) = find_capacities(FakeRunner(straddling), [("baseline", {})], settings, start_rps=100)
    near = [p for p in cap.probes if abs(p.rate_rps / 100.0 - 1) < 0.2]
    assert near
    assert all(len(p.ratios) == 8 for p in near)
    assert not cap.confident


def test_configurations_are_searched_side_by_side() -> None:
    capacity = {"small": 50.0, "large": 200.0}
    runner = FakeRunner(lambda p: p.rate_rps / capacity[p.config])
    settings = SearchSettings(tolerance=0.02, replications=1, max_replications=1)
    caps = find_capacities(
        runner, [("small", {"k": 1}), ("large", {"k": 2})], settings, start_rps=100.0
    )
    assert [c.config for c in caps] == ["small", "large"]
    assert caps[0].overrides == {"k": 1}
    assert caps[0].low_rps <= 50.0 < caps[0].high_rps  # type: ignore[operator]
    assert caps[1].low_rps <= 200.0 < caps[1].high_rps  # type: ignore[operator]
    # both searches shared batches while both were running
    assert {label for label, _, _ in runner.batches[0]} == {"small", "large"}
    assert len(runner.batches) == max(len(runner.rates("small")), len(runner.rates("large")))


def test_slo_that_holds_nowhere_or_everywhere() -> None:
    settings = SearchSettings(tolerance=0.02, replications=1, max_replications=1)
    (never,) = find_capacities(FakeRunner(lambda p: 2.0), [("a", {})], settings, start_rps=1.0)
    assert never.max_rate_rps == 0.0
    assert "fails even at" in never.note
    (always,) = find_capacities(FakeRunner(lambda p: 0.5), [("a", {})], settings, start_rps=1e6)
    assert always.high_rps is None
    assert "holds at the ceiling" in always.note


def test_no_slo_is_a_config_error() -> None:
    settings = SearchSettings(replications=1, max_replications=1)
    with pytest.raises(ConfigError, match="no slo"):
        find_capacities(FakeRunner(lambda p: math.nan), [("a", {})], settings, start_rps=1.0)


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [
        ({"tolerance": 0.0}, "--tolerance"),
        ({"replications": 0}, "--replications"),
        ({"replications": 4, "max_replications": 2}, "--max-replications"),
    ],
)
def test_bad_settings_name_the_flag(kwargs: dict[str, Any], flag: str) -> None:
    with pytest.raises(ConfigError, match=flag):
        SearchSettings(**kwargs)


# --------------------------------------------------------------------------------------------
# the real thing: an M/M/4 pool against Erlang C


def _erlang_c(c: int, a: float) -> float:
    b = 1.0
    for k in range(1, c + 1):
        b = a * b / (k + a * b)
    return c * b / (c - a * (1.0 - b))


def _sojourn_exceeds(rate: float, c: int, mu: float, t: float) -> float:
    """P(S > t) for M/M/c FCFS: no wait w.p. 1 − C, else Exp(cμ − λ) wait + Exp(μ) service."""
    p_wait, theta = _erlang_c(c, rate / mu), c * mu - rate
    hypo = (mu * math.exp(-theta * t) - theta * math.exp(-mu * t)) / (mu - theta)
    return (1 - p_wait) * math.exp(-mu * t) + p_wait * hypo


def test_max_rate_on_mmc_matches_erlang_c() -> None:
    servers, mu, target = 4, 10.0, 0.6
    exact = brentq(lambda r: _sojourn_exceeds(r, servers, mu, target) - 0.05, 1.0, 39.99)
    assert exact == pytest.approx(34.22, abs=0.01)  # utilisation 0.86: the steep part
    profile = Profile.model_validate(
        {
            "name": "mm4",
            "stages": [
                {
                    "kind": "pool",
                    "name": "work",
                    "concurrency": servers,
                    "service": {"kind": "exponential", "mean": 1 / mu},
                }
            ],
        }
    )
    scenario = Scenario.model_validate(
        {
            "name": "mm4",
            "duration_s": 600,
            "warmup_s": 30,
            "seed": 5,
            "arrivals": {"kind": "poisson", "rate": 1},
            "slo": {"latency_s": {"p95": target}},
        }
    )
    settings = SearchSettings(tolerance=0.02, replications=3, max_replications=12, seed=5)
    with PointRunner(scenario, profile, workers=1) as runner:
        (cap,) = find_capacities(runner, [("baseline", {})], settings, start_rps=10.0)
    assert cap.high_rps is not None
    assert (cap.high_rps - cap.low_rps) / cap.low_rps <= settings.tolerance
    # the crossing lies in the final bracket, give or take the tolerance
    assert (
        cap.low_rps * (1 - settings.tolerance) <= exact <= cap.high_rps * (1 + settings.tolerance)
    )
    assert abs(cap.max_rate_rps / exact - 1) <= settings.tolerance
