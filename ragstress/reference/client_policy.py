"""A caller that applies a ``ClientPolicy`` to a real dependency, with the libraries real
services use: tenacity for retries, pybreaker for the circuit breaker, asyncio for timeouts.

The simulator (``ragstress.model``) and this caller must mean the same thing by a policy, or
a measured run and a simulated one could not be compared. So the decisions are not
re-implemented here: whether to retry and how long to wait come from the model's
``Retrier`` (``should_retry`` + ``delay``, i.e. ``Retrier.next_wait``), with randomness from
an explicit, seeded ``numpy.random.Generator`` that the owner of the caller passes in; the
breaker has the model's ``CircuitBreaker`` semantics, implemented on pybreaker's state
machine.

What one call does (``PolicyCaller.call``)
==========================================

Each *attempt*:

1. asks the breaker for admission. A refused attempt is ``breaker_open``: it does not reach
   the dependency and is never retried (``breaker_open`` is not a policy outcome), so the
   call fails at once and the caller's fallback decides. The breaker guards **each attempt**,
   not the whole call, as in the model (``ragstress.model.engine``: ``breaker.allow`` in
   ``_attempt``, ``breaker.record`` in ``_resolve``, once per call to the stage, retries
   included);
2. runs the attempt under ``asyncio.timeout(timeout_s)`` (from sending to the last byte or
   token) — when it fires, the outcome is ``timeout``;
3. classifies what happened (``classify_exception``): the attempt function raises
   ``AttemptError`` for what it knows (an HTTP status, a broken stream), transport errors map
   to ``error_connect`` and anything unexpected to ``error_5xx``;
4. records the outcome in the breaker: outcomes listed in ``breaker.counts`` are failures,
   every other outcome (``ok``, ``error_stream``, a plain 4xx, ...) a success.

Between attempts tenacity's ``AsyncRetrying`` loops: its ``retry`` predicate asks the model's
``Retrier.next_wait(outcome, attempt, rng, retry_after)``, which both decides (outcome in
``retry_on``, attempts left, ``retry-after`` not above ``max_retry_after_s``) and gives the
wait (a honoured ``retry-after`` or the jittered backoff); its ``wait`` returns that value.
The result is ``CallOk`` (value, attempts, total wait) or ``CallFailed`` (final outcome,
attempts, total wait, message, upstream status).

Attempts are counted as the model counts them: every attempt started, one refused by the
breaker included.

Outcome names
=============

A call outcome is a policy outcome (``timeout``, ``error_connect``, ``error_408``,
``error_409``, ``error_429``, ``error_5xx``), or ``error_stream`` (a stream that broke or
carried an error event after the 200; openai-python raises it outside its retry loop, so
never retried), ``error_4xx`` (any other 4xx: a request the dependency will never accept,
never retried), or ``breaker_open``.

The breaker on pybreaker
========================

pybreaker's ``call_async`` needs tornado, and its sync ``call`` runs the guarded function
inside itself (under its lock), so an awaited attempt cannot be inside it. So the state
machine is driven in two synchronous steps per attempt, each atomic on the event loop:

- *admission*: ``breaker.call(probe)`` where ``probe`` is a generator function. pybreaker's
  state runs its ``before_call`` (open: raise ``CircuitBreakerError`` while ``reset_timeout``
  has not elapsed, else move to half-open) and, seeing a generator, returns its
  ``generator_call`` wrapper *unstarted* — so nothing is recorded (this is the mechanism of
  pybreaker's own ``calling()`` context manager, stopped before the ``with`` body).
- *result*: once the attempt's outcome is known, ``breaker.call(fn)`` with a synchronous
  ``fn`` that returns (``ok``) or raises the outcome; ``exclude`` makes outcomes not in
  ``counts`` successes. This records in the *current* state, as the model does: a late
  result of an attempt let in earlier, arriving while the breaker is open, changes nothing;
  arriving after ``reset_timeout``, it is the half-open trial's result.

Half-open: pybreaker lets every call through while half-open (in threaded use its lock made
that one call at a time) and its ``success_threshold`` counts *consecutive successes needed to
close* — not the model's ``half_open_trials``, which is how many attempts are *let in*, any
one success closing the breaker. So pybreaker runs with ``success_threshold=1`` and this
module admits at most ``half_open_trials`` attempts per half-open period (a listener resets
the allowance on every entry to half-open), refusing the rest with ``breaker_open``. An
admitted trial that is cancelled (the request went away) gives its slot back.

pybreaker measures ``reset_timeout`` on the wall clock (``datetime.now(UTC)``); it offers no
clock seam, so tests of the breaker wait in real time.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import math
import time
from collections.abc import Awaitable, Callable, Generator, Mapping
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

import aiohttp
import numpy as np
import psycopg
import pybreaker
from tenacity import AsyncRetrying, RetryCallState, stop_after_attempt

from ragstress.config.policy import BreakerPolicy, ClientPolicy
from ragstress.model.policies import CLOSED, HALF_OPEN, OPEN, BreakerState, Retrier

__all__ = [
    "BREAKER_OPEN",
    "ERROR_4XX",
    "ERROR_5XX",
    "ERROR_CONNECT",
    "ERROR_STREAM",
    "TIMEOUT",
    "AttemptError",
    "Breaker",
    "CallAbortedError",
    "CallFailed",
    "CallOk",
    "CallResult",
    "Classifier",
    "PolicyCaller",
    "Ticket",
    "classify_exception",
    "error_from_response",
    "outcome_for_status",
    "parse_retry_after",
]

TIMEOUT: Final = "timeout"
ERROR_CONNECT: Final = "error_connect"
ERROR_5XX: Final = "error_5xx"
ERROR_4XX: Final = "error_4xx"
ERROR_STREAM: Final = "error_stream"
BREAKER_OPEN: Final = "breaker_open"

_OK: Final = "ok"
_MAX_ERROR_BODY = 2000  # characters of an error response kept for the message

T = TypeVar("T")


# --- outcomes ------------------------------------------------------------------------------


class AttemptError(Exception):
    """One attempt failed with ``outcome`` (see the module docstring for the names).

    ``retry_after_s`` is the server's ``retry-after`` (``None`` when absent); ``status`` the
    HTTP status when there was one.
    """

    def __init__(
        self,
        outcome: str,
        message: str = "",
        *,
        retry_after_s: float | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message or outcome)
        self.outcome = outcome
        self.message = message or outcome
        self.retry_after_s = retry_after_s
        self.status = status


class CallAbortedError(Exception):
    """Raised by an attempt for a reason that is not the dependency's doing — the downstream
    client went away while its answer was being streamed. The caller re-raises it at once:
    no retry, and nothing recorded in the breaker (a client hanging up must not open the
    breaker of a healthy dependency)."""


def outcome_for_status(status: int) -> str:
    """The outcome of an HTTP answer with ``status`` (not 2xx): 408, 409 and 429 have their
    own outcomes, other 4xx are ``error_4xx``, everything else ``error_5xx``."""
    if status == 408:
        return "error_408"
    if status == 409:
        return "error_409"
    if status == 429:
        return "error_429"
    if 400 <= status < 500:
        return ERROR_4XX
    return ERROR_5XX


def parse_retry_after(
    headers: Mapping[str, str], *, now: Callable[[], float] = time.time
) -> float | None:
    """Seconds the server asks to wait, as openai-python reads them: ``retry-after-ms``
    (milliseconds) first, then ``retry-after`` as seconds, then as an HTTP date (relative to
    ``now()``, a Unix time). ``None`` when absent or unreadable. Zero, negative and infinite
    values are returned as they are: the ``Retrier`` ignores the first two and gives up on
    the last, exactly as for a simulated ``retry-after``."""
    lowered = {k.lower(): v for k, v in headers.items()}
    ms = lowered.get("retry-after-ms")
    if ms is not None:
        try:
            value = float(ms) / 1000.0
        except ValueError:
            pass
        else:
            if not math.isnan(value):
                return value
    raw = lowered.get("retry-after")
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        pass
    else:
        return None if math.isnan(value) else value
    parsed = email.utils.parsedate_tz(raw)
    if parsed is None:
        return None
    return float(email.utils.mktime_tz(parsed)) - now()


async def error_from_response(resp: aiohttp.ClientResponse) -> AttemptError:
    """The ``AttemptError`` for a non-2xx answer: outcome by status, the server's
    ``retry-after``, and the start of the body as the message."""
    try:
        body = (await resp.text(errors="replace"))[:_MAX_ERROR_BODY]
    except (TimeoutError, aiohttp.ClientError, ValueError):
        body = ""
    return AttemptError(
        outcome_for_status(resp.status),
        f"HTTP {resp.status}: {body}".rstrip(": "),
        retry_after_s=parse_retry_after(resp.headers),
        status=resp.status,
    )


def classify_exception(exc: BaseException) -> AttemptError:
    """The outcome of an exception raised by an attempt.

    - ``AttemptError``: as it says;
    - any ``TimeoutError`` (``asyncio.timeout``, aiohttp's own read timeouts): ``timeout``;
    - ``aiohttp.ClientResponseError`` (``raise_for_status``): by its status;
    - other aiohttp client errors and ``OSError`` (refused, reset, ``ServerDisconnected``,
      DNS): ``error_connect`` — as openai-python's ``APIConnectionError``;
    - ``psycopg.OperationalError`` (the server is unreachable or went away, a pool timeout):
      ``error_connect``; any other database error: ``error_5xx``;
    - anything else (a malformed answer, a bug in the attempt): ``error_5xx``, so that the
      request fails visibly with the exception's type in the message.
    """
    if isinstance(exc, AttemptError):
        return exc
    text = f"{type(exc).__name__}: {exc}".rstrip(": ")
    if isinstance(exc, TimeoutError):
        return AttemptError(TIMEOUT, text)
    if isinstance(exc, aiohttp.ClientResponseError):
        return AttemptError(outcome_for_status(exc.status), text, status=exc.status)
    if isinstance(exc, aiohttp.ClientError | OSError):
        return AttemptError(ERROR_CONNECT, text)
    if isinstance(exc, psycopg.OperationalError):
        return AttemptError(ERROR_CONNECT, text)
    return AttemptError(ERROR_5XX, text)


Classifier = Callable[[BaseException], AttemptError]


# --- the breaker ---------------------------------------------------------------------------


class _OutcomeError(Exception):
    """An attempt's known outcome, raised into pybreaker to record it."""

    def __init__(self, outcome: str) -> None:
        super().__init__(outcome)
        self.outcome = outcome


def _probe() -> Generator[None, None, None]:
    """Admission only: pybreaker returns a generator's wrapper unstarted (see the module
    docstring), so calling through it records nothing."""
    yield


_PYBREAKER_STATE: Mapping[str, BreakerState] = {
    pybreaker.STATE_CLOSED: CLOSED,
    pybreaker.STATE_OPEN: OPEN,
    pybreaker.STATE_HALF_OPEN: HALF_OPEN,
}


@dataclass(frozen=True, slots=True)
class Ticket:
    """An admitted attempt: ``trial`` when it is one of a half-open period's trials
    (``period`` numbers the half-open periods)."""

    trial: bool
    period: int


class _Listener(pybreaker.CircuitBreakerListener):
    def __init__(self, owner: Breaker) -> None:
        self._owner = owner

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        old = CLOSED if old_state is None else _PYBREAKER_STATE[old_state.name]
        self._owner._moved(old, _PYBREAKER_STATE[new_state.name])


class Breaker:
    """A ``BreakerPolicy`` on a ``pybreaker.CircuitBreaker``, for concurrent asyncio callers.

    ``admit()`` before an attempt (``None``: refused), then exactly one of
    ``record(ticket, outcome)`` or ``abandon(ticket)``. ``transitions`` lists
    ``(time.monotonic(), from, to)``; ``rejected`` counts refusals; ``on_change(old, new)`` is
    called on every transition (for a gauge). See the module docstring for how pybreaker is
    driven and why ``half_open_trials`` is enforced here.
    """

    def __init__(
        self,
        policy: BreakerPolicy,
        *,
        name: str = "",
        on_change: Callable[[BreakerState, BreakerState], None] | None = None,
    ) -> None:
        self.counts: frozenset[str] = frozenset(policy.counts)
        self.half_open_trials: int = policy.half_open_trials
        self.rejected = 0
        self.transitions: list[tuple[float, BreakerState, BreakerState]] = []
        self._on_change = on_change
        self._trials_left = 0
        self._period = 0
        self.pybreaker = pybreaker.CircuitBreaker(
            fail_max=policy.fail_max,
            reset_timeout=policy.reset_timeout_s,
            success_threshold=1,
            exclude=[self._not_counted],
            listeners=[_Listener(self)],
            name=name or None,
            throw_new_error_on_trip=False,
        )

    def _not_counted(self, exc: BaseException) -> bool:
        return isinstance(exc, _OutcomeError) and exc.outcome not in self.counts

    def _moved(self, old: BreakerState, new: BreakerState) -> None:
        if new == HALF_OPEN:
            self._period += 1
            self._trials_left = self.half_open_trials
        self.transitions.append((time.monotonic(), old, new))
        if self._on_change is not None:
            self._on_change(old, new)

    @property
    def state(self) -> BreakerState:
        """The state as pybreaker last moved it (open turns half-open when next asked)."""
        return _PYBREAKER_STATE[self.pybreaker.current_state]

    @property
    def failures(self) -> int:
        """The current run of consecutive failures (pybreaker's ``fail_counter``)."""
        return self.pybreaker.fail_counter

    def admit(self) -> Ticket | None:
        """Whether an attempt may go to the dependency now; ``None`` when refused."""
        if self.pybreaker.current_state == pybreaker.STATE_HALF_OPEN and self._trials_left <= 0:
            self.rejected += 1
            return None
        try:
            self.pybreaker.call(_probe)
        except pybreaker.CircuitBreakerError:
            self.rejected += 1
            return None
        if self.pybreaker.current_state == pybreaker.STATE_HALF_OPEN:
            if self._trials_left <= 0:
                self.rejected += 1
                return None
            self._trials_left -= 1
            return Ticket(trial=True, period=self._period)
        return Ticket(trial=False, period=self._period)

    def record(self, ticket: Ticket, outcome: str) -> None:
        """Record an admitted attempt's outcome (``"ok"`` or an outcome name)."""

        def known() -> None:
            if outcome != _OK:
                raise _OutcomeError(outcome)

        # raised back: the outcome was recorded, or (open) ignored, as the model does
        with contextlib.suppress(_OutcomeError, pybreaker.CircuitBreakerError):
            self.pybreaker.call(known)

    def abandon(self, ticket: Ticket) -> None:
        """An admitted attempt ends without an outcome (cancelled): a half-open trial gives
        its slot back so the breaker cannot stay half-open with no trial running."""
        if (
            ticket.trial
            and ticket.period == self._period
            and self.pybreaker.current_state == pybreaker.STATE_HALF_OPEN
        ):
            self._trials_left += 1


# --- results -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallOk(Generic[T]):
    """A call that succeeded after ``attempts`` attempts and ``waited_s`` of backoff."""

    value: T
    attempts: int
    waited_s: float


@dataclass(frozen=True, slots=True)
class CallFailed:
    """A call whose last attempt failed with ``outcome`` (or was refused: ``breaker_open``).

    ``status`` is the last HTTP status seen, when the failure was one.
    """

    outcome: str
    attempts: int
    waited_s: float
    message: str
    status: int | None = None


CallResult = CallOk[T] | CallFailed


# --- the caller ----------------------------------------------------------------------------


class PolicyCaller:
    """Calls one dependency under one ``ClientPolicy``; one instance per dependency, shared
    by all concurrent requests (the breaker is the dependency's).

    ``rng`` draws the backoff jitter (exactly as the model: one draw per jittered wait).
    ``sleep`` waits between attempts (a seam: tests record the waits). ``classify`` turns an
    attempt's exception into an outcome. ``on_failure(outcome)`` is called for every failed
    or refused attempt, ``on_retry(wait_s)`` before every retry's wait, and
    ``on_breaker_change(old, new)`` on every breaker transition — hooks for metrics.
    """

    def __init__(
        self,
        policy: ClientPolicy,
        *,
        rng: np.random.Generator,
        name: str = "",
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        classify: Classifier = classify_exception,
        on_failure: Callable[[str], None] | None = None,
        on_retry: Callable[[float], None] | None = None,
        on_breaker_change: Callable[[BreakerState, BreakerState], None] | None = None,
    ) -> None:
        self.policy = policy
        self.name = name
        self.timeout_s: float | None = policy.timeout_s
        self.retrier = Retrier(policy.retry)
        self.breaker: Breaker | None = (
            None
            if policy.breaker is None
            else Breaker(policy.breaker, name=name, on_change=on_breaker_change)
        )
        self._rng = rng
        self._sleep = sleep
        self._classify = classify
        self._on_failure = on_failure
        self._on_retry = on_retry

    async def _one(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """One attempt: admission, the timed call, classification, the breaker's record."""
        breaker = self.breaker
        ticket: Ticket | None = None
        if breaker is not None:
            ticket = breaker.admit()
            if ticket is None:
                if self._on_failure is not None:
                    self._on_failure(BREAKER_OPEN)
                raise AttemptError(BREAKER_OPEN, f"the circuit breaker of {self.name} is open")
        try:
            async with asyncio.timeout(self.timeout_s):
                value = await attempt()
        except (CallAbortedError, asyncio.CancelledError):
            if breaker is not None and ticket is not None:
                breaker.abandon(ticket)
            raise
        except Exception as exc:
            err = self._classify(exc)
            if isinstance(exc, TimeoutError) and self.timeout_s is not None:
                err = AttemptError(TIMEOUT, f"no complete answer within {self.timeout_s:g} s")
            if breaker is not None and ticket is not None:
                breaker.record(ticket, err.outcome)
            if self._on_failure is not None:
                self._on_failure(err.outcome)
            raise err from (None if err is exc else exc)
        if breaker is not None and ticket is not None:
            breaker.record(ticket, _OK)
        return value

    async def call(
        self,
        attempt: Callable[[int], Awaitable[T]],
        *,
        committed: Callable[[], bool] | None = None,
    ) -> CallOk[T] | CallFailed:
        """Run ``attempt(n)`` (n = 1, 2, ...) under the policy until one succeeds or the
        policy gives up. ``committed``: once it returns true, a failed attempt is final — its
        output already reached the client (a streamed answer), so it cannot be retried."""
        tries = 0
        waited = 0.0
        next_wait = 0.0

        async def one() -> T:
            nonlocal tries
            tries += 1
            n = tries
            return await self._one(lambda: attempt(n))

        def retry(rs: RetryCallState) -> bool:
            nonlocal next_wait
            outcome = rs.outcome
            assert outcome is not None
            exc = outcome.exception()
            if not isinstance(exc, AttemptError):
                return False  # CallAbortedError, a cancellation: re-raised as they are
            if committed is not None and committed():
                return False
            wait = self.retrier.next_wait(
                exc.outcome, rs.attempt_number, self._rng, exc.retry_after_s
            )
            if wait is None:
                return False
            next_wait = wait
            return True

        def wait(rs: RetryCallState) -> float:
            return next_wait

        async def before_sleep(rs: RetryCallState) -> None:
            nonlocal waited
            waited += next_wait
            if self._on_retry is not None:
                self._on_retry(next_wait)

        retrying = AsyncRetrying(
            sleep=self._sleep,
            stop=stop_after_attempt(self.retrier.max_attempts),
            wait=wait,
            retry=retry,
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            value: T = await retrying(one)
        except AttemptError as exc:
            return CallFailed(exc.outcome, tries, waited, exc.message, exc.status)
        return CallOk(value, tries, waited)
