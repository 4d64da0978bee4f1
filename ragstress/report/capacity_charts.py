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

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from matplotlib.axes import Axes
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


def cost_capacity_frontier(ax: Axes, plan: Mapping[str, Any]) -> None:
    """The plan's configurations by cost ($/hour at the target rate) and capacity. Ranked
    configurations at their maximum sustainable rate (the chosen one a large star, labelled),
    the Pareto frontier through them as a step line; other evaluated ones, whose capacity is
    only known to be above (feasible) or below (infeasible) the target, as arrows at the
    target line; configurations pruned as implied infeasible faintly, at their fixed cost."""
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

    pruned = _candidates(plan, "pruned-monotone")
    if pruned:
        ys = [_num(c.get("fixed_usd_per_hour")) for c in pruned]
        costs += ys
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
        for c, (x, y) in zip(ranked, points, strict=True):
            if math.isfinite(x) and math.isfinite(y):
                big = c.get("config") == plan.get("chosen")  # under a large star
                # the chosen one's on its left, clear of the next ranks (dearer: up and right)
                ax.annotate(
                    f"#{int(c['rank'])}",
                    (x, y),
                    xytext=(-13, 5) if big else (7, 4),
                    textcoords="offset points",
                    fontsize=9,
                    fontweight="bold",
                    zorder=8,
                    ha="right" if big else "left",
                )
    finite_x = [x for x in xs if math.isfinite(x)]
    x_lo = min(finite_x, default=0.0) * 0.85
    x_hi = max(finite_x, default=1.0) * 1.12
    if frontier:
        # from the target: below it, cheaper infeasible configurations may have more capacity
        start = target if math.isfinite(target) and target < frontier[0][0] else frontier[0][0]
        fx = [start, *(p[0] for p in frontier)]
        fy = [frontier[0][1], *(p[1] for p in frontier)]
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
    if chosen is not None:
        x, y = _num(chosen.get("max_rate_rps")), _num(chosen.get("usd_per_hour"))
        ax.plot(
            [x],
            [y],
            ls="",
            marker="*",
            ms=24,
            color=CHOSEN_COLOUR,
            mec="black",
            mew=1.0,
            zorder=7,
            label=f"chosen: {chosen.get('config')}",
        )
        ax.annotate(
            f"chosen: {chosen.get('config')}\n{_usd(y)}/hour, max {_fmt_rate(x)}",
            (x, y),
            # below and to the right: more capacity for less money, where no point can be
            xytext=(30, -30),
            textcoords="offset points",
            fontsize=9.5,
            fontweight="bold",
            ha="left",
            va="top",
            arrowprops={"arrowstyle": "-", "color": "#444444", "lw": 0.9},
            bbox={"boxstyle": "round,pad=0.3", "facecolor": "#fff3e0", "edgecolor": CHOSEN_COLOUR},
            zorder=8,
        )
    if math.isfinite(target):
        ax.axvline(
            target, color="black", ls="--", lw=1.5, zorder=2, label=f"target {_fmt_rate(target)}"
        )
    if math.isfinite(peak) and peak != target:
        ax.axvline(
            peak, color=REFERENCE_COLOUR, ls=":", lw=1.3, zorder=2, label=f"peak {_fmt_rate(peak)}"
        )
    n_cost = len(_candidates(plan, "pruned-cost"))
    if n_cost:
        ax.plot([], [], ls="", label=f"pruned by cost bound, never run: {n_cost}")
    finite_costs = [c for c in costs if math.isfinite(c)]
    if not finite_costs:
        _empty_note(ax, "no configuration was evaluated")
    else:
        ax.set_ylim(0, max(finite_costs) * 1.2)
    ax.set_xlim(x_lo, x_hi)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: _usd(v)))
    ax.set_title("Cost vs capacity of the evaluated configurations")
    ax.set_xlabel("maximum sustainable rate (req/s; arrows: only known to be above/below target)")
    ax.set_ylabel("cost at the target rate (USD per hour)")
    _finish(ax, ncol=2)
