"""A dynamic-batching station (Triton-style), for embedders and rerankers.

Calls wait in one FIFO queue shared by ``replicas`` replicas; a replica serves one batch at a
time. A free replica takes up to ``max_batch_size`` calls from the head of the queue as soon
as that many wait, or as soon as the oldest waiting call has waited ``max_wait_s`` (at once
when ``max_wait_s`` is 0), whichever comes first. A batch takes
``batch_time.base_s + batch_time.per_token_s × Σ tokens_in`` and all its calls finish
together, handed on in FIFO order. When every replica is busy calls keep waiting; a replica
that frees up applies the same rule at once (full, or the oldest already waited long enough)
or waits for the oldest call's deadline.

``queue_limit`` bounds the calls left waiting: an arriving call is shed if, after any batch
its arrival lets start, it would still be waiting behind ``queue_limit`` others. When no batch
starts at that instant this is simply "that many already wait"; with ``queue_limit: 0`` a call
is served only if a free replica takes it at once, as for a pool.

``set_units_down(k)``: k replicas are down. A replica that is down finishes its batch but
starts none; a new batch starts only while fewer than ``replicas - k`` batches are in
service. Like the other stations it is callback-driven (no generator processes), follows the
contract in :mod:`ragstress.model.calls`, draws nothing at random and does no I/O.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import simpy

from ragstress.config.profile import BatcherStage
from ragstress.model.calls import CallTable, Handoff

__all__ = ["BatcherStation"]


class BatcherStation:
    """``stage.replicas`` replicas batching calls from one FIFO queue (see the module docstring)."""

    __slots__ = (
        "_armed",
        "_arrived",
        "_base_s",
        "_busy",
        "_down",
        "_env",
        "_limit",
        "_max_batch",
        "_max_wait",
        "_per_token_s",
        "_queue",
        "_replicas",
        "_table",
        "_timeout",
        "name",
        "on_done",
        "on_shed",
    )

    def __init__(
        self,
        env: simpy.Environment,
        stage: BatcherStage,
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
        self._replicas = stage.replicas
        self._max_batch = stage.max_batch_size
        self._max_wait = stage.max_wait_s
        self._base_s = stage.batch_time.base_s
        self._per_token_s = stage.batch_time.per_token_s
        self._limit: float = math.inf if stage.queue_limit is None else stage.queue_limit
        self._down = 0
        self._busy = 0
        # Waiting calls and their arrival times, in step (the table has no arrival column
        # of the station's own: ``sent_at`` belongs to the caller).
        self._queue: deque[int] = deque()
        self._arrived: deque[float] = deque()
        # Deadline of the one live max-wait timer (inf: none). Timers cannot be cancelled
        # in SimPy, so a timer whose deadline is no longer this value is stale and ignored.
        self._armed = math.inf

    def submit(self, c: int) -> None:
        self._queue.append(c)
        self._arrived.append(self._env.now)
        self._pump(self._env.now)
        # c is the tail: if it is still waiting behind `limit` others after any batch it
        # let start, shed it. A batch takes calls from the head, so c went with it
        # whenever the queue is now short enough.
        if len(self._queue) > self._limit:
            self._queue.pop()
            self._arrived.pop()
            self.on_shed(c)

    def set_units_down(self, down: int) -> None:
        if not 0 <= down <= self._replicas:
            raise ValueError(f"{self.name}: {down} of {self._replicas} replicas down")
        self._down = down
        # Capacity may have come back: waiting work that is due starts now.
        self._pump(self._env.now)

    def queued(self) -> int:
        return len(self._queue)

    def busy(self) -> int:
        return self._busy

    def _pump(self, horizon: float) -> None:
        """Start every batch that is due on a free replica; else arm the head's timer.

        A head call whose deadline (arrival + max_wait) is at or before ``horizon`` is due.
        ``horizon`` is now, or a firing timer's own deadline: the timer's fire time is
        ``now + (deadline - now)``, which rounding may put a hair before the deadline, and
        the head must still count as due then.
        """
        queue = self._queue
        arrived = self._arrived
        while queue and self._busy < self._replicas - self._down:
            if len(queue) >= self._max_batch or arrived[0] + self._max_wait <= horizon:
                self._start()
                continue
            deadline = arrived[0] + self._max_wait
            # Head deadlines never decrease (FIFO), so one live timer suffices; a timer
            # already armed for this deadline covers it.
            if deadline != self._armed:
                self._armed = deadline
                self._timeout(deadline - self._env.now, deadline).callbacks.append(self._expire)
            return

    def _expire(self, event: Any) -> None:
        deadline: float = event.value
        if deadline != self._armed:
            return  # stale: its head was dispatched and a later timer was armed
        self._armed = math.inf
        self._pump(max(deadline, self._env.now))

    def _start(self) -> None:
        """Take up to ``max_batch_size`` calls from the head onto a free replica."""
        now = self._env.now
        queue = self._queue
        arrived = self._arrived
        table = self._table
        batch = [queue.popleft() for _ in range(min(self._max_batch, len(queue)))]
        tokens_in = table.tokens_in
        held = self._base_s + self._per_token_s * sum(tokens_in[c] for c in batch)
        wait_s = table.wait_s
        held_s = table.held_s
        for c in batch:
            wait_s[c] = now - arrived.popleft()
            held_s[c] = held
        self._busy += 1
        self._timeout(held, batch).callbacks.append(self._finish)

    def _finish(self, event: Any) -> None:
        batch: list[int] = event.value
        self._busy -= 1
        # Refill the freed replica before handing on, as FifoStation does, so a caller
        # reacting to on_done sees the station's new state.
        self._pump(self._env.now)
        on_done = self.on_done
        for c in batch:
            on_done(c)
