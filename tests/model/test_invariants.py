"""Invariants every simulated run must keep: determinism, conservation, Little's law, TTFT, cost."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ragstress.config import Profile, Scenario, load_profile, load_scenario
from ragstress.model import simulate
from ragstress.results import OUTCOMES, RunResult, write_run
from ragstress.results.schema import stage_columns
from ragstress.workload import build_workload


def _scenario(rate: float, duration_s: float, seed: int = 7, **extra: Any) -> Scenario:
    return Scenario.model_validate(
        {
            "name": "invariants",
            "duration_s": duration_s,
            "seed": seed,
            "arrivals": {"kind": "poisson", "rate": rate},
            **extra,
        }
    )


def _rag_profile(retrieve_queue_limit: int | None = None) -> Profile:
    """embed → retrieve → generate, each stage loaded to about ρ = 0.75–0.85 at 6 req/s."""
    retrieve: dict[str, Any] = {
        "kind": "pool",
        "name": "retrieve",
        "replicas": 2,
        "concurrency": 2,
        "service": {"kind": "exponential", "mean": 0.5},
    }
    if retrieve_queue_limit is not None:
        retrieve["queue_limit"] = retrieve_queue_limit
    return Profile.model_validate(
        {
            "name": "rag",
            "stages": [
                {
                    "kind": "pool",
                    "name": "embed",
                    "concurrency": 2,
                    "service": {"kind": "lognormal", "mean": 0.2, "cv": 0.5},
                    "per_token_s": 0.002,
                    "input_tokens": "query",
                    "price": {"per_1m_input_tokens_usd": 0.02},
                },
                retrieve,
                {
                    "kind": "llm_api",
                    "name": "generate",
                    "concurrency": 16,
                    "ttft": {"kind": "lognormal", "mean": 0.3, "cv": 0.5},
                    "prefill_per_token_s": 0.00002,
                    "time_per_output_token_s": 0.01,
                    "system_prompt_tokens": 150,
                    "price": {"per_1m_input_tokens_usd": 0.15, "per_1m_output_tokens_usd": 0.6},
                },
            ],
        }
    )


def _run(scenario: Scenario, profile: Profile, seed: int | None = None) -> RunResult:
    return simulate(build_workload(scenario, seed), profile)


def _assert_same_columns(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert list(a) == list(b)
    for name, x in a.items():
        y = b[name]
        assert x.dtype == y.dtype, name
        if np.issubdtype(x.dtype, np.floating):
            assert np.array_equal(x, y, equal_nan=True), name
        else:
            assert np.array_equal(x, y), name


# --- determinism -----------------------------------------------------------------------------


def test_same_inputs_give_bit_identical_results(tmp_path: Path) -> None:
    # a queue limit under overload, so some columns hold NaN (stages a shed request never saw)
    profile = _rag_profile(retrieve_queue_limit=1)
    first = _run(_scenario(7.5, 600.0, seed=11), profile)
    second = _run(_scenario(7.5, 600.0, seed=11), _rag_profile(retrieve_queue_limit=1))
    assert (first.requests["outcome"] == "shed").any()
    assert np.isnan(first.requests["generate_service_s"]).any()
    _assert_same_columns(first.requests, second.requests)
    assert first.timeseries is not None
    assert second.timeseries is not None
    _assert_same_columns(first.timeseries, second.timeseries)

    a = write_run(tmp_path / "a", first)
    b = write_run(tmp_path / "b", second)
    assert (a / "requests.csv").read_bytes() == (b / "requests.csv").read_bytes()
    assert (a / "timeseries.csv").read_bytes() == (b / "timeseries.csv").read_bytes()


@pytest.mark.parametrize(
    ("scenario_file", "profile_file"),
    [
        ("retry-storm.yaml", "retry-storm.yaml"),
        ("retry-storm.yaml", "retry-storm-guarded.yaml"),
        ("launch-spike.yaml", "full-rag.yaml"),
        ("steady.yaml", "self-hosted.yaml"),
    ],
)
def test_faults_retries_caches_and_engines_are_deterministic(
    scenario_file: str, profile_file: str, tmp_path: Path
) -> None:
    # everything random in retries, jitter, fault rolls, cache hits and engine steps comes
    # from named streams: two runs write the same bytes
    root = Path(__file__).resolve().parents[2]
    scenario = load_scenario(root / "scenarios" / scenario_file)
    short = scenario.model_copy(update={"duration_s": min(scenario.duration_s, 300.0)})
    runs = [
        simulate(build_workload(short), load_profile(root / "profiles" / profile_file))
        for _ in range(2)
    ]
    a = write_run(tmp_path / "a", runs[0])
    b = write_run(tmp_path / "b", runs[1])
    assert (a / "requests.csv").read_bytes() == (b / "requests.csv").read_bytes()
    assert (a / "timeseries.csv").read_bytes() == (b / "timeseries.csv").read_bytes()


def test_different_seeds_give_different_results() -> None:
    scenario = _scenario(6.0, 300.0, seed=11)
    one = _run(scenario, _rag_profile())
    other = _run(scenario, _rag_profile(), seed=12)
    assert other.manifest.seed == 12
    assert not np.array_equal(one.requests["arrival_s"], other.requests["arrival_s"])
    n = min(len(one), len(other))
    assert not np.array_equal(one.requests["latency_s"][:n], other.requests["latency_s"][:n])
    assert not np.array_equal(
        one.requests["embed_service_s"][:n], other.requests["embed_service_s"][:n]
    )


# --- conservation ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stable_run() -> tuple[Scenario, RunResult]:
    """A long, stable run of the three-stage pipeline (about 24,000 requests)."""
    scenario = _scenario(6.0, 4000.0, seed=3)
    return scenario, _run(scenario, _rag_profile())


def test_every_arrival_has_exactly_one_outcome(stable_run: tuple[Scenario, RunResult]) -> None:
    scenario, result = stable_run
    workload = build_workload(scenario)
    req = result.requests
    n = len(workload)
    assert n > 20_000
    assert len(result) == n
    for name, col in req.items():
        assert col.shape == (n,), name
    assert np.array_equal(req["id"], np.arange(n))
    assert np.array_equal(req["arrival_s"], workload.arrival_s)
    assert set(np.unique(req["outcome"])) <= set(OUTCOMES)
    # nothing limits this profile, so everyone is answered
    assert (req["outcome"] == "ok").all()
    assert np.isfinite(req["latency_s"]).all()


def test_ok_latency_covers_every_stage(stable_run: tuple[Scenario, RunResult]) -> None:
    _, result = stable_run
    req = result.requests
    ok = req["outcome"] == "ok"
    assert ok.any()
    total = np.zeros(int(ok.sum()))
    for stage in result.stages:
        wait_col, service_col = stage_columns(stage)
        wait, service = req[wait_col][ok], req[service_col][ok]
        assert np.isfinite(wait).all()
        assert np.isfinite(service).all()
        assert (wait >= 0).all()
        assert (service >= 0).all()
        total += wait + service
    latency = req["latency_s"][ok]
    assert np.isfinite(latency).all()
    assert (latency >= total - 1e-9).all()


def _two_stage_limited(queue_limit: int | None) -> Profile:
    back: dict[str, Any] = {
        "kind": "pool",
        "name": "back",
        "concurrency": 1,
        "service": {"kind": "exponential", "mean": 1.0},
        "price": {"per_call_usd": 0.01},
    }
    if queue_limit is not None:
        back["queue_limit"] = queue_limit
    return Profile.model_validate(
        {
            "name": "limited",
            "stages": [
                {
                    "kind": "pool",
                    "name": "front",
                    "concurrency": 4,
                    "service": {"kind": "deterministic", "value": 0.1},
                    "price": {"per_call_usd": 0.001},
                },
                back,
            ],
        }
    )


def test_shedding_only_with_a_queue_limit() -> None:
    scenario = _scenario(2.0, 300.0, seed=5)  # twice what "back" can serve
    unlimited = _run(scenario, _two_stage_limited(None))
    assert (unlimited.requests["outcome"] == "ok").all()

    result = _run(scenario, _two_stage_limited(2))
    req = result.requests
    shed = req["outcome"] == "shed"
    ok = req["outcome"] == "ok"
    assert shed.sum() > 0
    assert (shed | ok).all()
    # shed at "back": served by "front", never by "back"
    assert np.isfinite(req["front_service_s"][shed]).all()
    assert np.isnan(req["back_service_s"][shed]).all()
    assert np.isnan(req["back_wait_s"][shed]).all()
    assert np.isfinite(req["back_service_s"][ok]).all()
    # shedding happens on arrival at "back": right after "front" is done
    front_done = req["front_wait_s"][shed] + req["front_service_s"][shed]
    assert req["latency_s"][shed] == pytest.approx(front_done, abs=1e-9)
    # a shed request is billed only for what served it
    assert req["cost_usd"][shed] == pytest.approx(0.001)
    assert req["cost_usd"][ok] == pytest.approx(0.011)
    # the queue never grows past its limit
    assert result.timeseries is not None
    assert result.timeseries["back_queue"].max() <= 2


# --- Little's law ----------------------------------------------------------------------------


def test_littles_law_end_to_end_and_per_stage(stable_run: tuple[Scenario, RunResult]) -> None:
    scenario, result = stable_run
    req, series = result.requests, result.timeseries
    assert series is not None
    during = series["t_s"] < scenario.duration_s
    rate = len(result) / scenario.duration_s

    in_flight = series["in_flight"][during].mean()
    assert in_flight > 5  # a loaded system, not a trivially empty one
    assert in_flight == pytest.approx(rate * req["latency_s"].mean(), rel=0.03)

    for stage in result.stages:
        queue = series[f"{stage}_queue"][during].mean()
        wait = req[f"{stage}_wait_s"].mean()
        assert queue > 0.2, stage  # every stage does some queueing here
        assert queue == pytest.approx(rate * wait, rel=0.05), stage
        busy = series[f"{stage}_busy"][during].mean()
        assert busy == pytest.approx(rate * req[f"{stage}_service_s"].mean(), rel=0.03), stage


# --- time to first token ---------------------------------------------------------------------


def test_ttft_never_exceeds_latency(stable_run: tuple[Scenario, RunResult]) -> None:
    _, result = stable_run
    req = result.requests
    ok = req["outcome"] == "ok"
    ttft, latency = req["ttft_s"][ok], req["latency_s"][ok]
    assert np.isfinite(ttft).all()
    assert (ttft > 0).all()
    assert (ttft <= latency).all()
    # the first token comes after the earlier stages and the LLM's own queue
    before = req["embed_wait_s"] + req["embed_service_s"] + req["retrieve_wait_s"]
    before = before + req["retrieve_service_s"] + req["generate_wait_s"]
    assert (ttft >= before[ok] - 1e-9).all()


# --- cost ------------------------------------------------------------------------------------


def test_cost_of_a_tiny_run_matches_hand_arithmetic() -> None:
    query, top_k, chunk, output, system = 12, 4, 250, 80, 100
    embed_call, embed_per_1m_in = 0.002, 20.0
    retrieve_call, retrieve_hourly, retrieve_replicas = 0.01, 3.6, 2
    llm_per_1m_in, llm_per_1m_out = 1500.0, 6000.0
    embed_s, retrieve_s, ttft_s, tpot_s = 0.01, 0.05, 0.2, 0.02

    scenario = Scenario.model_validate(
        {
            "name": "tiny",
            "duration_s": 3.0,
            "arrivals": {"kind": "constant", "rate": 1.0},
            "requests": {
                "query_tokens": {"kind": "deterministic", "value": query},
                "top_k": top_k,
                "chunk_tokens": {"kind": "deterministic", "value": chunk},
                "output_tokens": {"kind": "deterministic", "value": output},
            },
        }
    )
    profile = Profile.model_validate(
        {
            "name": "priced",
            "stages": [
                {
                    "kind": "pool",
                    "name": "embed",
                    "service": {"kind": "deterministic", "value": embed_s},
                    "input_tokens": "query",
                    "price": {
                        "per_call_usd": embed_call,
                        "per_1m_input_tokens_usd": embed_per_1m_in,
                    },
                },
                {
                    "kind": "pool",
                    "name": "retrieve",
                    "replicas": retrieve_replicas,
                    "service": {"kind": "deterministic", "value": retrieve_s},
                    "price": {
                        "per_call_usd": retrieve_call,
                        "per_replica_hour_usd": retrieve_hourly,
                    },
                },
                {
                    "kind": "llm_api",
                    "name": "generate",
                    "concurrency": 4,
                    "ttft": {"kind": "deterministic", "value": ttft_s},
                    "time_per_output_token_s": tpot_s,
                    "system_prompt_tokens": system,
                    "price": {
                        "per_1m_input_tokens_usd": llm_per_1m_in,
                        "per_1m_output_tokens_usd": llm_per_1m_out,
                    },
                },
            ],
        }
    )
    workload = build_workload(scenario)
    assert workload.arrival_s.tolist() == [0.5, 1.5, 2.5]
    result = simulate(workload, profile)
    req = result.requests

    # by hand: 0.002 + 12·20/1e6 = 0.00224 (embed); 0.01 (retrieve);
    # prompt 100 + 12 + 4·250 = 1112 → 1112·1500/1e6 + 80·6000/1e6 = 1.668 + 0.48 = 2.148
    prompt = system + query + top_k * chunk
    embed_cost = embed_call + query * embed_per_1m_in / 1e6
    llm_cost = prompt * llm_per_1m_in / 1e6 + output * llm_per_1m_out / 1e6
    per_request = embed_cost + retrieve_call + llm_cost
    assert prompt == 1112
    assert per_request == pytest.approx(2.16024, abs=1e-12)
    assert req["cost_usd"].tolist() == pytest.approx([per_request] * 3, rel=1e-12)
    assert round(float(req["cost_usd"].sum()), 2) == round(3 * per_request, 2) == 6.48
    # replica-hours are billed for the run, not per request: 2 × $3.60/h × 3 s
    fixed = retrieve_replicas * retrieve_hourly * scenario.duration_s / 3600
    assert result.manifest.fixed_cost_usd == pytest.approx(fixed, rel=1e-12)
    assert fixed == pytest.approx(0.006)

    assert (req["outcome"] == "ok").all()
    assert req["tokens_in"].tolist() == [prompt] * 3
    assert req["tokens_out"].tolist() == [output] * 3
    # nobody waits; the timings add up by hand as well
    llm_s = ttft_s + (output - 1) * tpot_s
    assert req["latency_s"].tolist() == pytest.approx([embed_s + retrieve_s + llm_s] * 3)
    assert req["ttft_s"].tolist() == pytest.approx([embed_s + retrieve_s + ttft_s] * 3)
    for stage in ("embed", "retrieve", "generate"):
        assert req[f"{stage}_wait_s"].tolist() == [0.0, 0.0, 0.0]
