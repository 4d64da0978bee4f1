"""RunResult → summary figures: counts, rates, latency and TTFT percentiles, cost, SLOs, stages.

Every figure is computed over the measurement window: requests that *arrived* in
[warmup_s, duration_s). Rates divide by that window's length, so a run that drains a backlog
after the load stops does not look faster than it was.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pydantic import ValidationError

from ragstress.analysis.stats import describe
from ragstress.config.profile import Profile
from ragstress.config.scenario import Slo
from ragstress.results.schema import OUTCOMES, RunResult, stage_columns

__all__ = ["good_mask", "slo_report", "summarize", "window_mask"]


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


def _stage_servers(result: RunResult) -> dict[str, int]:
    # A measured run may carry no profile, or a partial one: utilisation is then unknown (NaN)
    try:
        profile = Profile.model_validate(result.manifest.profile)
    except ValidationError:
        return {}
    return {stage.name: stage.servers for stage in profile.stages}


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

    summary: dict[str, Any] = {
        "source": result.manifest.source,
        "complete": result.manifest.complete,
        "window_s": [warm, duration],
        "requests": n,
        "ok": int(ok.sum()),
        "answered": n_answered,
        "outcomes": {name: int((outcome == name).sum()) for name in OUTCOMES},
        "offered_rps": n / span,
        "throughput_rps": n_answered / span,
        "goodput_rps": int(good.sum()) / span,
        "error_rate": (n - n_answered) / n if n else math.nan,
        "attempts_per_request": float(req["attempts"][in_window].mean()) if n else math.nan,
        "latency_s": describe(latency),
        "ttft_s": describe(ttft),
        "cost_usd": {"total": total_cost, "per_request_charges": float(cost.sum()), "fixed": fixed},
        "cost_usd_per_1k": 1000 * total_cost / n if n else math.nan,
        "cost_usd_per_1k_answers": 1000 * total_cost / n_answered if n_answered else math.nan,
    }
    summary["slo"] = slo_report(summary, slo)
    summary["slo_met"] = all(row["met"] for row in summary["slo"])
    summary["stages"] = _stage_summary(result, in_window)
    return summary


def _stage_summary(result: RunResult, in_window: np.ndarray) -> dict[str, Any]:
    servers = _stage_servers(result)
    series = result.timeseries
    out: dict[str, Any] = {}
    warm = _warmup(result)
    span = max(result.manifest.duration_s - warm, 1e-12)
    for stage in result.stages:
        wait_col, service_col = stage_columns(stage)
        wait = result.requests[wait_col][in_window]
        service = result.requests[service_col][in_window]
        calls = int((~np.isnan(service)).sum())
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
            # exact busy time of the window's requests, not the coarse per-second samples
            "utilisation": float(np.nansum(service)) / (servers[stage] * span)
            if servers.get(stage)
            else math.nan,
            "mean_queue": math.nan,
        }
        if series is not None and f"{stage}_busy" in series:
            t = series["t_s"]
            sel = (t >= warm) & (t < result.manifest.duration_s)
            if sel.any():
                entry["mean_queue"] = float(series[f"{stage}_queue"][sel].mean())
        out[stage] = entry
    return out
