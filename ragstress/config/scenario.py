"""The workload and the experiment: arrivals, load shape, request mix, SLOs, duration, seed."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, ValidationInfo, field_validator

from ragstress.config.base import StrictModel
from ragstress.config.distributions import (
    Deterministic,
    Distribution,
    LogNormal,
    NonNegative,
    Positive,
)
from ragstress.config.faults import Fault

__all__ = [
    "Arrivals",
    "ConstantArrivals",
    "ConstantRate",
    "DiurnalRate",
    "GammaArrivals",
    "Percentiles",
    "Phase",
    "PhasesRate",
    "PoissonArrivals",
    "RampRate",
    "RateShape",
    "RequestMix",
    "Scenario",
    "Slo",
    "SpikeRate",
    "StepRate",
    "TraceArrivals",
]

Rate = Annotated[float, Field(ge=0, le=1e7, allow_inf_nan=False)]


class ConstantRate(StrictModel):
    kind: Literal["constant"]
    rps: Rate

    def rate(self, t: np.ndarray, span: float) -> np.ndarray:
        del span
        return np.full_like(t, self.rps, dtype=float)

    def breakpoints(self, span: float) -> list[float]:
        del span
        return []


class RampRate(StrictModel):
    """Linear from ``from_rps`` to ``to_rps`` over ``duration_s`` (default: the whole span)."""

    kind: Literal["ramp"]
    from_rps: Rate
    to_rps: Rate
    duration_s: Positive | None = None

    def rate(self, t: np.ndarray, span: float) -> np.ndarray:
        d = self.duration_s or span
        frac = np.clip(t / d, 0.0, 1.0)
        return self.from_rps + (self.to_rps - self.from_rps) * frac

    def breakpoints(self, span: float) -> list[float]:
        return [self.duration_s or span]


class Step(StrictModel):
    at_s: NonNegative
    rps: Rate


class StepRate(StrictModel):
    """Piecewise constant: each step holds from its ``at_s`` until the next one."""

    kind: Literal["step"]
    steps: tuple[Step, ...]

    @field_validator("steps")
    @classmethod
    def _ordered(cls, steps: tuple[Step, ...]) -> tuple[Step, ...]:
        if not steps:
            raise ValueError("at least one step is required")
        if steps[0].at_s != 0:
            raise ValueError("the first step must start at at_s: 0")
        for a, b in itertools.pairwise(steps):
            if b.at_s <= a.at_s:
                raise ValueError("steps must be in increasing at_s order")
        return steps

    def rate(self, t: np.ndarray, span: float) -> np.ndarray:
        del span
        starts = np.array([s.at_s for s in self.steps])
        values = np.array([s.rps for s in self.steps])
        idx = np.searchsorted(starts, t, side="right") - 1
        return values[np.clip(idx, 0, len(values) - 1)]

    def breakpoints(self, span: float) -> list[float]:
        del span
        return [s.at_s for s in self.steps]


class SpikeRate(StrictModel):
    """``base_rps``, rising linearly over ``ramp_s`` to ``peak_rps`` at ``start_s``, held for
    ``duration_s``, then falling back over ``ramp_s``."""

    kind: Literal["spike"]
    base_rps: Rate
    peak_rps: Rate
    start_s: NonNegative
    duration_s: Positive
    ramp_s: NonNegative = 0.0

    def rate(self, t: np.ndarray, span: float) -> np.ndarray:
        del span
        r = self.ramp_s
        up0, up1 = self.start_s - r, self.start_s
        dn0, dn1 = self.start_s + self.duration_s, self.start_s + self.duration_s + r
        xs = [up0, up1, dn0, dn1]
        ys = [self.base_rps, self.peak_rps, self.peak_rps, self.base_rps]
        if r == 0:
            out = np.full_like(t, self.base_rps, dtype=float)
            out[(t >= up1) & (t < dn0)] = self.peak_rps
            return out
        return np.asarray(np.interp(t, xs, ys), dtype=float)

    def breakpoints(self, span: float) -> list[float]:
        del span
        s, d, r = self.start_s, self.duration_s, self.ramp_s
        return [max(s - r, 0.0), s, s + d, s + d + r]


class DiurnalRate(StrictModel):
    """A day compressed or not: ``mean_rps × (1 + amplitude·cos(2π(t − peak_at_s)/period_s))``."""

    kind: Literal["diurnal"]
    mean_rps: Rate
    amplitude: Annotated[float, Field(ge=0, le=1)]
    period_s: Positive = 86_400.0
    peak_at_s: NonNegative = 0.0

    def rate(self, t: np.ndarray, span: float) -> np.ndarray:
        del span
        phase = 2 * math.pi * (t - self.peak_at_s) / self.period_s
        return self.mean_rps * (1 + self.amplitude * np.cos(phase))

    def breakpoints(self, span: float) -> list[float]:
        del span
        return []


class Phase(StrictModel):
    duration_s: Positive
    shape: RateShape


class PhasesRate(StrictModel):
    """Shapes one after another; each phase's shape sees time from its own start."""

    kind: Literal["phases"]
    phases: tuple[Phase, ...]

    @field_validator("phases")
    @classmethod
    def _not_empty(cls, phases: tuple[Phase, ...]) -> tuple[Phase, ...]:
        if not phases:
            raise ValueError("at least one phase is required")
        return phases

    def rate(self, t: np.ndarray, span: float) -> np.ndarray:
        del span
        out = np.zeros_like(t, dtype=float)
        start = 0.0
        for i, ph in enumerate(self.phases):
            last = i == len(self.phases) - 1
            mask = (t >= start) & ((t < start + ph.duration_s) | last)
            out[mask] = ph.shape.rate(t[mask] - start, ph.duration_s)
            start += ph.duration_s
        return out

    def breakpoints(self, span: float) -> list[float]:
        del span
        out: list[float] = []
        start = 0.0
        for ph in self.phases:
            out.append(start)
            out.extend(start + b for b in ph.shape.breakpoints(ph.duration_s))
            start += ph.duration_s
        out.append(start)
        return out


RateShape = Annotated[
    ConstantRate | RampRate | StepRate | SpikeRate | DiurnalRate | PhasesRate,
    Field(discriminator="kind"),
]
Phase.model_rebuild()


def _number_is_constant(value: Any) -> Any:
    """``rate: 50`` is shorthand for ``rate: {kind: constant, rps: 50}``."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return {"kind": "constant", "rps": value}
    return value


class _RateArrivals(StrictModel):
    rate: RateShape

    @field_validator("rate", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return _number_is_constant(value)


class PoissonArrivals(_RateArrivals):
    """Independent users: exponential gaps at the shape's instantaneous rate."""

    kind: Literal["poisson"]


class GammaArrivals(_RateArrivals):
    """Bursty (``cv`` > 1) or smoother-than-Poisson (``cv`` < 1) renewal arrivals."""

    kind: Literal["gamma"]
    cv: Annotated[float, Field(gt=0, le=20)]


class ConstantArrivals(_RateArrivals):
    """Evenly spaced arrivals at the shape's rate: a deterministic load generator."""

    kind: Literal["constant"]


class TraceArrivals(StrictModel):
    """Replay of recorded traffic.

    ``file`` is a CSV, relative to the scenario file: either the Azure LLM inference trace format
    (``TIMESTAMP,ContextTokens,GeneratedTokens``) or ``arrival_s,input_tokens,output_tokens``.
    ``speedup`` divides the recorded gaps (2 = twice the recorded rate). ``offset_s`` skips the
    trace's first seconds. With ``use_tokens``, each request takes its prompt and output sizes
    from the trace instead of the request mix; with ``use_tokens: output``, only its output
    size (for a service that builds its prompts itself, such as a RAG gateway whose retrieved
    context a client cannot choose: the mix's query, top_k and chunks make the prompt).
    """

    kind: Literal["trace"]
    file: Path
    speedup: Annotated[float, Field(gt=0, le=10_000)] = 1.0
    offset_s: NonNegative = 0.0
    use_tokens: bool | Literal["output"] = True

    @field_validator("file")
    @classmethod
    def _resolve(cls, file: Path, info: ValidationInfo) -> Path:
        base = (info.context or {}).get("base_dir")
        if base is not None and not file.is_absolute():
            file = Path(base) / file
        if not file.is_file():
            raise ValueError(f"no such trace file: {file}")
        return file


Arrivals = Annotated[
    PoissonArrivals | GammaArrivals | ConstantArrivals | TraceArrivals,
    Field(discriminator="kind"),
]


class RequestMix(StrictModel):
    """What each request asks for. Token counts are drawn, rounded, and at least 1.

    Retrieved context = ``top_k`` × a draw from ``chunk_tokens``. With ``distinct_queries``,
    query texts repeat: each request picks one of that many queries with Zipf(``zipf_s``)
    popularity (what makes caches hit); without it every query is new.
    """

    query_tokens: Distribution = LogNormal(kind="lognormal", mean=24.0, cv=0.5)
    top_k: Annotated[int, Field(ge=0, le=1000)] = 5
    chunk_tokens: Distribution = Deterministic(kind="deterministic", value=256.0)
    output_tokens: Distribution = LogNormal(kind="lognormal", mean=200.0, cv=0.8)
    distinct_queries: Annotated[int, Field(ge=1)] | None = None
    zipf_s: Annotated[float, Field(gt=0, le=5)] = 1.0
    locale: str = "en_US"


class Percentiles(StrictModel):
    """Upper bounds on latency percentiles, in seconds."""

    p50: Positive | None = None
    p90: Positive | None = None
    p95: Positive | None = None
    p99: Positive | None = None

    def items(self) -> list[tuple[str, float]]:
        return [(k, v) for k, v in self.model_dump().items() if v is not None]


class Slo(StrictModel):
    """Service-level objectives. A request counts towards goodput when it succeeded and its
    latency and TTFT are within the loosest percentile target given for each."""

    latency_s: Percentiles | None = None
    ttft_s: Percentiles | None = None
    error_rate: Annotated[float, Field(ge=0, le=1)] | None = None


class Scenario(StrictModel):
    name: Annotated[str, Field(min_length=1)]
    description: str = ""
    duration_s: Annotated[float, Field(gt=0, le=30 * 86_400)]
    seed: Annotated[int, Field(ge=0, lt=2**63)] = 0
    warmup_s: NonNegative = 0.0
    max_requests: Annotated[int, Field(ge=1, le=50_000_000)] = 2_000_000
    arrivals: Arrivals
    requests: RequestMix = RequestMix()
    slo: Slo = Slo()
    faults: tuple[Fault, ...] = ()

    @field_validator("warmup_s")
    @classmethod
    def _warmup_inside(cls, warmup_s: float, info: ValidationInfo) -> float:
        duration = info.data.get("duration_s")
        if duration is not None and warmup_s >= duration:
            raise ValueError(f"warmup_s must be shorter than duration_s ({duration:g})")
        return warmup_s
