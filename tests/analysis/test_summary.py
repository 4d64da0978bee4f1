"""summarize: cost per answer and by stage, retry amplification, utilisation from the series."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ragstress.analysis import summarize
from ragstress.config import load_profile, load_scenario
from ragstress.config.profile import Profile
from ragstress.config.scenario import Scenario
from ragstress.model import simulate
from ragstress.results import Manifest, RunResult, read_run, write_run
from ragstress.results.store import read_summary
from ragstress.workload import build_workload

PROFILE: dict[str, Any] = {
    "name": "hand-built",
    "stages": [
        {
            "kind": "cache",
            "name": "cache",
            "lookup": {"kind": "deterministic", "value": 0.001},
            "hits": {"kind": "probability", "p": 0.2},
            "skips": ["embed"],
        },
        {
            "kind": "batcher",
            "name": "embed",
            "replicas": 2,
            "max_batch_size": 8,
            "max_wait_s": 0.01,
            "batch_time": {"base_s": 0.05},
            "price": {"per_replica_hour_usd": 1.8},
        },
        {
            "kind": "llm_api",
            "name": "generate",
            "concurrency": 4,
            "ttft": {"kind": "deterministic", "value": 0.2},
            "time_per_output_token_s": 0.01,
            "price": {"per_call_usd": 0.01},
        },
    ],
}
STAGES = ["cache", "embed", "generate"]
DURATION = 10.0
WARMUP = 2.0
SPAN = DURATION - WARMUP
NAN = math.nan


def _manifest(profile: dict[str, Any] | None = PROFILE) -> Manifest:
    return Manifest(
        source="simulated",
        scenario={
            "name": "hand",
            "duration_s": DURATION,
            "warmup_s": WARMUP,
            "arrivals": {"kind": "poisson", "rate": 1},
            "slo": {"latency_s": {"p95": 1.0}},
        },
        profile=profile,
        seed=0,
        stages=STAGES,
        duration_s=DURATION,
        ragstress_version="test",
        # embed: 2 replicas × $1.8/h × 10 s
        fixed_cost_usd=2 * 1.8 * DURATION / 3600,
    )


def _requests() -> dict[str, np.ndarray]:
    """Six requests; #0 arrives in the warm-up and #5 after the load, so four are in the
    window: #1 ok (0.5 s, good), #2 ok_degraded after a cache hit (2 s, too slow to be good),
    #3 timed out after 3 calls to generate, #4 failed at embed after 2 calls."""
    embed_attempts = np.array([1, 1, 0, 1, 2, 1], dtype=np.int64)
    generate_attempts = np.array([1, 1, 1, 3, 0, 1], dtype=np.int64)
    embed_cost = 0.001 * embed_attempts
    generate_cost = 0.01 * generate_attempts
    return {
        "id": np.arange(6, dtype=np.int64),
        "arrival_s": np.array([1.0, 2.0, 3.0, 4.0, 5.0, 11.0]),
        "outcome": np.array(["ok", "ok", "ok_degraded", "timeout", "error_5xx", "ok"]),
        "latency_s": np.array([0.5, 0.5, 2.0, 6.0, 0.3, 0.5]),
        "ttft_s": np.array([0.3, 0.3, 1.0, NAN, NAN, 0.3]),
        "attempts": embed_attempts + generate_attempts,
        "tokens_in": np.full(6, 10, dtype=np.int64),
        "tokens_out": np.full(6, 20, dtype=np.int64),
        "cost_usd": embed_cost + generate_cost,
        "cache_wait_s": np.zeros(6),
        "cache_service_s": np.full(6, 0.001),
        "cache_attempts": np.ones(6, dtype=np.int64),
        "cache_cost_usd": np.zeros(6),
        "embed_wait_s": np.array([0.0, 0.0, NAN, 0.0, 0.1, 0.0]),
        "embed_service_s": np.array([0.4, 0.4, NAN, 0.4, 0.8, 0.4]),
        "embed_attempts": embed_attempts,
        "embed_cost_usd": embed_cost,
        "generate_wait_s": np.array([0.0, 0.0, 0.0, 0.0, NAN, 0.0]),
        "generate_service_s": np.array([0.2, 0.2, 1.0, 2.0, NAN, 0.2]),
        "generate_attempts": generate_attempts,
        "generate_cost_usd": generate_cost,
    }


def _series() -> dict[str, np.ndarray]:
    """Samples at t = 0 … 11; those at t = 2 … 9 lie in the window [2, 10)."""
    return {
        "t_s": np.arange(12.0),
        "in_flight": np.zeros(12, dtype=np.int64),
        # window mean 1.5 batches in service over 2 replicas
        "embed_busy": np.array([9, 9, 1, 2, 1, 2, 1, 2, 1, 2, 9, 9], dtype=np.int64),
        "embed_queue": np.array([5, 5, 0, 0, 0, 0, 0, 0, 0, 8, 5, 5], dtype=np.int64),
        # window mean 2 calls in service over 4 slots
        "generate_busy": np.array([0, 0, 4, 4, 2, 2, 0, 0, 4, 0, 4, 4], dtype=np.int64),
        "generate_queue": np.zeros(12, dtype=np.int64),
    }


def _result(
    *, series: bool = True, profile: dict[str, Any] | None = PROFILE, drop: tuple[str, ...] = ()
) -> RunResult:
    requests = {k: v for k, v in _requests().items() if not k.endswith(drop)}
    return RunResult(
        manifest=_manifest(profile), requests=requests, timeseries=_series() if series else None
    )


def test_the_hand_built_profile_is_valid() -> None:
    profile = Profile.model_validate(PROFILE)
    assert [s.servers for s in profile.stages] == [0, 2, 4]


def test_cost_per_answer_and_per_good_answer() -> None:
    s = summarize(_result())
    assert s["requests"] == 4
    assert s["answered"] == 2
    assert s["goodput_rps"] == pytest.approx(1 / SPAN)
    # window charges: embed 0.001 × (1 + 0 + 1 + 2), generate 0.01 × (1 + 1 + 3 + 0)
    charges = 0.004 + 0.05
    fixed = 2 * 1.8 * SPAN / 3600
    assert s["cost_usd"]["per_request_charges"] == pytest.approx(charges)
    assert s["cost_usd"]["fixed"] == pytest.approx(fixed)
    assert s["cost_usd"]["total"] == pytest.approx(charges + fixed)
    assert s["cost_usd_per_answer"] == pytest.approx((charges + fixed) / 2)
    assert s["cost_usd_per_good_answer"] == pytest.approx(charges + fixed)
    assert s["cost_usd_per_1k_answers"] == pytest.approx(1000 * (charges + fixed) / 2)
    assert s["cost_usd_per_1k"] == pytest.approx(1000 * (charges + fixed) / 4)


def test_cost_by_stage_splits_charges_and_replica_hours() -> None:
    by_stage = summarize(_result())["cost_usd"]["by_stage"]
    assert list(by_stage) == STAGES
    assert by_stage["cache"] == {"per_request_charges": 0.0, "fixed": 0.0, "total": 0.0}
    assert by_stage["embed"]["per_request_charges"] == pytest.approx(0.004)
    assert by_stage["embed"]["fixed"] == pytest.approx(2 * 1.8 * SPAN / 3600)
    assert by_stage["embed"]["total"] == pytest.approx(0.004 + 2 * 1.8 * SPAN / 3600)
    assert by_stage["generate"]["per_request_charges"] == pytest.approx(0.05)
    assert by_stage["generate"]["fixed"] == 0.0
    assert by_stage["generate"]["total"] == pytest.approx(0.05)


def test_retry_amplification_counts_only_requests_that_reached_the_stage() -> None:
    s = summarize(_result())
    # embed: window attempts 1, 0, 1, 2 → 4 calls over 3 requests that sent any
    # generate: window attempts 1, 1, 3, 0 → 5 calls over 3 requests
    assert s["retry_amplification"] == {
        "cache": 1.0,
        "embed": pytest.approx(4 / 3),
        "generate": pytest.approx(5 / 3),
    }
    assert s["stages"]["embed"]["attempts"] == 4
    assert s["stages"]["generate"]["attempts"] == 5
    assert s["stages"]["cache"]["attempts"] == 4
    assert s["stages"]["embed"]["retry_amplification"] == pytest.approx(4 / 3)
    assert s["stages"]["generate"]["retry_amplification"] == pytest.approx(5 / 3)
    # existing figures are kept alongside
    assert s["attempts_per_request"] == pytest.approx((2 + 1 + 4 + 2) / 4)
    assert s["stages"]["generate"]["calls"] == 3


def test_retry_amplification_is_nan_when_no_request_reached_the_stage() -> None:
    result = _result()
    requests = dict(result.requests)
    requests["generate_attempts"] = np.zeros(6, dtype=np.int64)
    s = summarize(RunResult(manifest=result.manifest, requests=requests))
    assert math.isnan(s["retry_amplification"]["generate"])
    assert s["stages"]["generate"]["attempts"] == 0
    assert math.isnan(s["stages"]["generate"]["retry_amplification"])


def test_utilisation_comes_from_the_busy_series_in_the_window() -> None:
    stages = summarize(_result())["stages"]
    assert stages["embed"]["utilisation"] == pytest.approx(1.5 / 2)  # batches / replicas
    assert stages["generate"]["utilisation"] == pytest.approx(2.0 / 4)
    assert stages["embed"]["mean_queue"] == pytest.approx(1.0)
    assert stages["cache"]["servers"] == 0
    assert math.isnan(stages["cache"]["utilisation"])
    assert math.isnan(stages["cache"]["mean_queue"])


def test_utilisation_without_a_series_falls_back_to_service_times() -> None:
    stages = summarize(_result(series=False))["stages"]
    # window service sums: embed 0.4 + 0.4 + 0.8, generate 0.2 + 1.0 + 2.0
    assert stages["embed"]["utilisation"] == pytest.approx(1.6 / (2 * SPAN))
    assert stages["generate"]["utilisation"] == pytest.approx(3.2 / (4 * SPAN))
    assert math.isnan(stages["cache"]["utilisation"])
    assert math.isnan(stages["embed"]["mean_queue"])


def test_without_a_profile_nothing_is_charged_to_a_stage_and_utilisation_is_unknown() -> None:
    s = summarize(_result(profile=None))
    for stage in STAGES:
        assert s["cost_usd"]["by_stage"][stage]["fixed"] == 0.0
        assert s["stages"][stage]["servers"] is None
        assert math.isnan(s["stages"][stage]["utilisation"])
    assert s["cost_usd"]["by_stage"]["generate"]["total"] == pytest.approx(0.05)
    # the manifest's run-wide fixed cost still counts in the total
    assert s["cost_usd"]["fixed"] == pytest.approx(2 * 1.8 * SPAN / 3600)


def test_old_result_folders_without_the_new_columns(tmp_path: Path) -> None:
    result = _result(drop=("_attempts", "_cost_usd"))
    assert "embed_attempts" not in result.requests
    s = summarize(result)
    for stage in STAGES:
        assert math.isnan(s["retry_amplification"][stage])
        assert math.isnan(s["stages"][stage]["attempts"])
        assert math.isnan(s["cost_usd"]["by_stage"][stage]["per_request_charges"])
    # what does not need the columns is still there
    assert s["cost_usd_per_answer"] == pytest.approx(s["cost_usd"]["total"] / 2)
    assert s["stages"]["embed"]["utilisation"] == pytest.approx(0.75)
    # and the summary still writes as JSON (NaN → null) and reads back
    write_run(tmp_path, result, s)
    back = read_summary(tmp_path)
    assert back is not None
    assert back["retry_amplification"]["embed"] is None
    assert summarize(read_run(tmp_path))["requests"] == 4


def test_no_answers_gives_nan_costs_per_answer() -> None:
    result = _result()
    requests = dict(result.requests)
    requests["outcome"] = np.array(["shed"] * 6)
    s = summarize(RunResult(manifest=result.manifest, requests=requests))
    assert math.isnan(s["cost_usd_per_answer"])
    assert math.isnan(s["cost_usd_per_good_answer"])
    assert s["cost_usd"]["total"] > 0
    json.dumps(s)  # NaN figures, but plain Python types


# ------------------------------------------------------------------------------ simulated


@pytest.fixture(scope="module")
def steady() -> RunResult:
    scenario = load_scenario("scenarios/steady.yaml")
    short = Scenario.model_validate(
        {**scenario.model_dump(mode="json"), "duration_s": 120, "warmup_s": 20}
    )
    return simulate(build_workload(short), load_profile("profiles/hosted-api.yaml"))


def test_simulated_cost_by_stage_adds_up_to_the_total(steady: RunResult) -> None:
    s = summarize(steady)
    by_stage = s["cost_usd"]["by_stage"]
    assert set(by_stage) == set(steady.stages)
    assert sum(v["per_request_charges"] for v in by_stage.values()) == pytest.approx(
        s["cost_usd"]["per_request_charges"], rel=1e-9
    )
    assert sum(v["fixed"] for v in by_stage.values()) == pytest.approx(
        s["cost_usd"]["fixed"], rel=1e-9
    )
    assert s["cost_usd"]["fixed"] > 0  # hosted-api pays for retrieve replicas
    assert s["cost_usd_per_good_answer"] >= s["cost_usd_per_answer"] > 0


def test_simulated_utilisation_agrees_with_service_times_without_retries(
    steady: RunResult,
) -> None:
    # without retries or abandoned calls, busy time ≈ the requests' service times: the
    # sampled series and the old formula must agree to within sampling noise (a stage busy 2 %
    # of the time with 7 ms calls is seen by few samples: an absolute tolerance for those)
    with_series = summarize(steady)["stages"]
    without = summarize(
        RunResult(manifest=steady.manifest, requests=steady.requests, timeseries=None)
    )["stages"]
    for stage in steady.stages:
        assert with_series[stage]["retry_amplification"] == pytest.approx(1.0)
        assert with_series[stage]["utilisation"] == pytest.approx(
            without[stage]["utilisation"], rel=0.05, abs=0.01
        )
        assert 0 < with_series[stage]["utilisation"] < 1
