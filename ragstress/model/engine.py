"""Run a workload through a profile's pipeline on virtual time and return a RunResult.

Pure: no files, no printing, no wall clock, no global random state. Progress is reported
through an optional callback so a CLI can draw a bar without the model knowing about it.

How a request moves
===================

A request walks the profile's main path (``Profile.path``) in order. At a cache stage it
looks up and, on a hit, jumps over the stages the cache covers. At any other stage it makes
``fan_out`` calls at once and moves on when all of them succeeded. Each call goes through the
caller's policy (``stage.client``):

1. the circuit breaker may refuse it at once (``breaker_open``, never retried);
2. the fault plan decides its fate at the instant it is sent (``ragstress.faults.plan``);
3. a call that reaches the stage passes the provider's rate limiter (429 + retry-after) and
   joins the station; a full queue sheds it (``shed``, or the stage's ``overload_status``);
4. the caller's timeout ends the call early (``timeout``) **while the station keeps working on
   it** and bills it: abandoned work is what turns retries into a storm;
5. a failed call is retried per ``client.retry`` with fresh service draws; when retries are
   spent the stage has failed: the fallback skips it (``ok_degraded``), calls the fallback
   stage instead, or ends the request with the failed call's outcome. Sibling fan-out calls
   still in flight then finish unobserved.

Every call that a station served is billed (``Price``), whether or not its caller still
waited, except an ``error`` fault with ``after_service`` (the work is not billed). Cost,
attempts, wait and service are kept per call and summed per request and stage.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import simpy
from simpy.events import URGENT

from ragstress import __version__
from ragstress.config.profile import (
    STREAMING,
    AnyStage,
    BatcherStage,
    CacheStage,
    KeyHits,
    LlmApiStage,
    LlmEngineStage,
    PoolStage,
    Profile,
)
from ragstress.faults.plan import NO_EFFECT, CallEffect, FaultPlan
from ragstress.model.batcher import BatcherStation
from ragstress.model.calls import CallTable, Station
from ragstress.model.llm_engine import LlmEngineStation
from ragstress.model.policies import CircuitBreaker, ClientRuntime
from ragstress.model.ratelimit import ProviderLimits
from ragstress.model.service import first_attempts, redraw
from ragstress.model.stations import FifoStation
from ragstress.results.schema import OUTCOMES, Manifest, RunResult, stage_columns
from ragstress.seeding import stream
from ragstress.workload import Workload

__all__ = [
    "SLIDING_WINDOW_S",
    "Event",
    "EventLog",
    "ModelError",
    "ProgressCallback",
    "simulate",
]

ProgressCallback = Callable[[float], None]
SLIDING_WINDOW_S = 10.0
"""Width of the sliding window for the per-interval latency percentile series."""

_CODE = {name: k for k, name in enumerate(OUTCOMES)}
_OK = _CODE["ok"]
_OK_DEGRADED = _CODE["ok_degraded"]
# A call's outcome as the caller's retry and breaker policy name it: a shed call is a 503.
_POLICY_KEY = {"shed": "error_5xx"}
# A call's outcome as the request's outcome: a 408 is the server saying "timed out".
_REQUEST_OUTCOME = {"error_408": "timeout"}


class Event(NamedTuple):
    """One entry of the event log (``simulate(..., log=events.append)``).

    ``kind``: ``send`` (a call leaves the caller), ``submit`` (it joins the station),
    ``served`` (the station finished it), ``outcome`` (the caller learns it: ``detail`` is the
    outcome), ``retry`` (``detail``: the wait before the next attempt), ``breaker``
    (``detail``: ``"closed->open"`` etc.), ``fallback`` (``detail``: skip or the stage),
    ``finish`` (``detail``: the request's outcome; ``stage`` is empty).
    """

    t: float
    kind: str
    stage: str
    request: int
    attempt: int
    detail: str | float = ""


EventLog = Callable[[Event], None]


class _Deadline(simpy.Timeout):
    """A caller's timeout: a Timeout scheduled URGENT, so that at the very instant an answer
    also arrives the deadline wins whatever the order the two were scheduled in (a deadline
    is exclusive: the answer must come before it)."""

    def __init__(self, env: simpy.Environment, delay: float, value: Any) -> None:
        # what simpy.Timeout.__init__ does, with URGENT instead of NORMAL
        self.env = env
        self.callbacks = []
        self._value = value
        self._delay = delay
        self._ok = True
        env.schedule(self, URGENT, delay)


class ModelError(ValueError):
    """The profile and scenario together ask for something the model cannot run."""


def _status_key(status: int) -> str:
    if status == 429:
        return "error_429"
    if status == 408:
        return "error_408"
    if status == 409:
        return "error_409"
    return "error_5xx"


class _Stage:
    """One stage at run time: its calls, station, caller policy, limits and fault state."""

    __slots__ = (
        "answers",
        "breaker",
        "cache_entries",
        "cache_hit_u",
        "cache_missed",
        "cfg",
        "client",
        "effects",
        "fallback",
        "fan_out",
        "fault_rng",
        "faulty",
        "index",
        "last_call",
        "limits",
        "lookup_s",
        "max_out",
        "name",
        "overhead",
        "overhead_at",
        "overhead_left",
        "overhead_rng",
        "p_call",
        "p_in",
        "p_out",
        "redraw_rng",
        "retry_rng",
        "shed_outcome",
        "station",
        "table",
        "tpot",
        "units",
    )

    def __init__(self, index: int, cfg: AnyStage, table: CallTable, n: int, seed: int) -> None:
        self.index = index
        self.cfg = cfg
        self.name = cfg.name
        self.table = table
        self.fan_out = cfg.fan_out
        self.client = ClientRuntime(cfg.client)
        self.breaker: CircuitBreaker | None = self.client.new_breaker()
        self.fallback: _Stage | None = None
        self.answers = False
        self.station: Station | None = None
        self.effects: dict[int, CallEffect] = {}
        self.faulty = False
        self.last_call = [-1] * n
        self.limits: ProviderLimits | None = None
        self.max_out: int | None = None
        self.tpot = 0.0
        self.overhead = cfg.call_overhead
        self.overhead_at: dict[int, float] = {}  # call → its last attempt's overhead
        self.overhead_left: list[float] = []  # pre-drawn overheads, used from the end
        self.overhead_rng = stream(seed, "stage", cfg.name, "overhead")
        self.shed_outcome = "shed"
        self.units = cfg.units
        price = cfg.price
        self.p_call = price.per_call_usd
        self.p_in = price.per_1m_input_tokens_usd / 1e6
        self.p_out = price.per_1m_output_tokens_usd / 1e6
        self.cache_entries: dict[int, float] = {}
        self.cache_missed: list[bool] = []
        self.cache_hit_u: list[float] = []
        self.lookup_s: list[float] = []
        self.fault_rng = stream(seed, "faults", cfg.name)
        self.retry_rng = stream(seed, "stage", cfg.name, "backoff")
        self.redraw_rng = stream(seed, "stage", cfg.name, "retry")

    def draw_overhead(self, c: int) -> float:
        """Call c's overhead for this attempt, drawn in blocks from the stage's own stream."""
        assert self.overhead is not None
        if not self.overhead_left:
            self.overhead_left = self.overhead.draw(self.overhead_rng, 256).tolist()[::-1]
        value: float = self.overhead_left.pop()
        self.overhead_at[c] = value
        return value

    def cost(self, tokens_in: int, tokens_out: int) -> float:
        """What one served call costs: per call plus its input and output tokens."""
        return self.p_call + tokens_in * self.p_in + tokens_out * self.p_out


class _Run:
    """One simulation: the state of every request and stage, and the event callbacks."""

    def __init__(
        self,
        workload: Workload,
        profile: Profile,
        plan: FaultPlan,
        *,
        sample_interval_s: float,
        progress: ProgressCallback | None,
        log: EventLog | None = None,
    ) -> None:
        self.env = simpy.Environment()
        self.log = log
        self.workload = workload
        self.profile = profile
        self.plan = plan
        self.sample_interval_s = sample_interval_s
        self.progress = progress
        n = self.n = len(workload)
        self.arrivals: list[float] = workload.arrival_s.tolist()
        self.query_id: list[int] = workload.query_id.tolist()
        self.outcome = [_OK] * n
        self.finished_at = [math.nan] * n
        self.pos = [-1] * n
        self.visit = [0] * n
        self.pending = [0] * n
        self.degraded = [False] * n
        self.answer_stage = [-1] * n
        self.answer_call = [-1] * n
        self.in_flight = 0
        seed = workload.seed

        self.stages: list[_Stage] = []
        by_name: dict[str, _Stage] = {}
        for k, cfg in enumerate(profile.stages):
            st = _Stage(k, cfg, first_attempts(cfg, workload), n, seed)
            st.faulty = bool(plan.faults) and any(
                f.stage == cfg.name for f in plan.faults if f.kind not in _STATE_KINDS
            )
            if isinstance(cfg, CacheStage):
                lookup_rng = stream(seed, "stage", cfg.name, "lookup")
                st.lookup_s = cfg.lookup.draw(lookup_rng, n).tolist()
                st.cache_missed = [False] * n
                if not isinstance(cfg.hits, KeyHits):
                    hit_rng = stream(seed, "stage", cfg.name, "hits")
                    st.cache_hit_u = hit_rng.random(n).tolist()
            else:
                st.station = self._station(st)
            if isinstance(cfg, LlmApiStage):
                st.tpot = cfg.time_per_output_token_s
                st.max_out = cfg.max_output_tokens
                if cfg.rate_limit is not None:
                    rl = cfg.rate_limit
                    st.limits = ProviderLimits(
                        rl.rpm, rl.tpm, rpm_burst=rl.rpm_burst, tpm_burst=rl.tpm_burst
                    )
                if cfg.overload_status is not None:
                    st.shed_outcome = _status_key(cfg.overload_status)
            self.stages.append(st)
            by_name[cfg.name] = st
        for st in self.stages:
            fb = st.client.fallback_stage
            if fb is not None:
                st.fallback = by_name[fb]
        self.path = [by_name[s.name] for s in profile.path]
        # the stage whose first token the user sees: the last streaming stage on the path,
        # or any stage standing in for it
        streaming = [st for st in self.path if isinstance(st.cfg, STREAMING)]
        if streaming:
            st_answer: _Stage | None = streaming[-1]
            while st_answer is not None:
                st_answer.answers = True
                st_answer = st_answer.fallback
        # caches store a result when the request leaves the last stage they cover
        self.store_at: list[list[_Stage]] = [[] for _ in range(len(self.path) + 1)]
        for p, st in enumerate(self.path):
            if isinstance(st.cfg, CacheStage):
                self.store_at[p + len(st.cfg.skips) + 1].append(st)
        for st in self.stages:
            if st.station is not None and plan.hangs(st.name) and math.isinf(st.client.timeout_s):
                raise ModelError(
                    f"faults: a hang fault on stage {st.name!r} needs a finite "
                    f"stages.{st.name}.client.timeout_s in the profile (a hung call with no "
                    "timeout never ends)"
                )

    # ------------------------------------------------------------------ event log

    def _note(self, kind: str, st: _Stage | None, c: int, detail: str | float = "") -> None:
        """Log an event (only called when a log is attached: the hot path stays bare)."""
        assert self.log is not None
        if st is None:
            self.log(Event(self.env.now, kind, "", c, 0, detail))
        else:
            table = st.table
            self.log(Event(self.env.now, kind, st.name, table.req[c], table.attempt[c], detail))

    def _note_breaker(self, st: _Stage, before: int) -> None:
        assert st.breaker is not None
        for t, old, new in st.breaker.transitions[before:]:
            assert self.log is not None
            self.log(Event(t, "breaker", st.name, -1, 0, f"{old}->{new}"))

    # ------------------------------------------------------------------ construction

    def _station(self, st: _Stage) -> Station:
        cfg = st.cfg

        def done(c: int) -> None:
            self._station_done(st, c)

        def shed(c: int) -> None:
            self._resolve(st, c, st.shed_outcome, None)

        if isinstance(cfg, PoolStage):
            return FifoStation(
                self.env,
                name=cfg.name,
                units=cfg.replicas,
                per_unit=cfg.concurrency,
                queue_limit=cfg.queue_limit,
                table=st.table,
                streams=False,
                on_done=done,
                on_shed=shed,
            )
        if isinstance(cfg, LlmApiStage):
            limit = cfg.queue_limit
            if cfg.overload_status is not None and limit is None:
                limit = 0  # a provider that sheds load does not queue beyond its slots
            return FifoStation(
                self.env,
                name=cfg.name,
                units=cfg.concurrency,
                per_unit=1,
                queue_limit=limit,
                table=st.table,
                streams=True,
                on_done=done,
                on_shed=shed,
            )
        if isinstance(cfg, BatcherStage):
            return BatcherStation(self.env, cfg, st.table, on_done=done, on_shed=shed)
        assert isinstance(cfg, LlmEngineStage)
        return LlmEngineStation(self.env, cfg, st.table, on_done=done, on_shed=shed)

    # ------------------------------------------------------------------ requests

    def _arrive(self, event: Any) -> None:
        i: int = event.value
        self.in_flight += 1
        self._advance(i)
        if i + 1 < self.n:
            env = self.env
            env.timeout(self.arrivals[i + 1] - env.now, i + 1).callbacks.append(self._arrive)

    def _advance(self, i: int) -> None:
        """Move request i to the next stage of the path (or finish it)."""
        p = self.pos[i] + 1
        self.pos[i] = p
        for cache in self.store_at[p]:
            if cache.cache_missed[i] and not self.degraded[i]:
                # only a full-quality result is worth serving again
                cache.cache_entries[self.query_id[i]] = self.env.now
        if p == len(self.path):
            self._finish(i, _OK_DEGRADED if self.degraded[i] else _OK)
            return
        st = self.path[p]
        if st.station is None:
            self._lookup(st, i)
        else:
            self._visit(i, st)

    def _finish(self, i: int, code: int) -> None:
        if self.log is not None:
            self._note("finish", None, i, OUTCOMES[code])
        self.outcome[i] = code
        self.finished_at[i] = self.env.now
        self.visit[i] += 1  # nothing still in flight may touch the request again
        self.in_flight -= 1

    # ------------------------------------------------------------------ caches

    def _lookup(self, st: _Stage, i: int) -> None:
        c = i * st.fan_out
        table = st.table
        table.sent_at[c] = self.env.now
        table.cost_usd[c] = st.cost(0, 0)
        st.last_call[i] = c
        self.env.timeout(st.lookup_s[i], (st, i)).callbacks.append(self._lookup_done)

    def _lookup_done(self, event: Any) -> None:
        st: _Stage
        i: int
        st, i = event.value
        cfg = st.cfg
        assert isinstance(cfg, CacheStage)
        now = self.env.now
        hits = cfg.hits
        if isinstance(hits, KeyHits):
            stored = st.cache_entries.get(self.query_id[i])
            hit = stored is not None and now - stored < hits.ttl_s
        else:
            hit = st.cache_hit_u[i] < hits.p
        c = i * st.fan_out
        st.table.held_s[c] = st.lookup_s[i]
        st.table.wait_s[c] = 0.0
        st.table.done_at[c] = now
        st.table.outcome[c] = "hit" if hit else "miss"
        if hit:
            self.pos[i] += len(cfg.skips)
        else:
            st.cache_missed[i] = True
        self._advance(i)

    # ------------------------------------------------------------------ calls

    def _visit(self, i: int, st: _Stage) -> None:
        """Request i calls stage ``st`` with ``fan_out`` calls at once."""
        v = self.visit[i] + 1
        self.visit[i] = v
        k = st.fan_out
        self.pending[i] = k
        table = st.table
        if k == 1 and table.sent_at[i] != table.sent_at[i]:  # NaN: the first visit
            table.visit[i] = v
            self._attempt(st, i)
            return
        for j in range(k):
            c = i * k + j
            if not math.isnan(table.sent_at[c]):
                # a fallback stage visited a second time by the same request: a fresh call
                c = redraw(st.cfg, table, c, 1, st.redraw_rng)
            table.visit[c] = v
            self._attempt(st, c)

    def _attempt(self, st: _Stage, c: int) -> None:
        env = self.env
        now = env.now
        table = st.table
        table.sent_at[c] = now
        if self.log is not None:
            self._note("send", st, c)
        breaker = st.breaker
        if breaker is not None:
            before = len(breaker.transitions)
            allowed = breaker.allow(now)
            if self.log is not None:
                self._note_breaker(st, before)
            if not allowed:
                self._resolve(st, c, "breaker_open", None)
                return
        effect = NO_EFFECT
        if st.faulty:
            effect = self.plan.draw(st.name, now, st.fault_rng)
        delay = 0.0 if st.overhead is None else st.draw_overhead(c)
        if effect is not NO_EFFECT:
            st.effects[c] = effect
            if effect.refuse:
                self._resolve(st, c, "error_connect", None)
                return
            timeout = st.client.timeout_s
            if effect.hang:
                _Deadline(env, timeout, (st, c)).callbacks.append(self._on_timeout)
                return  # only the caller's timeout ends it
            # the call's overhead comes first: the fault is met where the call arrives
            delay += effect.extra_latency_s
            if effect.status is not None and not effect.error_after_service:
                if timeout <= delay:
                    _Deadline(env, timeout, (st, c)).callbacks.append(self._on_timeout)
                env.timeout(delay, (st, c)).callbacks.append(self._fault_answer)
                return
            self._shape(st, c, effect)
        if delay > 0.0:
            # on the wire (or held by a fault) for a while: the caller's clock already runs
            if st.client.timeout_s != math.inf:
                _Deadline(env, st.client.timeout_s, (st, c)).callbacks.append(self._on_timeout)
            env.timeout(delay, (st, c)).callbacks.append(self._on_delayed)
            return
        self._send(st, c)

    def _shape(self, st: _Stage, c: int, effect: CallEffect) -> None:
        """Apply a fault's latency factor, stall and truncation to the call's demand (FIFO
        stations hold their server for it; engines see a shorter answer to generate)."""
        table = st.table
        cfg = st.cfg
        tout = table.tokens_out[c]
        if effect.truncate_after_tokens is not None and not effect.truncates(tout):
            # the answer fits before the break point: it is delivered whole
            effect = dataclasses.replace(effect, truncate_after_tokens=None)
            st.effects[c] = effect
        if effect.truncates(tout):
            cut = effect.truncate_after_tokens
            assert cut is not None
            table.tokens_out[c] = cut
            if isinstance(cfg, LlmApiStage):
                table.service_s[c] = table.first_token_s[c] + max(cut - 1, 0) * st.tpot
        if isinstance(cfg, PoolStage | LlmApiStage):
            f = effect.latency_factor
            if f != 1.0:
                table.service_s[c] *= f
                table.first_token_s[c] *= f
            if effect.stalls(tout) and isinstance(cfg, LlmApiStage):
                table.service_s[c] += effect.stall_s
                if effect.stall_after_tokens == 0:
                    table.first_token_s[c] += effect.stall_s

    def _on_delayed(self, event: Any) -> None:
        st: _Stage
        c: int
        st, c = event.value
        # even if the caller has given up meanwhile, the request is on the wire: it arrives
        self._send(st, c, armed=True)

    def _send(self, st: _Stage, c: int, *, armed: bool = False) -> None:
        """The call reaches the stage: rate limiter, then the station. ``armed``: the caller's
        deadline is already scheduled (a delayed call)."""
        table = st.table
        limits = st.limits
        if limits is not None:
            out = st.max_out if st.max_out is not None else table.tokens_out[c]
            retry_after = limits.admit(self.env.now, table.tokens_in[c], out)
            if retry_after > 0.0:
                self._resolve(st, c, "error_429", retry_after)
                return
        station = st.station
        assert station is not None
        if self.log is not None:
            self._note("submit", st, c)
        station.submit(c)
        timeout = st.client.timeout_s
        if timeout != math.inf and not armed and table.outcome[c] is None:
            # The caller's timer runs from the send. A call a FIFO station started at once
            # and will finish in time needs no timer: skipping it keeps the event heap small.
            now = self.env.now
            elapsed = now - table.sent_at[c]
            held = table.held_s[c]
            if not (table.wait_s[c] == 0.0 and elapsed + held < timeout):
                left = max(timeout - elapsed, 0.0)
                _Deadline(self.env, left, (st, c)).callbacks.append(self._on_timeout)

    def _station_done(self, st: _Stage, c: int) -> None:
        table = st.table
        table.done_at[c] = self.env.now
        if self.log is not None:
            self._note("served", st, c)
        if not st.effects or c not in st.effects:
            # the common case, kept short: bill, and the caller has its answer
            table.cost_usd[c] = st.cost(table.tokens_in[c], table.tokens_out[c])
            if table.outcome[c] is None:
                self._resolve(st, c, "ok", None)
            return
        effect = st.effects[c]
        if effect.status is not None:
            # served, then answered with an error: the work is not billed
            self._resolve(st, c, _status_key(effect.status), effect.retry_after_s)
            return
        table.cost_usd[c] = st.cost(table.tokens_in[c], table.tokens_out[c])
        outcome = "error_stream" if effect.truncate_after_tokens is not None else "ok"
        if isinstance(st.cfg, BatcherStage | LlmEngineStage):
            # a shared server cannot run one call slower: the proxy holds the answer back
            hold = (effect.latency_factor - 1.0) * table.held_s[c]
            if effect.stalls(table.tokens_out[c]):
                hold += effect.stall_s
            if hold > 0.0:
                self.env.timeout(hold, (st, c, outcome)).callbacks.append(self._on_held)
                return
        self._resolve(st, c, outcome, None)

    def _on_held(self, event: Any) -> None:
        st: _Stage
        c: int
        outcome: str
        st, c, outcome = event.value
        self._resolve(st, c, outcome, None)

    def _fault_answer(self, event: Any) -> None:
        st: _Stage
        c: int
        st, c = event.value
        effect = st.effects[c]
        assert effect.status is not None
        self._resolve(st, c, _status_key(effect.status), effect.retry_after_s)

    def _on_timeout(self, event: Any) -> None:
        st: _Stage
        c: int
        st, c = event.value
        if st.table.outcome[c] is None:
            self._resolve(st, c, "timeout", None)

    def _resolve(self, st: _Stage, c: int, outcome: str, retry_after: float | None) -> None:
        """The caller learns call c's outcome (once; later news of the call is ignored)."""
        table = st.table
        if table.outcome[c] is not None:
            return
        table.outcome[c] = outcome
        if self.log is not None:
            self._note("outcome", st, c, outcome)
        breaker = st.breaker
        key = outcome
        if outcome != "ok":
            key = _POLICY_KEY.get(outcome, outcome)
        if breaker is not None and outcome != "breaker_open":
            before = len(breaker.transitions)
            breaker.record(self.env.now, key)
            if self.log is not None:
                self._note_breaker(st, before)
        i = table.req[c]
        if table.visit[c] != self.visit[i]:
            return  # the request has moved on (a sibling call failed the stage)
        st.last_call[i] = c
        if outcome == "ok":
            left = self.pending[i] - 1
            self.pending[i] = left
            if st.answers:
                self.answer_stage[i] = st.index
                self.answer_call[i] = c
            if left == 0:
                self._advance(i)
            return
        wait = st.client.retrier.next_wait(key, table.attempt[c], st.retry_rng, retry_after)
        if wait is not None:
            if self.log is not None:
                self._note("retry", st, c, wait)
            self.env.timeout(wait, (st, c)).callbacks.append(self._retry)
            return
        self._stage_failed(i, st, outcome)

    def _retry(self, event: Any) -> None:
        st: _Stage
        prev: int
        st, prev = event.value
        table = st.table
        i = table.req[prev]
        if table.visit[prev] != self.visit[i]:
            return
        c = redraw(st.cfg, table, prev, table.attempt[prev] + 1, st.redraw_rng)
        table.visit[c] = self.visit[i]
        self._attempt(st, c)

    def _stage_failed(self, i: int, st: _Stage, outcome: str) -> None:
        self.visit[i] += 1  # sibling calls still in flight no longer count
        kind = st.client.fallback
        if self.log is not None and kind != "fail":
            self._note("fallback", None, i, kind if st.fallback is None else st.fallback.name)
        if kind == "skip":
            self.degraded[i] = True
            self._advance(i)
        elif kind == "stage":
            assert st.fallback is not None
            self.degraded[i] = True
            self._visit(i, st.fallback)
        else:
            self._finish(i, _CODE[_REQUEST_OUTCOME.get(outcome, outcome)])

    # ------------------------------------------------------------------ state faults

    def _schedule_state_faults(self) -> None:
        for st in self.stages:
            if st.station is None:
                continue
            for t in self.plan.change_points(st.name):
                self.env.timeout(t, st).callbacks.append(self._apply_state)

    def _apply_state(self, event: Any) -> None:
        st: _Stage = event.value
        now = self.env.now
        assert st.station is not None
        st.station.set_units_down(self.plan.replicas_down(st.name, now, st.units))
        if st.limits is not None:
            st.limits.scale(now, self.plan.rate_limit_factor(st.name, now))

    # ------------------------------------------------------------------ run

    def run(self) -> RunResult:
        env = self.env
        n = self.n
        self._schedule_state_faults()
        if n:
            env.timeout(self.arrivals[0], 0).callbacks.append(self._arrive)

        stations: list[Station] = [st.station for st in self.stages if st.station is not None]
        sample_t: list[float] = []
        sample_in_flight: list[int] = []
        sample_queue: list[list[int]] = [[] for _ in stations]
        sample_busy: list[list[int]] = [[] for _ in stations]
        duration = self.workload.duration_s
        progress = self.progress
        dt = self.sample_interval_s

        def sample(event: Any) -> None:
            sample_t.append(env.now)
            sample_in_flight.append(self.in_flight)
            for k, station in enumerate(stations):
                sample_queue[k].append(station.queued())
                sample_busy[k].append(station.busy())
            if progress is not None:
                progress(min(env.now / duration, 1.0))
            # keep sampling while work remains: arrivals to come, requests in flight, or
            # abandoned calls the stations are still serving
            if (
                env.now < duration
                or self.in_flight > 0
                or any(station.busy() or station.queued() for station in stations)
            ):
                env.timeout(dt).callbacks.append(sample)

        env.timeout(0).callbacks.append(sample)
        env.run()
        if progress is not None:
            progress(1.0)
        horizon = max(env.now, duration)
        t_s = np.asarray(sample_t)
        series: dict[str, np.ndarray] = {
            "t_s": t_s,
            "in_flight": np.asarray(sample_in_flight, dtype=np.int64),
        }
        for k, station in enumerate(stations):
            series[f"{station.name}_queue"] = np.asarray(sample_queue[k], dtype=np.int64)
            series[f"{station.name}_busy"] = np.asarray(sample_busy[k], dtype=np.int64)
        columns = self._columns()
        series.update(self._rates(t_s, columns))
        return RunResult(manifest=self._manifest(horizon), requests=columns, timeseries=series)

    # ------------------------------------------------------------------ results

    def _columns(self) -> dict[str, np.ndarray]:
        n = self.n
        arrival = self.workload.arrival_s
        code = np.asarray(self.outcome, dtype=np.int8)
        answered = (code == _OK) | (code == _OK_DEGRADED)
        latency = np.asarray(self.finished_at) - arrival
        # time to first token: from the answering call; an answer that came whole (a cache
        # hit, or a pipeline with no streaming stage) had its first byte at its last
        first_token = np.full(n, np.nan)
        tokens_in = self.workload.query_tokens.copy()
        tokens_out = np.zeros(n, dtype=np.int64)
        ans_stage = np.asarray(self.answer_stage, dtype=np.int64)
        ans_call = np.asarray(self.answer_call, dtype=np.int64)
        for st in self.stages:
            if not st.answers:
                continue
            mine = np.flatnonzero(ans_stage == st.index)
            calls = ans_call[mine]
            first_token[mine] = np.asarray(st.table.first_token_at)[calls]
            tokens_in[mine] = np.asarray(st.table.tokens_in)[calls]
            tokens_out[mine] = np.asarray(st.table.tokens_out)[calls]
        ttft = first_token - arrival
        whole = answered & np.isnan(ttft)
        ttft[whole] = latency[whole]
        ttft[~answered] = np.nan

        columns: dict[str, np.ndarray] = {
            "id": np.arange(n, dtype=np.int64),
            "arrival_s": arrival.copy(),
            "outcome": np.asarray(OUTCOMES)[code],
            "latency_s": latency,
            "ttft_s": ttft,
        }
        attempts = np.zeros(n, dtype=np.int64)
        cost = np.zeros(n)
        stage_cols: dict[str, np.ndarray] = {}
        for st in self.stages:
            table = st.table
            req = np.asarray(table.req, dtype=np.int64).reshape(-1)
            sent = ~np.isnan(np.asarray(table.sent_at))
            st_attempts = np.bincount(req[sent], minlength=n).astype(np.int64)
            st_cost = np.bincount(req, weights=np.asarray(table.cost_usd), minlength=n)
            last = np.asarray(st.last_call, dtype=np.int64)
            reached = last >= 0
            wait = np.full(n, np.nan)
            service = np.full(n, np.nan)
            wait[reached] = np.asarray(table.wait_s)[last[reached]]
            if st.overhead_at:
                # the caller waits for its call's overhead as for a queue: sent → service
                at = st.overhead_at
                wait[reached] += [at.get(c, 0.0) for c in last[reached].tolist()]
            service[reached] = np.asarray(table.held_s)[last[reached]]
            if not isinstance(st.cfg, CacheStage):
                attempts += st_attempts
            cost += st_cost
            wait_col, service_col = stage_columns(st.name)
            stage_cols[wait_col] = wait
            stage_cols[service_col] = service
            stage_cols[f"{st.name}_attempts"] = st_attempts
            stage_cols[f"{st.name}_cost_usd"] = st_cost
        columns["attempts"] = attempts
        columns["tokens_in"] = tokens_in
        columns["tokens_out"] = tokens_out
        columns["cost_usd"] = cost
        columns.update(stage_cols)
        return columns

    def _rates(self, t_s: np.ndarray, columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Per-interval counts on the sampling grid: interval k is [t_k, t_k + dt)."""
        dt = self.sample_interval_s
        m = len(t_s)
        edges = np.append(t_s, t_s[-1] + dt) if m else np.asarray([0.0])

        def count(times: np.ndarray) -> np.ndarray:
            counts, _ = np.histogram(times[~np.isnan(times)], bins=edges)
            return counts.astype(np.int64)

        out: dict[str, np.ndarray] = {"arrivals": count(columns["arrival_s"])}
        done = columns["arrival_s"] + columns["latency_s"]
        outcome = columns["outcome"]
        for name in OUTCOMES:
            out[f"completed_{name}"] = count(done[outcome == name])
        # p95 of the answers that completed in the trailing window (t_k + dt − W, t_k + dt]
        answered = (outcome == "ok") | (outcome == "ok_degraded")
        order = np.argsort(done[answered], kind="stable")
        out["latency_p95_s"] = _sliding_p95(
            done[answered][order].tolist(),
            columns["latency_s"][answered][order].tolist(),
            edges[1:].tolist(),
        )
        for st in self.stages:
            out[f"{st.name}_sent"] = count(np.asarray(st.table.sent_at))
            out[f"{st.name}_served"] = count(np.asarray(st.table.done_at))
        return out

    def _manifest(self, horizon: float) -> Manifest:
        workload = self.workload
        duration = workload.duration_s
        fixed_cost = sum(
            s.replicas * s.price.per_replica_hour_usd * duration / 3600.0
            for s in self.profile.stages
        )
        return Manifest(
            source="simulated",
            scenario=workload.scenario.model_dump(mode="json"),
            profile=self.profile.model_dump(mode="json"),
            seed=workload.seed,
            stages=[s.name for s in self.profile.stages],
            duration_s=duration,
            ragstress_version=__version__,
            complete=True,
            fixed_cost_usd=fixed_cost,
            notes=[f"simulated horizon {horizon:.3f} s"]
            + (["workload truncated at scenario.max_requests"] if workload.truncated else []),
        )


def _sliding_p95(done: list[float], latency: list[float], ends: list[float]) -> np.ndarray:
    """p95 (numpy's linear interpolation) of the latencies whose completion lies in
    (end − SLIDING_WINDOW_S, end], for each end; NaN where the window is empty.

    A sorted window maintained with bisect: every completion enters and leaves once, so this
    stays linear-ish in the run length where a percentile per interval would not."""
    window: list[float] = []
    out = np.full(len(ends), np.nan)
    enter = leave = 0
    n = len(done)
    for k, end in enumerate(ends):
        while enter < n and done[enter] <= end:
            bisect.insort(window, latency[enter])
            enter += 1
        start = end - SLIDING_WINDOW_S
        while leave < enter and done[leave] <= start:
            del window[bisect.bisect_left(window, latency[leave])]
            leave += 1
        size = len(window)
        if size:
            rank = 0.95 * (size - 1)
            lo = int(rank)
            frac = rank - lo
            value = window[lo]
            if frac > 0.0 and lo + 1 < size:
                value += (window[lo + 1] - value) * frac
            out[k] = value
    return out


_STATE_KINDS = frozenset({"rate_limit_cut", "capacity_loss"})


def simulate(
    workload: Workload,
    profile: Profile,
    *,
    sample_interval_s: float = 1.0,
    progress: ProgressCallback | None = None,
    log: EventLog | None = None,
) -> RunResult:
    """Simulate every request of ``workload`` through ``profile`` until the system drains.

    Requests arrive open loop at their intended times. The run continues past the scenario's
    duration until the last request has finished, so every arrival ends in exactly one
    outcome. The scenario's fault plan applies (``ragstress.faults.plan``). Raises
    :class:`ModelError` when the scenario's faults do not fit the profile. ``log`` receives
    every :class:`Event` in order (for tests and debugging; it slows the run).
    """
    names = [s.name for s in profile.stages if not isinstance(s, CacheStage)]
    try:
        plan = FaultPlan.from_scenario(
            workload.scenario.faults,
            names,
            streaming=[s.name for s in profile.stages if isinstance(s, STREAMING)],
            rate_limited=[
                s.name
                for s in profile.stages
                if isinstance(s, LlmApiStage) and s.rate_limit is not None
            ],
        )
    except ValueError as exc:
        raise ModelError(str(exc)) from None
    return _Run(
        workload, profile, plan, sample_interval_s=sample_interval_s, progress=progress, log=log
    ).run()
