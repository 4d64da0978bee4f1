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
from matplotlib.collections import PolyCollection
from matplotlib.colors import to_hex
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
from ragstress.report.charts import (
    OUTCOME_COLOURS,
    has_outcome_series,
    has_stage_call_series,
    outcomes_over_time,
    stage_calls_over_time,
)
from ragstress.results import Manifest, RunResult, read_run, write_run
from ragstress.results.schema import OUTCOMES
from ragstress.results.store import ResultsError, read_summary

# drawn for every run
BASE_PNGS = (
    "latency_cdf.png",
    "latency_over_time.png",
    "throughput_over_time.png",
    "stage_breakdown.png",
    "queues_over_time.png",
)
# drawn only for runs whose time series has per-interval counts (every simulated run)
SERIES_PNGS = ("outcomes_over_time.png", "stage_calls_over_time.png")
PNGS = BASE_PNGS + SERIES_PNGS
Chart = Callable[[Axes, RunResult, Mapping[str, Any] | None], None]
CHARTS: dict[str, Chart] = {
    "latency_cdf": latency_cdf,
    "latency_over_time": latency_over_time,
    "throughput_over_time": throughput_over_time,
    "stage_breakdown": stage_breakdown,
    "queues_over_time": queues_over_time,
    "outcomes_over_time": outcomes_over_time,
    "stage_calls_over_time": stage_calls_over_time,
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
    assert text.count("data:image/png;base64,") == 7
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
    assert text.count("<figcaption>") == 7


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
    assert len(written) == 9
    assert not (folder / "summary.json").exists()  # the report never writes run data
    text = (folder / "report.html").read_text(encoding="utf-8")
    assert "latency_s.p95" in text
    assert text.count("data:image/png;base64,") == 7
    assert "cost per good answer" in text
    assert "retry amplification: generate" in text


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
    assert len(written) == 9  # a simulated run has a time series even without requests
    for name in PNGS:
        _assert_valid_png(tmp_path / name)
    text = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert text.count("data:image/png;base64,") == 7
    assert "—" in text  # NaN figures print as a dash, not "nan"
    assert ">nan<" not in text.lower()


def test_all_shed_run_does_not_crash(tmp_path: Path) -> None:
    write_run(tmp_path, _all_shed())  # measured, no time series, no summary.json
    written = write_report(tmp_path)
    assert sorted(p.name for p in written) == sorted([*BASE_PNGS, "report.html", "report.md"])
    for name in BASE_PNGS:
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


# ------------------------------------------------------------------------------ series charts


def _series_run(
    series: dict[str, np.ndarray] | None, profile: dict[str, Any] | None = None
) -> RunResult:
    """The all-shed request table with a hand-made time series and (optionally) profile."""
    base = _all_shed()
    manifest = base.manifest.model_copy(
        update={
            "profile": profile,
            "stages": ["cache", "embed", "generate"] if profile else base.manifest.stages,
        }
    )
    requests = dict(base.requests)
    if profile:
        n = len(base)
        requests["cache_wait_s"] = np.zeros(n)
        requests["cache_service_s"] = np.zeros(n)
    return RunResult(manifest=manifest, requests=requests, timeseries=series)


def _outcome_series() -> dict[str, np.ndarray]:
    zeros = np.zeros(4, dtype=np.int64)
    series: dict[str, np.ndarray] = {
        "t_s": np.arange(4.0),
        "in_flight": zeros.copy(),
        "arrivals": np.array([2, 1, 0, 0]),
        "latency_p95_s": np.array([math.nan, 0.5, 0.7, math.nan]),
    }
    for name in OUTCOMES:
        series[f"completed_{name}"] = zeros.copy()
    series["completed_ok"] = np.array([1, 1, 0, 0])
    series["completed_shed"] = np.array([0, 1, 0, 0])
    return series


def test_outcomes_over_time_stacks_only_the_outcomes_that_occur() -> None:
    ax = _draw(outcomes_over_time, _series_run(_outcome_series()))
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    labels = [str(c.get_label()) for c in bands]
    assert labels == ["ok (2)", "shed (1)"]  # answers first (bottom), no empty outcomes
    faces = [np.asarray(band.get_facecolor(), dtype=float)[0] for band in bands]
    assert [to_hex(tuple(face[:3].tolist())) for face in faces] == [
        OUTCOME_COLOURS["ok"],
        OUTCOME_COLOURS["shed"],
    ]
    # shed sits on top of ok: its band reaches ok + shed = 2 in the second interval
    top = np.asarray(bands[1].get_paths()[0].vertices, dtype=float)[:, 1]
    assert float(top.max()) == pytest.approx(2.0)
    arrivals = next(line for line in ax.get_lines() if str(line.get_label()).startswith("arr"))
    assert str(arrivals.get_label()) == "arrivals (3)"
    assert list(np.asarray(arrivals.get_ydata(), dtype=float)) == [2, 1, 0, 0, 0]
    # p95 on a second y axis sharing x, plotted at the end of each interval
    figure = ax.get_figure()
    assert figure is not None
    twins = [a for a in figure.axes if a is not ax]
    assert len(twins) == 1
    p95 = twins[0].get_lines()[0]
    assert list(np.asarray(p95.get_xdata(), dtype=float)) == [1, 2, 3, 4]
    assert "p95" in twins[0].get_ylabel()
    legend = ax.get_legend()
    assert legend is not None
    texts = [t.get_text() for t in legend.get_texts()]
    assert "p95 latency (right axis)" in texts
    assert "SLO p95 ≤ 2 s" in texts  # the scenario's latency target, on the p95 axis
    assert "(s)" in ax.get_xlabel()
    assert "per second" in ax.get_ylabel()


def test_outcomes_over_time_merges_a_long_run_into_wider_windows() -> None:
    m = 1000
    series = {
        "t_s": np.arange(float(m)),
        "arrivals": np.full(m, 3, dtype=np.int64),
        "completed_ok": np.full(m, 3, dtype=np.int64),
        "latency_p95_s": np.full(m, 0.5),
    }
    ax = _draw(outcomes_over_time, _series_run(series))
    arrivals = next(line for line in ax.get_lines() if str(line.get_label()).startswith("arr"))
    x = np.asarray(arrivals.get_xdata(), dtype=float)
    y = np.asarray(arrivals.get_ydata(), dtype=float)
    assert x.size - 1 <= 100
    np.testing.assert_allclose(y, 3.0)  # still a rate per second, whatever the window
    assert x[-1] == pytest.approx(m)
    assert "per 10 s window" in ax.get_title()


CALLS_PROFILE: dict[str, Any] = {
    "name": "with-cache",
    "stages": [
        {
            "kind": "cache",
            "name": "cache",
            "lookup": {"kind": "deterministic", "value": 0.001},
            "hits": {"kind": "probability", "p": 0.5},
            "skips": ["embed"],
        },
        {
            "kind": "pool",
            "name": "embed",
            "concurrency": 2,
            "service": {"kind": "deterministic", "value": 0.01},
        },
        {
            "kind": "llm_api",
            "name": "generate",
            "concurrency": 4,
            "ttft": {"kind": "deterministic", "value": 0.2},
            "time_per_output_token_s": 0.01,
        },
    ],
}


def test_stage_calls_draws_sent_and_served_per_non_cache_stage() -> None:
    series = {
        "t_s": np.arange(3.0),
        "cache_sent": np.array([5, 5, 5]),
        "cache_served": np.array([5, 5, 5]),
        "embed_sent": np.array([2, 2, 0]),
        "embed_served": np.array([1, 2, 1]),
        "generate_sent": np.array([4, 6, 0]),
        "generate_served": np.array([1, 1, 1]),
    }
    summary = {"retry_amplification": {"embed": 1.0, "generate": 1.5}}
    ax = _draw(stage_calls_over_time, _series_run(series, CALLS_PROFILE), summary)
    lines = {str(line.get_label()): line for line in ax.get_lines()}
    assert not [label for label in lines if label.startswith("cache")]
    sent = lines["generate sent (10; ×1.50 per request reaching it)"]
    served = lines["generate served (3)"]
    assert list(np.asarray(sent.get_ydata(), dtype=float)) == [4, 6, 0, 0]
    assert list(np.asarray(served.get_ydata(), dtype=float)) == [1, 1, 1, 1]
    assert sent.get_color() == served.get_color()
    assert served.get_linestyle() == "--"
    assert "embed sent (4; ×1.00 per request reaching it)" in lines
    assert lines["embed sent (4; ×1.00 per request reaching it)"].get_color() != sent.get_color()
    assert "calls per second" in ax.get_ylabel()


@pytest.mark.parametrize("chart", [outcomes_over_time, stage_calls_over_time])
def test_series_charts_say_so_when_the_series_is_missing(chart: Chart) -> None:
    old = {"t_s": np.arange(3.0), "in_flight": np.array([0, 1, 0])}  # an older run's series
    for result in (_all_shed(), _series_run(old)):
        assert not has_outcome_series(result)
        assert not has_stage_call_series(result)
        ax = _draw(chart, result)
        assert any("time series" in t.get_text() for t in ax.texts)
        assert ax.get_title()


def test_report_has_the_new_charts_and_cost_rows(run_folder: Path, report: list[Path]) -> None:
    del report
    summary = read_summary(run_folder)
    assert summary is not None
    html_text = (run_folder / "report.html").read_text(encoding="utf-8")
    md_text = (run_folder / "report.md").read_text(encoding="utf-8")
    for title in ("Outcomes over time", "Calls per stage: sent vs served"):
        assert f"<h3>{title}</h3>" in html_text
        assert f"### {title}" in md_text
    for name in SERIES_PNGS:
        assert f"]({name})" in md_text
    assert "retry amplification and server throughput" in html_text  # the caption
    per_answer = f"${summary['cost_usd_per_answer']:.4g}"
    per_good = f"${summary['cost_usd_per_good_answer']:.4g}"
    for text in (html_text, md_text):
        assert "cost per answer" in text
        assert per_answer in text
        assert per_good in text
        for stage in ("embed", "retrieve", "generate"):
            assert f"cost: {stage}" in text
            assert f"retry amplification: {stage}" in text
    generate_total = f"${summary['cost_usd']['by_stage']['generate']['total']:.4g}"
    assert f'<td>cost: generate</td><td class="num">{generate_total} (' in html_text
    assert '<td>retry amplification: generate</td><td class="num">×1</td>' in html_text


def test_report_skips_the_new_charts_for_an_older_run(run_folder: Path, tmp_path: Path) -> None:
    """A run folder from before the per-interval counts: no new charts, no broken images,
    and an older summary.json without the new keys prints dashes and no per-stage rows."""
    result = read_run(run_folder)
    assert result.timeseries is not None
    keep = ("t_s", "in_flight")
    old_series = {
        k: v for k, v in result.timeseries.items() if k in keep or k.endswith(("_queue", "_busy"))
    }
    old_requests = {
        k: v for k, v in result.requests.items() if not k.endswith(("_attempts", "_cost_usd"))
    }
    old = RunResult(manifest=result.manifest, requests=old_requests, timeseries=old_series)
    summary = read_summary(run_folder)
    assert summary is not None
    old_summary = {
        k: v
        for k, v in summary.items()
        if k not in ("cost_usd_per_answer", "cost_usd_per_good_answer", "retry_amplification")
    }
    old_summary["cost_usd"] = {k: v for k, v in summary["cost_usd"].items() if k != "by_stage"}
    write_run(tmp_path, old, old_summary)
    written = write_report(tmp_path)
    assert sorted(p.name for p in written) == sorted([*BASE_PNGS, "report.html", "report.md"])
    assert not (tmp_path / "outcomes_over_time.png").exists()
    text = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert text.count("data:image/png;base64,") == 5
    assert "Outcomes over time" not in text
    assert '<td>cost per answer</td><td class="num">—</td>' in text
    assert "cost: generate" not in text
    assert "retry amplification:" not in text
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "outcomes_over_time.png" not in md
    # and without summary.json: recomputed from the old columns, NaN where they are missing
    (tmp_path / "summary.json").unlink()
    write_report(tmp_path)
    text = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert '<td>retry amplification: generate</td><td class="num">—</td>' in text
    assert "cost per good answer" in text
