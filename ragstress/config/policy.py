"""The caller's policy for one stage: timeout, retries, circuit breaker, fallback.

A stage's ``client:`` block describes how the *caller* of that stage behaves, not the stage::

    client:
      timeout_s: 30                 # per attempt; the server keeps working on an abandoned call
      retry: openai-python          # a preset name ...
      breaker: {fail_max: 5, reset_timeout_s: 60}
      fallback: {kind: stage, stage: generate_small}

    client:
      retry: {preset: openai-python, max_attempts: 5}    # ... or a preset with overrides ...

    client:
      retry:                                              # ... or a policy written in full
        max_attempts: 4
        retry_on: [timeout, error_429, error_5xx]
        backoff: {kind: exponential, initial_s: 1, multiplier: 2, max_s: 30, jitter: full}
        honour_retry_after: true
        max_retry_after_s: 60

Why presets live on ``retry`` and not on the whole client: what a real client library fixes
is its *retry* behaviour; the timeout is almost always set by the caller (openai-python's
default of 600 s is no timeout at all for a RAG request), and none of the libraries mirrored
here ships a circuit breaker or a fallback. So ``retry`` takes either a preset name, a mapping
with ``preset:`` plus the keys to change, or a full mapping. The preset is expanded by a
before-validator into an ordinary mapping and then validated like one, so a preset and the
same policy written out are the same object, every override is checked by the same rules,
and an error points at the key that is wrong (``client.retry.backoff.max_s: ...``), or, for a
misspelt preset name, at ``client.retry`` with the allowed names and the closest one.
Overrides replace the preset's keys, whole; the one exception is a ``backoff`` mapping
without ``kind``, which is merged into the preset's backoff, so
``{preset: openai-python, backoff: {max_s: 30}}`` changes only the cap. The preset name is
kept in ``RetryPolicy.preset`` (``None`` for a policy written in full) for reports; dumping
a policy and loading it again gives the same policy.

Outcomes (``retry_on``, ``breaker.counts``) are named after what the caller sees:

- ``timeout`` — the caller's own ``timeout_s`` fired; the server still finishes the work;
- ``error_connect`` — no connection (refused, reset, DNS), so nothing reached the server;
- ``error_408`` — request timeout reported by the server or a proxy;
- ``error_409`` — conflict / lock timeout (openai-python retries it);
- ``error_429`` — rate limited, usually with ``retry-after``;
- ``error_5xx`` — any server error, 500, 502, 503, Anthropic's 529 ``overloaded_error``.

Outcomes not listed (other 4xx, an ``error`` event inside a stream, which openai-python
raises outside its retry loop) are never retried.

Presets (what the libraries do by default):

- ``openai-python`` — 3 attempts (2 retries) on all six outcomes; waits ``retry-after`` when
  it is in (0, 120] s and does not retry when it is above 120 s; otherwise waits
  ``min(0.5·2^n, 8)·(1 − 0.25·U)`` s before retry n = 0, 1, … (U uniform on [0, 1)).
  Its default timeout of 600 s is not part of the preset: set ``timeout_s`` yourself.
- ``tenacity-default`` — ``@retry`` with no arguments retries every exception forever with
  no wait. Forever cannot be simulated, so the preset makes 100 attempts; retry-after is
  ignored. This is the client that turns a short overload into a retry storm.
- ``no-retry`` — one attempt.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated, Any, Literal, get_args

from pydantic import Field, field_validator, model_validator

from ragstress.config.base import StrictModel
from ragstress.config.distributions import NonNegative, Positive

__all__ = [
    "OUTCOMES",
    "RETRY_PRESETS",
    "Backoff",
    "BreakerPolicy",
    "ClientPolicy",
    "ConstantBackoff",
    "EqualJitter",
    "ExponentialBackoff",
    "FailFallback",
    "Fallback",
    "FullJitter",
    "Jitter",
    "NoBackoff",
    "NoJitter",
    "Outcome",
    "ProportionalJitter",
    "RetryPolicy",
    "RetryPresetName",
    "SkipFallback",
    "StageFallback",
    "retry_preset",
]

Outcome = Literal["timeout", "error_connect", "error_408", "error_409", "error_429", "error_5xx"]
OUTCOMES: tuple[Outcome, ...] = get_args(Outcome)
RetryPresetName = Literal["openai-python", "tenacity-default", "no-retry"]

MAX_ATTEMPTS = 10_000
# The same rule as ``ragstress.config.profile.StageName``; the profile imports this module, so
# the pattern cannot be imported from there.
_StageRef = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,39}$")]


def _unique(values: tuple[str, ...], what: str) -> tuple[str, ...]:
    seen: set[str] = set()
    for v in values:
        if v in seen:
            raise ValueError(f"{v!r} is listed twice in {what}")
        seen.add(v)
    return values


def _name_is_kind(value: Any) -> Any:
    """A bare name is short for a variant without parameters: ``jitter: full``,
    ``backoff: none``, ``fallback: skip`` mean ``{kind: full}`` and so on."""
    return {"kind": value} if isinstance(value, str) else value


# --- jitter --------------------------------------------------------------------------------


class NoJitter(StrictModel):
    """The wait is exactly the exponential value."""

    kind: Literal["none"]


class FullJitter(StrictModel):
    """Uniform on [0, wait): AWS's "full jitter", tenacity's ``wait_random_exponential``."""

    kind: Literal["full"]


class EqualJitter(StrictModel):
    """Uniform on [wait/2, wait): AWS's "equal jitter"."""

    kind: Literal["equal"]


class ProportionalJitter(StrictModel):
    """``wait · (1 − fraction·U)``: openai-python uses fraction 0.25."""

    kind: Literal["proportional"]
    fraction: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]


Jitter = Annotated[
    NoJitter | FullJitter | EqualJitter | ProportionalJitter, Field(discriminator="kind")
]

# --- backoff -------------------------------------------------------------------------------


class ExponentialBackoff(StrictModel):
    """Before retry n (0 for the first retry): ``min(initial_s · multiplier^n, max_s)``, then
    jittered. ``jitter`` may be written as a bare name (``jitter: full``) when it has no
    parameters."""

    kind: Literal["exponential"]
    initial_s: Positive
    multiplier: Annotated[float, Field(ge=1, le=100, allow_inf_nan=False)] = 2.0
    max_s: Positive
    jitter: Jitter = NoJitter(kind="none")

    @field_validator("jitter", mode="before")
    @classmethod
    def _jitter_shorthand(cls, value: Any) -> Any:
        return _name_is_kind(value)

    @model_validator(mode="after")
    def _cap_above_start(self) -> ExponentialBackoff:
        if self.max_s < self.initial_s:
            raise ValueError(
                f"max_s ({self.max_s:g}) must not be below initial_s ({self.initial_s:g})"
            )
        return self


class ConstantBackoff(StrictModel):
    """The same wait before every retry."""

    kind: Literal["constant"]
    wait_s: NonNegative


class NoBackoff(StrictModel):
    """Retry at once (tenacity's default)."""

    kind: Literal["none"]


Backoff = Annotated[ExponentialBackoff | ConstantBackoff | NoBackoff, Field(discriminator="kind")]

# --- retry ---------------------------------------------------------------------------------

RETRY_PRESETS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        "openai-python": MappingProxyType(
            {
                "max_attempts": 3,
                "retry_on": OUTCOMES,
                "backoff": MappingProxyType(
                    {
                        "kind": "exponential",
                        "initial_s": 0.5,
                        "multiplier": 2.0,
                        "max_s": 8.0,
                        "jitter": MappingProxyType({"kind": "proportional", "fraction": 0.25}),
                    }
                ),
                "honour_retry_after": True,
                "max_retry_after_s": 120.0,
            }
        ),
        "tenacity-default": MappingProxyType(
            {
                "max_attempts": 100,
                "retry_on": OUTCOMES,
                "backoff": MappingProxyType({"kind": "none"}),
                "honour_retry_after": False,
                "max_retry_after_s": None,
            }
        ),
        "no-retry": MappingProxyType(
            {
                "max_attempts": 1,
                "retry_on": (),
                "backoff": MappingProxyType({"kind": "none"}),
                "honour_retry_after": False,
                "max_retry_after_s": None,
            }
        ),
    }
)
"""Each preset as the mapping it expands to (read-only)."""

_PRESET_NAMES: tuple[str, ...] = get_args(RetryPresetName)
assert set(_PRESET_NAMES) == set(RETRY_PRESETS)


def _plain(value: Any) -> Any:
    """A deep, mutable copy of a preset's read-only mapping."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _preset_mapping(name: Any) -> dict[str, Any]:
    if not isinstance(name, str) or name not in RETRY_PRESETS:
        allowed = ", ".join(_PRESET_NAMES)
        close = difflib.get_close_matches(str(name), _PRESET_NAMES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown retry preset {name!r} (allowed: {allowed}){hint}")
    out: dict[str, Any] = _plain(RETRY_PRESETS[name])
    return out


class RetryPolicy(StrictModel):
    """How often and how soon the caller tries again.

    ``max_attempts`` counts every attempt, the first included (1 = never retry). An attempt
    whose outcome is in ``retry_on`` is retried while attempts remain. With
    ``honour_retry_after`` a positive ``retry-after`` from the server replaces the backoff:
    the caller waits exactly that long, or, when it exceeds ``max_retry_after_s``, gives up
    (openai-python's rule). Write a preset name instead of the mapping, or ``preset:`` plus
    the keys to change; see the module docstring. A policy written in full must give
    ``max_attempts`` and ``backoff``; ``retry_on`` defaults to all six outcomes,
    ``honour_retry_after`` to true and ``max_retry_after_s`` to no cap. ``backoff`` may be
    written as a bare name when it has no parameters (``backoff: none``).
    """

    preset: RetryPresetName | None = None
    max_attempts: Annotated[int, Field(ge=1, le=MAX_ATTEMPTS)]
    retry_on: tuple[Outcome, ...] = OUTCOMES
    backoff: Backoff
    honour_retry_after: bool = True
    max_retry_after_s: Positive | None = None

    @model_validator(mode="before")
    @classmethod
    def _expand_preset(cls, data: Any) -> Any:
        if isinstance(data, RetryPolicy):
            return data
        if isinstance(data, str):
            return {"preset": data, **_preset_mapping(data)}
        if not isinstance(data, Mapping):
            allowed = ", ".join(_PRESET_NAMES)
            raise ValueError(
                f"expected a preset name ({allowed}) or a mapping of retry settings "
                f"(got {type(data).__name__})"
            )
        if "preset" not in data or data["preset"] is None:
            return data
        merged = _preset_mapping(data["preset"])
        for key, value in data.items():
            base = merged.get(key)
            if (
                key == "backoff"
                and isinstance(value, Mapping)
                and "kind" not in value
                and isinstance(base, dict)
            ):
                merged[key] = {**base, **value}
            else:
                merged[key] = value
        return merged

    @field_validator("backoff", mode="before")
    @classmethod
    def _backoff_shorthand(cls, value: Any) -> Any:
        return _name_is_kind(value)

    @field_validator("retry_on")
    @classmethod
    def _retry_on_unique(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        return _unique(values, "retry_on")


def retry_preset(name: RetryPresetName) -> RetryPolicy:
    """The named preset as a validated policy."""
    return RetryPolicy.model_validate(name)


# --- circuit breaker -----------------------------------------------------------------------


class BreakerPolicy(StrictModel):
    """A circuit breaker with pybreaker's semantics.

    Closed: ``fail_max`` *consecutive* failures open it (any success resets the count). Open:
    every call is refused at once, without reaching the stage, for ``reset_timeout_s``. Then
    half-open: ``half_open_trials`` calls are let through (pybreaker: one); a success closes
    the breaker, a failure opens it again for a new ``reset_timeout_s``. An outcome listed in
    ``counts`` is a failure; any other outcome, as with pybreaker's excluded exceptions, counts
    as a success.
    """

    fail_max: Annotated[int, Field(ge=1, le=1_000_000)] = 5
    reset_timeout_s: Positive = 60.0
    half_open_trials: Annotated[int, Field(ge=1, le=1_000_000)] = 1
    counts: tuple[Outcome, ...] = OUTCOMES

    @field_validator("counts")
    @classmethod
    def _counts_unique(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        if not values:
            raise ValueError(
                f"counts must name at least one outcome (allowed: {', '.join(OUTCOMES)})"
            )
        return _unique(values, "counts")


# --- fallback ------------------------------------------------------------------------------


class FailFallback(StrictModel):
    """No fallback: the request fails with the last attempt's outcome (the default)."""

    kind: Literal["fail"]


class SkipFallback(StrictModel):
    """The stage is optional (a reranker, a query rewrite): go on without it; the request's
    outcome becomes ``ok_degraded``."""

    kind: Literal["skip"]


class StageFallback(StrictModel):
    """Call another stage instead: a smaller model, or a cache stage that holds canned
    answers. The profile checks that the stage exists and is not this one."""

    kind: Literal["stage"]
    stage: _StageRef


Fallback = Annotated[FailFallback | SkipFallback | StageFallback, Field(discriminator="kind")]

# --- the whole policy ----------------------------------------------------------------------


class ClientPolicy(StrictModel):
    """The caller's policy towards one stage.

    ``timeout_s`` applies to each attempt, from sending it to the last byte of the answer
    (for a stream: the last token), exclusive — an answer at the very instant is too late
    (``None``: wait as long as it takes); when it fires the caller sees ``timeout`` while the
    server goes on with the abandoned work. ``retry``
    defaults to ``no-retry``; ``breaker`` to none. The ``fallback`` runs when the last
    attempt has failed or the breaker refused the call. ``fallback`` may be written as a bare
    name when it has no parameters (``fallback: skip``).
    """

    timeout_s: Positive | None = None
    retry: RetryPolicy = Field(default_factory=lambda: retry_preset("no-retry"))
    breaker: BreakerPolicy | None = None
    fallback: Fallback = FailFallback(kind="fail")

    @field_validator("fallback", mode="before")
    @classmethod
    def _fallback_shorthand(cls, value: Any) -> Any:
        return _name_is_kind(value)
