"""Each fault kind changes exactly the stage and the window it names, by exactly the effect
documented in :mod:`ragstress.faults.plan`.

The pipeline is deterministic: a ``pool`` stage ``retrieve`` (0.1 s) then an ``llm_api`` stage
``generate`` (time to first token 0.2 s, 0.01 s per further token, 10 output tokens, so 0.29 s),
with evenly spaced arrivals and fixed token counts, so without faults every request takes
exactly 0.39 s with no queueing anywhere. Each test puts one fault on one stage in a window in
the middle of the run and compares the run with the fault-free run, request by request: a call
sent outside the window must be bit-identical, a call sent inside must show exactly the
documented effect, and the other stage must be untouched.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest
from scipy import stats

from ragstress.config import Profile, Scenario
from ragstress.faults import FaultPlan
from ragstress.model import simulate
from ragstress.model.engine import ModelError
from ragstress.seeding import stream
from ragstress.workload import build_workload

Columns = dict[str, np.ndarray]

SEED = 7
RATE = 2.0  # arrivals at 0.25, 0.75, 1.25, ... (every 0.5 s)
DURATION = 60.0
A, B = 20.0, 40.0  # the fault window [A, B): no call is sent at either edge
STAGES = ("retrieve", "generate")

RETRIEVE_S = 0.1
TTFT_S = 0.2
TPOT_S = 0.01
OUT_TOKENS = 10
PROMPT_TOKENS = 20 + 2 * 100  # query + top_k × chunk (generate reads the whole prompt)
GENERATE_S = TTFT_S + (OUT_TOKENS - 1) * TPOT_S
RETRIEVE_USD = 0.001  # per call
IN_USD = 1.0 / 1e6  # per input token
OUT_USD = 10.0 / 1e6  # per output token
GENERATE_USD = PROMPT_TOKENS * IN_USD + OUT_TOKENS * OUT_USD

RETRIEVE: dict[str, Any] = {
    "kind": "pool",
    "name": "retrieve",
    "replicas": 4,
    "service": {"kind": "deterministic", "value": RETRIEVE_S},
    "price": {"per_call_usd": RETRIEVE_USD},
}
GENERATE: dict[str, Any] = {
    "kind": "llm_api",
    "name": "generate",
    "concurrency": 16,
    "ttft": {"kind": "deterministic", "value": TTFT_S},
    "time_per_output_token_s": TPOT_S,
    "price": {"per_1m_input_tokens_usd": 1.0, "per_1m_output_tokens_usd": 10.0},
}
REQUESTS: dict[str, Any] = {
    "query_tokens": {"kind": "deterministic", "value": 20},
    "top_k": 2,
    "chunk_tokens": {"kind": "deterministic", "value": 100},
    "output_tokens": {"kind": "deterministic", "value": OUT_TOKENS},
}


def _profile(
    retrieve: dict[str, Any] | None = None, generate: dict[str, Any] | None = None
) -> Profile:
    return Profile.model_validate(
        {
            "name": "p",
            "stages": [{**RETRIEVE, **(retrieve or {})}, {**GENERATE, **(generate or {})}],
        }
    )


def _scenario(faults: Sequence[dict[str, Any]] = (), *, rate: float = RATE) -> Scenario:
    return Scenario.model_validate(
        {
            "name": "faults",
            "duration_s": DURATION,
            "seed": SEED,
            "arrivals": {"kind": "constant", "rate": rate},
            "requests": REQUESTS,
            "faults": list(faults),
        }
    )


def _run(
    faults: Sequence[dict[str, Any]] = (), profile: Profile | None = None, *, rate: float = RATE
) -> Columns:
    result = simulate(build_workload(_scenario(faults, rate=rate)), profile or _profile())
    return result.requests


def _fault(kind: str, stage: str, start: float = A, end: float = B, **kw: Any) -> dict[str, Any]:
    return {"kind": kind, "stage": stage, "start_s": start, "end_s": end, **kw}


def _sent(base: Columns, stage: str) -> np.ndarray:
    """When each request's (first) call to ``stage`` was sent, in the fault-free run: the
    same float the engine's clock holds (arrival, then + the retrieve wait and service)."""
    arrival = base["arrival_s"]
    if stage == "retrieve":
        return arrival
    return arrival + base["retrieve_wait_s"] + base["retrieve_service_s"]


def _inside(base: Columns, stage: str, start: float = A, end: float = B) -> np.ndarray:
    t = _sent(base, stage)
    return (start <= t) & (t < end)


def _stage_cols(stage: str) -> list[str]:
    return [f"{stage}_wait_s", f"{stage}_service_s", f"{stage}_attempts", f"{stage}_cost_usd"]


def _other(stage: str) -> str:
    return "generate" if stage == "retrieve" else "retrieve"


def assert_same(run: Columns, base: Columns, rows: np.ndarray, cols: Sequence[str] = ()) -> None:
    """Bit-identical (NaN equals NaN) on ``rows`` in every column, or in ``cols``."""
    assert set(run) == set(base)
    for col in cols or sorted(base):
        np.testing.assert_array_equal(run[col][rows], base[col][rows], err_msg=col)


def assert_close(actual: np.ndarray, expected: Any, what: str) -> None:
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-9, err_msg=what)


def _windowed(base: Columns, run: Columns, stage: str) -> np.ndarray:
    """The shared checks: calls outside the window are untouched, the window is not empty.
    Returns the mask of requests whose call to ``stage`` was sent inside the window."""
    inside = _inside(base, stage)
    assert 30 <= inside.sum() <= 50  # the middle of the run, not an empty window
    assert_same(run, base, ~inside)
    return inside


# --------------------------------------------------------------------------- the baseline


def test_the_fault_free_run_is_known_exactly() -> None:
    base = _run()
    n = len(base["id"])
    assert n == RATE * DURATION
    assert_close(np.diff(base["arrival_s"]), 1 / RATE, "arrival spacing")
    assert (base["outcome"] == "ok").all()
    assert_close(base["latency_s"], RETRIEVE_S + GENERATE_S, "latency")
    assert_close(base["ttft_s"], RETRIEVE_S + TTFT_S, "ttft")
    for stage, service, cost in (
        ("retrieve", RETRIEVE_S, RETRIEVE_USD),
        ("generate", GENERATE_S, GENERATE_USD),
    ):
        assert (base[f"{stage}_wait_s"] == 0.0).all()
        assert_close(base[f"{stage}_service_s"], service, stage)
        assert (base[f"{stage}_attempts"] == 1).all()
        assert_close(base[f"{stage}_cost_usd"], cost, stage)
    assert (base["attempts"] == 2).all()
    assert_close(base["cost_usd"], RETRIEVE_USD + GENERATE_USD, "cost")


def test_a_fault_free_run_is_reproducible() -> None:
    base = _run()
    assert_same(_run(), base, np.ones(len(base["id"]), dtype=bool))


# --------------------------------------------------------------------------- added latency


@pytest.mark.parametrize("stage", STAGES)
def test_added_latency_delays_the_call_before_the_stage(stage: str) -> None:
    d = 0.3
    base = _run()
    run = _run([_fault("added_latency", stage, latency={"kind": "deterministic", "value": d})])
    inside = _windowed(base, run, stage)
    assert (run["outcome"] == "ok").all()
    assert_close(run["latency_s"][inside], base["latency_s"][inside] + d, "latency")
    assert_close(run["ttft_s"][inside], base["ttft_s"][inside] + d, "ttft")
    # the delay is spent before the stage: no queueing there, the same service, the same bill
    everyone = np.ones(len(base["id"]), dtype=bool)
    assert_same(run, base, everyone, [*_stage_cols("retrieve"), *_stage_cols("generate")])
    assert_same(run, base, everyone, ["attempts", "cost_usd"])


def test_added_latency_from_a_distribution_takes_one_draw_per_hit_call() -> None:
    faults = [_fault("added_latency", "generate", latency={"kind": "exponential", "mean": 0.3})]
    base = _run()
    run = _run(faults)
    inside = _windowed(base, run, "generate")
    extra = run["latency_s"][inside] - base["latency_s"][inside]
    assert (extra > 0).all()
    assert len(np.unique(np.round(extra, 9))) == inside.sum()  # a fresh draw for every call
    # exactly the plan's draws, from the stage's fault stream, in send order: nothing is drawn
    # for a call outside the window
    plan = FaultPlan.from_scenario(_scenario(faults).faults, STAGES)
    rng = stream(SEED, "faults", "generate")
    sent = _sent(base, "generate")
    expected = [plan.draw("generate", float(t), rng).extra_latency_s for t in sent]
    assert_close(extra, np.asarray(expected)[inside], "delays")
    assert_close(run["ttft_s"][inside] - base["ttft_s"][inside], extra, "ttft")
    assert_same(run, base, np.ones(len(base["id"]), dtype=bool), _stage_cols("retrieve"))
    assert_same(run, base, inside, [*_stage_cols("generate"), "outcome", "cost_usd"])


def test_a_delay_past_the_callers_timeout_still_reaches_the_stage_and_is_billed() -> None:
    timeout, d = 2.0, 3.0
    profile = _profile(generate={"client": {"timeout_s": timeout}})
    base = _run(profile=profile)
    latency = {"kind": "deterministic", "value": d}
    run = _run([_fault("added_latency", "generate", latency=latency)], profile)
    inside = _windowed(base, run, "generate")
    assert (run["outcome"][inside] == "timeout").all()
    assert_close(run["latency_s"][inside], RETRIEVE_S + timeout, "latency")
    assert np.isnan(run["ttft_s"][inside]).all()
    # the caller gave up, but the call was on the wire: the stage serves it and bills it
    assert_same(run, base, inside, _stage_cols("generate"))
    assert_same(run, base, np.ones(len(base["id"]), dtype=bool), _stage_cols("retrieve"))


# --------------------------------------------------------------------------- latency multiplier


@pytest.mark.parametrize(
    ("stage", "service", "ttft_shift"),
    [("retrieve", RETRIEVE_S, RETRIEVE_S), ("generate", GENERATE_S, TTFT_S)],
)
def test_latency_multiplier_scales_the_service_time(
    stage: str, service: float, ttft_shift: float
) -> None:
    f = 3.0
    base = _run()
    run = _run([_fault("latency_multiplier", stage, factor=f)])
    inside = _windowed(base, run, stage)
    assert (run["outcome"] == "ok").all()
    assert_close(run[f"{stage}_service_s"][inside], f * service, "service")
    assert (run[f"{stage}_wait_s"] == 0.0).all()  # spare capacity: no queue grows
    assert_close(run["latency_s"][inside], base["latency_s"][inside] + (f - 1) * service, "latency")
    # a stream's first token comes factor × later too (retrieve's whole time precedes it)
    assert_close(run["ttft_s"][inside], base["ttft_s"][inside] + (f - 1) * ttft_shift, "ttft")
    everyone = np.ones(len(base["id"]), dtype=bool)
    assert_same(run, base, everyone, [*_stage_cols(_other(stage)), "attempts", "cost_usd"])
    assert_same(run, base, everyone, [f"{stage}_cost_usd", f"{stage}_attempts"])


def _fifo_starts(
    sent: np.ndarray, service: np.ndarray, servers: Callable[[float], int], changes: Sequence[float]
) -> np.ndarray:
    """Reference FIFO multi-server queue whose server count changes at ``changes``: a call
    starts at the first instant, not before its send time nor the previous call's start, at
    which fewer calls are in service than servers are up (a server taken down finishes its
    call but starts none)."""
    starts: list[float] = []
    ends: list[float] = []
    prev = -math.inf
    for t, s in zip(sent.tolist(), service.tolist(), strict=True):
        lo = max(t, prev)
        candidates = sorted({lo, *(e for e in ends if e > lo), *(c for c in changes if c > lo)})
        for x in candidates:
            busy = sum(1 for st, e in zip(starts, ends, strict=True) if st <= x < e)
            if busy < servers(x):
                break
        else:  # pragma: no cover - a candidate always frees a server in these tests
            raise AssertionError("no start found")
        starts.append(x)
        ends.append(x + s)
        prev = x
    return np.asarray(starts)


def test_latency_multiplier_holds_the_server_so_a_queue_grows_and_drains() -> None:
    f, a, b = 3.0, 20.0, 24.0
    profile = _profile(generate={"concurrency": 1})
    base = _run(profile=profile)
    run = _run([_fault("latency_multiplier", "generate", a, b, factor=f)], profile)
    sent = _sent(base, "generate")
    inside = _inside(base, "generate", a, b)
    service = np.where(inside, f * GENERATE_S, GENERATE_S)
    wait = _fifo_starts(sent, service, lambda t: 1, []) - sent
    assert wait.max() > 1.0  # 0.87 s of service every 0.5 s: a queue builds up
    assert_close(run["generate_wait_s"], wait, "wait")
    assert_close(run["generate_service_s"], service, "service")
    assert_close(run["latency_s"], RETRIEVE_S + wait + service, "latency")
    # calls sent before the window, and after the queue has drained, are untouched
    untouched = ~inside & (wait == 0.0)
    assert untouched[sent >= b].any()
    assert_same(run, base, untouched)
    assert_same(run, base, np.ones(len(sent), dtype=bool), _stage_cols("retrieve"))


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (503, "error_5xx"),
        (500, "error_5xx"),
        (529, "error_5xx"),
        (429, "error_429"),
        (408, "timeout"),
    ],
)
def test_error_answers_at_once_without_reaching_the_stage(status: int, outcome: str) -> None:
    base = _run()
    run = _run([_fault("error", "generate", status=status)])
    inside = _windowed(base, run, "generate")
    assert (run["outcome"][inside] == outcome).all()
    assert_close(run["latency_s"][inside], RETRIEVE_S, "latency: answered at the send time")
    assert np.isnan(run["ttft_s"][inside]).all()
    # never reached the stage: no wait, no service, not billed; still one attempt
    assert np.isnan(run["generate_wait_s"][inside]).all()
    assert np.isnan(run["generate_service_s"][inside]).all()
    assert (run["generate_cost_usd"][inside] == 0.0).all()
    assert (run["generate_attempts"][inside] == 1).all()
    assert_close(run["cost_usd"][inside], RETRIEVE_USD, "cost")
    assert_same(run, base, np.ones(len(base["id"]), dtype=bool), _stage_cols("retrieve"))


def test_an_error_on_the_first_stage_ends_the_request_there() -> None:
    base = _run()
    run = _run([_fault("error", "retrieve", status=503)])
    inside = _windowed(base, run, "retrieve")
    assert (run["outcome"][inside] == "error_5xx").all()
    assert (run["latency_s"][inside] == 0.0).all()
    assert np.isnan(run["retrieve_wait_s"][inside]).all()
    assert np.isnan(run["retrieve_service_s"][inside]).all()
    assert (run["retrieve_cost_usd"][inside] == 0.0).all()
    assert (run["retrieve_attempts"][inside] == 1).all()
    # the request never got to generate
    assert (run["generate_attempts"][inside] == 0).all()
    assert np.isnan(run["generate_service_s"][inside]).all()
    assert (run["cost_usd"][inside] == 0.0).all()


def test_an_error_comes_after_the_added_latency() -> None:
    d = 0.3
    base = _run()
    latency = {"kind": "deterministic", "value": d}
    run = _run(
        [
            _fault("added_latency", "generate", latency=latency),
            _fault("error", "generate", status=503),
        ]
    )
    inside = _windowed(base, run, "generate")
    assert (run["outcome"][inside] == "error_5xx").all()
    assert_close(run["latency_s"][inside], RETRIEVE_S + d, "latency")
    assert (run["generate_cost_usd"][inside] == 0.0).all()
    assert np.isnan(run["generate_service_s"][inside]).all()


def test_a_429_retry_after_is_what_an_honouring_caller_waits() -> None:
    wait, a, b = 15.0, 20.0, 30.0
    retry = {"max_attempts": 2, "retry_on": ["error_429"], "backoff": "none"}
    profile = _profile(generate={"client": {"retry": retry}})
    base = _run(profile=profile)
    run = _run([_fault("error", "generate", a, b, status=429, retry_after_s=wait)], profile)
    inside = _inside(base, "generate", a, b)
    assert inside.sum() == 20
    assert_same(run, base, ~inside)
    # the retry is sent retry_after_s later, after the window: a fresh call that succeeds
    assert (run["outcome"][inside] == "ok").all()
    assert_close(run["latency_s"][inside], RETRIEVE_S + wait + GENERATE_S, "latency")
    assert_close(run["ttft_s"][inside], RETRIEVE_S + wait + TTFT_S, "ttft")
    assert (run["generate_attempts"][inside] == 2).all()
    assert (run["attempts"][inside] == 3).all()
    # only the retry is billed; its service is the normal one
    assert_same(run, base, inside, ["generate_cost_usd", "cost_usd", "generate_service_s"])
    assert_same(run, base, np.ones(len(base["id"]), dtype=bool), _stage_cols("retrieve"))


@pytest.mark.parametrize("factor", [1.0, 2.0])
def test_an_error_after_service_is_served_then_not_billed(factor: float) -> None:
    base = _run()
    faults = [_fault("error", "generate", status=500, after_service=True)]
    if factor != 1.0:
        faults.append(_fault("latency_multiplier", "generate", factor=factor))
    run = _run(faults)
    inside = _windowed(base, run, "generate")
    service = factor * GENERATE_S
    assert (run["outcome"][inside] == "error_5xx").all()
    # the stage does its normal work (latency faults apply), then answers with the status
    assert (run["generate_wait_s"][inside] == 0.0).all()
    assert_close(run["generate_service_s"][inside], service, "service")
    assert_close(run["latency_s"][inside], RETRIEVE_S + service, "latency")
    assert np.isnan(run["ttft_s"][inside]).all()  # no answer body, no first token
    assert (run["generate_cost_usd"][inside] == 0.0).all()
    assert (run["generate_attempts"][inside] == 1).all()
    assert_close(run["cost_usd"][inside], RETRIEVE_USD, "cost")
    assert_same(run, base, np.ones(len(base["id"]), dtype=bool), _stage_cols("retrieve"))


def test_an_error_after_service_holds_the_server() -> None:
    """A 500 after the work keeps the server busy: with one slot and a slower server the
    queue grows exactly as if the calls had succeeded."""
    f, a, b = 3.0, 20.0, 24.0
    profile = _profile(generate={"concurrency": 1})
    base = _run(profile=profile)
    run = _run(
        [
            _fault("error", "generate", a, b, status=500, after_service=True),
            _fault("latency_multiplier", "generate", a, b, factor=f),
        ],
        profile,
    )
    sent = _sent(base, "generate")
    inside = _inside(base, "generate", a, b)
    service = np.where(inside, f * GENERATE_S, GENERATE_S)
    wait = _fifo_starts(sent, service, lambda t: 1, []) - sent
    assert wait.max() > 1.0
    assert_close(run["generate_wait_s"], wait, "wait")
    assert (run["outcome"][inside] == "error_5xx").all()
    assert (run["outcome"][~inside] == "ok").all()


# --------------------------------------------------------------------------- outage and hang


def test_outage_refuses_the_connection_at_once() -> None:
    base = _run()
    run = _run([_fault("outage", "generate")])
    inside = _windowed(base, run, "generate")
    assert (run["outcome"][inside] == "error_connect").all()
    assert_close(run["latency_s"][inside], RETRIEVE_S, "latency")
    assert np.isnan(run["ttft_s"][inside]).all()
    assert np.isnan(run["generate_wait_s"][inside]).all()
    assert np.isnan(run["generate_service_s"][inside]).all()
    assert (run["generate_cost_usd"][inside] == 0.0).all()
    assert (run["generate_attempts"][inside] == 1).all()
    assert_same(run, base, np.ones(len(base["id"]), dtype=bool), _stage_cols("retrieve"))


def test_outage_on_the_first_stage() -> None:
    base = _run()
    run = _run([_fault("outage", "retrieve")])
    inside = _windowed(base, run, "retrieve")
    assert (run["outcome"][inside] == "error_connect").all()
    assert (run["latency_s"][inside] == 0.0).all()
    assert (run["cost_usd"][inside] == 0.0).all()
    assert (run["generate_attempts"][inside] == 0).all()


@pytest.mark.parametrize(("stage", "before"), [("retrieve", 0.0), ("generate", RETRIEVE_S)])
def test_hang_ends_only_at_the_callers_timeout(stage: str, before: float) -> None:
    timeout = 2.0
    profile = _profile(**{stage: {"client": {"timeout_s": timeout}}})
    base = _run(profile=profile)
    run = _run([_fault("hang", stage)], profile)
    inside = _windowed(base, run, stage)
    assert (run["outcome"][inside] == "timeout").all()
    assert_close(run["latency_s"][inside], before + timeout, "latency")
    assert np.isnan(run["ttft_s"][inside]).all()
    assert np.isnan(run[f"{stage}_wait_s"][inside]).all()
    assert np.isnan(run[f"{stage}_service_s"][inside]).all()
    assert (run[f"{stage}_cost_usd"][inside] == 0.0).all()
    assert (run[f"{stage}_attempts"][inside] == 1).all()
    if stage == "generate":
        assert_same(run, base, np.ones(len(base["id"]), dtype=bool), _stage_cols("retrieve"))
    else:
        assert (run["generate_attempts"][inside] == 0).all()


def test_a_hung_call_holds_no_server() -> None:
    profile = _profile(generate={"concurrency": 1, "client": {"timeout_s": 2.0}})
    base = _run(profile=profile)
    run = _run([_fault("hang", "generate", percent=50)], profile)
    inside = _windowed(base, run, "generate")
    hung = run["outcome"] == "timeout"
    assert 5 <= hung.sum() <= inside.sum() - 5
    assert not hung[~inside].any()
    # with a single slot, a hung call that held it would delay the next call: none is delayed
    assert_same(run, base, ~hung)


# --------------------------------------------------------------------------- stream faults


@pytest.mark.parametrize(
    ("after", "ttft_shift", "latency_shift"),
    [(0, 0.5, 0.5), (3, 0.0, 0.5), (OUT_TOKENS - 1, 0.0, 0.5), (OUT_TOKENS, 0.0, 0.0)],
)
def test_stream_stall_is_silent_after_n_tokens(
    after: int, ttft_shift: float, latency_shift: float
) -> None:
    base = _run()
    run = _run([_fault("stream_stall", "generate", after_tokens=after, stall_s=0.5)])
    inside = _windowed(base, run, "generate")
    assert (run["outcome"] == "ok").all()
    assert_close(run["ttft_s"][inside], base["ttft_s"][inside] + ttft_shift, "ttft")
    assert_close(run["latency_s"][inside], base["latency_s"][inside] + latency_shift, "latency")
    # the slot is held through the stall; the bill is the same
    assert_close(run["generate_service_s"][inside], GENERATE_S + latency_shift, "service")
    everyone = np.ones(len(base["id"]), dtype=bool)
    assert_same(run, base, everyone, [*_stage_cols("retrieve"), "generate_wait_s", "cost_usd"])
    if latency_shift == 0.0:  # an answer that fits before the stall point is untouched
        assert_same(run, base, everyone)


@pytest.mark.parametrize("after", [0, 1, 4, OUT_TOKENS - 1])
def test_stream_truncate_breaks_off_after_n_tokens(after: int) -> None:
    base = _run()
    run = _run([_fault("stream_truncate", "generate", after_tokens=after)])
    inside = _windowed(base, run, "generate")
    assert_same(run, base, np.ones(len(base["id"]), dtype=bool), _stage_cols("retrieve"))
    # the break comes when token `after` is out (for 0: when the first token would come)
    service = TTFT_S + max(after - 1, 0) * TPOT_S
    assert (run["outcome"][inside] == "error_stream").all()
    assert_close(run["generate_service_s"][inside], service, "service")
    assert_close(run["latency_s"][inside], RETRIEVE_S + service, "latency")
    assert np.isnan(run["ttft_s"][inside]).all()
    assert (run["generate_wait_s"][inside] == 0.0).all()
    # billed: the input and the tokens delivered
    billed = PROMPT_TOKENS * IN_USD + after * OUT_USD
    assert_close(run["generate_cost_usd"][inside], billed, "cost")
    assert_close(run["cost_usd"][inside], RETRIEVE_USD + billed, "cost")


@pytest.mark.parametrize("after", [OUT_TOKENS, OUT_TOKENS + 5])
def test_a_stream_that_fits_before_the_truncation_point_is_delivered_whole(after: int) -> None:
    base = _run()
    run = _run([_fault("stream_truncate", "generate", after_tokens=after)])
    assert_same(run, base, np.ones(len(base["id"]), dtype=bool))


# --------------------------------------------------------------------------- state faults


def test_rate_limit_cut_refuses_exactly_what_the_cut_bucket_cannot_hold() -> None:
    rpm, factor = 600.0, 0.013  # 10 requests/s, never short at 2/s; cut: 7.8 held, 0.13/s
    profile = _profile(generate={"rate_limit": {"rpm": rpm}})
    base = _run(profile=profile)
    run = _run([_fault("rate_limit_cut", "generate", factor=factor)], profile)
    inside = _windowed(base, run, "generate")
    # the bucket is full when the cut starts; it then holds at most the cut capacity and
    # refills at the cut rate; a refused call takes nothing
    cap, refill = rpm * factor, rpm / 60 * factor
    tokens, last = cap, A
    admitted = np.zeros_like(inside)
    for i in np.flatnonzero(inside):
        t = float(_sent(base, "generate")[i])
        tokens = min(cap, tokens + (t - last) * refill)
        last = t
        assert abs(tokens - 1.0) > 1e-6  # no knife-edge decision in this test
        if tokens >= 1.0:
            admitted[i] = True
            tokens -= 1.0
    refused = inside & ~admitted
    assert 7 <= admitted.sum() < refused.sum()
    assert_same(run, base, admitted)
    assert (run["outcome"][refused] == "error_429").all()
    assert_close(run["latency_s"][refused], RETRIEVE_S, "latency")
    assert np.isnan(run["generate_wait_s"][refused]).all()
    assert np.isnan(run["generate_service_s"][refused]).all()
    assert (run["generate_cost_usd"][refused] == 0.0).all()
    assert_same(run, base, np.ones(len(base["id"]), dtype=bool), _stage_cols("retrieve"))


def test_capacity_loss_of_one_replica_queues_calls_until_it_returns() -> None:
    a, b, service = 20.0, 24.0, 0.8  # two replicas keep up with 0.8 s every 0.5 s; one cannot
    profile = _profile(
        retrieve={"replicas": 2, "service": {"kind": "deterministic", "value": service}}
    )
    base = _run(profile=profile)
    run = _run([_fault("capacity_loss", "retrieve", a, b, replicas_down=1)], profile)
    sent = _sent(base, "retrieve")
    assert (base["retrieve_wait_s"] == 0.0).all()
    starts = _fifo_starts(
        sent, np.full(len(sent), service), lambda t: 1 if a <= t < b else 2, [a, b]
    )
    wait = starts - sent
    inside = _inside(base, "retrieve", a, b)
    assert (wait[inside][1:] > 0).all()
    assert wait[sent >= b].max() > 0  # the backlog spills past the window ...
    assert_close(run["retrieve_wait_s"], wait, "wait")
    assert_close(run["retrieve_service_s"], service, "service")
    assert_close(run["latency_s"], wait + service + GENERATE_S, "latency")
    assert (run["outcome"] == "ok").all()
    # ... calls sent before the window, and after the backlog has drained, are untouched
    assert_same(run, base, sent < a)
    drained = (sent >= b) & (wait == 0.0)
    assert drained.sum() > 20
    assert_same(run, base, drained)
    # the other stage serves every call as before, with no queue
    everyone = np.ones(len(sent), dtype=bool)
    assert_same(run, base, everyone, ["generate_service_s", "generate_wait_s", "generate_cost_usd"])


def test_capacity_loss_of_every_slot_queues_calls_until_the_window_ends() -> None:
    a, b = 20.0, 24.0
    profile = _profile(generate={"concurrency": 4})
    base = _run(profile=profile)
    run = _run([_fault("capacity_loss", "generate", a, b, fraction=1.0)], profile)
    sent = _sent(base, "generate")
    starts = _fifo_starts(
        sent, np.full(len(sent), GENERATE_S), lambda t: 0 if a <= t < b else 4, [a, b]
    )
    wait = starts - sent
    inside = _inside(base, "generate", a, b)
    assert_close(starts[inside][:4], b, "the first four start when the slots return")
    assert (wait[inside] > 0).all()
    assert wait[sent >= b].max() > 0  # eight queued calls, four slots: it spills over
    assert_close(run["generate_wait_s"], wait, "wait")
    assert_close(run["generate_service_s"], GENERATE_S, "service")
    assert_close(run["latency_s"], RETRIEVE_S + wait + GENERATE_S, "latency")
    assert_close(run["ttft_s"], RETRIEVE_S + wait + TTFT_S, "ttft")
    assert (run["outcome"] == "ok").all()  # capacity loss never refuses a call
    assert_same(run, base, sent < a)
    assert_same(run, base, (sent >= b) & (wait == 0.0))
    assert_same(run, base, np.ones(len(sent), dtype=bool), [*_stage_cols("retrieve"), "cost_usd"])


@pytest.mark.parametrize(
    ("stage", "size"),
    [("retrieve", {"replicas_down": 3}), ("generate", {"fraction": 0.5})],
)
def test_capacity_loss_with_capacity_to_spare_changes_nothing(
    stage: str, size: dict[str, Any]
) -> None:
    base = _run()
    run = _run([_fault("capacity_loss", stage, **size)])
    assert_same(run, base, np.ones(len(base["id"]), dtype=bool))


# --------------------------------------------------------------------------- targeting


def _same_row(run: Columns, base: Columns) -> np.ndarray:
    same = np.ones(len(base["id"]), dtype=bool)
    for col in base:
        x, y = run[col], base[col]
        if x.dtype.kind == "f":
            same &= (x == y) | (np.isnan(x) & np.isnan(y))
        else:
            same &= x == y
    return same


PERCENT_CASES: dict[str, tuple[dict[str, Any], Callable[[Columns, Columns], np.ndarray]]] = {
    "added_latency": (
        {"kind": "added_latency", "latency": {"kind": "deterministic", "value": 0.3}},
        lambda r, b: np.isclose(r["latency_s"] - b["latency_s"], 0.3, rtol=0, atol=1e-9),
    ),
    "latency_multiplier": (
        {"kind": "latency_multiplier", "factor": 2.0},
        lambda r, b: np.isclose(r["generate_service_s"], 2 * GENERATE_S, rtol=0, atol=1e-9),
    ),
    "error": ({"kind": "error", "status": 503}, lambda r, b: r["outcome"] == "error_5xx"),
    "error_after_service": (
        {"kind": "error", "status": 500, "after_service": True},
        lambda r, b: (r["outcome"] == "error_5xx") & (r["generate_cost_usd"] == 0.0),
    ),
    "outage": ({"kind": "outage"}, lambda r, b: r["outcome"] == "error_connect"),
    "hang": ({"kind": "hang"}, lambda r, b: r["outcome"] == "timeout"),
    "stream_stall": (
        {"kind": "stream_stall", "after_tokens": 0, "stall_s": 0.2},
        lambda r, b: np.isclose(r["ttft_s"] - b["ttft_s"], 0.2, rtol=0, atol=1e-9),
    ),
    "stream_truncate": (
        {"kind": "stream_truncate", "after_tokens": 4},
        lambda r, b: r["outcome"] == "error_stream",
    ),
}


@pytest.mark.parametrize("case", sorted(PERCENT_CASES))
def test_percent_hits_about_that_share_of_the_calls_in_the_window_and_none_outside(
    case: str,
) -> None:
    spec, effect = PERCENT_CASES[case]
    rate, a, b = 20.0, 10.0, 50.0  # sends at 0.125 + 0.05 k: none on an edge
    profile = _profile(generate={"concurrency": 32, "client": {"timeout_s": 2.0}})
    base = _run(profile=profile, rate=rate)
    fault = {**spec, "stage": "generate", "start_s": a, "end_s": b, "percent": 50}
    run = _run([fault], profile, rate=rate)
    inside = _inside(base, "generate", a, b)
    hit = ~_same_row(run, base)
    assert not hit[~inside].any()
    n = int(inside.sum())
    assert n == 800
    lo, hi = stats.binom.interval(0.999, n, 0.5)
    assert lo <= hit.sum() <= hi
    assert effect(run, base)[hit].all()  # every call that changed shows the fault's effect
    assert not effect(run, base)[~hit].any()
    assert_same(run, base, np.ones(len(hit), dtype=bool), _stage_cols("retrieve"))


@pytest.mark.parametrize("stage", STAGES)
def test_the_window_starts_inclusive_and_ends_exclusive(stage: str) -> None:
    base = _run()
    sent = _sent(base, stage)
    start, end = float(sent[40]), float(sent[60])  # a call sent exactly on each edge
    latency = {"kind": "deterministic", "value": 0.3}
    run = _run([_fault("added_latency", stage, start, end, latency=latency)])
    hit = ~_same_row(run, base)
    assert np.flatnonzero(hit).tolist() == list(range(40, 60))


# --------------------------------------------------------------------------- plans that cannot run


@pytest.mark.parametrize("timeout_on", [None, "retrieve"])
def test_a_hang_on_a_stage_whose_caller_has_no_timeout_is_refused(timeout_on: str | None) -> None:
    over = {} if timeout_on is None else {timeout_on: {"client": {"timeout_s": 2.0}}}
    profile = _profile(**over)
    with pytest.raises(ModelError, match=r"'generate'.*generate\.client\.timeout_s"):
        _run([_fault("hang", "generate")], profile)


def test_a_fault_on_an_unknown_stage_is_refused_with_the_allowed_stages() -> None:
    with pytest.raises(ModelError, match=r"unknown stage 'rerank' \(allowed: retrieve, generate\)"):
        _run([_fault("outage", "rerank")])


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        (
            _fault("stream_stall", "retrieve", after_tokens=1, stall_s=1.0),
            r"stage 'retrieve' does not stream \(allowed: generate\)",
        ),
        (
            _fault("stream_truncate", "retrieve", after_tokens=1),
            r"stage 'retrieve' does not stream \(allowed: generate\)",
        ),
        (
            _fault("rate_limit_cut", "generate", factor=0.5),
            r"stage 'generate' has no rate limits \(allowed: none\)",
        ),
    ],
)
def test_a_fault_the_stage_cannot_have_is_refused(fault: dict[str, Any], message: str) -> None:
    with pytest.raises(ModelError, match=message):
        _run([fault])
