"""The run-folder store: round trips, atomic writes, NaN handling."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from ragstress.results import Manifest, RunResult, read_run, write_run
from ragstress.results.store import ResultsError, write_atomic


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
