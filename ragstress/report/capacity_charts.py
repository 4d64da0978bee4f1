"""Charts of a capacity sweep and of a capacity plan. Each draws on the Axes it is given.

As in :mod:`ragstress.report.charts`, no figure is created and no file is written here: the
caller owns the Figure (see :mod:`ragstress.report.capacity_report`). The sweep charts take
:class:`ConfigCurve` objects, one per configuration: the sweep's rows averaged over
replications (``ragstress.capacity.aggregate``: a figure's mean and its 95 % interval as
``<figure>_low`` / ``<figure>_high``) plus the configuration's knee and maximum sustainable
rate. The plan chart takes the ``plan.json`` document as it is. Every chart has a title, axis
labels with units, a legend (below the axes, where it cannot cover data) and a grid.
"""

from __future__ import annotations

import itertools
import math
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from matplotlib import rcParams
from matplotlib.axes import Axes
from matplotlib.font_manager import FontProperties
from matplotlib.textpath import text_to_path
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, PercentFormatter
from matplotlib.transforms import ScaledTranslation, blended_transform_factory

from ragstress.capacity.knee import SATURATED
from ragstress.report.charts import STAGE_COLOURS, _empty_note, _finish, fmt_seconds

__all__ = [
    "CONFIG_COLOURS",
    "ConfigCurve",
    "config_colour",
    "cost_capacity_frontier",
    "cost_vs_load",
    "latency_vs_load",
    "p95_by_config",
    "pareto_frontier",
    "share_loads",
    "stage_time_share",
    "throughput_vs_load",
    "utilisation_vs_load",
]

# One colour per configuration (tab10 without its grey, kept for reference lines)
CONFIG_COLOURS: tuple[str, ...] = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#bcbd22",
    "#17becf",
)
# the latency percentiles of the sweep: (name, column, colour)
PERCENTILES: tuple[tuple[str, str, str], ...] = (
    ("p50", "latency_p50_s", "#17becf"),
    ("p95", "latency_p95_s", "#1f4e9c"),
    ("p99", "latency_p99_s", "#9467bd"),
)
SLO_COLOUR = "#d62728"
KNEE_COLOUR = "#ff7f0e"
MAX_RATE_COLOUR = "#222222"
SATURATED_COLOUR = "#bbbbbb"
REFERENCE_COLOUR = "#7f7f7f"
FEASIBLE_COLOUR = "#2ca02c"
INFEASIBLE_COLOUR = "#d62728"
CHOSEN_COLOUR = "#ff7f0e"
BAND_ALPHA = 0.14
CONFIG_LINESTYLES: tuple[str | tuple[float, tuple[float, ...]], ...] = (
    "-",
    "--",
    ":",
    "-.",
    (0, (6, 2, 1, 2, 1, 2)),
    (0, (1, 4)),
)
CONFIG_MARKERS: tuple[str, ...] = ("o", "s", "^", "D", "v", "P", "X", "*", "h")


def _num(value: Any) -> float:
    """A figure as a float; None, strings that are not numbers and booleans become NaN."""
    if isinstance(value, bool) or value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def config_colour(index: int) -> str:
    return CONFIG_COLOURS[index % len(CONFIG_COLOURS)]


@dataclass(frozen=True)
class ConfigCurve:
    """One configuration of a sweep: its aggregated rows (``points``, sorted by rate) and what
    ``capacity.csv`` says of it (NaN where the sweep did not search or found no knee)."""

    config: str
    points: Sequence[Mapping[str, Any]]
    knee_rps: float = math.nan
    knee_latency_s: float = math.nan
    max_rate_rps: float = math.nan
    bracket_low_rps: float = math.nan
    bracket_high_rps: float = math.nan
    confident: bool | None = None
    colour: str = CONFIG_COLOURS[0]
    linestyle: Any = field(default="-")
    marker: str = "o"

    def column(self, name: str) -> np.ndarray:
        return np.array([_num(p.get(name)) for p in self.points], dtype=float)

    @property
    def rates(self) -> np.ndarray:
        return self.column("rate_rps")

    @property
    def saturated(self) -> np.ndarray:
        """Per point: answers fell short of the load that did not fail (the queue grew all
        run). Failed requests are taken out first: an outage's errors are not saturation."""
        offered = self.column("offered_rps")
        served = self.column("throughput_rps")
        errors = np.nan_to_num(self.column("error_rate"), nan=0.0)
        with np.errstate(invalid="ignore"):
            return np.asarray(served < SATURATED * offered * (1.0 - errors), dtype=bool)

    @property
    def first_saturated_rps(self) -> float:
        sat = self.saturated
        return float(self.rates[sat][0]) if sat.any() else math.nan

    @property
    def slo_met(self) -> np.ndarray:
        return np.array([bool(p.get("slo_met")) for p in self.points], dtype=bool)

    def value_at(self, rate: float, name: str) -> float:
        """``name`` at the grid rate ``rate`` (NaN when the grid has no such rate)."""
        for p in self.points:
            if _num(p.get("rate_rps")) == rate:
                return _num(p.get(name))
        return math.nan


# --------------------------------------------------------------------------------------------
# helpers


def _seconds_label(value: float, _pos: object = None) -> str:
    return fmt_seconds(float(value))


def _log_seconds_axis(ax: Axes, values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """A log y axis with 1–2–5 ticks labelled in seconds, spanning the finite ``values`` with
    some room; returns the limits (bands are clipped to them, so they run off the axes
    instead of squashing the curves)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    lo, hi = (float(v.min()) / 1.6, float(v.max()) * 1.6) if v.size else (0.1, 10.0)
    ax.set_yscale("log")
    ax.set_ylim(lo, hi)
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(_seconds_label))
    ax.yaxis.set_minor_formatter(NullFormatter())
    return lo, hi


def _clip(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.clip(np.where(np.isfinite(values), values, np.nan), lo, hi)


def _rate_xlim(ax: Axes, curves: Sequence[ConfigCurve], *extra: float) -> None:
    highs = [float(np.nanmax(c.rates)) for c in curves if c.points]
    highs += [x for x in extra if math.isfinite(x)]
    top = max(highs) if highs else 1.0
    ax.set_xlim(0, top * 1.04)


def _fmt_rate(value: float) -> str:
    return "—" if not math.isfinite(value) else f"{value:.3g} req/s"


def _band(
    ax: Axes,
    x: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
    colour: str,
    *,
    lims: tuple[float, float] | None = None,
    alpha: float = BAND_ALPHA,
) -> None:
    ok = np.isfinite(low) & np.isfinite(high)
    if not ok.any():
        return
    if lims is not None:
        low, high = _clip(low, *lims), _clip(high, *lims)
    ax.fill_between(
        x, low, high, where=ok, color=colour, alpha=alpha, lw=0, interpolate=False, zorder=1
    )


def _shade_saturated(ax: Axes, curve: ConfigCurve, label: bool = True) -> None:
    start = curve.first_saturated_rps
    if not math.isfinite(start):
        return
    rates = curve.rates
    before = rates[rates < start]
    # from halfway between the last unsaturated rate and the first saturated one
    left = (float(before.max()) + start) / 2 if before.size else start
    ax.axvspan(
        left,
        float(np.nanmax(rates)) * 1.04,
        color=SATURATED_COLOUR,
        alpha=0.18,
        lw=0,
        zorder=0,
        label=(
            f"saturated from {_fmt_rate(start)}: answers < {SATURATED:.0%} of offered load, "
            "latency grows with run length"
            if label
            else None
        ),
    )


def _slo_lines(ax: Axes, targets: Sequence[tuple[str, float]], colour: str = SLO_COLOUR) -> None:
    styles = {"p50": ":", "p90": (0, (6, 2, 1, 2)), "p95": "--", "p99": "-."}
    for pct, target in targets:
        ax.axhline(
            target,
            color=colour,
            ls=styles.get(pct, "--"),
            lw=1.6,
            zorder=3,
            label=f"SLO: {pct} latency ≤ {fmt_seconds(target)}",
        )


def _max_rate_line(
    ax: Axes, curve: ConfigCurve, colour: str = MAX_RATE_COLOUR, text: bool = True
) -> None:
    rate = curve.max_rate_rps
    if not math.isfinite(rate):
        return
    low, high = curve.bracket_low_rps, curve.bracket_high_rps
    bracket = ""
    if math.isfinite(low) and math.isfinite(high) and high > low:
        ax.axvspan(low, high, color=colour, alpha=0.10, lw=0, zorder=0)
        bracket = f" (search bracket {low:.3g}–{high:.3g})"
    ax.axvline(
        rate,
        color=colour,
        ls=(0, (5, 3)),
        lw=1.5,
        zorder=3,
        label=f"max sustainable rate {_fmt_rate(rate)}{bracket}",
    )
    if text:
        where = blended_transform_factory(ax.transData, ax.transAxes)
        x_lo, x_hi = ax.get_xlim()
        left = (rate - x_lo) > 0.2 * (x_hi - x_lo)  # room on the left of the line
        shift = ScaledTranslation(-3 / 72 if left else 3 / 72, 0, ax.figure.dpi_scale_trans)
        ax.text(
            rate,
            0.98,
            f"max sustainable\n{_fmt_rate(rate)}",
            transform=where + shift,
            ha="right" if left else "left",
            va="top",
            fontsize=9,
            color=colour,
            bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "alpha": 0.8, "lw": 0},
            zorder=6,
        )


# --------------------------------------------------------------------------------------------
# (1) latency against offered load


def latency_vs_load(
    ax: Axes, curve: ConfigCurve, slo_latency: Sequence[tuple[str, float]] = ()
) -> None:
    """One configuration: p50, p95 and p99 latency (means over replications, shaded: their
    95 % intervals) against offered load, on a log time axis, with the SLO latency targets,
    the knee of the p95 curve, the maximum sustainable rate and the saturated region."""
    rates = curve.rates
    means = [curve.column(col) for _, col, _ in PERCENTILES]
    values = np.concatenate([*means, [t for _, t in slo_latency]]) if means else np.zeros(0)
    lims = _log_seconds_axis(ax, values)
    if not np.isfinite(np.concatenate(means)).any():
        _empty_note(ax, "no answered requests at any rate")
    for (name, col, colour), mean in zip(PERCENTILES, means, strict=True):
        # the p95 (what SLOs name) stands out; the other two bands stay faint
        _band(
            ax,
            rates,
            curve.column(f"{col}_low"),
            curve.column(f"{col}_high"),
            colour,
            lims=lims,
            alpha=0.17 if name == "p95" else 0.08,
        )
        ax.plot(rates, mean, color=colour, lw=2, marker="o", ms=4, label=name, zorder=4)
    _rate_xlim(ax, [curve])
    _slo_lines(ax, slo_latency)
    _shade_saturated(ax, curve)
    _max_rate_line(ax, curve)
    if math.isfinite(curve.knee_rps) and math.isfinite(curve.knee_latency_s):
        ax.plot(
            [curve.knee_rps],
            [curve.knee_latency_s],
            marker="*",
            ms=17,
            color=KNEE_COLOUR,
            mec="black",
            mew=0.8,
            ls="",
            zorder=7,
            label=f"knee of p95: {_fmt_rate(curve.knee_rps)}, "
            f"p95 {fmt_seconds(curve.knee_latency_s)}",
        )
        ax.annotate(
            f"knee\n{curve.knee_rps:.3g} req/s",
            (curve.knee_rps, curve.knee_latency_s),
            xytext=(40, -30),
            textcoords="offset points",
            fontsize=9,
            ha="left",
            va="top",
            arrowprops={"arrowstyle": "-", "color": "#444444", "lw": 0.9},
            bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "alpha": 0.85, "lw": 0},
            zorder=7,
        )
    _rate_xlim(ax, [curve])
    ax.set_title(f"Latency vs offered load: {curve.config}")
    ax.set_xlabel("offered load (req/s)")
    ax.set_ylabel("end-to-end latency (s, log scale)")
    ax.plot([], [], color="#999999", lw=6, alpha=0.4, label="95% interval over replications")
    _finish(ax, ncol=3)


def p95_by_config(
    ax: Axes, curves: Sequence[ConfigCurve], slo_latency: Sequence[tuple[str, float]] = ()
) -> None:
    """Every configuration's p95 latency against offered load (log time axis), with its
    interval, its knee (star) and its maximum sustainable rate (dashed line, same colour),
    and the SLO's p95 target."""
    p95 = [t for t in slo_latency if t[0] == "p95"]
    values = np.concatenate([c.column("latency_p95_s") for c in curves] + [[t for _, t in p95]])
    lims = _log_seconds_axis(ax, values)
    for curve in curves:
        rates = curve.rates
        col = "latency_p95_s"
        _band(
            ax,
            rates,
            curve.column(f"{col}_low"),
            curve.column(f"{col}_high"),
            curve.colour,
            lims=lims,
            alpha=0.10,
        )
        label = (
            f"{curve.config}: knee {_fmt_rate(curve.knee_rps)}, max {_fmt_rate(curve.max_rate_rps)}"
        )
        ax.plot(
            rates,
            curve.column(col),
            color=curve.colour,
            marker=curve.marker,
            ms=5,
            lw=2,
            label=label,
            zorder=4,
        )
        if math.isfinite(curve.knee_rps) and math.isfinite(curve.knee_latency_s):
            ax.plot(
                [curve.knee_rps],
                [curve.knee_latency_s],
                marker="*",
                ms=16,
                color=curve.colour,
                mec="black",
                mew=0.8,
                ls="",
                zorder=6,
            )
        if math.isfinite(curve.max_rate_rps):
            ax.axvline(curve.max_rate_rps, color=curve.colour, ls=(0, (5, 3)), lw=1.4, zorder=3)
    if not np.isfinite(values).any():
        _empty_note(ax, "no answered requests at any rate")
    ax.set_ylim(*lims)
    _slo_lines(ax, p95, colour="black")
    ax.plot([], [], marker="*", ms=13, color="#bbbbbb", mec="black", mew=0.8, ls="", label="knee")
    ax.plot([], [], color="#555555", ls=(0, (5, 3)), lw=1.4, label="max sustainable rate")
    _rate_xlim(ax, curves)
    ax.set_title("p95 latency vs offered load, by configuration")
    ax.set_xlabel("offered load (req/s)")
    ax.set_ylabel("p95 end-to-end latency (s, log scale)")
    _finish(ax, ncol=2)


# --------------------------------------------------------------------------------------------
# (2) throughput and goodput


def throughput_vs_load(ax: Axes, curves: Sequence[ConfigCurve]) -> None:
    """Answers per second (solid, with interval) and answers within the SLO per second
    (dashed) against offered load, per configuration, with y = x (everything answered) and
    each configuration's maximum sustainable rate marked on the y = x line."""
    top = max((float(np.nanmax(c.rates)) for c in curves if c.points), default=1.0) * 1.04
    ax.plot([0, top], [0, top], color=REFERENCE_COLOUR, ls=":", lw=1.4, label="offered (y = x)")
    for curve in curves:
        rates = curve.rates
        thr = curve.column("throughput_rps")
        peak = float(np.nanmax(thr)) if np.isfinite(thr).any() else math.nan
        _band(
            ax,
            rates,
            curve.column("throughput_rps_low"),
            curve.column("throughput_rps_high"),
            curve.colour,
        )
        ax.plot(
            rates,
            thr,
            color=curve.colour,
            lw=2,
            marker=curve.marker,
            ms=5,
            label=f"{curve.config}: throughput (peak {_fmt_rate(peak)})",
            zorder=4,
        )
        ax.plot(
            rates,
            curve.column("goodput_rps"),
            color=curve.colour,
            lw=1.6,
            ls="--",
            label=f"{curve.config}: goodput (within SLO)",
            zorder=4,
        )
        if math.isfinite(curve.max_rate_rps):
            ax.plot(
                [curve.max_rate_rps],
                [curve.max_rate_rps],
                marker="D",
                ms=9,
                color=curve.colour,
                mec="black",
                mew=0.9,
                ls="",
                zorder=6,
            )
    if any(math.isfinite(c.max_rate_rps) for c in curves):
        ax.plot(
            [],
            [],
            marker="D",
            ms=8,
            color="#bbbbbb",
            mec="black",
            ls="",
            label="max sustainable rate (SLO met up to here)",
        )
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_title("Throughput and goodput vs offered load")
    ax.set_xlabel("offered load (req/s)")
    ax.set_ylabel("answers per second (req/s)")
    _finish(ax, ncol=2)


# --------------------------------------------------------------------------------------------
# (3) cost


def _usd(value: float) -> str:
    if not math.isfinite(value):
        return "—"
    # "\\$": two dollar signs in one label would otherwise start matplotlib's mathtext
    return f"\\${value:.3g}" if value < 1000 else f"\\${value:,.0f}"


def _per_hour_text(curve: ConfigCurve) -> str:
    per_hour = curve.column("cost_usd_per_hour")
    per_hour = per_hour[np.isfinite(per_hour)]
    if not per_hour.size:
        return ""
    lo, hi = float(per_hour.min()), float(per_hour.max())
    if hi - lo <= 0.005 * max(abs(hi), 1e-9):
        return f"{_usd(hi)}/hour"
    return f"{_usd(lo)}–{_usd(hi)}/hour"


def cost_vs_load(ax: Axes, curves: Sequence[ConfigCurve]) -> None:
    """Dollars per 1,000 answers against offered load, per configuration (its dollars per
    hour and its cheapest cost within the SLO in the legend). Filled markers where the SLO
    held in every replication, hollow where it did not (a cost the deployment cannot really
    offer); the line is dotted past the last rate within the SLO; a star marks the cheapest
    answer within the SLO."""
    # the marker key first: with the legend filled column by column it stands on the left
    ax.plot([], [], ls="", marker="o", ms=6, color="#777777", label="SLO met")
    ax.plot(
        [],
        [],
        ls="",
        marker="o",
        ms=6,
        mfc="white",
        mec="#777777",
        mew=1.4,
        label="SLO not met (dotted line)",
    )
    ax.plot(
        [], [], ls="", marker="*", ms=13, color="#bbbbbb", mec="black", label="cheapest within SLO"
    )
    values: list[float] = []
    highs: list[float] = []
    for curve in curves:
        rates = curve.rates
        cost = curve.column("cost_usd_per_1k_answers")
        high = curve.column("cost_usd_per_1k_answers_high")
        values.extend(cost[np.isfinite(cost)].tolist())
        highs.extend(high[np.isfinite(high)].tolist())
        met = curve.slo_met & np.isfinite(cost)
        last = int(np.nonzero(met)[0][-1]) if met.any() else -1
        best = int(np.nanargmin(np.where(met, cost, np.nan))) if met.any() else -1
        _band(
            ax,
            rates,
            curve.column("cost_usd_per_1k_answers_low"),
            high,
            curve.colour,
        )
        per_hour = _per_hour_text(curve)
        parts = [per_hour] if per_hour else []
        if best >= 0:
            parts.append(
                f"cheapest within SLO {_usd(float(cost[best]))} at {rates[best]:.3g} req/s"
            )
        label = curve.config + (f": {'; '.join(parts)}" if parts else "")
        ax.plot(rates[: last + 1], cost[: last + 1], color=curve.colour, lw=2, label=label)
        ax.plot(rates[max(last, 0) :], cost[max(last, 0) :], color=curve.colour, lw=1.4, ls=":")
        ax.plot(
            rates[met], cost[met], ls="", marker=curve.marker, ms=6, color=curve.colour, zorder=4
        )
        ax.plot(
            rates[~met],
            cost[~met],
            ls="",
            marker=curve.marker,
            ms=6,
            mfc="white",
            mec=curve.colour,
            mew=1.4,
            zorder=4,
        )
        if best >= 0:
            ax.plot(
                [rates[best]],
                [cost[best]],
                marker="*",
                ms=16,
                color=curve.colour,
                mec="black",
                mew=0.8,
                ls="",
                zorder=6,
            )
    top = max(values, default=0.0)
    if not values:
        _empty_note(ax, "no answers at any rate: no cost per answer")
    elif top <= 0:
        _empty_note(ax, "every figure is $0: the profile prices nothing")
    # room for the bands, but not so much that one wide band flattens every curve
    top = max([top, *(h for h in highs if h <= 1.5 * top)]) if top > 0 else 1.0
    _rate_xlim(ax, curves)
    ax.set_ylim(0, top * 1.08)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: _usd(v)))
    ax.set_title("Cost per 1,000 answers vs offered load")
    ax.set_xlabel("offered load (req/s)")
    ax.set_ylabel("cost per 1,000 answers (USD)")
    _finish(ax, ncol=2)


# --------------------------------------------------------------------------------------------
# (4) where the time goes


def share_loads(curve: ConfigCurve, most: int = 4) -> list[tuple[float, str]]:
    """The grid rates to break down: the lowest, the one nearest the knee, the highest within
    the maximum sustainable rate and the first beyond it (without a search: the last rate
    before saturation and the first saturated one, else the highest); one label per rate,
    joined when two coincide. Deep saturation is left out: its seconds would dwarf the rest."""
    rates = sorted({float(r) for r in curve.rates if math.isfinite(r)})
    if not rates:
        return []
    picks: list[tuple[float, str]] = [(rates[0], "lowest load")]
    if math.isfinite(curve.knee_rps):
        picks.append((min(rates, key=lambda r: abs(r - curve.knee_rps)), "knee"))
    cap, tag = curve.max_rate_rps, "max rate"
    if not math.isfinite(cap):
        cap, tag = curve.first_saturated_rps - 1e-9, "saturation"
    if math.isfinite(cap):
        within = [r for r in rates if r <= cap]
        beyond = [r for r in rates if r > cap]
        if within:
            picks.append((within[-1], f"within {tag}"))
        if beyond:
            picks.append((beyond[0], f"past {tag}"))
    else:
        picks.append((rates[-1], "highest load"))
    labels: dict[float, list[str]] = {}
    for rate, label in picks:
        labels.setdefault(rate, []).append(label)
    out = [(rate, ", ".join(names)) for rate, names in sorted(labels.items())]
    return out[:most]


def stage_time_share(ax: Axes, curve: ConfigCurve, stages: Sequence[str]) -> None:
    """Where a request's time goes at a few loads (see :func:`share_loads`): one bar per load,
    stacked per stage (pipeline order, bottom up) as mean queue wait (hatched) and mean
    service (solid) in seconds, each big enough segment labelled with its share of the bar;
    the bar's total above it."""
    loads = share_loads(curve)
    x = np.arange(len(loads), dtype=float)
    segments: list[tuple[int, str, np.ndarray]] = []
    for k, stage in enumerate(stages):
        for part in ("wait", "service"):
            values = np.array(
                [curve.value_at(rate, f"{stage}_{part}_mean_s") for rate, _ in loads], dtype=float
            )
            segments.append((k, part, np.nan_to_num(values, nan=0.0)))
    sums = np.zeros(len(loads))
    for _, _, seconds in segments:
        sums = sums + seconds
    top = float(sums.max()) if sums.size and sums.max() > 0 else 1.0
    base = np.zeros(len(loads))
    for k, part, seconds in segments:
        colour = STAGE_COLOURS[k % len(STAGE_COLOURS)]
        ax.bar(
            x,
            seconds,
            0.55,
            bottom=base,
            color=colour,
            alpha=0.45 if part == "wait" else 0.9,
            hatch="///" if part == "wait" else None,
            edgecolor="white" if part == "service" else colour,
            lw=0.6,
            label=f"{stages[k]} {'queue wait' if part == 'wait' else 'service'}",
            zorder=3,
        )
        for i, sec in enumerate(seconds):
            if sec >= 0.07 * top:
                ax.text(
                    x[i],
                    base[i] + sec / 2,
                    f"{100 * sec / sums[i]:.0f} %",
                    ha="center",
                    va="center",
                    fontsize=9,
                    zorder=4,
                    bbox={
                        "boxstyle": "round,pad=0.15",
                        "facecolor": "white",
                        "alpha": 0.75,
                        "lw": 0,
                    },
                )
        base = base + seconds
    for i, total in enumerate(sums):
        ax.text(
            x[i],
            total + 0.015 * top,
            fmt_seconds(float(total)) if total > 0 else "no calls",
            ha="center",
            va="bottom",
            fontsize=10,
            fontweight="bold",
        )
    if not loads or not (sums > 0).any():
        _empty_note(ax, "no per-stage times in this sweep")
    ax.set_xticks(x, [f"{rate:.3g} req/s\n({label})" for rate, label in loads])
    ax.set_xlim(-0.6, max(len(loads), 1) - 0.4)
    ax.set_ylim(0, top * 1.1)
    ax.set_title(f"Where the time goes, by load: {curve.config}")
    ax.set_xlabel("offered load (req/s)")
    ax.set_ylabel("mean time per request in the stages (s)")
    ax.grid(True, axis="y", alpha=0.35, zorder=0)
    ax.set_axisbelow(True)
    # beside the axes: the two-line tick labels leave no room for a legend below
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(
        handles[::-1],
        labels[::-1],
        loc="center left",
        bbox_to_anchor=(1.01, 0.5),
        frameon=False,
        title="stage (pipeline order,\nfirst at the bottom)",
    )


# --------------------------------------------------------------------------------------------
# (5) utilisation


def utilisation_vs_load(ax: Axes, curves: Sequence[ConfigCurve], stages: Sequence[str]) -> None:
    """Each stage's utilisation (colour) against offered load, per configuration (line style
    and marker: the first solid, the others dashed, dotted…), with 100 % marked."""
    top = 100.0
    drawn = False
    for curve in curves:
        for k, stage in enumerate(stages):
            util = 100 * curve.column(f"{stage}_utilisation")
            if not np.isfinite(util).any():
                continue
            drawn = True
            top = max(top, float(np.nanmax(util)))
            ax.plot(
                curve.rates,
                util,
                color=STAGE_COLOURS[k % len(STAGE_COLOURS)],
                ls=curve.linestyle,
                marker=curve.marker,
                ms=4.5,
                lw=1.8,
            )
    if not drawn:
        _empty_note(ax, "no utilisation figures in this sweep")
    # the legend: stages by colour, configurations by line style (proxies: nothing drawn)
    for k, stage in enumerate(stages):
        ax.plot([], [], color=STAGE_COLOURS[k % len(STAGE_COLOURS)], lw=6, label=f"stage: {stage}")
    for curve in curves:
        ax.plot(
            [],
            [],
            color="#555555",
            ls=curve.linestyle,
            marker=curve.marker,
            ms=4.5,
            lw=1.8,
            label=f"config: {curve.config}",
        )
    ax.axhline(100, color="black", ls=":", lw=1.3, label="100 % (every server busy)")
    _rate_xlim(ax, curves)
    ax.set_ylim(0, top * 1.08)
    ax.yaxis.set_major_formatter(PercentFormatter(decimals=0))
    ax.set_title("Utilisation per stage vs offered load")
    ax.set_xlabel("offered load (req/s)")
    ax.set_ylabel("utilisation (% of servers busy)")
    _finish(ax, ncol=3)


# --------------------------------------------------------------------------------------------
# (7) the plan: cost against capacity


def pareto_frontier(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The ``(capacity, cost)`` points no other point beats on both (more capacity for no
    more cost), by increasing capacity and cost."""
    finite = sorted(
        (p for p in points if math.isfinite(p[0]) and math.isfinite(p[1])),
        key=lambda p: (p[1], -p[0]),
    )
    out: list[tuple[float, float]] = []
    for cap, cost in finite:
        if not out or cap > out[-1][0]:
            out.append((cap, cost))
    return out


def _candidates(plan: Mapping[str, Any], status: str) -> list[Mapping[str, Any]]:
    return [c for c in plan.get("candidates") or [] if c.get("status") == status]


# Where the plan chart puts its labels is worked out before the figure is laid out, on an
# estimate of the laid-out axes in points (a Box is (x0, y0, x1, y1) in points from the axes'
# lower left corner), with the text measured from the font: no renderer is needed.
LABEL_WIDTH = 40  # characters per line of a configuration label (broken between settings)
RANK_FONT = 9.0
CHOSEN_FONT = 9.5
MARKER_R = {"pruned": 4.0, "arrow": 5.0, "ranked": 5.5, "chosen": 12.5}  # half a marker
# ranked points closer than this (points) share one label: a centre under the other marker
MERGE_WITHIN = {"ranked": 6.0, "chosen": 8.0}
LABEL_CLEARANCE = 6.0  # points a rank label keeps from markers that are not its own
CORNER_INSET = 7.0  # points between the axes' edges and the chosen one's text
CORNERS: tuple[tuple[float, float, str, str], ...] = (  # (x, y) in axes fraction, ha, va
    (1.0, 0.0, "right", "bottom"),  # below and to the right: more capacity for less money
    (0.0, 1.0, "left", "top"),
    (1.0, 1.0, "right", "top"),
    (0.0, 0.0, "left", "bottom"),
    (1.0, 0.5, "right", "center"),
)
Box = tuple[float, float, float, float]
Corner = tuple[float, float, str, str]


def _wrap(text: str, width: int = LABEL_WIDTH) -> str:
    """A configuration label on lines of about ``width`` characters, broken between its
    settings (a ``knob=value`` word is never split)."""
    lines = textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False)
    return "\n".join(lines or [text])


def _text_size(text: str, size: float, bold: bool = False) -> tuple[float, float]:
    """Width and height in points of ``text`` (one line per newline) at font ``size``."""
    prop = FontProperties(size=size, weight="bold" if bold else "normal")
    lines = text.replace("\\$", "$").split("\n")
    width = max(
        text_to_path.get_text_width_height_descent(line, prop, ismath=False)[0] for line in lines
    )
    return width, size * (1.2 * len(lines) - 0.2)


def _overlap(a: Box, b: Box) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0.0


def _first_best(scores: Sequence[float]) -> int:
    """The first of the lowest ``scores`` (differences under a square point are ties)."""
    low = min(scores)
    return next(i for i, s in enumerate(scores) if s <= low + 1.0)


def _legend_layout(labels: Sequence[str], width: float, fontsize: float) -> tuple[int, float]:
    """The most legend columns (3 at most) whose width fits in ``width`` points, and the
    legend's height in points with them. Entries fill the columns as matplotlib fills them:
    top to bottom, the first columns one entry longer."""
    sizes = [_text_size(label, fontsize) for label in labels]
    handle = (2.0 + 0.8) * fontsize  # handle length and the pad to the text
    ncol, height = 1, 0.0
    for most in (3, 2, 1):
        ncol = min(most, len(sizes)) or 1
        rows, extra = divmod(len(sizes), ncol)
        columns, start = [], 0
        for n in [rows + 1] * extra + [rows] * (ncol - extra):
            columns.append(sizes[start : start + n])
            start += n
        total = sum(handle + max((w for w, _ in col), default=0.0) for col in columns)
        total += 2.0 * fontsize * (ncol - 1)  # column spacing
        height = max(
            (sum(max(h, 1.2 * fontsize) + 0.5 * fontsize for _, h in col) for col in columns),
            default=0.0,
        )
        if total <= width:
            break
    return ncol, height + 0.8 * fontsize


def _axes_size(ax: Axes, legend_height: float) -> tuple[float, float]:
    """The axes' width and height in points once laid out: under a layout engine, the figure
    less the tick labels and y label (left), the title (top), the ticks, the x label and the
    legend (bottom); without one, the axes as it is."""
    fig = ax.figure
    to_pt = 72.0 / fig.dpi
    if fig.get_layout_engine() is None:
        return ax.bbox.width * to_pt, ax.bbox.height * to_pt
    fig_w, fig_h = fig.bbox.width * to_pt, fig.bbox.height * to_pt
    return max(fig_w - 85.0, 100.0), max(fig_h - 80.0 - legend_height, 80.0)


class _Frame:
    """Data → points in the estimated axes, and the boxes that labels should keep clear of,
    each with a weight (what a label may cross at a pinch weighs less)."""

    def __init__(
        self, xlim: tuple[float, float], ylim: tuple[float, float], size: tuple[float, float]
    ) -> None:
        self.xlim, self.ylim = xlim, ylim
        self.width, self.height = size
        self.obstacles: list[tuple[Box, float]] = []
        self.markers: list[tuple[float, float, float]] = []  # centre and half size

    def pt(self, x: float, y: float) -> tuple[float, float]:
        (x0, x1), (y0, y1) = self.xlim, self.ylim
        return (x - x0) / (x1 - x0) * self.width, (y - y0) / (y1 - y0) * self.height

    def marker(self, x: float, y: float, r: float, dx: float = 0.0) -> None:
        if math.isfinite(x) and math.isfinite(y):
            px, py = self.pt(x, y)
            self.obstacles.append(((px + dx - r, py - r, px + dx + r, py + r), 1.0))
            self.markers.append((px + dx, py, r))

    def segment(self, a: tuple[float, float], b: tuple[float, float], weight: float) -> None:
        (ax_, ay), (bx, by) = self.pt(*a), self.pt(*b)
        box = (min(ax_, bx) - 1.5, min(ay, by) - 1.5, max(ax_, bx) + 1.5, max(ay, by) + 1.5)
        self.obstacles.append((box, weight))

    def cost(self, box: Box) -> float:
        """What ``box`` covers, weighted, and (far worse) how much of it is off the axes."""
        hit = sum(w * _overlap(box, b) for b, w in self.obstacles)
        area = (box[2] - box[0]) * (box[3] - box[1])
        return hit + 50.0 * (area - _overlap(box, (0.0, 0.0, self.width, self.height)))

    def crowding(self, box: Box, own: Sequence[tuple[float, float]]) -> float:
        """How close ``box`` comes to markers other than those centred at ``own``: a label
        right beside another marker reads as that marker's."""
        out = 0.0
        for mx, my, r in self.markers:
            if any(abs(mx - ox) + abs(my - oy) < 0.5 for ox, oy in own):
                continue
            reach = r + LABEL_CLEARANCE
            out += 0.5 * _overlap(box, (mx - reach, my - reach, mx + reach, my + reach))
        return out


@dataclass(frozen=True)
class _PlanMarks:
    """Where the plan chart draws, in data: markers at the target line (costs, shift in
    points, half size), ranked points, the chosen one, the frontier's corners and the target
    and peak lines."""

    target: float
    peak: float
    at_target: Sequence[tuple[Sequence[float], float, float]]
    ranked: Sequence[tuple[float, float]]
    chosen: tuple[float, float] | None
    steps: Sequence[tuple[float, float]]

    def frame(
        self, xlim: tuple[float, float], ylim: tuple[float, float], size: tuple[float, float]
    ) -> _Frame:
        frame = _Frame(xlim, ylim, size)
        for ys, shift, r in self.at_target:
            for y in ys:
                frame.marker(self.target, y, r, dx=shift)
        for x, y in self.ranked:
            frame.marker(x, y, MARKER_R["ranked"])
        if self.chosen is not None:
            frame.marker(*self.chosen, MARKER_R["chosen"])
        for a, b in itertools.pairwise(self.steps):
            frame.segment(a, b, 1.0)
        for x in (self.target, self.peak):
            if math.isfinite(x):  # a label may cross a reference line
                frame.segment((x, ylim[0]), (x, ylim[1]), 0.3)
        return frame


def _corner_box(corner: Corner, w: float, h: float, frame: _Frame) -> Box:
    """The chosen one's box (text ``w`` × ``h`` points, with its padding) in ``corner``."""
    fx, fy, ha, va = corner
    pad = 0.3 * CHOSEN_FONT + 1.0
    x = fx * frame.width + (-CORNER_INSET if fx > 0.5 else CORNER_INSET)
    y = fy * frame.height + {"bottom": CORNER_INSET, "top": -CORNER_INSET}.get(va, 0.0)
    x0 = x - w if ha == "right" else x
    y0 = {"bottom": y, "top": y - h}.get(va, y - h / 2)
    return (x0 - pad, y0 - pad, x0 + w + pad, y0 + h + pad)


def _chosen_room(
    marks: _PlanMarks,
    xlim: tuple[float, float],
    top_cost: float,
    size: tuple[float, float],
    box: tuple[float, float],
) -> tuple[float, Corner | None]:
    """The top of the y axis and the corner for the chosen one's box (``box``: its text's
    width and height in points; (0, 0): no box): the first corner that covers nothing, with
    the usual room above the dearest point or, failing that, with room for the box made
    above it; else the corner that covers least."""
    top = top_cost * 1.2 if top_cost > 0 else 1.0  # a profile that prices nothing: $0
    if box == (0.0, 0.0):
        return top, None
    roomy = top_cost / max(1.0 - (box[1] + 5 * CORNER_INSET) / size[1], 0.3)
    best: tuple[float, float, Corner] | None = None
    for y_hi in (top, max(top, roomy)):
        frame = marks.frame(xlim, (0.0, y_hi), size)
        scores = [frame.cost(_corner_box(c, *box, frame)) for c in CORNERS]
        i = _first_best(scores)
        if best is None or scores[i] < best[1] - 1.0:
            best = (y_hi, scores[i], CORNERS[i])
        if scores[i] <= 1.0:
            break
    assert best is not None
    return best[0], best[2]


def _rank_groups(
    points: Sequence[tuple[float, float, int, bool]], frame: _Frame
) -> list[list[tuple[float, float, int, bool]]]:
    """Ranked points (x, y, rank, chosen) whose markers sit on one another, grouped (a centre
    under the other's marker, through chains), by rank: each group gets one label."""
    groups: list[list[tuple[float, float, int, bool]]] = []
    for p in points:
        px, py = frame.pt(p[0], p[1])
        near = []
        for g in groups:
            for q in g:
                qx, qy = frame.pt(q[0], q[1])
                reach = MERGE_WITHIN["chosen" if p[3] or q[3] else "ranked"]
                if math.hypot(px - qx, py - qy) < reach:
                    near.append(g)
                    break
        merged = [p]
        for g in near:
            merged += g
            groups.remove(g)
        groups.append(sorted(merged, key=lambda q: q[2]))
    return sorted(groups, key=lambda g: g[0][2])


def _place_rank_labels(
    ax: Axes, points: Sequence[tuple[float, float, int, bool]], frame: _Frame
) -> None:
    """One bold label per group of coincident ranked points ("#3"; "#1, #2" for two on one
    another), on the side of the group (right first, then above, below, left) where it covers
    the fewest markers, lines and labels and stays in the axes; each label placed becomes an
    obstacle for the next."""
    for group in _rank_groups(points, frame):
        text = ", ".join(f"#{rank}" for _, _, rank, _ in group)
        w, h = _text_size(text, RANK_FONT, bold=True)
        boxes = []
        for x, y, _, chosen in group:
            r = MARKER_R["chosen" if chosen else "ranked"]
            px, py = frame.pt(x, y)
            boxes.append((px - r, py - r, px + r, py + r))
        x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
        x1, y1 = max(b[2] for b in boxes), max(b[3] for b in boxes)
        cx, cy, gap = (x0 + x1) / 2, (y0 + y1) / 2, 2.0
        spots = [  # the label's lower left corner, in order of preference
            (x1 + gap, cy - h / 2),  # right
            (x1 - 2, y1),  # upper right
            (cx - w / 2, y1 + gap),  # above
            (x1 - 2, y0 - h),  # lower right
            (cx - w / 2, y0 - gap - h),  # below
            (x0 - gap - w, cy - h / 2),  # left
            (x0 + 2 - w, y1),  # upper left
            (x0 + 2 - w, y0 - h),  # lower left
        ]
        own = [frame.pt(x, y) for x, y, _, _ in group]
        scores = [
            frame.cost((x, y, x + w, y + h)) + frame.crowding((x, y, x + w, y + h), own)
            for x, y in spots
        ]
        sx, sy = spots[_first_best(scores)]
        ax_, ay = own[0]
        # a leader line from the label's nearest point to the marker's edge: a point or two
        # beside the marker, a line that ties it to its marker wherever it had to go
        relpos = (min(max((ax_ - sx) / w, 0.0), 1.0), min(max((ay - sy) / h, 0.0), 1.0))
        ax.annotate(
            text,
            (group[0][0], group[0][1]),
            xytext=(sx - ax_, sy - ay),
            textcoords="offset points",
            ha="left",
            va="bottom",
            fontsize=RANK_FONT,
            fontweight="bold",
            arrowprops={
                "arrowstyle": "-",
                "color": "#555555",
                "lw": 0.7,
                "relpos": relpos,
                "shrinkA": 1.0,
                "shrinkB": MARKER_R["chosen" if group[0][3] else "ranked"],
            },
            zorder=8,
        )
        frame.obstacles.append(((sx - 1, sy - 1, sx + w + 1, sy + h + 1), 1.0))


def _chosen_box(ax: Axes, text: str, xy: tuple[float, float], corner: Corner) -> None:
    """The chosen one's configuration and figures in a box in ``corner`` of the axes (inset:
    it stays inside them whatever the data), joined to its star by a line."""
    fx, fy, ha, va = corner
    inset = ScaledTranslation(
        (-CORNER_INSET if fx > 0.5 else CORNER_INSET) / 72,
        {"bottom": CORNER_INSET, "top": -CORNER_INSET}.get(va, 0.0) / 72,
        ax.figure.dpi_scale_trans,
    )
    ax.annotate(
        text,
        xy,
        xytext=(fx, fy),
        textcoords=ax.transAxes + inset,
        fontsize=CHOSEN_FONT,
        fontweight="bold",
        ha=ha,
        va=va,
        multialignment="left",
        arrowprops={"arrowstyle": "-", "color": "#444444", "lw": 0.9},
        bbox={
            "boxstyle": "round,pad=0.3",
            "facecolor": "#fff3e0",
            "edgecolor": CHOSEN_COLOUR,
            "alpha": 0.95,
        },
        zorder=8,
    )


def cost_capacity_frontier(ax: Axes, plan: Mapping[str, Any]) -> None:
    """The plan's configurations by cost ($/hour at the target rate) and capacity. Ranked
    configurations at their maximum sustainable rate (the chosen one a large star, its
    configuration in a box in a corner where nothing is drawn), the Pareto frontier through
    them as a step line; other evaluated ones, whose capacity is only known to be above
    (feasible) or below (infeasible) the target, as arrows at the target line; configurations
    pruned as implied infeasible faintly, at their fixed cost. Ranked points on top of one
    another share one label ("#1, #2"); configuration labels are wrapped between settings and
    the legend takes as many columns as fit."""
    target = _num(plan.get("target_rps"))
    peak = _num(plan.get("peak_rps"))
    ranked = sorted(
        (c for c in plan.get("candidates") or [] if c.get("rank")),
        key=lambda c: int(c["rank"]),
    )
    fig = ax.figure
    right = ScaledTranslation(9 / 72, 0, fig.dpi_scale_trans)
    left = ScaledTranslation(-9 / 72, 0, fig.dpi_scale_trans)
    costs: list[float] = []
    xs: list[float] = [target, peak]
    at_target: list[tuple[Sequence[float], float, float]] = []  # as in _PlanMarks

    pruned = _candidates(plan, "pruned-monotone")
    if pruned:
        ys = [_num(c.get("fixed_usd_per_hour")) for c in pruned]
        costs += ys
        at_target.append((ys, -18.0, MARKER_R["pruned"]))
        ax.plot(
            [target] * len(ys),
            ys,
            ls="",
            marker="<",
            ms=7,
            mfc="none",
            mec=INFEASIBLE_COLOUR,
            alpha=0.45,
            transform=ax.transData + left + left,
            label=f"pruned, implied infeasible ({len(ys)}; at fixed \\$/hour)",
        )
    infeasible = _candidates(plan, "infeasible")
    if infeasible:
        ys = [_num(c.get("usd_per_hour")) for c in infeasible]
        costs += ys
        at_target.append((ys, -9.0, MARKER_R["arrow"]))
        ax.plot(
            [target] * len(ys),
            ys,
            ls="",
            marker="<",
            ms=9,
            color=INFEASIBLE_COLOUR,
            mec="black",
            mew=0.6,
            transform=ax.transData + left,
            zorder=4,
            label=f"infeasible at target ({len(ys)}): capacity below it",
        )
    unranked = [c for c in _candidates(plan, "feasible") if not c.get("rank")]
    if unranked:
        ys = [_num(c.get("usd_per_hour")) for c in unranked]
        costs += ys
        at_target.append((ys, 9.0, MARKER_R["arrow"]))
        ax.plot(
            [target] * len(ys),
            ys,
            ls="",
            marker=">",
            ms=9,
            color=FEASIBLE_COLOUR,
            mfc="white",
            mew=1.4,
            transform=ax.transData + right,
            zorder=4,
            label=f"feasible, not ranked ({len(ys)}): capacity above target",
        )
    points = [(_num(c.get("max_rate_rps")), _num(c.get("usd_per_hour"))) for c in ranked]
    frontier = pareto_frontier(points)
    if points:
        costs += [p[1] for p in points]
        xs += [p[0] for p in points]
        ax.plot(
            [p[0] for p in points],
            [p[1] for p in points],
            ls="",
            marker="o",
            ms=9,
            color=FEASIBLE_COLOUR,
            mec="black",
            mew=0.8,
            zorder=5,
            label=f"ranked ({len(points)}): at their max sustainable rate",
        )
    finite_x = [x for x in xs if math.isfinite(x)]
    x_lo = min(finite_x, default=0.0) * 0.85
    x_hi = max(finite_x, default=1.0) * 1.12
    if not x_hi > x_lo:  # one rate of 0, or none
        x_lo, x_hi = x_lo - 1.0, x_hi + 1.0
    steps: list[tuple[float, float]] = []
    if frontier:
        # from the target: below it, cheaper infeasible configurations may have more capacity
        start = target if math.isfinite(target) and target < frontier[0][0] else frontier[0][0]
        fx = [start, *(p[0] for p in frontier)]
        fy = [frontier[0][1], *(p[1] for p in frontier)]
        for i in range(1, len(fx)):  # where="pre": up at the previous corner, then across
            steps += [(fx[i - 1], fy[i - 1]), (fx[i - 1], fy[i]), (fx[i], fy[i])]
        ax.step(
            fx,
            fy,
            where="pre",
            color=FEASIBLE_COLOUR,
            lw=1.6,
            alpha=0.8,
            zorder=3,
            label="Pareto frontier: cheapest \\$/hour for at least this capacity",
        )
    chosen = next((c for c in ranked if c.get("config") == plan.get("chosen")), None)
    chosen_xy: tuple[float, float] | None = None
    box_text = ""
    if chosen is not None:
        chosen_xy = (_num(chosen.get("max_rate_rps")), _num(chosen.get("usd_per_hour")))
        chosen_label = _wrap(f"chosen: {chosen.get('config')}")
        ax.plot(
            [chosen_xy[0]],
            [chosen_xy[1]],
            ls="",
            marker="*",
            ms=24,
            color=CHOSEN_COLOUR,
            mec="black",
            mew=1.0,
            zorder=7,
            label=chosen_label,
        )
        box_text = f"{chosen_label}\n{_usd(chosen_xy[1])}/hour, max {_fmt_rate(chosen_xy[0])}"
    if math.isfinite(target):
        ax.axvline(
            target, color="black", ls="--", lw=1.5, zorder=2, label=f"target {_fmt_rate(target)}"
        )
    if math.isfinite(peak) and peak != target:
        ax.axvline(
            peak, color=REFERENCE_COLOUR, ls=":", lw=1.3, zorder=2, label=f"peak {_fmt_rate(peak)}"
        )
    never = []
    n_dominated = len(_candidates(plan, "pruned-dominated"))
    if n_dominated:
        never.append(f"{n_dominated} above a feasible one")
    n_cost = len(_candidates(plan, "pruned-cost"))
    if n_cost:
        never.append(f"{n_cost} by the cost bound")
    if never:
        ax.plot([], [], ls="", label=f"pruned, never run: {', '.join(never)}")
    ax.set_xlim(x_lo, x_hi)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: _usd(v)))
    ax.set_title("Cost vs capacity of the evaluated configurations")
    ax.set_xlabel("maximum sustainable rate (req/s; arrows: only known to be above/below target)")
    ax.set_ylabel("cost at the target rate (USD per hour)")

    # the legend's columns, then the labels, placed on an estimate of the laid-out axes
    fontsize = FontProperties(size=rcParams["legend.fontsize"]).get_size_in_points()
    ncol, legend_height = _legend_layout(
        ax.get_legend_handles_labels()[1], _axes_size(ax, 0.0)[0], fontsize
    )
    finite_costs = [c for c in costs if math.isfinite(c)]
    if not finite_costs:
        _empty_note(ax, "no configuration was evaluated")
    else:
        size = _axes_size(ax, legend_height)
        marks = _PlanMarks(target, peak, at_target, points, chosen_xy, steps)
        box = _text_size(box_text, CHOSEN_FONT, bold=True) if box_text else (0.0, 0.0)
        y_hi, corner = _chosen_room(marks, (x_lo, x_hi), max(finite_costs), size, box)
        ax.set_ylim(0, y_hi)
        frame = marks.frame((x_lo, x_hi), (0.0, y_hi), size)
        if corner is not None:
            frame.obstacles.append((_corner_box(corner, *box, frame), 1.0))
        marked = [
            (x, y, int(c["rank"]), c is chosen)
            for c, (x, y) in zip(ranked, points, strict=True)
            if math.isfinite(x) and math.isfinite(y)
        ]
        _place_rank_labels(ax, marked, frame)
        if chosen_xy is not None and corner is not None:
            _chosen_box(ax, box_text, chosen_xy, corner)
    _finish(ax, ncol=ncol)
