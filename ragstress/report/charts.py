"""Charts of one run. Each function draws on an Axes it is given and touches nothing else.

No figure is created here and no file is written: the caller owns the Figure (see
``ragstress.report.html``), so these functions work equally in a report, a notebook or a
dashboard. Every chart gets a title, axis labels with units, a legend and a grid, and copes
with runs that have no answered requests at all (it says so on the axes instead of failing).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from matplotlib.axes import Axes
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import ScaledTranslation
from pydantic import ValidationError

from ragstress.analysis import per_window, window_mask
from ragstress.config.profile import CacheStage, Profile
from ragstress.config.scenario import Scenario, TraceArrivals
from ragstress.results.schema import ANSWERED, OUTCOMES, RunResult, stage_columns

if TYPE_CHECKING:
    from matplotlib.typing import RcKeyType

__all__ = [
    "CHART_STYLE",
    "OUTCOME_COLOURS",
    "fmt_seconds",
    "has_outcome_series",
    "has_stage_call_series",
    "latency_cdf",
    "latency_over_time",
    "outcomes_over_time",
    "queues_over_time",
    "stage_breakdown",
    "stage_calls_over_time",
    "throughput_over_time",
]

# rcParams for a figure holding one of these charts: apply with matplotlib.rc_context.
CHART_STYLE: dict[RcKeyType, Any] = {
    "font.size": 11,
    "axes.titlesize": 13,
    "axes.titleweight": "bold",
    "axes.labelsize": 11,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "legend.fontsize": 9.5,
    "legend.framealpha": 0.9,
    "axes.spines.top": False,
    "axes.spines.right": False,
}

E2E_COLOUR = "#1f77b4"
TTFT_COLOUR = "#ff7f0e"
WAIT_COLOUR = "#d62728"
SERVICE_COLOUR = "#2ca02c"
ERROR_COLOUR = "#d62728"
OFFERED_COLOUR = "#7f7f7f"
P95_COLOUR = "#08306b"
# One colour per outcome, the same in every chart: answers green, failures warm colours
# (orange, yellow, reds, browns, pink) that stay apart from each other when stacked.
OUTCOME_COLOURS: dict[str, str] = {
    "ok": "#2ca02c",
    "ok_degraded": "#a1d99b",
    "timeout": "#ff7f0e",
    "error_429": "#ffd92f",
    "error_5xx": "#d62728",
    "error_connect": "#8c564b",
    "error_stream": "#e377c2",
    "breaker_open": "#67000d",
    "shed": "#fdae6b",
}
OTHER_OUTCOME_COLOUR = "#bdbdbd"
# One colour per stage (by pipeline position), shared by the queue and the calls charts
STAGE_COLOURS: tuple[str, ...] = (
    E2E_COLOUR,
    TTFT_COLOUR,
    SERVICE_COLOUR,
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#bcbd22",
    "#7f7f7f",
    "#d62728",
)
PERCENTILE_MARKERS: tuple[tuple[str, float, str], ...] = (
    ("p50", 50.0, "o"),
    ("p95", 95.0, "s"),
    ("p99", 99.0, "D"),
)
# SLO target lines: one dash pattern per percentile, so two targets of a metric differ
SLO_LINESTYLES: dict[str, str | tuple[float, tuple[float, ...]]] = {
    "p50": ":",
    "p90": (0, (6, 2, 1, 2, 1, 2)),
    "p95": "--",
    "p99": "-.",
}
CDF_MAX_POINTS = 20_000
LEGEND_GAP_PT = 40.0  # from the bottom of the axes to the legend: clears ticks and x label
MAX_WINDOWS = 300  # latency over time: 1-s windows unless that would give more than this
QUEUE_MAX_POINTS = 600  # queue samples beyond this are shown as window means
RATE_WINDOWS = 100  # throughput: counts per window are noisy, so fewer, wider windows
NICE_WIDTHS_S = (1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0)


# --------------------------------------------------------------------------------------------
# helpers


def _num(value: Any) -> float:
    """A summary figure as a float; None (NaN in JSON) and anything odd become NaN."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        return math.nan
    return float(value)


def fmt_seconds(value: float) -> str:
    """A duration for a label: ``23.1 s``, ``4.87 s``, ``49 ms``; NaN as an em dash."""
    if not math.isfinite(value):
        return "—"
    if value == 0:
        return "0 s"
    if abs(value) >= 100:
        return f"{value:.0f} s"
    if abs(value) >= 1:
        return f"{value:.3g} s"
    if abs(value) >= 1e-3:
        return f"{value * 1e3:.3g} ms"
    return f"{value * 1e6:.3g} µs"


def _scenario(result: RunResult) -> Scenario | None:
    """The run's scenario, or None where it no longer validates (a moved trace file)."""
    try:
        return Scenario.model_validate(result.manifest.scenario)
    except ValidationError:
        return None


def _slo_targets(result: RunResult, metric: str) -> list[tuple[str, float]]:
    """``[(percentile name, target seconds)]`` the scenario's SLO names for ``metric``."""
    slo = result.manifest.scenario.get("slo") or {}
    targets = slo.get(metric) or {}
    out: list[tuple[str, float]] = []
    for name, value in targets.items():
        v = _num(value)
        if math.isfinite(v):
            out.append((name, v))
    return out


def _percentile_level(name: str) -> float:
    """``"p95"`` → 0.95, ``"p99_9"`` → 0.999; NaN for anything else."""
    try:
        return float(name.removeprefix("p").replace("_", ".")) / 100.0
    except ValueError:
        return math.nan


def _window_width(
    result: RunResult, width_s: float | None, max_windows: int = MAX_WINDOWS
) -> float:
    """``width_s`` if given, else the narrowest round width (1 s, 2 s, 5 s, …) that gives at
    most ``max_windows`` windows over the run's duration."""
    if width_s is not None:
        return float(width_s)
    duration = result.manifest.duration_s
    for width in NICE_WIDTHS_S:
        if duration / width <= max_windows:
            return width
    return float(math.ceil(duration / max_windows / 3600.0) * 3600.0)


def _windows(result: RunResult, width_s: float) -> dict[str, np.ndarray]:
    with warnings.catch_warnings():
        # all-NaN finishing times (a measured run of connection errors) warn in nanmax
        warnings.simplefilter("ignore", RuntimeWarning)
        return per_window(result, width_s)


def _per(width_s: float) -> str:
    return "per second" if width_s == 1 else f"per {width_s:g} s window"


def _empty_note(ax: Axes, text: str) -> None:
    ax.text(
        0.5,
        0.5,
        text,
        transform=ax.transAxes,
        ha="center",
        va="center",
        fontsize=12,
        color="#555555",
        bbox={"boxstyle": "round", "facecolor": "#f4f4f4", "edgecolor": "#cccccc"},
    )


def _finish(ax: Axes, *, ncol: int = 3, grid_axis: Literal["both", "x", "y"] = "both") -> None:
    """Grid, and the legend *below* the axes (under the x label), where it can never cover
    data whatever the run looks like."""
    ax.grid(True, axis=grid_axis, which="major", alpha=0.35)
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        shift = ScaledTranslation(0.0, -LEGEND_GAP_PT / 72.0, ax.figure.dpi_scale_trans)
        below = ax.transAxes + shift
        ax.legend(
            loc="upper center",
            bbox_to_anchor=(0.5, 0.0),
            bbox_transform=below,
            ncol=min(ncol, len(handles)),
            frameon=False,
        )


def _mark_run_window(ax: Axes, result: RunResult) -> None:
    """Shade the warm-up (excluded from the summary) and mark where the load stops."""
    warm = _num(result.manifest.scenario.get("warmup_s", 0.0))
    if math.isfinite(warm) and warm > 0:
        ax.axvspan(0.0, warm, color="#bbbbbb", alpha=0.25, lw=0, label="warm-up (not summarised)")
    ax.axvline(
        result.manifest.duration_s, color="#444444", ls=":", lw=1.2, label="load ends (duration)"
    )


def _answered_in_window(result: RunResult) -> np.ndarray:
    if len(result) == 0:
        return np.zeros(0, dtype=bool)
    return np.asarray(result.answered() & window_mask(result), dtype=bool)


# --------------------------------------------------------------------------------------------
# (1) distribution of latency


def _ecdf_points(sorted_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The empirical CDF of ``sorted_values`` as ``(x, fraction ≤ x)``. Beyond
    ``CDF_MAX_POINTS`` samples, the quantiles on a grid that is dense in the tail (so p99.9
    stays exact enough) instead of every sample: a million-point step line draws slowly and
    looks the same."""
    n = sorted_values.size
    if n <= CDF_MAX_POINTS:
        return sorted_values, np.arange(1, n + 1) / n
    levels = np.unique(
        np.concatenate([np.linspace(0.0, 1.0, 4001), 1.0 - np.logspace(-6, -2, 1000)])
    )
    return np.quantile(sorted_values, levels), levels


def latency_cdf(ax: Axes, result: RunResult, summary: Mapping[str, Any] | None = None) -> None:
    """Empirical CDFs of end-to-end latency and TTFT of the answered requests in the
    measurement window, on a log time axis, with the SLO targets as vertical lines and the
    p50/p95/p99 marked on each curve (plus the p95's 95 % interval from ``summary``)."""
    mask = _answered_in_window(result)
    latency = result.requests["latency_s"][mask].astype(float)
    ttft = result.requests["ttft_s"][mask].astype(float)
    latency = latency[np.isfinite(latency)]
    ttft_all = ttft
    ttft = ttft[np.isfinite(ttft)]
    same = ttft_all.size == 0 or bool(
        np.allclose(
            ttft_all, result.requests["latency_s"][mask].astype(float), equal_nan=True, rtol=1e-9
        )
    )
    curves: list[tuple[str, str, np.ndarray, str]] = [
        ("end-to-end", "latency_s", latency, E2E_COLOUR),
    ]
    if not same:
        curves.append(("TTFT", "ttft_s", ttft, TTFT_COLOUR))

    ax.set_xscale("log")
    plotted = False
    for name, metric, values, colour in curves:
        positive = np.sort(values[values > 0])
        if positive.size == 0:
            continue
        plotted = True
        xs, frac = _ecdf_points(positive)
        pcts = np.percentile(positive, [p for _, p, _ in PERCENTILE_MARKERS])
        stats = " · ".join(
            f"{label} {fmt_seconds(float(v))}"
            for (label, _, _), v in zip(PERCENTILE_MARKERS, pcts, strict=True)
        )
        ax.step(xs, frac, where="post", color=colour, lw=2, label=f"{name}: {stats}")
        for (_, p, marker), v in zip(PERCENTILE_MARKERS, pcts, strict=True):
            ax.plot([v], [p / 100], marker=marker, ms=7, color=colour, mec="black", mew=0.8, ls="")
        if summary is not None:
            ci = (summary.get(metric) or {}).get("ci95", {}).get("p95") or []
            lo, hi = (_num(ci[0]), _num(ci[1])) if len(ci) == 2 else (math.nan, math.nan)
            p95 = float(pcts[1])
            if math.isfinite(lo) and math.isfinite(hi) and lo > 0:
                ax.errorbar(
                    [p95],
                    [0.95],
                    xerr=[[max(p95 - lo, 0.0)], [max(hi - p95, 0.0)]],
                    fmt="none",
                    ecolor=colour,
                    elinewidth=1.5,
                    capsize=4,
                )
    slo_curves = [(name, metric, colour, "") for name, metric, _, colour in curves]
    if same:
        slo_curves.append(("TTFT", "ttft_s", TTFT_COLOUR, " (TTFT = latency here)"))
    levels: set[float] = set()
    for name, metric, colour, note in slo_curves:
        for pct, target in _slo_targets(result, metric):
            ax.axvline(
                target,
                color=colour,
                ls=SLO_LINESTYLES.get(pct, "--"),
                lw=1.5,
                alpha=0.9,
                label=f"SLO {name} {pct} ≤ {fmt_seconds(target)}{note}",
            )
            level = _percentile_level(pct)
            if math.isfinite(level):
                levels.add(level)
                # the curve must pass above-left of this point for the objective to hold
                ax.plot([target], [level], marker="X", ms=9, color=colour, mec="white", ls="")
    for level in sorted(levels):
        ax.axhline(level, color="#888888", ls=":", lw=1.0)
    if plotted:
        # marker shapes, once, in grey: which marker is which percentile
        for label, _, marker in PERCENTILE_MARKERS:
            ax.plot(
                [],
                [],
                marker=marker,
                ms=7,
                color="#999999",
                mec="black",
                mew=0.8,
                ls="",
                label=label,
            )
        if summary is not None:
            ax.errorbar(
                [], [], xerr=[[], []], fmt="none", ecolor="#555555", capsize=4, label="p95 95% CI"
            )
    else:
        _empty_note(ax, "no answered requests")
        ax.set_xlim(1e-2, 1e2)
    ax.set_ylim(0, 1.02)
    title = "Latency distribution (end-to-end and time to first token)"
    if same:
        title = "Latency distribution (end-to-end; no streaming stage, TTFT = latency)"
    ax.set_title(title)
    ax.set_xlabel("latency from intended arrival (s, log scale)")
    ax.set_ylabel("fraction of answered requests ≤ x")
    _finish(ax, ncol=2)


# --------------------------------------------------------------------------------------------
# (2) latency over time


def latency_over_time(
    ax: Axes,
    result: RunResult,
    summary: Mapping[str, Any] | None = None,
    width_s: float | None = None,
) -> None:
    """p50 and p95 end-to-end latency of the requests that *arrived* in each window (so a slow
    period is charged to the load that met it), with the SLO latency targets."""
    del summary
    width = _window_width(result, width_s)
    win = _windows(result, width)
    t = win["t_s"]
    p50, p95 = win["latency_p50_s"], win["latency_p95_s"]
    has_data = bool(np.isfinite(p95).any())
    if has_data:
        ax.fill_between(t, p50, p95, step="post", color=E2E_COLOUR, alpha=0.15, lw=0)
        ax.step(t, p95, where="post", color=E2E_COLOUR, lw=1.6, label="p95")
        ax.step(t, p50, where="post", color="#17becf", lw=1.2, label="p50")
    else:
        _empty_note(ax, "no answered requests")
    # only the targets for what is drawn: a p99 target against a p95 line would mislead
    for pct, target in _slo_targets(result, "latency_s"):
        if pct in ("p50", "p95"):
            ax.axhline(
                target,
                color=WAIT_COLOUR,
                ls=SLO_LINESTYLES[pct],
                lw=1.6,
                label=f"SLO {pct} ≤ {fmt_seconds(target)}",
            )
    _mark_run_window(ax, result)
    # by arrival time: nothing arrives after the load ends, so the drain is not drawn here
    ax.set_xlim(0, result.manifest.duration_s * 1.01)
    ax.set_ylim(bottom=0)
    ax.set_title(f"End-to-end latency over time ({_per(width)}, by arrival time)")
    ax.set_xlabel("arrival time since start of run (s)")
    ax.set_ylabel("latency (s)")
    _finish(ax, ncol=4)


# --------------------------------------------------------------------------------------------
# (3) throughput over time


def _offered(result: RunResult) -> tuple[np.ndarray, np.ndarray, str] | None:
    """The intended arrival rate as ``(t, rate, label)`` from the scenario's rate shape, or
    None for a trace (or a scenario that no longer loads): its offered load is its arrivals."""
    scenario = _scenario(result)
    if scenario is None or isinstance(scenario.arrivals, TraceArrivals):
        return None
    duration = scenario.duration_s
    rate = scenario.arrivals.rate
    t = np.unique(
        np.concatenate(
            [np.linspace(0.0, duration, 2001), np.clip(rate.breakpoints(duration), 0, duration)]
        )
    )
    # a step just before each breakpoint, so piecewise-constant shapes draw square edges
    t = np.unique(np.concatenate([t, np.clip(t - 1e-6 * duration, 0.0, duration)]))
    values = np.asarray(rate.rate(t, duration), dtype=float)
    return t, values, f"offered ({scenario.arrivals.kind}, {rate.kind} shape)"


def throughput_over_time(
    ax: Axes,
    result: RunResult,
    summary: Mapping[str, Any] | None = None,
    width_s: float | None = None,
) -> None:
    """Offered load (the scenario's intended rate) against what happened: arrivals per window,
    answers per window (by finishing time) and failures per window (by finishing time)."""
    del summary
    width = _window_width(result, width_s, RATE_WINDOWS)
    win = _windows(result, width)
    t = win["t_s"]
    offered = _offered(result)
    if offered is not None:
        ot, rate, label = offered
        ax.plot(ot, rate, color="black", lw=2.2, label=label, zorder=5)
        ax.step(
            t,
            win["arrivals_rps"],
            where="post",
            color=OFFERED_COLOUR,
            lw=0.9,
            alpha=0.8,
            label="arrivals (intended times)",
        )
    else:
        ax.step(
            t,
            win["arrivals_rps"],
            where="post",
            color="black",
            lw=1.4,
            label="offered = replayed arrivals",
        )
    ax.step(
        t,
        win["throughput_rps"],
        where="post",
        color=SERVICE_COLOUR,
        lw=1.3,
        label="answered (by finish time)",
    )
    errors = win["errors_rps"]
    if errors.any():
        ax.step(
            t, errors, where="post", color=ERROR_COLOUR, lw=1.3, label="failed (by finish time)"
        )
    else:
        ax.plot([], [], color=ERROR_COLOUR, lw=1.3, label="failed: none")
    if len(result) == 0:
        _empty_note(ax, "no requests in this run")
    _mark_run_window(ax, result)
    ax.set_xlim(0, max(float(t[-1]) + width, result.manifest.duration_s) if t.size else 1.0)
    ax.set_ylim(0, max(ax.get_ylim()[1], 1.0))
    ax.set_title(f"Offered load and throughput over time ({_per(width)})")
    ax.set_xlabel("time since start of run (s)")
    ax.set_ylabel("rate (req/s)")
    _finish(ax, ncol=3)


# --------------------------------------------------------------------------------------------
# (4) per-stage breakdown


def _stage_figures(result: RunResult, stage: str, in_window: np.ndarray) -> tuple[float, ...]:
    """``(calls, mean wait, mean service, p95 of wait+service)`` over the requests in the
    window that reached ``stage`` (its service time is known)."""
    wait_col, service_col = stage_columns(stage)
    if wait_col not in result.requests or service_col not in result.requests:
        return 0.0, math.nan, math.nan, math.nan
    service = result.requests[service_col][in_window].astype(float)
    wait = result.requests[wait_col][in_window].astype(float)
    reached = np.isfinite(service)
    if not reached.any():
        return 0.0, math.nan, math.nan, math.nan
    service = service[reached]
    wait = np.nan_to_num(wait[reached], nan=0.0)
    total = wait + service
    return (
        float(reached.sum()),
        float(wait.mean()),
        float(service.mean()),
        float(np.percentile(total, 95)),
    )


def stage_breakdown(ax: Axes, result: RunResult, summary: Mapping[str, Any] | None = None) -> None:
    """Where the time goes: per stage, a bar of mean queue wait + mean service stacked, and
    under it a bar of the p95 of (wait + service), for requests in the measurement window."""
    del summary
    stages = result.stages
    in_window = window_mask(result) if len(result) else np.zeros(0, dtype=bool)
    figures = [_stage_figures(result, s, in_window) for s in stages]
    bar_h = 0.38
    y_mean = np.arange(len(stages), dtype=float)
    y_p95 = y_mean + bar_h + 0.02
    waits = np.array([f[1] for f in figures])
    services = np.array([f[2] for f in figures])
    p95s = np.array([f[3] for f in figures])
    w0, s0, p0 = (np.nan_to_num(a, nan=0.0) for a in (waits, services, p95s))
    reached = [int(f[0]) > 0 for f in figures]
    y_label = y_mean + (bar_h + 0.02) / 2
    if any(reached):
        ax.barh(y_mean, w0, height=bar_h, color=WAIT_COLOUR, alpha=0.85, label="mean queue wait")
        ax.barh(
            y_mean,
            s0,
            left=w0,
            height=bar_h,
            color=SERVICE_COLOUR,
            alpha=0.85,
            label="mean service",
        )
        ax.barh(
            y_p95,
            p0,
            height=bar_h,
            color="#9ecae1",
            edgecolor=E2E_COLOUR,
            hatch="//",
            label="p95 of wait + service",
        )
        top = float(max(np.max(np.concatenate([w0 + s0, p0])), 1e-6))
        ax.set_xlim(0, top * 1.45)
    else:
        top = 1.0
        ax.set_xlim(0, 1)
        _empty_note(ax, "no request reached any stage" if stages else "no stages recorded")
    pad = top * 0.01
    for k, hit in enumerate(reached):
        if not hit:
            ax.text(pad, y_label[k], "not reached", va="center", fontsize=9, color="#555555")
            continue
        label = f"{fmt_seconds(w0[k])} wait + {fmt_seconds(s0[k])} service"
        ax.text(w0[k] + s0[k] + pad, y_mean[k], label, va="center", fontsize=9)
        ax.text(p0[k] + pad, y_p95[k], f"p95 {fmt_seconds(p0[k])}", va="center", fontsize=9)
    if stages:
        ax.set_yticks(y_label, stages)
        ax.set_ylim(len(stages) - 0.5 + bar_h, -0.5)  # pipeline order, first stage on top
    ax.set_title("Where the time goes: per-stage wait and service")
    ax.set_xlabel("time per request at the stage (s)")
    ax.set_ylabel("stage (pipeline order)")
    _finish(ax, ncol=3, grid_axis="x")


# --------------------------------------------------------------------------------------------
# (5) requests in flight and queue lengths


def _in_flight_from_requests(result: RunResult, width: float) -> tuple[np.ndarray, np.ndarray]:
    """Requests in the system at each window start, from arrival and finishing times."""
    arrival = result.requests["arrival_s"].astype(float)
    finish = arrival + result.requests["latency_s"].astype(float)
    finish = np.where(np.isfinite(finish), finish, arrival)
    end = max(result.manifest.duration_s, float(finish.max()) if finish.size else 0.0)
    t = np.arange(0.0, end + width, width)
    started = np.searchsorted(np.sort(arrival), t, side="right")
    done = np.searchsorted(np.sort(finish), t, side="right")
    return t, (started - done).astype(float)


def _binned(
    t: np.ndarray, y: np.ndarray, width: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Samples ``y`` at times ``t`` → per-window ``(start, mean, min, max)``."""
    idx = np.floor(t / width).astype(np.int64)
    keys, inverse, counts = np.unique(idx, return_inverse=True, return_counts=True)
    values = y.astype(float)
    mean = np.bincount(inverse, weights=values) / counts
    low = np.full(keys.size, np.inf)
    high = np.full(keys.size, -np.inf)
    np.minimum.at(low, inverse, values)
    np.maximum.at(high, inverse, values)
    return keys * width, mean, low, high


def _series_line(ax: Axes, t: np.ndarray, y: np.ndarray, width: float | None, **style: Any) -> None:
    """A sampled series as a step line; with ``width``, its window means plus a min–max band."""
    if width is None:
        ax.step(t, y, where="post", **style)
        return
    start, mean, low, high = _binned(t, y, width)
    ax.fill_between(start, low, high, step="post", color=style["color"], alpha=0.12, lw=0)
    ax.step(start, mean, where="post", **style)


def queues_over_time(ax: Axes, result: RunResult, summary: Mapping[str, Any] | None = None) -> None:
    """Requests in flight and waiting in each stage's queue, sampled over time (from the run's
    time series; a run without one shows in-flight reconstructed from the request table).
    Long runs are shown as window means with a min–max band, so the trend stays readable."""
    del summary
    series = result.timeseries
    title = "Requests in flight and queued per stage over time"
    if series is not None and "t_s" in series and series["t_s"].size:
        t = series["t_s"].astype(float)
        width: float | None = None
        if t.size > QUEUE_MAX_POINTS:
            width = _window_width(result, None, QUEUE_MAX_POINTS)
            title += f" (mean per {width:g} s, band: min–max)"
        if "in_flight" in series:
            _series_line(
                ax,
                t,
                series["in_flight"],
                width,
                color="black",
                lw=2,
                label="in flight (whole pipeline)",
            )
        for k, stage in enumerate(result.stages):
            col = f"{stage}_queue"
            if col not in series:
                continue
            q = series[col]
            label = f"{stage} queue" + ("" if q.any() else " (always empty)")
            colour = STAGE_COLOURS[k % len(STAGE_COLOURS)]
            _series_line(ax, t, q, width, color=colour, lw=1.4, label=label)
        x_end = float(t[-1])
    elif len(result):
        t, n = _in_flight_from_requests(result, _window_width(result, None, QUEUE_MAX_POINTS))
        ax.step(
            t,
            n,
            where="post",
            color="black",
            lw=2,
            label="in flight (from request table; no queue samples)",
        )
        x_end = float(t[-1])
    else:
        _empty_note(ax, "no requests and no time series")
        x_end = 0.0
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    _mark_run_window(ax, result)
    ax.set_xlim(0, max(x_end, result.manifest.duration_s))
    ax.set_ylim(0, max(ax.get_ylim()[1], 5.0))  # an idle run still gets a readable count axis
    ax.set_title(title)
    ax.set_xlabel("time since start of run (s)")
    ax.set_ylabel("requests")
    _finish(ax, ncol=3)


# --------------------------------------------------------------------------------------------
# (6) outcomes over time and (7) calls per stage, from the run's per-interval counts


def _sample_interval(t: np.ndarray) -> float:
    """The time series' sampling interval (1 s when it cannot tell)."""
    steps = np.diff(t)
    steps = steps[steps > 0]
    return float(np.median(steps)) if steps.size else 1.0


def _count_series(result: RunResult, names: Sequence[str]) -> bool:
    series = result.timeseries
    return (
        series is not None
        and "t_s" in series
        and series["t_s"].size > 0
        and all(name in series for name in names)
    )


def has_outcome_series(result: RunResult) -> bool:
    """Whether the run's time series has per-interval arrivals and completions (older runs
    and measured runs may not)."""
    return _count_series(result, ["arrivals"]) and any(
        f"completed_{name}" in (result.timeseries or {}) for name in OUTCOMES
    )


def _call_stages(result: RunResult) -> list[tuple[int, str]]:
    """``(pipeline position, stage)`` of each non-cache stage with per-interval calls sent
    and served in the time series."""
    try:
        caches = {
            s.name
            for s in Profile.model_validate(result.manifest.profile).stages
            if isinstance(s, CacheStage)
        }
    except ValidationError:
        caches = set()
    return [
        (k, stage)
        for k, stage in enumerate(result.stages)
        if stage not in caches and _count_series(result, [f"{stage}_sent", f"{stage}_served"])
    ]


def has_stage_call_series(result: RunResult) -> bool:
    """Whether the run's time series has calls sent and served per interval for a stage."""
    return bool(_call_stages(result))


class _Intervals:
    """The time series' per-interval counts, merged into at most ``max_windows`` windows of
    whole intervals so a long run stays readable; ``rate`` gives counts per second."""

    def __init__(self, series: Mapping[str, np.ndarray], max_windows: int = RATE_WINDOWS) -> None:
        t = series["t_s"].astype(float)
        self.series = series
        self.dt = _sample_interval(t)
        self.factor = max(1, math.ceil(t.size / max_windows))
        self.starts = np.arange(0, t.size, self.factor)
        ends = np.append(self.starts[1:], t.size)
        self.widths = (ends - self.starts) * self.dt
        self.width = self.factor * self.dt
        self.edges = np.append(t[self.starts], t[-1] + self.dt)

    def total(self, name: str) -> int:
        return int(np.asarray(self.series[name]).sum())

    def rate(self, name: str) -> np.ndarray:
        counts = np.add.reduceat(np.asarray(self.series[name], dtype=float), self.starts)
        return np.asarray(counts / self.widths, dtype=float)

    @staticmethod
    def steps(values: np.ndarray) -> np.ndarray:
        """Per-window values for a ``step="post"`` plot over ``edges``: the last repeated."""
        return np.append(values, values[-1:])

    def per(self) -> str:
        if self.factor == 1:
            return f"per {self.dt:g} s interval"
        return f"per {self.width:g} s window"


def _no_series(ax: Axes, result: RunResult, what: str) -> None:
    _empty_note(ax, f"no {what} in this run's time series (an older or measured run)")
    _mark_run_window(ax, result)
    ax.set_xlim(0, max(result.manifest.duration_s, 1.0))


def outcomes_over_time(
    ax: Axes, result: RunResult, summary: Mapping[str, Any] | None = None
) -> None:
    """Requests completed per interval, stacked by outcome (answers green at the bottom,
    failures in warm colours above), arrivals per interval as a line, and on a second y axis
    the p95 latency of the answers completed in the trailing window (the engine's
    ``latency_p95_s`` series), with the SLO's p95 target."""
    del summary
    series = result.timeseries
    title = "Outcomes over time: completions by outcome, arrivals and p95 latency"
    if series is None or not has_outcome_series(result):
        _no_series(ax, result, "per-interval outcome counts")
        ax.set_title(title)
        ax.set_xlabel("time since start of run (s)")
        ax.set_ylabel("requests per second")
        _finish(ax, ncol=3)
        return
    iv = _Intervals(series)
    names = [f"completed_{o}" for o in OUTCOMES if f"completed_{o}" in series]
    names += sorted(k for k in series if k.startswith("completed_") and k not in names)
    occurring = [name for name in names if iv.total(name) > 0]
    base = np.zeros(iv.starts.size)
    for name in occurring:
        outcome = name.removeprefix("completed_")
        top = base + iv.rate(name)
        ax.fill_between(
            iv.edges,
            iv.steps(base),
            iv.steps(top),
            step="post",
            color=OUTCOME_COLOURS.get(outcome, OTHER_OUTCOME_COLOUR),
            alpha=0.9 if outcome in ANSWERED else 0.85,
            lw=0,
            label=f"{outcome} ({iv.total(name):,})",
        )
        base = top
    ax.step(
        iv.edges,
        iv.steps(iv.rate("arrivals")),
        where="post",
        color="black",
        lw=1.3,
        label=f"arrivals ({iv.total('arrivals'):,})",
    )
    if not occurring:
        _empty_note(ax, "no request completed")
    if "latency_p95_s" in series:
        twin = ax.twinx()
        twin.spines["right"].set_visible(True)
        t = series["t_s"].astype(float)
        p95 = series["latency_p95_s"].astype(float)
        # the value of interval k covers the trailing window that ends with the interval
        twin.plot(t + iv.dt, p95, color=P95_COLOUR, lw=1.6)
        ax.plot([], [], color=P95_COLOUR, lw=1.6, label="p95 latency (right axis)")
        for pct, target in _slo_targets(result, "latency_s"):
            if pct == "p95":
                twin.axhline(target, color=P95_COLOUR, ls="--", lw=1.3)
                ax.plot(
                    [],
                    [],
                    color=P95_COLOUR,
                    ls="--",
                    lw=1.3,
                    label=f"SLO p95 ≤ {fmt_seconds(target)}",
                )
        twin.set_ylim(bottom=0)
        if not np.isfinite(p95).any():
            twin.set_ylim(0, 1)
        twin.set_ylabel("p95 latency, trailing 10 s (s)", color=P95_COLOUR)
        twin.tick_params(axis="y", colors=P95_COLOUR)
    _mark_run_window(ax, result)
    ax.set_xlim(0, max(float(iv.edges[-1]), result.manifest.duration_s))
    ax.set_ylim(0, max(ax.get_ylim()[1], 1.0))
    ax.set_title(f"{title} ({iv.per()})")
    ax.set_xlabel("time since start of run (s)")
    ax.set_ylabel("requests per second (by finish time)")
    _finish(ax, ncol=4)


def stage_calls_over_time(
    ax: Axes, result: RunResult, summary: Mapping[str, Any] | None = None
) -> None:
    """Per non-cache stage: calls sent to it per interval (retries included) as a solid line
    and calls it finished per interval (abandoned ones included: its throughput) as a dashed
    line in the same colour. Sent above served means calls refused or piling up; sent far
    above the request rate means retries amplify the load."""
    series = result.timeseries
    stages = _call_stages(result)
    title = "Calls per stage: sent vs served"
    if series is None or not stages:
        _no_series(ax, result, "per-interval calls sent and served")
        ax.set_title(title)
        ax.set_xlabel("time since start of run (s)")
        ax.set_ylabel("calls per second")
        _finish(ax, ncol=2)
        return
    iv = _Intervals(series)
    amplification = (summary or {}).get("retry_amplification") or {}
    for k, stage in stages:
        colour = STAGE_COLOURS[k % len(STAGE_COLOURS)]
        sent, served = f"{stage}_sent", f"{stage}_served"
        amp = _num(amplification.get(stage)) if isinstance(amplification, Mapping) else math.nan
        extra = f"; ×{amp:.2f} per request reaching it" if math.isfinite(amp) else ""
        ax.step(
            iv.edges,
            iv.steps(iv.rate(sent)),
            where="post",
            color=colour,
            lw=1.7,
            label=f"{stage} sent ({iv.total(sent):,}{extra})",
        )
        ax.step(
            iv.edges,
            iv.steps(iv.rate(served)),
            where="post",
            color=colour,
            lw=1.3,
            ls="--",
            label=f"{stage} served ({iv.total(served):,})",
        )
    if not any(iv.total(f"{stage}_sent") for _, stage in stages):
        _empty_note(ax, "no calls were sent")
    _mark_run_window(ax, result)
    ax.set_xlim(0, max(float(iv.edges[-1]), result.manifest.duration_s))
    ax.set_ylim(0, max(ax.get_ylim()[1], 1.0))
    ax.set_title(f"{title} ({iv.per()})")
    ax.set_xlabel("time since start of run (s)")
    ax.set_ylabel("calls per second")
    _finish(ax, ncol=2)
