"""RunResult: the one shape every engine produces and everything downstream reads.

One row per request with the same columns whether simulated or measured, plus a manifest
saying where the rows came from, plus (where the engine knows it) a per-second time series.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import Field

from ragstress.config.base import StrictModel

__all__ = [
    "BASE_COLUMNS",
    "OUTCOMES",
    "Manifest",
    "RunResult",
    "stage_columns",
]

# Outcome vocabulary. ``ok`` and ``ok_degraded`` (a fallback answered) count as answered.
OUTCOMES: tuple[str, ...] = (
    "ok",
    "ok_degraded",
    "timeout",
    "error_429",
    "error_5xx",
    "error_connect",
    "error_stream",
    "breaker_open",
    "shed",
)
ANSWERED: frozenset[str] = frozenset({"ok", "ok_degraded"})

BASE_COLUMNS: tuple[str, ...] = (
    "id",
    "arrival_s",
    "outcome",
    "latency_s",
    "ttft_s",
    "attempts",
    "tokens_in",
    "tokens_out",
    "cost_usd",
)


def stage_columns(stage: str) -> tuple[str, str]:
    return f"{stage}_wait_s", f"{stage}_service_s"


class Manifest(StrictModel):
    """Where a RunResult came from. ``complete`` is False for an interrupted run."""

    source: Literal["simulated", "measured"]
    scenario: dict[str, Any]
    profile: dict[str, Any] | None
    seed: int
    stages: list[str]
    duration_s: float
    ragstress_version: str
    started_at: str | None = None
    versions: dict[str, str] = Field(
        default_factory=dict, description="python and the libraries that shaped the numbers"
    )
    complete: bool = True
    fixed_cost_usd: float = Field(
        default=0.0, description="replica-hour charges for the run's duration, not per request"
    )
    notes: list[str] = Field(default_factory=list)


@dataclass(frozen=True, eq=False)
class RunResult:
    """Per-request columns (numpy arrays of equal length) and a manifest.

    ``outcome`` is an array of strings from OUTCOMES; times are seconds; a time that does not
    apply (a stage never reached) is NaN.
    """

    manifest: Manifest
    requests: dict[str, np.ndarray]
    timeseries: dict[str, np.ndarray] | None = field(default=None)

    def __post_init__(self) -> None:
        lengths = {k: len(v) for k, v in self.requests.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"request columns differ in length: {lengths}")
        missing = [c for c in BASE_COLUMNS if c not in self.requests]
        if missing:
            raise ValueError(f"request columns missing: {missing}")

    def __len__(self) -> int:
        return int(self.requests["id"].size)

    @property
    def stages(self) -> list[str]:
        return list(self.manifest.stages)

    def answered(self) -> np.ndarray:
        """Boolean mask of requests that got an answer (ok or ok_degraded)."""
        out = self.requests["outcome"]
        return np.isin(out, list(ANSWERED))
