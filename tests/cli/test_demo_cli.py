"""``ragstress demo``: the flags reach the loop, its findings are printed, and the exit code
follows --strict; the loop itself is plugged in through click's ``obj`` (its real run
against the stack is tests/demo/test_loop.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from click.testing import CliRunner

from ragstress.cli.main import main
from ragstress.demo import DemoError, DemoResult


def _result(out: Path, *, passed: bool) -> DemoResult:
    return DemoResult(
        out=out,
        calibrated=out / "calibrated.yaml",
        predicted=out / "predicted",
        measured=out / "measured",
        validation_json=out / "validation.json",
        report=[],
        capacity_rps=8.0,
        capacity_estimated=True,
        levels={"load-010": 0.8},
        low_runs=[],
        passed=passed,
        misses=0 if passed else 2,
        table="validation passed" if passed else "validation FAILED: 2 figure(s)",
        capacity={
            "predicted_rps": 8.0,
            "measured": {"estimate_rps": 7.8},
            "rel_error": 0.0256,
            "tolerance": 0.05,
            "note": "measured 7.8 req/s ± 2.5 %",
        },
        wall_s=480.0,
    )


class FakeLoop:
    def __init__(self, *, passed: bool = True, error: str | None = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.passed = passed
        self.error = error

    def __call__(self, out: Path, **kwargs: Any) -> DemoResult:
        self.calls.append({"out": out, **kwargs})
        kwargs["progress"]("[1/8] starting (0 s)")
        if self.error is not None:
            raise DemoError(self.error)
        return _result(out, passed=self.passed)


def test_flags_reach_the_loop_and_findings_are_printed(tmp_path: Path) -> None:
    loop = FakeLoop()
    args = ["demo", "-o", str(tmp_path), "--documents", "50", "--seconds", "12"]
    args += ["--capacity", "6.5", "--no-trace", "--no-brownout", "--no-capacity-probes"]
    args += ["--pin-cpus"]
    res = CliRunner().invoke(main, args, obj={"run_demo": loop})
    assert res.exit_code == 0, res.output
    (call,) = loop.calls
    assert call["out"] == tmp_path
    assert call["corpus_documents"] == 50
    assert call["seconds"] == 12
    assert call["capacity_rps"] == 6.5
    assert (call["trace"], call["brownout"], call["measure_capacity"]) == (False, False, False)
    assert call["pin_cpus"] is True
    assert call["profile_path"].name == "reference.yaml"
    assert "[1/8] starting" in res.output  # progress goes to stderr, shown by the runner
    assert "validation passed" in res.output
    assert "maximum sustainable rate: predicted 8 req/s" in res.output
    assert "+2.6%" in res.output


def test_a_miss_exits_0_unless_strict(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(
        main, ["demo", "-o", str(tmp_path)], obj={"run_demo": FakeLoop(passed=False)}
    )
    assert res.exit_code == 0
    assert "FAILED" in res.output
    res = runner.invoke(
        main, ["demo", "-o", str(tmp_path), "--strict"], obj={"run_demo": FakeLoop(passed=False)}
    )
    assert res.exit_code == 1


def test_a_step_that_cannot_be_done_exits_1_with_its_reason(tmp_path: Path) -> None:
    loop = FakeLoop(error="the reference stack did not start: port in use")
    res = CliRunner().invoke(main, ["demo", "-o", str(tmp_path)], obj={"run_demo": loop})
    assert res.exit_code == 1
    assert "demo: the reference stack did not start: port in use" in res.output
    assert "Traceback" not in res.output


def test_bad_flags_are_one_line_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    loop = FakeLoop()
    for args, text in (
        (["--capacity", "0"], "--capacity"),
        (["--seconds", "1"], "--seconds"),
        (["--documents", "3"], "--documents"),
        (["--profile", str(tmp_path / "nope.yaml")], "--profile: no such file"),
    ):
        res = runner.invoke(main, ["demo", "-o", str(tmp_path), *args], obj={"run_demo": loop})
        assert res.exit_code == 2, (args, res.output)
        assert text in res.output
    assert loop.calls == []


def test_model_only_simulates_without_a_stack(tmp_path: Path) -> None:
    loop = FakeLoop()
    res = CliRunner().invoke(
        main, ["demo", "--model-only", "-o", str(tmp_path)], obj={"run_demo": loop}
    )
    assert res.exit_code == 0, res.output
    assert loop.calls == []
    assert (tmp_path / "summary.json").is_file()
    assert (tmp_path / "report.html").is_file()
