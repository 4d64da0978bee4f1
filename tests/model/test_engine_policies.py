"""Client policies in the engine, on virtual time, with exact event logs.

Constant arrivals at 0.5, 1.5, 2.5, … (one per second) and deterministic service times make
every instant below computable by hand; the comments give the arithmetic.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from ragstress.analysis import summarize
from ragstress.config import Profile, Scenario
from ragstress.config.policy import retry_preset
from ragstress.model import Event, simulate
from ragstress.model.policies import Retrier
from ragstress.results import RunResult
from ragstress.seeding import stream
from ragstress.workload import build_workload

FIXED_MIX = {
    "query_tokens": {"kind": "deterministic", "value": 20},
    "top_k": 2,
    "chunk_tokens": {"kind": "deterministic", "value": 100},
    "output_tokens": {"kind": "deterministic", "value": 50},
}


def _scenario(n: int, *, rate: float = 1.0, faults: list[dict[str, Any]] | None = None) -> Scenario:
    return Scenario.model_validate(
        {
            "name": "t",
            "duration_s": n / rate,
            "seed": 3,
            "arrivals": {"kind": "constant", "rate": rate},
            "requests": FIXED_MIX,
            "faults": faults or [],
        }
    )


def _pool(name: str = "work", service: float = 2.0, **over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "kind": "pool",
        "name": name,
        "concurrency": 1,
        "service": {"kind": "deterministic", "value": service},
    }
    doc.update(over)
    return doc


def _run(scenario: Scenario, stages: list[dict[str, Any]]) -> tuple[RunResult, list[Event]]:
    profile = Profile.model_validate({"name": "p", "stages": stages})
    events: list[Event] = []
    result = simulate(build_workload(scenario), profile, log=events.append)
    return result, events


def _log(events: list[Event], *kinds: str) -> list[tuple[float, str, int, int, str | float]]:
    return [
        (round(e.t, 9), e.kind, e.request, e.attempt, e.detail)
        for e in events
        if not kinds or e.kind in kinds
    ]


# ---------------------------------------------------------------------- timeout


def test_a_timeout_abandons_the_call_but_the_server_finishes_and_bills_it() -> None:
    # one server, 2 s per call, the caller waits 1 s. Request 0 arrives at 0.5: served
    # 0.5–2.5, abandoned at 1.5. Request 1 arrives at 1.5, waits for the server (busy until
    # 2.5), is abandoned at 2.5 while still queued, and is served 2.5–4.5 all the same.
    stage = _pool(client={"timeout_s": 1.0}, price={"per_call_usd": 0.25})
    result, events = _run(_scenario(2), [stage])
    assert _log(events) == [
        (0.5, "send", 0, 1, ""),
        (0.5, "submit", 0, 1, ""),
        (1.5, "outcome", 0, 1, "timeout"),
        (1.5, "finish", 0, 0, "timeout"),
        (1.5, "send", 1, 1, ""),
        (1.5, "submit", 1, 1, ""),
        # a deadline comes before anything else at the same instant
        (2.5, "outcome", 1, 1, "timeout"),
        (2.5, "finish", 1, 0, "timeout"),
        (2.5, "served", 0, 1, ""),
        (4.5, "served", 1, 1, ""),
    ]
    req = result.requests
    assert list(req["outcome"]) == ["timeout", "timeout"]
    np.testing.assert_allclose(req["latency_s"], [1.0, 1.0])
    # the server's work is real: both calls held the server 2 s and both are billed
    np.testing.assert_allclose(req["work_service_s"], [2.0, 2.0])
    np.testing.assert_allclose(req["work_wait_s"], [0.0, 1.0])
    np.testing.assert_allclose(req["cost_usd"], [0.25, 0.25])
    assert list(result.timeseries["work_served"][:5]) == [0, 0, 1, 0, 1]  # type: ignore[index]


def test_an_answer_at_the_deadline_instant_is_too_late() -> None:
    # service exactly equals the timeout: the deadline is exclusive, so the answer that
    # would come at 1.25 is too late; with a hair more time it is in time
    stage = _pool(service=1.0, client={"timeout_s": 1.0})
    result, _ = _run(_scenario(1), [stage])
    assert list(result.requests["outcome"]) == ["timeout"]
    stage = _pool(service=1.0, client={"timeout_s": 1.0 + 1e-9})
    result, _ = _run(_scenario(1), [stage])
    assert list(result.requests["outcome"]) == ["ok"]


def test_without_a_timeout_the_caller_waits_for_the_answer() -> None:
    result, _ = _run(_scenario(2), [_pool()])
    assert list(result.requests["outcome"]) == ["ok", "ok"]
    np.testing.assert_allclose(result.requests["latency_s"], [2.0, 3.0])


# ---------------------------------------------------------------------- retries


def _retry_waits(preset: str, seed: int, stage: str, count: int) -> list[float]:
    """The preset's waits, drawn from the same named stream the engine uses."""
    rng = stream(seed, "stage", stage, "backoff")
    retrier = Retrier(retry_preset(preset))  # type: ignore[arg-type]
    out = []
    for n in range(count):
        wait = retrier.delay(n, rng)
        assert wait is not None
        out.append(wait)
    return out


def test_openai_python_retry_schedule_matches_its_formula() -> None:
    # every call in [0, 100) is answered 503 at once: request 0 tries 3 times, waiting
    # min(0.5·2^n, 8)·(1 − 0.25·U) before retry n
    fault = {"kind": "error", "stage": "work", "start_s": 0, "end_s": 100, "status": 503}
    stage = _pool(client={"retry": "openai-python"})
    result, events = _run(_scenario(1, faults=[fault]), [stage])
    w0, w1 = _retry_waits("openai-python", 3, "work", 2)
    assert 0.375 <= w0 <= 0.5
    assert 0.75 <= w1 <= 1.0
    sends = [e.t for e in events if e.kind == "send"]
    np.testing.assert_allclose(sends, [0.5, 0.5 + w0, 0.5 + w0 + w1])
    assert [e.detail for e in events if e.kind == "retry"] == pytest.approx([w0, w1])
    assert [e.detail for e in events if e.kind == "outcome"] == ["error_5xx"] * 3
    assert result.requests["outcome"][0] == "error_5xx"
    assert result.requests["attempts"][0] == 3
    assert result.requests["work_attempts"][0] == 3
    # answered at once by the fault: nothing reached the server, nothing is billed
    assert result.requests["cost_usd"][0] == 0.0


def test_retry_after_is_honoured_and_a_long_one_ends_the_retries() -> None:
    honoured = {
        "kind": "error",
        "stage": "work",
        "start_s": 0,
        "end_s": 1,
        "status": 429,
        "retry_after_s": 3,
    }
    stage = _pool(service=0.1, client={"retry": "openai-python"})
    result, events = _run(_scenario(1, faults=[honoured]), [stage])
    # 429 at 0.5, retry exactly 3 s later (outside the window), served 3.5–3.6
    assert _log(events, "send", "outcome") == [
        (0.5, "send", 0, 1, ""),
        (0.5, "outcome", 0, 1, "error_429"),
        (3.5, "send", 0, 2, ""),
        (3.6, "outcome", 0, 2, "ok"),
    ]
    assert result.requests["outcome"][0] == "ok"
    too_long = {**honoured, "retry_after_s": 121}  # above openai-python's 120 s cap
    result, _ = _run(_scenario(1, faults=[too_long]), [stage])
    assert result.requests["outcome"][0] == "error_429"
    assert result.requests["attempts"][0] == 1


def test_a_timed_out_attempt_is_retried_while_the_first_still_runs() -> None:
    # 2 servers, 1.5 s per call, timeout 1 s, two attempts, no wait: attempt 1 runs
    # 0.5–2.0 (abandoned at 1.5), attempt 2 starts at 1.5 on the second server and is
    # abandoned at 2.5 — the request fails after doing the work twice, both billed
    stage = _pool(
        service=1.5,
        concurrency=2,
        client={"timeout_s": 1.0, "retry": {"max_attempts": 2, "backoff": "none"}},
        price={"per_call_usd": 1.0},
    )
    result, events = _run(_scenario(1), [stage])
    assert _log(events, "send", "served", "outcome") == [
        (0.5, "send", 0, 1, ""),
        (1.5, "outcome", 0, 1, "timeout"),
        (1.5, "send", 0, 2, ""),
        (2.0, "served", 0, 1, ""),
        (2.5, "outcome", 0, 2, "timeout"),
        (3.0, "served", 0, 2, ""),
    ]
    assert result.requests["cost_usd"][0] == 2.0
    assert result.requests["outcome"][0] == "timeout"


# ---------------------------------------------------------------------- the breaker


def test_breaker_opens_half_opens_and_closes() -> None:
    # 503s in [0, 6); fail_max 2, open for 2.5 s. Arrivals 0.5, 1.5, …:
    #   0.5 fail, 1.5 fail → open at 1.5 (until 4.0); 2.5, 3.5 refused;
    #   4.0 half-open; 4.5 trial → fails (still in the window) → open until 7.0;
    #   5.5, 6.5 refused; 7.0 half-open; 7.5 trial succeeds → closed; 8.5 ok.
    fault = {"kind": "error", "stage": "work", "start_s": 0, "end_s": 6, "status": 503}
    stage = _pool(service=0.1, client={"breaker": {"fail_max": 2, "reset_timeout_s": 2.5}})
    result, events = _run(_scenario(9, faults=[fault]), [stage])
    assert _log(events, "breaker") == [
        (1.5, "breaker", -1, 0, "closed->open"),
        (4.0, "breaker", -1, 0, "open->half_open"),
        (4.5, "breaker", -1, 0, "half_open->open"),
        (7.0, "breaker", -1, 0, "open->half_open"),
        (7.6, "breaker", -1, 0, "half_open->closed"),
    ]
    assert list(result.requests["outcome"]) == [
        "error_5xx",
        "error_5xx",
        "breaker_open",
        "breaker_open",
        "error_5xx",
        "breaker_open",
        "breaker_open",
        "ok",
        "ok",
    ]
    # a refused call never reaches the stage
    assert np.isnan(result.requests["work_service_s"][2])


# ---------------------------------------------------------------------- fallback, fan-out


LLM = {
    "kind": "llm_api",
    "name": "generate",
    "concurrency": 4,
    "ttft": {"kind": "deterministic", "value": 0.5},
    "time_per_output_token_s": 0.01,
}


def test_stage_fallback_answers_degraded_from_the_smaller_model() -> None:
    outage = {"kind": "outage", "stage": "generate", "start_s": 0, "end_s": 100}
    small = {
        **LLM,
        "name": "generate_small",
        "fallback_only": True,
        "ttft": {"kind": "deterministic", "value": 0.2},
    }
    main = {**LLM, "client": {"fallback": {"kind": "stage", "stage": "generate_small"}}}
    result, events = _run(_scenario(2, faults=[outage]), [main, small])
    req = result.requests
    assert list(req["outcome"]) == ["ok_degraded", "ok_degraded"]
    # refused at once, then the small model: ttft 0.2, then 49 tokens × 10 ms
    np.testing.assert_allclose(req["ttft_s"], [0.2, 0.2])
    np.testing.assert_allclose(req["latency_s"], [0.69, 0.69])
    assert list(req["generate_attempts"]) == [1, 1]
    assert list(req["generate_small_attempts"]) == [1, 1]
    assert ("fallback" in [e.kind for e in events]) is True


def test_skip_fallback_goes_on_without_an_optional_stage() -> None:
    outage = {"kind": "outage", "stage": "rerank", "start_s": 0, "end_s": 1}
    rerank = _pool("rerank", service=0.05, client={"fallback": "skip"})
    result, _ = _run(_scenario(2, faults=[outage]), [rerank, LLM])
    req = result.requests
    assert list(req["outcome"]) == ["ok_degraded", "ok"]
    np.testing.assert_allclose(req["latency_s"], [0.99, 1.04])
    assert np.isnan(req["rerank_service_s"][0])


def test_fan_out_waits_for_every_sub_call() -> None:
    # three sub-queries on one server of 0.1 s: served back to back, done after 0.3 s
    retrieve = _pool("retrieve", service=0.1, fan_out=3, price={"per_call_usd": 0.5})
    result, _ = _run(_scenario(2), [retrieve])
    req = result.requests
    np.testing.assert_allclose(req["latency_s"], [0.3, 0.3])
    assert list(req["retrieve_attempts"]) == [3, 3]
    assert list(req["cost_usd"]) == [1.5, 1.5]
    # three calls per request are the fan-out, not retries
    assert summarize(result)["retry_amplification"]["retrieve"] == 1.0


def test_a_failed_sub_call_fails_the_stage_at_once() -> None:
    # the first sub-call of request 0 is refused; the request fails at 0.5 without waiting
    # for its siblings, whose work still happens and is billed
    outage = {"kind": "outage", "stage": "retrieve", "start_s": 0, "end_s": 0.6, "percent": 100}
    retrieve = _pool("retrieve", service=0.1, fan_out=2, price={"per_call_usd": 0.5})
    result, _ = _run(_scenario(2, faults=[outage]), [retrieve])
    req = result.requests
    assert list(req["outcome"]) == ["error_connect", "ok"]
    assert req["latency_s"][0] == 0.0


# ---------------------------------------------------------------------- overload status


def test_a_provider_that_sheds_load_answers_529_and_it_is_a_5xx() -> None:
    # one slot; calls take 0.99 s; arrivals every 0.5 s: every second call finds it busy
    llm = {**LLM, "concurrency": 1, "overload_status": 529}
    result, _ = _run(_scenario(6, rate=2.0), [llm])
    assert list(result.requests["outcome"]) == ["ok", "error_5xx"] * 3


# ---------------------------------------------------------------------- call overhead


def test_call_overhead_delays_arrival_and_holds_no_server() -> None:
    # one server, 2 s per call, 0.5 s on the wire before each call reaches it. Request 0 is
    # sent at 0.5, reaches the server at 1.0 and is served 1.0–3.0; request 1 is sent at 1.5,
    # arrives at 2.0 and waits until 3.0 (the overhead kept no server busy): served 3.0–5.0.
    stage = _pool(call_overhead={"kind": "deterministic", "value": 0.5})
    result, events = _run(_scenario(2), [stage])
    assert _log(events, "send", "submit", "served") == [
        (0.5, "send", 0, 1, ""),
        (1.0, "submit", 0, 1, ""),
        (1.5, "send", 1, 1, ""),
        (2.0, "submit", 1, 1, ""),
        (3.0, "served", 0, 1, ""),
        (5.0, "served", 1, 1, ""),
    ]
    req = result.requests
    np.testing.assert_allclose(req["latency_s"], [2.5, 3.5])
    np.testing.assert_allclose(req["work_service_s"], [2.0, 2.0])
    # the stage's wait is sent → service: the overhead plus any queueing
    np.testing.assert_allclose(req["work_wait_s"], [0.5, 1.5])


def test_the_caller_timeout_counts_the_call_overhead() -> None:
    # 0.5 s overhead + 1 s service = 1.5 s: a 1.2 s timeout abandons the call at 0.5 + 1.2
    stage = _pool(
        service=1.0,
        call_overhead={"kind": "deterministic", "value": 0.5},
        client={"timeout_s": 1.2},
    )
    result, events = _run(_scenario(1), [stage])
    assert _log(events, "send", "submit", "outcome") == [
        (0.5, "send", 0, 1, ""),
        (1.0, "submit", 0, 1, ""),
        (1.7, "outcome", 0, 1, "timeout"),
    ]
    assert list(result.requests["outcome"]) == ["timeout"]


def test_an_error_fault_is_met_after_the_call_overhead() -> None:
    # the fault answers 503 where the call arrives: 0.25 s after the send
    fault = {
        "kind": "error",
        "stage": "work",
        "status": 503,
        "percent": 100,
        "start_s": 0,
        "end_s": 1,
    }
    stage = _pool(call_overhead={"kind": "deterministic", "value": 0.25})
    result, events = _run(_scenario(1, faults=[fault]), [stage])
    assert _log(events, "send", "outcome") == [
        (0.5, "send", 0, 1, ""),
        (0.75, "outcome", 0, 1, "error_5xx"),
    ]
    np.testing.assert_allclose(result.requests["latency_s"], [0.25])


def test_a_cache_refuses_a_call_overhead() -> None:
    cache = {
        "kind": "cache",
        "name": "c",
        "lookup": {"kind": "deterministic", "value": 0.001},
        "hits": {"kind": "probability", "p": 0.5},
        "skips": ["work"],
        "call_overhead": {"kind": "deterministic", "value": 0.1},
    }
    with pytest.raises(ValueError, match="lookup is its whole time"):
        Profile.model_validate({"name": "p", "stages": [cache, _pool()]})
