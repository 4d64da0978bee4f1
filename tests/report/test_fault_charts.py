"""The fault timeline chart: drawn for runs with faults only, with windows and recovery marked."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.image import imread
from matplotlib.patches import Rectangle
from matplotlib.text import Annotation

from ragstress.analysis.recovery import recovery_times
from ragstress.api import simulate_scenario
from ragstress.config import load_profile
from ragstress.config.profile import Profile
from ragstress.config.scenario import Scenario
from ragstress.report.fault_charts import fault_timeline, has_faults
from ragstress.report.html import CHARTS, render_chart, write_report
from ragstress.results import Manifest, RunResult, write_run

PROFILES = Path(__file__).resolve().parents[2] / "profiles"
FAULT_PNG = "fault_timeline.png"

# scenarios/retry-storm.yaml, shortened: half of generate's slots gone for 30 s
STORM: dict[str, Any] = {
    "name": "storm-short",
    "duration_s": 150,
    "warmup_s": 30,
    "seed": 7,
    "arrivals": {"kind": "poisson", "rate": 11},
    "slo": {"latency_s": {"p95": 8}, "error_rate": 0.01},
    "faults": [
        {"kind": "capacity_loss", "stage": "generate", "start_s": 60, "end_s": 90, "fraction": 0.5}
    ],
}
POOL: dict[str, Any] = {
    "name": "pool",
    "stages": [
        {
            "kind": "pool",
            "name": "search",
            "replicas": 2,
            "concurrency": 4,
            "service": {"kind": "exponential", "mean": 0.1},
        }
    ],
}
DRAIN: dict[str, Any] = {
    "name": "drain",
    "duration_s": 90,
    "warmup_s": 10,
    "seed": 3,
    "arrivals": {"kind": "poisson", "rate": 40},
    "slo": {"latency_s": {"p95": 1.0}},
    "faults": [
        {
            "kind": "capacity_loss",
            "stage": "search",
            "start_s": 30,
            "end_s": 40,
            "replicas_down": 2,
        },
        {"kind": "outage", "stage": "search", "start_s": 60, "end_s": 65, "percent": 50},
    ],
}


def _simulate(scenario: dict[str, Any], profile: Profile) -> RunResult:
    return simulate_scenario(Scenario.model_validate(scenario), profile).result


@pytest.fixture(scope="module")
def storm() -> RunResult:
    return _simulate(STORM, load_profile(PROFILES / "retry-storm.yaml"))


@pytest.fixture(scope="module")
def drain() -> RunResult:
    return _simulate(DRAIN, Profile.model_validate(POOL))


def _spec() -> Any:
    return next(spec for spec in CHARTS if spec.filename == FAULT_PNG)


def _draw(result: RunResult) -> Axes:
    fig = Figure(figsize=(12, 6.4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    fault_timeline(ax, result, None)
    fig.canvas.draw()  # layout and legend placement must not fail either
    return ax


def _texts(ax: Axes) -> list[str]:
    return [t.get_text() for t in ax.texts]


def _spans(ax: Axes) -> list[tuple[float, float]]:
    """x extents of the full-height rectangles (axvspan) on the axes."""
    out = []
    for patch in ax.patches:
        if isinstance(patch, Rectangle):
            x0 = float(patch.get_x())
            out.append((x0, x0 + float(patch.get_width())))
    return out


def test_the_report_lists_the_chart_only_for_runs_with_faults(storm: RunResult) -> None:
    spec = _spec()
    assert spec.available is has_faults
    assert spec.caption.startswith("Read ")
    assert has_faults(storm)
    no_faults = {k: v for k, v in STORM.items() if k != "faults"}
    assert not has_faults(
        RunResult(
            manifest=storm.manifest.model_copy(update={"scenario": no_faults}),
            requests=storm.requests,
        )
    )


def test_storm_renders_a_real_png(storm: RunResult) -> None:
    png = render_chart(_spec(), storm, None)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    image = imread(io.BytesIO(png))
    assert image.shape[0] > 500
    assert image.shape[1] > 1000
    # not blank: a good share of the pixels differ from white, and they vary
    rgb = image[..., :3]
    assert float(rgb.std()) > 0.1
    assert float((rgb.mean(axis=2) < 0.95).mean()) > 0.1


def test_storm_marks_the_window_and_says_it_never_recovered(storm: RunResult) -> None:
    ax = _draw(storm)
    assert (60.0, 90.0) in _spans(ax)
    texts = _texts(ax)
    assert any("generate capacity_loss (−50 %)" in t for t in texts)
    assert any("not recovered by end of load (150 s)" in t for t in texts)
    assert not any("recovered in" in t for t in texts)
    # latency left, errors and in-flight on two twin axes on the right
    figure = ax.get_figure()
    assert figure is not None
    assert len(figure.axes) == 3
    labels = [ax.get_ylabel(), *(other.get_ylabel() for other in figure.axes[1:])]
    assert labels == [
        "latency of answered requests (s)",
        "failed requests (% of arrivals)",
        "requests in flight",
    ]
    assert "(s)" in ax.get_xlabel()
    assert ax.get_title().startswith("Fault timeline")
    legend = ax.get_legend()
    assert legend is not None
    entries = [t.get_text() for t in legend.get_texts()]
    assert {"p50", "p95", "p99"} <= set(entries)
    assert any(e.startswith("timeout, % of arrivals") for e in entries)
    assert any(e.startswith("in flight") for e in entries)
    assert any(e.startswith("recovered = p95 ≤ 8 s") for e in entries)


def test_drain_annotates_each_recovery(drain: RunResult) -> None:
    recoveries = recovery_times(drain)
    assert [r.recovered for r in recoveries] == [True, True]
    ax = _draw(drain)
    assert {(30.0, 40.0), (60.0, 65.0)} <= set(_spans(ax))
    texts = _texts(ax)
    recovered = [t.strip() for t in texts if "recovered in" in t]
    assert recovered == [f"recovered in {r.recovery_s:g} s" for r in recoveries]
    # the bracket from the window's end to the moment it was normal again
    brackets = [a for a in ax.texts if isinstance(a, Annotation)]
    first = recoveries[0]
    assert any(np.allclose([a.xy[0], a.xyann[0]], [first.recovered_at_s, 40.0]) for a in brackets)
    # the recovery limit drawn is the SLO's p95 target here (looser than 1.2 × baseline)
    assert 1.0 in [float(line.get_ydata()[0]) for line in ax.get_lines() if len(line.get_ydata())]


def test_report_writes_the_chart_for_a_fault_run(drain: RunResult, tmp_path: Path) -> None:
    write_run(tmp_path, drain)
    written = {p.name for p in write_report(tmp_path)}
    assert FAULT_PNG in written
    assert imread(tmp_path / FAULT_PNG).shape[1] > 1000
    assert "Fault timeline and recovery" in (tmp_path / "report.html").read_text("utf-8")


def _measured(outcome: str, n: int) -> RunResult:
    """A measured run of STORM (no time series): ``n`` requests, all with ``outcome``."""
    arrival = np.linspace(0.1, 149.9, n)
    zeros = np.zeros(n)
    manifest = Manifest(
        source="measured",
        scenario=STORM,
        profile=None,
        seed=0,
        stages=["generate"],
        duration_s=150.0,
        ragstress_version="test",
    )
    requests = {
        "id": np.arange(n),
        "arrival_s": arrival,
        "outcome": np.array([outcome] * n),
        "latency_s": np.full(n, 0.002),
        "ttft_s": np.full(n, np.nan),
        "attempts": np.ones(n, dtype=np.int64),
        "tokens_in": zeros.astype(np.int64),
        "tokens_out": zeros.astype(np.int64),
        "cost_usd": zeros,
    }
    return RunResult(manifest=manifest, requests=requests)


@pytest.mark.parametrize(("outcome", "n"), [("shed", 0), ("shed", 50), ("ok", 3000)])
def test_odd_runs_do_not_crash(outcome: str, n: int) -> None:
    ax = _draw(_measured(outcome, n))
    assert ax.get_title()
    assert ax.get_xlabel()
    assert ax.get_ylabel()
    assert (60.0, 90.0) in _spans(ax)
    texts = _texts(ax)
    if outcome == "shed":
        assert any("no answered requests" in t for t in texts)
    else:
        # in flight from the request table (no time series); always normal: 0 s
        assert any("recovered in 0 s" in t for t in texts)
