"""Engine behaviours beyond queueing theory: progress, TTFT rules, empty runs, fixed cost."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ragstress.config import Profile, Scenario
from ragstress.model import simulate
from ragstress.workload import build_workload


def _scenario(**over: Any) -> Scenario:
    doc: dict[str, Any] = {
        "name": "t",
        "duration_s": 60,
        "seed": 9,
        "arrivals": {"kind": "poisson", "rate": 5},
    }
    doc.update(over)
    return Scenario.model_validate(doc)


POOL = {
    "kind": "pool",
    "name": "embed",
    "concurrency": 2,
    "service": {"kind": "exponential", "mean": 0.1},
}
LLM = {
    "kind": "llm_api",
    "name": "generate",
    "concurrency": 8,
    "ttft": {"kind": "deterministic", "value": 0.25},
    "time_per_output_token_s": 0.01,
}


def test_progress_is_monotonic_and_ends_at_one() -> None:
    seen: list[float] = []
    profile = Profile.model_validate({"name": "p", "stages": [POOL]})
    simulate(build_workload(_scenario()), profile, progress=seen.append)
    assert seen == sorted(seen)
    assert seen[-1] == 1.0
    assert len(seen) > 30  # once per simulated second


def test_without_an_llm_stage_ttft_is_the_whole_latency() -> None:
    profile = Profile.model_validate({"name": "p", "stages": [POOL]})
    r = simulate(build_workload(_scenario()), profile)
    np.testing.assert_array_equal(r.requests["ttft_s"], r.requests["latency_s"])
    assert (r.requests["tokens_out"] == 0).all()


def test_ttft_is_wait_plus_first_token_offset_of_the_last_llm_stage() -> None:
    profile = Profile.model_validate({"name": "p", "stages": [POOL, LLM]})
    w = build_workload(_scenario())
    r = simulate(w, profile)
    req = r.requests
    expected = req["embed_wait_s"] + req["embed_service_s"] + req["generate_wait_s"] + 0.25
    np.testing.assert_allclose(req["ttft_s"], expected, rtol=0, atol=1e-9)
    # service = first token + one step per further token
    np.testing.assert_allclose(
        req["generate_service_s"], 0.25 + (w.output_tokens - 1) * 0.01, atol=1e-12
    )


def test_an_empty_workload_gives_an_empty_result() -> None:
    profile = Profile.model_validate({"name": "p", "stages": [POOL, LLM]})
    r = simulate(build_workload(_scenario(arrivals={"kind": "poisson", "rate": 0})), profile)
    assert len(r) == 0
    assert r.timeseries is not None
    assert r.timeseries["in_flight"].tolist()[-1] == 0


def test_replica_hours_are_charged_for_the_run_duration() -> None:
    priced = dict(POOL, replicas=3, price={"per_replica_hour_usd": 2.0})
    profile = Profile.model_validate({"name": "p", "stages": [priced]})
    r = simulate(build_workload(_scenario(duration_s=1800)), profile)
    assert r.manifest.fixed_cost_usd == 3 * 2.0 * 0.5
    assert math.isclose(r.requests["cost_usd"].sum(), 0.0)


def test_the_system_drains_and_the_series_ends_empty() -> None:
    profile = Profile.model_validate({"name": "p", "stages": [POOL, LLM]})
    r = simulate(build_workload(_scenario()), profile)
    assert r.timeseries is not None
    assert r.timeseries["in_flight"][-1] == 0
    assert not np.isnan(r.requests["latency_s"]).any()
