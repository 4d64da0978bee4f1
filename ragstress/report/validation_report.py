"""A validation → ``validation.json``, PNG and SVG charts, ``validation.html`` (self-contained:
charts inlined, nothing external) and its Markdown twin ``validation.md``.

The report only reads what :func:`ragstress.analysis.validation.validate` computed: it runs no
simulation and no measurement. Files are written with the store's ``write_atomic`` (a reader
never sees half a file); charts are drawn by :mod:`ragstress.report.validation_charts` and
rendered like the capacity report's (no Software tag in the PNG, no date and fixed ids in the
SVG, so the same validation gives the same files).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from ragstress.analysis.validation import (
    SIGN_CONVENTION,
    MetricComparison,
    PairValidation,
    Tolerance,
    Validation,
    format_ci,
    format_error,
    format_tolerance,
    format_value,
)
from ragstress.report.capacity_report import (
    CapacityChart,
    _figures_html,
    _figures_md,
    _head,
    render_capacity_chart,
)
from ragstress.report.charts import fmt_seconds
from ragstress.report.html import _e, _md_cell, _md_table, _table
from ragstress.report.validation_charts import validation_charts
from ragstress.results.store import json_bytes, write_atomic

__all__ = [
    "VALIDATION_HTML",
    "VALIDATION_JSON",
    "VALIDATION_MD",
    "metric_rows",
    "write_validation_json",
    "write_validation_report",
]

VALIDATION_JSON = "validation.json"
VALIDATION_HTML = "validation.html"
VALIDATION_MD = "validation.md"

METRIC_HEADERS = ["metric", "predicted", "measured", "error", "95% CI", "tolerance", "ok"]
RECOVERY_HEADERS = ["fault window", "predicted", "measured"]

HOW_TO_READ = (
    f"Errors are signed: {SIGN_CONVENTION}. Both runs are compared on the same requests (by "
    "id) over the predicted run's measurement window; latency and TTFT quantiles over the "
    "answered requests. The 95 % interval comes from a paired moving-block bootstrap over the "
    "requests (blocks of n/20 in arrival order, seeded). A figure is judged by its point "
    "estimate against the tolerance; 'not judged' figures are reported only. Error rates also "
    "show the absolute difference in percentage points (pp). Stage times are wait + service "
    "per request that reached the stage: a measured run sees each stage only as a whole."
)


def verdict(metric: MetricComparison) -> str:
    """``ok``, ``MISS`` or ``—`` (not judged)."""
    if metric.within is None:
        return "—"
    return "ok" if metric.within else "MISS"


def metric_rows(pair: PairValidation) -> list[list[str]]:
    """One row per figure: the table of the console, the HTML and the Markdown."""
    return [
        [
            m.label,
            format_value(m.predicted, m.unit),
            format_value(m.measured, m.unit),
            format_error(m),
            format_ci(m),
            format_tolerance(m.tolerance),
            verdict(m),
        ]
        for m in pair.metrics.values()
    ]


def _recovery_text(recovered: bool, recovery_s: float | None) -> str:
    if recovered and recovery_s is not None:
        return f"recovered in {fmt_seconds(recovery_s)}"
    return "not recovered"


def _recovery_rows(pair: PairValidation) -> list[list[str]]:
    if pair.faults is None:
        return []
    rows = []
    for p, m in pair.faults.recoveries:
        w = p.window
        rows.append(
            [
                f"{w.label} [{w.start_s:g} s, {w.end_s:g} s)",
                _recovery_text(p.recovered, p.recovery_s),
                _recovery_text(m.recovered, m.recovery_s),
            ]
        )
    return rows


def _level_title(pair: PairValidation) -> str:
    rate = "" if pair.offered_rps is None else f" ({pair.offered_rps:g} req/s)"
    return f"{pair.level}{rate}"


def _pair_inputs(pair: PairValidation) -> list[tuple[str, str]]:
    req = pair.requests
    return [
        ("predicted", pair.predicted_path or "—"),
        ("measured", pair.measured_path or "—"),
        ("paired by", pair.paired_by),
        ("scenario", pair.scenario or "—"),
        ("window", f"[{pair.window_s[0]:g} s, {pair.window_s[1]:g} s) by arrival"),
        (
            "requests",
            f"{req['common']:,} compared ({req['in_window']:,} in the window); answered: "
            f"{req['answered_predicted']:,} predicted, {req['answered_measured']:,} measured",
        ),
    ]


def _tolerance_text(tolerances: Mapping[str, Tolerance | None]) -> str:
    return ", ".join(f"{k} {format_tolerance(t)}" for k, t in tolerances.items())


def _inputs(validation: Validation) -> list[tuple[str, str]]:
    return [
        ("predicted", validation.predicted or "—"),
        ("measured", validation.measured or "—"),
        ("load levels", str(len(validation.pairs))),
        ("tolerances", _tolerance_text(validation.tolerances)),
        ("bootstrap", f"{validation.replicates} replicates, seed {validation.seed}"),
    ]


def _verdict_text(validation: Validation) -> str:
    misses = validation.misses
    if validation.passed:
        levels = len(validation.pairs)
        return f"PASS: every judged figure at {levels} load level(s) is within tolerance."
    listed = "; ".join(f"{p.level}: {m.label} {format_error(m)}" for p, m in misses[:8])
    more = f" and {len(misses) - 8} more" if len(misses) > 8 else ""
    return f"FAIL: {len(misses)} figure(s) outside tolerance ({listed}{more})."


def _overview_rows(validation: Validation) -> list[list[str]]:
    return [
        [
            _level_title(p),
            "pass" if p.passed else "FAIL",
            str(len(p.misses)),
            str(len(p.warnings)),
        ]
        for p in validation.pairs
    ]


# --------------------------------------------------------------------------------------------
# HTML


def _metrics_html(pair: PairValidation) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in METRIC_HEADERS)
    body = []
    for m, row in zip(pair.metrics.values(), metric_rows(pair), strict=True):
        cells = [f"<td>{_e(row[0])}</td>"]
        cells += [f'<td class="num">{_e(c)}</td>' for c in row[1:-1]]
        cls = {"ok": "met", "MISS": "notmet"}.get(row[-1], "")
        cells.append(f'<td class="{cls}">{_e(row[-1])}</td>')
        title = f' title="{_e(m.note)}"' if m.note else ""
        body.append(f"<tr{title}>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _notes_of(pair: PairValidation) -> list[str]:
    return [f"{m.label}: {m.note}" for m in pair.metrics.values() if m.note]


def _html(
    validation: Validation, charts: Sequence[CapacityChart], images: Mapping[str, bytes]
) -> str:
    parts = _head(_title(validation))
    cls = "met" if validation.passed else "notmet"
    parts.append(f'<p class="{cls}">{_e(_verdict_text(validation))}</p>')
    parts.append(_table(["validation", ""], _inputs(validation), numeric_from=99))
    parts.append(f'<p class="muted">{_e(HOW_TO_READ)}</p>')
    if validation.warnings:
        items = "".join(f"<li>{_e(w)}</li>" for w in validation.warnings)
        parts.append(f'<div class="warn"><ul>{items}</ul></div>')
    parts.append("<h2>Load levels</h2>")
    parts.append(
        _table(["load level", "verdict", "misses", "warnings"], _overview_rows(validation), 2)
    )
    for pair in validation.pairs:
        parts.append(f"<h2>{_e(_level_title(pair))}</h2>")
        parts.append(_table(["pair", ""], _pair_inputs(pair), numeric_from=99))
        if pair.warnings:
            items = "".join(f"<li>{_e(w)}</li>" for w in pair.warnings)
            parts.append(f'<div class="warn"><ul>{items}</ul></div>')
        parts.append(_metrics_html(pair))
        notes = _notes_of(pair) + pair.notes
        if notes:
            parts.append('<ul class="muted">' + "".join(f"<li>{_e(n)}</li>" for n in notes))
            parts.append("</ul>")
        recovery = _recovery_rows(pair)
        if recovery:
            parts.append("<h3>Recovery after each fault window</h3>")
            parts.append(_table(RECOVERY_HEADERS, recovery, numeric_from=99))
    parts.append("<h2>Charts</h2>")
    parts += _figures_html(charts, images)
    parts.append("</body></html>\n")
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------
# Markdown


def _markdown(validation: Validation, charts: Sequence[CapacityChart]) -> str:
    out = [f"# {_md_cell(_title(validation))}", ""]
    word = "" if validation.passed else "**Warning:** "
    out += [f"{word}{_verdict_text(validation)}", ""]
    out += [_md_table(["validation", ""], _inputs(validation)), "", HOW_TO_READ, ""]
    if validation.warnings:
        out += [*(f"- {w}" for w in validation.warnings), ""]
    out += ["## Load levels", ""]
    out += [_md_table(["load level", "verdict", "misses", "warnings"], _overview_rows(validation))]
    for pair in validation.pairs:
        out += ["", f"## {_md_cell(_level_title(pair))}", ""]
        out += [_md_table(["pair", ""], _pair_inputs(pair)), ""]
        if pair.warnings:
            out += [*(f"- **Warning:** {w}" for w in pair.warnings), ""]
        out += [_md_table(METRIC_HEADERS, metric_rows(pair))]
        notes = _notes_of(pair) + pair.notes
        if notes:
            out += ["", *(f"- {n}" for n in notes)]
        recovery = _recovery_rows(pair)
        if recovery:
            out += ["", "### Recovery after each fault window", ""]
            out += [_md_table(RECOVERY_HEADERS, recovery)]
    out += ["", "## Charts", "", *_figures_md(charts)]
    return "\n".join(out)


def _title(validation: Validation) -> str:
    names = sorted({p.scenario for p in validation.pairs if p.scenario})
    return f"ragstress validation: {', '.join(names) or 'runs'}"


# --------------------------------------------------------------------------------------------


def write_validation_json(validation: Validation, folder: str | Path) -> Path:
    """Write ``validation.json`` (see ``Validation.to_json``) into ``folder``."""
    path = Path(folder) / VALIDATION_JSON
    write_atomic(path, json_bytes(validation.to_json()))
    return path


def write_validation_report(validation: Validation, folder: str | Path) -> list[Path]:
    """Draw the validation's charts (PNG and SVG) and write ``validation.html`` (charts
    inlined) and ``validation.md`` into ``folder``. Returns the paths written."""
    out = Path(folder)
    charts = validation_charts(validation)
    written: list[Path] = []
    images: dict[str, bytes] = {}
    for chart in charts:
        png, svg = render_capacity_chart(chart)
        images[chart.png] = png
        for name, data in ((chart.png, png), (chart.svg, svg)):
            write_atomic(out / name, data)
            written.append(out / name)
    write_atomic(out / VALIDATION_HTML, _html(validation, charts, images).encode("utf-8"))
    write_atomic(out / VALIDATION_MD, (_markdown(validation, charts) + "\n").encode("utf-8"))
    return [*written, out / VALIDATION_HTML, out / VALIDATION_MD]
