"""Charts of a validation: predicted (dashed) and measured (solid) overlaid.

Like :mod:`ragstress.report.charts`, each function draws on the Axes it is given and touches
nothing else; :func:`validation_charts` lists the charts of a whole validation as
:class:`~ragstress.report.capacity_report.CapacityChart` specs (a name, a title, a caption and
a draw function), which the report renders to PNG and SVG. The same visual rule holds in
every chart: **dashed = predicted by the model, solid = measured**, one colour per figure.
"""

from __future__ import annotations

import math
import re
from functools import partial

import numpy as np
from matplotlib.axes import Axes

from ragstress.analysis.validation import PairValidation, Validation
from ragstress.report.capacity_charts import _log_seconds_axis
from ragstress.report.capacity_report import CapacityChart
from ragstress.report.charts import (
    E2E_COLOUR,
    TTFT_COLOUR,
    _ecdf_points,
    _empty_note,
    _finish,
    fmt_seconds,
)

__all__ = [
    "error_rate_timeline",
    "latency_cdfs",
    "latency_vs_load",
    "stage_times",
    "validation_charts",
]

PREDICTED_STYLE = "--"
MEASURED_STYLE = "-"
PERCENTILE_COLOURS: tuple[tuple[str, str], ...] = (
    ("p50", "#17becf"),
    ("p95", E2E_COLOUR),
    ("p99", "#54278f"),
)
FAULT_COLOUR = "#9467bd"
PREDICTED_BAR = "#c6dbef"
MEASURED_BAR = E2E_COLOUR
RECOVERED_COLOUR = "#1a7f37"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:48] or "level"


def _x_positions(validation: Validation) -> tuple[np.ndarray, str, list[str] | None]:
    """Offered rates when every pair has one; else level positions with their names."""
    rates = [p.offered_rps for p in validation.pairs]
    if rates and all(r is not None for r in rates):
        return np.asarray(rates, dtype=float), "offered load (req/s)", None
    names = [p.level for p in validation.pairs]
    return np.arange(len(names), dtype=float), "load level", names


def latency_vs_load(ax: Axes, validation: Validation) -> None:
    """p50, p95 and p99 end-to-end latency per load level: predicted dashed with open markers,
    measured solid with filled ones, on a log time axis."""
    x, xlabel, names = _x_positions(validation)
    values: list[np.ndarray] = []
    for q, colour in PERCENTILE_COLOURS:
        name = f"latency_{q}"
        pred = np.array([p.metrics[name].predicted for p in validation.pairs], dtype=float)
        meas = np.array([p.metrics[name].measured for p in validation.pairs], dtype=float)
        values += [pred, meas]
        ax.plot(
            x, meas, color=colour, ls=MEASURED_STYLE, lw=2, marker="o", ms=6, label=f"{q} measured"
        )
        ax.plot(
            x,
            pred,
            color=colour,
            ls=PREDICTED_STYLE,
            lw=1.8,
            marker="o",
            ms=6,
            mfc="white",
            label=f"{q} predicted",
        )
    every = np.concatenate(values) if values else np.zeros(0)
    _log_seconds_axis(ax, every)
    if not np.isfinite(every).any():
        _empty_note(ax, "no answered requests at any load level")
    if names is not None:
        ax.set_xticks(x, names, rotation=20 if len(names) > 4 else 0)
    if x.size == 1:
        ax.set_xlim(x[0] * 0.8 - 0.5 if names is not None else x[0] * 0.8, x[0] * 1.2 + 0.5)
    ax.set_title("End-to-end latency versus load: predicted (dashed) and measured (solid)")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("latency (s, log scale)")
    _finish(ax, ncol=3)


def latency_cdfs(ax: Axes, pair: PairValidation) -> None:
    """Empirical CDFs of end-to-end latency and TTFT of the answered requests in the window,
    predicted dashed and measured solid, on a log time axis."""
    ax.set_xscale("log")
    plotted = False
    curves = [("latency_s", "end-to-end", E2E_COLOUR)]
    same = all(
        pair.samples["ttft_s"][side].size == pair.samples["latency_s"][side].size
        and np.allclose(pair.samples["ttft_s"][side], pair.samples["latency_s"][side])
        for side in ("predicted", "measured")
    )
    if not same:
        curves.append(("ttft_s", "TTFT", TTFT_COLOUR))
    for column, label, colour in curves:
        for side, style in (("measured", MEASURED_STYLE), ("predicted", PREDICTED_STYLE)):
            values = pair.samples[column][side]
            values = values[values > 0]
            if values.size == 0:
                continue
            plotted = True
            xs, frac = _ecdf_points(values)
            p95 = float(np.percentile(values, 95))
            ax.step(
                xs,
                frac,
                where="post",
                color=colour,
                ls=style,
                lw=2 if side == "measured" else 1.6,
                label=f"{label} {side}: p95 {fmt_seconds(p95)}",
            )
    if not plotted:
        _empty_note(ax, "no answered requests")
        ax.set_xlim(1e-2, 1e2)
    for level in (0.5, 0.95, 0.99):
        ax.axhline(level, color="#888888", ls=":", lw=1.0)
    ax.set_ylim(0, 1.02)
    what = "end-to-end; TTFT = latency on both sides" if same else "end-to-end and TTFT"
    ax.set_title(f"Latency distribution ({what}), {pair.level}: predicted dashed, measured solid")
    ax.set_xlabel("latency from intended arrival (s, log scale)")
    ax.set_ylabel("fraction of answered requests ≤ x")
    _finish(ax, ncol=2)


def error_rate_timeline(ax: Axes, pair: PairValidation) -> None:
    """Share of each second's arrivals that failed, predicted dashed and measured solid, with
    the fault windows shaded and each side's recovery time marked (a vertical line at the
    moment it was back to normal: dashed predicted, solid measured)."""
    faults = pair.faults
    if faults is None:
        _empty_note(ax, "no fault plan")
        return
    edges = np.append(faults.t_s, faults.t_s[-1] + faults.width_s) if faults.t_s.size else None
    for k, w in enumerate(faults.windows):
        ax.axvspan(
            w.start_s,
            w.end_s,
            facecolor=FAULT_COLOUR,
            alpha=0.18,
            lw=0,
            label="fault window" if k == 0 else None,
        )
        ax.text(
            w.start_s,
            1.0,
            f" {w.label}",
            transform=ax.get_xaxis_transform(),
            fontsize=8.5,
            va="top",
            ha="left",
            color="#54278f",
        )
    if edges is not None:
        for side, values, style, width in (
            ("measured", faults.measured_error_rate, MEASURED_STYLE, 1.8),
            ("predicted", faults.predicted_error_rate, PREDICTED_STYLE, 1.5),
        ):
            pct = 100 * np.append(values, values[-1:])
            ax.step(
                edges,
                pct,
                where="post",
                color="#d62728",
                ls=style,
                lw=width,
                label=f"errors {side}",
            )
    for k, (p, m) in enumerate(faults.recoveries):
        for rec, style, side in (
            (p, PREDICTED_STYLE, "predicted"),
            (m, MEASURED_STYLE, "measured"),
        ):
            if rec.recovered_at_s is None:
                continue
            ax.axvline(
                rec.recovered_at_s,
                color=RECOVERED_COLOUR,
                ls=style,
                lw=1.4,
                label=f"back to normal ({side})" if k == 0 else None,
            )
    ax.set_xlim(0, max(pair.window_s[1], 1e-9))
    ax.set_ylim(bottom=0)
    top = ax.get_ylim()[1]
    ax.set_ylim(0, max(top * 1.15, 5.0))
    ax.set_title(f"Error rate over time, {pair.level}: predicted (dashed) and measured (solid)")
    ax.set_xlabel(f"arrival time since start of run (s; {faults.width_s:g} s windows)")
    ax.set_ylabel("requests failed (% of arrivals)")
    _finish(ax, ncol=3)


def stage_times(ax: Axes, pair: PairValidation) -> None:
    """Mean time per request at each stage (wait + service; a measured run sees the stage as a
    whole), predicted (light, hatched) beside measured (solid)."""
    stages = pair.stages
    pred = np.array([pair.metrics[f"stage.{s}"].predicted for s in stages], dtype=float)
    meas = np.array([pair.metrics[f"stage.{s}"].measured for s in stages], dtype=float)
    if not stages or not (np.isfinite(pred).any() or np.isfinite(meas).any()):
        _empty_note(ax, "no stage times")
        return
    y = np.arange(len(stages), dtype=float)
    height = 0.38
    ax.barh(
        y - height / 2,
        np.nan_to_num(pred),
        height,
        color=PREDICTED_BAR,
        hatch="//",
        edgecolor=E2E_COLOUR,
        label="predicted",
    )
    ax.barh(y + height / 2, np.nan_to_num(meas), height, color=MEASURED_BAR, label="measured")
    for yy, value in [
        *zip(y - height / 2, pred, strict=True),
        *zip(y + height / 2, meas, strict=True),
    ]:
        if math.isfinite(value):
            ax.text(value, yy, f" {fmt_seconds(float(value))}", va="center", fontsize=9)
    ax.set_yticks(y, stages)
    ax.invert_yaxis()
    right = float(np.nanmax(np.concatenate([pred, meas])))
    ax.set_xlim(0, right * 1.25 if right > 0 else 1.0)
    ax.set_title(f"Mean time per request at each stage, {pair.level}")
    ax.set_xlabel("seconds per request that reached the stage (wait + service)")
    _finish(ax, ncol=2, grid_axis="x")


def validation_charts(validation: Validation) -> list[CapacityChart]:
    """The validation's charts, in report order: latency versus load, then per load level its
    CDFs, its error-rate timeline (fault scenarios) and its stage times."""
    charts = [
        CapacityChart(
            "latency_vs_load",
            "Latency versus load",
            "Read how far the dashed (predicted) lines sit from the solid (measured) ones of the "
            "same colour at each load: a gap that widens with load means the model gets "
            "queueing wrong near saturation; a constant gap means a wrong service time.",
            partial(latency_vs_load, validation=validation),
        )
    ]
    for k, pair in enumerate(validation.pairs, start=1):
        slug = f"{k:02d}-{_slug(pair.level)}"
        charts.append(
            CapacityChart(
                f"cdf_{slug}",
                f"Latency distribution: {pair.level}",
                "Read where the curves separate: a dashed curve left of its solid twin means "
                "the model predicts faster answers than measured at that fraction of requests; "
                "separation only at the top is a tail (p99) mismatch.",
                partial(latency_cdfs, pair=pair),
            )
        )
        if pair.faults is not None:
            charts.append(
                CapacityChart(
                    f"errors_{slug}",
                    f"Error rate over time: {pair.level}",
                    "Read whether the model fails the same requests at the same time: the "
                    "dashed (predicted) and solid (measured) error lines should rise in each "
                    "shaded fault window and fall back together; the green lines mark when each "
                    "side was back to normal.",
                    partial(error_rate_timeline, pair=pair),
                    (12.0, 6.0),
                )
            )
        if pair.stages:
            charts.append(
                CapacityChart(
                    f"stages_{slug}",
                    f"Stage times: {pair.level}",
                    "Read which stage the model gets wrong: a hatched (predicted) bar far from "
                    "the solid (measured) one below it names the stage to recalibrate.",
                    partial(stage_times, pair=pair),
                    (11.0, max(3.2, 1.2 + 0.8 * len(pair.stages))),
                )
            )
    return charts
