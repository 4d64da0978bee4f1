"""Workloads: arrival processes and shapes, determinism, request mix, truncation, trace replay."""

from __future__ import annotations

import csv
import itertools
import math
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import integrate

from ragstress.config import ConfigError, Scenario, TraceArrivals
from ragstress.workload import Workload, build_workload, load_trace

REPO = Path(__file__).resolve().parents[2]
AZURE_CONV = REPO / "scenarios" / "traces" / "azure_llm_2023_conv.csv"
AZURE_CONV_RECORDS = 19_366


def _scenario(arrivals: dict[str, Any], duration_s: float, seed: int = 1, **extra: Any) -> Scenario:
    return Scenario.model_validate(
        {"name": "w", "duration_s": duration_s, "seed": seed, "arrivals": arrivals, **extra}
    )


def _workload(arrivals: dict[str, Any], duration_s: float, seed: int = 1, **extra: Any) -> Workload:
    return build_workload(_scenario(arrivals, duration_s, seed, **extra))


# --- arrival processes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arrivals", "cv"),
    [
        ({"kind": "poisson", "rate": 200.0}, 1.0),
        ({"kind": "gamma", "rate": 200.0, "cv": 3.0}, 3.0),
        ({"kind": "gamma", "rate": 200.0, "cv": 0.5}, 0.5),
        ({"kind": "constant", "rate": 200.0}, 0.0),
    ],
    ids=["poisson", "gamma-cv3", "gamma-cv0.5", "constant"],
)
def test_rate_and_interarrival_cv(arrivals: dict[str, Any], cv: float) -> None:
    duration = 500.0  # 100,000 arrivals
    w = _workload(arrivals, duration, seed=42)
    assert w.arrival_s.size / duration == pytest.approx(200.0, rel=0.05)
    assert (w.arrival_s >= 0).all()
    assert (w.arrival_s < duration).all()
    gaps = np.diff(w.arrival_s)
    assert (gaps >= 0).all()
    achieved_cv = gaps.std() / gaps.mean()
    if cv == 0.0:
        assert achieved_cv < 1e-6
        assert gaps == pytest.approx(np.full(gaps.size, 1 / 200.0))
    else:
        assert achieved_cv == pytest.approx(cv, rel=0.10)


# --- load shapes: counts per window against the integral of the rate -------------------------


def _ramp(t: float) -> float:
    return 10.0 + 90.0 * t / 100.0


def _step(t: float) -> float:
    return 20.0 if t < 30 else (80.0 if t < 60 else 10.0)


def _spike(t: float) -> float:
    # base 10, up over 5 s to 100 at t = 40, held 20 s, back down over 5 s
    return float(np.interp(t, [35.0, 40.0, 60.0, 65.0], [10.0, 100.0, 100.0, 10.0]))


def _diurnal(t: float) -> float:
    return 50.0 * (1 + 0.8 * math.cos(2 * math.pi * (t - 25.0) / 100.0))


def _phases(t: float) -> float:
    if t < 30:
        return 20.0
    if t < 60:
        return 20.0 + 60.0 * (t - 30) / 30
    return 5.0


SHAPES: list[tuple[str, dict[str, Any], Callable[[float], float], list[float]]] = [
    ("ramp", {"kind": "ramp", "from_rps": 10, "to_rps": 100}, _ramp, []),
    (
        "step",
        {
            "kind": "step",
            "steps": [{"at_s": 0, "rps": 20}, {"at_s": 30, "rps": 80}, {"at_s": 60, "rps": 10}],
        },
        _step,
        [30.0, 60.0],
    ),
    (
        "spike",
        {
            "kind": "spike",
            "base_rps": 10,
            "peak_rps": 100,
            "start_s": 40,
            "duration_s": 20,
            "ramp_s": 5,
        },
        _spike,
        [35.0, 40.0, 60.0, 65.0],
    ),
    (
        "diurnal",
        {"kind": "diurnal", "mean_rps": 50, "amplitude": 0.8, "period_s": 100, "peak_at_s": 25},
        _diurnal,
        [],
    ),
    (
        "phases",
        {
            "kind": "phases",
            "phases": [
                {"duration_s": 30, "shape": {"kind": "constant", "rps": 20}},
                {"duration_s": 30, "shape": {"kind": "ramp", "from_rps": 20, "to_rps": 80}},
                {"duration_s": 40, "shape": {"kind": "constant", "rps": 5}},
            ],
        },
        _phases,
        [30.0, 60.0],
    ),
]


@pytest.mark.parametrize(("name", "shape", "rate", "breaks"), SHAPES, ids=[s[0] for s in SHAPES])
def test_shape_rate_is_followed_over_time(
    name: str, shape: dict[str, Any], rate: Callable[[float], float], breaks: list[float]
) -> None:
    duration, windows = 100.0, 10
    w = _workload({"kind": "poisson", "rate": shape}, duration, seed=9)
    edges = np.linspace(0.0, duration, windows + 1)
    counts, _ = np.histogram(w.arrival_s, bins=edges)
    for k, (a, b) in enumerate(itertools.pairwise(edges)):
        inside = [p for p in breaks if a < p < b]
        expected, _ = integrate.quad(rate, a, b, points=inside or None)
        sigma = math.sqrt(expected)
        assert abs(counts[k] - expected) <= 4 * sigma, (name, k, counts[k], expected)
    # the shape evaluates to the same intended rate
    t = np.array([5.0, 33.0, 45.0, 62.0, 95.0])
    arrivals = w.scenario.arrivals
    assert not isinstance(arrivals, TraceArrivals)
    assert arrivals.rate.rate(t, duration) == pytest.approx(
        [rate(x) for x in t], rel=1e-9, abs=1e-9
    )


def test_ramp_integral_by_hand() -> None:
    # 10 → 100 req/s over 100 s: 5,500 requests expected; window k holds 10·(10 + 9·(k + ½))
    w = _workload(
        {"kind": "poisson", "rate": {"kind": "ramp", "from_rps": 10, "to_rps": 100}}, 100.0
    )
    counts, _ = np.histogram(w.arrival_s, bins=np.linspace(0, 100, 11))
    for k, count in enumerate(counts):
        expected = 10 * (10 + 9 * (k + 0.5))
        assert abs(count - expected) <= 4 * math.sqrt(expected)
    assert abs(w.arrival_s.size - 5500) <= 4 * math.sqrt(5500)


# --- determinism -----------------------------------------------------------------------------

_ARRAYS = ("arrival_s", "query_id", "query_tokens", "top_k", "context_tokens", "output_tokens")


def test_same_seed_same_workload_different_seed_differs() -> None:
    arrivals = {"kind": "gamma", "rate": {"kind": "ramp", "from_rps": 5, "to_rps": 50}, "cv": 2.0}
    mix = {"requests": {"distinct_queries": 100}}
    a = _workload(arrivals, 60.0, seed=123, **mix)
    b = _workload(arrivals, 60.0, seed=123, **mix)
    c = _workload(arrivals, 60.0, seed=124, **mix)
    for name in _ARRAYS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype
        assert np.array_equal(x, y), name
        assert not x.flags.writeable, name
    assert a.truncated == b.truncated
    assert not np.array_equal(a.arrival_s[:100], c.arrival_s[:100])
    assert not np.array_equal(a.query_tokens[:100], c.query_tokens[:100])
    assert not np.array_equal(a.output_tokens[:100], c.output_tokens[:100])
    # the seed argument overrides the scenario's own
    d = build_workload(_scenario(arrivals, 60.0, seed=1, **mix), seed=124)
    assert d.seed == 124
    assert np.array_equal(d.arrival_s, c.arrival_s)
    assert np.array_equal(d.query_id, c.query_id)


# --- request mix -----------------------------------------------------------------------------


def test_repeated_queries_share_size_and_text() -> None:
    w = _workload(
        {"kind": "poisson", "rate": 50.0},
        60.0,
        seed=5,
        requests={"distinct_queries": 40, "zipf_s": 1.1},
    )
    n = len(w)
    ids = w.query_id
    assert ids.dtype == np.int64
    assert ((ids >= 0) & (ids < 40)).all()
    distinct = np.unique(ids)
    assert distinct.size <= 40
    assert distinct.size < n  # ids repeat
    assert np.bincount(ids)[0] > np.bincount(ids, minlength=40)[39]  # Zipf: rank 1 is popular
    for q in distinct:
        rows = np.flatnonzero(ids == q)
        assert (w.query_tokens[rows] == w.query_tokens[rows[0]]).all()
    assert np.unique(w.query_tokens).size > 1  # sizes still vary between queries

    top = int(np.bincount(ids).argmax())
    rows = np.flatnonzero(ids == top)[:3]
    texts = {w.query_text(int(i)) for i in rows}
    assert len(texts) == 1
    assert next(iter(texts)).strip()
    other = int(np.flatnonzero(ids != top)[0])
    assert w.query_text(other) != w.query_text(int(rows[0]))

    fresh = _workload({"kind": "poisson", "rate": 50.0}, 10.0, seed=5)
    assert np.array_equal(fresh.query_id, np.arange(len(fresh)))


def test_token_counts_are_positive_integers() -> None:
    w = _workload(
        {"kind": "poisson", "rate": 100.0},
        20.0,
        requests={
            "query_tokens": {"kind": "deterministic", "value": 0},
            "chunk_tokens": {"kind": "exponential", "mean": 0.4},
            "output_tokens": {"kind": "lognormal", "mean": 0.8, "cv": 2.0},
            "top_k": 3,
        },
    )
    for name in ("query_tokens", "context_tokens", "output_tokens"):
        col = getattr(w, name)
        assert np.issubdtype(col.dtype, np.integer), name
        assert (col >= 1).all(), name
    assert (w.query_tokens == 1).all()
    assert (w.context_tokens % 3 == 0).all()  # top_k chunks of at least 1 token
    assert (w.top_k == 3).all()
    assert np.array_equal(w.prompt_tokens(10), 10 + w.query_tokens + w.context_tokens)


def test_max_requests_truncates() -> None:
    arrivals = {"kind": "constant", "rate": 100.0}
    full = _workload(arrivals, 10.0)
    assert len(full) == 1000
    assert not full.truncated
    capped = _workload(arrivals, 10.0, max_requests=100)
    assert len(capped) == 100
    assert capped.truncated
    assert np.array_equal(capped.arrival_s, full.arrival_s[:100])
    for name in _ARRAYS:
        assert getattr(capped, name).shape == (100,), name
    exact = _workload(arrivals, 10.0, max_requests=1000)
    assert not exact.truncated


# --- trace replay ----------------------------------------------------------------------------


def _azure_offsets() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Offsets from the first record, parsed here independently of ragstress (µs precision)."""
    stamps, context, generated = [], [], []
    with AZURE_CONV.open(newline="") as fh:
        reader = csv.reader(fh)
        assert next(reader) == ["TIMESTAMP", "ContextTokens", "GeneratedTokens"]
        for row in reader:
            stamps.append(datetime.strptime(row[0][:26], "%Y-%m-%d %H:%M:%S.%f"))
            context.append(int(row[1]))
            generated.append(int(row[2]))
    first = min(stamps)
    offsets = np.array([(s - first).total_seconds() for s in stamps])
    order = np.argsort(offsets, kind="stable")
    return offsets[order], np.array(context)[order], np.array(generated)[order]


def _trace(duration_s: float, **arrivals: Any) -> Workload:
    return _workload({"kind": "trace", "file": str(AZURE_CONV), **arrivals}, duration_s)


def test_azure_trace_loads_whole() -> None:
    w = _trace(3600.0)
    assert len(w) == AZURE_CONV_RECORDS
    assert not w.truncated
    assert w.arrival_s[0] == 0.0
    assert (np.diff(w.arrival_s) >= 0).all()
    assert 3400 < w.arrival_s[-1] < 3600  # about 3,502 s
    offsets, _, _ = _azure_offsets()
    assert w.arrival_s == pytest.approx(offsets, abs=1e-6)


def test_azure_trace_time_scaling() -> None:
    trace = load_trace(AZURE_CONV)
    w = _trace(600.0, speedup=4)
    expected = trace.arrival_s / 4
    expected = expected[expected < 600.0]
    assert 0 < len(w) < AZURE_CONV_RECORDS
    assert np.array_equal(w.arrival_s, expected)  # exact: dividing by 4 is exact in binary
    assert (w.arrival_s < 600.0).all()
    # the replayed rate is four times the recorded one
    recorded = (trace.arrival_s < 2400.0).sum()
    assert len(w) == recorded

    shifted = _trace(100.0, offset_s=1000.0, speedup=2)
    later = trace.arrival_s[(trace.arrival_s >= 1000.0) & (trace.arrival_s < 1200.0)]
    assert np.array_equal(shifted.arrival_s, (later - 1000.0) / 2)


def test_azure_trace_tokens() -> None:
    w = _trace(3600.0)
    _, context, generated = _azure_offsets()
    prompt = w.prompt_tokens()
    fits = context >= w.query_tokens
    assert fits.mean() > 0.99
    assert np.array_equal(prompt[fits], context[fits])
    # a context shorter than the drawn query keeps the query and retrieves nothing
    assert (w.context_tokens[~fits] == 0).all()
    assert np.array_equal(w.output_tokens, np.maximum(generated, 1))
    assert (w.output_tokens >= 1).all()

    # also when repeated queries fix the query sizes
    repeated = _workload(
        {"kind": "trace", "file": str(AZURE_CONV)}, 3600.0, requests={"distinct_queries": 50}
    )
    fits = context >= repeated.query_tokens
    assert fits.mean() > 0.99
    assert np.array_equal(repeated.prompt_tokens()[fits], context[fits])
    assert np.array_equal(repeated.output_tokens, np.maximum(generated, 1))

    own = _trace(3600.0, use_tokens=False)
    assert np.array_equal(own.arrival_s, w.arrival_s)
    assert not np.array_equal(own.output_tokens, w.output_tokens)
    assert (own.context_tokens == own.top_k * 256).all()  # the default mix: 5 chunks of 256

    # only the answers' sizes from the trace: the prompt is the mix's (a RAG gateway's)
    answers = _trace(3600.0, use_tokens="output")
    assert np.array_equal(answers.output_tokens, w.output_tokens)
    assert np.array_equal(answers.context_tokens, own.context_tokens)
    assert np.array_equal(answers.query_tokens, own.query_tokens)


def test_plain_trace_format(tmp_path: Path) -> None:
    path = tmp_path / "plain.csv"
    path.write_text(
        "arrival_s,input_tokens,output_tokens\n10.0,500,40\n10.5,700,0\n12.25,900,10\n11.0,300,20\n"
    )
    trace = load_trace(path)
    assert trace.arrival_s.tolist() == [0.0, 0.5, 1.0, 2.25]
    assert trace.input_tokens.tolist() == [500, 700, 300, 900]
    assert trace.output_tokens.tolist() == [40, 0, 20, 10]

    w = _workload(
        {"kind": "trace", "file": str(path), "speedup": 0.5},
        10.0,
        requests={"query_tokens": {"kind": "deterministic", "value": 20}},
    )
    assert w.arrival_s.tolist() == [0.0, 1.0, 2.0, 4.5]
    assert w.prompt_tokens().tolist() == [500, 700, 300, 900]
    assert w.output_tokens.tolist() == [40, 1, 20, 10]


def test_bad_trace_header_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("time,prompt,completion\n0.0,10,10\n")
    with pytest.raises(ConfigError, match="unknown trace header"):
        load_trace(path)
    scenario = _scenario({"kind": "trace", "file": str(path)}, 10.0)
    with pytest.raises(ConfigError) as exc:
        build_workload(scenario)
    assert str(path) in str(exc.value)


def test_missing_trace_file_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no such trace file"):
        _scenario({"kind": "trace", "file": str(tmp_path / "nope.csv")}, 10.0)
