"""FIFO queueing stations (``pool`` and ``llm_api`` stages) driven by SimPy events.

Stations are callback-driven rather than one generator process per call: a call is an integer
index into the stage's :class:`~ragstress.model.calls.CallTable`, a service is one
``env.timeout`` whose callback frees the server and hands the call back. That keeps the
per-request cost of a multi-stage pipeline near that of a bare single-stage ``simpy.Resource``
loop (see benchmarks/model_speed.py) with identical semantics: FIFO, c servers,
work-conserving, optional bound on the number waiting.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import simpy

from ragstress.model.calls import CallTable, Handoff

__all__ = ["FifoStation"]


class FifoStation:
    """``units × per_unit`` identical servers, one FIFO queue, at most ``queue_limit`` waiting.

    A call's service time is ``table.service_s[c]``; with ``streams`` its first token leaves
    ``table.first_token_s[c]`` into service (recorded in ``table.first_token_at``). A capacity
    loss takes whole units (replicas of a pool; slots of an LLM API) down: their servers finish
    the call they hold and start none.
    """

    __slots__ = (
        "_env",
        "_streams",
        "_timeout",
        "arrived_at",
        "n_busy",
        "name",
        "on_done",
        "on_shed",
        "per_unit",
        "queue",
        "queue_limit",
        "servers",
        "table",
        "units",
    )

    def __init__(
        self,
        env: simpy.Environment,
        *,
        name: str,
        units: int,
        per_unit: int,
        queue_limit: int | None,
        table: CallTable,
        streams: bool,
        on_done: Handoff,
        on_shed: Handoff,
    ) -> None:
        self._env = env
        self._timeout = env.timeout
        self._streams = streams
        self.name = name
        self.units = units
        self.per_unit = per_unit
        self.servers = units * per_unit
        self.queue_limit = math.inf if queue_limit is None else queue_limit
        self.table = table
        self.on_done = on_done
        self.on_shed = on_shed
        self.n_busy = 0
        self.queue: deque[int] = deque()
        self.arrived_at: dict[int, float] = {}

    def submit(self, c: int) -> None:
        if self.n_busy < self.servers:
            self.n_busy += 1
            self.table.wait_s[c] = 0.0
            self._start(c)
        elif len(self.queue) < self.queue_limit:
            self.arrived_at[c] = self._env.now
            self.queue.append(c)
        else:
            self.on_shed(c)

    def _start(self, c: int) -> None:
        table = self.table
        s = table.service_s[c]
        table.held_s[c] = s
        if self._streams:
            table.first_token_at[c] = self._env.now + table.first_token_s[c]
        self._timeout(s, c).callbacks.append(self._finish)

    def _finish(self, event: Any) -> None:
        c: int = event.value
        if self.queue and self.n_busy <= self.servers:
            nxt = self.queue.popleft()
            self.table.wait_s[nxt] = self._env.now - self.arrived_at.pop(nxt)
            self._start(nxt)
        else:
            self.n_busy -= 1
        self.on_done(c)

    def set_units_down(self, down: int) -> None:
        self.servers = (self.units - down) * self.per_unit
        while self.queue and self.n_busy < self.servers:
            self.n_busy += 1
            nxt = self.queue.popleft()
            self.table.wait_s[nxt] = self._env.now - self.arrived_at.pop(nxt)
            self._start(nxt)

    def queued(self) -> int:
        return len(self.queue)

    def busy(self) -> int:
        return self.n_busy
