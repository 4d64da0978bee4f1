"""Arrival times for open-loop load: renewal processes mapped through a time-varying rate.

Non-homogeneous arrivals use time rescaling: draw a unit-rate renewal process (exponential gaps
for Poisson, gamma gaps for bursty traffic, unit gaps for a constant generator) and map each
point u to t = Λ⁻¹(u), where Λ(t) = ∫₀ᵗ λ(s) ds. For Poisson this is exact (it is the standard
construction of an inhomogeneous Poisson process); for gamma it keeps the burstiness in
"operational time". Λ is integrated by the trapezoid rule on a grid that contains every
breakpoint of the shape, so piecewise-linear shapes are integrated exactly.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

__all__ = ["RateFunction", "cumulative_rate", "rescaled_arrivals", "unit_renewal"]

_STEP_EPS = 1e-9  # a rate step at b is integrated as a ramp over [b − eps·span, b]


class RateFunction(Protocol):
    def rate(self, t: np.ndarray, span: float) -> np.ndarray: ...
    def breakpoints(self, span: float) -> list[float]: ...


def cumulative_rate(shape: RateFunction, span: float) -> tuple[np.ndarray, np.ndarray]:
    """Grid ``t`` on [0, span] and Λ(t) on it."""
    n_uniform = 20_001
    pts = [np.linspace(0.0, span, n_uniform)]
    bps = np.array([b for b in shape.breakpoints(span) if 0.0 < b < span], dtype=float)
    if bps.size:
        pts.append(bps)
        pts.append(np.maximum(bps - _STEP_EPS * span, 0.0))
    t = np.unique(np.concatenate(pts))
    lam = np.maximum(shape.rate(t, span), 0.0)
    cum = np.concatenate(([0.0], np.cumsum(np.diff(t) * (lam[1:] + lam[:-1]) / 2)))
    return t, cum


def unit_renewal(kind: str, total: float, rng: np.random.Generator, cv: float = 1.0) -> np.ndarray:
    """Points of a unit-rate renewal process on [0, total)."""
    if total <= 0:
        return np.empty(0)
    if kind == "constant":
        return np.arange(0.5, total, 1.0)
    chunks: list[np.ndarray] = []
    last = 0.0
    expected = int(total + 10 * np.sqrt(total) + 100)
    while True:
        if kind == "poisson":
            gaps = rng.exponential(1.0, expected)
        elif kind == "gamma":
            shape = 1.0 / (cv * cv)
            gaps = rng.gamma(shape, 1.0 / shape, expected)
        else:
            raise ValueError(f"unknown arrival process {kind!r}")
        pts = last + np.cumsum(gaps)
        chunks.append(pts)
        last = float(pts[-1])
        if last >= total:
            break
        expected = int((total - last) + 10 * np.sqrt(total - last) + 100)
    out = np.concatenate(chunks)
    return out[out < total]


def rescaled_arrivals(
    shape: RateFunction, span: float, kind: str, rng: np.random.Generator, cv: float = 1.0
) -> np.ndarray:
    t, cum = cumulative_rate(shape, span)
    units = unit_renewal(kind, float(cum[-1]), rng, cv)
    return np.asarray(np.interp(units, cum, t), dtype=float)
