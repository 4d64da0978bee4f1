"""The shapes every stage fitter returns, and the settings they share."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ragstress.calibration.fit import DETERMINISTIC_CV, KS_ALPHA, LinearFit, fit_linear
from ragstress.calibration.observe import StageRun

__all__ = [
    "MIN_SAMPLES",
    "MIN_TOKEN_CV",
    "KeyFit",
    "Options",
    "SlopeChoice",
    "StageFit",
    "choose_slope",
    "runs_text",
]

# Fewer usable requests than this and a stage is not fitted: a KS test and a standard error
# from fewer are too weak to replace a value someone chose on purpose.
MIN_SAMPLES = 30
# Token counts varying less than this (coefficient of variation) cannot separate a per-token
# cost from a fixed one: the slope is then not fitted and the profile's value is kept.
MIN_TOKEN_CV = 0.1


@dataclass(frozen=True)
class Options:
    """How to fit. ``force_empirical``: write empirical distributions whatever fits;
    ``alpha``: the KS level below which a family is rejected in favour of an empirical one;
    ``stages``: the stages to fit (None: every stage with data)."""

    force_empirical: bool = False
    alpha: float = KS_ALPHA
    deterministic_cv: float = DETERMINISTIC_CV
    min_samples: int = MIN_SAMPLES
    stages: tuple[str, ...] | None = None


@dataclass(frozen=True)
class KeyFit:
    """A stage key the calibration sets (``value`` in JSON form) or explains, and the comment
    written above it in the profile."""

    key: str
    value: Any
    comment: str
    changed: bool = True


@dataclass(frozen=True)
class StageFit:
    """What calibration did with one stage. ``fitted`` False: the stage is kept as it was,
    ``summary`` says why."""

    stage: str
    kind: str
    fitted: bool
    n: int
    summary: str
    keys: tuple[KeyFit, ...] = ()
    warnings: tuple[str, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)


def runs_text(runs: Sequence[StageRun]) -> str:
    """``a (n=120), b (n=80)``: the runs a fit drew on and how many rows each gave."""
    return ", ".join(f"{r.label} (n={r.n})" for r in runs if r.n)


@dataclass(frozen=True)
class SlopeChoice:
    """A per-token slope: its value, whether it changed, and a sentence saying why."""

    value: float
    changed: bool
    why: str
    fit: LinearFit | None = None
    significant: bool = False  # the value is the regression's slope (its intercept applies)


def choose_slope(
    tokens: np.ndarray | None, y: np.ndarray, prior: float, what: str, unit: str = "s/token"
) -> SlopeChoice:
    """Regress ``y`` on ``tokens`` and decide what the per-token slope becomes:

    - tokens unknown, or varying too little (cv < 0.1) to tell: the profile's ``prior``;
    - a slope that is positive, significant (one-sided p < 0.01) and precise (SE < 25 %):
      that slope;
    - an imprecise slope whose 95 % interval holds the profile's ``prior`` (non-zero): the
      prior, which the data do not contradict (0 would be a change the data do not ask for);
    - otherwise 0: the tokens varied enough, and the time did not follow them.
    """
    if tokens is None:
        return SlopeChoice(prior, False, f"kept: token counts unknown, so {what} cannot be fitted")
    mean = float(tokens.mean())
    cv = float(tokens.std()) / mean if mean > 0 else 0.0
    if cv < MIN_TOKEN_CV:
        return SlopeChoice(
            prior,
            False,
            f"kept: {what} not fitted, the tokens vary too little (cv {cv:.3g} < "
            f"{MIN_TOKEN_CV:g}) to tell it from a fixed cost",
        )
    lf = fit_linear({"intercept": np.ones(y.size), "slope": tokens}, y)
    est = lf["slope"]
    if lf.significant("slope"):
        return SlopeChoice(
            est.value,
            True,
            f"fitted: {what} {est.value:.4g} {unit} [{est.low:.4g}, {est.high:.4g}] by least "
            f"squares on the tokens (t={lf.t('slope'):.3g}, {lf.describe()})",
            lf,
            significant=True,
        )
    if prior > 0.0 and est.low <= prior <= est.high:
        return SlopeChoice(
            prior,
            False,
            f"kept: {what} {prior:g}, inside the imprecise fit's 95 % interval (slope "
            f"{est.value:.3g} ± {est.se:.2g}, p={lf.p_positive('slope'):.2g})",
            lf,
        )
    return SlopeChoice(
        0.0,
        prior != 0.0,
        f"fitted: {what} 0, no significant dependence on the tokens (slope {est.value:.3g} "
        f"± {est.se:.2g}, p={lf.p_positive('slope'):.2g})",
        lf,
    )
