"""Client policies at run time: retry decisions, backoff waits, a circuit breaker.

Pure building blocks for the simulator's hot loop: no SimPy, no I/O, no pydantic objects on
the per-request path. Each piece is built once from its config model (``Retrier`` from a
``RetryPolicy``, ``CircuitBreaker`` from a ``BreakerPolicy``, ``ClientRuntime`` from a whole
``ClientPolicy``), keeps plain floats, ints and frozensets in ``__slots__``, and takes time and
randomness as arguments: time is the simulation clock, randomness an explicit
``numpy.random.Generator``.

Numbering: ``attempt`` is 1 for the first call of a request at a stage, 2 for the first
retry, and so on; ``retry_number`` n is 0 before the first retry (``attempt − 1`` of the
attempt that just failed), matching openai-python's ``retries_taken``.

Randomness: a wait draws exactly one ``rng.random()`` when it is jittered and nothing
otherwise (no jitter, a constant wait, no wait, a honoured ``retry-after``, or a decision
not to retry), so switching a stage's policy never shifts another random stream by a
variable amount it did not ask for.

``backoff_delay`` and ``should_retry`` also accept the config model directly for convenience
(converted through a small cache); the engine should build a ``Retrier`` once per stage.
"""

from __future__ import annotations

import functools
import math
from typing import Final, Literal

import numpy as np

from ragstress.config.policy import (
    BreakerPolicy,
    ClientPolicy,
    ConstantBackoff,
    EqualJitter,
    ExponentialBackoff,
    FullJitter,
    NoJitter,
    ProportionalJitter,
    RetryPolicy,
    StageFallback,
)

__all__ = [
    "CLOSED",
    "HALF_OPEN",
    "OPEN",
    "BreakerState",
    "CircuitBreaker",
    "ClientRuntime",
    "Retrier",
    "Transition",
    "backoff_delay",
    "should_retry",
]

BreakerState = Literal["closed", "open", "half_open"]
CLOSED: Final = "closed"
OPEN: Final = "open"
HALF_OPEN: Final = "half_open"
Transition = tuple[float, BreakerState, BreakerState]

_J_NONE, _J_FULL, _J_EQUAL, _J_PROPORTIONAL = 0, 1, 2, 3
_INF = math.inf


def _exponential(initial: float, multiplier: float, n: int, cap: float) -> float:
    """``min(initial · multiplier^n, cap)`` without overflowing for large n."""
    try:
        value = initial * multiplier**n
    except OverflowError:
        return cap
    return min(value, cap)


class Retrier:
    """A ``RetryPolicy`` compiled for the hot loop."""

    __slots__ = (
        "_bases",
        "_exp",
        "_fraction",
        "_jitter",
        "_tail",
        "honour_retry_after",
        "max_attempts",
        "max_retry_after_s",
        "retry_on",
    )

    def __init__(self, policy: RetryPolicy) -> None:
        self.max_attempts: int = policy.max_attempts
        self.retry_on: frozenset[str] = frozenset(policy.retry_on)
        self.honour_retry_after: bool = policy.honour_retry_after
        self.max_retry_after_s: float = (
            _INF if policy.max_retry_after_s is None else policy.max_retry_after_s
        )
        self._jitter = _J_NONE
        self._fraction = 0.0
        self._exp: tuple[float, float, float] | None = None
        backoff = policy.backoff
        bases: list[float] = []
        tail = 0.0  # the wait for every retry number past the table
        if isinstance(backoff, ExponentialBackoff):
            initial, mult, cap = backoff.initial_s, backoff.multiplier, backoff.max_s
            tail = cap
            # every retry number a request can reach, until the cap holds for good
            for n in range(policy.max_attempts - 1):
                value = _exponential(initial, mult, n, cap)
                if value >= cap:
                    break
                bases.append(value)
            else:
                if mult == 1.0:
                    tail = min(initial, cap)
                else:
                    self._exp = (initial, mult, cap)  # only reached past max_attempts
            jitter = backoff.jitter
            if isinstance(jitter, FullJitter):
                self._jitter = _J_FULL
            elif isinstance(jitter, EqualJitter):
                self._jitter = _J_EQUAL
            elif isinstance(jitter, ProportionalJitter):
                self._jitter = _J_PROPORTIONAL
                self._fraction = jitter.fraction
            else:
                assert isinstance(jitter, NoJitter)
        elif isinstance(backoff, ConstantBackoff):
            tail = backoff.wait_s
        self._bases: tuple[float, ...] = tuple(bases)
        self._tail: float = tail

    def should_retry(self, outcome: str, attempt: int) -> bool:
        """Whether attempt number ``attempt`` (1 = the first call), which ended with
        ``outcome``, is followed by another attempt."""
        if attempt < 1:
            raise ValueError(f"attempt numbers start at 1, got {attempt}")
        return attempt < self.max_attempts and outcome in self.retry_on

    def delay(
        self,
        retry_number: int,
        rng: np.random.Generator,
        retry_after_s: float | None = None,
    ) -> float | None:
        """The wait in seconds before retry ``retry_number`` (0 = the first retry), or
        ``None`` when the policy says not to retry: a honoured ``retry-after`` above
        ``max_retry_after_s`` (or infinite). A ``retry-after`` of zero or less, or not a
        number, is ignored, as openai-python does."""
        if retry_number < 0:
            raise ValueError(f"retry numbers start at 0, got {retry_number}")
        if retry_after_s is not None and self.honour_retry_after and retry_after_s > 0:
            if retry_after_s > self.max_retry_after_s or retry_after_s == _INF:
                return None
            return float(retry_after_s)
        bases = self._bases
        if retry_number < len(bases):
            base = bases[retry_number]
        elif self._exp is not None:
            initial, mult, cap = self._exp
            base = _exponential(initial, mult, retry_number, cap)
        else:
            base = self._tail
        jitter = self._jitter
        if jitter == _J_NONE:
            return base
        u = rng.random()
        if jitter == _J_PROPORTIONAL:
            return base * (1.0 - self._fraction * u)
        if jitter == _J_FULL:
            return base * u
        half = base * 0.5
        return half + half * u

    def next_wait(
        self,
        outcome: str,
        attempt: int,
        rng: np.random.Generator,
        retry_after_s: float | None = None,
    ) -> float | None:
        """Both decisions at once: the wait before the next attempt after attempt
        ``attempt`` ended with ``outcome``, or ``None`` to give up."""
        if not self.should_retry(outcome, attempt):
            return None
        return self.delay(attempt - 1, rng, retry_after_s)


@functools.lru_cache(maxsize=256)
def _compile(policy: RetryPolicy) -> Retrier:
    return Retrier(policy)


def _retrier(policy: RetryPolicy | Retrier) -> Retrier:
    return policy if isinstance(policy, Retrier) else _compile(policy)


def backoff_delay(
    policy: RetryPolicy | Retrier,
    retry_number: int,
    rng: np.random.Generator,
    retry_after_s: float | None = None,
) -> float | None:
    """The wait before retry ``retry_number`` (0 = the first retry), or ``None`` for do not
    retry. See ``Retrier.delay``."""
    return _retrier(policy).delay(retry_number, rng, retry_after_s)


def should_retry(policy: RetryPolicy | Retrier, outcome: str, attempt: int) -> bool:
    """Whether attempt ``attempt`` (1 = the first call) that ended with ``outcome`` is
    retried. See ``Retrier.should_retry``."""
    return _retrier(policy).should_retry(outcome, attempt)


class CircuitBreaker:
    """A circuit breaker with pybreaker's semantics and an explicit clock.

    - closed: every call is allowed; ``fail_max`` consecutive failures open the breaker at the
      time of the last one; a success resets the count.
    - open: ``allow`` refuses until ``reset_timeout_s`` after opening; from that instant the
      breaker is half-open (the transition is logged at that instant, whenever it is first
      observed, so the log does not depend on when the breaker is asked).
    - half-open: the first ``half_open_trials`` calls are allowed, later ones refused; a
      success closes the breaker, a failure opens it again for a new ``reset_timeout_s``
      starting at the failure.

    Results of calls that were let in before the breaker opened may arrive while it is open:
    as in pybreaker they change no state (a success still clears the failure count). Times
    passed in must not decrease. ``transitions`` lists ``(time, from, to)`` in order;
    ``rejected`` counts refused calls.
    """

    __slots__ = (
        "_failures",
        "_half_open_at",
        "_state",
        "_trials_left",
        "counts",
        "fail_max",
        "half_open_trials",
        "rejected",
        "reset_timeout_s",
        "transitions",
    )

    def __init__(self, policy: BreakerPolicy) -> None:
        self.fail_max: int = policy.fail_max
        self.reset_timeout_s: float = policy.reset_timeout_s
        self.half_open_trials: int = policy.half_open_trials
        self.counts: frozenset[str] = frozenset(policy.counts)
        self._state: BreakerState = CLOSED
        self._failures = 0
        self._half_open_at = _INF
        self._trials_left = 0
        self.rejected = 0
        self.transitions: list[Transition] = []

    @property
    def failures(self) -> int:
        """The current run of consecutive failures."""
        return self._failures

    def _move(self, now: float, to: BreakerState) -> None:
        self.transitions.append((now, self._state, to))
        self._state = to

    def _open(self, now: float) -> None:
        self._move(now, OPEN)
        self._half_open_at = now + self.reset_timeout_s

    def _advance(self, now: float) -> None:
        if self._state == OPEN and now >= self._half_open_at:
            self._move(self._half_open_at, HALF_OPEN)
            self._trials_left = self.half_open_trials

    def state(self, now: float) -> BreakerState:
        self._advance(now)
        return self._state

    def allow(self, now: float) -> bool:
        """Whether a call may go to the stage now. A ``True`` in half-open uses up a trial;
        a ``False`` is counted in ``rejected``."""
        if self._state == CLOSED:
            return True
        self._advance(now)
        if self._state == HALF_OPEN and self._trials_left > 0:
            self._trials_left -= 1
            return True
        self.rejected += 1
        return False

    def record_success(self, now: float) -> None:
        self._advance(now)
        self._failures = 0
        if self._state == HALF_OPEN:
            self._move(now, CLOSED)

    def record_failure(self, now: float) -> None:
        self._advance(now)
        self._failures += 1
        state = self._state
        if (state == CLOSED and self._failures >= self.fail_max) or state == HALF_OPEN:
            self._open(now)

    def record(self, now: float, outcome: str) -> None:
        """Record a call's outcome: a failure if ``outcome`` is in ``counts``, else a
        success (``ok`` and any outcome the policy does not count)."""
        if outcome in self.counts:
            self.record_failure(now)
        else:
            self.record_success(now)


class ClientRuntime:
    """A whole ``ClientPolicy`` compiled for the engine.

    ``timeout_s`` is ``math.inf`` when the caller waits for ever. ``fallback`` is ``"fail"``,
    ``"skip"`` or ``"stage"`` (then ``fallback_stage`` names the stage). ``new_breaker()``
    gives a fresh breaker for a run, or ``None`` when the policy has none.
    """

    __slots__ = ("_breaker", "fallback", "fallback_stage", "retrier", "timeout_s")

    def __init__(self, policy: ClientPolicy) -> None:
        self.timeout_s: float = _INF if policy.timeout_s is None else policy.timeout_s
        self.retrier = Retrier(policy.retry)
        self._breaker = policy.breaker
        fallback = policy.fallback
        self.fallback: Literal["fail", "skip", "stage"] = fallback.kind
        self.fallback_stage: str | None = (
            fallback.stage if isinstance(fallback, StageFallback) else None
        )

    def new_breaker(self) -> CircuitBreaker | None:
        return None if self._breaker is None else CircuitBreaker(self._breaker)
