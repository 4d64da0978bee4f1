"""Issue 8's loop against the live reference stack, end to end, in one call.

1. start the reference stack with the chaos proxy (on a machine with two or more CPUs the
   stack is pinned to the last CPU and the load generator to the first, so they do not
   compete);
2. measure a short run at each low rate (the request mix of ``scenarios/reference-steady``
   at a constant Poisson rate);
3. calibrate the profile from those runs → ``out/calibrated.yaml``;
4. estimate the capacity from the calibrated model (where its p95 doubles against a light
   load) unless one is given, then predict (simulate) and measure each load fraction of it
   into ``out/predicted/<level>`` and ``out/measured/<level>``;
5. optionally a brownout: 429s with ``retry-after`` on ``generate`` in the middle of a run at
   half the capacity, predicted and measured through the chaos proxy;
6. validate predicted against measured and write ``validation.json`` and the report into
   ``out``.

Every measured scenario gets its own seed: the gateway caches query embeddings by text for
10 minutes, so a repeated seed would repeat the questions and skip the embedder. A level's
prediction and measurement share the scenario and its seed.

A validation miss is a finding, not a failure of the demo: :class:`DemoResult` says whether
validation passed; :class:`DemoError` is raised only when a step could not be done.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ragstress.analysis.validation import load_runs, pair_runs, parse_tolerances, validate
from ragstress.api import simulate_scenario
from ragstress.calibration import calibrate_files
from ragstress.config import Profile, Scenario, load_profile, load_scenario
from ragstress.reference.settings import CorpusSettings
from ragstress.reference.stack import ReferenceStack, StackOptions
from ragstress.report.validation_report import write_validation_json, write_validation_report
from ragstress.results import write_run

__all__ = ["DemoError", "DemoResult", "run_demo"]

REPO = Path(__file__).resolve().parents[2]
BASE_SCENARIO = REPO / "scenarios" / "reference-steady.yaml"
BASE_SEED = 20261121
RUN_EXIT_OK = (0, 3)  # ragstress run: 0 every SLO held, 3 one was missed (still a run)
STEPS = 7
CAPACITY_PROBE_S = 120.0  # simulated seconds per rate when estimating the capacity
CAPACITY_FACTOR = 2.0  # capacity: where the model's p95 is this many times the light-load p95
CAPACITY_LIGHT_RPS = 0.5
CAPACITY_MAX_RPS = 1000.0
# calibration wants 30 requests per stage; the low-load runs are lengthened (all alike) until
# they are expected to give this many in their measurement windows together
CALIBRATION_REQUESTS = 40


class DemoError(RuntimeError):
    """A step of the demo could not be done (the stack, a run, calibration)."""


@dataclass
class DemoResult:
    out: Path
    calibrated: Path
    predicted: Path
    measured: Path
    validation_json: Path
    report: list[Path]
    capacity_rps: float
    capacity_estimated: bool
    levels: dict[str, float]  # level folder name → offered rate (req/s)
    low_runs: list[Path]
    passed: bool
    misses: int
    table: str  # the console report, as ``ragstress validate`` prints it
    timings_s: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0


def _affinity() -> tuple[frozenset[int] | None, int | None]:
    """(the stack's CPUs, the driver's CPU): split when there are two CPUs or more."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return None, None
    if len(cpus) < 2:
        return None, None
    return frozenset({cpus[-1]}), cpus[0]


def _scenario(
    base: Scenario,
    *,
    name: str,
    rps: float,
    seconds: float,
    seed: int,
    faults: Sequence[dict[str, Any]] = (),
) -> Scenario:
    data = base.model_dump(mode="json", exclude_none=True)
    data.update(
        name=name,
        duration_s=seconds,
        warmup_s=min(float(data.get("warmup_s", 0.0)), seconds / 4),
        seed=seed,
    )
    data["arrivals"]["rate"] = {"kind": "constant", "rps": rps}
    data.pop("description", None)
    if faults:
        data["faults"] = list(faults)
    return Scenario.model_validate(data)


def low_seconds(base: Scenario, rates: Sequence[float], seconds: float) -> float:
    """The low-load runs' length: ``seconds``, or longer when the runs together would not be
    expected to give CALIBRATION_REQUESTS requests after their warm-up."""
    warmup = _scenario(base, name="low", rps=1.0, seconds=seconds, seed=0).warmup_s
    total = sum(rates)
    if total <= 0 or total * (seconds - warmup) >= CALIBRATION_REQUESTS:
        return seconds
    return float(math.ceil(warmup + CALIBRATION_REQUESTS / total))


def _write_scenario(scenario: Scenario, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = scenario.model_dump(mode="json", exclude_none=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _p95(scenario: Scenario, profile: Profile) -> float:
    run = simulate_scenario(scenario, profile)
    value = run.summary.get("latency_s", {}).get("p95")
    if value is None or run.summary.get("answered", 0) == 0:
        return float("inf")
    return float(value)


def estimate_capacity(base: Scenario, profile: Profile, *, seed: int = BASE_SEED) -> float:
    """The rate where the model's p95 latency reaches CAPACITY_FACTOR × its light-load p95:
    doubling rates to bracket it, then bisection."""

    def p95_at(rps: float) -> float:
        return _p95(
            _scenario(base, name="capacity", rps=rps, seconds=CAPACITY_PROBE_S, seed=seed),
            profile,
        )

    limit = CAPACITY_FACTOR * p95_at(CAPACITY_LIGHT_RPS)
    low, high = CAPACITY_LIGHT_RPS, CAPACITY_LIGHT_RPS * 2
    while p95_at(high) < limit:
        low, high = high, high * 2
        if high > CAPACITY_MAX_RPS:
            raise DemoError(
                f"the calibrated model does not saturate below {CAPACITY_MAX_RPS} req/s"
            )
    for _ in range(10):
        mid = (low + high) / 2
        if p95_at(mid) < limit:
            low = mid
        else:
            high = mid
    return round((low + high) / 2, 2)


def run_demo(
    out: Path,
    *,
    profile_path: Path,
    corpus_documents: int = 300,
    low_rates: Sequence[float] = (1.0, 3.0),
    load_fractions: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 0.9),
    capacity_rps: float | None = None,
    seconds: float = 40.0,
    brownout: bool = True,
    brownout_seconds: float = 40.0,
    brownout_window_s: float = 10.0,
    progress: Callable[[str], None] = lambda _m: None,
) -> DemoResult:
    """Run the loop (see the module docstring) and write everything into ``out``."""
    began = time.monotonic()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    predicted_dir, measured_dir = out / "predicted", out / "measured"
    for folder in (predicted_dir, measured_dir, out / "low"):
        if folder.exists():
            shutil.rmtree(folder)
    timings: dict[str, float] = {}
    step = 0

    def say(text: str) -> None:
        progress(f"[{step}/{STEPS}] {text} ({time.monotonic() - began:.0f} s)")

    def next_step(text: str) -> float:
        nonlocal step
        step += 1
        say(text)
        return time.monotonic()

    def done(what: str, since: float) -> None:
        timings[what] = round(time.monotonic() - since, 2)

    base = load_scenario(BASE_SCENARIO)
    original = load_profile(profile_path)
    stack_cpus, driver_cpu = _affinity()
    seeds = iter(range(BASE_SEED, BASE_SEED + 10_000))

    t = next_step(
        f"starting the reference stack ({corpus_documents} documents, chaos proxy"
        + (
            f", stack on CPU {sorted(stack_cpus)}, driver on CPU {driver_cpu})"
            if stack_cpus
            else ")"
        )
    )
    data_dir = Path(tempfile.mkdtemp(prefix="ragstress-demo-stack-"))
    stack = ReferenceStack(
        StackOptions(
            profile=original,
            data_dir=data_dir,
            gateway_port=None,
            corpus=CorpusSettings(documents=corpus_documents),
            cpus=stack_cpus,
            chaos=True,
        ),
        progress=lambda m: say(f"  {m}"),
    )
    try:
        urls = stack.start()
        done("start_stack", t)
        if urls.chaos_control is None:  # pragma: no cover - chaos=True always gives one
            raise DemoError("the stack started without its chaos proxy")

        def measure(scenario: Scenario, folder: Path, *, chaos: bool = False) -> Path:
            spec = _write_scenario(scenario, out / "scenarios" / f"{folder.name}.yaml")
            cmd = [sys.executable, "-m", "ragstress.cli", "run", str(spec)]
            cmd += ["--target", urls.gateway, "-p", str(profile_path), "--out", str(folder), "-q"]
            if chaos:
                cmd += ["--chaos", str(urls.chaos_control)]
            if driver_cpu is not None:
                cmd = ["taskset", "-c", str(driver_cpu), *cmd] if shutil.which("taskset") else cmd
            log = out / "logs" / f"{folder.parent.name}-{folder.name}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            with log.open("wb") as sink:
                proc = subprocess.run(
                    cmd,
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                    timeout=scenario.duration_s + 180,
                    check=False,
                )
            if proc.returncode not in RUN_EXIT_OK:
                tail = log.read_text(encoding="utf-8", errors="replace")[-2000:]
                raise DemoError(f"ragstress run {folder.name} exited {proc.returncode}:\n{tail}")
            return folder

        # 2. low-load runs for calibration
        low_s = low_seconds(base, low_rates, seconds)
        t = next_step(f"measuring {len(low_rates)} low-load run(s) of {low_s:g} s")
        low_runs: list[Path] = []
        for rps in low_rates:
            name = f"low-{rps:g}rps"
            say(f"  measuring {name}")
            scenario = _scenario(base, name=name, rps=rps, seconds=low_s, seed=next(seeds))
            low_runs.append(measure(scenario, out / "low" / name))
        done("low_load_runs", t)

        # 3. calibrate
        t = next_step("calibrating the profile from the low-load runs")
        calibrated_path = out / "calibrated.yaml"
        calibration = calibrate_files(low_runs, profile_path, calibrated_path)
        for fit in calibration.stages:
            say(f"  {fit.stage}: {fit.kind} {fit.summary}")
        for warning in calibration.warnings:
            say(f"  warning: {warning}")
        calibrated = calibration.profile
        done("calibrate", t)

        # 4. capacity, then predict and measure each load level
        t = next_step("capacity and load levels")
        estimated = capacity_rps is None
        if capacity_rps is None:
            capacity_rps = estimate_capacity(base, calibrated)
            say(f"  capacity from the calibrated model: {capacity_rps:g} req/s (p95 doubles)")
        else:
            say(f"  capacity given: {capacity_rps:g} req/s")
        done("capacity", t)
        levels: dict[str, float] = {}
        t = time.monotonic()
        for fraction in load_fractions:
            name = f"load-{round(fraction * 100):03d}"
            rps = round(fraction * capacity_rps, 3)
            levels[name] = rps
            scenario = _scenario(base, name=name, rps=rps, seconds=seconds, seed=next(seeds))
            say(f"  {name}: {rps:g} req/s — predicting and measuring")
            sim = simulate_scenario(scenario, calibrated)
            write_run(predicted_dir / name, sim.result, sim.summary)
            measure(scenario, measured_dir / name)
        done("load_levels", t)

        # 5. brownout
        t = next_step("brownout" if brownout else "brownout (skipped)")
        if brownout:
            name = "brownout"
            rps = round(0.5 * capacity_rps, 3)
            start = max(0.0, (brownout_seconds - brownout_window_s) / 2)
            fault = {
                "kind": "error",
                "stage": "generate",
                "status": 429,
                "retry_after_s": 0.5,
                "percent": 100,
                "start_s": start,
                "end_s": start + brownout_window_s,
            }
            scenario = _scenario(
                base,
                name=name,
                rps=rps,
                seconds=brownout_seconds,
                seed=next(seeds),
                faults=[fault],
            )
            levels[name] = rps
            say(
                f"  {rps:g} req/s, 429 on generate from {start:g} s to "
                f"{start + brownout_window_s:g} s — predicting and measuring"
            )
            sim = simulate_scenario(scenario, calibrated)
            write_run(predicted_dir / name, sim.result, sim.summary)
            measure(scenario, measured_dir / name, chaos=True)
        done("brownout", t)
    finally:
        t = time.monotonic()
        say("stopping the reference stack")
        stack.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
        timings["stop_stack"] = round(time.monotonic() - t, 2)

    # 6. validate
    t = next_step("validating predicted against measured")
    from ragstress.cli.validate import format_validation

    pairs, warnings = pair_runs(load_runs(predicted_dir), load_runs(measured_dir))
    validation = validate(
        pairs,
        parse_tolerances(),
        warnings=warnings,
        predicted=str(predicted_dir),
        measured=str(measured_dir),
    )
    validation_json = write_validation_json(validation, out)
    report = write_validation_report(validation, out)
    table = format_validation(validation)
    done("validate", t)

    step = STEPS
    verdict = "passed" if validation.passed else f"missed {len(validation.misses)} figure(s)"
    say(f"done: validation {verdict}; report in {out}")
    return DemoResult(
        out=out,
        calibrated=calibrated_path,
        predicted=predicted_dir,
        measured=measured_dir,
        validation_json=validation_json,
        report=report,
        capacity_rps=capacity_rps,
        capacity_estimated=estimated,
        levels=levels,
        low_runs=low_runs,
        passed=validation.passed,
        misses=len(validation.misses),
        table=table,
        timings_s=timings,
        wall_s=round(time.monotonic() - began, 2),
    )
