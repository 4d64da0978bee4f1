"""A bad profile or scenario makes ``ragstress simulate`` exit 2 with ``file:line:`` messages."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from ragstress.cli import main

GOOD_PROFILE = textwrap.dedent("""\
    name: demo
    stages:
      - kind: pool
        name: embed
        service: {kind: exponential, mean: 0.01}
    """)

GOOD_SCENARIO = textwrap.dedent("""\
    name: steady
    duration_s: 30
    arrivals: {kind: poisson, rate: 5}
    """)

BAD_PROFILE = textwrap.dedent("""\
    name: demo
    stages:
      - kind: pool
        name: embed
        service:
          kind: exponential
          mean: -0.01
    """)  # line 7: stages[0].service.mean

BAD_SCENARIO = textwrap.dedent("""\
    name: steady
    duration_s: 30
    arrivals:
      kind: poisson
      rate: 5
      burst: 3
    """)  # line 6: arrivals.burst


def _files(tmp_path: Path, scenario: str, profile: str) -> tuple[Path, Path, Path]:
    s = tmp_path / "scenario.yaml"
    p = tmp_path / "profile.yaml"
    s.write_text(scenario)
    p.write_text(profile)
    return s, p, tmp_path / "run"


def _simulate(scenario: Path, profile: Path, out: Path) -> Result:
    args = ["simulate", str(scenario), "--profile", str(profile), "--out", str(out), "--quiet"]
    return CliRunner().invoke(main, args)


def _assert_user_error(result: Result) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_bad_scenario_exits_2(tmp_path: Path) -> None:
    scenario, profile, out = _files(tmp_path, BAD_SCENARIO, GOOD_PROFILE)
    result = _simulate(scenario, profile, out)
    _assert_user_error(result)
    assert f"{scenario}:6: arrivals.burst: unknown key (allowed: rate)" in result.output
    assert not out.exists()


def test_bad_profile_exits_2(tmp_path: Path) -> None:
    scenario, profile, out = _files(tmp_path, GOOD_SCENARIO, BAD_PROFILE)
    result = _simulate(scenario, profile, out)
    _assert_user_error(result)
    assert re.search(
        rf"^{re.escape(str(profile))}:7: stages\[0\]\.service\.mean: .+", result.output, re.M
    )
    assert not out.exists()


def test_both_bad_reports_both(tmp_path: Path) -> None:
    scenario, profile, out = _files(tmp_path, BAD_SCENARIO, BAD_PROFILE)
    result = _simulate(scenario, profile, out)
    _assert_user_error(result)
    assert f"{scenario}:6: arrivals.burst:" in result.output
    assert f"{profile}:7: stages[0].service.mean:" in result.output


@pytest.mark.parametrize(
    ("scenario_text", "profile_text", "expected"),
    [
        ("name: x\nduration_s: 30\narrivals: [\n", GOOD_PROFILE, "scenario.yaml:4: invalid YAML:"),
        (GOOD_SCENARIO, "", "profile.yaml:1: (top level): the file is empty"),
        (GOOD_SCENARIO, "name: a\nname: b\n", "profile.yaml:2: name: duplicate key"),
        (GOOD_SCENARIO, "name: a\n\tstages: []\n", "profile.yaml:2: invalid YAML:"),
    ],
)
def test_unreadable_yaml_exits_2(
    tmp_path: Path, scenario_text: str, profile_text: str, expected: str
) -> None:
    scenario, profile, out = _files(tmp_path, scenario_text, profile_text)
    result = _simulate(scenario, profile, out)
    _assert_user_error(result)
    assert expected in result.output


def test_missing_profile_exits_2(tmp_path: Path) -> None:
    scenario, _, out = _files(tmp_path, GOOD_SCENARIO, GOOD_PROFILE)
    absent = tmp_path / "nowhere.yaml"
    result = _simulate(scenario, absent, out)
    _assert_user_error(result)
    assert f"{absent}:1: (top level): no such file" in result.output


def test_good_files_simulate(tmp_path: Path) -> None:
    """The control: the same good files that sit beside the bad ones above do run."""
    scenario, profile, out = _files(tmp_path, GOOD_SCENARIO, GOOD_PROFILE)
    result = _simulate(scenario, profile, out)
    assert result.exit_code == 0, result.output
    assert out.is_dir()
