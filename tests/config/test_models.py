"""Direct tests of the config models: frozen, strict, shorthands, and distribution moments."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from ragstress.config import (
    Deterministic,
    Empirical,
    Exponential,
    Gamma,
    LogNormal,
    PoissonArrivals,
    PoolStage,
    Profile,
    Scenario,
)
from ragstress.config.scenario import ConstantRate, RampRate

N = 200_000

PROFILE = {
    "name": "demo",
    "stages": [
        {"kind": "pool", "name": "embed", "service": {"kind": "exponential", "mean": 0.01}},
        {
            "kind": "llm_api",
            "name": "generate",
            "concurrency": 8,
            "ttft": {"kind": "lognormal", "mean": 0.3, "p99": 1.2},
            "time_per_output_token_s": 0.01,
        },
    ],
}


def test_models_are_frozen() -> None:
    profile = Profile.model_validate(PROFILE)
    with pytest.raises(ValidationError, match="frozen"):
        profile.name = "other"  # type: ignore[misc]
    stage = profile.stages[0]
    assert isinstance(stage, PoolStage)
    with pytest.raises(ValidationError, match="frozen"):
        stage.replicas = 3  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        stage.service.mean = 1.0  # type: ignore[misc,union-attr]
    assert profile == Profile.model_validate(PROFILE)


def test_unknown_keys_are_rejected() -> None:
    with pytest.raises(ValidationError) as info:
        Profile.model_validate({**PROFILE, "colour": "blue"})
    assert [e["type"] for e in info.value.errors()] == ["extra_forbidden"]
    with pytest.raises(ValidationError, match="extra"):
        Exponential.model_validate({"kind": "exponential", "mean": 1.0, "sigma": 2.0})
    with pytest.raises(ValidationError, match="extra"):
        ConstantRate.model_validate({"kind": "constant", "rps": 1.0, "jitter": 0.1})


def test_rate_number_is_constant_rate() -> None:
    scenario = Scenario.model_validate(
        {"name": "s", "duration_s": 60, "arrivals": {"kind": "poisson", "rate": 50}}
    )
    assert isinstance(scenario.arrivals, PoissonArrivals)
    assert scenario.arrivals.rate == ConstantRate(kind="constant", rps=50.0)
    as_float = Scenario.model_validate(
        {"name": "s", "duration_s": 60, "arrivals": {"kind": "gamma", "cv": 2, "rate": 2.5}}
    )
    assert as_float.arrivals.rate == ConstantRate(kind="constant", rps=2.5)  # type: ignore[union-attr]


def test_rate_shapes_are_not_rewritten() -> None:
    ramp = {"kind": "ramp", "from_rps": 1, "to_rps": 10}
    scenario = Scenario.model_validate(
        {"name": "s", "duration_s": 60, "arrivals": {"kind": "constant", "rate": ramp}}
    )
    assert scenario.arrivals.rate == RampRate(kind="ramp", from_rps=1, to_rps=10)  # type: ignore[union-attr]


def test_rate_bool_is_not_a_number() -> None:
    with pytest.raises(ValidationError):
        Scenario.model_validate(
            {"name": "s", "duration_s": 60, "arrivals": {"kind": "poisson", "rate": True}}
        )


@pytest.mark.parametrize(("mean", "p99"), [(0.1, 0.4), (0.5, 0.6), (24.0, 200.0)])
def test_lognormal_p99_gives_requested_p99_and_mean(mean: float, p99: float) -> None:
    dist = LogNormal(kind="lognormal", mean=mean, p99=p99)
    x = dist.draw(np.random.default_rng(7), N)
    assert x.mean() == pytest.approx(mean, rel=0.02)
    assert np.quantile(x, 0.99) == pytest.approx(p99, rel=0.02)
    assert dist.expected() == mean


def test_lognormal_cv_gives_requested_mean_and_cv() -> None:
    dist = LogNormal(kind="lognormal", mean=0.2, cv=0.5)
    x = dist.draw(np.random.default_rng(11), N)
    assert x.mean() == pytest.approx(0.2, rel=0.02)
    assert x.std() / x.mean() == pytest.approx(0.5, rel=0.02)
    assert dist.scv() == pytest.approx(0.25)


def test_lognormal_needs_exactly_one_spread() -> None:
    with pytest.raises(ValidationError, match="exactly one of cv or p99"):
        LogNormal(kind="lognormal", mean=1.0, cv=0.5, p99=3.0)
    with pytest.raises(ValidationError, match="exactly one of cv or p99"):
        LogNormal(kind="lognormal", mean=1.0)


DISTRIBUTIONS = [
    Exponential(kind="exponential", mean=0.25),
    Deterministic(kind="deterministic", value=3.0),
    Gamma(kind="gamma", mean=2.0, cv=0.5),
    Gamma(kind="gamma", mean=0.05, cv=2.0),
    Empirical(kind="empirical", values=[0.1, 0.2, 0.4, 1.6]),
    Empirical(kind="empirical", values=[1.0, 2.0, 10.0], weights=[5.0, 4.0, 1.0]),
    LogNormal(kind="lognormal", mean=1.0, cv=0.3),
]


@pytest.mark.parametrize("dist", DISTRIBUTIONS, ids=lambda d: f"{d.kind}")
def test_mean_and_scv_match_samples(
    dist: Exponential | Deterministic | Gamma | Empirical | LogNormal,
) -> None:
    x = dist.draw(np.random.default_rng(2024), N)
    assert x.shape == (N,)
    assert (x >= 0).all()
    assert x.mean() == pytest.approx(dist.expected(), rel=0.02)
    scv = x.var() / x.mean() ** 2
    assert scv == pytest.approx(dist.scv(), rel=0.03, abs=1e-12)


def test_empirical_exact_moments() -> None:
    dist = Empirical(kind="empirical", values=[1.0, 3.0], weights=[3.0, 1.0])
    assert dist.expected() == pytest.approx(1.5)
    assert dist.scv() == pytest.approx(0.75 / 2.25)
    assert Empirical(kind="empirical", values=[0.0]).scv() == 0.0


def test_deterministic_draws_consume_no_randomness() -> None:
    rng = np.random.default_rng(5)
    before = rng.bit_generator.state
    assert (Deterministic(kind="deterministic", value=2.0).draw(rng, 10) == 2.0).all()
    assert rng.bit_generator.state == before
