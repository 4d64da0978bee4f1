"""The fault timeline: what a fault did to latency, errors and the work in flight, and how long
the system took to get back to normal after it.

Like :mod:`ragstress.report.charts`, the chart draws on the Axes it is given (plus two twin
y axes it makes on it) and touches nothing else: no figure is created and no file written.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.ticker import FuncFormatter, MaxNLocator
from matplotlib.transforms import blended_transform_factory
from pydantic import ValidationError

from ragstress.analysis.recovery import FaultWindow, Recovery, fault_windows, recovery_times
from ragstress.report.charts import (
    NICE_WIDTHS_S,
    OTHER_OUTCOME_COLOUR,
    OUTCOME_COLOURS,
    P95_COLOUR,
    _empty_note,
    _finish,
    _in_flight_from_requests,
    _mark_run_window,
    _num,
    fmt_seconds,
)
from ragstress.results.schema import ANSWERED, OUTCOMES, RunResult

__all__ = ["fault_timeline", "has_faults"]

FAULT_COLOUR = "#9467bd"
RECOVERED_COLOUR = "#1a7f37"
NOT_RECOVERED_COLOUR = "#b2182b"
P50_COLOUR = "#6baed6"
P99_COLOUR = "#54278f"
IN_FLIGHT_COLOUR = "#444444"
SLO_COLOUR = "#d62728"
ERROR_ALPHA = 0.3
MAX_WINDOWS = 150  # percentile windows over the run: fewer than this
MIN_ARRIVALS_PER_WINDOW = 40  # ... each with enough arrivals for a p95 to mean something
LABEL_ROW_Y = 0.985  # axes fraction of the top of the first row of fault labels
ROW_STEP = 0.065  # between rows of labels, in axes fraction
LABEL_FONTSIZE = 9.0
RECOVERY_FONTSIZE = 9.5
CHAR_EM = 0.62  # a character's width in ems, generously (labels must not collide)
MIN_HEADROOM = 1.3  # each axis's data reaches at most 1 / headroom of the height ...
MAX_HEADROOM = 3.0  # ... leaving the top for the labels


def has_faults(result: RunResult) -> bool:
    """Whether the run's scenario has a fault plan (the fault timeline's ``available=``)."""
    try:
        return bool(fault_windows(result.manifest.scenario))
    except ValidationError:
        return False


# --------------------------------------------------------------------------------------------
# per-window figures, by arrival time


@dataclass(frozen=True)
class _Windows:
    edges: np.ndarray
    arrivals: np.ndarray
    p50: np.ndarray
    p95: np.ndarray
    p99: np.ndarray
    error_pct: dict[str, np.ndarray]  # outcome → % of the window's arrivals, failures only
    totals: dict[str, int]  # outcome → requests over the run (arrivals before the end)

    @property
    def width(self) -> float:
        return float(self.edges[1] - self.edges[0])


def _width(result: RunResult) -> float:
    """The narrowest round window that gives at most MAX_WINDOWS windows over the run and, at
    the run's mean arrival rate, about MIN_ARRIVALS_PER_WINDOW arrivals in each."""
    duration = max(result.manifest.duration_s, 1e-9)
    rate = len(result) / duration
    for width in NICE_WIDTHS_S:
        if duration / width <= MAX_WINDOWS and rate * width >= MIN_ARRIVALS_PER_WINDOW:
            return width
    return max(w for w in NICE_WIDTHS_S if w <= max(duration / 10, NICE_WIDTHS_S[0]))


def _per_window(result: RunResult, width: float) -> _Windows:
    duration = result.manifest.duration_s
    n_edges = max(math.ceil(duration / width - 1e-9), 1) + 1
    edges = np.arange(n_edges) * width
    edges[-1] = min(edges[-1], duration)  # the last window ends with the load
    n_win = edges.size - 1
    arrival = np.asarray(result.requests["arrival_s"], dtype=float)
    inside = (arrival >= 0) & (arrival < duration)
    arrival = arrival[inside]
    outcome = np.asarray(result.requests["outcome"])[inside]
    latency = np.asarray(result.requests["latency_s"], dtype=float)[inside]
    idx = np.clip(np.searchsorted(edges, arrival, side="right") - 1, 0, n_win - 1)
    arrivals = np.bincount(idx, minlength=n_win).astype(float)
    answered = np.isin(outcome, list(ANSWERED)) & np.isfinite(latency)
    pcts = np.full((3, n_win), math.nan)
    order = np.argsort(idx[answered], kind="stable")
    lat = latency[answered][order]
    bounds = np.searchsorted(idx[answered][order], np.arange(n_win + 1))
    for w in range(n_win):
        values = lat[bounds[w] : bounds[w + 1]]
        if values.size:
            pcts[:, w] = np.percentile(values, [50, 95, 99])
    kinds = [o for o in OUTCOMES if o not in ANSWERED]
    kinds += sorted({str(o) for o in np.unique(outcome)} - set(OUTCOMES))
    error_pct: dict[str, np.ndarray] = {}
    totals: dict[str, int] = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        for kind in kinds:
            hit = outcome == kind
            if not hit.any():
                continue
            counts = np.bincount(idx[hit], minlength=n_win).astype(float)
            error_pct[kind] = np.where(arrivals > 0, 100.0 * counts / arrivals, 0.0)
            totals[kind] = int(hit.sum())
    return _Windows(edges, arrivals, pcts[0], pcts[1], pcts[2], error_pct, totals)


def _steps(values: np.ndarray) -> np.ndarray:
    """Per-window values for a ``step="post"`` plot over the window edges."""
    return np.append(values, values[-1:])


def _nice_top(value: float) -> float:
    """A round upper limit for a percentage axis at or above ``value``."""
    for top in (5.0, 10.0, 20.0, 25.0, 50.0, 100.0):
        if value <= top:
            return top
    return 100.0


# --------------------------------------------------------------------------------------------
# layers


def _draw_errors(ax: Axes, win: _Windows, headroom: float) -> Axes:
    """Error share by kind, stacked, on a twin axis on the right (behind the latency lines)."""
    err = ax.twinx()
    err.spines["right"].set_visible(True)
    err.spines["right"].set_color(SLO_COLOUR)
    base = np.zeros(win.edges.size - 1)
    for kind, pct in win.error_pct.items():
        top = base + pct
        colour = OUTCOME_COLOURS.get(kind, OTHER_OUTCOME_COLOUR)
        err.fill_between(
            win.edges,
            _steps(base),
            _steps(top),
            step="post",
            color=colour,
            alpha=ERROR_ALPHA,
            lw=0,
        )
        ax.fill_between(
            [],
            [],
            [],
            color=colour,
            alpha=ERROR_ALPHA + 0.15,
            lw=0,
            label=f"{kind}, % of arrivals (right; {win.totals[kind]:,} in all)",
        )
        base = top
    # bands reaching 100 % fill the height: they are the background, not behind the labels
    peak = float(np.nanmax(base)) if base.size else 0.0
    err.set_ylim(0, _nice_top(min(peak * headroom, 100.0)))
    err.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g} %"))
    err.set_ylabel("failed requests (% of arrivals)", color=SLO_COLOUR)
    err.tick_params(axis="y", colors=SLO_COLOUR)
    return err


def _draw_in_flight(
    ax: Axes, result: RunResult, width: float, headroom: float, outer: bool
) -> Axes:
    """Requests in the system on a twin axis; with ``outer`` (the error axis holds the right
    side) its spine is set off further to the right."""
    flight = ax.twinx()
    flight.spines["right"].set_visible(True)
    if outer:
        flight.spines["right"].set_position(("outward", 62))
    flight.spines["right"].set_color(IN_FLIGHT_COLOUR)
    series = result.timeseries
    if series is not None and "t_s" in series and "in_flight" in series and series["t_s"].size:
        t = series["t_s"].astype(float)
        n = series["in_flight"].astype(float)
        source = "in flight"
    else:
        t, n = _in_flight_from_requests(result, min(width, 1.0))
        source = "in flight (from request table)"
    keep = t <= result.manifest.duration_s
    flight.step(t[keep], n[keep], where="post", color=IN_FLIGHT_COLOUR, lw=1.1, alpha=0.85)
    side = "outer right axis" if outer else "right axis"
    ax.plot([], [], color=IN_FLIGHT_COLOUR, lw=1.1, label=f"{source} ({side})")
    top = float(n[keep].max()) if keep.any() else 0.0
    # the peak below the fault and recovery labels
    flight.set_ylim(0, max(top * headroom, 5.0))
    flight.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=6))
    flight.set_ylabel("requests in flight", color=IN_FLIGHT_COLOUR)
    flight.tick_params(axis="y", colors=IN_FLIGHT_COLOUR)
    return flight


def _draw_latency(ax: Axes, win: _Windows) -> bool:
    if not np.isfinite(win.p95).any():
        return False
    ax.step(win.edges, _steps(win.p50), where="post", color=P50_COLOUR, lw=1.3, label="p50")
    ax.step(win.edges, _steps(win.p95), where="post", color=P95_COLOUR, lw=2.0, label="p95")
    ax.step(
        win.edges, _steps(win.p99), where="post", color=P99_COLOUR, lw=1.2, ls="--", label="p99"
    )
    # a long stretch where requests arrived but none was answered has no latency line: say so
    gap = (win.arrivals > 0) & ~np.isfinite(win.p95)
    best, start = (0, 0), None
    for k, flag in enumerate([*gap.tolist(), False]):
        if flag and start is None:
            start = k
        elif not flag and start is not None:
            best = max(best, (k - start, start))
            start = None
    length, first = best
    if length >= max(3, 0.1 * gap.size):
        middle = 0.5 * (win.edges[first] + win.edges[first + length])
        ax.text(
            middle,
            0.3,
            "no answered requests:\nno latency to draw",
            transform=blended_transform_factory(ax.transData, ax.transAxes),
            ha="center",
            va="center",
            fontsize=9.5,
            style="italic",
            color="#555555",
        )
    return True


def _rows(spans: list[tuple[float, float]], gap: float) -> list[int]:
    """A row for each ``(x0, x1)`` so that spans closer than ``gap`` never share a row."""
    ends: list[float] = []
    rows: list[int] = []
    for x0, x1 in spans:
        for row, end in enumerate(ends):
            if x0 >= end + gap:
                ends[row] = x1
                rows.append(row)
                break
        else:
            ends.append(x1)
            rows.append(len(ends) - 1)
    return rows


@dataclass(frozen=True)
class _Label:
    """A text at the top of the chart: where it is anchored and which way it runs."""

    text: str
    x: float
    ha: str
    span: tuple[float, float]  # the x range it (roughly) covers, in data units


class _Layout:
    """Rows at the top of the axes for the fault labels, then for the recovery brackets, so
    that no two overlap, and the headroom the data needs to stay below them all."""

    def __init__(self, ax: Axes, duration: float) -> None:
        self.duration = duration
        # data units per point of text: the axes' width in points (less what the two right
        # axes and constrained layout take), over the time axis
        width_pt = ax.bbox.width * 72.0 / ax.figure.dpi * 0.85
        self.per_pt = duration / max(width_pt, 1.0)

    def label(self, text: str, x: float, fontsize: float, right_edge: float) -> _Label:
        """``text`` starting at ``x``, or ending at ``right_edge`` where it would run past the
        end of the axes."""
        width = len(text) * CHAR_EM * fontsize * self.per_pt
        if x + width <= self.duration:
            return _Label(text, x, "left", (x, x + width))
        return _Label(text, right_edge, "right", (right_edge - width, right_edge))

    def gap(self) -> float:
        return 0.01 * self.duration


def _label_y(row: int) -> float:
    return LABEL_ROW_Y - ROW_STEP * row


def _bracket_y(label_rows: int, row: int) -> float:
    """Arrow height of recovery row ``row`` under ``label_rows`` rows of fault labels (its
    text sits just above the arrow)."""
    return _label_y(label_rows) - 0.06 - ROW_STEP * row


def _draw_windows(
    ax: Axes, windows: list[FaultWindow], labels: list[_Label], rows: list[int]
) -> None:
    """Each fault window shaded with solid edges, its stage and kind written at the top."""
    top = blended_transform_factory(ax.transData, ax.transAxes)
    for k, (w, label, row) in enumerate(zip(windows, labels, rows, strict=True)):
        ax.axvspan(
            w.start_s,
            w.end_s,
            facecolor=FAULT_COLOUR,
            alpha=0.18,
            lw=0,
            label="fault window (edges: solid purple)" if k == 0 else None,
        )
        # solid edges: the shading alone is hard to see over the error bands
        for x in (w.start_s, w.end_s):
            ax.axvline(x, color=FAULT_COLOUR, lw=1.3, alpha=0.9)
        ax.text(
            label.x,
            _label_y(row),
            label.text,
            transform=top,
            ha=label.ha,
            va="top",
            fontsize=LABEL_FONTSIZE,
            color="#3f007d",
            bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "edgecolor": "none"},
            zorder=6,
        )


def _recovery_text(rec: Recovery, duration: float) -> str:
    if rec.recovered and rec.recovery_s is not None:
        return f"recovered in {fmt_seconds(rec.recovery_s)}"
    if not rec.judged:
        return "recovery not judged (no baseline, no SLO)"
    return f"not recovered by end of load ({duration:g} s)"


def _recovery_stop(rec: Recovery, duration: float) -> float:
    return rec.recovered_at_s if rec.recovered_at_s is not None else duration


def _draw_recoveries(
    ax: Axes,
    recoveries: list[Recovery],
    labels: list[_Label],
    ys: list[float],
    duration: float,
) -> None:
    """A bracket from each window's end to the moment the system was normal again (or an
    arrow to the end of the load where it never was), with the time written above it."""
    where = blended_transform_factory(ax.transData, ax.transAxes)
    drawn_line = False
    for rec, label, y in zip(recoveries, labels, ys, strict=True):
        end = rec.window.end_s
        stop = _recovery_stop(rec, duration)
        if rec.recovered:
            colour, style = RECOVERED_COLOUR, "|-|"
            ax.axvline(
                stop,
                color=RECOVERED_COLOUR,
                ls="--",
                lw=1.3,
                label=None if drawn_line else "back to normal (recovered at)",
            )
            drawn_line = True
        else:
            colour, style = NOT_RECOVERED_COLOUR, "-|>"
        if stop > end and rec.judged:
            ax.annotate(
                "",
                xy=(stop, y),
                xytext=(end, y),
                xycoords=where,
                textcoords=where,
                arrowprops={
                    "arrowstyle": style,
                    "color": colour,
                    "lw": 1.6,
                    "shrinkA": 0,
                    "shrinkB": 0,
                    "mutation_scale": 10,
                },
                zorder=6,
            )
        ax.text(
            label.x,
            y + 0.015,
            label.text,
            transform=where,
            ha=label.ha,
            va="bottom",
            fontsize=RECOVERY_FONTSIZE,
            fontweight="bold",
            color=colour,
            bbox={
                "boxstyle": "round,pad=0.2",
                "facecolor": "white",
                "edgecolor": "none",
                "alpha": 0.85,
            },
            zorder=7,
        )


def _draw_limits(ax: Axes, result: RunResult, recoveries: list[Recovery]) -> None:
    """The SLO p95 target and the p95 limit recovery was judged against (one line when they
    are the same), and the pre-fault baseline in the legend."""
    slo = (result.manifest.scenario.get("slo") or {}).get("latency_s") or {}
    target = _num(slo.get("p95"))
    judged = next((r for r in recoveries if r.judged), None)
    limit = judged.latency_limit_s if judged is not None else None
    same = limit is not None and math.isclose(limit, target)
    if math.isfinite(target) and not same:
        ax.axhline(
            target, color=SLO_COLOUR, ls="--", lw=1.4, label=f"SLO p95 ≤ {fmt_seconds(target)}"
        )
    if judged is None or limit is None:
        return
    err = 100 * (judged.error_limit or 0.0)
    if same:
        why = " (the SLO target)"
    elif judged.baseline_p95_s is not None and limit > judged.baseline_p95_s:
        why = f" ({limit / judged.baseline_p95_s:.2g} × baseline)"
    else:
        why = ""
    ax.axhline(
        limit,
        color=RECOVERED_COLOUR,
        ls=":",
        lw=1.6,
        label=(
            f"recovered = p95 ≤ {fmt_seconds(limit)}{why} and errors ≤ {err:.3g} % "
            f"for {fmt_seconds(judged.hold_s)}"
        ),
    )
    if judged.baseline_p95_s is not None and judged.baseline_error_share is not None:
        ax.plot(
            [],
            [],
            ls="",
            label=(
                f"pre-fault baseline: p95 {fmt_seconds(judged.baseline_p95_s)}, "
                f"errors {100 * judged.baseline_error_share:.3g} %"
            ),
        )


# --------------------------------------------------------------------------------------------


def fault_timeline(ax: Axes, result: RunResult, summary: Mapping[str, Any] | None = None) -> None:
    """Latency p50/p95/p99 of the requests arriving in each window (left axis), their error
    share by kind stacked behind (right axis, %), requests in flight (outer right axis), each
    fault window shaded and named, and for each window the time from its end until the system
    was back to normal (see :mod:`ragstress.analysis.recovery` for the definition)."""
    del summary
    duration = result.manifest.duration_s
    title = "Fault timeline: latency, errors and requests in flight"
    try:
        windows = fault_windows(result.manifest.scenario)
    except ValidationError:
        windows = []
    recoveries = recovery_times(result) if windows and len(result) else []

    # the top of the axes: fault labels in rows, recovery brackets in rows below them
    layout = _Layout(ax, duration)
    window_labels = [
        layout.label(f" {w.label}", w.start_s, LABEL_FONTSIZE, w.end_s) for w in windows
    ]
    label_rows = _rows([lb.span for lb in window_labels], layout.gap())
    n_label_rows = max(label_rows, default=-1) + 1
    recovery_labels = [
        layout.label(
            f" {_recovery_text(rec, duration)}",
            rec.window.end_s,
            RECOVERY_FONTSIZE,
            _recovery_stop(rec, duration),
        )
        for rec in recoveries
    ]
    spans = [
        (min(lb.span[0], rec.window.end_s), max(lb.span[1], _recovery_stop(rec, duration)))
        for lb, rec in zip(recovery_labels, recoveries, strict=True)
    ]
    bracket_ys = [_bracket_y(n_label_rows, row) for row in _rows(spans, layout.gap())]
    lowest = min([*bracket_ys, _label_y(max(n_label_rows - 1, 0)) - 0.05])
    # the data stays below the lowest label (and its bracket ticks) with a small gap
    headroom = min(max(1.0 / max(lowest - 0.05, 0.3), MIN_HEADROOM), MAX_HEADROOM)

    width = _width(result)
    win = _per_window(result, width) if len(result) else None
    # the legend lists ax's artists in the order drawn: latency first, then errors, in flight
    if win is None or not _draw_latency(ax, win):
        _empty_note(ax, "no answered requests")
    _draw_limits(ax, result, recoveries)
    twins: list[Axes] = []
    if win is not None and win.error_pct:
        twins.append(_draw_errors(ax, win, headroom))
    if len(result):
        twins.append(_draw_in_flight(ax, result, width, headroom, outer=bool(twins)))
    if twins:
        # the latency lines and labels above the error bands and the in-flight line
        ax.set_zorder(max(t.get_zorder() for t in twins) + 1)
        ax.patch.set_visible(False)
    if windows:
        _draw_windows(ax, windows, window_labels, label_rows)
    else:
        _empty_note(ax, "no faults in this scenario")
    _draw_recoveries(ax, recoveries, recovery_labels, bracket_ys, duration)
    _mark_run_window(ax, result)
    ax.set_xlim(0, duration)
    ax.set_ylim(0, max(ax.get_ylim()[1], 1e-3) * headroom)
    ax.set_title(f"{title} (per {width:g} s of arrivals)")
    ax.set_xlabel("time since start of run (s); latency and errors by arrival time")
    ax.set_ylabel("latency of answered requests (s)", color=P95_COLOUR)
    _finish(ax, ncol=3)
