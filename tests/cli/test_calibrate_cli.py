"""``ragstress calibrate`` end to end with CliRunner: run folders in, a calibrated profile
out; every user mistake exits 2 with one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ragstress.api import simulate_scenario
from ragstress.cli import main
from ragstress.config import Scenario, load_profile
from ragstress.config.distributions import Empirical
from ragstress.results import write_run
from tests.builders import REFERENCE_PROFILE


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The reference profile simulated at two low loads, as run folders."""
    truth = load_profile(REFERENCE_PROFILE)
    base = tmp_path_factory.mktemp("calibrate-runs")
    folders = []
    for k, rate in enumerate((1.0, 4.0)):
        scenario = Scenario.model_validate(
            {
                "name": "quiet",
                "duration_s": 150,
                "warmup_s": 10,
                "seed": k,
                "arrivals": {"kind": "poisson", "rate": rate},
                "requests": {"output_tokens": {"kind": "lognormal", "mean": 40, "cv": 0.5}},
            }
        )
        folders.append(write_run(base / f"r{k}", simulate_scenario(scenario, truth).result))
    return folders


def calibrate(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["calibrate", *args])
    return result.exit_code, result.output


def test_calibrate_writes_a_profile_that_loads(runs: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "calibrated.yaml"
    code, output = calibrate(
        *map(str, runs), "--profile", str(REFERENCE_PROFILE), "--out", str(out)
    )
    assert code == 0, output
    lines = output.splitlines()
    assert any(line.startswith("retrieve") and "lognormal" in line for line in lines), output
    assert any(line.startswith("embed ") and "batch_time base" in line for line in lines)
    assert any(line.startswith("generate") and "step base" in line for line in lines)
    assert "warning: run " in output
    assert "simulated, not measured" in output
    assert f"wrote {out}" in output
    calibrated = load_profile(out)
    original = load_profile(REFERENCE_PROFILE)
    assert calibrated.stage("generate").client == original.stage("generate").client
    text = out.read_text()
    assert text.startswith("# Calibrated by `ragstress calibrate ")
    assert "--profile" in text.splitlines()[0] + text.splitlines()[1]
    assert "# fitted: " in text


def test_empirical_and_stage_flags(runs: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "emp.yaml"
    code, output = calibrate(
        *map(str, runs), "-p", str(REFERENCE_PROFILE), "-o", str(out),
        "--empirical", "--stage", "retrieve", "--quiet",
    )  # fmt: skip
    assert code == 0, output
    assert "wrote" not in output  # --quiet: only warnings
    calibrated = load_profile(out)
    original = load_profile(REFERENCE_PROFILE)
    service = calibrated.stage("retrieve").service  # type: ignore[union-attr]
    assert isinstance(service, Empirical)
    assert len(service.values) == 200
    assert np.mean(service.values) == pytest.approx(0.003, rel=0.1)
    # only retrieve was fitted
    for name in ("embed_cache", "embed", "generate"):
        assert calibrated.stage(name) == original.stage(name)


def test_bad_inputs_exit_2_with_one_line(runs: list[Path], tmp_path: Path) -> None:
    run, profile, out = str(runs[0]), str(REFERENCE_PROFILE), str(tmp_path / "out.yaml")
    copy = tmp_path / "copy.yaml"
    copy.write_text(REFERENCE_PROFILE.read_text())
    other = tmp_path / "other.yaml"
    other.write_text(
        "name: other\nstages:\n  - {kind: pool, name: elsewhere, "
        "service: {kind: exponential, mean: 0.1}}\n"
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nstages: []\n")
    missing = str(tmp_path / "missing")
    cases = [
        ([missing, "-p", profile, "-o", out], "not a run folder (no manifest.json)"),
        ([run, "-p", profile, "-o", out, "--stage", "nope"], "--stage nope: the profile has no"),
        ([run, "-p", missing + ".yaml", "-o", out], "missing.yaml:1: (top level): no such file"),
        ([run, "-p", str(bad), "-o", out], "bad.yaml:2: stages: "),
        ([run, "-p", str(copy), "-o", str(copy)], "is the --profile file"),
        ([run, "-p", str(other), "-o", out], "nothing to calibrate: stage elsewhere: not fitted"),
    ]
    for argv, message in cases:
        code, output = calibrate(*argv)
        assert code == 2, (argv, output)
        assert message in output, (argv, output)
        assert len(output.strip().splitlines()) == 1, (argv, output)
    assert not Path(out).exists()
