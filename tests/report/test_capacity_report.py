"""The capacity report: a sweep or plan folder → PNG + SVG charts, report.html, report.md."""

from __future__ import annotations

import base64
import html
import itertools
import json
import math
import re
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.image import imread
from matplotlib.lines import Line2D
from matplotlib.text import Text
from matplotlib.transforms import Bbox
from PIL import Image

from ragstress.capacity import SearchSettings, parse_set
from ragstress.capacity.jobs import run_sweep_job
from ragstress.config import Scenario
from ragstress.report import write_capacity_report, write_report
from ragstress.report.capacity_charts import (
    ConfigCurve,
    cost_capacity_frontier,
    latency_vs_load,
    pareto_frontier,
    share_loads,
)
from ragstress.report.capacity_report import (
    load_sweep,
    plan_charts,
    render_capacity_chart,
    sweep_charts,
)
from ragstress.report.charts import CHART_STYLE
from ragstress.results.store import ResultsError
from tests.builders import mmc_profile

# c = 1 or 2 servers, exponential service with mean 0.1 s: capacity 10 or 20 req/s; priced,
# so the cost chart has something to show.
PROFILE = mmc_profile(servers=2, mean_s=0.1, price={"per_replica_hour_usd": 3.0})
SCENARIO: dict[str, Any] = {
    "name": "tiny",
    "duration_s": 40,
    "warmup_s": 5,
    "seed": 3,
    "arrivals": {"kind": "poisson", "rate": 5},
    "slo": {"latency_s": {"p95": 0.6}},
}
RATES = [2.0, 5.0, 8.0, 11.0, 14.0, 17.0, 20.0]
SEARCH = SearchSettings(tolerance=0.1, replications=2, max_replications=2)
SWEEP_CHARTS = (
    "latency_p95_by_config",
    "latency_vs_load_work-concurrency-1",
    "latency_vs_load_work-concurrency-2",
    "throughput_vs_load",
    "cost_vs_load",
    "utilisation_vs_load",
    "stage_time_share_work-concurrency-1",
    "stage_time_share_work-concurrency-2",
)


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sweep")
    run_sweep_job(
        Scenario.model_validate(SCENARIO),
        PROFILE,
        RATES,
        [parse_set("stages.work.concurrency=1,2")],
        out,
        replications=2,
        search=SEARCH,
        workers=1,
    )
    return out


@pytest.fixture(scope="module")
def sweep_report(sweep_dir: Path) -> list[Path]:
    return write_report(sweep_dir)  # the run report's entry point dispatches on sweep.json


def plan_document() -> dict[str, Any]:
    """A plan.json as ``ragstress plan`` writes it: generate replicas (monotone) × model ×
    retrieve replicas (monotone), 40 configurations, target 480 req/s."""
    replicas, models, retrieve = (2, 4, 6, 8, 10), ("small", "large"), (1, 2, 4, 8)
    evaluated = {  # config → (status, $/hour at target, $/1k answers, p95, SLO ratio)
        "generate.replicas=2 model=small retrieve.replicas=1": ("infeasible", 9.1, 0.0, 95.0, 9.5),
        "generate.replicas=4 model=small retrieve.replicas=1": ("infeasible", 17.2, 0.0, 31, 3.1),
        "generate.replicas=6 model=small retrieve.replicas=1": ("infeasible", 25.3, 0, 10.4, 1.16),
        "generate.replicas=6 model=small retrieve.replicas=2": (
            "feasible",
            25.8,
            0.0149,
            7.1,
            0.79,
        ),
        "generate.replicas=6 model=small retrieve.replicas=4": (
            "feasible",
            26.6,
            0.0154,
            6.9,
            0.77,
        ),
        "generate.replicas=8 model=small retrieve.replicas=1": (
            "feasible",
            33.4,
            0.0193,
            5.2,
            0.58,
        ),
        "generate.replicas=4 model=large retrieve.replicas=2": ("infeasible", 34.0, 0, 40.0, 4.4),
        "generate.replicas=8 model=small retrieve.replicas=2": (
            "feasible",
            33.9,
            0.0196,
            5.0,
            0.56,
        ),
        "generate.replicas=2 model=large retrieve.replicas=8": ("infeasible", 20.1, 0, 120, 13.3),
    }
    ranked = {  # config → (rank, max sustainable rate)
        "generate.replicas=6 model=small retrieve.replicas=2": (1, 531.0),
        "generate.replicas=6 model=small retrieve.replicas=4": (2, 540.0),
        "generate.replicas=8 model=small retrieve.replicas=1": (3, 702.0),
    }
    candidates = []
    for r, m, q in itertools.product(replicas, models, retrieve):
        label = f"generate.replicas={r} model={m} retrieve.replicas={q}"
        fixed = r * (4.0 if m == "small" else 8.0) + q * 0.4
        row: dict[str, Any] = {
            "config": label,
            "overrides": {"stages.generate.replicas": r, "model": m, "stages.retrieve.replicas": q},
            "fixed_usd_per_hour": fixed,
            "status": "pruned-cost" if fixed >= 33.4 else "pruned-monotone",
            "usd_per_hour": None,
            "usd_per_1k_answers": None,
            "latency_p95_s": None,
            "slo_ratio": None,
            "rank": None,
            "max_rate_rps": None,
        }
        if label in evaluated:
            status, usd, per_1k, p95, ratio = evaluated[label]
            row.update(
                status=status,
                usd_per_hour=usd,
                usd_per_1k_answers=per_1k or None,
                latency_p95_s=p95,
                slo_ratio=ratio,
            )
        if label in ranked:
            row["rank"], row["max_rate_rps"] = ranked[label]
        candidates.append(row)

    def count(status: str) -> int:
        return sum(c["status"] == status for c in candidates)

    return {
        "scenario": {**SCENARIO, "name": "peak-day", "slo": {"latency_s": {"p95": 9.0}}},
        "profile": {"name": "self-hosted"},
        "peak_rps": 400.0,
        "headroom": 0.2,
        "target_rps": 480.0,
        "knobs": [
            {
                "label": "generate.replicas",
                "choices": [f"generate.replicas={r}" for r in replicas],
                "monotone": True,
            },
            {"label": "model", "choices": [f"model={m}" for m in models], "monotone": False},
            {
                "label": "retrieve.replicas",
                "choices": [f"retrieve.replicas={q}" for q in retrieve],
                "monotone": True,
            },
        ],
        "grid_size": len(candidates),
        "evaluated": count("feasible") + count("infeasible"),
        "pruned_monotone": count("pruned-monotone"),
        "pruned_cost": count("pruned-cost"),
        "runs": 57,
        "chosen": "generate.replicas=6 model=small retrieve.replicas=2",
        "candidates": candidates,
    }


@pytest.fixture(scope="module")
def plan_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("plan")
    (out / "plan.json").write_text(json.dumps(plan_document(), indent=2), encoding="utf-8")
    return out


def _check_png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n"), path.name
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        width, height = img.size
    assert width > 600, path.name
    assert height > 400, path.name
    pixels = imread(path)
    assert float(np.std(pixels[..., :3])) > 0.05, f"{path.name} looks blank"
    assert b"Software" not in data  # no matplotlib URL in the image's metadata


def _check_svg(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert "<svg" in text
    assert "<dc:date>" not in text  # reproducible: no timestamp


def _check_html(text: str, folder: Path, names: list[str]) -> None:
    assert "http://" not in text
    assert "https://" not in text
    assert "<script" not in text.lower()
    assert "<link" not in text.lower()
    sources = re.findall(r'src="([^"]*)"', text)
    assert sources, "no inlined images"
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert len(sources) == len(names)
    for name in names:
        encoded = base64.b64encode((folder / f"{name}.png").read_bytes()).decode("ascii")
        assert f"data:image/png;base64,{encoded}" in text, name


def test_sweep_report_writes_every_chart_as_png_and_svg(
    sweep_dir: Path, sweep_report: list[Path]
) -> None:
    expected = [sweep_dir / f"{n}.{ext}" for n in SWEEP_CHARTS for ext in ("png", "svg")]
    assert sweep_report == [*expected, sweep_dir / "report.html", sweep_dir / "report.md"]
    for name in SWEEP_CHARTS:
        _check_png(sweep_dir / f"{name}.png")
        _check_svg(sweep_dir / f"{name}.svg")


def test_sweep_html_is_self_contained_with_captions(
    sweep_dir: Path, sweep_report: list[Path]
) -> None:
    del sweep_report
    text = (sweep_dir / "report.html").read_text(encoding="utf-8")
    _check_html(text, sweep_dir, list(SWEEP_CHARTS))
    for chart in sweep_charts(load_sweep(sweep_dir)):
        assert html.escape(chart.caption, quote=True) in text
    # the headline: both configurations, their capacity, the SLO and the run count
    for label in ("work.concurrency=1", "work.concurrency=2"):
        assert label in text
    assert "max sustainable rate" in text
    assert "≤ 600 ms" in text
    assert f"{len(RATES) * 2 * 2} grid runs" in text


def test_sweep_markdown_references_each_png(sweep_dir: Path, sweep_report: list[Path]) -> None:
    del sweep_report
    text = (sweep_dir / "report.md").read_text(encoding="utf-8")
    for name in SWEEP_CHARTS:
        assert f"]({name}.png)" in text
    assert "base64" not in text
    assert "| work.concurrency=1 |" in text


def test_svg_and_png_are_reproducible(sweep_dir: Path, sweep_report: list[Path]) -> None:
    del sweep_report
    chart = sweep_charts(load_sweep(sweep_dir))[0]
    assert render_capacity_chart(chart) == render_capacity_chart(chart)


def _curve() -> ConfigCurve:
    rates = [10.0, 20.0, 30.0, 40.0, 50.0]
    p95 = [2.0, 3.0, 6.0, 40.0, 90.0]
    points = [
        {
            "config": "replicas=2",
            "rate_rps": r,
            "offered_rps": r,
            "throughput_rps": min(r, 32.0),
            "latency_p50_s": v / 3,
            "latency_p50_s_low": v / 3.5,
            "latency_p50_s_high": v / 2.8,
            "latency_p95_s": v,
            "latency_p95_s_low": v * 0.8,
            "latency_p95_s_high": v * 1.2,
            "latency_p99_s": v * 1.4,
            "latency_p99_s_low": v * 1.2,
            "latency_p99_s_high": v * 1.6,
            "slo_met": v <= 9.0,
        }
        for r, v in zip(rates, p95, strict=True)
    ]
    return ConfigCurve(
        "replicas=2",
        points,
        knee_rps=30.0,
        knee_latency_s=6.0,
        max_rate_rps=33.5,
        bracket_low_rps=33.5,
        bracket_high_rps=35.0,
        confident=True,
    )


def _axes() -> Axes:
    fig = Figure()
    FigureCanvasAgg(fig)
    return fig.add_subplot()


def _lines(ax: Axes) -> list[Line2D]:
    return list(ax.get_lines())


def test_latency_chart_marks_slo_knee_and_max_rate() -> None:
    ax = _axes()
    latency_vs_load(ax, _curve(), [("p95", 9.0)])
    lines = _lines(ax)
    slo = [ln for ln in lines if "SLO" in str(ln.get_label())]
    assert len(slo) == 1
    assert list(slo[0].get_ydata()) == [9.0, 9.0]  # horizontal, at the target
    assert slo[0].get_linestyle() == "--"
    knee = [ln for ln in lines if str(ln.get_label()).startswith("knee")]
    assert len(knee) == 1
    assert list(knee[0].get_xdata()) == [30.0]
    assert list(knee[0].get_ydata()) == [6.0]
    vertical = [ln for ln in lines if "max sustainable" in str(ln.get_label())]
    assert len(vertical) == 1
    assert list(vertical[0].get_xdata()) == [33.5, 33.5]
    texts = [t.get_text() for t in ax.texts]
    assert any(t.startswith("knee") for t in texts)
    assert any("max sustainable" in t and "33.5 req/s" in t for t in texts)
    assert ax.get_yscale() == "log"
    assert ax.get_title()
    assert ax.get_xlabel() == "offered load (req/s)"
    assert "(s" in ax.get_ylabel()
    assert ax.get_legend() is not None
    # three percentile curves, each with its band
    assert {str(ln.get_label()) for ln in lines} >= {"p50", "p95", "p99"}
    assert len(ax.collections) >= 3


def test_share_loads_picks_low_knee_and_both_sides_of_the_max_rate() -> None:
    loads = share_loads(_curve())
    assert [rate for rate, _ in loads] == [10.0, 30.0, 40.0]
    assert loads[1][1] == "knee, within max rate"
    assert loads[2][1] == "past max rate"


def test_pareto_frontier_keeps_only_undominated_points() -> None:
    points = [(531.0, 25.8), (540.0, 26.6), (520.0, 27.0), (702.0, 33.4), (600.0, 40.0)]
    assert pareto_frontier(points) == [(531.0, 25.8), (540.0, 26.6), (702.0, 33.4)]
    assert pareto_frontier([(math.nan, 1.0)]) == []


def test_frontier_chart_highlights_the_chosen_configuration() -> None:
    plan = plan_document()
    ax = _axes()
    cost_capacity_frontier(ax, plan)
    labels = [str(ln.get_label()) for ln in _lines(ax)]
    assert any(lb.startswith("chosen: generate.replicas=6") for lb in labels)
    assert any(lb.startswith("target 480") for lb in labels)
    assert any(lb.startswith("Pareto frontier") for lb in labels)
    assert any(lb.startswith("infeasible at target (5)") for lb in labels)
    texts = [t.get_text() for t in ax.texts]
    assert any(t.startswith("chosen: generate.replicas=6 model=small") for t in texts)
    assert {"#1", "#2", "#3"} <= set(texts)
    assert ax.get_xlabel().startswith("maximum sustainable rate (req/s")


def _long_coincident_plan() -> dict[str, Any]:
    """The plan with longer configuration labels, ranks #1 and #2 on one point (same cost,
    same capacity) and pruned-dominated configurations, as the self-hosted plan has them."""
    plan = json.loads(json.dumps(plan_document()).replace("model=", "generate.max_num_seqs_model="))
    ranked = {c["rank"]: c for c in plan["candidates"] if c["rank"]}
    ranked[2].update(max_rate_rps=ranked[1]["max_rate_rps"], usd_per_hour=ranked[1]["usd_per_hour"])
    for c in plan["candidates"][-5:]:
        c["status"] = "pruned-dominated"
    return plan


def _inside(box: Bbox, outer: Bbox, slack: float = 1.0) -> bool:
    """Whether ``box`` lies within ``outer`` (pixels, ``slack`` of rounding allowed)."""
    return bool(
        outer.x0 - slack <= box.x0
        and box.x1 <= outer.x1 + slack
        and outer.y0 - slack <= box.y0
        and box.y1 <= outer.y1 + slack
    )


@pytest.mark.parametrize(
    "plan", [plan_document(), _long_coincident_plan()], ids=["fixture", "long"]
)
def test_frontier_chart_keeps_every_text_inside_the_figure(plan: dict[str, Any]) -> None:
    chart = plan_charts(plan)[0]
    with matplotlib.rc_context(CHART_STYLE):  # as render_capacity_chart draws it
        fig = Figure(figsize=chart.size, dpi=110, layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        chart.draw(ax)
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        legend = ax.get_legend()
        assert legend is not None
        texts: list[Text] = [ax.title, ax.xaxis.label, ax.yaxis.label, *legend.get_texts()]
        for text in [*texts, *ax.texts]:
            assert _inside(text.get_window_extent(renderer), fig.bbox), text.get_text()
        for text in ax.texts:  # the rank labels and the chosen one's box: inside the axes
            patch = text.get_bbox_patch()
            box = (patch or text).get_window_extent(renderer)
            assert _inside(box, ax.bbox), text.get_text()
        # the plot takes the figure's width; the legend fits under it
        assert ax.bbox.width > 0.8 * fig.bbox.width
        assert legend.get_window_extent(renderer).x0 >= fig.bbox.x0
    labels = [t.get_text() for t in ax.texts]
    if plan["candidates"][-1]["status"] == "pruned-dominated":
        assert "#1, #2" in labels  # one label for the two ranks on one point
        assert "#1" not in labels
        assert "#3" in labels
    # the chosen one's box: its configuration wrapped between settings
    (box_text,) = [t for t in labels if t.startswith("chosen:")]
    assert all(len(line) <= 45 for line in box_text.splitlines())


def test_plan_report(plan_dir: Path) -> None:
    written = write_report(plan_dir)
    names = ["cost_vs_capacity"]
    assert written == [
        plan_dir / "cost_vs_capacity.png",
        plan_dir / "cost_vs_capacity.svg",
        plan_dir / "report.html",
        plan_dir / "report.md",
    ]
    _check_png(plan_dir / "cost_vs_capacity.png")
    _check_svg(plan_dir / "cost_vs_capacity.svg")
    text = (plan_dir / "report.html").read_text(encoding="utf-8")
    _check_html(text, plan_dir, names)
    plan = plan_document()
    assert (
        f"Evaluated 9 of 40 configurations (pruned: {plan['pruned_monotone']} implied "
        "infeasible by a smaller configuration that failed, 0 above a feasible one and no "
        f"cheaper, {plan['pruned_cost']} by the cost bound); 57 simulation runs in all." in text
    )
    assert "generate.replicas=6 model=small retrieve.replicas=2 (chosen)" in text
    assert "531 req/s" in text  # the chosen one's max rate ...
    assert "+11%" in text  # ... and its headroom over the target
    md = (plan_dir / "report.md").read_text(encoding="utf-8")
    assert "](cost_vs_capacity.png)" in md
    assert "| 1 | generate.replicas=6 model=small retrieve.replicas=2 (chosen) | \\$25.8 |" in md


def test_plan_without_a_feasible_configuration(tmp_path: Path) -> None:
    plan = plan_document()
    plan["chosen"] = None
    for c in plan["candidates"]:
        if c["status"] == "feasible":
            c.update(status="infeasible", rank=None, max_rate_rps=None, slo_ratio=1.4)
    (tmp_path / "plan.json").write_text(json.dumps(plan), encoding="utf-8")
    write_capacity_report(tmp_path)
    text = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "No configuration meets the SLO at 480 req/s" in text
    _check_png(tmp_path / "cost_vs_capacity.png")


def test_a_folder_with_neither_run_sweep_nor_plan_keeps_the_one_line_error(
    tmp_path: Path,
) -> None:
    with pytest.raises(ResultsError, match="not a run folder") as info:
        write_report(tmp_path)
    assert "\n" not in str(info.value)
    with pytest.raises(ResultsError, match="not a sweep or plan folder"):
        write_capacity_report(tmp_path)


def test_fault_sweep_adds_the_timeline_of_the_scenario_as_written(tmp_path: Path) -> None:
    pytest.importorskip("ragstress.report.fault_charts")
    scenario = Scenario.model_validate(
        {**SCENARIO, "faults": [{"kind": "outage", "stage": "work", "start_s": 15, "end_s": 22}]}
    )
    run_sweep_job(scenario, PROFILE, [4.0, 8.0], [], tmp_path, search=None, workers=1)
    written = write_capacity_report(tmp_path)
    assert tmp_path / "fault_timeline.png" in written
    assert tmp_path / "fault_timeline.svg" in written
    _check_png(tmp_path / "fault_timeline.png")
    text = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "Fault timeline and recovery" in text
    # one configuration: no by-configuration chart; no search: no capacity column figures
    assert not (tmp_path / "latency_p95_by_config.png").exists()
    assert (tmp_path / "latency_vs_load_baseline.png").exists()
