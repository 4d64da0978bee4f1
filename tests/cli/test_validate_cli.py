"""``ragstress validate`` end to end with CliRunner: exit codes 0 / 1 / 2, validation.json,
pairing of run sets, and one-line errors for bad input."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from ragstress.api import simulate_scenario
from ragstress.cli import main
from ragstress.results import RunResult, write_run
from tests.builders import mmc_profile, poisson_scenario

SHIFT = 1.10
FAULT = {"kind": "error", "stage": "work", "start_s": 20, "end_s": 30, "status": 503}


def _simulate(rate: float = 20.0, seed: int = 3, **fields: Any) -> RunResult:
    scenario = poisson_scenario(duration_s=40, warmup_s=5, seed=seed, rate=rate, **fields)
    return simulate_scenario(scenario, mmc_profile(servers=4, mean_s=0.05)).result


def _shifted(result: RunResult, factor: float = SHIFT) -> RunResult:
    req = dict(result.requests)
    req["latency_s"] = req["latency_s"] * factor
    req["ttft_s"] = req["ttft_s"] * factor
    manifest = result.manifest.model_copy(update={"source": "measured"})
    return dataclasses.replace(result, manifest=manifest, requests=req)


def _validate(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(main, ["validate", *args])
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.output


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Run folders: a prediction, its copy with every latency × 1.10, sets of two levels."""
    base = tmp_path_factory.mktemp("validate")
    fast, slow = _simulate(20.0), _simulate(10.0)
    folders = {
        "sim": write_run(base / "sim", fast),
        "shifted": write_run(base / "shifted", _shifted(fast)),
        "other-seed": write_run(base / "other-seed", _simulate(20.0, seed=9)),
    }
    write_run(base / "sims" / "level-a", slow)
    write_run(base / "sims" / "level-b", fast)
    write_run(base / "meas" / "run-20rps", fast)
    write_run(base / "meas" / "run-10rps", slow)
    write_run(base / "twins" / "x", fast)
    write_run(base / "twins" / "y", fast)
    folders.update({k: base / k for k in ("sims", "meas", "twins")})
    return folders


def test_known_shift_fails_5_percent_and_passes_15(runs: dict[str, Path], tmp_path: Path) -> None:
    common = ["--predicted", str(runs["sim"]), "--measured", str(runs["shifted"]), "--no-report"]
    code, output = _validate(*common, "--out", str(tmp_path / "a"), "--replicates", "50")
    assert code == 1, output
    assert "latency p95" in output
    assert "-9.09 %" in output
    assert "MISS" in output
    doc = json.loads((tmp_path / "a" / "validation.json").read_text())
    assert doc["pass"] is False
    metric = doc["pairs"][0]["metrics"]["latency_p95"]
    assert metric["rel_error"] == pytest.approx(-1 / 11, abs=1e-12)
    assert metric["ci"][0] - 1e-12 <= -1 / 11 <= metric["ci"][1] + 1e-12
    assert metric["tolerance"] == 0.05
    assert metric["within"] is False
    assert {"predicted", "measured", "rel_error", "ci", "tolerance", "within"} <= set(metric)
    assert {m["metric"] for m in doc["misses"]} >= {"latency_p50", "latency_p95"}

    keys = "p50=15%,p95=15%,p99=15%,ttft_p50=15%,ttft_p95=15%,ttft_p99=15%"
    code, output = _validate(*common, "--out", str(tmp_path / "b"), "--tolerance", keys)
    assert code == 0, output
    assert "validation passed" in output
    assert json.loads((tmp_path / "b" / "validation.json").read_text())["pass"] is True


def test_sets_pair_by_rate_and_mismatches_are_reported(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    code, output = _validate(
        "--predicted", str(runs["sims"]), "--measured", str(runs["meas"]),
        "--out", str(tmp_path), "--no-report", "--replicates", "0",
    )  # fmt: skip
    assert code == 0, output
    doc = json.loads((tmp_path / "validation.json").read_text())
    pairs = [(Path(p["predicted"]).name, Path(p["measured"]).name) for p in doc["pairs"]]
    assert pairs == [("level-a", "run-10rps"), ("level-b", "run-20rps")]
    assert {p["paired_by"] for p in doc["pairs"]} == {"rate"}

    code, output = _validate(
        "--predicted", str(runs["sim"]), "--measured", str(runs["other-seed"]),
        "--out", str(tmp_path / "seed"), "--no-report", "--replicates", "0",
        "--tolerance", "p50=off,p95=off,p99=off,ttft_p50=off,ttft_p95=off,ttft_p99=off",
        "--tolerance", "throughput=off,error_rate=off",
    )  # fmt: skip
    assert "warning: seeds differ: predicted 3, measured 9" in output
    doc = json.loads((tmp_path / "seed" / "validation.json").read_text())
    assert any("seeds differ" in w for w in doc["pairs"][0]["warnings"])


def test_fault_scenario_writes_charts_and_report(tmp_path: Path) -> None:
    sim = write_run(tmp_path / "sim", _simulate(faults=[FAULT]))
    out = tmp_path / "out"
    code, output = _validate(
        "--predicted", str(sim), "--measured", str(sim), "--out", str(out), "--replicates", "20"
    )
    assert code == 0, output
    assert "recovery after work error (503)" in output
    doc = json.loads((out / "validation.json").read_text())
    recovery = doc["pairs"][0]["metrics"]["recovery.1"]
    assert recovery["predicted"] == recovery["measured"]
    assert recovery["within"] is True
    timeline = doc["pairs"][0]["faults"]["error_rate_over_time"]
    assert timeline["predicted"] == timeline["measured"]
    for name in (
        "validation.html",
        "validation.md",
        "latency_vs_load.png",
        "latency_vs_load.svg",
        "cdf_01-sim.png",
        "errors_01-sim.png",
        "errors_01-sim.svg",
        "stages_01-sim.png",
    ):
        assert (out / name).is_file(), name


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--tolerance", "p42=5%"], "unknown key 'p42' (allowed: p50, p95, p99"),
        (["--tolerance", "p95=five"], "--tolerance p95=five: allowed: a percentage"),
        (["--tolerance", "p95=5pp"], "percentage points (pp) only for"),
    ],
)
def test_bad_tolerance_is_one_line_exit_2(
    runs: dict[str, Path], tmp_path: Path, flags: list[str], message: str
) -> None:
    code, output = _validate(
        "--predicted", str(runs["sim"]), "--measured", str(runs["sim"]),
        "--out", str(tmp_path), *flags,
    )  # fmt: skip
    assert code == 2
    assert output.count("\n") == 1, output
    assert message in output
    assert not (tmp_path / "validation.json").exists()


def test_unreadable_or_ambiguous_input_is_one_line_exit_2(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    code, output = _validate(
        "--predicted", str(tmp_path / "missing"), "--measured", str(runs["sim"]),
        "--out", str(tmp_path / "o"),
    )  # fmt: skip
    assert code == 2
    assert output.count("\n") == 1
    assert "no such run folder" in output
    code, output = _validate(
        "--predicted", str(runs["sims"]), "--measured", str(runs["twins"]),
        "--out", str(tmp_path / "o"),
    )  # fmt: skip
    assert code == 2
    assert output.count("\n") == 1
    assert "both offer 20 req/s" in output
