"""A sweep folder or a plan folder → PNG and SVG charts, one self-contained report.html and a
Markdown twin (``report.md``, charts referenced by file name) for design documents.

A sweep folder is what ``ragstress sweep`` writes (``sweep.csv``, ``sweep.json`` and, when it
searched, ``capacity.csv`` / ``capacity.json``; ``timeline/`` for a scenario with faults); a
plan folder is what ``ragstress plan`` writes (``plan.json``). The report only reads them.
Charts are drawn by :mod:`ragstress.report.capacity_charts` on plain Figures with an Agg
canvas and written with the store's ``write_atomic``; the PNG carries no Software tag and the
SVG no date and fixed element ids, so the same folder gives the same files.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ragstress.analysis import summarize
from ragstress.capacity.aggregate import aggregate, by_config
from ragstress.capacity.knee import SATURATED
from ragstress.capacity.limits import CAPACITY_JSON, capacity_rows
from ragstress.capacity.sweep import STAGE_FIGURES, SWEEP_CSV, SWEEP_JSON
from ragstress.report.capacity_charts import (
    CONFIG_LINESTYLES,
    CONFIG_MARKERS,
    ConfigCurve,
    config_colour,
    cost_capacity_frontier,
    cost_vs_load,
    latency_vs_load,
    p95_by_config,
    stage_time_share,
    throughput_vs_load,
    utilisation_vs_load,
)
from ragstress.report.charts import CHART_STYLE, fmt_seconds
from ragstress.report.html import REPORT_HTML, REPORT_MD, _e, _md_cell, _md_table, _table
from ragstress.results.schema import RunResult
from ragstress.results.store import ResultsError, read_run, read_summary, write_atomic

__all__ = [
    "PLAN_JSON",
    "CapacityChart",
    "SweepData",
    "load_sweep",
    "plan_charts",
    "render_capacity_chart",
    "sweep_charts",
    "write_capacity_report",
]

PLAN_JSON = "plan.json"
TIMELINE_DIR = "timeline"  # as ragstress.capacity.jobs writes it
MAX_CONFIG_CHARTS = 6  # per-configuration charts for at most this many configurations
SVG_SALT = "ragstress-report"  # fixed SVG element ids: the same sweep gives the same SVG

_CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif; margin: 2rem auto;
  max-width: 1180px; padding: 0 1rem; color: #222; line-height: 1.45; }
h1 { margin-bottom: .2rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .6rem 0 1rem; font-size: .95rem; }
th, td { border: 1px solid #d8d8d8; padding: .3rem .7rem; text-align: left; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.met { background: #d9f2d9; color: #185c18; font-weight: 600; padding: .4rem .7rem; }
.notmet { background: #f9d6d5; color: #8a1c17; font-weight: 600; padding: .4rem .7rem; }
.warn { background: #fff3cd; padding: .5rem .8rem; border: 1px solid #e6d28a; }
figure { margin: 1.2rem 0 2rem; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #444; font-size: .95rem; margin-top: .3rem; }
.muted { color: #666; }
"""


@dataclass(frozen=True)
class CapacityChart:
    """A chart of the report: written as ``<name>.png`` and ``<name>.svg``."""

    name: str
    title: str
    caption: str
    draw: Callable[[Axes], None]
    size: tuple[float, float] = (11.0, 6.2)

    @property
    def png(self) -> str:
        return f"{self.name}.png"

    @property
    def svg(self) -> str:
        return f"{self.name}.svg"


def render_capacity_chart(chart: CapacityChart, dpi: int = 110) -> tuple[bytes, bytes]:
    """One chart as ``(PNG bytes, SVG bytes)``, drawn once on its own Agg Figure."""
    with matplotlib.rc_context({**CHART_STYLE, "svg.hashsalt": SVG_SALT}):
        fig = Figure(figsize=chart.size, dpi=dpi, layout="constrained")
        FigureCanvasAgg(fig)
        chart.draw(fig.add_subplot())
        png, svg = io.BytesIO(), io.BytesIO()
        fig.savefig(png, format="png", metadata={"Software": None})
        fig.savefig(svg, format="svg", metadata={"Date": None})
    return png.getvalue(), svg.getvalue()


# --------------------------------------------------------------------------------------------
# formatting


def _num(value: Any) -> float:
    if isinstance(value, bool) or value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _rate(value: Any) -> str:
    v = _num(value)
    return "—" if not math.isfinite(v) else f"{v:.3g} req/s"


def _usd(value: Any) -> str:
    v = _num(value)
    if not math.isfinite(v):
        return "—"
    return f"${v:.3g}" if abs(v) < 1000 else f"${v:,.0f}"


def _s(value: Any) -> str:
    return fmt_seconds(_num(value))


def _pct(value: Any) -> str:
    v = _num(value)
    return "—" if not math.isfinite(v) else f"{100 * v:.3g} %"


def _with_interval(mean: Any, low: Any, high: Any) -> str:
    text = _s(mean)
    lo, hi = _num(low), _num(high)
    if text != "—" and math.isfinite(lo) and math.isfinite(hi):
        text += f" ({fmt_seconds(max(lo, 0.0))} – {fmt_seconds(hi)})"
    return text


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "config"


def slo_objectives(slo: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """``(objective, target)`` rows of a scenario's SLO (unset targets left out)."""
    rows: list[tuple[str, str]] = []
    slo = slo or {}
    for metric, name in (("latency_s", "end-to-end latency"), ("ttft_s", "time to first token")):
        targets = slo.get(metric) or {}
        if isinstance(targets, Mapping):
            for pct, value in targets.items():
                if math.isfinite(_num(value)):
                    rows.append((f"{name} {pct}", f"≤ {_s(value)}"))
    if math.isfinite(_num(slo.get("error_rate"))):
        rows.append(("error rate", f"≤ {_pct(slo.get('error_rate'))}"))
    return rows


def latency_targets(slo: Mapping[str, Any] | None) -> list[tuple[str, float]]:
    targets = (slo or {}).get("latency_s") or {}
    if not isinstance(targets, Mapping):
        return []
    return [(str(p), _num(v)) for p, v in targets.items() if math.isfinite(_num(v))]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ResultsError(f"{path}: unreadable ({exc})") from None
    if not isinstance(data, dict):
        raise ResultsError(f"{path}: not a JSON object")
    return data


# --------------------------------------------------------------------------------------------
# a sweep


@dataclass(frozen=True)
class SweepData:
    """What a sweep folder holds, read and averaged over replications."""

    folder: Path
    inputs: Mapping[str, Any]
    rows: list[dict[str, str]]
    capacity: Sequence[Mapping[str, Any]]  # per configuration (capacity.json, or computed)
    search: Mapping[str, Any] | None
    curves: list[ConfigCurve]
    stages: list[str]
    timeline: RunResult | None
    timeline_summary: Mapping[str, Any] | None
    notes: list[str]

    @property
    def scenario(self) -> Mapping[str, Any]:
        s = self.inputs.get("scenario")
        return s if isinstance(s, Mapping) else {}

    @property
    def slo(self) -> Mapping[str, Any]:
        s = self.scenario.get("slo")
        return s if isinstance(s, Mapping) else {}

    @property
    def rates(self) -> list[float]:
        return sorted({_num(r["rate_rps"]) for r in self.rows} - {math.nan})


def _curve(
    k: int, label: str, points: Sequence[Mapping[str, Any]], cap: Mapping[str, Any]
) -> ConfigCurve:
    confident = cap.get("confident")
    return ConfigCurve(
        config=label,
        points=points,
        knee_rps=_num(cap.get("knee_rps")),
        knee_latency_s=_num(cap.get("knee_latency_p95_s")),
        max_rate_rps=_num(cap.get("max_rate_rps")),
        bracket_low_rps=_num(cap.get("bracket_low_rps")),
        bracket_high_rps=_num(cap.get("bracket_high_rps")),
        confident=confident if isinstance(confident, bool) else None,
        colour=config_colour(k),
        linestyle=CONFIG_LINESTYLES[k % len(CONFIG_LINESTYLES)],
        marker=CONFIG_MARKERS[k % len(CONFIG_MARKERS)],
    )


def load_sweep(folder: str | Path) -> SweepData:
    """Read a sweep folder; ``ResultsError`` when it is not one."""
    out = Path(folder)
    inputs = _read_json(out / SWEEP_JSON)
    try:
        with (out / SWEEP_CSV).open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise ResultsError(f"{out}: unreadable sweep ({exc})") from None
    if not rows or "config" not in rows[0] or "rate_rps" not in rows[0]:
        raise ResultsError(f"{out / SWEEP_CSV}: no sweep rows")
    stages = [str(s) for s in inputs.get("stages") or []]
    extra = [f"{s}_{f}" for s in stages for f in STAGE_FIGURES]
    curves_by = by_config(aggregate(rows, extra))
    notes: list[str] = []
    search: Mapping[str, Any] | None = None
    capacity: Sequence[Mapping[str, Any]]
    if (out / CAPACITY_JSON).is_file():
        document = _read_json(out / CAPACITY_JSON)
        capacity = [c for c in document.get("configs") or [] if isinstance(c, Mapping)]
        search = document.get("search")
    else:  # an older sweep: the knee from the grid, no search
        capacity = capacity_rows(rows, [(label, {}) for label in curves_by], None)
        notes.append(
            "This sweep has no capacity.json: knees are computed from the grid here and no "
            "maximum sustainable rate was searched."
        )
    caps = {str(c.get("config")): c for c in capacity}
    curves = [
        _curve(k, label, points, caps.get(label, {}))
        for k, (label, points) in enumerate(curves_by.items())
    ]
    timeline: RunResult | None = None
    timeline_summary: Mapping[str, Any] | None = None
    if (out / TIMELINE_DIR).is_dir():
        try:
            timeline = read_run(out / TIMELINE_DIR)
            timeline_summary = read_summary(out / TIMELINE_DIR) or summarize(timeline)
        except ResultsError as exc:
            notes.append(f"The fault timeline run could not be read: {exc}")
    return SweepData(
        out, inputs, rows, capacity, search, curves, stages, timeline, timeline_summary, notes
    )


def _fault_chart(data: SweepData) -> CapacityChart | None:
    """The fault timeline of the ``timeline/`` run. Hook: the chart comes from
    ``ragstress.report.fault_charts`` when that module is there; without it, no chart."""
    result, summary = data.timeline, data.timeline_summary
    if result is None:
        return None
    try:
        from ragstress.report.fault_charts import fault_timeline, has_faults
    except ImportError:
        return None
    if not has_faults(result):
        return None
    first = data.curves[0].config if data.curves else "the first configuration"
    return CapacityChart(
        "fault_timeline",
        "Fault timeline and recovery",
        f"Read what each shaded fault window did to the scenario as written (its own load, on "
        f"{first}) and how long it lasted after the fault: the latency lines and error bands "
        "should fall back under the dotted 'normal' line, and the bracket after each window "
        "gives the time until they did.",
        lambda ax: fault_timeline(ax, result, summary),
        (12.0, 6.4),
    )


def sweep_charts(data: SweepData) -> list[CapacityChart]:
    """Every chart the sweep has data for, in report order."""
    curves, stages = data.curves, data.stages
    slo = latency_targets(data.slo)
    shown = curves[:MAX_CONFIG_CHARTS]
    slugs: dict[str, str] = {}
    for curve in shown:
        slug = _slug(curve.config)
        while slug in slugs.values():
            slug += "-x"
        slugs[curve.config] = slug
    charts: list[CapacityChart] = []
    if len(curves) > 1:
        charts.append(
            CapacityChart(
                "latency_p95_by_config",
                "p95 latency by configuration",
                "Read how long each configuration's p95 stays under the black dashed SLO line: "
                "its star is the knee where latency starts to climb and its dashed vertical "
                "line the highest load at which the whole SLO still holds.",
                lambda ax: p95_by_config(ax, curves, slo),
            )
        )
    charts.extend(
        CapacityChart(
            f"latency_vs_load_{slugs[curve.config]}",
            f"Latency vs load: {curve.config}",
            "Read where the p95 curve crosses the red dashed SLO line and how close that is "
            "to the knee (star): the dashed vertical line is the maximum sustainable rate "
            "the search found, and in the grey region the configuration cannot keep up, so "
            "latency there only measures how long the run lasted.",
            partial(latency_vs_load, curve=curve, slo_latency=slo),
        )
        for curve in shown
    )
    charts.append(
        CapacityChart(
            "throughput_vs_load",
            "Throughput and goodput",
            "Read where each solid line leaves the dotted y = x line (the most that "
            "configuration can answer) and where its dashed goodput line falls away earlier "
            "(answers too late for the SLO); the diamond marks the maximum sustainable rate.",
            lambda ax: throughput_vs_load(ax, curves),
        )
    )
    charts.append(
        CapacityChart(
            "cost_vs_load",
            "Cost per 1,000 answers",
            "Read each configuration's star, the cheapest cost per 1,000 answers it reaches "
            "while the SLO still holds; hollow points fail the SLO, and past saturation the "
            "figure understates the cost, since answers served after the measurement window "
            "are counted but the replica-hours spent serving them are not.",
            lambda ax: cost_vs_load(ax, curves),
        )
    )
    if stages:
        charts.append(
            CapacityChart(
                "utilisation_vs_load",
                "Utilisation per stage",
                "Read which stage's line climbs towards the dotted 100 % line first: that "
                "stage saturates first and is the one to scale; an LLM engine's utilisation "
                "counts sequence slots in use, which can stay low while its steps already "
                "slow down, so read it together with the latency chart.",
                lambda ax: utilisation_vs_load(ax, curves, stages),
            )
        )
        charts.extend(
            CapacityChart(
                f"stage_time_share_{slugs[curve.config]}",
                f"Where the time goes: {curve.config}",
                "Read which segment grows as the load rises: a growing hatched (queue "
                "wait) segment marks the stage that ran out of capacity, a dominant solid "
                "(service) segment work that is slow in itself; the figure above each bar "
                "is the mean time a request spends in the stages.",
                partial(stage_time_share, curve=curve, stages=stages),
                (11.0, 6.0),
            )
            for curve in shown
        )
    fault = _fault_chart(data)
    if fault is not None:
        charts.append(fault)
    return charts


def _cheapest_within_slo(curve: ConfigCurve) -> str:
    best = math.nan, math.nan
    for p in curve.points:
        cost = _num(p.get("cost_usd_per_1k_answers"))
        if p.get("slo_met") and math.isfinite(cost) and not cost >= best[1]:
            best = _num(p.get("rate_rps")), cost
    if not math.isfinite(best[1]):
        return "— (SLO not met at any rate)"
    return f"{_usd(best[1])} at {_rate(best[0])}"


def _per_hour(curve: ConfigCurve) -> str:
    values = [v for v in curve.column("cost_usd_per_hour").tolist() if math.isfinite(v)]
    if not values:
        return "—"
    lo, hi = min(values), max(values)
    return _usd(hi) if hi - lo <= 0.005 * max(abs(hi), 1e-9) else f"{_usd(lo)} – {_usd(hi)}"


HEADLINE_HEADERS = (
    "configuration",
    "knee (p95 there)",
    "max sustainable rate",
    "search bracket (pass – fail)",
    "confident",
    "p95 at {low}",
    "p95 at {high}",
    "cheapest $ / 1k answers within SLO",
    "$ / hour",
)


def _headline(data: SweepData) -> tuple[list[str], list[list[str]]]:
    rates = data.rates
    low, high = (rates[0], rates[-1]) if rates else (math.nan, math.nan)
    headers = [h.format(low=_rate(low), high=_rate(high)) for h in HEADLINE_HEADERS]
    rows: list[list[str]] = []
    for curve in data.curves:
        knee = "none found"
        if math.isfinite(curve.knee_rps):
            knee = f"{_rate(curve.knee_rps)} ({_s(curve.knee_latency_s)})"
        bracket = "—"
        b_lo, b_hi = curve.bracket_low_rps, curve.bracket_high_rps
        if math.isfinite(b_lo):
            bracket = f"{b_lo:.3g} – {b_hi:.3g} req/s" if math.isfinite(b_hi) else f"≥ {b_lo:.3g}"
        confident = {True: "yes", False: "no", None: "—"}[curve.confident]

        def p95(rate: float, c: ConfigCurve = curve) -> str:
            return _with_interval(
                c.value_at(rate, "latency_p95_s"),
                c.value_at(rate, "latency_p95_s_low"),
                c.value_at(rate, "latency_p95_s_high"),
            )

        rows.append(
            [
                curve.config,
                knee,
                _rate(curve.max_rate_rps),
                bracket,
                confident,
                p95(low),
                p95(high),
                _cheapest_within_slo(curve),
                _per_hour(curve),
            ]
        )
    return headers, rows


def _sweep_caveats(data: SweepData) -> list[str]:
    """Things a reader should know before quoting a figure of this sweep."""
    out = list(data.notes)
    if data.curves and not any(math.isfinite(c.max_rate_rps) for c in data.curves):
        out.append(
            "No maximum sustainable rate was searched for this sweep (no SLO, or the search "
            "was turned off): the grid's own rates and verdicts are all there is."
        )
    for curve in data.curves:
        start = curve.first_saturated_rps
        if math.isfinite(start):
            out.append(
                f"{curve.config}: answers fell below {SATURATED:.0%} of the offered load from "
                f"{_rate(start)} on; latency and cost per answer at those rates describe a "
                "queue growing for the run's whole length, not a steady state."
            )
        if curve.confident is False:
            out.append(
                f"{curve.config}: the capacity search was not confident (a probe's SLO "
                "ratio stayed too close to 1 to call); quote the rate with its bracket."
            )
    for row in data.capacity:
        note = str(row.get("note") or "").strip()
        if note:
            out.append(f"{row.get('config')}: {note}")
    replications = int(_num(data.inputs.get("replications")) or 1)
    if replications == 1:
        out.append(
            "One replication per point: latency intervals are each run's own batch-means "
            "intervals; other figures have none."
        )
    elif replications < 4:
        out.append(
            f"{replications} replications per point: the 95 % intervals over so few runs are "
            "wide (Student t with few degrees of freedom)."
        )
    return out


def _sweep_inputs(data: SweepData) -> list[tuple[str, str]]:
    sc = data.scenario
    profile = data.inputs.get("profile")
    profile_name = str(profile.get("name", "—")) if isinstance(profile, Mapping) else "—"
    rates = data.rates
    rate_text = f"{rates[0]:.4g} – {rates[-1]:.4g} req/s ({len(rates)} rates)" if rates else "—"
    overrides = data.inputs.get("overrides") or []
    override_text = "; ".join(
        f"{o.get('key')} ∈ {{{', '.join(str(v) for v in o.get('values') or [])}}}"
        for o in overrides
        if isinstance(o, Mapping)
    )
    search_runs = sum(int(_num(r.get("runs"))) for r in data.capacity if _num(r.get("runs")) > 0)
    probes = sum(int(_num(r.get("probes"))) for r in data.capacity if _num(r.get("probes")) > 0)
    runs = f"{len(data.rows):,} grid runs"
    if search_runs:
        runs += f" + {search_runs:,} capacity-search runs ({probes} probes)"
    duration = _num(sc.get("duration_s"))
    warmup = _num(sc.get("warmup_s"))
    rows = [
        ("scenario", str(sc.get("name", "—"))),
        ("profile", profile_name),
        ("offered rates", rate_text),
        ("configurations", f"{len(data.curves)}" + (f": {override_text}" if override_text else "")),
        ("replications per point", str(data.inputs.get("replications", "—"))),
        ("seed", f"{data.inputs.get('seed', '—')} (replication r uses seed + r)"),
        ("run length", f"{_s(duration)}, first {_s(warmup)} not measured (warm-up)"),
        ("runs", runs),
        ("stages", " → ".join(data.stages) or "—"),
    ]
    if data.search:
        tolerance = _num(data.search.get("tolerance"))
        rows.append(
            (
                "capacity search",
                f"to within {tolerance:.0%} of the rate, "
                f"{data.search.get('replications', '—')} to "
                f"{data.search.get('max_replications', '—')} replications per probe",
            )
        )
    return rows


# --------------------------------------------------------------------------------------------
# a plan


def plan_charts(plan: Mapping[str, Any]) -> list[CapacityChart]:
    return [
        CapacityChart(
            "cost_vs_capacity",
            "Cost vs capacity",
            "Read the chosen configuration (star) against the others: further right means "
            "more capacity beyond the dashed target line, lower means cheaper, and a point "
            "above the green step line is beaten by a cheaper configuration with at least as "
            "much capacity.",
            lambda ax: cost_capacity_frontier(ax, plan),
            (11.0, 6.6),
        )
    ]


RANKED_HEADERS = (
    "rank",
    "configuration",
    "$ / hour",
    "$ / 1k answers",
    "p95 at target",
    "SLO ratio at target",
    "max sustainable rate",
    "headroom over target",
)
EVALUATED_HEADERS = (
    "configuration",
    "status",
    "fixed $ / hour",
    "$ / hour at target",
    "p95 at target",
    "SLO ratio at target",
)


def _candidates(plan: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [c for c in plan.get("candidates") or [] if isinstance(c, Mapping)]


def _ranked_rows(plan: Mapping[str, Any]) -> list[list[str]]:
    target = _num(plan.get("target_rps"))
    ranked = sorted((c for c in _candidates(plan) if c.get("rank")), key=lambda c: int(c["rank"]))
    rows = []
    for c in ranked:
        cap = _num(c.get("max_rate_rps"))
        headroom = "—"
        if math.isfinite(cap) and math.isfinite(target) and target > 0:
            headroom = f"{cap / target - 1:+.0%}"
        name = str(c.get("config"))
        if name == plan.get("chosen"):
            name += " (chosen)"
        rows.append(
            [
                str(c.get("rank")),
                name,
                _usd(c.get("usd_per_hour")),
                _usd(c.get("usd_per_1k_answers")),
                _s(c.get("latency_p95_s")),
                f"{_num(c.get('slo_ratio')):.3g}",
                _rate(cap),
                headroom,
            ]
        )
    return rows


def _evaluated_rows(plan: Mapping[str, Any]) -> list[list[str]]:
    evaluated = [c for c in _candidates(plan) if c.get("status") in ("feasible", "infeasible")]
    evaluated.sort(key=lambda c: (_num(c.get("usd_per_hour")), str(c.get("config"))))
    return [
        [
            str(c.get("config")),
            str(c.get("status")),
            _usd(c.get("fixed_usd_per_hour")),
            _usd(c.get("usd_per_hour")),
            _s(c.get("latency_p95_s")),
            f"{_num(c.get('slo_ratio')):.3g}",
        ]
        for c in evaluated
    ]


def _plan_counts(plan: Mapping[str, Any]) -> str:
    cands = _candidates(plan)
    size = int(
        _num(plan.get("grid_size")) if math.isfinite(_num(plan.get("grid_size"))) else len(cands)
    )

    def count(key: str, status: str) -> int:
        v = _num(plan.get(key))
        return int(v) if math.isfinite(v) else sum(c.get("status") == status for c in cands)

    evaluated = _num(plan.get("evaluated"))
    n_eval = (
        int(evaluated)
        if math.isfinite(evaluated)
        else sum(c.get("status") in ("feasible", "infeasible") for c in cands)
    )
    mono = count("pruned_monotone", "pruned-monotone")
    dominated = count("pruned_dominated", "pruned-dominated")
    cost = count("pruned_cost", "pruned-cost")
    runs = _num(plan.get("runs"))
    text = (
        f"Evaluated {n_eval} of {size} configurations (pruned: {mono} implied infeasible by a "
        f"smaller configuration that failed, {dominated} above a feasible one and no cheaper, "
        f"{cost} by the cost bound)"
    )
    if math.isfinite(runs):
        text += f"; {int(runs):,} simulation runs in all"
    return text + "."


def _plan_inputs(plan: Mapping[str, Any]) -> list[tuple[str, str]]:
    sc = plan.get("scenario") if isinstance(plan.get("scenario"), Mapping) else {}
    profile = plan.get("profile") if isinstance(plan.get("profile"), Mapping) else {}
    knobs = []
    for knob in plan.get("knobs") or []:
        if isinstance(knob, Mapping):
            choices = knob.get("choices") or []
            mono = ", monotone" if knob.get("monotone") else ""
            knobs.append(f"{knob.get('label')} ({len(choices)} choices{mono})")
    headroom = _num(plan.get("headroom"))
    return [
        ("scenario", str((sc or {}).get("name", "—"))),
        ("profile", str((profile or {}).get("name", "—"))),
        ("planned peak", _rate(plan.get("peak_rps"))),
        ("headroom", "—" if not math.isfinite(headroom) else f"{headroom:.0%}"),
        ("target rate (peak + headroom)", _rate(plan.get("target_rps"))),
        ("knobs", "; ".join(knobs) or "—"),
    ]


def _plan_verdict(plan: Mapping[str, Any]) -> tuple[bool, str]:
    chosen = plan.get("chosen")
    row = next((c for c in _candidates(plan) if c.get("config") == chosen), None)
    if not chosen or row is None:
        return False, (
            f"No configuration meets the SLO at {_rate(plan.get('target_rps'))}: widen the "
            "knobs (more replicas, a faster model) or lower the peak."
        )
    return True, (
        f"Chosen: {chosen}: {_usd(row.get('usd_per_hour'))} per hour, "
        f"{_usd(row.get('usd_per_1k_answers'))} per 1,000 answers, p95 "
        f"{_s(row.get('latency_p95_s'))} at the target rate, maximum sustainable rate "
        f"{_rate(row.get('max_rate_rps'))}."
    )


# --------------------------------------------------------------------------------------------
# HTML and Markdown


def _head(title: str) -> list[str]:
    return [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
    ]


def _figures_html(charts: Sequence[CapacityChart], images: Mapping[str, bytes]) -> list[str]:
    parts = []
    for chart in charts:
        data = base64.b64encode(images[chart.png]).decode("ascii")
        parts.append(
            f"<figure><h3>{_e(chart.title)}</h3>"
            f'<img src="data:image/png;base64,{data}" alt="{_e(chart.title)}">'
            f"<figcaption>{_e(chart.caption)}</figcaption></figure>"
        )
    names = ", ".join(f"{c.name}.png/.svg" for c in charts)
    parts.append(f'<p class="muted">The charts are also in this folder: {_e(names)}.</p>')
    return parts


def _figures_md(charts: Sequence[CapacityChart]) -> list[str]:
    out: list[str] = []
    for chart in charts:
        out += [f"### {chart.title}", "", f"![{chart.title}]({chart.png})", "", chart.caption, ""]
    out.append(f"Each chart is also in this folder as SVG ({', '.join(c.svg for c in charts)}).")
    return out


def _slo_html(slo: Mapping[str, Any] | None) -> str:
    rows = slo_objectives(slo)
    if not rows:
        return '<p class="muted">The scenario names no SLO: no capacity was searched.</p>'
    return _table(["objective", "target"], rows)


def _slo_md(slo: Mapping[str, Any] | None) -> str:
    rows = slo_objectives(slo)
    return _md_table(["objective", "target"], rows) if rows else "The scenario names no SLO."


def _sweep_title(data: SweepData) -> str:
    return f"ragstress capacity report: {data.scenario.get('name', 'sweep')}"


HEADLINE_INTRO = (
    "The knee is where p95 latency starts to climb on the grid; the maximum sustainable rate "
    "is the highest offered load at which the search found every SLO objective met. p95 "
    "figures are means over replications with their 95 % interval."
)


def _sweep_html(
    data: SweepData, charts: Sequence[CapacityChart], images: Mapping[str, bytes]
) -> str:
    parts = _head(_sweep_title(data))
    desc = str(data.scenario.get("description") or "")
    if desc:
        parts.append(f'<p class="muted">{_e(desc)}</p>')
    parts.append(_table(["sweep", ""], _sweep_inputs(data), numeric_from=99))
    parts.append("<h2>Capacity by configuration</h2>")
    parts.append(f'<p class="muted">{_e(HEADLINE_INTRO)}</p>')
    headers, rows = _headline(data)
    parts.append(_table(headers, rows, numeric_from=1))
    parts.append("<h2>Service-level objectives</h2>")
    parts.append(_slo_html(data.slo))
    caveats = _sweep_caveats(data)
    if caveats:
        parts.append("<h2>Before quoting these figures</h2>")
        parts.append("<ul>" + "".join(f"<li>{_e(c)}</li>" for c in caveats) + "</ul>")
    if len(data.curves) > MAX_CONFIG_CHARTS:
        parts.append(
            f'<p class="muted">Per-configuration charts are drawn for the first '
            f"{MAX_CONFIG_CHARTS} of {len(data.curves)} configurations.</p>"
        )
    parts.append("<h2>Charts</h2>")
    parts += _figures_html(charts, images)
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _sweep_md(data: SweepData, charts: Sequence[CapacityChart]) -> str:
    out = [f"# {_md_cell(_sweep_title(data))}", ""]
    out += [_md_table(["sweep", ""], _sweep_inputs(data)), ""]
    headers, rows = _headline(data)
    out += ["## Capacity by configuration", "", HEADLINE_INTRO, "", _md_table(headers, rows), ""]
    out += ["## Service-level objectives", "", _slo_md(data.slo), ""]
    caveats = _sweep_caveats(data)
    if caveats:
        out += ["## Before quoting these figures", "", *(f"- {c}" for c in caveats), ""]
    out += ["## Charts", "", *_figures_md(charts)]
    return "\n".join(out)


def _plan_title(plan: Mapping[str, Any]) -> str:
    sc = plan.get("scenario") if isinstance(plan.get("scenario"), Mapping) else {}
    return f"ragstress capacity plan: {(sc or {}).get('name', 'plan')}"


def _plan_html(
    plan: Mapping[str, Any], charts: Sequence[CapacityChart], images: Mapping[str, bytes]
) -> str:
    parts = _head(_plan_title(plan))
    parts.append(_table(["plan", ""], _plan_inputs(plan), numeric_from=99))
    ok, verdict = _plan_verdict(plan)
    parts.append(f'<p class="{"met" if ok else "notmet"}">{_e(verdict)}</p>')
    parts.append(f"<p>{_e(_plan_counts(plan))}</p>")
    sc = plan.get("scenario")
    parts.append("<h2>Service-level objectives</h2>")
    parts.append(_slo_html(sc.get("slo") if isinstance(sc, Mapping) else None))
    parts.append("<h2>Ranked configurations</h2>")
    ranked = _ranked_rows(plan)
    parts.append(
        _table(RANKED_HEADERS, ranked, numeric_from=2)
        if ranked
        else '<p class="muted">No feasible configuration to rank.</p>'
    )
    parts.append("<h2>Charts</h2>")
    parts += _figures_html(charts, images)
    parts.append("<h2>Every evaluated configuration</h2>")
    parts.append(_table(EVALUATED_HEADERS, _evaluated_rows(plan), numeric_from=2))
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _plan_md(plan: Mapping[str, Any], charts: Sequence[CapacityChart]) -> str:
    out = [f"# {_md_cell(_plan_title(plan))}", ""]
    out += [_md_table(["plan", ""], _plan_inputs(plan)), ""]
    ok, verdict = _plan_verdict(plan)
    out += [f"**{verdict}**" if ok else f"**Warning:** {verdict}", "", _plan_counts(plan), ""]
    sc = plan.get("scenario")
    out += ["## Service-level objectives", ""]
    out += [_slo_md(sc.get("slo") if isinstance(sc, Mapping) else None), ""]
    ranked = _ranked_rows(plan)
    out += ["## Ranked configurations", ""]
    out += [_md_table(RANKED_HEADERS, ranked) if ranked else "No feasible configuration.", ""]
    out += ["## Charts", "", *_figures_md(charts), ""]
    out += [
        "## Every evaluated configuration",
        "",
        _md_table(EVALUATED_HEADERS, _evaluated_rows(plan)),
    ]
    return "\n".join(out)


# --------------------------------------------------------------------------------------------


def _write_charts(
    out: Path, charts: Sequence[CapacityChart]
) -> tuple[list[Path], dict[str, bytes]]:
    written: list[Path] = []
    images: dict[str, bytes] = {}
    for chart in charts:
        png, svg = render_capacity_chart(chart)
        images[chart.png] = png
        for name, data in ((chart.png, png), (chart.svg, svg)):
            write_atomic(out / name, data)
            written.append(out / name)
    return written, images


def write_capacity_report(folder: str | Path) -> list[Path]:
    """Draw the charts of the sweep (``sweep.json``) or plan (``plan.json``) in ``folder``
    as PNG and SVG, and write ``report.html`` (charts inlined, nothing external) and
    ``report.md`` into it. Returns the paths written; ``ResultsError`` for any other folder.
    """
    out = Path(folder)
    if (out / PLAN_JSON).is_file():
        plan = _read_json(out / PLAN_JSON)
        if not isinstance(plan.get("candidates"), list):
            raise ResultsError(f"{out / PLAN_JSON}: no candidates list")
        charts = plan_charts(plan)
        written, images = _write_charts(out, charts)
        html_text, md_text = _plan_html(plan, charts, images), _plan_md(plan, charts)
    elif (out / SWEEP_JSON).is_file():
        data = load_sweep(out)
        charts = sweep_charts(data)
        written, images = _write_charts(out, charts)
        html_text, md_text = _sweep_html(data, charts, images), _sweep_md(data, charts)
    else:
        raise ResultsError(f"{out}: not a sweep or plan folder (no {SWEEP_JSON} or {PLAN_JSON})")
    write_atomic(out / REPORT_HTML, html_text.encode("utf-8"))
    # "\\$": a Markdown renderer with math support would read "$13.2 … $0.18" as a formula
    md_text = md_text.replace("$", "\\$")
    write_atomic(out / REPORT_MD, (md_text + "\n").encode("utf-8"))
    return [*written, out / REPORT_HTML, out / REPORT_MD]
