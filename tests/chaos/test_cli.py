"""``ragstress chaos`` and ``python -m ragstress.chaos.proxy``: one-line errors (exit 2),
--status / --clear against a running proxy, the foreground proxy with a scenario, and the
process entry's ready line and clean stop."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from ragstress.chaos import ChaosClient
from ragstress.cli import main
from ragstress.reference.processes import free_port
from tests.chaos.helpers import Background, Rig, in_thread, rig

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bg() -> Iterator[Background[Rig]]:
    with in_thread(lambda: rig(("embed", "generate"))) as background:
        yield background


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give at least one --route STAGE=URL"),
        (["--route", "generate"], "--route generate: write STAGE=URL"),
        (["--route", "a=http://x", "--route", "a=http://y"], "stage 'a' is given twice"),
        (["--route", "a=ftp://x"], "listeners.a.upstream: upstream must be an http://"),
        (["--route", "a=http://x", "--listen", "b=1"], "no --route for 'b'"),
        (["--route", "a=http://x", "--listen", "a=x"], "--listen a=x: not a whole number"),
        (["--route", "a=http://x", "--scenario", "s.yaml"], "--scenario needs --start-now"),
        (["--route", "a=http://x", "--start-now"], "--start-now needs --scenario"),
        (["--clear", "--route", "a=http://x"], "give no --route"),
        (["--clear", "--control", "http://127.0.0.1:9"], "is not reachable"),
    ],
)
def test_one_line_errors(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["chaos", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_the_cli_starts_without_the_proxy_and_agrees_on_its_port() -> None:
    from ragstress.chaos.settings import DEFAULT_CONTROL_PORT
    from ragstress.cli import chaos as chaos_cli

    assert chaos_cli.DEFAULT_CONTROL_PORT == DEFAULT_CONTROL_PORT
    code = "import sys, ragstress.cli.main; print('ragstress.chaos' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False", "`ragstress` imports the proxy's modules at start"


def test_status_and_clear(bg: Background[Rig]) -> None:
    client = ChaosClient(bg.value.control)
    client.load_plan(
        [{"kind": "error", "stage": "generate", "start_s": 0, "end_s": 60, "status": 503}],
        time.time(),
    )
    runner = CliRunner()
    result = runner.invoke(main, ["chaos", "--status", "--control", bg.value.control])
    assert result.exit_code == 0, result.output
    assert "1 active faults" in result.output
    assert "generate" in result.output
    result = runner.invoke(main, ["chaos", "--clear", "--control", bg.value.control])
    assert result.exit_code == 0, result.output
    assert f"cleared 1 faults at {bg.value.control}" in result.output
    assert client.faults() == []


def test_a_scenario_the_proxy_cannot_play_is_refused(tmp_path: Path) -> None:
    scenario = tmp_path / "s.yaml"
    scenario.write_text(
        "name: chaos\nduration_s: 60\narrivals: {kind: poisson, rate: 1}\n"
        "faults:\n  - {kind: capacity_loss, stage: generate, start_s: 0, end_s: 30, "
        "fraction: 0.5}\n  - {kind: outage, stage: rerank, start_s: 0, end_s: 30}\n"
    )
    args = ["chaos", "--route", "generate=http://127.0.0.1:9", "--control-port", "0"]
    result = CliRunner().invoke(main, [*args, "--scenario", str(scenario), "--start-now"])
    assert result.exit_code == 2, result.output
    assert f"{scenario}: faults[0] (capacity_loss): capacity_loss needs the stage's units" in (
        result.output
    )
    assert f"{scenario}: faults[1] (outage): unknown stage 'rerank'" in result.output


def _read_until(proc: subprocess.Popen[str], needle: str, limit_s: float = 20) -> list[str]:
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if needle in line:
            return lines
    raise AssertionError(f"{needle!r} not printed; got {lines}")


def test_foreground_proxy_loads_a_scenario_and_stops_clean(tmp_path: Path) -> None:
    scenario = tmp_path / "s.yaml"
    scenario.write_text(
        "name: chaos\nduration_s: 60\narrivals: {kind: poisson, rate: 1}\n"
        "faults:\n  - {kind: error, stage: generate, start_s: 0, end_s: 30, status: 429}\n"
        "  - {kind: hang, stage: generate, start_s: 40, end_s: 50, percent: 10}\n"
    )
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ragstress.cli",
            "chaos",
            "--route",
            "generate=http://127.0.0.1:9",
            "--control-port",
            str(port),
            "--scenario",
            str(scenario),
            "--start-now",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = _read_until(proc, "loaded 2 faults")
        assert any(f"control   http://127.0.0.1:{port}" in line for line in lines), lines
        client = ChaosClient(f"http://127.0.0.1:{port}")
        assert [e["kind"] for e in client.active()] == ["error"]
        assert len(client.faults()) == 2
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_process_entry_prints_where_it_listens_and_stops_on_sigterm() -> None:
    settings = {
        "listeners": {"embed": {"upstream": "http://127.0.0.1:9"}},
        "control_port": 0,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "ragstress.chaos.proxy", "--settings", json.dumps(settings)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        ready = json.loads(_read_until(proc, "control")[-1])
        client = ChaosClient(ready["control"])
        assert client.healthy()
        assert set(ready["listeners"]) == {"embed"}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_process_entry_refuses_bad_settings_in_one_line() -> None:
    bad = json.dumps({"listeners": {"Embed": {"upstream": "http://127.0.0.1:9"}}})
    result = subprocess.run(
        [sys.executable, "-m", "ragstress.chaos.proxy", "--settings", bad],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("ragstress-chaos: --settings: listeners.Embed.[key]")
    assert len(result.stderr.strip().splitlines()) == 1
