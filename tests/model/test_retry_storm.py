"""The shipped retry-storm scenario: a 60 s brownout tips a near-capacity service into a
metastable failure under openai-python's retries, and the same service recovers without
retries or with a breaker and jittered backoff. Asserted from the time series."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ragstress.config import Profile, load_profile, load_scenario
from ragstress.config.policy import RetryPolicy
from ragstress.model import simulate
from ragstress.results import RunResult
from ragstress.workload import build_workload

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "scenarios" / "retry-storm.yaml"
TRIGGER_END = 180.0
AFTER = (300.0, 600.0)  # long after the brownout ended, still under the same load


def _run(profile: Profile) -> RunResult:
    return simulate(build_workload(load_scenario(SCENARIO)), profile)


def _per_second(result: RunResult, name: str, window: tuple[float, float]) -> float:
    ts = result.timeseries
    assert ts is not None
    t = ts["t_s"]
    sel = (t >= window[0]) & (t < window[1])
    return float(ts[name][sel].mean())


def _no_retry(profile: Profile) -> Profile:
    stages = []
    for stage in profile.stages:
        if stage.name == "generate":
            client = stage.client.model_copy(
                update={"retry": RetryPolicy.model_validate("no-retry")}
            )
            stages.append(stage.model_copy(update={"client": client}))
        else:
            stages.append(stage)
    return profile.model_copy(update={"stages": tuple(stages)})


@pytest.fixture(scope="module")
def storm() -> RunResult:
    return _run(load_profile(ROOT / "profiles" / "retry-storm.yaml"))


def test_the_brownout_is_the_only_trigger(storm: RunResult) -> None:
    # before the brownout the service keeps up: nearly every arrival is answered
    arrivals = _per_second(storm, "arrivals", (60.0, 120.0))
    assert _per_second(storm, "completed_ok", (60.0, 120.0)) >= 0.95 * arrivals


def test_goodput_stays_collapsed_after_the_trigger_while_throughput_stays_high(
    storm: RunResult,
) -> None:
    arrivals = _per_second(storm, "arrivals", AFTER)
    goodput = _per_second(storm, "completed_ok", AFTER)
    served = _per_second(storm, "generate_served", AFTER)
    sent = _per_second(storm, "generate_sent", AFTER)
    assert goodput <= 0.02 * arrivals  # collapsed, minutes after the trigger ended
    assert served >= arrivals  # the provider works flat out — on abandoned calls
    assert sent >= 2.5 * arrivals  # every request now makes (nearly) all 3 attempts
    # the backlog keeps growing: it is not draining, this is not a slow recovery
    ts = storm.timeseries
    assert ts is not None
    queue = ts["generate_queue"]
    t = ts["t_s"]
    assert queue[np.searchsorted(t, AFTER[1]) - 1] > queue[np.searchsorted(t, AFTER[0])]
    assert AFTER[0] > TRIGGER_END


@pytest.mark.parametrize("variant", ["no-retry", "guarded"])
def test_without_retries_or_with_a_breaker_it_recovers(variant: str) -> None:
    if variant == "no-retry":
        profile = _no_retry(load_profile(ROOT / "profiles" / "retry-storm.yaml"))
    else:
        profile = load_profile(ROOT / "profiles" / "retry-storm-guarded.yaml")
    result = _run(profile)
    arrivals = _per_second(result, "arrivals", AFTER)
    assert _per_second(result, "completed_ok", AFTER) >= 0.95 * arrivals
    assert _per_second(result, "generate_sent", AFTER) <= 1.05 * arrivals
