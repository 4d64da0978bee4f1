"""A run folder → PNG charts, one self-contained report.html and a Markdown twin.

The report only reads: the run comes from the store (``read_run``/``read_summary``) and the
summary is recomputed with ``analysis.summarize`` when the folder has none. Files are written
with the store's ``write_atomic``, so a reader never sees half a chart. Figures are plain
``matplotlib.figure.Figure`` objects on an Agg canvas: no pyplot, no global figure state.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ragstress.analysis import summarize
from ragstress.report.charts import (
    CHART_STYLE,
    fmt_seconds,
    has_outcome_series,
    has_stage_call_series,
    latency_cdf,
    latency_over_time,
    outcomes_over_time,
    queues_over_time,
    stage_breakdown,
    stage_calls_over_time,
    throughput_over_time,
)
from ragstress.report.fault_charts import fault_timeline, has_faults
from ragstress.results.schema import OUTCOMES, RunResult
from ragstress.results.store import read_run, read_summary, write_atomic

__all__ = ["CHARTS", "ChartSpec", "render_chart", "write_report"]

REPORT_HTML = "report.html"
REPORT_MD = "report.md"

ChartFn = Callable[[Axes, RunResult, Mapping[str, Any] | None], None]


def _always(result: RunResult) -> bool:
    del result
    return True


@dataclass(frozen=True)
class ChartSpec:
    """A chart of the report. ``available`` says whether a run has what the chart needs; a
    run without it (an older or measured run) gets a report without that chart."""

    filename: str
    title: str
    draw: ChartFn
    caption: str
    size: tuple[float, float] = (11.0, 5.8)
    available: Callable[[RunResult], bool] = _always


CHARTS: tuple[ChartSpec, ...] = (
    ChartSpec(
        "latency_cdf.png",
        "Latency distribution",
        latency_cdf,
        "Read where each curve crosses its dashed SLO line: a p95 target is met when the curve "
        "is already above 0.95 at the line; the markers give p50/p95/p99 and the bar around "
        "the p95 marker its 95% confidence interval.",
    ),
    ChartSpec(
        "latency_over_time.png",
        "Latency over time",
        latency_over_time,
        "Read when latency left the SLO band: the p95 line above the dashed target shows which "
        "arrivals were hurt, and how long latency took to come back after a load change.",
    ),
    ChartSpec(
        "throughput_over_time.png",
        "Offered load and throughput",
        throughput_over_time,
        "Read whether the system kept up: answers should track arrivals; answers lagging "
        "arrivals mean a backlog is building, and answers continuing after the load ends mean "
        "it is draining.",
    ),
    ChartSpec(
        "stage_breakdown.png",
        "Per-stage breakdown",
        stage_breakdown,
        "Read which stage dominates: a long red (queue wait) segment marks the bottleneck "
        "that needs more capacity; a long green (service) segment marks slow work itself.",
        (11.0, 4.8),
    ),
    ChartSpec(
        "queues_over_time.png",
        "In-flight requests and queues",
        queues_over_time,
        "Read which queue grows with the load: a stage whose queue rises and keeps rising is "
        "saturated, and the in-flight line shows how much work was in the system.",
    ),
    ChartSpec(
        "outcomes_over_time.png",
        "Outcomes over time",
        outcomes_over_time,
        "Read when requests started failing and how: warm bands stacked on the green answers "
        "are failures by kind (counts over the whole run in the legend), the black line is "
        "arrivals, and the blue line (right axis) the p95 latency of recent answers.",
        available=has_outcome_series,
    ),
    ChartSpec(
        "stage_calls_over_time.png",
        "Calls per stage: sent vs served",
        stage_calls_over_time,
        "Read retry amplification and server throughput: a stage's solid line (calls sent, "
        "retries included) far above its dashed line (calls it finished) means calls were "
        "refused or retried faster than the stage could serve them.",
        available=has_stage_call_series,
    ),
    ChartSpec(
        "fault_timeline.png",
        "Fault timeline and recovery",
        fault_timeline,
        "Read what each shaded fault window did and how long it lasted after the fault: the "
        "latency lines and the error bands behind them should fall back under the dotted "
        "'normal' line, and the bracket after each window gives the time until they did "
        "(or says the system had not recovered by the end of the load).",
        (12.0, 6.4),
        available=has_faults,
    ),
)


# --------------------------------------------------------------------------------------------
# rendering


def render_chart(
    spec: ChartSpec, result: RunResult, summary: Mapping[str, Any] | None, dpi: int = 110
) -> bytes:
    """One chart as PNG bytes, drawn on its own Figure with an Agg canvas."""
    with matplotlib.rc_context(CHART_STYLE):
        fig = Figure(figsize=spec.size, dpi=dpi, layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        spec.draw(ax, result, summary)
        buf = io.BytesIO()
        # no Software tag: the PNG then carries no URL at all
        fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# formatting


def _num(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan
    return float(value)


def _get(mapping: Mapping[str, Any] | None, *keys: str) -> Any:
    cur: Any = mapping
    for k in keys:
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(k)
    return cur


def _fmt_rate(value: Any) -> str:
    v = _num(value)
    return "—" if not math.isfinite(v) else f"{v:.3g} req/s"


def _fmt_pct(value: Any) -> str:
    v = _num(value)
    if not math.isfinite(v):
        return "—"
    return f"{100 * v:.3g} %"


def _fmt_usd(value: Any) -> str:
    v = _num(value)
    if not math.isfinite(v):
        return "—"
    return f"${v:.4g}"


def _fmt_s(value: Any) -> str:
    return fmt_seconds(_num(value))


def _fmt_ci(summary: Mapping[str, Any], metric: str, pct: str) -> str:
    ci = _get(summary, metric, "ci95", pct)
    if not isinstance(ci, Sequence) or len(ci) != 2:
        return "—"
    lo, hi = _num(ci[0]), _num(ci[1])
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "—"
    return f"{fmt_seconds(lo)} – {fmt_seconds(hi)}"


def _fmt_int(value: Any) -> str:
    v = _num(value)
    return "—" if not math.isfinite(v) else f"{int(v):,}"


def _slo_value(row: Mapping[str, Any]) -> tuple[str, str]:
    """(target, value) of an SLO row, formatted with units."""
    if str(row.get("objective", "")) == "error_rate":
        return f"≤ {_fmt_pct(row.get('target'))}", _fmt_pct(row.get("value"))
    return f"≤ {_fmt_s(row.get('target'))}", _fmt_s(row.get("value"))


def _fmt_times(value: Any) -> str:
    v = _num(value)
    return "—" if not math.isfinite(v) else f"×{v:.3g}"


def _stage_cost_rows(
    summary: Mapping[str, Any], stages: Sequence[str]
) -> list[tuple[str, str, str]]:
    """Per stage: its cost (call charges + replica-hour share); none for an older summary."""
    by_stage = _get(summary, "cost_usd", "by_stage")
    if not isinstance(by_stage, Mapping):
        return []
    rows = []
    for stage in stages:
        entry = by_stage.get(stage)
        if not isinstance(entry, Mapping):
            continue
        detail = (
            f"{_fmt_usd(entry.get('per_request_charges'))} calls + "
            f"{_fmt_usd(entry.get('fixed'))} replica-hours"
        )
        rows.append((f"cost: {stage}", f"{_fmt_usd(entry.get('total'))} ({detail})", ""))
    return rows


def _retry_rows(summary: Mapping[str, Any], stages: Sequence[str]) -> list[tuple[str, str, str]]:
    """Per stage: calls sent per request that reached it; none for an older summary."""
    amplification = summary.get("retry_amplification")
    if not isinstance(amplification, Mapping):
        return []
    return [
        (f"retry amplification: {stage}", _fmt_times(amplification.get(stage)), "")
        for stage in stages
        if stage in amplification
    ]


def _summary_rows(
    summary: Mapping[str, Any], stages: Sequence[str] = ()
) -> list[tuple[str, str, str]]:
    """(figure, value, 95 % interval) rows of the summary table."""
    lat = "latency_s"
    return [
        ("requests (in measurement window)", _fmt_int(summary.get("requests")), ""),
        ("answered", _fmt_int(summary.get("answered")), ""),
        ("offered load", _fmt_rate(summary.get("offered_rps")), ""),
        ("throughput (answers)", _fmt_rate(summary.get("throughput_rps")), ""),
        ("goodput (answers within SLO)", _fmt_rate(summary.get("goodput_rps")), ""),
        ("error rate", _fmt_pct(summary.get("error_rate")), ""),
        ("latency p50", _fmt_s(_get(summary, lat, "p50")), ""),
        ("latency p95", _fmt_s(_get(summary, lat, "p95")), _fmt_ci(summary, lat, "p95")),
        ("latency p99", _fmt_s(_get(summary, lat, "p99")), _fmt_ci(summary, lat, "p99")),
        ("TTFT p95", _fmt_s(_get(summary, "ttft_s", "p95")), _fmt_ci(summary, "ttft_s", "p95")),
        ("cost per 1k requests", _fmt_usd(summary.get("cost_usd_per_1k")), ""),
        ("cost per 1k answers", _fmt_usd(summary.get("cost_usd_per_1k_answers")), ""),
        ("cost per answer", _fmt_usd(summary.get("cost_usd_per_answer")), ""),
        (
            "cost per good answer (within SLO)",
            _fmt_usd(summary.get("cost_usd_per_good_answer")),
            "",
        ),
        *_stage_cost_rows(summary, stages),
        *_retry_rows(summary, stages),
    ]


def _stage_rows(summary: Mapping[str, Any], stages: Sequence[str]) -> list[list[str]]:
    table = summary.get("stages") or {}
    rows: list[list[str]] = []
    for stage in stages:
        entry = table.get(stage) or {}
        rows.append(
            [
                stage,
                _fmt_int(entry.get("calls")),
                _fmt_s(_get(entry, "wait_s", "mean")),
                _fmt_s(_get(entry, "wait_s", "p95")),
                _fmt_s(_get(entry, "service_s", "mean")),
                _fmt_s(_get(entry, "service_s", "p95")),
                _fmt_int(entry.get("servers")),
                _fmt_pct(entry.get("utilisation")),
            ]
        )
    return rows


STAGE_HEADERS = [
    "stage",
    "calls",
    "mean wait",
    "p95 wait",
    "mean service",
    "p95 service",
    "servers",
    "utilisation",
]


def _outcome_rows(summary: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    counts = summary.get("outcomes") or {}
    total = sum(int(_num(v)) for v in counts.values() if math.isfinite(_num(v)))
    names = list(OUTCOMES) + [k for k in counts if k not in OUTCOMES]
    rows = []
    for name in names:
        n = _num(counts.get(name, 0))
        if not math.isfinite(n):
            continue
        share = f"{100 * n / total:.3g} %" if total else "—"
        rows.append((name, f"{int(n):,}", share))
    return rows


def _header_rows(result: RunResult) -> list[tuple[str, str]]:
    m = result.manifest
    profile_name = str((m.profile or {}).get("name", "—"))
    return [
        ("scenario", str(m.scenario.get("name", "—"))),
        ("profile", profile_name),
        ("source", m.source),
        ("seed", str(m.seed)),
        ("duration", fmt_seconds(m.duration_s)),
        ("complete", "yes" if m.complete else "NO — interrupted run"),
        ("started at", m.started_at or "—"),
        ("stages", " → ".join(m.stages) or "—"),
        ("ragstress", m.ragstress_version),
    ]


# --------------------------------------------------------------------------------------------
# HTML

_CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif; margin: 2rem auto;
  max-width: 1180px; padding: 0 1rem; color: #222; line-height: 1.45; }
h1 { margin-bottom: .2rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .6rem 0 1rem; font-size: .95rem; }
th, td { border: 1px solid #d8d8d8; padding: .3rem .7rem; text-align: left; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.met { background: #d9f2d9; color: #185c18; font-weight: 600; }
.notmet { background: #f9d6d5; color: #8a1c17; font-weight: 600; }
.warn { background: #fff3cd; padding: .5rem .8rem; border: 1px solid #e6d28a; }
figure { margin: 1.2rem 0 2rem; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #444; font-size: .95rem; margin-top: .3rem; }
.muted { color: #666; }
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], numeric_from: int = 1) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="num">{_e(c)}</td>' if k >= numeric_from else f"<td>{_e(c)}</td>"
            for k, c in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _slo_html(summary: Mapping[str, Any]) -> str:
    rows = summary.get("slo") or []
    if not rows:
        return '<p class="muted">The scenario names no SLO.</p>'
    body = []
    for row in rows:
        target, value = _slo_value(row)
        met = bool(row.get("met"))
        cls, word = ("met", "met") if met else ("notmet", "not met")
        body.append(
            f'<tr><td>{_e(row.get("objective", "?"))}</td><td class="num">{_e(target)}</td>'
            f'<td class="num">{_e(value)}</td><td class="{cls}">{_e(word)}</td></tr>'
        )
    overall = bool(summary.get("slo_met"))
    verdict = (
        '<p class="met" style="display:inline-block;padding:.2rem .6rem">all objectives met</p>'
        if overall
        else '<p class="notmet" style="display:inline-block;padding:.2rem .6rem">'
        "at least one objective not met</p>"
    )
    return (
        "<table><thead><tr><th>objective</th><th>target</th><th>value</th><th>verdict</th>"
        f"</tr></thead><tbody>{''.join(body)}</tbody></table>{verdict}"
    )


def _html(result: RunResult, summary: Mapping[str, Any], images: Mapping[str, bytes]) -> str:
    m = result.manifest
    name = str(m.scenario.get("name", "run"))
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>ragstress report: {_e(name)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>ragstress report: {_e(name)}</h1>",
    ]
    desc = str(m.scenario.get("description") or "")
    if desc:
        parts.append(f'<p class="muted">{_e(desc)}</p>')
    if not m.complete:
        parts.append('<p class="warn">This run was interrupted: its figures cover part of it.</p>')
    parts.append(_table(["run", ""], _header_rows(result), numeric_from=99))
    if m.notes:
        notes = "".join(f"<li>{_e(n)}</li>" for n in m.notes)
        parts.append(f'<ul class="muted">{notes}</ul>')
    window = summary.get("window_s") or [None, None]
    parts.append("<h2>Summary</h2>")
    if isinstance(window, Sequence) and len(window) == 2:
        parts.append(
            f'<p class="muted">Over requests that arrived in the measurement window '
            f"[{_e(_fmt_s(window[0]))}, {_e(_fmt_s(window[1]))}); latency is measured from "
            "each request's intended arrival time.</p>"
        )
    parts.append(_table(["figure", "value", "95% interval"], _summary_rows(summary, result.stages)))
    parts.append("<h2>Service-level objectives</h2>")
    parts.append(_slo_html(summary))
    parts.append("<h2>Stages</h2>")
    parts.append(_table(STAGE_HEADERS, _stage_rows(summary, result.stages)))
    parts.append("<h2>Outcomes</h2>")
    parts.append(_table(["outcome", "requests", "share"], _outcome_rows(summary)))
    parts.append("<h2>Charts</h2>")
    for spec in CHARTS:
        if spec.filename not in images:
            continue  # the run lacks what this chart needs
        data = base64.b64encode(images[spec.filename]).decode("ascii")
        parts.append(
            f"<figure><h3>{_e(spec.title)}</h3>"
            f'<img src="data:image/png;base64,{data}" alt="{_e(spec.title)}">'
            f"<figcaption>{_e(spec.caption)}</figcaption></figure>"
        )
    parts.append("</body></html>\n")
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------
# Markdown


def _md_cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = [
        "| " + " | ".join(_md_cell(h) for h in headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _markdown(
    result: RunResult, summary: Mapping[str, Any], charts: Sequence[ChartSpec] = CHARTS
) -> str:
    name = str(result.manifest.scenario.get("name", "run"))
    out = [f"# ragstress report: {_md_cell(name)}", ""]
    out += [_md_table(["run", ""], _header_rows(result)), ""]
    out += [
        "## Summary",
        "",
        _md_table(["figure", "value", "95% interval"], _summary_rows(summary, result.stages)),
    ]
    out += ["", "## Service-level objectives", ""]
    slo_rows = []
    for row in summary.get("slo") or []:
        target, value = _slo_value(row)
        slo_rows.append(
            [str(row.get("objective", "?")), target, value, "met" if row.get("met") else "NOT MET"]
        )
    out.append(
        _md_table(["objective", "target", "value", "verdict"], slo_rows)
        if slo_rows
        else "The scenario names no SLO."
    )
    out += ["", "## Stages", "", _md_table(STAGE_HEADERS, _stage_rows(summary, result.stages))]
    out += [
        "",
        "## Outcomes",
        "",
        _md_table(["outcome", "requests", "share"], _outcome_rows(summary)),
    ]
    out += ["", "## Charts", ""]
    for spec in charts:
        out += [f"### {spec.title}", "", f"![{spec.title}]({spec.filename})", "", spec.caption, ""]
    return "\n".join(out)


# --------------------------------------------------------------------------------------------


def write_report(folder: str | Path) -> list[Path]:
    """Draw the charts of the run in ``folder`` and write them, ``report.html`` (charts
    inlined, nothing external) and ``report.md`` into it. Returns the paths written.

    A sweep folder (``sweep.json``) or a plan folder (``plan.json``) gets the capacity report
    instead (:func:`ragstress.report.capacity_report.write_capacity_report`).

    Raises ``ResultsError`` when ``folder`` is not a readable run folder.
    """
    out = Path(folder)
    if (out / "sweep.json").is_file() or (out / "plan.json").is_file():
        from ragstress.report.capacity_report import write_capacity_report

        return write_capacity_report(out)
    result = read_run(out)
    summary: Mapping[str, Any] | None = read_summary(out)
    if summary is None:
        summary = summarize(result)
    written: list[Path] = []
    images: dict[str, bytes] = {}
    charts = [spec for spec in CHARTS if spec.available(result)]
    for spec in charts:
        png = render_chart(spec, result, summary)
        images[spec.filename] = png
        path = out / spec.filename
        write_atomic(path, png)
        written.append(path)
    html_path = out / REPORT_HTML
    write_atomic(html_path, _html(result, summary, images).encode("utf-8"))
    written.append(html_path)
    md_path = out / REPORT_MD
    write_atomic(md_path, (_markdown(result, summary, charts) + "\n").encode("utf-8"))
    written.append(md_path)
    return written
