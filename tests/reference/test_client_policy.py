"""The gateway's policy caller: outcomes, retry-after, backoff equal to the model's, and the
pybreaker-based breaker (per attempt, half-open under concurrency)."""

from __future__ import annotations

import asyncio
import email.utils
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import numpy as np
import psycopg
import pytest

from ragstress.config.policy import BreakerPolicy, ClientPolicy, RetryPolicy
from ragstress.model.policies import CircuitBreaker, Retrier
from ragstress.reference.client_policy import (
    AttemptError,
    Breaker,
    CallAbortedError,
    CallFailed,
    CallOk,
    PolicyCaller,
    classify_exception,
    outcome_for_status,
    parse_retry_after,
)

# --- helpers -------------------------------------------------------------------------------


class Recorder:
    """A ``sleep`` seam that records the waits and does not wait."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def policy(**kwargs: Any) -> ClientPolicy:
    return ClientPolicy.model_validate(kwargs)


def scripted(
    outcomes: list[str | AttemptError],
) -> tuple[Callable[[int], Awaitable[str]], list[int]]:
    """An attempt function that fails with the scripted outcomes, then answers "ok"."""
    calls: list[int] = []

    async def attempt(n: int) -> str:
        calls.append(n)
        if outcomes:
            step = outcomes.pop(0)
            raise step if isinstance(step, AttemptError) else AttemptError(step)
        return "ok"

    return attempt, calls


def run(coro: Awaitable[Any]) -> Any:
    async def main() -> Any:
        async with asyncio.timeout(10):
            return await coro

    return asyncio.run(main())


# --- outcomes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (408, "error_408"),
        (409, "error_409"),
        (429, "error_429"),
        (500, "error_5xx"),
        (503, "error_5xx"),
        (529, "error_5xx"),
        (400, "error_4xx"),
        (404, "error_4xx"),
        (422, "error_4xx"),
    ],
)
def test_outcome_for_status(status: int, outcome: str) -> None:
    assert outcome_for_status(status) == outcome


@pytest.mark.parametrize(
    ("exc", "outcome"),
    [
        (TimeoutError(), "timeout"),
        (aiohttp.ServerTimeoutError("read"), "timeout"),
        (aiohttp.ServerDisconnectedError(), "error_connect"),
        (ConnectionResetError(), "error_connect"),
        (aiohttp.ClientPayloadError("cut"), "error_connect"),
        (psycopg.OperationalError("server closed the connection"), "error_connect"),
        (psycopg.DataError("bad vector"), "error_5xx"),
        (KeyError("data"), "error_5xx"),
        (AttemptError("error_stream"), "error_stream"),
    ],
)
def test_classify_exception(exc: BaseException, outcome: str) -> None:
    assert classify_exception(exc).outcome == outcome


def test_connection_refused_is_error_connect() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nobody listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    async def attempt() -> None:
        async with aiohttp.ClientSession() as session:
            await session.get(f"http://127.0.0.1:{port}/")

    async def main() -> str:
        try:
            await attempt()
        except Exception as exc:
            return classify_exception(exc).outcome
        return "ok"

    assert run(main()) == "error_connect"


def test_parse_retry_after() -> None:
    assert parse_retry_after({"retry-after": "0.3"}) == pytest.approx(0.3)
    assert parse_retry_after({"Retry-After": "2"}) == pytest.approx(2.0)
    # milliseconds win, as in openai-python
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == pytest.approx(0.25)
    assert parse_retry_after({"retry-after-ms": "soon", "retry-after": "9"}) == pytest.approx(9)
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after({"retry-after": date}, now=lambda: now) == pytest.approx(30)
    assert parse_retry_after({}) is None
    assert parse_retry_after({"retry-after": "whenever"}) is None
    assert parse_retry_after({"retry-after": "nan"}) is None
    assert parse_retry_after({"retry-after": "inf"}) == float("inf")


# --- retries -------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["openai-python", "tenacity-default"])
def test_backoff_waits_equal_the_models(preset: str) -> None:
    pol = policy(retry={"preset": preset, "max_attempts": 5})
    sleep = Recorder()
    caller = PolicyCaller(pol, rng=np.random.default_rng(42), sleep=sleep)
    attempt, calls = scripted(["error_5xx", "timeout", "error_429", "error_connect"])
    result = run(caller.call(attempt))
    assert isinstance(result, CallOk)
    assert result.value == "ok"
    assert result.attempts == 5
    assert calls == [1, 2, 3, 4, 5]
    retrier = Retrier(pol.retry)
    rng = np.random.default_rng(42)
    expected = [retrier.delay(n, rng) for n in range(4)]
    assert sleep.waits == expected
    assert result.waited_s == pytest.approx(sum(w for w in expected if w is not None))


def test_gives_up_after_max_attempts_with_last_outcome() -> None:
    sleep = Recorder()
    caller = PolicyCaller(policy(retry="openai-python"), rng=np.random.default_rng(0), sleep=sleep)
    attempt, calls = scripted(["error_5xx", "error_5xx", "error_429", "error_5xx"])
    result = run(caller.call(attempt))
    assert isinstance(result, CallFailed)
    assert (result.outcome, result.attempts, len(calls), len(sleep.waits)) == (
        "error_429",
        3,
        3,
        2,
    )


def test_retry_after_is_honoured() -> None:
    sleep = Recorder()
    caller = PolicyCaller(policy(retry="openai-python"), rng=np.random.default_rng(0), sleep=sleep)
    attempt, _ = scripted([AttemptError("error_429", retry_after_s=0.3)])
    result = run(caller.call(attempt))
    assert isinstance(result, CallOk)
    assert result.attempts == 2
    assert sleep.waits == [0.3]


def test_retry_after_above_the_cap_gives_up() -> None:
    sleep = Recorder()
    caller = PolicyCaller(
        policy(retry={"preset": "openai-python", "max_retry_after_s": 1.0}),
        rng=np.random.default_rng(0),
        sleep=sleep,
    )
    attempt, calls = scripted([AttemptError("error_429", retry_after_s=5.0, status=429)])
    result = run(caller.call(attempt))
    assert isinstance(result, CallFailed)
    assert (result.outcome, result.attempts, result.status, calls) == ("error_429", 1, 429, [1])
    assert sleep.waits == []


def test_retry_after_ignored_when_not_honoured() -> None:
    pol = policy(retry={"preset": "openai-python", "honour_retry_after": False})
    sleep = Recorder()
    caller = PolicyCaller(pol, rng=np.random.default_rng(3), sleep=sleep)
    attempt, _ = scripted([AttemptError("error_429", retry_after_s=50.0)])
    run(caller.call(attempt))
    assert sleep.waits == [Retrier(pol.retry).delay(0, np.random.default_rng(3))]


@pytest.mark.parametrize("outcome", ["error_stream", "error_4xx"])
def test_outcomes_outside_the_policy_are_never_retried(outcome: str) -> None:
    caller = PolicyCaller(
        policy(retry="tenacity-default"), rng=np.random.default_rng(0), sleep=Recorder()
    )
    attempt, calls = scripted([outcome])
    result = run(caller.call(attempt))
    assert isinstance(result, CallFailed)
    assert (result.outcome, calls) == (outcome, [1])


def test_retry_on_limits_what_is_retried() -> None:
    pol = policy(retry={"max_attempts": 3, "retry_on": ["error_429"], "backoff": "none"})
    caller = PolicyCaller(pol, rng=np.random.default_rng(0), sleep=Recorder())
    attempt, calls = scripted(["error_429", "error_5xx"])
    result = run(caller.call(attempt))
    assert isinstance(result, CallFailed)
    assert (result.outcome, calls) == ("error_5xx", [1, 2])


def test_timeout_per_attempt() -> None:
    pol = policy(timeout_s=0.1, retry={"max_attempts": 2, "backoff": "none"})
    caller = PolicyCaller(pol, rng=np.random.default_rng(0))
    calls: list[int] = []

    async def attempt(n: int) -> str:
        calls.append(n)
        if n == 1:
            await asyncio.sleep(5)
        return "late but fine"

    t0 = time.perf_counter()
    result = run(caller.call(attempt))
    elapsed = time.perf_counter() - t0
    assert isinstance(result, CallOk)
    assert (result.value, result.attempts) == ("late but fine", 2)
    assert 0.1 <= elapsed < 0.6

    async def hang(n: int) -> str:
        await asyncio.sleep(5)
        return "never"

    failed = run(caller.call(hang))
    assert isinstance(failed, CallFailed)
    assert (failed.outcome, failed.attempts) == ("timeout", 2)


def test_committed_attempts_are_final() -> None:
    caller = PolicyCaller(
        policy(retry="tenacity-default"), rng=np.random.default_rng(0), sleep=Recorder()
    )
    attempt, calls = scripted(["timeout", "timeout"])
    result = run(caller.call(attempt, committed=lambda: True))
    assert isinstance(result, CallFailed)
    assert calls == [1]


def test_aborted_call_propagates_and_is_not_recorded() -> None:
    pol = policy(breaker={"fail_max": 1}, retry="tenacity-default")
    caller = PolicyCaller(pol, rng=np.random.default_rng(0), sleep=Recorder())

    async def attempt(n: int) -> str:
        raise CallAbortedError("the client went away")

    with pytest.raises(CallAbortedError):
        run(caller.call(attempt))
    assert caller.breaker is not None
    assert caller.breaker.state == "closed"


# --- breaker -------------------------------------------------------------------------------


def test_breaker_opens_and_refuses_without_calling() -> None:
    pol = policy(breaker={"fail_max": 2, "reset_timeout_s": 60})
    caller = PolicyCaller(pol, rng=np.random.default_rng(0))
    attempt, calls = scripted(["error_5xx", "error_5xx"])

    async def main() -> list[Any]:
        return [await caller.call(attempt) for _ in range(4)]

    results = run(main())
    assert [r.outcome for r in results] == [
        "error_5xx",
        "error_5xx",
        "breaker_open",
        "breaker_open",
    ]
    assert calls == [1, 1]  # the refused calls never ran
    assert caller.breaker is not None
    assert caller.breaker.state == "open"
    assert caller.breaker.rejected == 2
    assert [(a, b) for _, a, b in caller.breaker.transitions] == [("closed", "open")]


def test_breaker_guards_each_attempt_like_the_model() -> None:
    # two failed attempts of one call open it; the third attempt is refused: breaker_open
    pol = policy(
        breaker={"fail_max": 2, "reset_timeout_s": 60},
        retry={"max_attempts": 3, "backoff": "none"},
    )
    caller = PolicyCaller(pol, rng=np.random.default_rng(0))
    attempt, calls = scripted(["error_5xx", "error_5xx", "error_5xx"])
    result = run(caller.call(attempt))
    assert isinstance(result, CallFailed)
    assert (result.outcome, result.attempts, calls) == ("breaker_open", 3, [1, 2])


def test_uncounted_outcomes_are_successes() -> None:
    pol = policy(breaker={"fail_max": 2, "counts": ["error_5xx"]})
    caller = PolicyCaller(pol, rng=np.random.default_rng(0))
    # 5xx, 429 (not counted: a success, resets the run), 5xx: never two in a row
    attempt, _ = scripted(["error_5xx", "error_429", "error_5xx", "error_4xx", "error_5xx"])

    async def main() -> list[Any]:
        return [await caller.call(attempt) for _ in range(5)]

    run(main())
    assert caller.breaker is not None
    assert caller.breaker.state == "closed"
    assert caller.breaker.failures == 1


def test_breaker_agrees_with_the_models_breaker() -> None:
    """Any sequence of outcomes at one instant: the same admissions and states."""
    rng = np.random.default_rng(5)
    outcomes = ["ok", "error_5xx", "timeout", "error_4xx", "error_stream", "error_429"]
    for _ in range(30):
        bp = BreakerPolicy(fail_max=int(rng.integers(1, 4)), counts=("error_5xx", "timeout"))
        ours, model = Breaker(bp), CircuitBreaker(bp)
        for _ in range(20):
            ticket = ours.admit()
            assert (ticket is not None) == model.allow(0.0)
            if ticket is None:
                continue
            outcome = str(rng.choice(outcomes))
            ours.record(ticket, outcome)
            model.record(0.0, outcome)
            assert ours.state == model.state(0.0)
        assert ours.rejected == model.rejected


def _trial_policy(trials: int) -> ClientPolicy:
    return policy(breaker={"fail_max": 1, "reset_timeout_s": 0.2, "half_open_trials": trials})


@pytest.mark.parametrize("trials", [1, 2])
def test_half_open_lets_in_only_the_trials_under_concurrency(trials: int) -> None:
    caller = PolicyCaller(_trial_policy(trials), rng=np.random.default_rng(0))
    reached: list[int] = []

    async def fail(n: int) -> str:
        raise AttemptError("error_5xx")

    async def slow_ok(n: int) -> str:
        reached.append(n)
        await asyncio.sleep(0.1)
        return "ok"

    async def main() -> tuple[list[str], str, str]:
        await caller.call(fail)
        assert caller.breaker is not None
        assert caller.breaker.state == "open"
        await asyncio.sleep(0.25)
        results = await asyncio.gather(*(caller.call(slow_ok) for _ in range(6)))
        after = caller.breaker.state
        last = await caller.call(slow_ok)
        return (
            [r.outcome if isinstance(r, CallFailed) else "ok" for r in results],
            after,
            ("ok" if isinstance(last, CallOk) else last.outcome),
        )

    outcomes, after, last = run(main())
    assert outcomes.count("ok") == trials
    assert outcomes.count("breaker_open") == 6 - trials
    assert len(reached) == trials + 1
    assert after == "closed"
    assert last == "ok"


def test_half_open_failure_reopens_for_a_new_timeout() -> None:
    caller = PolicyCaller(_trial_policy(1), rng=np.random.default_rng(0))
    attempt, calls = scripted(["error_5xx", "error_5xx"])

    async def main() -> list[str]:
        out = [(await caller.call(attempt))]
        await asyncio.sleep(0.25)
        out.append(await caller.call(attempt))  # the trial fails: open again
        out.append(await caller.call(attempt))  # refused
        await asyncio.sleep(0.25)
        out.append(await caller.call(attempt))  # a new trial, which succeeds
        return [r.outcome if isinstance(r, CallFailed) else "ok" for r in out]

    assert run(main()) == ["error_5xx", "error_5xx", "breaker_open", "ok"]
    assert len(calls) == 3
    assert caller.breaker is not None
    assert [(a, b) for _, a, b in caller.breaker.transitions] == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]


def test_cancelled_trial_gives_its_slot_back() -> None:
    caller = PolicyCaller(_trial_policy(1), rng=np.random.default_rng(0))

    async def fail(n: int) -> str:
        raise AttemptError("error_5xx")

    async def hang(n: int) -> str:
        await asyncio.sleep(5)
        return "never"

    async def ok(n: int) -> str:
        return "ok"

    async def main() -> str:
        await caller.call(fail)
        await asyncio.sleep(0.25)
        task = asyncio.create_task(caller.call(hang))
        await asyncio.sleep(0.05)
        refused = await caller.call(ok)  # the only trial is taken
        assert isinstance(refused, CallFailed)
        assert refused.outcome == "breaker_open"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        result = await caller.call(ok)  # the slot came back: this is the trial
        return "ok" if isinstance(result, CallOk) else result.outcome

    assert run(main()) == "ok"
    assert caller.breaker is not None
    assert caller.breaker.state == "closed"


def test_late_result_while_open_changes_nothing() -> None:
    bp = BreakerPolicy(fail_max=1, reset_timeout_s=60)
    breaker = Breaker(bp)
    early = breaker.admit()
    opener = breaker.admit()
    assert early is not None
    assert opener is not None
    breaker.record(opener, "error_5xx")
    assert breaker.state == "open"
    breaker.record(early, "ok")  # an answer to an attempt let in before it opened
    assert breaker.state == "open"
    assert breaker.admit() is None


def test_retry_policy_round_trip_is_what_the_caller_uses() -> None:
    pol = policy(retry={"preset": "openai-python", "max_attempts": 4})
    caller = PolicyCaller(pol, rng=np.random.default_rng(0))
    assert caller.retrier.max_attempts == 4
    assert isinstance(pol.retry, RetryPolicy)
