"""Stage kinds in the whole engine: provider rate limits, continuous batching, caches, cost.

The stations have their own exact tests (test_batcher, test_llm_engine); these check that the
engine drives them as the profile says and that the numbers add up end to end.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from scipy import stats

from ragstress.analysis import summarize
from ragstress.config import Profile, Scenario
from ragstress.model import simulate
from ragstress.results import RunResult
from ragstress.workload import build_workload

# prompt = 20 query + 2 × 100 context = 220 tokens (+ system prompt); 50 output tokens
FIXED_MIX = {
    "query_tokens": {"kind": "deterministic", "value": 20},
    "top_k": 2,
    "chunk_tokens": {"kind": "deterministic", "value": 100},
    "output_tokens": {"kind": "deterministic", "value": 50},
}


def _scenario(duration: float, rate: float, **over: Any) -> Scenario:
    doc: dict[str, Any] = {
        "name": "t",
        "duration_s": duration,
        "seed": 5,
        "arrivals": {"kind": "constant", "rate": rate},
        "requests": FIXED_MIX,
    }
    doc.update(over)
    return Scenario.model_validate(doc)


def _simulate(scenario: Scenario, stages: list[dict[str, Any]]) -> RunResult:
    profile = Profile.model_validate({"name": "p", "stages": stages})
    return simulate(build_workload(scenario), profile)


LLM: dict[str, Any] = {
    "kind": "llm_api",
    "name": "generate",
    "concurrency": 1000,
    "ttft": {"kind": "deterministic", "value": 0.5},
    "time_per_output_token_s": 0.01,
    "system_prompt_tokens": 10,
}

# ---------------------------------------------------------------------- rate limits


def test_requests_per_minute_above_the_limit_give_the_predicted_429_share() -> None:
    # 2 req/s for 300 s against 60 RPM (bucket of 60, refill 1/s): the bucket lasts until
    # admitted = 60 + t, i.e. t = 60 s; after that one request per second gets in.
    # Admitted ≈ 60 + 300 = 360 of 600, so 240 are refused: a 429 share of 0.4.
    llm = {**LLM, "rate_limit": {"rpm": 60}}
    result = _simulate(_scenario(300, 2.0), [llm])
    refused = int((result.requests["outcome"] == "error_429").sum())
    assert len(result) == 600
    assert 239 <= refused <= 241


def test_tokens_per_minute_count_prompt_plus_max_output_tokens() -> None:
    # each call is charged 230 prompt + 100 max_output_tokens = 330 TPM tokens. TPM 16,800
    # refills 280 tokens/s; the bucket holds 2,800 (8 calls). Over 300 s at 2 req/s:
    # admitted ≈ 2,800/330 + 300·280/330 ≈ 8.5 + 254.5 = 263.
    llm = {**LLM, "rate_limit": {"tpm": 16_800, "tpm_burst": 2_800}, "max_output_tokens": 100}
    result = _simulate(_scenario(300, 2.0), [llm])
    admitted = int((result.requests["outcome"] == "ok").sum())
    assert 261 <= admitted <= 264
    refused = result.requests["outcome"] == "error_429"
    assert (result.requests["cost_usd"][refused] == 0).all()


def test_a_429_retry_after_is_honoured_and_the_retry_gets_in() -> None:
    # RPM 60 with a bucket of 1: one call per second. At 2 req/s every second call is
    # refused with retry-after 1 s (0.5 s short, rounded up), and openai-python retries
    # it once the bucket has refilled... where it meets the next arrival's competition.
    llm = {**LLM, "rate_limit": {"rpm": 60, "rpm_burst": 1}, "client": {"retry": "openai-python"}}
    result = _simulate(_scenario(20, 2.0), [llm])
    req = result.requests
    # more attempts than requests: the refused ones came back
    assert req["attempts"].sum() > len(result)
    # and the limiter never let more than one call per second through
    answered = result.answered()
    starts = np.sort(req["arrival_s"][answered] + req["latency_s"][answered] - 0.99)
    assert (np.diff(starts) >= 1.0 - 1e-9).all()


# ---------------------------------------------------------------------- continuous batching


ENGINE: dict[str, Any] = {
    "kind": "llm_engine",
    "name": "generate",
    "max_num_seqs": 64,
    "kv_cache_tokens": 100_000,
    "max_batched_tokens": 512,
    "step": {"base_s": 0.01, "per_prefill_token_s": 1e-5, "per_decode_seq_s": 0.001},
}


def test_a_lone_request_on_the_engine_takes_the_step_formula() -> None:
    # prompt 220 (input "prompt", no system prompt) fits one prefill step:
    # 0.01 + 220 · 1e-5 = 0.0122 s to the first token; then 49 decode steps of
    # 0.01 + 1 · 0.001 = 0.011 s
    result = _simulate(_scenario(30, 0.1), [ENGINE])
    req = result.requests
    np.testing.assert_allclose(req["ttft_s"], 0.0122, rtol=1e-12)
    np.testing.assert_allclose(req["latency_s"], 0.0122 + 49 * 0.011, rtol=1e-12)


def test_token_gaps_grow_with_load_on_one_replica() -> None:
    gaps = []
    for rate in (0.1, 20.0, 80.0):
        req = _simulate(_scenario(20, rate), [ENGINE]).requests
        gaps.append(float(np.mean((req["latency_s"] - req["ttft_s"]) / 49)))
    assert gaps[0] == pytest.approx(0.011)
    assert gaps[0] < gaps[1] < gaps[2]


def test_kv_capacity_caps_the_running_sequences() -> None:
    # each sequence reserves 220 + 50 = 270 tokens: 1,000 tokens of KV hold three
    engine = {**ENGINE, "kv_cache_tokens": 1000}
    result = _simulate(_scenario(20, 50.0), [engine])
    busy = result.timeseries["generate_busy"]  # type: ignore[index]
    assert busy.max() == 3
    assert (result.requests["outcome"] == "ok").all()


def test_engine_replicas_share_the_load() -> None:
    one = _simulate(_scenario(20, 60.0), [ENGINE]).requests["latency_s"].mean()
    two = _simulate(_scenario(20, 60.0), [{**ENGINE, "replicas": 2}]).requests["latency_s"]
    assert two.mean() < one


# ---------------------------------------------------------------------- batcher


def test_batcher_stage_batches_calls_in_the_engine() -> None:
    # 10 req/s, batches of up to 4, max wait 0.35 s: calls at 0.05, 0.15, 0.25, 0.35 fill
    # a batch at 0.35; batch time 0.02 + 20 tokens × 4 × 1e-4 = 0.028 s
    embed = {
        "kind": "batcher",
        "name": "embed",
        "max_batch_size": 4,
        "max_wait_s": 0.35,
        "batch_time": {"base_s": 0.02, "per_token_s": 1e-4},
    }
    req = _simulate(_scenario(0.4, 10.0), [embed]).requests
    np.testing.assert_allclose(req["embed_wait_s"], [0.3, 0.2, 0.1, 0.0], atol=1e-12)
    np.testing.assert_allclose(req["embed_service_s"], 0.028)


# ---------------------------------------------------------------------- caches


def test_key_cache_hits_exactly_when_a_fresh_entry_exists() -> None:
    cache = {
        "kind": "cache",
        "name": "answer_cache",
        "lookup": {"kind": "deterministic", "value": 0.001},
        "hits": {"kind": "key", "ttl_s": 20},
        "skips": ["generate"],
    }
    scenario = _scenario(
        300,
        1.0,
        arrivals={"kind": "poisson", "rate": 1.0},
        requests={**FIXED_MIX, "distinct_queries": 8},
    )
    workload = build_workload(scenario)
    profile = Profile.model_validate({"name": "p", "stages": [cache, LLM]})
    req = simulate(workload, profile).requests
    hit = req["generate_attempts"] == 0
    assert 0 < hit.sum() < len(hit)
    # replay: an entry is (re)stored when a miss finishes; a lookup decides 1 ms after arrival
    decide = req["arrival_s"] + 0.001
    finish = req["arrival_s"] + req["latency_s"]
    qid = workload.query_id
    expected = np.zeros(len(hit), dtype=bool)
    for i in np.argsort(decide, kind="stable"):
        stored = finish[(qid == qid[i]) & ~hit & (finish <= decide[i])]
        expected[i] = stored.size > 0 and decide[i] - stored.max() < 20
    np.testing.assert_array_equal(hit, expected)
    # a hit answers whole, after the lookup alone
    np.testing.assert_allclose(req["latency_s"][hit], 0.001)
    np.testing.assert_allclose(req["ttft_s"][hit], 0.001)


def test_probability_cache_hits_its_share_and_skips_only_what_it_covers() -> None:
    cache = {
        "kind": "cache",
        "name": "embed_cache",
        "lookup": {"kind": "deterministic", "value": 0.002},
        "hits": {"kind": "probability", "p": 0.3},
        "skips": ["embed"],
    }
    embed = {
        "kind": "pool",
        "name": "embed",
        "concurrency": 100,
        "service": {"kind": "deterministic", "value": 0.05},
    }
    result = _simulate(_scenario(200, 5.0), [cache, embed, LLM])
    req = result.requests
    hits = int((req["embed_attempts"] == 0).sum())
    n = len(result)
    lo, hi = stats.binom.interval(0.999, n, 0.3)
    assert lo <= hits <= hi
    assert (req["generate_attempts"] == 1).all()  # the LLM still runs on a hit


# ---------------------------------------------------------------------- cost


def test_cost_of_a_small_run_matches_the_hand_computation_to_the_cent() -> None:
    # 3,600 requests at 1/s over one hour.
    #   retrieve: $0.0001 per call, 2 replicas at $0.70/hour → 0.36 + 1.40
    #   generate: 230 prompt × $0.15/1M + 50 output × $0.60/1M = $0.0000645 per call
    #     [100, 200): 503 after service — served but not billed         (100 calls)
    #     [1000, 1100): stream cut after 10 tokens — 230 in + 10 out     (100 calls)
    #     [2000, 2100): 10× slower (9.9 s) with a 5 s timeout — abandoned, billed in full
    # generate: 3,400 × 0.0000645 + 100 × 0.0000405 = 0.2193 + 0.00405 = 0.22335
    # in total 0.36 + 1.40 + 0.22335 = 1.98335
    faults = [
        {
            "kind": "error",
            "stage": "generate",
            "start_s": 100,
            "end_s": 200,
            "status": 503,
            "after_service": True,
        },
        {
            "kind": "stream_truncate",
            "stage": "generate",
            "start_s": 1000,
            "end_s": 1100,
            "after_tokens": 10,
        },
        {
            "kind": "latency_multiplier",
            "stage": "generate",
            "start_s": 2000,
            "end_s": 2100,
            "factor": 10,
        },
    ]
    retrieve = {
        "kind": "pool",
        "name": "retrieve",
        "replicas": 2,
        "concurrency": 4,
        "service": {"kind": "deterministic", "value": 0.01},
        "price": {"per_call_usd": 0.0001, "per_replica_hour_usd": 0.70},
    }
    generate = {
        **LLM,
        "concurrency": 50,
        "client": {"timeout_s": 5},
        "price": {"per_1m_input_tokens_usd": 0.15, "per_1m_output_tokens_usd": 0.60},
    }
    result = _simulate(_scenario(3600, 1.0, faults=faults), [retrieve, generate])
    summary = summarize(result)
    total = summary["cost_usd"]["total"]
    assert total == pytest.approx(1.98335, abs=1e-9)
    assert round(total, 2) == 1.98
    outcomes = summary["outcomes"]
    assert (outcomes["error_5xx"], outcomes["error_stream"], outcomes["timeout"]) == (
        100,
        100,
        100,
    )
    assert summary["answered"] == 3300
    # per answer: the per-call charges over the 3,300 answers, the fixed $1.40 (2 replicas ×
    # $0.70 × 1 h) over the 3,299 answers finished inside the hour (the last one ends after)
    finish = result.requests["arrival_s"] + result.requests["latency_s"]
    assert int((result.answered() & (finish < 3600)).sum()) == 3299
    assert summary["cost_usd_per_1k_answers"] == pytest.approx(
        1000 * (0.58335 / 3300 + 1.40 / 3299)
    )
    assert math.isclose(result.requests["generate_cost_usd"].sum(), 0.22335, abs_tol=1e-12)


# ---------------------------------------------------------------------- time series


def test_sliding_p95_equals_a_percentile_per_window() -> None:
    from ragstress.model.engine import SLIDING_WINDOW_S, _sliding_p95

    rng = np.random.default_rng(11)
    done = np.sort(rng.uniform(0, 200, 3000))
    latency = rng.exponential(1.0, 3000)
    ends = np.arange(1.0, 231.0)
    got = _sliding_p95(done.tolist(), latency.tolist(), ends.tolist())
    for k, end in enumerate(ends):
        inside = latency[(done > end - SLIDING_WINDOW_S) & (done <= end)]
        if inside.size:
            assert got[k] == pytest.approx(np.percentile(inside, 95), rel=1e-12)
        else:
            assert math.isnan(got[k])


def test_per_interval_counts_add_up_to_the_requests() -> None:
    llm = {**LLM, "concurrency": 2, "client": {"timeout_s": 3, "retry": "openai-python"}}
    result = _simulate(_scenario(60, 2.0, arrivals={"kind": "poisson", "rate": 2.0}), [llm])
    ts = result.timeseries
    assert ts is not None
    assert ts["arrivals"].sum() == len(result)
    completed = sum(int(ts[f"completed_{o}"].sum()) for o in ("ok", "timeout", "error_5xx"))
    assert completed == len(result)
    assert ts["generate_sent"].sum() == result.requests["generate_attempts"].sum()
    # every call sent was eventually served (abandoned ones too): nothing is lost
    assert ts["generate_served"].sum() == ts["generate_sent"].sum()


def test_an_engine_call_overhead_shifts_first_token_and_end_alike() -> None:
    # the lone request of test_a_lone_request_on_the_engine_takes_the_step_formula, 7 ms later
    result = _simulate(
        _scenario(30, 0.1), [{**ENGINE, "call_overhead": {"kind": "deterministic", "value": 0.007}}]
    )
    req = result.requests
    np.testing.assert_allclose(req["ttft_s"], 0.007 + 0.0122, rtol=1e-12)
    np.testing.assert_allclose(req["latency_s"], 0.007 + 0.0122 + 49 * 0.011, rtol=1e-12)
