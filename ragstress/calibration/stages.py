"""Fitting the stages whose time is one draw per call: ``pool``, ``cache`` and ``batcher``.

Pure: :class:`~ragstress.calibration.observe.StageRun` views in, a
:class:`~ragstress.calibration.common.StageFit` out.

- **pool**: ``service`` is the distribution of the stage time minus ``per_token_s`` × the
  call's input tokens (:func:`~ragstress.calibration.fit.fit_distribution` picks the family).
  With ``input_tokens`` set, ``per_token_s`` comes first from a least-squares line of stage
  time on tokens (:func:`~ragstress.calibration.common.choose_slope`: kept where the tokens
  vary too little to tell, 0 where they vary and the time does not follow).
- **cache**: ``lookup`` as a pool's ``service``; the hit rule is not a time and is kept.
- **batcher**: at low load batches are mostly of one call, so a call's stage time is one
  batch's time, ``base_s + per_token_s × its tokens``: a least-squares line. Calls that
  another call touched are left out: one still at the stage when they came (they queued),
  or one arriving before their batch started (they shared it). A measured embed time
  includes the batcher's own wait for company: the reference embedder, like the model,
  holds a lone call for ``max_wait_s`` before running it. That wait is subtracted from
  measured times when the data show it — when (nearly) every measured time is at least
  ``max_wait_s`` (at most 1 % below) — and not when many are shorter (a batcher that runs a
  lone call at once). When the shortest batch is itself longer than ``max_wait_s`` the data
  cannot tell a hold from a slower batch; the hold is then assumed, which is what the model
  does with the fitted values: it adds ``max_wait_s`` back as the lone call's wait, so the
  stage time at low load comes out as measured either way. Simulated times are service
  times already.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from ragstress.calibration.common import (
    KeyFit,
    Options,
    SlopeChoice,
    StageFit,
    choose_slope,
    runs_text,
)
from ragstress.calibration.fit import fit_distribution, sig
from ragstress.calibration.observe import StageRun, free_on_arrival, isolated, load_warnings
from ragstress.config.profile import BatcherStage, CacheStage, PoolStage

__all__ = [
    "MAX_WAIT_SHORT",
    "OVERLAP_SHARE",
    "compact",
    "fit_batcher",
    "fit_cache",
    "fit_pool",
    "refused",
]

# At most this share of measured batcher times may be shorter than max_wait_s for the
# batcher to count as holding lone calls for max_wait_s.
MAX_WAIT_SHORT = 0.01
# More calls than this overlapping another at a batcher and the run was not at low load.
OVERLAP_SHARE = 0.2


def compact(value: Any) -> str:
    """A value as short flow text for a comment (``{kind: lognormal, mean: 0.003}``)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {compact(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        if len(value) > 4:
            return f"[{len(value)} values]"
        return "[" + ", ".join(compact(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, str):
        return value
    return json.dumps(value)


def refused(stage: str, kind: str, n: int, why: str) -> StageFit:
    return StageFit(stage=stage, kind=kind, fitted=False, n=n, summary=f"not fitted: {why}")


def _too_few(stage: str, kind: str, n: int, options: Options, what: str = "usable") -> StageFit:
    return refused(
        stage,
        kind,
        n,
        f"{n} {what} request(s), fewer than {options.min_samples}; kept as it was",
    )


def _concat(runs: Sequence[StageRun], column: str) -> np.ndarray:
    return np.concatenate([np.asarray(getattr(r, column))[r.usable] for r in runs])


def _tokens(runs: Sequence[StageRun]) -> np.ndarray | None:
    if any(r.tokens is None for r in runs):
        return None
    return np.concatenate([np.asarray(r.tokens)[r.usable] for r in runs])


def _warnings(runs: Sequence[StageRun], **kwargs: Any) -> tuple[str, ...]:
    return tuple(w for r in runs for w in load_warnings(r, **kwargs))


def _fit_draws(
    stage_name: str,
    kind: str,
    key: str,
    *,
    prior: Any,
    runs: Sequence[StageRun],
    tokens: np.ndarray | None,
    slope: SlopeChoice,
    options: Options,
    note: str = "",
) -> tuple[KeyFit, Any] | StageFit:
    """The distribution of the stage time less the per-token part, as a KeyFit for ``key``."""
    x = _concat(runs, "time_s")
    base = x if tokens is None else x - slope.value * tokens
    positive = base > 0
    dropped = int((~positive).sum())
    if positive.sum() < options.min_samples:
        return _too_few(stage_name, kind, int(positive.sum()), options, "positive")
    dfit = fit_distribution(
        base[positive],
        force_empirical=options.force_empirical,
        alpha=options.alpha,
        deterministic_cv=options.deterministic_cv,
    )
    less = "" if tokens is None or slope.value == 0 else " less the per-token part"
    if dropped:
        note += f"; {dropped} time(s) ≤ 0 after that left out"
    comment = (
        f"fitted: {dfit.describe()}; from the stage times{less}{note}; runs: {runs_text(runs)}; "
        f"was {compact(prior)}"
    )
    value = dfit.distribution.model_dump(mode="json", exclude_none=True)
    return KeyFit(key, value, comment), dfit


def _free_only(runs: Sequence[StageRun]) -> tuple[list[StageRun], int]:
    """Measured runs keep only the calls that found a free server (no queueing in their
    time, see :func:`~ragstress.calibration.observe.free_on_arrival`); and how many went."""
    out: list[StageRun] = []
    dropped = 0
    for r in runs:
        if r.split:
            out.append(r)
            continue
        keep = r.usable & free_on_arrival(r)
        dropped += int((r.usable & ~keep).sum())
        out.append(replace(r, usable=keep))
    return out, dropped


def _queued_note(dropped: int) -> str:
    return (
        f"; {dropped} measured call(s) that found every server busy left out (their time "
        "includes queueing)"
        if dropped
        else ""
    )


def _slope(
    stage: str,
    kind: str,
    n: int,
    *,
    input_tokens: str,
    runs: Sequence[StageRun],
    times: np.ndarray,
    prior: float,
    key: str,
) -> tuple[np.ndarray | None, SlopeChoice] | StageFit:
    """The requests' token counts and the per-token slope of ``times`` on them (the prior when
    the stage reads no tokens); a refusal when a slope is set but the tokens are unknown."""
    if input_tokens == "none":
        return None, SlopeChoice(prior, False, "")
    tokens = _tokens(runs)
    if tokens is None and prior > 0:
        return refused(
            stage,
            kind,
            n,
            f"{key} is set but the requests' token counts are unknown (the workload could not "
            "be rebuilt from a run's manifest); kept as it was",
        )
    return tokens, choose_slope(tokens, times, prior, "per_token_s")


def fit_pool(stage: PoolStage, runs: Sequence[StageRun], options: Options) -> StageFit:
    """Fit ``service`` (and ``per_token_s`` where ``input_tokens`` is set) from the calls
    that found a free server."""
    all_runs = runs
    runs, queued = _free_only(runs)
    n = sum(r.n for r in runs)
    if n < options.min_samples:
        return _too_few(stage.name, stage.kind, n, options)
    x = _concat(runs, "time_s")
    got_slope = _slope(
        stage.name,
        stage.kind,
        n,
        input_tokens=stage.input_tokens,
        runs=runs,
        times=x,
        prior=stage.per_token_s,
        key="per_token_s",
    )
    if isinstance(got_slope, StageFit):
        return got_slope
    tokens, slope = got_slope
    got = _fit_draws(
        stage.name,
        stage.kind,
        "service",
        prior=stage.service.model_dump(mode="json", exclude_none=True),
        runs=runs,
        tokens=tokens,
        slope=slope,
        options=options,
        note=_queued_note(queued),
    )
    if isinstance(got, StageFit):
        return got
    key, dfit = got
    keys = [key]
    if stage.input_tokens != "none":
        keys.append(KeyFit("per_token_s", sig(slope.value), slope.why, slope.changed))
    return StageFit(
        stage=stage.name,
        kind=stage.kind,
        fitted=True,
        n=n,
        summary=f"service {dfit.family} mean {dfit.mean.value:.4g} s"
        + (f", per_token_s {slope.value:.3g}" if slope.changed else ""),
        keys=tuple(keys),
        warnings=_warnings(all_runs),
        details={"service": dfit, "per_token_s": slope, "queued_left_out": queued},
    )


def fit_cache(stage: CacheStage, runs: Sequence[StageRun], options: Options) -> StageFit:
    """Fit ``lookup``; the hit rule is kept."""
    n = sum(r.n for r in runs)
    if n < options.min_samples:
        return _too_few(stage.name, stage.kind, n, options)
    got = _fit_draws(
        stage.name,
        stage.kind,
        "lookup",
        prior=stage.lookup.model_dump(mode="json", exclude_none=True),
        runs=runs,
        tokens=None,
        slope=SlopeChoice(0.0, False, ""),
        options=options,
    )
    if isinstance(got, StageFit):
        return got
    key, dfit = got
    return StageFit(
        stage=stage.name,
        kind=stage.kind,
        fitted=True,
        n=n,
        summary=f"lookup {dfit.family} mean {dfit.mean.value:.4g} s",
        keys=(key,),
        warnings=_warnings(runs, check_in_flight=False),
        details={"lookup": dfit},
    )


def fit_batcher(stage: BatcherStage, runs: Sequence[StageRun], options: Options) -> StageFit:
    """Fit ``batch_time.base_s`` and ``batch_time.per_token_s`` (see the module docstring)."""
    keep_runs: list[StageRun] = []
    left_out = 0
    for r in runs:
        keep = r.usable
        if np.isfinite(r.start_s).any():
            # the batch starts after the call's wait (simulated) or, measured, when a lone
            # call's max_wait_s is up
            held = np.where(np.isfinite(r.wait_s), r.wait_s, 0.0) if r.split else stage.max_wait_s
            alone = isolated(r.start_s, r.start_s + r.total_s, r.start_s + held)
            left_out += int((keep & ~alone).sum())
            keep = keep & alone
        keep_runs.append(_with_usable(r, keep))
    n = sum(r.n for r in keep_runs)
    if n < options.min_samples:
        return _too_few(stage.name, stage.kind, n, options, "usable lone")
    y = _concat(keep_runs, "time_s")
    measured = np.concatenate([np.full(r.n, not r.split) for r in keep_runs])
    wait_note = ""
    subtracted = False
    if measured.any() and stage.max_wait_s > 0:
        short = float((y[measured] < stage.max_wait_s).mean())
        if short <= MAX_WAIT_SHORT:
            y = np.where(measured, y - stage.max_wait_s, y)
            subtracted = True
            wait_note = (
                f"; max_wait_s {stage.max_wait_s:g} subtracted from the measured times (the "
                f"batcher holds a lone call that long: {short:.1%} of them are shorter)"
            )
        else:
            wait_note = (
                f"; max_wait_s not subtracted ({short:.0%} of the measured times are shorter "
                "than it: lone calls run at once)"
            )
    prior = stage.batch_time
    got_slope = _slope(
        stage.name,
        stage.kind,
        n,
        input_tokens=stage.input_tokens,
        runs=keep_runs,
        times=y,
        prior=prior.per_token_s,
        key="batch_time.per_token_s",
    )
    if isinstance(got_slope, StageFit):
        return got_slope
    tokens, slope = got_slope
    tok = np.zeros(y.size) if tokens is None else tokens
    resid0 = y - slope.value * tok
    if slope.significant and slope.fit is not None:
        base = slope.fit["intercept"]
        base_value, base_se = base.value, base.se
    else:
        base_value = float(resid0.mean())
        base_se = float(resid0.std(ddof=1)) / math.sqrt(y.size)
    # Calls that overlap are exactly those batched together, so the in-flight check would
    # flag batching as queueing: the overlapping share is reported instead.
    warnings = list(_warnings(runs, check_in_flight=False))
    total = n + left_out
    if total and left_out / total > OVERLAP_SHARE:
        warnings.append(
            f"{stage.name}: {left_out / total:.0%} of the calls overlapped another (batches of "
            "several calls, or queueing): the load was not low; the fit uses the rest"
        )
    if base_value < 0:
        warnings.append(
            f"{stage.name}: the fitted base_s is negative ({base_value:.3g} s); written as 0"
        )
        base_value = 0.0
    resid = y - base_value - slope.value * tok
    spread = float(resid.std(ddof=1))
    mean_y = float(y.mean())
    fitted = {"base_s": sig(base_value), "per_token_s": sig(slope.value)}
    slope_text = slope.why or f"per_token_s {slope.value:g} (input_tokens: none)"
    comment = (
        f"fitted: base_s {base_value:.4g} s [{base_value - 1.96 * base_se:.4g}, "
        f"{base_value + 1.96 * base_se:.4g}] from n={n} lone calls; {slope_text}; the "
        f"residual spread, sd {spread:.3g} s (cv {spread / mean_y if mean_y > 0 else 0:.2f}), "
        f"is not in the model, whose batch time is fixed{wait_note}"
        + (
            f"; {left_out} call(s) left out as possibly batched together or queued"
            if left_out
            else ""
        )
        + f"; runs: {runs_text(keep_runs)}; was {compact(prior.model_dump(mode='json'))}"
    )
    return StageFit(
        stage=stage.name,
        kind=stage.kind,
        fitted=True,
        n=n,
        summary=f"batch_time base {base_value:.4g} s + {slope.value:.3g} s/token",
        keys=(KeyFit("batch_time", fitted, comment),),
        warnings=tuple(warnings),
        details={
            "base_s": (base_value, base_se),
            "per_token_s": slope,
            "left_out": left_out,
            "max_wait_subtracted": subtracted,
        },
    )


def _with_usable(r: StageRun, usable: np.ndarray) -> StageRun:
    return replace(r, usable=np.asarray(usable, dtype=bool))
