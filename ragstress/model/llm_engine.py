"""A self-hosted continuous-batching LLM engine (vLLM-like): ``replicas`` engines behind a router.

Call c has a prompt of ``tokens_in[c]`` tokens and an answer of ``tokens_out[c]`` tokens (at
least 1: an answer has a first token). Its KV need, prompt + answer tokens, is reserved in
full when it is admitted and freed when it finishes, so nothing is ever preempted.

**Routing.** ``submit`` picks a replica that is up: ``round_robin`` cycles over the replica
indices, skipping down ones; ``least_outstanding`` takes the one with the fewest calls waiting
or running, the lowest index on a tie. Each replica has its own FIFO of waiting calls.

**Admission.** At the start of each step a replica admits calls from the head of its queue
while fewer than ``max_num_seqs`` run and its free KV holds the head's need. It never skips
ahead (FCFS head-of-line blocking, as vLLM's scheduler). ``wait_s`` is arrival → admission.
Calls arriving at an idle replica in one instant start together: the first one schedules
the step for the same instant (a zero-delay event), so a burst is batched as one step.

**Steps.** A replica with running sequences steps back to back. In a step every sequence
that has finished its prefill decodes one token (D of them); the rest of the token budget,
``max_batched_tokens - D`` (never negative), goes to sequences still in prefill in admission
order, each taking as many of its remaining prompt tokens as the budget allows (chunked
prefill; P tokens in all). K is the tokens already in the KV cache of the step's sequences
(prompt prefilled so far + tokens generated so far). The step takes ``base_s +
per_prefill_token_s·P + per_decode_seq_s·D + per_context_token_s·K``. At its end a sequence
whose prefill completed emits its first token (``first_token_at``), each decoding sequence
emits one more, and a sequence with all its tokens finishes: its KV is freed, ``held_s`` is
admission → now, and ``on_done`` is called (after the replica's next step has started, as
in the other stations, so a caller reacting to it sees the new state). A one-token answer
thus finishes at the end of the step completing its prefill; an N-token answer N-1 steps
later. A zero-token prompt completes its (empty) prefill in its first step.

**Shedding.** A call whose KV need exceeds ``kv_cache_tokens`` could never be admitted and
is shed at submit. ``queue_limit`` bounds the calls left waiting per replica: a call is shed
if it would still be waiting, behind ``queue_limit`` others, after the replica's next
admission given the capacity free now (calls that fit at once — even if they wait for the
current step to end — do not count). So ``queue_limit: 0`` serves only calls that fit now.

**Capacity loss.** ``set_units_down(k)``: the last k replicas are down. They take no routed
calls and admit nothing but finish the sequences they run; their waiting calls are re-routed
at once to the up replicas, oldest first. With every replica down, calls wait in a shared
backlog (bounded by ``queue_limit × replicas``) that is routed, oldest first, as soon as a
replica is up again. Calls already accepted are never shed when re-routed.

It follows the contract in :mod:`ragstress.model.calls`: callback-driven (one
``env.timeout`` per step per replica, no processes, no per-token events), no randomness, no
I/O.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import simpy

from ragstress.config.profile import LlmEngineStage
from ragstress.model.calls import CallTable, Handoff

__all__ = ["LlmEngineStation"]


class _Seq:
    """A running sequence (an admitted call)."""

    __slots__ = ("admitted", "c", "chunk", "filled", "gen", "need", "out", "prompt")

    def __init__(self, c: int, prompt: int, out: int, need: int, admitted: float) -> None:
        self.c = c
        self.prompt = prompt
        self.out = out
        self.need = need
        self.admitted = admitted
        self.filled = 0  # prompt tokens prefilled so far
        self.gen = 0  # answer tokens emitted so far; > 0 means decoding
        self.chunk = -1  # prompt tokens it prefills in the current step; -1: not in the step


class _Replica:
    """One engine: its waiting queue, running sequences and free KV."""

    __slots__ = ("active", "adm_kv", "adm_n", "free_kv", "idx", "running", "waiting")

    def __init__(self, idx: int, kv: int) -> None:
        self.idx = idx
        self.waiting: deque[int] = deque()
        self.running: list[_Seq] = []  # in admission order: chunked prefill follows it
        self.free_kv = kv
        # A step is in progress or scheduled: new calls then just join the queue.
        self.active = False
        # How many of the waiting calls (a prefix of the queue) and how much KV the next
        # admission takes given the capacity free now; queue_limit counts only the rest.
        self.adm_n = 0
        self.adm_kv = 0


class LlmEngineStation:
    """``stage.replicas`` continuous-batching engines behind a router (see the module docstring)."""

    __slots__ = (
        "_arrived",
        "_backlog",
        "_backlog_limit",
        "_base_s",
        "_ctx_s",
        "_decode_s",
        "_env",
        "_kv",
        "_least",
        "_limit",
        "_max_seqs",
        "_mbt",
        "_n_up",
        "_prefill_s",
        "_replicas",
        "_rr",
        "_table",
        "_timeout",
        "name",
        "on_done",
        "on_shed",
    )

    def __init__(
        self,
        env: simpy.Environment,
        stage: LlmEngineStage,
        table: CallTable,
        *,
        on_done: Handoff,
        on_shed: Handoff,
    ) -> None:
        self._env = env
        self._timeout = env.timeout
        self.name = stage.name
        self._table = table
        self.on_done = on_done
        self.on_shed = on_shed
        self._replicas = [_Replica(i, stage.kv_cache_tokens) for i in range(stage.replicas)]
        self._n_up = stage.replicas  # replicas [0, n_up) are up
        self._least = stage.router == "least_outstanding"
        self._rr = 0  # round robin: the next index to try
        self._max_seqs = stage.max_num_seqs
        self._kv = stage.kv_cache_tokens
        self._mbt = stage.max_batched_tokens
        step = stage.step
        self._base_s = step.base_s
        self._prefill_s = step.per_prefill_token_s
        self._decode_s = step.per_decode_seq_s
        self._ctx_s = step.per_context_token_s
        self._limit: float = math.inf if stage.queue_limit is None else stage.queue_limit
        self._backlog_limit = self._limit * stage.replicas
        # Arrival time of each accepted call not yet admitted (the table has no arrival
        # column of the station's own: ``sent_at`` belongs to the caller).
        self._arrived: dict[int, float] = {}
        self._backlog: deque[int] = deque()  # waiting while every replica is down

    # -- the station contract -----------------------------------------------------------

    def submit(self, c: int) -> None:
        need = self._need(c)
        if need > self._kv:
            # It would block its replica's queue head forever: refuse it now.
            self.on_shed(c)
            return
        if self._n_up == 0:
            if len(self._backlog) >= self._backlog_limit:
                self.on_shed(c)
                return
            self._backlog.append(c)
        elif not self._place(self._route(), c, need, self._limit):
            self.on_shed(c)
            return
        self._arrived[c] = self._env.now

    def set_units_down(self, down: int) -> None:
        n = len(self._replicas)
        if not 0 <= down <= n:
            raise ValueError(f"{self.name}: {down} of {n} replicas down")
        n_up = n - down
        moved: list[int] = []
        for r in self._replicas[n_up : self._n_up]:  # newly down: hand their queue over
            moved.extend(r.waiting)
            r.waiting.clear()
            r.adm_n = r.adm_kv = 0
        self._n_up = n_up
        if n_up == 0:
            self._backlog.extend(moved)  # put in arrival order when it is routed
            return
        if not moved and not self._backlog:
            return
        moved.extend(self._backlog)
        self._backlog.clear()
        # Oldest first across replicas (sort is stable, so FIFO order within one holds).
        moved.sort(key=self._arrived.__getitem__)
        for c in moved:
            self._place(self._route(), c, self._need(c), math.inf)

    def queued(self) -> int:
        return len(self._backlog) + sum(len(r.waiting) for r in self._replicas)

    def busy(self) -> int:
        return sum(len(r.running) for r in self._replicas)

    # -- routing and admission ----------------------------------------------------------

    def _need(self, c: int) -> int:
        t = self._table
        return t.tokens_in[c] + max(t.tokens_out[c], 1)

    def _route(self) -> _Replica:
        """An up replica for the next call (requires at least one up)."""
        n_up = self._n_up
        if self._least:
            best = self._replicas[0]
            best_load = len(best.waiting) + len(best.running)
            for r in self._replicas[1:n_up]:
                load = len(r.waiting) + len(r.running)
                if load < best_load:
                    best, best_load = r, load
            return best
        # Down replicas are the highest indices, so skipping them is wrapping at n_up.
        i = self._rr if self._rr < n_up else 0
        self._rr = i + 1
        return self._replicas[i]

    def _place(self, r: _Replica, c: int, need: int, limit: float) -> bool:
        """Queue c on r unless it would wait behind ``limit`` others; start r if idle."""
        w = r.waiting
        if (
            r.adm_n == len(w)
            and len(r.running) + r.adm_n < self._max_seqs
            and r.free_kv - r.adm_kv >= need
        ):
            # The next admission takes it: it waits at most for the current step to end.
            r.adm_n += 1
            r.adm_kv += need
        elif len(w) - r.adm_n >= limit:
            return False
        w.append(c)
        if not r.active:
            # Start at this instant but after the calls arriving in it, so they batch.
            r.active = True
            self._timeout(0, r).callbacks.append(self._kick)
        return True

    def _kick(self, event: Any) -> None:
        self._step(event.value)

    def _admit(self, r: _Replica) -> None:
        now = self._env.now
        table = self._table
        wait_s = table.wait_s
        tokens_in = table.tokens_in
        tokens_out = table.tokens_out
        arrived = self._arrived
        w = r.waiting
        run = r.running
        max_seqs = self._max_seqs
        while w and len(run) < max_seqs:
            c = w[0]
            prompt = tokens_in[c]
            out = max(tokens_out[c], 1)
            need = prompt + out
            if need > r.free_kv:
                break  # FCFS: nothing overtakes the head
            w.popleft()
            r.free_kv -= need
            run.append(_Seq(c, prompt, out, need, now))
            wait_s[c] = now - arrived.pop(c)
        # The head (if any) no longer fits now, so no waiting call is due at the next one.
        r.adm_n = r.adm_kv = 0

    # -- steps --------------------------------------------------------------------------

    def _step(self, r: _Replica) -> None:
        """Admit (if up), then run one step over r's sequences, or go idle."""
        if r.idx < self._n_up:
            self._admit(r)
        run = r.running
        if not run:
            r.active = False
            return
        decode = 0
        context = 0
        for s in run:
            if s.gen:
                decode += 1
                context += s.prompt + s.gen
        budget = self._mbt - decode  # decoding sequences take their token first
        prefill = 0
        for s in run:
            if s.gen:
                continue
            rem = s.prompt - s.filled
            if rem == 0:
                s.chunk = 0  # empty prompt: its prefill completes in this step
            elif budget > 0:
                take = rem if rem < budget else budget
                s.chunk = take
                budget -= take
                prefill += take
                context += s.filled
            else:
                s.chunk = -1  # no budget left: it sits this step out
        dt = (
            self._base_s
            + self._prefill_s * prefill
            + self._decode_s * decode
            + self._ctx_s * context
        )
        self._timeout(dt, r).callbacks.append(self._end_step)

    def _end_step(self, event: Any) -> None:
        r: _Replica = event.value
        now = self._env.now
        table = self._table
        first_token_at = table.first_token_at
        held_s = table.held_s
        done: list[int] = []
        keep: list[_Seq] = []
        for s in r.running:
            if s.gen:
                s.gen += 1
            elif s.chunk >= 0:
                s.filled += s.chunk
                if s.filled == s.prompt:
                    s.gen = 1
                    first_token_at[s.c] = now
            if s.gen >= s.out:  # out >= 1, so only sequences that emitted get here
                r.free_kv += s.need
                held_s[s.c] = now - s.admitted
                done.append(s.c)
            else:
                keep.append(s)
        r.running = keep
        # Next step first (as the other stations refill before handing on).
        self._step(r)
        on_done = self.on_done
        for c in done:
            on_done(c)
