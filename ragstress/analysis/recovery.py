"""Fault windows of a run and how long the system took to get back to normal after each.

Pure: reads a RunResult (or a scenario), does no I/O.

What "recovered" means
======================

*Normal* is what the same run looked like before anything went wrong. The **baseline** is the
requests that arrived in the measurement window before the first fault started, i.e. in
``[warmup_s, first start_s)``; from them come the baseline **p95 latency** (of the answered
requests) and the baseline **error share** (requests not answered — any outcome other than
``ok`` or ``ok_degraded`` — over all requests). A group of requests *looks normal* when

- its p95 latency of the answered requests is at most the **latency limit**
  ``max(1.2 × baseline p95, SLO p95 target)`` — within 20 % of the pre-fault p95, or within
  the SLO where the SLO is looser; and
- its error share is at most the **error limit**
  ``max(baseline error share + 1 percentage point, SLO error_rate)``.

Requests are grouped by **arrival** time (as in :func:`ragstress.analysis.per_window`), so a
slow or failed request counts against the moment the load met the trouble, and a backlog
counts until the requests arriving are served normally again — queued work drained, retries
calmed down.

A window ``[start_s, end_s)`` has **recovered at** the first time ``t ≥ end_s`` (on a grid of
``step_s``: 1 s, wider only where a run is long enough to need more than 5,000 steps) from which
the arrivals of a whole **hold period** ``[t, t + hold_s)`` look normal, taken together; its
**recovery time** is ``t − end_s`` (0 when the system is normal as soon as the fault ends). One
calm moment is not recovery: the system has to *stay* normal for ``hold_s`` — 10 s by default,
or longer at lower load so that the hold period holds about 200 arrivals at the baseline rate
(at most 300 s). With fewer, the p95 of the group and its error share are too noisy: one stray
timeout among 100 requests is already 1 %, and a steady system would look "not yet recovered"
for a whole hold period after it. Pooling the hold period still catches a bad spell inside it:
more than 5 % slow requests anywhere in it lift its p95. (Checked on steady runs without faults:
judged from an arbitrary moment, the criterion is met again within a few seconds on average.)

The hold period has to fit before the load ends (``duration_s``: no request arrives after).
If no such ``t`` exists the window has **not recovered**: ``recovered=False``,
``recovered_at_s`` and ``recovery_s`` are None.

Without a baseline — the first fault starts at the warm-up's end, or less than 10 s (or fewer
than 50 answered requests) of measurement window precedes it — the limits fall back to the SLO
alone: the SLO p95 target, and the SLO error rate (1 % where the SLO names none). Without an
SLO p95 target either, recovery cannot be judged: ``recovered=False`` with the reason.

Each window is judged on its own, from its own end; where another fault is active during the
hold period that confirmed recovery, the reason says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import TypeAdapter, ValidationError

from ragstress.config.faults import (
    CapacityLoss,
    ErrorStatus,
    Fault,
    Faults,
    LatencyMultiplier,
    RateLimitCut,
)
from ragstress.config.scenario import Scenario, Slo
from ragstress.results.schema import ANSWERED, RunResult

__all__ = [
    "ERROR_TOLERANCE",
    "HOLD_ARRIVALS",
    "LATENCY_TOLERANCE",
    "MIN_HOLD_S",
    "FaultWindow",
    "Recovery",
    "fault_windows",
    "recovery_times",
]

LATENCY_TOLERANCE = 1.2
"""Normal latency: p95 within this factor of the baseline p95 (or within the SLO target)."""
ERROR_TOLERANCE = 0.01
"""Normal errors: error share at most the baseline's plus this (1 percentage point)."""
MIN_HOLD_S = 10.0
"""The shortest hold period: normal for this long counts as recovered."""
HOLD_ARRIVALS = 200
"""At low load the hold period is stretched to hold about this many arrivals..."""
MAX_HOLD_S = 300.0
"""... but never beyond this."""
MIN_BASELINE_ANSWERS = 50
"""Fewer answered requests before the first fault than this make no baseline."""
MAX_STEPS = 5000
"""The search grid is 1 s, widened so that one window takes at most this many steps."""
DEFAULT_ERROR_RATE = 0.01
"""The error limit when there is no baseline and the SLO names no error rate."""

_FAULTS = TypeAdapter(Faults)


# --------------------------------------------------------------------------------------------
# fault windows


@dataclass(frozen=True, slots=True)
class FaultWindow:
    """One fault of the plan: ``[start_s, end_s)`` on ``stage``; ``label`` names it for a
    chart (stage, kind and its size, e.g. ``generate capacity_loss (−50 %)``)."""

    stage: str
    kind: str
    start_s: float
    end_s: float
    label: str

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


def _pct(value: float) -> str:
    return f"{value:.3g} %"


def _detail(fault: Fault) -> str:
    """The fault's size in a few characters, for its label."""
    parts: list[str] = []
    if isinstance(fault, CapacityLoss):
        if fault.replicas_down is not None:
            parts.append(f"−{fault.replicas_down} down")
        elif fault.fraction is not None:
            parts.append(f"−{_pct(100 * fault.fraction)}")
    elif isinstance(fault, RateLimitCut):
        parts.append(f"limits ×{fault.factor:g}")
    else:
        if isinstance(fault, ErrorStatus):
            parts.append(str(fault.status))
        elif isinstance(fault, LatencyMultiplier):
            parts.append(f"×{fault.factor:g}")
        if fault.percent < 100:
            parts.append(f"{_pct(fault.percent)} of calls")
    return f" ({', '.join(parts)})" if parts else ""


def _faults_of(scenario: Scenario | Mapping[str, Any]) -> tuple[Fault, ...]:
    if isinstance(scenario, Scenario):
        return scenario.faults
    raw = scenario.get("faults") or ()
    # only the faults are validated: the rest of a stored scenario may no longer validate
    # (a trace file that moved), and it is not needed here
    return tuple(_FAULTS.validate_python(raw))


def fault_windows(scenario: Scenario | Mapping[str, Any]) -> list[FaultWindow]:
    """The scenario's faults as windows, in plan order, none merged.

    ``scenario`` is a :class:`Scenario` or its dict (``RunResult.manifest.scenario``). Raises
    ``pydantic.ValidationError`` when the dict's faults are malformed."""
    return [
        FaultWindow(
            stage=f.stage,
            kind=f.kind,
            start_s=float(f.start_s),
            end_s=float(f.end_s),
            label=f"{f.stage} {f.kind}{_detail(f)}",
        )
        for f in _faults_of(scenario)
    ]


# --------------------------------------------------------------------------------------------
# recovery


@dataclass(frozen=True, slots=True)
class Recovery:
    """How one fault window ended: when the system was back to normal (see the module
    docstring for the definition), and the limits it was judged against."""

    window: FaultWindow
    recovered: bool
    recovered_at_s: float | None
    """Start of the first hold period after the window's end that looked normal."""
    recovery_s: float | None
    """``recovered_at_s − window.end_s``."""
    baseline_p95_s: float | None
    """p95 latency of the pre-fault answers; None without a baseline."""
    baseline_error_share: float | None
    latency_limit_s: float | None
    """Normal p95 is at most this; None when recovery could not be judged."""
    error_limit: float | None
    """Normal error share (0–1) is at most this."""
    hold_s: float
    reason: str

    @property
    def judged(self) -> bool:
        """Whether there were limits to judge recovery against at all."""
        return self.latency_limit_s is not None

    def __str__(self) -> str:
        w = self.window
        head = f"{w.label} [{w.start_s:g} s, {w.end_s:g} s)"
        if self.recovered and self.recovery_s is not None:
            return f"{head}: recovered in {self.recovery_s:g} s ({self.reason})"
        return f"{head}: not recovered ({self.reason})"


@dataclass(frozen=True, slots=True)
class _Limits:
    latency_s: float
    error: float
    baseline_p95_s: float | None
    baseline_error: float | None
    source: str


def _slo_of(result: RunResult, slo: Slo | Mapping[str, Any] | None) -> Slo:
    if isinstance(slo, Slo):
        return slo
    raw = result.manifest.scenario.get("slo") if slo is None else slo
    try:
        return Slo.model_validate(raw or {})
    except ValidationError:
        return Slo()


def _p95(latency: np.ndarray) -> float:
    values = latency[np.isfinite(latency)]
    return float(np.percentile(values, 95)) if values.size else math.nan


def _fmt_s(value: float) -> str:
    return f"{value:.3g} s"


def recovery_times(
    result: RunResult,
    *,
    slo: Slo | Mapping[str, Any] | None = None,
    hold_s: float | None = None,
    step_s: float | None = None,
) -> list[Recovery]:
    """One :class:`Recovery` per fault window of the run's scenario, in plan order (an empty
    list for a run without faults). See the module docstring for what recovered means.

    ``slo`` replaces the scenario's SLO (only its ``latency_s.p95`` and ``error_rate`` are
    used). ``hold_s`` fixes the hold period and ``step_s`` the search grid (defaults: see the
    module docstring)."""
    windows = fault_windows(result.manifest.scenario)
    if not windows:
        return []
    objectives = _slo_of(result, slo)
    slo_p95 = objectives.latency_s.p95 if objectives.latency_s is not None else None
    slo_errors = objectives.error_rate

    duration = float(result.manifest.duration_s)
    warm = float(result.manifest.scenario.get("warmup_s", 0.0) or 0.0)
    arrival = np.asarray(result.requests["arrival_s"], dtype=float)
    order = np.argsort(arrival, kind="stable")
    arrival = arrival[order]
    latency = np.asarray(result.requests["latency_s"], dtype=float)[order]
    answered = np.isin(result.requests["outcome"][order], list(ANSWERED))

    first = min(w.start_s for w in windows)
    lo, hi = np.searchsorted(arrival, [warm, first], side="left")
    base_span = first - warm
    base_answered = latency[lo:hi][answered[lo:hi]]
    if base_span > 0 and hi > lo:
        rate = (hi - lo) / base_span
    else:
        m_lo, m_hi = np.searchsorted(arrival, [warm, duration], side="left")
        rate = (m_hi - m_lo) / max(duration - warm, 1e-9)
    if hold_s is None:
        needed = HOLD_ARRIVALS / rate if rate > 0 else MAX_HOLD_S
        hold = float(min(max(MIN_HOLD_S, math.ceil(needed)), MAX_HOLD_S))
    else:
        hold = float(hold_s)
    if hold <= 0:
        raise ValueError(f"hold_s must be positive, got {hold_s}")

    limits: _Limits | None = None
    no_baseline = ""
    if base_span < MIN_HOLD_S:
        no_baseline = f"less than {MIN_HOLD_S:g} s between warm-up end and first fault"
    elif np.isfinite(base_answered).sum() < MIN_BASELINE_ANSWERS:
        no_baseline = f"fewer than {MIN_BASELINE_ANSWERS} answers before the first fault"
    if not no_baseline:
        base_p95 = _p95(base_answered)
        base_err = float(1.0 - answered[lo:hi].mean())
        latency_limit = LATENCY_TOLERANCE * base_p95
        error_limit = base_err + ERROR_TOLERANCE
        source = "baseline"
        if slo_p95 is not None and slo_p95 > latency_limit:
            latency_limit, source = float(slo_p95), "SLO"
        if slo_errors is not None:
            error_limit = max(error_limit, float(slo_errors))
        limits = _Limits(latency_limit, error_limit, base_p95, base_err, source)
    elif slo_p95 is not None:
        error_limit = DEFAULT_ERROR_RATE if slo_errors is None else float(slo_errors)
        limits = _Limits(float(slo_p95), error_limit, None, None, f"SLO ({no_baseline})")

    out: list[Recovery] = []
    for w in windows:
        if limits is None:
            out.append(
                Recovery(
                    w,
                    False,
                    None,
                    None,
                    None,
                    None,
                    None,
                    None,
                    hold,
                    f"cannot judge: no pre-fault baseline ({no_baseline}) and no SLO p95 target",
                )
            )
            continue
        at = _recovered_at(
            arrival,
            latency,
            answered,
            end_s=w.end_s,
            duration=duration,
            hold=hold,
            step_s=step_s,
            limits=limits,
        )
        common = (limits.baseline_p95_s, limits.baseline_error, limits.latency_s, limits.error)
        criterion = (
            f"p95 ≤ {_fmt_s(limits.latency_s)} ({limits.source}) and errors ≤ "
            f"{100 * limits.error:.3g} % for {_fmt_s(hold)}"
        )
        if at is None:
            if w.end_s + hold > duration:
                why = f"the load ends less than {_fmt_s(hold)} after the window"
            else:
                why = f"never back to {criterion} before the load ended at {duration:g} s"
            out.append(Recovery(w, False, None, None, *common, hold, why))
            continue
        reason = f"{criterion} from {at:g} s"
        others = [
            o.label for o in windows if o is not w and o.start_s < at + hold and o.end_s > w.end_s
        ]
        if others:
            reason += f"; other faults active meanwhile: {', '.join(others)}"
        out.append(Recovery(w, True, at, at - w.end_s, *common, hold, reason))
    return out


def _recovered_at(
    arrival: np.ndarray,
    latency: np.ndarray,
    answered: np.ndarray,
    *,
    end_s: float,
    duration: float,
    hold: float,
    step_s: float | None,
    limits: _Limits,
) -> float | None:
    """The first grid time ``t ≥ end_s`` whose hold period's arrivals look normal."""
    last = duration - hold
    if last < end_s:
        return None
    step = float(step_s) if step_s is not None else max(1.0, (last - end_s) / MAX_STEPS)
    if step <= 0:
        raise ValueError(f"step_s must be positive, got {step_s}")
    starts = end_s + step * np.arange(math.floor((last - end_s) / step + 1e-9) + 1)
    los = np.searchsorted(arrival, starts, side="left")
    his = np.searchsorted(arrival, starts + hold, side="left")
    # cumulative failures give each hold period's error share without a loop
    failed = np.concatenate([[0], np.cumsum(~answered)])
    n = his - los
    with np.errstate(invalid="ignore", divide="ignore"):
        share = (failed[his] - failed[los]) / n
    candidates = np.flatnonzero((n > 0) & (share <= limits.error + 1e-12))
    for k in candidates:
        lo, hi = los[k], his[k]
        p95 = _p95(latency[lo:hi][answered[lo:hi]])
        if math.isfinite(p95) and p95 <= limits.latency_s:
            return float(starts[k])
    return None
