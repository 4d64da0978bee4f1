"""Run-time client policies: exact retry schedules, retry decisions, the circuit breaker."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ragstress.config.policy import (
    OUTCOMES,
    BreakerPolicy,
    ClientPolicy,
    RetryPolicy,
    retry_preset,
)
from ragstress.model.policies import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    CircuitBreaker,
    ClientRuntime,
    Retrier,
    backoff_delay,
    should_retry,
)

SEED = 20240611


def exponential(
    initial: float, max_s: float, jitter: object = "none", **extra: object
) -> RetryPolicy:
    return RetryPolicy.model_validate(
        {
            "max_attempts": extra.pop("max_attempts", 10),
            "backoff": {
                "kind": "exponential",
                "initial_s": initial,
                "max_s": max_s,
                "jitter": jitter,
                **extra,
            },
        }
    )


def untouched(rng: np.random.Generator) -> bool:
    """Whether ``rng`` has drawn nothing since it was seeded with SEED."""
    return bool(rng.random() == np.random.default_rng(SEED).random())


# --- openai-python ---------------------------------------------------------------------------


def test_openai_python_schedule_matches_the_formula_draw_for_draw() -> None:
    policy = retry_preset("openai-python")
    rng = np.random.default_rng(SEED)
    got = [backoff_delay(policy, n, rng, None) for n in range(6)]
    us = np.random.default_rng(SEED).random(6)
    want = [min(0.5 * 2**n, 8) * (1 - 0.25 * float(us[n])) for n in range(6)]
    assert got == want  # bit for bit: one draw per wait, the same arithmetic
    bases = [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    for wait, base in zip(got, bases, strict=True):
        assert wait is not None
        assert 0.75 * base < wait <= base


def test_openai_python_waits_exactly_the_retry_after_it_is_given() -> None:
    policy = retry_preset("openai-python")
    rng = np.random.default_rng(SEED)
    assert backoff_delay(policy, 0, rng, 3.0) == 3.0
    assert backoff_delay(policy, 1, rng, 120.0) == 120.0
    assert backoff_delay(policy, 0, rng, 0.25) == 0.25
    assert untouched(rng)  # a honoured retry-after consumes no randomness


def test_openai_python_does_not_retry_when_retry_after_is_above_120_s() -> None:
    policy = retry_preset("openai-python")
    rng = np.random.default_rng(SEED)
    assert backoff_delay(policy, 0, rng, 121.0) is None
    assert backoff_delay(policy, 0, rng, 120.000001) is None
    assert backoff_delay(policy, 0, rng, math.inf) is None
    assert untouched(rng)


@pytest.mark.parametrize("retry_after", [0.0, -5.0, math.nan])
def test_a_retry_after_that_is_not_positive_falls_back_to_the_backoff(retry_after: float) -> None:
    rng = np.random.default_rng(SEED)
    wait = backoff_delay(retry_preset("openai-python"), 2, rng, retry_after)
    u = np.random.default_rng(SEED).random()
    assert wait == 2.0 * (1 - 0.25 * u)


def test_openai_python_retries_twice_on_its_outcomes_only() -> None:
    policy = retry_preset("openai-python")
    for outcome in OUTCOMES:
        assert should_retry(policy, outcome, 1)
        assert should_retry(policy, outcome, 2)
        assert not should_retry(policy, outcome, 3)
    for other in ("ok", "error_400", "error_stream", "breaker_open"):
        assert not should_retry(policy, other, 1)


# --- tenacity-default and no-retry -------------------------------------------------------------


def test_tenacity_default_retries_at_once_and_ignores_retry_after() -> None:
    policy = retry_preset("tenacity-default")
    rng = np.random.default_rng(SEED)
    assert [backoff_delay(policy, n, rng) for n in (0, 1, 5, 98, 500)] == [0.0] * 5
    assert backoff_delay(policy, 0, rng, 500.0) == 0.0
    assert untouched(rng)
    assert all(should_retry(policy, "error_429", a) for a in range(1, 100))
    assert not should_retry(policy, "error_429", 100)


def test_no_retry_never_retries() -> None:
    policy = retry_preset("no-retry")
    for outcome in (*OUTCOMES, "ok"):
        assert not should_retry(policy, outcome, 1)
    retrier = Retrier(policy)
    assert retrier.next_wait("error_5xx", 1, np.random.default_rng(SEED)) is None


# --- backoff shapes --------------------------------------------------------------------------


def test_exponential_without_jitter_is_exact_and_capped() -> None:
    policy = exponential(1.0, 10.0, max_attempts=8)
    rng = np.random.default_rng(SEED)
    assert [backoff_delay(policy, n, rng) for n in range(8)] == [1, 2, 4, 8, 10, 10, 10, 10]
    tripled = exponential(0.1, 5.0, multiplier=3.0, max_attempts=5)
    assert [backoff_delay(tripled, n, rng) for n in range(5)] == [
        0.1,
        0.1 * 3.0,
        0.1 * 9.0,
        0.1 * 27.0,
        5.0,
    ]
    assert untouched(rng)


def test_exponential_past_the_reachable_retry_numbers_does_not_overflow() -> None:
    rng = np.random.default_rng(SEED)
    steep = exponential(1.0, 1e300, multiplier=100.0, max_attempts=10_000)
    assert backoff_delay(steep, 9_000, rng) == 1e300
    short = exponential(1.0, 1e300, multiplier=10.0, max_attempts=3)
    assert backoff_delay(short, 2, rng) == 100.0  # past max_attempts: the formula
    assert backoff_delay(short, 5_000, rng) == 1e300
    flat = exponential(2.0, 9.0, multiplier=1.0, max_attempts=3)
    assert [backoff_delay(flat, n, rng) for n in (0, 1, 2, 1_000)] == [2.0] * 4


def test_constant_backoff() -> None:
    policy = RetryPolicy.model_validate(
        {"max_attempts": 4, "backoff": {"kind": "constant", "wait_s": 1.5}}
    )
    rng = np.random.default_rng(SEED)
    assert [backoff_delay(policy, n, rng) for n in range(4)] == [1.5] * 4
    assert untouched(rng)


def _waits(policy: RetryPolicy, n: int, draws: int) -> np.ndarray:
    retrier = Retrier(policy)
    rng = np.random.default_rng(SEED)
    out = [retrier.delay(n, rng) for _ in range(draws)]
    return np.array(out, dtype=float)


@pytest.mark.parametrize("n", [0, 1, 2, 3, 6])
def test_full_jitter_is_uniform_below_the_exponential_value(n: int) -> None:
    policy = exponential(1.0, 10.0, "full")
    base = min(2.0**n, 10.0)
    waits = _waits(policy, n, 4000)
    assert waits.min() >= 0.0
    assert waits.max() < base
    assert waits.min() < 0.01 * base
    assert waits.max() > 0.99 * base
    assert abs(waits.mean() - base / 2) < 0.03 * base  # 6.6 standard errors
    rng = np.random.default_rng(SEED)
    u = np.random.default_rng(SEED).random()
    assert backoff_delay(policy, n, rng) == base * u


def test_equal_and_proportional_jitter_bounds() -> None:
    equal = _waits(exponential(1.0, 10.0, "equal"), 2, 4000)
    assert equal.min() >= 2.0
    assert equal.max() < 4.0
    assert abs(equal.mean() - 3.0) < 0.05
    prop = _waits(exponential(1.0, 10.0, {"kind": "proportional", "fraction": 0.5}), 3, 4000)
    assert prop.min() > 4.0
    assert prop.max() <= 8.0
    assert abs(prop.mean() - 6.0) < 0.1


def test_honour_retry_after_without_a_cap_and_switched_off() -> None:
    uncapped = RetryPolicy.model_validate({"preset": "openai-python", "max_retry_after_s": None})
    rng = np.random.default_rng(SEED)
    assert backoff_delay(uncapped, 0, rng, 3600.0) == 3600.0
    ignored = RetryPolicy.model_validate({"preset": "openai-python", "honour_retry_after": False})
    wait = backoff_delay(ignored, 0, np.random.default_rng(SEED), 3.0)
    assert wait == 0.5 * (1 - 0.25 * np.random.default_rng(SEED).random())


def test_next_wait_combines_both_decisions() -> None:
    retrier = Retrier(retry_preset("openai-python"))
    rng = np.random.default_rng(SEED)
    assert retrier.next_wait("error_429", 1, rng, 3.0) == 3.0
    assert retrier.next_wait("error_429", 1, rng, 300.0) is None
    assert retrier.next_wait("error_400", 1, rng) is None
    assert retrier.next_wait("error_5xx", 3, rng) is None
    assert untouched(rng)
    wait = retrier.next_wait("timeout", 2, np.random.default_rng(SEED))
    assert wait == 1.0 * (1 - 0.25 * np.random.default_rng(SEED).random())


def test_functions_accept_a_compiled_retrier_and_check_their_numbers() -> None:
    policy = retry_preset("openai-python")
    retrier = Retrier(policy)
    a = backoff_delay(retrier, 3, np.random.default_rng(SEED))
    b = backoff_delay(policy, 3, np.random.default_rng(SEED))
    assert a == b
    assert should_retry(retrier, "timeout", 2) == should_retry(policy, "timeout", 2)
    with pytest.raises(ValueError, match="start at 0"):
        backoff_delay(retrier, -1, np.random.default_rng(SEED))
    with pytest.raises(ValueError, match="start at 1"):
        should_retry(retrier, "timeout", 0)


# --- circuit breaker -------------------------------------------------------------------------


def breaker(**kw: object) -> CircuitBreaker:
    return CircuitBreaker(BreakerPolicy.model_validate(kw))


def test_breaker_scripted_sequence_gives_the_exact_transition_log() -> None:
    b = breaker()  # fail_max 5, reset_timeout 60 s, one half-open trial
    for second in range(5):
        assert b.allow(float(second))
        b.record_failure(float(second))
    assert b.transitions == [(4.0, CLOSED, OPEN)]
    for t in (4.0, 5.0, 30.0, 63.999):
        assert not b.allow(t)
        assert b.state(t) == OPEN
    assert b.state(64.0) == HALF_OPEN
    assert b.allow(64.0)  # the one trial
    assert not b.allow(64.5)  # no second trial while the first is out
    b.record_failure(65.0)  # the trial fails: a new open period from now
    assert b.state(65.0) == OPEN
    assert not b.allow(124.999)
    assert b.state(125.0) == HALF_OPEN
    assert b.allow(126.0)
    b.record_success(126.0)
    assert b.state(126.0) == CLOSED
    assert b.allow(126.5)
    assert b.transitions == [
        (4.0, CLOSED, OPEN),
        (64.0, OPEN, HALF_OPEN),
        (65.0, HALF_OPEN, OPEN),
        (125.0, OPEN, HALF_OPEN),
        (126.0, HALF_OPEN, CLOSED),
    ]
    assert b.rejected == 6


def test_half_open_is_logged_when_due_not_when_first_observed() -> None:
    b = breaker(fail_max=1, reset_timeout_s=10)
    b.record_failure(2.0)
    assert b.allow(500.0)
    assert b.transitions == [(2.0, CLOSED, OPEN), (12.0, OPEN, HALF_OPEN)]


def test_a_success_resets_the_consecutive_failure_count() -> None:
    b = breaker()
    t = 0.0
    for _ in range(4):
        b.record_failure(t)
        t += 1
    b.record_success(t)
    assert b.failures == 0
    for _ in range(4):
        t += 1
        b.record_failure(t)
    assert b.state(t) == CLOSED
    assert b.failures == 4
    t += 1
    b.record_failure(t)
    assert b.state(t) == OPEN
    assert b.transitions == [(t, CLOSED, OPEN)]


def test_after_closing_it_takes_fail_max_new_failures_to_open_again() -> None:
    b = breaker(fail_max=2, reset_timeout_s=1)
    b.record_failure(0.0)
    b.record_failure(0.0)
    assert b.allow(1.0)
    b.record_success(1.0)
    b.record_failure(2.0)
    assert b.state(2.0) == CLOSED
    b.record_failure(3.0)
    assert b.state(3.0) == OPEN
    assert [to for _, _, to in b.transitions] == [OPEN, HALF_OPEN, CLOSED, OPEN]


def test_several_half_open_trials() -> None:
    b = breaker(fail_max=1, reset_timeout_s=5, half_open_trials=3)
    b.record_failure(0.0)
    assert [b.allow(5.0 + i) for i in range(4)] == [True, True, True, False]
    b.record_success(9.0)  # any success closes it
    assert b.state(9.0) == CLOSED
    b.record_failure(10.0)
    assert [b.allow(15.0) for _ in range(4)] == [True, True, True, False]  # trials renewed
    b.record_failure(16.0)
    assert b.state(16.0) == OPEN
    assert b.transitions[-1] == (16.0, HALF_OPEN, OPEN)


def test_late_results_while_open_change_no_state() -> None:
    b = breaker(fail_max=2, reset_timeout_s=10)
    b.record_failure(0.0)
    b.record_failure(1.0)  # opens; calls let in before it are still running
    b.record_failure(2.0)
    b.record_success(3.0)
    b.record_failure(4.0)
    assert b.state(10.999) == OPEN
    assert b.state(11.0) == HALF_OPEN  # the open period was not extended
    assert b.transitions == [(1.0, CLOSED, OPEN), (11.0, OPEN, HALF_OPEN)]


def test_record_counts_only_the_listed_outcomes_as_failures() -> None:
    b = breaker(fail_max=2, counts=["timeout", "error_5xx"])
    b.record(0.0, "timeout")
    b.record(1.0, "error_429")  # not counted: a success, as pybreaker's excluded exceptions
    b.record(2.0, "error_5xx")
    assert b.state(2.0) == CLOSED
    b.record(3.0, "timeout")
    assert b.state(3.0) == OPEN
    b.record(63.0, "ok")  # half-open since 63; a success closes it
    assert b.state(63.0) == CLOSED


# --- the whole client ------------------------------------------------------------------------


def test_client_runtime_holds_plain_values() -> None:
    runtime = ClientRuntime(ClientPolicy())
    assert runtime.timeout_s == math.inf
    assert runtime.retrier.max_attempts == 1
    assert runtime.fallback == "fail"
    assert runtime.fallback_stage is None
    assert runtime.new_breaker() is None

    policy = ClientPolicy.model_validate(
        {
            "timeout_s": 20,
            "retry": "openai-python",
            "breaker": {"fail_max": 3},
            "fallback": {"kind": "stage", "stage": "generate_small"},
        }
    )
    runtime = ClientRuntime(policy)
    assert runtime.timeout_s == 20.0
    assert runtime.retrier.retry_on == frozenset(OUTCOMES)
    assert runtime.retrier.max_retry_after_s == 120.0
    assert (runtime.fallback, runtime.fallback_stage) == ("stage", "generate_small")
    first, second = runtime.new_breaker(), runtime.new_breaker()
    assert first is not None
    assert second is not None
    assert first is not second
    assert first.fail_max == 3
    assert ClientRuntime(ClientPolicy(fallback={"kind": "skip"})).fallback == "skip"


def test_runtime_objects_have_slots() -> None:
    for obj in (
        Retrier(retry_preset("openai-python")),
        CircuitBreaker(BreakerPolicy()),
        ClientRuntime(ClientPolicy()),
    ):
        assert not hasattr(obj, "__dict__")
