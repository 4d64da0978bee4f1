"""Queueing stations driven by SimPy events.

Stations are callback-driven rather than one generator process per request: a request is an
integer index, a service is one ``env.timeout`` whose callback frees the server and hands the
request on. That keeps the per-request cost of a multi-stage pipeline below that of a bare
single-stage ``simpy.Resource`` loop (see benchmarks/model_speed.py) with identical semantics:
FIFO, c servers, work-conserving, optional bound on the number waiting.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import Any

import simpy

__all__ = ["FifoStation"]

Handoff = Callable[[int], None]


class FifoStation:
    """``servers`` identical servers, one FIFO queue, at most ``queue_limit`` waiting.

    ``service_s[i]`` is request i's service time. ``first_token_s`` (LLM stages) is the offset
    into service at which the first token streams out; it is recorded in ``first_token_at``.
    """

    __slots__ = (
        "_env",
        "_first_token",
        "_service",
        "_timeout",
        "arrived_at",
        "busy",
        "first_token_at",
        "name",
        "on_done",
        "on_shed",
        "queue",
        "queue_limit",
        "servers",
        "service_s",
        "wait_s",
    )

    def __init__(
        self,
        env: simpy.Environment,
        *,
        name: str,
        servers: int,
        queue_limit: int | None,
        service_s: list[float],
        first_token_s: list[float] | None,
        on_done: Handoff,
        on_shed: Handoff,
    ) -> None:
        n = len(service_s)
        self._env = env
        self._timeout = env.timeout
        self.name = name
        self.servers = servers
        self.queue_limit = math.inf if queue_limit is None else queue_limit
        self._service = service_s
        self._first_token = first_token_s
        self.on_done = on_done
        self.on_shed = on_shed
        self.busy = 0
        self.queue: deque[int] = deque()
        nan = math.nan
        self.arrived_at = [nan] * n
        self.wait_s = [nan] * n
        self.service_s = [nan] * n
        self.first_token_at = [nan] * n if first_token_s is not None else None

    def arrive(self, i: int) -> None:
        self.arrived_at[i] = self._env.now
        if self.busy < self.servers:
            self.busy += 1
            self._start(i)
        elif len(self.queue) < self.queue_limit:
            self.queue.append(i)
        else:
            self.on_shed(i)

    def _start(self, i: int) -> None:
        now = self._env.now
        self.wait_s[i] = now - self.arrived_at[i]
        s = self._service[i]
        self.service_s[i] = s
        if self.first_token_at is not None and self._first_token is not None:
            self.first_token_at[i] = now + self._first_token[i]
        self._timeout(s, i).callbacks.append(self._finish)

    def _finish(self, event: Any) -> None:
        i: int = event.value
        if self.queue:
            self._start(self.queue.popleft())
        else:
            self.busy -= 1
        self.on_done(i)
