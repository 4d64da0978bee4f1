"""Calls: one attempt by a caller to use one stage, and the contract every station keeps.

A request visits a stage with ``fan_out`` calls; a retry is a new call. Calls are integers
indexing a stage's :class:`CallTable`. Call ``i·fan_out + j`` is request i's first attempt of
sub-call j, with demands drawn up front (so common random numbers hold across
configurations); retries are appended after them with fresh draws.

A **station** serves calls. It is built with the stage's config, the table and two callbacks
and keeps this contract:

- ``submit(c)`` — call c arrives now. The station either sheds it at once (``on_shed(c)``,
  synchronously, nothing recorded) or serves it and, when its answer is complete, calls
  ``on_done(c)``. It records ``wait_s[c]`` (arrival → start of service; for an LLM engine,
  arrival → admission), ``held_s[c]`` (start of service → done) and, for a streaming station,
  ``first_token_at[c]`` (absolute time the first token was emitted).
- It reads a call's demand from the table: ``service_s`` (pool, llm_api), ``tokens_in`` and
  ``tokens_out`` (batcher, llm_engine). The engine may change a call's row before submitting
  it (a fault's latency factor, a truncated stream), never after.
- ``set_units_down(k)`` — a capacity loss: k of the stage's units (replicas; slots for
  ``llm_api``) are down from now on. A down unit finishes the work it holds but starts none;
  ``set_units_down(0)`` restores all of them and starts waiting work at once.
- ``queued()`` and ``busy()`` — calls waiting, and calls (pool, llm_api, llm_engine) or
  batches (batcher) in service, for the time series.
- Never drop a call: every submitted call that is not shed ends in exactly one ``on_done``.
- No randomness: everything random is in the table already.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

__all__ = ["CallTable", "Handoff", "Station"]

Handoff = Callable[[int], None]


class CallTable:
    """Per-call rows of one stage, as parallel lists that grow as retries are appended."""

    __slots__ = (
        "attempt",
        "cost_usd",
        "done_at",
        "first_token_at",
        "first_token_s",
        "held_s",
        "outcome",
        "req",
        "sent_at",
        "service_s",
        "tokens_in",
        "tokens_out",
        "visit",
        "wait_s",
    )

    def __init__(
        self,
        *,
        req: list[int],
        tokens_in: list[int],
        tokens_out: list[int],
        service_s: list[float],
        first_token_s: list[float],
    ) -> None:
        n = len(req)
        nan = math.nan
        self.req = req
        self.attempt = [1] * n
        self.tokens_in = tokens_in
        self.tokens_out = tokens_out
        self.service_s = service_s
        self.first_token_s = first_token_s
        self.sent_at = [nan] * n
        self.wait_s = [nan] * n
        self.held_s = [nan] * n
        self.first_token_at = [nan] * n
        self.done_at = [nan] * n
        self.cost_usd = [0.0] * n
        # engine bookkeeping: what the caller saw, and which visit of the request it served
        self.outcome: list[str | None] = [None] * n
        self.visit = [0] * n

    def __len__(self) -> int:
        return len(self.req)

    def append(  # noqa: PLR0917  # one value per column, called only from service.redraw
        self,
        req: int,
        attempt: int,
        tokens_in: int,
        tokens_out: int,
        service_s: float,
        first_token_s: float,
    ) -> int:
        """Add a call (a retry) and return its id."""
        nan = math.nan
        self.req.append(req)
        self.attempt.append(attempt)
        self.tokens_in.append(tokens_in)
        self.tokens_out.append(tokens_out)
        self.service_s.append(service_s)
        self.first_token_s.append(first_token_s)
        self.sent_at.append(nan)
        self.wait_s.append(nan)
        self.held_s.append(nan)
        self.first_token_at.append(nan)
        self.done_at.append(nan)
        self.cost_usd.append(0.0)
        self.outcome.append(None)
        self.visit.append(0)
        return len(self.req) - 1


class Station(Protocol):
    """What the engine needs of a stage's server side (see the module docstring)."""

    name: str

    def submit(self, c: int) -> None: ...

    def set_units_down(self, down: int) -> None: ...

    def queued(self) -> int: ...

    def busy(self) -> int: ...
