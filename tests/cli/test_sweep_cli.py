"""``ragstress sweep`` end to end with CliRunner: files written, flag errors as one line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ragstress.cli import main

SCENARIO = """\
name: tiny
duration_s: 10
seed: 5
arrivals: {kind: poisson, rate: 1}
"""
PROFILE = """\
name: one-pool
stages:
  - kind: pool
    name: generate
    concurrency: 2
    service: {kind: exponential, mean: 0.1}
"""


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    scenario = tmp_path / "scenario.yaml"
    profile = tmp_path / "profile.yaml"
    scenario.write_text(SCENARIO)
    profile.write_text(PROFILE)
    return scenario, profile


def _sweep(files: tuple[Path, Path], out: Path, *flags: str) -> tuple[int, str]:
    scenario, profile = files
    args = ["sweep", str(scenario), "--profile", str(profile), "--out", str(out), *flags]
    res = CliRunner().invoke(main, args)
    return res.exit_code, res.output


def test_sweep_writes_one_row_per_point(files: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    code, output = _sweep(
        files,
        out,
        "--rates",
        "2:6:2",
        "--set",
        "stages.generate.replicas=1,2",
        "--replications",
        "2",
        "--workers",
        "1",
        "--seed",
        "9",
    )
    assert code == 0, output
    assert "12 runs" in output
    with (out / "sweep.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * 3 * 2
    assert [r["rate_rps"] for r in rows[:6]] == ["2.0", "2.0", "4.0", "4.0", "6.0", "6.0"]
    assert {r["seed"] for r in rows} == {"9", "10"}
    assert {r["config"] for r in rows} == {"generate.replicas=1", "generate.replicas=2"}
    inputs = json.loads((out / "sweep.json").read_text())
    assert inputs["rates"] == [2.0, 4.0, 6.0]
    assert inputs["seed"] == 9


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--rates", "10:5:1"], "--rates: stop 5 is below start 10"),
        (["--rates", "ten"], "--rates: rate 'ten' is not a number"),
        (
            ["--rates", "5", "--set", "stages.embed.replicas=2"],
            "--set stages.embed.replicas: no stage named 'embed' (allowed: generate)",
        ),
        (
            ["--rates", "5", "--set", "stages.generate.replicas=0"],
            "--set stages.generate.replicas=0: input should be greater than or equal to 1",
        ),
        (["--rates", "5", "--set", "replicas=2"], "--set replicas: not a profile or scenario"),
    ],
)
def test_bad_flags_exit_2_with_one_line(
    files: tuple[Path, Path], tmp_path: Path, flags: list[str], expected: str
) -> None:
    out = tmp_path / "sweep"
    code, output = _sweep(files, out, *flags)
    assert code == 2
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert lines[0].startswith(expected), output
    assert "Traceback" not in output
    assert not out.exists()  # nothing is simulated or written


def test_trace_scenario_is_refused(files: tuple[Path, Path], tmp_path: Path) -> None:
    scenario, _ = files
    (tmp_path / "trace.csv").write_text("arrival_s,input_tokens,output_tokens\n0.5,10,20\n")
    scenario.write_text("name: t\nduration_s: 5\narrivals: {kind: trace, file: trace.csv}\n")
    code, output = _sweep(files, tmp_path / "sweep", "--rates", "5")
    assert code == 2
    assert "--rates needs rate-driven arrivals" in output
    assert len(output.strip().splitlines()) == 1
