"""The demo's capacity figure: the maximum sustainable rate predicted against the one measured.

Pure apart from :func:`write_capacity_report`: :func:`capacity_document` turns the model's
search (:class:`~ragstress.capacity.search.Capacity`) and the measured bracket
(:class:`MeasuredCapacity`) into ``capacity.json``'s content; :func:`write_capacity_report`
draws the SLO ratio against the offered rate (predicted and measured) and adds a section to
the validation report.

Definition, the same on both sides: the highest offered rate at which every objective of the
scenario's SLO holds (SLO ratio ≤ 1, :func:`ragstress.analysis.summary.slo_ratio`) over a
run of the same length. The model's figure comes from its search (2 % bracket, several
seeds); the stack's from single measured runs bracketing the crossing: its estimate is the
bracket's geometric middle, its resolution the bracket's half-width (relative).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes

from ragstress.capacity.search import Capacity
from ragstress.report.capacity_report import (
    CapacityChart,
    _figures_html,
    _figures_md,
    render_capacity_chart,
)
from ragstress.report.html import _e, _md_table, _table
from ragstress.results.store import write_atomic

__all__ = ["MeasuredCapacity", "capacity_document", "capacity_markdown", "write_capacity_report"]

CAPACITY_CHART = "capacity"
Table = tuple[list[str], list[list[str]]]  # headers, rows


@dataclass(frozen=True)
class MeasuredCapacity:
    """The measured crossing lies in [``low_rps``, ``high_rps``): the SLO held at ``low_rps``
    and failed at ``high_rps`` (None: no such rate was measured). ``ratios``: every measured
    rate → its SLO ratio."""

    low_rps: float | None
    high_rps: float | None
    ratios: dict[float, float]

    @property
    def estimate_rps(self) -> float | None:
        if self.low_rps is None or self.high_rps is None:
            return None
        return math.sqrt(self.low_rps * self.high_rps)

    @property
    def resolution(self) -> float | None:
        """Half the bracket's width relative to the estimate."""
        est = self.estimate_rps
        if est is None or self.low_rps is None or self.high_rps is None:
            return None
        return (self.high_rps - self.low_rps) / 2 / est

    def describe(self) -> str:
        if self.low_rps is None and self.high_rps is None:
            return "no rate measured"
        if self.high_rps is None:
            return f"the SLO held at every measured rate, up to {self.low_rps:g} req/s"
        if self.low_rps is None:
            return f"the SLO failed at every measured rate, down to {self.high_rps:g} req/s"
        assert self.estimate_rps is not None
        assert self.resolution is not None
        return (
            f"{self.estimate_rps:.3g} req/s ± {self.resolution:.1%} (held at "
            f"{self.low_rps:g}, failed at {self.high_rps:g})"
        )


def capacity_document(
    predicted_rps: float,
    predicted: Capacity | None,
    measured: MeasuredCapacity | None,
    *,
    tolerance: float,
    predicted_ratios: Mapping[float, float] | None = None,
    run_seconds: float | None = None,
) -> dict[str, Any]:
    """``capacity.json``: both figures, the signed relative error (predicted − measured) /
    measured, and whether it is within ``tolerance``. ``predicted_ratios``: the model's SLO
    ratio at each measured rate (one seed each, the measured run's), for the chart."""
    doc: dict[str, Any] = {
        "definition": (
            "maximum sustainable rate: the highest offered rate at which every objective of the "
            "scenario's SLO holds (SLO ratio <= 1)"
            + (f" over a {run_seconds:g} s run" if run_seconds is not None else "")
        ),
        "predicted_rps": predicted_rps,
        "predicted_search": None,
        "measured": None,
        "rel_error": None,
        "tolerance": tolerance,
        "within": None,
        "note": "",
    }
    if predicted is not None:
        doc["predicted_search"] = {
            "low_rps": predicted.low_rps,
            "high_rps": predicted.high_rps,
            "confident": predicted.confident,
            "runs": predicted.runs,
            "probes": [
                {
                    "rate_rps": p.rate_rps,
                    "mean_ratio": p.mean_ratio,
                    "ratios": list(p.ratios),
                    "passed": p.passed,
                }
                for p in predicted.probes
            ],
        }
    if measured is None:
        doc["note"] = "the maximum sustainable rate was not measured"
        return doc
    ratios = predicted_ratios or {}
    doc["measured"] = {
        "low_rps": measured.low_rps,
        "high_rps": measured.high_rps,
        "estimate_rps": measured.estimate_rps,
        "resolution": measured.resolution,
        "probes": [
            {
                "rate_rps": rate,
                "slo_ratio": _finite(ratio),
                "met": ratio <= 1.0,
                "predicted_slo_ratio": _finite(ratios[rate]) if rate in ratios else None,
            }
            for rate, ratio in sorted(measured.ratios.items())
        ],
    }
    est = measured.estimate_rps
    if est is None:
        doc["within"] = False
        doc["note"] = f"no measured bracket: {measured.describe()}"
        return doc
    rel = (predicted_rps - est) / est
    doc["rel_error"] = rel
    doc["within"] = abs(rel) <= tolerance
    doc["note"] = f"measured {measured.describe()}"
    return doc


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _chart(doc: Mapping[str, Any]) -> CapacityChart:
    measured = doc["measured"] or {}
    probes = measured.get("probes", [])

    def draw(ax: Axes) -> None:
        cap = 10.0  # ratios past this (a runaway queue) are drawn at the top edge
        xs = [p["rate_rps"] for p in probes]
        ys = [min(p["slo_ratio"] if p["slo_ratio"] is not None else cap, cap) for p in probes]
        pred = [
            (p["rate_rps"], min(p["predicted_slo_ratio"], cap))
            for p in probes
            if p["predicted_slo_ratio"] is not None
        ]
        search = doc.get("predicted_search") or {}
        model = sorted((p["rate_rps"], min(p["mean_ratio"], cap)) for p in search.get("probes", []))
        if model:
            ax.plot(
                *zip(*model, strict=True),
                "s",
                color="#1f77b4",
                alpha=0.35,
                label="model search (mean of seeds)",
            )
        if pred:
            ax.plot(
                *zip(*sorted(pred), strict=True),
                "o-",
                color="#1f77b4",
                label="predicted (same runs)",
            )
        if xs:
            ax.plot(xs, ys, "D", color="#d62728", markersize=7, label="measured")
        ax.axhline(1.0, color="black", linewidth=1, linestyle=":", label="SLO target")
        ax.axvline(
            doc["predicted_rps"],
            color="#1f77b4",
            linestyle="--",
            label=f"predicted max {doc['predicted_rps']:.3g} req/s",
        )
        if measured.get("estimate_rps") is not None:
            ax.axvline(
                measured["estimate_rps"],
                color="#d62728",
                linestyle="--",
                label=f"measured max {measured['estimate_rps']:.3g} req/s",
            )
        ax.set_yscale("log")
        ax.set_xlabel("offered rate (req/s)")
        ax.set_ylabel("SLO ratio (worst objective / target; ≤ 1 held)")
        ax.legend(loc="upper left", fontsize=8)

    return CapacityChart(
        name=CAPACITY_CHART,
        title="Maximum sustainable rate: predicted and measured",
        caption=(
            "SLO ratio against the offered rate: ≤ 1 means every objective held. Squares: the "
            "calibrated model's capacity search; circles: the model on each measured run's "
            "scenario and seed; diamonds: the stack."
        ),
        draw=draw,
        size=(9.0, 5.0),
    )


def _sections(doc: Mapping[str, Any]) -> tuple[str, Table, Table | None, str]:
    """The capacity section's parts, rendered by both formats: the definition, the summary
    table, the per-rate table (None when nothing was measured) and the note."""
    measured = doc["measured"]
    rel = doc["rel_error"]
    rows = [["predicted (calibrated model)", f"{doc['predicted_rps']:.4g} req/s"]]
    if measured is not None:
        est = measured["estimate_rps"]
        rows.append(
            [
                "measured (reference stack)",
                f"{est:.4g} req/s ± {measured['resolution']:.1%}"
                if est is not None
                else "no bracket",
            ]
        )
    verdict = "—" if doc["within"] is None else ("ok" if doc["within"] else "MISS")
    error = "—" if rel is None else f"{rel:+.2%}"
    rows.append(
        [
            "error (predicted − measured) / measured",
            f"{error} (tolerance ±{doc['tolerance']:.0%}) {verdict}",
        ]
    )
    summary: Table = (["figure", "value"], rows)
    probes: Table | None = None
    if measured is not None and measured["probes"]:
        probes = (
            ["rate (req/s)", "measured SLO ratio", "predicted SLO ratio", "held"],
            [
                [
                    f"{p['rate_rps']:g}",
                    "—" if p["slo_ratio"] is None else f"{p['slo_ratio']:.3g}",
                    "—" if p["predicted_slo_ratio"] is None else f"{p['predicted_slo_ratio']:.3g}",
                    "yes" if p["met"] else "no",
                ]
                for p in measured["probes"]
            ],
        )
    return f"Definition: {doc['definition']}.", summary, probes, str(doc["note"])


def capacity_markdown(doc: Mapping[str, Any]) -> str:
    """The report's capacity section, in Markdown."""
    definition, summary, probes, note = _sections(doc)
    parts = ["## Maximum sustainable rate", definition, _md_table(*summary), note]
    if probes is not None:
        parts.append(_md_table(*probes))
    return "\n\n".join(parts)


def _capacity_html(doc: Mapping[str, Any], chart: CapacityChart, png: bytes) -> str:
    definition, summary, probes, note = _sections(doc)
    parts = [
        "<h2>Maximum sustainable rate</h2>",
        f"<p>{_e(definition)}</p>",
        _table(*summary),
        f"<p>{_e(note)}</p>",
    ]
    if probes is not None:
        parts.append(_table(*probes))
    parts += _figures_html([chart], {chart.png: png})
    return "".join(parts)


def write_capacity_report(doc: Mapping[str, Any], folder: Path) -> list[Path]:
    """Draw ``capacity.png``/``.svg`` and add the capacity section to ``validation.md`` and
    ``validation.html`` in ``folder`` (written by the validation report first)."""
    chart = _chart(doc)
    png, svg = render_capacity_chart(chart)
    written = [folder / chart.png, folder / chart.svg]
    write_atomic(written[0], png)
    write_atomic(written[1], svg)
    md = folder / "validation.md"
    if md.is_file():
        section = "\n".join([capacity_markdown(doc), "", *_figures_md([chart])])
        text = md.read_text(encoding="utf-8").rstrip("\n")
        write_atomic(md, f"{text}\n\n{section}\n".encode())
        written.append(md)
    html = folder / "validation.html"
    if html.is_file():
        text = html.read_text(encoding="utf-8")
        text = text.replace("</body>", _capacity_html(doc, chart, png) + "</body>", 1)
        write_atomic(html, text.encode("utf-8"))
        written.append(html)
    return written
