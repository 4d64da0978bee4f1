"""The scenario's fault plan: what goes wrong, on which stage, when, and for what share of calls.

Each fault is a window ``[start_s, end_s)`` on one named stage. Every variant is chosen by its
``kind`` field. What each kind *does* — what a caller sees, when, and with which outcome — is
defined once, in :mod:`ragstress.faults.plan`, for both the model and the chaos proxy; these
classes only hold and validate the numbers.

Two families:

- **per-call faults** (``added_latency``, ``latency_multiplier``, ``error``, ``outage``,
  ``hang``, ``stream_stall``, ``stream_truncate``) hit a share ``percent`` of the calls that
  reach the stage inside the window, each call rolled on its own;
- **state faults** (``rate_limit_cut``, ``capacity_loss``) change the stage itself for the whole
  window, so they take no ``percent``.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from ragstress.config.base import StrictModel
from ragstress.config.distributions import Distribution, NonNegative, Positive
from ragstress.config.profile import StageName

__all__ = [
    "ERROR_STATUSES",
    "AddedLatency",
    "CallFault",
    "CapacityLoss",
    "ErrorStatus",
    "Fault",
    "Faults",
    "Hang",
    "LatencyMultiplier",
    "Outage",
    "RateLimitCut",
    "StateFault",
    "StreamStall",
    "StreamTruncate",
]

Percent = Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]
TokenCount = Annotated[int, Field(ge=0, le=10_000_000)]
# Statuses a provider or a gateway answers under trouble (see notes/faults.md): 408 request
# timeout, 429 rate limited, 500 internal, 502 bad gateway, 503 overloaded / unavailable,
# 504 gateway timeout, 529 Anthropic's overloaded_error.
ErrorCode = Literal[408, 429, 500, 502, 503, 504, 529]
ERROR_STATUSES: tuple[int, ...] = (408, 429, 500, 502, 503, 504, 529)


class _Window(StrictModel):
    """A window ``[start_s, end_s)`` on one stage: ``start_s`` inclusive, ``end_s`` exclusive."""

    stage: StageName
    start_s: NonNegative
    end_s: NonNegative

    @field_validator("end_s")
    @classmethod
    def _after_start(cls, end_s: float, info: ValidationInfo) -> float:
        start = info.data.get("start_s")
        if start is not None and end_s <= start:
            raise ValueError(f"end_s must be greater than start_s ({start:g})")
        return end_s

    def covers(self, t: float) -> bool:
        """Whether time ``t`` lies in the window: ``start_s ≤ t < end_s``."""
        return self.start_s <= t < self.end_s


class _Targeted(_Window):
    """A per-call fault: ``percent`` of the calls reaching the stage in the window are hit."""

    percent: Percent = 100.0


class AddedLatency(_Targeted):
    """A hit call waits a draw from ``latency`` before it reaches the stage."""

    kind: Literal["added_latency"]
    latency: Distribution


class LatencyMultiplier(_Targeted):
    """A hit call's service time (and for a stream each token gap) is ``factor`` × normal.

    ``factor`` is at least 1: a proxy can hold an answer back, but not make a server faster.
    """

    kind: Literal["latency_multiplier"]
    factor: Annotated[float, Field(ge=1, le=10_000, allow_inf_nan=False)]


class ErrorStatus(_Targeted):
    """A hit call is answered with HTTP ``status`` (and ``retry-after`` if given).

    By default the answer comes at once, without service; with ``after_service`` the stage
    first does its normal work for the call, then answers with the status anyway.
    """

    kind: Literal["error"]
    status: ErrorCode
    retry_after_s: NonNegative | None = None
    after_service: bool = False


class Outage(_Targeted):
    """A hit call's connection is refused at once."""

    kind: Literal["outage"]


class Hang(_Targeted):
    """A hit call is accepted and never answered; the caller's timeout ends it."""

    kind: Literal["hang"]


class StreamStall(_Targeted):
    """A hit stream goes silent for ``stall_s`` after its first ``after_tokens`` tokens."""

    kind: Literal["stream_stall"]
    after_tokens: TokenCount
    stall_s: Positive


class StreamTruncate(_Targeted):
    """A hit stream breaks off after its first ``after_tokens`` tokens."""

    kind: Literal["stream_truncate"]
    after_tokens: TokenCount


class RateLimitCut(_Window):
    """The stage's rate-limit buckets (capacity and refill) are multiplied by ``factor``."""

    kind: Literal["rate_limit_cut"]
    factor: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]


class CapacityLoss(_Window):
    """Some of the stage's replicas are down: ``replicas_down`` of them, or ``fraction`` of
    them rounded up (so any fraction above zero takes at least one down)."""

    kind: Literal["capacity_loss"]
    replicas_down: Annotated[int, Field(ge=1, le=100_000)] | None = None
    fraction: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] | None = None

    @model_validator(mode="after")
    def _one_size(self) -> CapacityLoss:
        if (self.replicas_down is None) == (self.fraction is None):
            raise ValueError(
                "give exactly one of replicas_down or fraction (allowed: replicas_down, fraction)"
            )
        return self

    def down_of(self, replicas: int) -> int:
        """How many of ``replicas`` units this fault takes down (at most all of them)."""
        if self.replicas_down is not None:
            return min(self.replicas_down, replicas)
        assert self.fraction is not None
        # round up, with a tolerance so 0.3 × 10 (= 3.0000000000000004) is 3, not 4
        return min(math.ceil(self.fraction * replicas - 1e-9), replicas)


CallFault = (
    AddedLatency | LatencyMultiplier | ErrorStatus | Outage | Hang | StreamStall | StreamTruncate
)
StateFault = RateLimitCut | CapacityLoss

Fault = Annotated[
    AddedLatency
    | LatencyMultiplier
    | ErrorStatus
    | Outage
    | Hang
    | RateLimitCut
    | CapacityLoss
    | StreamStall
    | StreamTruncate,
    Field(discriminator="kind"),
]
"""One fault of any kind, chosen by its ``kind`` field."""

Faults = tuple[Fault, ...]
"""A fault plan as written in a scenario, in plan order."""
