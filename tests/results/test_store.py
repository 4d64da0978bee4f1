"""The run-folder store: round trips, atomic writes, NaN handling."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from ragstress.config.profile import Profile
from ragstress.config.scenario import Scenario
from ragstress.model import simulate
from ragstress.results import Manifest, RunResult, read_run, write_run
from ragstress.results.schema import OUTCOMES
from ragstress.results.store import ResultsError, write_atomic
from ragstress.workload import build_workload


def _result(n: int = 5) -> RunResult:
    manifest = Manifest(
        source="simulated",
        scenario={"name": "s", "duration_s": 1.0},
        profile={"name": "p", "stages": []},
        seed=3,
        stages=["embed"],
        duration_s=1.0,
        ragstress_version="test",
    )
    rng = np.random.default_rng(1)
    cols = {
        "id": np.arange(n),
        "arrival_s": rng.random(n),
        "outcome": np.array(["ok"] * (n - 1) + ["shed"]),
        "latency_s": rng.random(n) / 3,  # values that do not print exactly in decimal
        "ttft_s": np.array([*rng.random(n - 1), math.nan]),
        "attempts": np.ones(n, dtype=np.int64),
        "tokens_in": np.arange(n) * 7,
        "tokens_out": np.arange(n) * 3,
        "cost_usd": rng.random(n) * 1e-6,
        "embed_wait_s": rng.random(n),
        "embed_service_s": np.array([*rng.random(n - 1), math.nan]),
    }
    series = {"t_s": np.arange(3.0), "in_flight": np.array([0, 2, 1])}
    return RunResult(manifest=manifest, requests=cols, timeseries=series)


def test_round_trip_is_exact(tmp_path: Path) -> None:
    original = _result()
    write_run(tmp_path, original, {"requests": 5, "p95": math.nan})
    back = read_run(tmp_path)
    assert back.manifest == original.manifest
    for name, col in original.requests.items():
        if col.dtype.kind == "f":
            np.testing.assert_array_equal(back.requests[name], col)  # bit for bit, NaN = NaN
        else:
            assert back.requests[name].tolist() == col.tolist()
    assert back.timeseries is not None
    assert back.timeseries["in_flight"].tolist() == [0, 2, 1]
    # NaN is an empty cell in CSV and null in JSON
    assert (tmp_path / "requests.csv").read_text().splitlines()[-1].endswith(",")
    assert json.loads((tmp_path / "summary.json").read_text())["p95"] is None


def test_no_temporary_files_are_left(tmp_path: Path) -> None:
    write_run(tmp_path, _result())
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "manifest.json",
        "requests.csv",
        "timeseries.csv",
    ]


def test_a_failed_write_keeps_the_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    write_atomic(target, b"old")

    with pytest.raises(TypeError):
        write_atomic(target, "text is not bytes")  # type: ignore[arg-type]  # fails mid-write
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_columns_must_have_equal_length() -> None:
    r = _result()
    cols = dict(r.requests)
    cols["latency_s"] = cols["latency_s"][:-1]
    with pytest.raises(ValueError, match="differ in length"):
        RunResult(manifest=r.manifest, requests=cols)


def test_reading_a_folder_without_manifest_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(ResultsError, match="not a run folder"):
        read_run(tmp_path)


def test_counts_round_trip_as_integers(tmp_path: Path) -> None:
    """Every count column of a simulated run — per-stage attempts, per-interval arrivals,
    completions, calls sent and served, samples in flight, queued and busy — reads back as
    int64 with the same values; every other column reads back bit for bit."""
    profile = Profile.model_validate(
        {
            "name": "retrying",
            "stages": [
                {
                    "kind": "pool",
                    "name": "search",
                    "concurrency": 2,
                    "service": {"kind": "exponential", "mean": 0.05},
                    "price": {"per_call_usd": 0.001},
                    "client": {"timeout_s": 0.1, "retry": {"preset": "openai-python"}},
                }
            ],
        }
    )
    scenario = Scenario.model_validate(
        {
            "name": "counts",
            "duration_s": 10,
            "seed": 2,
            "arrivals": {"kind": "poisson", "rate": 30},
        }
    )
    original = simulate(build_workload(scenario), profile)
    assert original.timeseries is not None
    assert int(original.requests["search_attempts"].max()) > 1  # some calls were retried
    write_run(tmp_path, original)
    back = read_run(tmp_path)
    assert back.timeseries is not None
    counts = [
        ("requests", "search_attempts"),
        ("series", "in_flight"),
        ("series", "arrivals"),
        ("series", "search_sent"),
        ("series", "search_served"),
        ("series", "search_queue"),
        ("series", "search_busy"),
        *[("series", f"completed_{name}") for name in OUTCOMES],
    ]
    for table, name in counts:
        before = (original.requests if table == "requests" else original.timeseries)[name]
        after = (back.requests if table == "requests" else back.timeseries)[name]
        assert after.dtype == np.int64, name
        np.testing.assert_array_equal(after, before)
    for tables in ((original.requests, back.requests), (original.timeseries, back.timeseries)):
        before_t, after_t = tables
        assert set(after_t) == set(before_t)
        for name, col in before_t.items():
            if col.dtype.kind == "f":
                assert after_t[name].dtype == np.float64, name
                np.testing.assert_array_equal(after_t[name], col)
            else:
                assert after_t[name].tolist() == col.tolist(), name


def test_a_count_written_as_a_float_reads_as_an_integer(tmp_path: Path) -> None:
    write_run(tmp_path, _result())
    path = tmp_path / "timeseries.csv"
    path.write_text("t_s,in_flight,arrivals,embed_sent,embed_wait_s\n0.0,2.0,3,,0.5\n")
    series = read_run(tmp_path).timeseries
    assert series is not None
    assert series["in_flight"].tolist() == [2]
    assert series["arrivals"].dtype == np.int64
    assert series["embed_sent"].tolist() == [0]  # an empty count cell is 0
    assert series["embed_wait_s"].dtype == np.float64
    path.write_text("t_s,in_flight\n0.0,2.5\n")
    with pytest.raises(ResultsError, match="not an integer"):
        read_run(tmp_path)
