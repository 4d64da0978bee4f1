"""The report: PNG charts, a self-contained report.html and report.md from a run folder."""

from __future__ import annotations

import math
import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.image import imread

from ragstress.api import simulate_scenario
from ragstress.config.profile import Profile
from ragstress.config.scenario import Scenario
from ragstress.report import (
    latency_cdf,
    latency_over_time,
    queues_over_time,
    stage_breakdown,
    throughput_over_time,
    write_report,
)
from ragstress.results import Manifest, RunResult, read_run, write_run
from ragstress.results.store import ResultsError, read_summary

PNGS = (
    "latency_cdf.png",
    "latency_over_time.png",
    "throughput_over_time.png",
    "stage_breakdown.png",
    "queues_over_time.png",
)
Chart = Callable[[Axes, RunResult, Mapping[str, Any] | None], None]
CHARTS: dict[str, Chart] = {
    "latency_cdf": latency_cdf,
    "latency_over_time": latency_over_time,
    "throughput_over_time": throughput_over_time,
    "stage_breakdown": stage_breakdown,
    "queues_over_time": queues_over_time,
}

SCENARIO: dict[str, Any] = {
    "name": "spike-report",
    "duration_s": 60,
    "seed": 5,
    "arrivals": {
        "kind": "poisson",
        "rate": {
            "kind": "spike",
            "base_rps": 8,
            "peak_rps": 30,
            "start_s": 20,
            "duration_s": 15,
            "ramp_s": 5,
        },
    },
    "slo": {"latency_s": {"p95": 4}, "ttft_s": {"p95": 1.0}, "error_rate": 0.01},
}
PROFILE: dict[str, Any] = {
    "name": "small-rag",
    "stages": [
        {
            "kind": "pool",
            "name": "embed",
            "concurrency": 4,
            "service": {"kind": "exponential", "mean": 0.05},
            "price": {"per_1m_input_tokens_usd": 0.02},
            "input_tokens": "query",
        },
        {
            "kind": "pool",
            "name": "retrieve",
            "replicas": 1,
            "concurrency": 2,
            "service": {"kind": "lognormal", "mean": 0.02, "cv": 1},
            "queue_limit": 20,
        },
        {
            "kind": "llm_api",
            "name": "generate",
            "concurrency": 24,
            "ttft": {"kind": "lognormal", "mean": 0.4, "cv": 0.5},
            "time_per_output_token_s": 0.01,
            "price": {"per_1m_input_tokens_usd": 0.15, "per_1m_output_tokens_usd": 0.6},
        },
    ],
}
POOL_ONLY: dict[str, Any] = {
    "name": "pool-only",
    "stages": [
        {
            "kind": "pool",
            "name": "search",
            "concurrency": 4,
            "service": {"kind": "exponential", "mean": 0.1},
        }
    ],
}


def _simulate(
    folder: Path, scenario: Mapping[str, Any] = SCENARIO, profile: Mapping[str, Any] = PROFILE
) -> RunResult:
    run = simulate_scenario(Scenario.model_validate(scenario), Profile.model_validate(profile))
    write_run(folder, run.result, run.summary)
    return run.result


def _manifest(name: str = "synthetic", **scenario: Any) -> Manifest:
    return Manifest(
        source="measured",
        scenario={
            "name": name,
            "duration_s": 10.0,
            "arrivals": {"kind": "poisson", "rate": 5},
            "slo": {"latency_s": {"p95": 2.0}, "error_rate": 0.05},
            **scenario,
        },
        profile={"name": "measured-endpoint", "stages": []},
        seed=0,
        stages=["embed", "generate"],
        duration_s=10.0,
        ragstress_version="test",
    )


def _all_shed(n: int = 40, name: str = "all-shed") -> RunResult:
    """A measured run (no time series) in which every request was shed at the first stage."""
    arrival = np.linspace(0.1, 9.9, n)
    nan = np.full(n, math.nan)
    requests = {
        "id": np.arange(n, dtype=np.int64),
        "arrival_s": arrival,
        "outcome": np.array(["shed"] * n),
        "latency_s": np.full(n, 0.002),
        "ttft_s": nan.copy(),
        "attempts": np.ones(n, dtype=np.int64),
        "tokens_in": np.zeros(n, dtype=np.int64),
        "tokens_out": np.zeros(n, dtype=np.int64),
        "cost_usd": np.zeros(n),
        "embed_wait_s": np.zeros(n),
        "embed_service_s": nan.copy(),
        "generate_wait_s": nan.copy(),
        "generate_service_s": nan.copy(),
    }
    return RunResult(manifest=_manifest(name), requests=requests, timeseries=None)


def _draw(chart: Chart, result: RunResult, summary: Mapping[str, Any] | None = None) -> Axes:
    fig = Figure(figsize=(10, 5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    chart(ax, result, summary)
    fig.canvas.draw()  # layout and legend placement must not fail either
    return ax


def _assert_valid_png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n"), path
    image = imread(path)
    assert image.shape[0] > 100
    assert image.shape[1] > 100


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("run")
    _simulate(folder)
    return folder


@pytest.fixture(scope="module")
def report(run_folder: Path) -> list[Path]:
    return write_report(run_folder)


# ------------------------------------------------------------------------------ write_report


def test_writes_every_chart_and_both_documents(run_folder: Path, report: list[Path]) -> None:
    assert sorted(p.name for p in report) == sorted([*PNGS, "report.html", "report.md"])
    for path in report:
        assert path.parent == run_folder
        assert path.is_file()
    for name in PNGS:
        _assert_valid_png(run_folder / name)
    # the report writes no temporary files next to the run and leaves the run readable
    assert not [p for p in run_folder.iterdir() if p.name.startswith(".")]
    assert len(read_run(run_folder)) > 0


def test_html_is_self_contained(run_folder: Path, report: list[Path]) -> None:
    del report
    text = (run_folder / "report.html").read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    assert "spike-report" in text
    assert "small-rag" in text
    for objective in ("latency_s.p95", "ttft_s.p95", "error_rate"):
        assert objective in text
    assert text.count("data:image/png;base64,") == 5
    assert "http://" not in text
    assert "https://" not in text
    assert "<script" not in text
    assert "<link" not in text
    assert re.search(r'src="(?!data:)', text) is None  # every image is inlined


def test_html_has_summary_slo_stage_and_outcome_tables(
    run_folder: Path, report: list[Path]
) -> None:
    del report
    text = (run_folder / "report.html").read_text(encoding="utf-8")
    summary = read_summary(run_folder)
    assert summary is not None
    for label in ("throughput", "goodput", "error rate", "latency p95", "TTFT p95", "per 1k"):
        assert label in text
    for stage in ("embed", "retrieve", "generate"):
        assert f"<td>{stage}</td>" in text
    assert "utilisation" in text
    assert f"{summary['requests']:,}" in text
    # every SLO row carries its verdict's colour class
    verdicts = re.findall(r'<td class="(met|notmet)">', text)
    assert len(verdicts) == len(summary["slo"])
    assert verdicts == ["met" if row["met"] else "notmet" for row in summary["slo"]]
    assert "<td>shed</td>" in text
    assert text.count("<figcaption>") == 5


def test_markdown_twin_references_the_pngs(run_folder: Path, report: list[Path]) -> None:
    del report
    text = (run_folder / "report.md").read_text(encoding="utf-8")
    assert text.startswith("# ragstress report: spike-report")
    for name in PNGS:
        assert f"]({name})" in text
    assert "latency_s.p95" in text


def test_report_without_summary_json_computes_it(run_folder: Path, tmp_path: Path) -> None:
    folder = tmp_path / "copy"
    shutil.copytree(run_folder, folder)
    (folder / "summary.json").unlink()
    written = write_report(folder)
    assert len(written) == 7
    assert not (folder / "summary.json").exists()  # the report never writes run data
    text = (folder / "report.html").read_text(encoding="utf-8")
    assert "latency_s.p95" in text
    assert text.count("data:image/png;base64,") == 5


def test_not_a_run_folder_raises(tmp_path: Path) -> None:
    with pytest.raises(ResultsError):
        write_report(tmp_path)


def test_html_escapes_text(tmp_path: Path) -> None:
    name = '<img src=x onerror="alert(1)"> & co'
    write_run(tmp_path, _all_shed(name=name))
    write_report(tmp_path)
    text = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert name not in text
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt; &amp; co" in text


# ------------------------------------------------------------------------------ edge cases


def test_empty_run_does_not_crash(tmp_path: Path) -> None:
    scenario = {**SCENARIO, "name": "empty", "arrivals": {"kind": "poisson", "rate": 0}}
    result = _simulate(tmp_path, scenario)
    assert len(result) == 0
    written = write_report(tmp_path)
    assert len(written) == 7
    for name in PNGS:
        _assert_valid_png(tmp_path / name)
    text = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert text.count("data:image/png;base64,") == 5
    assert "—" in text  # NaN figures print as a dash, not "nan"
    assert ">nan<" not in text.lower()


def test_all_shed_run_does_not_crash(tmp_path: Path) -> None:
    write_run(tmp_path, _all_shed())  # measured, no time series, no summary.json
    write_report(tmp_path)
    for name in PNGS:
        _assert_valid_png(tmp_path / name)
    text = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "measured" in text
    assert '<td>shed</td><td class="num">40</td><td class="num">100 %</td>' in text
    assert 'class="notmet"' in text  # error rate 100 % misses its objective


@pytest.mark.parametrize("chart", list(CHARTS.values()), ids=list(CHARTS))
def test_charts_survive_all_shed_and_empty_runs(chart: Chart) -> None:
    shed = _all_shed()
    empty = RunResult(
        manifest=shed.manifest,
        requests={k: v[:0] for k, v in shed.requests.items()},
        timeseries=None,
    )
    for result in (shed, empty):
        ax = _draw(chart, result)
        assert ax.get_title()
        assert ax.get_xlabel()
        assert ax.get_ylabel()


def test_no_llm_stage_draws_one_latency_curve(tmp_path: Path) -> None:
    result = _simulate(tmp_path, profile=POOL_ONLY)
    answered = result.answered()
    np.testing.assert_array_equal(
        result.requests["ttft_s"][answered], result.requests["latency_s"][answered]
    )
    ax = _draw(latency_cdf, result)
    labels = [str(line.get_label()) for line in ax.get_lines()]
    assert sum(label.startswith("end-to-end") for label in labels) == 1
    assert not any(label.startswith("TTFT:") for label in labels)
    assert "TTFT = latency" in ax.get_title()
    write_report(tmp_path)  # and the whole report copes


def test_trace_scenario_whose_file_is_gone_uses_arrival_counts() -> None:
    base = _all_shed()
    manifest = _manifest(arrivals={"kind": "trace", "file": "/nonexistent/trace.csv"})
    result = RunResult(manifest=manifest, requests=base.requests, timeseries=None)
    ax = _draw(throughput_over_time, result)
    labels = [str(line.get_label()) for line in ax.get_lines()]
    assert "offered = replayed arrivals" in labels


# ------------------------------------------------------------------------------ charts


@pytest.mark.parametrize(
    ("name", "x_unit", "y_unit"),
    [
        ("latency_cdf", "(s", "fraction"),
        ("latency_over_time", "(s)", "(s)"),
        ("throughput_over_time", "(s)", "(req/s)"),
        ("stage_breakdown", "(s)", "stage"),
        ("queues_over_time", "(s)", "requests"),
    ],
)
def test_chart_draws_on_the_given_axes(
    run_folder: Path, name: str, x_unit: str, y_unit: str
) -> None:
    result = read_run(run_folder)
    summary = read_summary(run_folder)
    ax = _draw(CHARTS[name], result, summary)
    assert ax.get_lines() or ax.patches
    assert ax.get_title()
    assert x_unit in ax.get_xlabel()
    assert y_unit in ax.get_ylabel()
    assert ax.get_legend() is not None
    assert ax.xaxis.get_gridlines()[0].get_visible()
    # the function drew on this axes only: it made no other axes on the figure
    figure = ax.get_figure()
    assert figure is not None
    assert figure.axes == [ax]


def test_latency_cdf_marks_slo_targets(run_folder: Path) -> None:
    ax = _draw(latency_cdf, read_run(run_folder), read_summary(run_folder))
    assert ax.get_xscale() == "log"
    labels = [str(line.get_label()) for line in ax.get_lines()]
    assert any(label.startswith("SLO end-to-end p95") for label in labels)
    assert any(label.startswith("SLO TTFT p95") for label in labels)
    assert any(label.startswith("end-to-end: p50") for label in labels)
    assert any(label.startswith("TTFT: p50") for label in labels)


def test_throughput_offered_line_follows_the_scenario_shape(run_folder: Path) -> None:
    ax = _draw(throughput_over_time, read_run(run_folder))
    offered = next(line for line in ax.get_lines() if str(line.get_label()).startswith("offered"))
    y = np.asarray(offered.get_ydata(), dtype=float)
    assert y.max() == pytest.approx(30.0)
    assert y.min() == pytest.approx(8.0)


def test_stage_breakdown_has_mean_and_p95_bars(run_folder: Path) -> None:
    ax = _draw(stage_breakdown, read_run(run_folder), None)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["embed", "retrieve", "generate"]
    assert len(ax.patches) == 3 * 3  # wait, service and p95 bar per stage


def test_queues_from_request_table_when_no_time_series() -> None:
    n = 3
    requests = {
        "id": np.arange(n, dtype=np.int64),
        "arrival_s": np.array([0.5, 1.5, 2.5]),
        "outcome": np.array(["ok"] * n),
        "latency_s": np.array([3.0, 0.2, 0.2]),
        "ttft_s": np.array([1.0, 0.1, 0.1]),
        "attempts": np.ones(n, dtype=np.int64),
        "tokens_in": np.ones(n, dtype=np.int64),
        "tokens_out": np.ones(n, dtype=np.int64),
        "cost_usd": np.zeros(n),
        "embed_wait_s": np.zeros(n),
        "embed_service_s": np.full(n, 0.1),
        "generate_wait_s": np.zeros(n),
        "generate_service_s": np.full(n, 0.1),
    }
    result = RunResult(manifest=_manifest(), requests=requests, timeseries=None)
    ax = _draw(queues_over_time, result)
    line = next(line for line in ax.get_lines() if str(line.get_label()).startswith("in flight"))
    t = np.asarray(line.get_xdata(), dtype=float)
    y = np.asarray(line.get_ydata(), dtype=float)
    assert y[t == 1.0][0] == 1  # the first request, 0.5 → 3.5
    assert y[t == 2.0][0] == 1  # the second finished at 1.7
    assert y[t == 4.0][0] == 0


def test_warm_up_is_shaded(tmp_path: Path) -> None:
    result = _simulate(tmp_path, {**SCENARIO, "warmup_s": 10})
    ax = _draw(latency_over_time, result)
    assert any("warm-up" in str(p.get_label()) for p in ax.patches)


def test_latency_cdf_of_a_large_run_is_thinned_but_exact_in_the_tail() -> None:
    n = 100_000
    rng = np.random.default_rng(7)
    latency = rng.lognormal(0.0, 1.0, n)
    base = _all_shed(n)
    requests = {
        **base.requests,
        "arrival_s": np.sort(rng.uniform(0, 10, n)),
        "outcome": np.array(["ok"] * n),
        "latency_s": latency,
        "ttft_s": latency / 2,
    }
    result = RunResult(manifest=base.manifest, requests=requests, timeseries=None)
    ax = _draw(latency_cdf, result)
    curve = next(line for line in ax.get_lines() if str(line.get_label()).startswith("end-to-end"))
    x = np.asarray(curve.get_xdata(), dtype=float)
    y = np.asarray(curve.get_ydata(), dtype=float)
    assert x.size < 10_000
    assert x[-1] == pytest.approx(latency.max())
    # the curve passes through the true p99
    assert np.interp(0.99, y, x) == pytest.approx(np.quantile(latency, 0.99), rel=1e-3)
