"""The chaos proxy's fault format: the scenario's faults, plus matching and proxy-only kinds.

A fault the proxy accepts is a scenario fault (:mod:`ragstress.config.faults`, written exactly
as in a scenario's ``faults:`` list) with optional extra keys, or one of the proxy's own kinds.
Every proxy class *subclasses* the scenario class of its kind, so :class:`FaultPlan` — the one
definition of what a fault does — evaluates proxy faults unchanged; the extra keys only say
where a fault applies and how the proxy renders what the plan decided.

Times. ``start_s`` / ``end_s`` are seconds relative to a run's start epoch when a plan is
loaded with ``run_start_epoch`` (what ``ChaosClient.load_plan`` sends), else absolute Unix
epochs. Either way every installed fault carries its absolute end, so faults expire by
themselves when nobody removes them.

Extra keys on every per-call kind:

- ``id``: a name to remove the fault by (default: assigned, ``f1``, ``f2``, ...);
- ``match``: ``{method, path_prefix, path_regex, header: "name=value"}``, every key given must
  hold (a scenario fault, which has no ``match``, hits every call of its stage).

Per kind:

- ``added_latency``: ``on: request`` (default; the model's meaning: the request reaches the
  upstream ``d`` later) or ``first_byte`` (the upstream works at once, the caller sees the
  whole answer ``d`` later). ``latency`` takes the config distributions plus ``constant``
  (``{kind: constant, value}``), ``uniform`` (``{low, high}``) and ``normal`` (``{mean, sd}``,
  negative draws clipped to 0);
- ``error``: ``style: openai | anthropic`` (the body's shape), ``x_should_retry`` (sends the
  header when given), ``message`` (replaces the default text);
- ``outage``: ``respond: reset`` (default: the connection is reset without an answer) or
  ``503`` (a 503 in ``style``); ``delay_s`` before it (Toxiproxy's ``reset_peer`` timeout);
- ``hang``: ``close_after_s``: close the connection this long after the call arrived
  (Toxiproxy's ``timeout``); a hung call always ends at the fault's end.

Proxy-only kinds (no model counterpart, so a scenario cannot hold them):

- ``stream_error`` (per call): after ``after_tokens`` SSE ``data:`` events, send a
  provider's ``error`` event (``style``, ``status`` picks the error type) and end the stream;
- ``stream_rate`` (per call): at most ``tokens_per_s`` ``data:`` events per second;
- ``bandwidth`` (per call): the response body at most ``bytes_per_s``;
- ``rate_limit`` (state, matchable): token buckets of ``rpm`` / ``tpm`` (and ``*_burst``),
  counted as :mod:`ragstress.model.ratelimit` counts, answered 429 with ``retry-after``.

State faults (``rate_limit_cut``, ``capacity_loss``) take no ``match``: they change the stage.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, ValidationInfo, field_validator, model_validator

from ragstress.config.base import StrictModel
from ragstress.config.distributions import Distribution, NonNegative, Positive
from ragstress.config.faults import (
    AddedLatency,
    CapacityLoss,
    ErrorCode,
    ErrorStatus,
    Hang,
    LatencyMultiplier,
    Outage,
    RateLimitCut,
    StreamStall,
    StreamTruncate,
    TokenCount,
)
from ragstress.config.profile import StageName

__all__ = [
    "PER_CALL_KINDS",
    "PLAN_KINDS",
    "PROXY_ONLY_KINDS",
    "Bandwidth",
    "ErrorStyle",
    "Match",
    "Normal",
    "ProxyAddedLatency",
    "ProxyCapacityLoss",
    "ProxyErrorStatus",
    "ProxyFault",
    "ProxyHang",
    "ProxyLatencyMultiplier",
    "ProxyOutage",
    "ProxyRateLimitCut",
    "ProxyStreamStall",
    "ProxyStreamTruncate",
    "RateLimitFault",
    "StreamError",
    "StreamRate",
    "Uniform",
]

ErrorStyle = Literal["openai", "anthropic"]
FaultId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:@/-]{1,120}$")]
Percent = Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]


class Match(StrictModel):
    """Which calls a fault applies to: every key given must hold (none given: every call).

    ``method``: the HTTP method (any case); ``path_prefix``: the request path starts with it;
    ``path_regex``: ``re.search`` on the path; ``header``: ``"name=value"``, the named header
    (any case) has exactly this value."""

    method: Annotated[str, Field(min_length=1, max_length=20)] | None = None
    path_prefix: Annotated[str, Field(min_length=1)] | None = None
    path_regex: Annotated[str, Field(min_length=1)] | None = None
    header: Annotated[str, Field(min_length=3)] | None = None

    @field_validator("method")
    @classmethod
    def _upper(cls, method: str | None) -> str | None:
        return None if method is None else method.upper()

    @field_validator("path_regex")
    @classmethod
    def _compiles(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from None
        return pattern

    @field_validator("header")
    @classmethod
    def _name_value(cls, header: str | None) -> str | None:
        if header is not None:
            name, sep, _ = header.partition("=")
            if not sep or not name.strip():
                raise ValueError("write the header condition as name=value")
        return header


class Uniform(StrictModel):
    """Uniform on ``[low, high]`` (seconds)."""

    kind: Literal["uniform"]
    low: NonNegative
    high: NonNegative

    @model_validator(mode="after")
    def _ordered(self) -> Uniform:
        if self.high < self.low:
            raise ValueError(f"high must be at least low ({self.low:g})")
        return self

    def expected(self) -> float:
        return (self.low + self.high) / 2

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.uniform(self.low, self.high, n)


class Normal(StrictModel):
    """Normal with ``mean`` and ``sd`` (seconds); a negative draw is 0 (no time travel)."""

    kind: Literal["normal"]
    mean: NonNegative
    sd: NonNegative

    def expected(self) -> float:
        return self.mean  # before clipping; a fair description while sd ≪ mean

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return np.maximum(rng.normal(self.mean, self.sd, n), 0.0)


LatencyDistribution = Annotated[
    Distribution | Uniform | Normal, Field(discriminator="kind")
]  # the config's, plus uniform and normal


class _Extras(StrictModel):
    """Keys every proxy fault may carry besides its kind's."""

    id: FaultId | None = None


class _Matched(_Extras):
    match: Match | None = None


# --- the scenario kinds, extended ----------------------------------------------------------


class ProxyAddedLatency(AddedLatency, _Matched):
    __doc__ = AddedLatency.__doc__

    latency: LatencyDistribution  # type: ignore[assignment]  # a superset of the config's
    on: Literal["request", "first_byte"] = "request"

    @field_validator("latency", mode="before")
    @classmethod
    def _constant(cls, value: Any) -> Any:
        """``{kind: constant, value: x}`` is the config's ``deterministic``."""
        if isinstance(value, dict) and value.get("kind") == "constant":
            return {**value, "kind": "deterministic"}
        return value


class ProxyLatencyMultiplier(LatencyMultiplier, _Matched):
    __doc__ = LatencyMultiplier.__doc__


class ProxyErrorStatus(ErrorStatus, _Matched):
    __doc__ = ErrorStatus.__doc__

    style: ErrorStyle = "openai"
    x_should_retry: bool | None = None
    message: Annotated[str, Field(min_length=1, max_length=2000)] | None = None


class ProxyOutage(Outage, _Matched):
    __doc__ = Outage.__doc__

    respond: Literal["reset", "503"] = "reset"
    style: ErrorStyle = "openai"
    delay_s: NonNegative = 0.0


class ProxyHang(Hang, _Matched):
    __doc__ = Hang.__doc__

    close_after_s: Positive | None = None


class ProxyStreamStall(StreamStall, _Matched):
    __doc__ = StreamStall.__doc__


class ProxyStreamTruncate(StreamTruncate, _Matched):
    __doc__ = StreamTruncate.__doc__


class ProxyRateLimitCut(RateLimitCut, _Extras):
    __doc__ = RateLimitCut.__doc__


class ProxyCapacityLoss(CapacityLoss, _Extras):
    __doc__ = CapacityLoss.__doc__


# --- the proxy's own kinds -----------------------------------------------------------------


class _OwnWindow(_Matched):
    """A window on one stage, as the scenario's faults have (``start_s`` inclusive)."""

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


class _OwnTargeted(_OwnWindow):
    percent: Percent = 100.0


class StreamError(_OwnTargeted):
    """After ``after_tokens`` ``data:`` events, a provider's error event, then the end."""

    kind: Literal["stream_error"]
    after_tokens: TokenCount
    status: ErrorCode = 500
    style: ErrorStyle = "openai"


class StreamRate(_OwnTargeted):
    """At most ``tokens_per_s`` ``data:`` events a second (the rest waits its turn)."""

    kind: Literal["stream_rate"]
    tokens_per_s: Annotated[float, Field(gt=0, le=1e6, allow_inf_nan=False)]


class Bandwidth(_OwnTargeted):
    """The response body at most ``bytes_per_s`` bytes a second."""

    kind: Literal["bandwidth"]
    bytes_per_s: Annotated[float, Field(gt=0, le=1e12, allow_inf_nan=False)]


class RateLimitFault(_OwnWindow):
    """Token buckets in front of the stage for the window (as a provider's, see
    :mod:`ragstress.model.ratelimit`): ``rpm`` requests and ``tpm`` tokens a minute, a
    refused call answered 429 with ``retry-after``. Starts full."""

    kind: Literal["rate_limit"]
    rpm: Annotated[float, Field(gt=0, le=1e9, allow_inf_nan=False)] | None = None
    tpm: Annotated[float, Field(gt=0, le=1e12, allow_inf_nan=False)] | None = None
    rpm_burst: Positive | None = None
    tpm_burst: Positive | None = None
    style: ErrorStyle = "openai"

    @model_validator(mode="after")
    def _some_limit(self) -> RateLimitFault:
        if self.rpm is None and self.tpm is None:
            raise ValueError("give rpm, tpm or both (allowed keys: rpm, tpm, rpm_burst, tpm_burst)")
        if self.rpm is None and self.rpm_burst is not None:
            raise ValueError("rpm_burst needs rpm")
        if self.tpm is None and self.tpm_burst is not None:
            raise ValueError("tpm_burst needs tpm")
        return self


ProxyFault = Annotated[
    ProxyAddedLatency
    | ProxyLatencyMultiplier
    | ProxyErrorStatus
    | ProxyOutage
    | ProxyHang
    | ProxyStreamStall
    | ProxyStreamTruncate
    | ProxyRateLimitCut
    | ProxyCapacityLoss
    | StreamError
    | StreamRate
    | Bandwidth
    | RateLimitFault,
    Field(discriminator="kind"),
]
"""One fault in the proxy's format, chosen by its ``kind``."""

PLAN_KINDS: frozenset[str] = frozenset(
    {
        "added_latency",
        "latency_multiplier",
        "error",
        "outage",
        "hang",
        "stream_stall",
        "stream_truncate",
        "rate_limit_cut",
        "capacity_loss",
    }
)
"""Kinds :class:`ragstress.faults.plan.FaultPlan` evaluates (the scenario's)."""
PROXY_ONLY_KINDS: frozenset[str] = frozenset(
    {"stream_error", "stream_rate", "bandwidth", "rate_limit"}
)
PER_CALL_KINDS: frozenset[str] = frozenset(
    {
        "added_latency",
        "latency_multiplier",
        "error",
        "outage",
        "hang",
        "stream_stall",
        "stream_truncate",
        "stream_error",
        "stream_rate",
        "bandwidth",
    }
)
"""Kinds that hit a share ``percent`` of calls, each rolled on its own."""
