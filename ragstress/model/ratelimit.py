"""A hosted provider's rate limits: token buckets for requests and tokens per minute.

Pure and fast: time is passed in (seconds, never decreasing), state is plain floats in
``__slots__``, nothing is random. The model and the chaos proxy both use these classes, so a
simulated 429 and a proxied one come from the same arithmetic.

**Bucket.** A bucket holds up to ``capacity`` tokens and refills continuously at
``refill_per_s``; it starts full. A request for ``amount`` is granted when the bucket holds at
least ``amount`` (then ``amount`` is taken); otherwise nothing is taken and the answer is the
exact wait until it would hold ``amount`` at the current refill rate — ``inf`` when it never
can (``amount`` above ``capacity``, or no refill).

**Provider (OpenAI's counting).** Two buckets: requests per minute (RPM, one token per
request) and tokens per minute (TPM). By default each bucket's capacity is one minute's worth
(``rpm`` and ``tpm``) and it refills at ``limit / 60`` per second; a smaller ``burst`` models a
provider that enforces the limit over shorter periods. A request is admitted only if *both*
buckets have room, and then both are charged; a refused request charges neither. TPM charges
``prompt_tokens + max_tokens`` — the requested output cap, not the tokens actually generated —
at admission, and nothing is refunded when the answer is shorter. Source: OpenAI's rate-limit
guide says the token count for rate limiting is worked out from the request's size and its
``max_tokens`` *before* the request runs ("Your rate limit is calculated as the maximum of
max_tokens and the estimated number of tokens based on the character count of your request";
community answers read it as the estimated prompt plus ``max_tokens``). Neither DESIGN.md nor
notes/faults.md pins this down; charging prompt + ``max_tokens`` is an assumption — the worst
case, and what the issue asks for. (Anthropic counts input and output tokens per minute in
separate buckets instead.)

**Retry-after.** A refused request is answered ``429`` with ``retry-after`` = the larger of the
two buckets' waits (the request needs both), rounded *up* to whole seconds: HTTP's
``Retry-After`` carries whole seconds (RFC 9110 §10.2.3), and rounding up means a client that
waits exactly that long finds room, if nobody else took it first. A wait of ``inf`` (the
request is larger than a bucket can ever hold, OpenAI's "Request too large") is returned as
``inf``: the proxy answers 429 without ``retry-after`` and a caller must not retry it.
"""

from __future__ import annotations

import math

__all__ = ["ProviderLimits", "TokenBucket", "retry_after_header_s"]

# Grant when the level falls short of the amount by less than this (relative): refill
# arithmetic in binary floating point (0.1 s steps, rates like 1000/60) must not turn an exact
# "enough" into "short by 1e-13".
_EPS = 1e-9


def retry_after_header_s(wait_s: float) -> float:
    """A wait in seconds as a provider reports it: whole seconds, rounded up (0 stays 0)."""
    if wait_s <= 0.0:
        return 0.0
    if math.isinf(wait_s):
        return wait_s
    return float(max(math.ceil(wait_s - _EPS), 1))


class TokenBucket:
    """A token bucket: ``capacity`` tokens, refilled at ``refill_per_s``; starts full."""

    __slots__ = (
        "base_capacity",
        "base_refill_per_s",
        "capacity",
        "refill_per_s",
        "tokens",
        "updated",
    )

    def __init__(
        self,
        capacity: float,
        refill_per_s: float,
        *,
        now: float = 0.0,
        tokens: float | None = None,
    ) -> None:
        if not capacity > 0 or math.isinf(capacity):
            raise ValueError(f"capacity must be positive and finite, got {capacity!r}")
        if not refill_per_s >= 0 or math.isinf(refill_per_s):
            raise ValueError(f"refill_per_s must be ≥ 0 and finite, got {refill_per_s!r}")
        self.base_capacity = float(capacity)
        self.base_refill_per_s = float(refill_per_s)
        self.capacity = self.base_capacity
        self.refill_per_s = self.base_refill_per_s
        self.tokens = self.capacity if tokens is None else min(float(tokens), self.capacity)
        self.updated = float(now)

    def _refill(self, now: float) -> None:
        dt = now - self.updated
        if dt > 0.0:
            self.tokens = min(self.capacity, self.tokens + dt * self.refill_per_s)
            self.updated = now
        elif dt < 0.0:
            raise ValueError(f"time went backwards: {now!r} after {self.updated!r}")

    def level(self, now: float) -> float:
        """Tokens in the bucket at ``now``."""
        self._refill(now)
        return self.tokens

    def wait_s(self, now: float, amount: float) -> float:
        """Seconds from ``now`` until the bucket holds ``amount`` (0.0 if it does now; ``inf``
        if it never will at the current capacity and refill). Takes nothing."""
        if amount < 0:
            raise ValueError(f"amount must be ≥ 0, got {amount!r}")
        self._refill(now)
        short = amount - self.tokens
        if short <= _EPS * max(1.0, amount):
            return 0.0
        if amount > self.capacity * (1.0 + _EPS) or self.refill_per_s <= 0.0:
            return math.inf
        return short / self.refill_per_s

    def try_take(self, now: float, amount: float) -> float:
        """Take ``amount`` at ``now`` and return 0.0, or take nothing and return the exact wait
        in seconds until ``amount`` would be there (``inf``: never)."""
        wait = self.wait_s(now, amount)
        if wait == 0.0:
            self.tokens = max(self.tokens - amount, 0.0)
        return wait

    def scale(self, now: float, factor: float) -> None:
        """Set capacity and refill to ``factor`` × their configured values (absolute, not
        cumulative: ``scale(t, 1.0)`` restores them). Tokens above the new capacity are lost;
        raising the capacity adds no tokens."""
        if not 0.0 < factor <= 1.0:
            raise ValueError(f"factor must be in (0, 1], got {factor!r}")
        self._refill(now)  # tokens earned so far accrue at the old rate
        self.capacity = self.base_capacity * factor
        self.refill_per_s = self.base_refill_per_s * factor
        self.tokens = min(self.tokens, self.capacity)


class ProviderLimits:
    """A provider's RPM and TPM limits, counted the way OpenAI counts them (module docstring).

    ``rpm`` / ``tpm``: the per-minute limits (None: no such limit). ``rpm_burst`` /
    ``tpm_burst``: bucket capacities (default: one minute's worth, i.e. the limit itself).
    """

    __slots__ = ("rpm", "tpm")

    def __init__(
        self,
        rpm: float | None = None,
        tpm: float | None = None,
        *,
        rpm_burst: float | None = None,
        tpm_burst: float | None = None,
        now: float = 0.0,
    ) -> None:
        self.rpm = _per_minute(rpm, rpm_burst, now)
        self.tpm = _per_minute(tpm, tpm_burst, now)

    @staticmethod
    def charge(prompt_tokens: int, max_tokens: int) -> int:
        """Tokens a request takes from the TPM bucket: its prompt plus its output cap."""
        return prompt_tokens + max_tokens

    def wait_s(self, now: float, prompt_tokens: int, max_tokens: int) -> float:
        """Exact seconds until this request would be admitted (0.0: now). Takes nothing."""
        wait = 0.0
        if self.rpm is not None:
            wait = self.rpm.wait_s(now, 1.0)
        if self.tpm is not None:
            wait = max(wait, self.tpm.wait_s(now, prompt_tokens + max_tokens))
        return wait

    def admit(self, now: float, prompt_tokens: int, max_tokens: int) -> float:
        """Admit the request and return 0.0 (both buckets charged), or refuse it and return the
        429's ``retry-after`` in whole seconds, rounded up (``inf``: can never be admitted);
        a refused request charges neither bucket."""
        wait = self.wait_s(now, prompt_tokens, max_tokens)
        if wait > 0.0:
            return retry_after_header_s(wait)
        if self.rpm is not None:
            self.rpm.try_take(now, 1.0)
        if self.tpm is not None:
            self.tpm.try_take(now, prompt_tokens + max_tokens)
        return 0.0

    def scale(self, now: float, factor: float) -> None:
        """A rate-limit cut: both buckets' capacity and refill × ``factor`` (absolute)."""
        if self.rpm is not None:
            self.rpm.scale(now, factor)
        if self.tpm is not None:
            self.tpm.scale(now, factor)


def _per_minute(limit: float | None, burst: float | None, now: float) -> TokenBucket | None:
    if limit is None:
        return None
    return TokenBucket(limit if burst is None else burst, limit / 60.0, now=now)
