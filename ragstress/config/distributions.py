"""Probability distributions used for service times and token counts.

Every variant is chosen by its ``kind`` field. Parameters are given as the figures people
measure (mean, coefficient of variation, median, a list of observed values) rather than as the
textbook shape parameters, and each model converts them once.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from ragstress.config.base import StrictModel

__all__ = [
    "Deterministic",
    "Distribution",
    "Empirical",
    "Exponential",
    "Gamma",
    "LogNormal",
]

_Z99 = 2.3263478740408408  # standard normal 99th percentile
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class Exponential(StrictModel):
    kind: Literal["exponential"]
    mean: Positive

    def expected(self) -> float:
        return self.mean

    def scv(self) -> float:
        """Squared coefficient of variation."""
        return 1.0

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.exponential(self.mean, n)


class Deterministic(StrictModel):
    kind: Literal["deterministic"]
    value: NonNegative

    def expected(self) -> float:
        return self.value

    def scv(self) -> float:
        return 0.0

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        del rng  # a constant consumes no randomness, so other streams stay aligned
        return np.full(n, self.value)


class LogNormal(StrictModel):
    """Log-normal given by its ``mean`` and either ``cv`` or ``p99`` (heavy right tail)."""

    kind: Literal["lognormal"]
    mean: Positive
    cv: Positive | None = None
    p99: Positive | None = None

    @model_validator(mode="after")
    def _one_spread(self) -> LogNormal:
        if (self.cv is None) == (self.p99 is None):
            raise ValueError("give exactly one of cv or p99 (allowed: cv, p99)")
        if self.p99 is not None:
            if self.p99 <= self.mean:
                raise ValueError("p99 must be greater than mean")
            # the widest log-normal with this mean (σ = z₀.₉₉) has p99 = mean·exp(z²/2)
            widest = self.mean * math.exp(_Z99 * _Z99 / 2)
            if self.p99 > widest:
                raise ValueError(
                    f"no log-normal with mean {self.mean:g} has p99 {self.p99:g} "
                    f"(allowed: p99 up to {widest:.4g}, or give cv instead)"
                )
        return self

    def _sigma(self) -> float:
        if self.cv is not None:
            return math.sqrt(math.log1p(self.cv**2))
        assert self.p99 is not None
        # mean = exp(mu + s²/2), p99 = exp(mu + 2.3263 s)  →  s² / 2 − 2.3263 s + ln(p99/mean) = 0
        z = _Z99
        disc = max(z * z - 2 * math.log(self.p99 / self.mean), 0.0)  # ≥ 0: validated
        return z - math.sqrt(disc)

    def expected(self) -> float:
        return self.mean

    def scv(self) -> float:
        return math.expm1(self._sigma() ** 2)

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        sigma = self._sigma()
        mu = math.log(self.mean) - sigma * sigma / 2
        return rng.lognormal(mu, sigma, n)


class Gamma(StrictModel):
    kind: Literal["gamma"]
    mean: Positive
    cv: Positive

    def expected(self) -> float:
        return self.mean

    def scv(self) -> float:
        return self.cv**2

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        shape = 1.0 / self.cv**2
        return rng.gamma(shape, self.mean / shape, n)


class Empirical(StrictModel):
    """Resampling from observed values, e.g. measured service times."""

    kind: Literal["empirical"]
    values: tuple[NonNegative, ...]
    weights: tuple[NonNegative, ...] | None = None

    @field_validator("values")
    @classmethod
    def _not_empty(cls, values: tuple[float, ...]) -> tuple[float, ...]:
        if not values:
            raise ValueError("values must not be empty")
        return values

    @model_validator(mode="after")
    def _weights_match(self) -> Empirical:
        if self.weights is not None:
            if len(self.weights) != len(self.values):
                raise ValueError("weights must have as many entries as values")
            if sum(self.weights) <= 0:
                raise ValueError("weights must not all be zero")
        return self

    def _p(self) -> np.ndarray | None:
        if self.weights is None:
            return None
        w = np.asarray(self.weights, dtype=float)
        return np.asarray(w / w.sum(), dtype=float)

    def expected(self) -> float:
        p = self._p()
        v = np.asarray(self.values, dtype=float)
        return float(v.mean() if p is None else (v * p).sum())

    def scv(self) -> float:
        p = self._p()
        v = np.asarray(self.values, dtype=float)
        m = self.expected()
        var = float(v.var() if p is None else ((v - m) ** 2 * p).sum())
        return var / (m * m) if m > 0 else 0.0

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.choice(np.asarray(self.values, dtype=float), size=n, p=self._p())


Distribution = Annotated[
    Exponential | Deterministic | LogNormal | Gamma | Empirical,
    Field(discriminator="kind"),
]
