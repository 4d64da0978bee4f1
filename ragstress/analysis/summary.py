"""RunResult → summary figures: counts, rates, latency and TTFT percentiles, cost, SLOs, stages.

Every figure is computed over the measurement window: requests that *arrived* in
[warmup_s, duration_s), except throughput and goodput, which count answers that *finished* in
the window (work done per second: a saturated run's backlog, drained after the load stops,
does not count). Rates divide by the window's length.

Cost includes the fixed (replica-hour) share of the window. Per answer, the per-call charges
are spread over the window's answered requests and the fixed cost over the answers finished in
the window (see ``_per_answer``). Retry amplification of a stage is
the calls it was sent (``<stage>_attempts``, retries included) per first-attempt call, over the
requests that reached it: 1.0 means no retries, whatever the stage's ``fan_out``. Stage
utilisation comes from the time series (calls, or batches, in service at each sample in the
window over the stage's servers) where the run has one: with retries and
abandoned work, the service times of the requests' last calls do not measure busy time.
Result folders written before a column existed read without it: the figures that need it are
NaN.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pydantic import ValidationError

from ragstress.analysis.stats import describe
from ragstress.config.profile import AnyStage, Profile
from ragstress.config.scenario import Slo
from ragstress.results.schema import OUTCOMES, RunResult, stage_columns

__all__ = ["SLO_RATIO_CAP", "good_mask", "slo_ratio", "slo_report", "summarize", "window_mask"]

# A run so far past its SLO that the ratio says nothing more (or one with no answers at all):
# capped, so means over replications and bisection on the ratio stay finite.
SLO_RATIO_CAP = 100.0


def window_mask(result: RunResult, warmup_s: float | None = None) -> np.ndarray:
    warm = _warmup(result) if warmup_s is None else warmup_s
    arrival = result.requests["arrival_s"]
    return (arrival >= warm) & (arrival < result.manifest.duration_s)


def _warmup(result: RunResult) -> float:
    return float(result.manifest.scenario.get("warmup_s", 0.0))


def _slo(result: RunResult) -> Slo:
    return Slo.model_validate(result.manifest.scenario.get("slo") or {})


def good_mask(result: RunResult, slo: Slo) -> np.ndarray:
    """Requests that count towards goodput: answered, and within the loosest latency and TTFT
    targets the SLO names (a per-request deadline; with no target, any answer is good)."""
    good = result.answered().copy()
    for name, targets in (("latency_s", slo.latency_s), ("ttft_s", slo.ttft_s)):
        if targets is None or not targets.items():
            continue
        deadline = max(v for _, v in targets.items())
        values = result.requests[name]
        with np.errstate(invalid="ignore"):
            good &= values <= deadline
    return good


def slo_report(summary: dict[str, Any], slo: Slo) -> list[dict[str, Any]]:
    """One entry per objective: its target, the measured value and whether it was met."""
    rows: list[dict[str, Any]] = []
    for metric in ("latency_s", "ttft_s"):
        targets = getattr(slo, metric)
        if targets is None:
            continue
        for pct, target in targets.items():
            value = summary[metric].get(pct, math.nan)
            met = bool(not math.isnan(value) and value <= target)
            objective = f"{metric}.{pct}"
            rows.append({"objective": objective, "target": target, "value": value, "met": met})
    if slo.error_rate is not None:
        value = summary["error_rate"]
        rows.append(
            {
                "objective": "error_rate",
                "target": slo.error_rate,
                "value": value,
                "met": bool(not math.isnan(value) and value <= slo.error_rate),
            }
        )
    return rows


def slo_ratio(rows: list[dict[str, Any]]) -> float:
    """The SLO as one number: the worst objective's measured value over its target (≤ 1:
    every objective met), capped at :data:`SLO_RATIO_CAP`; NaN when there is no objective.
    A missing value (no answers) or any error against a zero target counts as the cap."""
    if not rows:
        return math.nan
    worst = 0.0
    for row in rows:
        value, target = float(row["value"]), float(row["target"])
        if math.isnan(value):
            ratio = SLO_RATIO_CAP
        elif target > 0:
            ratio = value / target
        else:
            ratio = 0.0 if value <= 0 else SLO_RATIO_CAP
        worst = max(worst, min(ratio, SLO_RATIO_CAP))
    return worst


def _per_answer(charges: float, answered: int, fixed: float, completed: int) -> float:
    """Cost per answer: the window's per-call charges over the window's answered requests,
    plus the window's fixed (replica-hour) cost over the answers finished in it. The split
    matters past saturation: the fixed cost buys only the answers the system managed in the
    window, not the backlog it drains after the load stops."""
    if not answered or (fixed > 0 and not completed):
        return math.nan
    return charges / answered + (fixed / completed if fixed > 0 else 0.0)


def _completed_in_window(result: RunResult, mask: np.ndarray, warm: float) -> int:
    """Requests of ``mask`` that *finished* inside [warm, duration), whenever they arrived.

    Throughput is work done per second in the window. Counting the window's arrivals that were
    answered instead would credit a saturated system with the backlog it drains after the run
    ends, and show it keeping up with any load."""
    finish = result.requests["arrival_s"] + result.requests["latency_s"]
    with np.errstate(invalid="ignore"):
        inside = (finish >= warm) & (finish < result.manifest.duration_s)
    return int((mask & inside).sum())


def _profile_stages(result: RunResult) -> dict[str, AnyStage]:
    # A measured run may carry no profile, or a partial one: utilisation is then unknown (NaN)
    # and no fixed cost is charged to a stage
    try:
        profile = Profile.model_validate(result.manifest.profile)
    except ValidationError:
        return {}
    return {stage.name: stage for stage in profile.stages}


def _window_attempts(result: RunResult, stage: str, in_window: np.ndarray) -> np.ndarray | None:
    """``<stage>_attempts`` of the window's requests, or None where the run has no such
    column (a result folder written before it existed)."""
    column = result.requests.get(f"{stage}_attempts")
    return None if column is None else np.asarray(column[in_window])


def _retry_amplification(attempts: np.ndarray | None, fan_out: int = 1) -> float:
    """Calls sent per first-attempt call, among requests that sent the stage at least one
    (a stage with ``fan_out`` k makes k first attempts per request); NaN when none did."""
    if attempts is None:
        return math.nan
    reached = attempts > 0
    if not reached.any():
        return math.nan
    return float(attempts[reached].sum()) / (int(reached.sum()) * fan_out)


def _fan_out(stages: dict[str, AnyStage], name: str) -> int:
    stage = stages.get(name)
    return 1 if stage is None else stage.fan_out


def _cost_by_stage(
    result: RunResult, in_window: np.ndarray, stages: dict[str, AnyStage], span: float
) -> dict[str, dict[str, float]]:
    """Per stage: the window's per-call charges and the stage's replica-hour share."""
    out: dict[str, dict[str, float]] = {}
    for stage in result.stages:
        column = result.requests.get(f"{stage}_cost_usd")
        charges = math.nan if column is None else float(column[in_window].sum())
        cfg = stages.get(stage)
        fixed = 0.0 if cfg is None else cfg.replicas * cfg.price.per_replica_hour_usd * span / 3600
        out[stage] = {"per_request_charges": charges, "fixed": fixed, "total": charges + fixed}
    return out


def summarize(result: RunResult, slo: Slo | None = None) -> dict[str, Any]:
    """The summary.json figures for ``result``; ``slo`` defaults to the scenario's own."""
    slo = _slo(result) if slo is None else slo
    req = result.requests
    warm = _warmup(result)
    duration = result.manifest.duration_s
    span = max(duration - warm, 1e-12)
    in_window = window_mask(result)
    n = int(in_window.sum())
    outcome = req["outcome"][in_window]
    answered = result.answered()[in_window]
    ok = outcome == "ok"
    good = good_mask(result, slo)[in_window]
    latency = req["latency_s"][in_window][answered]
    ttft = req["ttft_s"][in_window][answered]
    cost = req["cost_usd"][in_window]
    fixed = result.manifest.fixed_cost_usd * (span / duration if duration > 0 else 1.0)
    total_cost = float(cost.sum()) + fixed
    n_answered = int(answered.sum())
    n_good = int(good.sum())
    done = _completed_in_window(result, result.answered(), warm)
    done_good = _completed_in_window(result, good_mask(result, slo), warm)
    charges = float(cost.sum())
    per_answer = _per_answer(charges, n_answered, fixed, done)
    profile_stages = _profile_stages(result)

    summary: dict[str, Any] = {
        "source": result.manifest.source,
        "complete": result.manifest.complete,
        "window_s": [warm, duration],
        "requests": n,
        "ok": int(ok.sum()),
        "answered": n_answered,
        "outcomes": {name: int((outcome == name).sum()) for name in OUTCOMES},
        "offered_rps": n / span,
        "throughput_rps": done / span,
        "goodput_rps": done_good / span,
        "error_rate": (n - n_answered) / n if n else math.nan,
        "attempts_per_request": float(req["attempts"][in_window].mean()) if n else math.nan,
        "latency_s": describe(latency),
        "ttft_s": describe(ttft),
        "cost_usd": {
            "total": total_cost,
            "per_request_charges": float(cost.sum()),
            "fixed": fixed,
            "by_stage": _cost_by_stage(result, in_window, profile_stages, span),
        },
        "cost_usd_per_1k": 1000 * total_cost / n if n else math.nan,
        "cost_usd_per_1k_answers": 1000 * per_answer,
        "cost_usd_per_answer": per_answer,
        "cost_usd_per_good_answer": _per_answer(charges, n_good, fixed, done_good),
        "retry_amplification": {
            stage: _retry_amplification(
                _window_attempts(result, stage, in_window), _fan_out(profile_stages, stage)
            )
            for stage in result.stages
        },
    }
    summary["slo"] = slo_report(summary, slo)
    summary["slo_met"] = all(row["met"] for row in summary["slo"])
    summary["slo_ratio"] = slo_ratio(summary["slo"])
    summary["stages"] = _stage_summary(result, in_window, profile_stages)
    return summary


def _stage_summary(
    result: RunResult, in_window: np.ndarray, profile_stages: dict[str, AnyStage]
) -> dict[str, Any]:
    servers = {name: stage.servers for name, stage in profile_stages.items()}
    series = result.timeseries
    out: dict[str, Any] = {}
    warm = _warmup(result)
    span = max(result.manifest.duration_s - warm, 1e-12)
    for stage in result.stages:
        wait_col, service_col = stage_columns(stage)
        wait = result.requests[wait_col][in_window]
        service = result.requests[service_col][in_window]
        calls = int((~np.isnan(service)).sum())
        attempts = _window_attempts(result, stage, in_window)
        entry: dict[str, Any] = {
            "calls": calls,
            "wait_s": {
                "mean": float(np.nanmean(wait)) if calls else math.nan,
                "p95": float(np.nanpercentile(wait, 95)) if calls else math.nan,
            },
            "service_s": {
                "mean": float(np.nanmean(service)) if calls else math.nan,
                "p95": float(np.nanpercentile(service, 95)) if calls else math.nan,
            },
            "servers": servers.get(stage),
            "utilisation": math.nan,
            "mean_queue": math.nan,
            "attempts": math.nan if attempts is None else int(attempts.sum()),
            "retry_amplification": _retry_amplification(attempts, _fan_out(profile_stages, stage)),
        }
        n_servers = servers.get(stage)
        busy = _window_samples(series, f"{stage}_busy", warm, result.manifest.duration_s)
        if n_servers and busy is not None:
            # calls (a batcher: batches) in service, averaged over the window's samples
            entry["utilisation"] = float(busy.mean()) / n_servers
        elif n_servers:
            # no time series: the busy time of the window's requests' last calls
            entry["utilisation"] = float(np.nansum(service)) / (n_servers * span)
        queue = _window_samples(series, f"{stage}_queue", warm, result.manifest.duration_s)
        if queue is not None:
            entry["mean_queue"] = float(queue.mean())
        out[stage] = entry
    return out


def _window_samples(
    series: dict[str, np.ndarray] | None, name: str, start: float, end: float
) -> np.ndarray | None:
    """The samples of ``series[name]`` taken at t in [start, end); None where there are none."""
    if series is None or name not in series or "t_s" not in series:
        return None
    t = series["t_s"]
    sel = (t >= start) & (t < end)
    return np.asarray(series[name][sel], dtype=float) if sel.any() else None
