"""``ragstress plan`` and the capacity part of ``ragstress sweep`` through CliRunner."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ragstress.cli import main

SCENARIO = """\
name: peak
duration_s: 120
warmup_s: 10
seed: 4
arrivals: {kind: poisson, rate: 1}
slo:
  latency_s: {p95: 0.5}
"""
# An M/M/c pool at $10 per replica-hour; at 50 req/s c = 6 is the fewest that hold the SLO.
PROFILE = """\
name: plannable
stages:
  - kind: pool
    name: work
    concurrency: 1
    service: {kind: exponential, mean: 0.1}
    price: {per_replica_hour_usd: 10}
knobs:
  - key: stages.work.replicas
    values: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    monotone: true
"""


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    scenario = tmp_path / "scenario.yaml"
    profile = tmp_path / "profile.yaml"
    scenario.write_text(SCENARIO)
    profile.write_text(PROFILE)
    return scenario, profile


def _run(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(main, list(args))
    return res.exit_code, res.output


def test_plan_prints_the_ranked_table_and_writes_files(
    files: tuple[Path, Path], tmp_path: Path
) -> None:
    scenario, profile = files
    out = tmp_path / "plan"
    code, output = _run(
        "plan", str(scenario), "-p", str(profile), "--peak", "40", "--headroom", "25%",
        "--top", "1", "--workers", "1", "--probe-replications", "2", "--tolerance", "0.05",
        "--out", str(out),
    )  # fmt: skip
    assert code == 0, output
    assert "planning for 50 req/s (40 peak + 25%)" in output
    assert " 1 work.replicas=6 " in output
    assert "evaluated" in output
    assert "of 10 configurations" in output
    document = json.loads((out / "plan.json").read_text())
    assert document["chosen"] == "work.replicas=6"
    assert document["target_rps"] == 50.0
    assert document["grid_size"] == 10
    assert document["evaluated"] < 10
    with (out / "plan.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["config"] for r in rows][:2] == ["work.replicas=1", "work.replicas=2"]
    assert {r["status"] for r in rows} <= {
        "feasible", "infeasible", "pruned-monotone", "pruned-dominated", "pruned-cost"
    }  # fmt: skip
    # the report draws the frontier from the folder
    code, output = _run("report", str(out))
    assert code == 0, output
    assert (out / "cost_vs_capacity.png").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--headroom", "20"], "--headroom 20: allowed: a percentage like 20%"),
        (["--headroom", "lots"], "--headroom lots"),
        (["--workers", "1", "--dask", "tcp://127.0.0.1:1"], "--dask and --workers"),
    ],
)
def test_plan_flag_errors_are_one_line(
    files: tuple[Path, Path], tmp_path: Path, flags: list[str], message: str
) -> None:
    scenario, profile = files
    code, output = _run(
        "plan", str(scenario), "-p", str(profile), "--peak", "40", "--out", str(tmp_path), *flags
    )
    assert code == 2
    assert message in output
    assert len(output.strip().splitlines()) == 1


def test_plan_needs_knobs(files: tuple[Path, Path], tmp_path: Path) -> None:
    scenario, profile = files
    profile.write_text(PROFILE.split("knobs:", maxsplit=1)[0])
    code, output = _run(
        "plan", str(scenario), "-p", str(profile), "--peak", "40", "--out", str(tmp_path)
    )
    assert code == 2
    assert "declares no knobs" in output


def test_bad_knob_points_at_its_line(files: tuple[Path, Path], tmp_path: Path) -> None:
    scenario, profile = files
    profile.write_text(PROFILE.replace("stages.work.replicas", "stages.nope.replicas"))
    code, output = _run(
        "plan", str(scenario), "-p", str(profile), "--peak", "40", "--out", str(tmp_path)
    )
    assert code == 2
    assert "profile.yaml:" in output
    assert "no stage named 'nope'" in output


def test_sweep_prints_knee_and_max_rate(files: tuple[Path, Path], tmp_path: Path) -> None:
    scenario, profile = files
    out = tmp_path / "sweep"
    code, output = _run(
        "sweep", str(scenario), "-p", str(profile), "--rates", "10:60:10",
        "--set", "stages.work.replicas=6", "--workers", "1", "--probe-replications", "2",
        "--tolerance", "0.05", "--out", str(out),
    )  # fmt: skip
    assert code == 0, output
    line = next(x for x in output.splitlines() if x.startswith("work.replicas=6"))
    assert "req/s" in line
    with (out / "capacity.csv").open(newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    # M/M/6 at mean 0.1 s: the 0.5 s p95 holds to about 51 req/s of the 60 it can serve
    assert 44.0 < float(row["max_rate_rps"]) < 58.0
    code, output = _run(
        "sweep", str(scenario), "-p", str(profile), "--rates", "10,20", "--no-search",
        "--workers", "1", "--out", str(tmp_path / "quick"),
    )  # fmt: skip
    assert code == 0, output
    assert "not searched" in output
