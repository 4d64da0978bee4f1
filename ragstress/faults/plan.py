"""What a fault plan does to a call: the one definition shared by the model and the chaos proxy.

Pure: no SimPy, no I/O, no clock, no global random state. Time is passed in (seconds since the
run's start); randomness is passed in (uniform draws, or a numpy Generator).

Where and when a fault acts
===========================

A *call* is one attempt by a caller (the gateway, the previous stage's client) to use a stage;
a retry is a new call, with its own time and its own draws. A call's fate is decided **once, at
the instant t the caller sends it to the stage** — the place where the chaos proxy sits, in
front of the stage's queue and rate limiter. A window covers t when ``start_s ≤ t < end_s``
(start inclusive, end exclusive). A decided effect sticks to the call: a window that ends while
a call is hung, delayed or streaming does not rescue it.

A call answered by a fault (refused, hung, error at once) never reaches the stage: it takes no
rate-limit budget, no queue place and no server. Every other call goes on to the stage
normally (rate limiter, queue, service), with the effects below applied.

Per-call faults (each hits ``percent`` % of calls)
==================================================

Columns: what the caller sees and when (t = the call's send time, S = the stage's normal
queueing + service time for the call); *server* = whether the call holds a stage server
("conn." = it holds only the caller's connection); *outcome* = the RunResult outcome unless the
caller's own timeout ends the call first.

====================  =========================================  ===========  ==============
kind                  caller sees, when                          server       outcome
====================  =========================================  ===========  ==============
outage                connection refused at t; nothing is sent   no           error_connect
hang                  accepted at t, never answered; ends only   no (conn.)   timeout
                      at the caller's timeout
error                 the status (+ retry-after) at t + d, d =   no (conn.)   error_429 (429)
                      the added latency if any; no body                       error_5xx (5xx)
                                                                              timeout (408)
error with            served normally (t + d + S, latency        yes, for its as above
after_service         faults apply), then the status instead     service
                      of the answer
added_latency         the request reaches the stage d later (d   no during d  ok
                      drawn from ``latency``); answer at           (conn.)
                      t + d + S
latency_multiplier    service time × factor (a stream: time to   yes, for     ok
                      first token and each token gap × factor);  factor ×
                      queues grow as they will                   service
stream_stall          after ``after_tokens`` tokens the stream   yes, slot    ok
                      is silent for ``stall_s``, then goes on    held
                      (0 = before the first token)
stream_truncate       after ``after_tokens`` tokens the stream   freed at     error_stream
                      breaks off (connection closed, no final    the break
                      event)
====================  =========================================  ===========  ==============

Details:

- **Errors answer at once** by default (after any added latency), because that is what the
  providers in notes/faults.md do under trouble: a 429 is the rate limiter refusing at
  admission, 503 "overloaded" and Anthropic's 529 ``overloaded_error`` are load shedding in
  front of the model, and none of them spends generation time. It is also what HTTP fault
  injectors (Envoy, Istio "abort") do, so a proxy reproduces it exactly by answering without
  forwarding. ``after_service: true`` is the other failure — the server works, then fails (a
  500 after the work, which keeps an overloaded server busy; the metastable-failure trigger);
  the proxy reproduces it by forwarding, draining the upstream's answer, then sending the
  status. Either way no answer body is streamed, so a streaming stage has no time to first
  token.
- ``retry_after_s`` is sent as ``retry-after-ms`` (exact, milliseconds) and ``retry-after``
  (whole seconds, rounded up); a caller that honours it waits ``retry_after_s``.
- **408** maps to outcome ``timeout``: it is the server declaring the request timed out, and
  the outcome vocabulary has no other 4xx class; openai-python retries it like a timeout.
- **Hang needs a caller timeout.** A hung call never finishes on its own; a caller with no
  timeout would wait forever. An engine must refuse to run a plan with a hang fault on a stage
  whose caller has no finite timeout, or end hung calls at a documented cap (openai-python's
  default is 600 s). :meth:`FaultPlan.hangs` says which stages need this. The proxy closes
  hung connections when the run ends.
- ``latency_multiplier`` makes the *server* slower, so it costs capacity and builds queues —
  the capacity-drop trigger of metastable failure. The proxy reproduces it by holding the call
  (and one of the stage's server permits) for ``(factor − 1)`` × the upstream's time for each
  piece of the answer.
- Stream faults act between tokens: a stall "after n tokens" happens only if the answer has
  more than n tokens (:meth:`CallEffect.stalls`); a truncation "after n tokens" breaks only an
  answer with more than n tokens (:meth:`CallEffect.truncates`) — an answer that fits is
  delivered whole and is ``ok``. They mean nothing on a stage that does not stream;
  :meth:`FaultPlan.from_scenario` rejects them there when told which stages stream.
- **Cost** (an assumption, as providers publish little on it): a call answered by a fault is
  not billed; an ``after_service`` error spends server time but is not billed per call or per
  token; a truncated stream bills its input and the output tokens delivered.

Several faults at once
======================

All per-call faults of a stage whose windows cover t are evaluated **in plan order**
(the order of ``scenario.faults``), **each with its own independent uniform draw**
``u_i ∈ [0, 1)``; fault i hits when ``u_i < percent_i / 100`` (so 100 % always hits, 0 %
never). Independent draws mean two 50 % faults both hit a quarter of the calls, as with Envoy's
separate delay and abort percentages; unlike Toxiproxy, the roll is per call, not per
connection. Then the hits combine:

1. any ``outage`` hit → the call is refused; nothing else applies;
2. else any ``hang`` hit → the call hangs; nothing else applies;
3. else the first ``error`` hit in plan order gives the status, ``retry_after_s`` and
   ``after_service``; later error hits are ignored; stream faults do not apply (no stream);
4. ``added_latency`` hits add up (one draw each from the call's generator, in plan order,
   after the targeting draws; a ``deterministic`` latency takes no draw) — delays in series;
5. ``latency_multiplier`` hits multiply;
6. of the ``stream_stall`` hits, the one with the fewest ``after_tokens`` applies (ties: plan
   order); of the ``stream_truncate`` hits, the fewest ``after_tokens``; a stall at or after
   the truncation point never happens.

State faults (the whole stage, for the whole window)
====================================================

- ``capacity_loss``: of the stage's ``units`` (replicas for a pool stage; concurrency slots
  for an ``llm_api`` stage, which has one "replica"), ``replicas_down`` or
  ``ceil(fraction × units)`` are down; overlapping losses add, capped at all units. A lost
  server finishes the call it is serving (no in-flight call is lost) but starts no new one;
  queued calls wait for the servers left. With every unit down, calls queue (and are shed by
  ``queue_limit``) but none is served until capacity returns — capacity loss never refuses a
  connection; use ``outage`` for that.
- ``rate_limit_cut``: every rate-limit bucket of the stage has its capacity and refill rate
  multiplied by ``factor``; overlapping cuts multiply. A bucket holding more than its cut
  capacity keeps only the cut capacity; when the cut ends the capacity returns but the tokens
  do not (no free burst). A refused call sees ``429`` with ``retry-after`` (see
  :mod:`ragstress.model.ratelimit`) — outcome ``error_429``.

Both take effect exactly at the window edges, which :meth:`FaultPlan.change_points` lists so
an engine can schedule an event there.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from ragstress.config.distributions import Deterministic
from ragstress.config.faults import (
    AddedLatency,
    CallFault,
    CapacityLoss,
    ErrorStatus,
    Fault,
    Hang,
    LatencyMultiplier,
    Outage,
    RateLimitCut,
    StreamStall,
    StreamTruncate,
)

__all__ = ["NO_EFFECT", "CallEffect", "FaultPlan", "status_outcome"]


def status_outcome(status: int) -> str:
    """The RunResult outcome of a call answered with HTTP ``status``."""
    if status == 429:
        return "error_429"
    if status == 408:
        return "timeout"
    return "error_5xx"


@dataclass(frozen=True, slots=True)
class CallEffect:
    """What the fault plan does to one call (see the module docstring for the semantics).

    At most one of ``refuse``, ``hang`` and ``status`` decides the call's fate; when ``refuse``
    or ``hang`` is set every other field is neutral.
    """

    refuse: bool = False
    """Outage: the connection is refused at once (error_connect)."""
    hang: bool = False
    """Never answered; the caller's timeout ends the call (timeout)."""
    status: int | None = None
    """An error status returned instead of the answer."""
    retry_after_s: float | None = None
    """The ``retry-after`` sent with ``status``, if any."""
    error_after_service: bool = False
    """With ``status``: the stage serves the call first, then answers with the status."""
    extra_latency_s: float = 0.0
    """Delay before the call reaches the stage (holds no server)."""
    latency_factor: float = 1.0
    """Multiplies the call's service time (and each token gap of a stream)."""
    stall_after_tokens: int | None = None
    """A stream goes silent for ``stall_s`` after this many tokens."""
    stall_s: float = 0.0
    truncate_after_tokens: int | None = None
    """A stream breaks off after this many tokens."""

    @property
    def is_noop(self) -> bool:
        return self == NO_EFFECT

    @property
    def answered_by_fault(self) -> bool:
        """True when the call never reaches the stage: refused, hung, or an error at once."""
        return (
            self.refuse or self.hang or (self.status is not None and not self.error_after_service)
        )

    def stalls(self, output_tokens: int) -> bool:
        """Whether a stream of ``output_tokens`` tokens reaches the stall point."""
        return self.stall_after_tokens is not None and output_tokens > self.stall_after_tokens

    def truncates(self, output_tokens: int) -> bool:
        """Whether a stream of ``output_tokens`` tokens is broken off before its end."""
        return self.truncate_after_tokens is not None and output_tokens > self.truncate_after_tokens

    def delivered_tokens(self, output_tokens: int) -> int:
        """Output tokens the caller receives (all of them unless truncated; none on an error)."""
        if self.refuse or self.hang or self.status is not None:
            return 0
        if self.truncate_after_tokens is not None:
            return min(output_tokens, self.truncate_after_tokens)
        return output_tokens

    def outcome(self, output_tokens: int = 0) -> str:
        """The outcome of the call if the caller's own timeouts do not end it first.

        ``output_tokens`` is the size of the answer the stage would stream (0 for a stage that
        does not stream)."""
        if self.refuse:
            return "error_connect"
        if self.hang:
            return "timeout"
        if self.status is not None:
            return status_outcome(self.status)
        if self.truncates(output_tokens):
            return "error_stream"
        return "ok"


NO_EFFECT = CallEffect()
"""The effect of no fault: the call goes through untouched."""
_REFUSED = CallEffect(refuse=True)
_HUNG = CallEffect(hang=True)

_STREAM_FAULTS = (StreamStall, StreamTruncate)


class FaultPlan:
    """A scenario's faults indexed per stage, with the semantics of the module docstring.

    Build it with :meth:`from_scenario`. Immutable after construction; safe to share.
    """

    __slots__ = ("_all", "_calls", "_changes", "_faults", "_state")

    def __init__(
        self,
        faults: tuple[Fault, ...],
        calls: dict[str, tuple[CallFault, ...]],
        state: dict[str, tuple[RateLimitCut | CapacityLoss, ...]],
    ) -> None:
        self._faults = faults
        self._calls = calls
        self._state = state
        self._changes: dict[str, tuple[float, ...]] = {
            stage: tuple(sorted({x for f in fs for x in (f.start_s, f.end_s)}))
            for stage, fs in state.items()
        }
        self._all: dict[str, tuple[Fault, ...]] = {
            stage: tuple(f for f in faults if f.stage == stage) for stage in calls
        }

    @classmethod
    def from_scenario(
        cls,
        faults: Iterable[Fault],
        stage_names: Iterable[str],
        *,
        streaming: Iterable[str] | None = None,
        rate_limited: Iterable[str] | None = None,
    ) -> FaultPlan:
        """Check ``faults`` against the profile's stages and index them per stage.

        ``stage_names`` are the profile's stages; a fault on any other name is an error. When
        ``streaming`` (stages that stream tokens) or ``rate_limited`` (stages with rate-limit
        buckets) is given, stream faults and rate-limit cuts elsewhere are errors too.
        Raises ValueError listing every problem and the allowed names.
        """
        plan = tuple(faults)
        names = list(dict.fromkeys(stage_names))
        known = set(names)
        streams = None if streaming is None else set(streaming)
        limited = None if rate_limited is None else set(rate_limited)
        problems: list[str] = []
        for i, f in enumerate(plan):
            where = f"faults[{i}] ({f.kind})"
            if f.stage not in known:
                allowed = ", ".join(names) or "none"
                problems.append(f"{where}: unknown stage {f.stage!r} (allowed: {allowed})")
            elif streams is not None and isinstance(f, _STREAM_FAULTS) and f.stage not in streams:
                allowed = ", ".join(n for n in names if n in streams) or "none"
                problems.append(f"{where}: stage {f.stage!r} does not stream (allowed: {allowed})")
            elif limited is not None and isinstance(f, RateLimitCut) and f.stage not in limited:
                allowed = ", ".join(n for n in names if n in limited) or "none"
                problems.append(
                    f"{where}: stage {f.stage!r} has no rate limits (allowed: {allowed})"
                )
        if problems:
            raise ValueError("; ".join(problems))
        calls: dict[str, list[CallFault]] = {n: [] for n in names}
        state: dict[str, list[RateLimitCut | CapacityLoss]] = {n: [] for n in names}
        for f in plan:
            if isinstance(f, RateLimitCut | CapacityLoss):
                state[f.stage].append(f)
            else:
                calls[f.stage].append(f)
        return cls(
            plan,
            {n: tuple(fs) for n, fs in calls.items()},
            {n: tuple(fs) for n, fs in state.items()},
        )

    # ----------------------------------------------------------------- lookups

    @property
    def faults(self) -> tuple[Fault, ...]:
        """Every fault, in plan order."""
        return self._faults

    @property
    def stages(self) -> tuple[str, ...]:
        return tuple(self._calls)

    def _stage_calls(self, stage: str) -> tuple[CallFault, ...]:
        try:
            return self._calls[stage]
        except KeyError:
            raise self._unknown(stage) from None

    def _stage_state(self, stage: str) -> tuple[RateLimitCut | CapacityLoss, ...]:
        try:
            return self._state[stage]
        except KeyError:
            raise self._unknown(stage) from None

    def _unknown(self, stage: str) -> ValueError:
        return ValueError(f"unknown stage {stage!r} (allowed: {', '.join(self._calls) or 'none'})")

    def active(self, stage: str, t: float) -> tuple[Fault, ...]:
        """Every fault of ``stage`` whose window covers ``t`` (``start_s ≤ t < end_s``), in plan
        order, per-call and state faults alike."""
        try:
            faults = self._all[stage]
        except KeyError:
            raise self._unknown(stage) from None
        return tuple(f for f in faults if f.start_s <= t < f.end_s)

    def call_faults(self, stage: str, t: float) -> tuple[CallFault, ...]:
        """The per-call faults of ``stage`` active at ``t``, in plan order: the faults that
        :meth:`decide` takes one draw each for."""
        return tuple(f for f in self._stage_calls(stage) if f.start_s <= t < f.end_s)

    def hangs(self, stage: str) -> bool:
        """Whether ``stage`` has a hang fault: its callers then need a finite timeout."""
        return any(isinstance(f, Hang) for f in self._stage_calls(stage))

    # ----------------------------------------------------------------- per call

    def decide(
        self,
        stage: str,
        t: float,
        us: Sequence[float],
        rng: np.random.Generator | None = None,
    ) -> CallEffect:
        """The effect on a call sent to ``stage`` at ``t``.

        ``us`` holds one uniform draw in [0, 1) per fault of :meth:`call_faults` (same order);
        fault i hits when ``us[i] < percent_i / 100``. ``rng`` is needed only when an
        ``added_latency`` fault with a random distribution hits: each such hit takes one draw
        from its distribution, in plan order (a ``deterministic`` one takes none). The delay
        draws are taken for every hit ``added_latency`` fault even when an outage, hang or error
        then decides the call, so the generator advances the same way whatever wins.
        """
        faults = self.call_faults(stage, t)
        if len(us) != len(faults):
            raise ValueError(
                f"decide needs one draw per active fault: {len(faults)} active on "
                f"{stage!r} at t={t:g}, got {len(us)}"
            )
        if not faults:
            return NO_EFFECT
        for u in us:
            if not 0.0 <= u < 1.0:
                raise ValueError(f"draws must lie in [0, 1), got {u!r}")
        return _combine(faults, us, rng)

    def draw(self, stage: str, t: float, rng: np.random.Generator) -> CallEffect:
        """:meth:`decide` with the draws taken from ``rng``: ``rng.random(k)`` for the k active
        per-call faults (nothing when k = 0), then one draw per hit ``added_latency`` fault."""
        faults = self.call_faults(stage, t)
        if not faults:
            return NO_EFFECT
        return _combine(faults, rng.random(len(faults)).tolist(), rng)

    # ----------------------------------------------------------------- state

    def replicas_down(self, stage: str, t: float, units: int) -> int:
        """How many of the stage's ``units`` (replicas; concurrency slots for ``llm_api``) are
        down at ``t``: the sum over active capacity losses, capped at ``units``."""
        down = 0
        for f in self._stage_state(stage):
            if isinstance(f, CapacityLoss) and f.start_s <= t < f.end_s:
                down += f.down_of(units)
        return min(down, units)

    def capacity_factor(self, stage: str, t: float, units: int) -> float:
        """The share of the stage's ``units`` still up at ``t`` (1.0 without a loss)."""
        if units <= 0:
            raise ValueError(f"units must be positive, got {units}")
        return (units - self.replicas_down(stage, t, units)) / units

    def rate_limit_factor(self, stage: str, t: float) -> float:
        """The factor on the stage's rate-limit buckets at ``t``: the product of the active
        cuts (1.0 without one)."""
        factor = 1.0
        for f in self._stage_state(stage):
            if isinstance(f, RateLimitCut) and f.start_s <= t < f.end_s:
                factor *= f.factor
        return factor

    def change_points(self, stage: str) -> tuple[float, ...]:
        """Sorted distinct times at which the stage's capacity or rate limits change: the start
        and end of every state fault on it. Evaluate the state at each such time (the new
        value holds from that instant, since windows start inclusive and end exclusive)."""
        self._stage_state(stage)
        return self._changes[stage]


def _combine(
    faults: Sequence[CallFault], us: Sequence[float], rng: np.random.Generator | None
) -> CallEffect:
    """Combine the hits among ``faults`` by the rules of the module docstring."""
    refuse = hang = False
    error: ErrorStatus | None = None
    extra = 0.0
    factor = 1.0
    stall: StreamStall | None = None
    truncate: int | None = None
    hit_any = False
    for f, u in zip(faults, us, strict=True):
        if u >= f.percent / 100.0:
            continue
        hit_any = True
        if isinstance(f, Outage):
            refuse = True
        elif isinstance(f, Hang):
            hang = True
        elif isinstance(f, ErrorStatus):
            if error is None:
                error = f
        elif isinstance(f, AddedLatency):
            if isinstance(f.latency, Deterministic):
                extra += f.latency.value  # a constant takes no draw
            elif rng is None:
                raise ValueError("an added_latency fault hit: decide needs rng to draw its delay")
            else:
                extra += float(f.latency.draw(rng, 1)[0])
        elif isinstance(f, LatencyMultiplier):
            factor *= f.factor
        elif isinstance(f, StreamStall):
            if stall is None or f.after_tokens < stall.after_tokens:
                stall = f
        elif isinstance(f, StreamTruncate) and (truncate is None or f.after_tokens < truncate):
            truncate = f.after_tokens
    if not hit_any:
        return NO_EFFECT
    if refuse:
        return _REFUSED
    if hang:
        return _HUNG
    if error is not None:
        return CallEffect(
            status=error.status,
            retry_after_s=error.retry_after_s,
            error_after_service=error.after_service,
            extra_latency_s=extra,
            latency_factor=factor if error.after_service else 1.0,
        )
    if stall is not None and truncate is not None and stall.after_tokens >= truncate:
        stall = None
    return CallEffect(
        extra_latency_s=extra,
        latency_factor=factor,
        stall_after_tokens=None if stall is None else stall.after_tokens,
        stall_s=0.0 if stall is None else stall.stall_s,
        truncate_after_tokens=truncate,
    )
