"""The built-in LLM engine: one continuous-batching GPU server, emulated in real time.

It emits no real text, only tokens at the times a continuous-batching engine would emit them,
so the reference stack can be load-tested without a GPU and the model can predict it exactly.

**Two layers.** :class:`EngineScheduler` is the scheduler alone: pure, with no clock and no
asyncio (the caller says what time it is), so tests drive it on virtual time and check it step
by step against the SimPy model. :class:`EmulatedEngine` runs that scheduler against the
event loop's clock and hands each emitted token to its caller.

**Semantics.** Exactly those of one replica of the model's ``llm_engine`` station
(:mod:`ragstress.model.llm_engine`, whose docstring is the specification):

- A call's KV need, prompt + answer tokens (an answer has at least 1 token), is reserved in
  full at admission and freed when it finishes; nothing is preempted. A call whose need
  exceeds ``kv_cache_tokens`` is refused at submit (``"too_long"``).
- At the start of each step, calls are admitted from the head of the FIFO queue while fewer
  than ``max_num_seqs`` run and the free KV holds the head's need; nothing overtakes the head.
- In a step, each of the D sequences that finished their prefill decodes one token; the rest
  of the budget, ``max_batched_tokens - D`` (never negative), goes to prompt chunks of the
  sequences still in prefill, in admission order (P tokens in all). K is the tokens already in
  the KV cache of the step's sequences: prompt + tokens generated for a decoding sequence,
  the prompt prefilled so far for a sequence that prefills a chunk in the step (a sequence
  that sits the step out, or has an empty prompt, adds nothing). The step lasts
  ``base_s + per_prefill_token_s·P + per_decode_seq_s·D + per_context_token_s·K``.
- At a step's end a sequence whose prefill completed emits its first token, every decoding
  sequence emits one more, and a sequence with all its tokens finishes and frees its KV. So a
  one-token answer finishes at the end of the step completing its prefill, an N-token answer
  N-1 steps later, and an empty prompt completes its (empty) prefill in its first step.
- ``queue_limit``: a call is refused (``"overloaded"``) if it would still be waiting, behind
  ``queue_limit`` others, after the next admission given the capacity free now. Calls that
  fit at once (even if they wait for the current step to end) do not count, so
  ``queue_limit: 0`` serves only calls that fit now.

**Real time.** An idle engine starts a step on the loop iteration after a submission, so
calls arriving in one iteration are batched into one step (the model batches calls arriving
at one instant). Steps then run back to back against absolute deadlines: a step planned to
start at t0 ends at t0 + duration, and the next starts at that planned end, not at the
(later) moment the loop woke up. Wake-up jitter (epoll rounds timeouts up to the millisecond)
therefore delays the delivery of individual tokens without accumulating: over many steps the
step rate is the formula's. If the loop fell behind by more than the step it just ended (a
stall: a GC pause, a starved CPU), catching up would emit a burst of tokens faster than the
formula allows, so the engine gives the lost time up and plans the next step from now.

**Abandoned calls.** A caller that stops reading (its HTTP client went away) does not stop
its sequence: the engine finishes it, spending steps and KV on it, as the model does (vLLM
would abort it). So emulator and model agree under timeouts and cancellations too.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Literal

from ragstress.reference.settings import EngineSettings

__all__ = [
    "EmulatedEngine",
    "EngineRefusedError",
    "EngineScheduler",
    "EngineStoppedError",
    "Generation",
    "RefusalReason",
    "StepEvents",
    "StepPlan",
    "StepTiming",
    "SubmitResult",
    "Token",
]

RefusalReason = Literal["too_long", "overloaded"]
SubmitResult = Literal["accepted", "too_long", "overloaded"]


# --- the pure scheduler ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StepPlan:
    """One step as the scheduler planned it when it started.

    ``admitted`` holds (seq id, seconds it waited) for the calls admitted at its start;
    ``sequences`` is how many sequences the step carries (running ones, in prefill or not).
    """

    start: float
    duration: float
    prefill_tokens: int
    decode_seqs: int
    context_tokens: int
    sequences: int
    admitted: tuple[tuple[int, float], ...]

    @property
    def end(self) -> float:
        """When the step ends: start + duration (the model's ``env.now + dt``)."""
        return self.start + self.duration


@dataclass(frozen=True, slots=True)
class StepEvents:
    """What the end of a step brought: first tokens, further tokens, finished sequences.

    A finished sequence is also in ``first_token`` (a one-token answer) or ``next_token``:
    its last token is emitted in the step it finishes in.
    """

    at: float
    first_token: tuple[int, ...]
    next_token: tuple[int, ...]
    finished: tuple[int, ...]


class _Seq:
    """A running sequence (an admitted call)."""

    __slots__ = ("chunk", "filled", "gen", "need", "out", "prompt", "seq_id")

    def __init__(self, seq_id: int, prompt: int, out: int, need: int) -> None:
        self.seq_id = seq_id
        self.prompt = prompt
        self.out = out
        self.need = need
        self.filled = 0  # prompt tokens prefilled so far
        self.gen = 0  # answer tokens emitted so far; > 0 means decoding
        self.chunk = -1  # prompt tokens it prefills in the current step; -1: not in the step


class EngineScheduler:
    """The engine's scheduler on a clock it is given (see the module docstring).

    Drive it as the model's station is driven: ``submit`` calls as they arrive,
    ``start_step`` when the engine is idle and has work or when a step ends, ``end_step`` at
    the planned end of the step in progress. It keeps the model's bookkeeping (``adm_n`` /
    ``adm_kv``: the prefix of the queue the next admission takes given the capacity free
    now) so that ``queue_limit`` refuses exactly the calls the model sheds.
    """

    __slots__ = (
        "_adm_kv",
        "_adm_n",
        "_arrived",
        "_base_s",
        "_ctx_s",
        "_decode_s",
        "_free_kv",
        "_in_step",
        "_kv",
        "_limit",
        "_max_seqs",
        "_mbt",
        "_prefill_s",
        "_present",
        "_queued",
        "_running",
        "_steps",
        "_tokens",
        "_waiting",
    )

    def __init__(self, settings: EngineSettings) -> None:
        self._max_seqs = settings.max_num_seqs
        self._kv = settings.kv_cache_tokens
        self._mbt = settings.max_batched_tokens
        step = settings.step
        self._base_s = step.base_s
        self._prefill_s = step.per_prefill_token_s
        self._decode_s = step.per_decode_seq_s
        self._ctx_s = step.per_context_token_s
        self._limit: float = float("inf") if settings.queue_limit is None else settings.queue_limit
        self._waiting: deque[int] = deque()
        self._queued: dict[int, tuple[int, int]] = {}  # seq id → (prompt, answer) while waiting
        self._present: set[int] = set()  # ids waiting or running
        self._arrived: dict[int, float] = {}
        self._running: list[_Seq] = []  # in admission order: chunked prefill follows it
        self._free_kv = self._kv
        self._adm_n = 0
        self._adm_kv = 0
        self._in_step = False
        self._steps = 0
        self._tokens = 0

    # -- counters -----------------------------------------------------------------------

    @property
    def running(self) -> int:
        """Sequences admitted and not finished."""
        return len(self._running)

    @property
    def waiting(self) -> int:
        """Calls accepted and not yet admitted."""
        return len(self._waiting)

    @property
    def kv_used(self) -> int:
        """KV tokens reserved by the running sequences."""
        return self._kv - self._free_kv

    @property
    def steps(self) -> int:
        """Steps started so far."""
        return self._steps

    @property
    def tokens_emitted(self) -> int:
        """Answer tokens emitted so far (first tokens included)."""
        return self._tokens

    @property
    def in_step(self) -> bool:
        """Whether a step has started and not ended."""
        return self._in_step

    # -- calls --------------------------------------------------------------------------

    @staticmethod
    def kv_need(prompt_tokens: int, max_tokens: int) -> int:
        """KV tokens a call reserves: its prompt and its answer (at least one token)."""
        return prompt_tokens + max(max_tokens, 1)

    def submit(self, seq_id: int, prompt_tokens: int, max_tokens: int, now: float) -> SubmitResult:
        """Queue a call, or refuse it: ``"too_long"`` (KV need over the cache) or
        ``"overloaded"`` (it would wait behind ``queue_limit`` others after the next
        admission). ``max_tokens`` below 1 counts as 1, as in the model."""
        if prompt_tokens < 0:
            raise ValueError(f"prompt_tokens must be >= 0, not {prompt_tokens}")
        if seq_id in self._present:
            raise ValueError(f"sequence {seq_id} is already in the engine")
        out = max(max_tokens, 1)
        need = prompt_tokens + out
        if need > self._kv:
            return "too_long"  # it would block the queue head forever
        w = self._waiting
        if (
            self._adm_n == len(w)
            and len(self._running) + self._adm_n < self._max_seqs
            and self._free_kv - self._adm_kv >= need
        ):
            # The next admission takes it: it waits at most for the current step to end.
            self._adm_n += 1
            self._adm_kv += need
        elif len(w) - self._adm_n >= self._limit:
            return "overloaded"
        w.append(seq_id)
        self._present.add(seq_id)
        self._queued[seq_id] = (prompt_tokens, out)
        self._arrived[seq_id] = now
        return "accepted"

    # -- steps --------------------------------------------------------------------------

    def _admit(self, now: float) -> list[tuple[int, float]]:
        admitted: list[tuple[int, float]] = []
        w = self._waiting
        run = self._running
        while w and len(run) < self._max_seqs:
            sid = w[0]
            prompt, out = self._queued[sid]
            need = prompt + out
            if need > self._free_kv:
                break  # FCFS: nothing overtakes the head
            w.popleft()
            del self._queued[sid]
            self._free_kv -= need
            run.append(_Seq(sid, prompt, out, need))
            admitted.append((sid, max(0.0, now - self._arrived.pop(sid))))
        # The head (if any) no longer fits now, so no waiting call is due at the next one.
        self._adm_n = self._adm_kv = 0
        return admitted

    def start_step(self, now: float) -> StepPlan | None:
        """Admit, then plan a step over the running sequences; None if there are none
        (the engine goes idle until the next submission)."""
        if self._in_step:
            raise RuntimeError("start_step: a step is already in progress")
        admitted = self._admit(now)
        run = self._running
        if not run:
            return None
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
                take = min(rem, budget)
                s.chunk = take
                budget -= take
                prefill += take
                context += s.filled
            else:
                s.chunk = -1  # no budget left: it sits this step out
        # Same terms in the same order as the model, so the floats agree to the last bit.
        duration = (
            self._base_s
            + self._prefill_s * prefill
            + self._decode_s * decode
            + self._ctx_s * context
        )
        self._in_step = True
        self._steps += 1
        return StepPlan(
            start=now,
            duration=duration,
            prefill_tokens=prefill,
            decode_seqs=decode,
            context_tokens=context,
            sequences=len(run),
            admitted=tuple(admitted),
        )

    def end_step(self, now: float) -> StepEvents:
        """End the step in progress: emit tokens, finish sequences and free their KV."""
        if not self._in_step:
            raise RuntimeError("end_step: no step in progress")
        self._in_step = False
        first: list[int] = []
        more: list[int] = []
        done: list[int] = []
        keep: list[_Seq] = []
        for s in self._running:
            if s.gen:
                s.gen += 1
                more.append(s.seq_id)
            elif s.chunk >= 0:
                s.filled += s.chunk
                if s.filled == s.prompt:
                    s.gen = 1
                    first.append(s.seq_id)
            if s.gen >= s.out:  # out >= 1, so only sequences that emitted get here
                self._free_kv += s.need
                self._present.discard(s.seq_id)
                done.append(s.seq_id)
            else:
                keep.append(s)
        self._running = keep
        self._tokens += len(first) + len(more)
        return StepEvents(
            at=now, first_token=tuple(first), next_token=tuple(more), finished=tuple(done)
        )


# --- the asyncio driver ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Token:
    """One emitted token: its 0-based place in the answer and the loop time it was emitted
    (when the engine woke up at the end of its step); ``last`` marks the answer's end."""

    index: int
    at: float
    last: bool


@dataclass(frozen=True, slots=True)
class StepTiming:
    """A step as planned, and the loop time the engine actually ended it."""

    plan: StepPlan
    ended_at: float

    @property
    def lateness(self) -> float:
        """Seconds the engine woke up after the step's planned end."""
        return self.ended_at - self.plan.end


class EngineRefusedError(Exception):
    """The engine refused a call at submit (see :meth:`EngineScheduler.submit`)."""

    def __init__(self, reason: RefusalReason, *, need: int, kv_cache_tokens: int) -> None:
        self.reason: RefusalReason = reason
        self.need = need
        self.kv_cache_tokens = kv_cache_tokens
        if reason == "too_long":
            msg = f"the call needs {need} KV tokens; the engine has {kv_cache_tokens}"
        else:
            msg = "the engine is overloaded"
        super().__init__(msg)


class EngineStoppedError(RuntimeError):
    """The engine stopped before the call finished."""


class Generation:
    """One call in the engine: iterate it for its tokens as they are emitted.

    Times are the event loop's (``loop.time()``): ``submitted_at``; ``admitted_at`` (the
    planned start of the step that admitted it); ``first_token_at`` and ``finished_at``
    (when the engine emitted the first and last tokens). Tokens wait in an unbounded queue
    until read, so a caller that stops reading costs at most ``max_tokens`` small objects.
    """

    __slots__ = (
        "_done_reading",
        "_queue",
        "admitted_at",
        "emitted",
        "finished_at",
        "first_token_at",
        "max_tokens",
        "prompt_tokens",
        "seq_id",
        "submitted_at",
    )

    def __init__(self, seq_id: int, prompt_tokens: int, max_tokens: int, now: float) -> None:
        self.seq_id = seq_id
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.submitted_at = now
        self.admitted_at: float | None = None
        self.first_token_at: float | None = None
        self.finished_at: float | None = None
        self.emitted = 0
        self._queue: asyncio.Queue[Token | BaseException] = asyncio.Queue()
        self._done_reading = False

    def _emit(self, at: float) -> None:
        index = self.emitted
        self.emitted += 1
        last = self.emitted >= self.max_tokens
        if index == 0:
            self.first_token_at = at
        if last:
            self.finished_at = at
        self._queue.put_nowait(Token(index, at, last))

    def _fail(self, exc: BaseException) -> None:
        self._queue.put_nowait(exc)

    def __aiter__(self) -> Generation:
        return self

    async def __anext__(self) -> Token:
        if self._done_reading:
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, BaseException):
            self._done_reading = True
            raise item
        if item.last:
            self._done_reading = True
        return item


class EmulatedEngine:
    """The scheduler run in real time on the running event loop (see the module docstring).

    It is callback-driven, like the model: one ``loop.call_at`` per step, no task, no
    per-token timers. ``on_step`` (optional) is called after each step with its plan and
    the time the engine actually ended it (metrics, accuracy measurements).
    """

    def __init__(
        self,
        settings: EngineSettings,
        *,
        on_step: Callable[[StepTiming], None] | None = None,
    ) -> None:
        self.settings = settings
        self._sched = EngineScheduler(settings)
        self._on_step = on_step
        self._ids = itertools.count()
        self._gens: dict[int, Generation] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped = False
        # A step is planned or a kick is scheduled; new calls then just join the queue.
        self._active = False
        self._plan: StepPlan | None = None
        self._handle: asyncio.Handle | None = None

    # -- counters -----------------------------------------------------------------------

    @property
    def running(self) -> int:
        """Sequences admitted and not finished."""
        return self._sched.running

    @property
    def waiting(self) -> int:
        """Calls accepted and not yet admitted."""
        return self._sched.waiting

    @property
    def kv_used(self) -> int:
        """KV tokens reserved by the running sequences."""
        return self._sched.kv_used

    @property
    def steps(self) -> int:
        """Steps started so far."""
        return self._sched.steps

    @property
    def tokens_emitted(self) -> int:
        """Answer tokens emitted so far."""
        return self._sched.tokens_emitted

    # -- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Bind the engine to the running loop (it is idle until the first call)."""
        if self._stopped:
            raise RuntimeError("an engine cannot be restarted once stopped")
        self._loop = asyncio.get_running_loop()

    async def stop(self) -> None:
        """Stop stepping; calls in the engine end with :class:`EngineStoppedError`."""
        self._stopped = True
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        gens = list(self._gens.values())
        self._gens.clear()
        for gen in gens:
            gen._fail(EngineStoppedError("the engine stopped"))
        self._loop = None

    # -- calls --------------------------------------------------------------------------

    def submit(self, prompt_tokens: int, max_tokens: int) -> Generation:
        """Queue a call; raises :class:`EngineRefusedError` if the engine refuses it."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("the engine is not running (call start() first)")
        sid = next(self._ids)
        now = loop.time()
        result = self._sched.submit(sid, prompt_tokens, max_tokens, now)
        if result != "accepted":
            raise EngineRefusedError(
                result,
                need=EngineScheduler.kv_need(prompt_tokens, max_tokens),
                kv_cache_tokens=self.settings.kv_cache_tokens,
            )
        gen = Generation(sid, prompt_tokens, max(max_tokens, 1), now)
        self._gens[sid] = gen
        if not self._active:
            # Start on the next loop iteration, after the calls arriving in this one.
            self._active = True
            self._handle = loop.call_soon(self._kick)
        return gen

    async def generate(self, prompt_tokens: int, max_tokens: int) -> AsyncIterator[Token]:
        """The call's tokens as they are emitted (submitting on the first iteration).

        Closing the iterator early leaves the sequence running to its end (see the module
        docstring); use :meth:`submit` to learn of a refusal before reading."""
        gen = self.submit(prompt_tokens, max_tokens)
        async for token in gen:
            yield token

    # -- the step loop ------------------------------------------------------------------

    def _kick(self) -> None:
        assert self._loop is not None
        self._begin(self._loop.time())

    def _begin(self, start: float) -> None:
        """Start a step at ``start`` (loop time) and set its end; go idle if no work."""
        assert self._loop is not None
        plan = self._sched.start_step(start)
        if plan is None:
            self._active = False
            self._plan = None
            self._handle = None
            return
        for sid, _waited in plan.admitted:
            self._gens[sid].admitted_at = start
        self._plan = plan
        self._handle = self._loop.call_at(plan.end, self._end)

    def _end(self) -> None:
        loop = self._loop
        plan = self._plan
        assert loop is not None
        assert plan is not None
        now = loop.time()
        deadline = plan.end
        events = self._sched.end_step(deadline)
        # Keep the planned timeline through ordinary jitter; after a stall longer than the
        # step itself, restart it from now rather than burst to catch up.
        self._begin(deadline if now - deadline <= plan.duration else now)
        gens = self._gens
        for sid in events.first_token:
            gens[sid]._emit(now)
        for sid in events.next_token:
            gens[sid]._emit(now)
        for sid in events.finished:
            del gens[sid]
        if self._on_step is not None:
            self._on_step(StepTiming(plan, now))
