"""Issue 8's loop against the live reference stack, end to end, in one call.

1. start the reference stack with the chaos proxy (with ``pin_cpus``, on a machine with
   two or more CPUs, the stack is pinned to the last CPU and the load generator to the
   first; by default both share every CPU: the stack's five processes on one core make its
   first-token times jitter with load, and the driver needs well under 1 % of a core here);
2. measure a short run at each low rate (the request mix of ``scenarios/reference-steady``
   at a constant Poisson rate);
3. calibrate the profile from those runs → ``out/calibrated.yaml``;
4. the capacity: the **maximum sustainable rate** under the scenario's SLO (the highest
   rate at which every objective holds), found on the calibrated model by the capacity
   search (:mod:`ragstress.capacity.search`: bracketing, then bisection to 2 %, three seeds
   per rate) with runs as long as the measured ones — unless one is given;
5. predict (simulate) and measure each load fraction of it into ``out/predicted/<level>``
   and ``out/measured/<level>`` (a light level runs longer than ``seconds``, until about
   ``min_level_requests`` requests fall after its warm-up);
6. measure the maximum sustainable rate on the stack with ``capacity_probes`` runs (3):
   just below and just above the prediction (×0.95, ×1.05), widened outward until one
   passes and one fails, then bisected; each probe also predicted, into
   ``out/capacity/{predicted,measured}``; the measured figure is the final bracket's
   geometric middle → ``out/capacity.json``;
7. a brownout (10 s of 429s with ``retry-after`` on ``generate``, through the chaos proxy,
   at 80 % of the capacity, with a 10 s baseline before it and time enough after it to judge
   recovery) and a replay of the Azure conversation trace
   (``scenarios/reference-azure-conv.yaml``), each predicted and measured;
8. validate predicted against measured and write ``validation.json``, the charts and the
   report (with the capacity section and chart) into ``out``.

Every measured scenario gets its own seed: the gateway caches query embeddings by text for
10 minutes, so a repeated seed would repeat the questions and skip the embedder. A level's
prediction and measurement share the scenario and its seed.

The load levels, the brownout and the trace are validated figure by figure; the capacity
probes are not (past the capacity, latency depends on how long the queue has grown), but
decide the measured maximum sustainable rate.

A validation miss is a finding, not a failure of the demo: :class:`DemoResult` says whether
validation passed; :class:`DemoError` is raised only when a step could not be done.
"""

from __future__ import annotations

import json
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
from ragstress.capacity.search import Capacity, SearchSettings, find_capacities
from ragstress.capacity.sweep import PointRunner
from ragstress.config import Profile, Scenario, load_profile, load_scenario
from ragstress.demo.capacity import MeasuredCapacity, capacity_document, write_capacity_report
from ragstress.reference.settings import CorpusSettings
from ragstress.reference.stack import ReferenceStack, StackOptions
from ragstress.report.validation_report import write_validation_json, write_validation_report
from ragstress.results import write_run

__all__ = ["DemoError", "DemoResult", "predict_capacity", "run_demo"]

REPO = Path(__file__).resolve().parents[2]
BASE_SCENARIO = REPO / "scenarios" / "reference-steady.yaml"
TRACE_SCENARIO = REPO / "scenarios" / "reference-azure-conv.yaml"
BASE_SEED = 20261121
RUN_EXIT_OK = (0, 3)  # ragstress run: 0 every SLO held, 3 one was missed (still a run)
STEPS = 8
CAPACITY_TOLERANCE = 0.02  # the model's search stops at a bracket this narrow (relative)
PROBE_FACTORS = (0.95, 1.05)  # the first measured capacity probes, around the prediction
WIDEN = 1.15  # then outward by this factor until one passes and one fails
BROWNOUT_START_S = 20.0
MSR_TOLERANCE = 0.05  # how far the predicted maximum sustainable rate may be off (relative)
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
    capacity: dict[str, Any] = field(default_factory=dict)  # capacity.json
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


def level_seconds(base: Scenario, rps: float, seconds: float, min_requests: int) -> float:
    """A load level's run length: ``seconds``, or longer when fewer than ``min_requests``
    would arrive after the warm-up (a light level's p50 over a dozen requests is noise)."""
    warmup = _scenario(base, name="level", rps=1.0, seconds=seconds, seed=0).warmup_s
    if rps <= 0 or rps * (seconds - warmup) >= min_requests:
        return seconds
    return float(math.ceil(warmup + min_requests / rps))


def _write_scenario(scenario: Scenario, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = scenario.model_dump(mode="json", exclude_none=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def predict_capacity(base: Scenario, profile: Profile, *, seconds: float, seed: int) -> Capacity:
    """The calibrated model's maximum sustainable rate for ``base``'s mix and SLO, with runs
    of ``seconds`` (as long as the measured ones: past the capacity the queue grows with
    the run's length, so the verdict depends on it)."""
    scenario = _scenario(base, name="capacity", rps=1.0, seconds=seconds, seed=seed)
    settings = SearchSettings(
        tolerance=CAPACITY_TOLERANCE, replications=3, max_replications=6, seed=seed
    )
    with PointRunner(scenario, profile, workers=1) as runner:
        [capacity] = find_capacities(runner, [("calibrated", {})], settings, start_rps=1.0)
    return capacity


def run_demo(
    out: Path,
    *,
    profile_path: Path,
    corpus_documents: int = 300,
    low_rates: Sequence[float] = (1.0, 3.0),
    low_seconds_each: float = 30.0,
    load_fractions: Sequence[float] = (0.1, 0.4, 0.7, 0.9),
    capacity_rps: float | None = None,
    seconds: float = 40.0,
    min_level_requests: int = 40,
    measure_capacity: bool = True,
    capacity_probes: int = 3,
    brownout: bool = True,
    brownout_fraction: float = 0.8,
    brownout_seconds: float = 70.0,
    brownout_window_s: float = 10.0,
    trace: bool = True,
    trace_scenario: Path = TRACE_SCENARIO,
    pin_cpus: bool = False,
    progress: Callable[[str], None] = lambda _m: None,
) -> DemoResult:
    """Run the loop (see the module docstring) and write everything into ``out``."""
    began = time.monotonic()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    predicted_dir, measured_dir = out / "predicted", out / "measured"
    capacity_dir = out / "capacity"
    for folder in (predicted_dir, measured_dir, out / "low", capacity_dir):
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
    stack_cpus, driver_cpu = _affinity() if pin_cpus else (None, None)
    seeds = iter(range(BASE_SEED, BASE_SEED + 10_000))
    levels: dict[str, float] = {}
    offered: dict[str, float] = {}  # run name → the offered rate of its workload
    predicted_ratios: dict[float, float] = {}  # constant-rate run's rate → model's SLO ratio
    measured_capacity: MeasuredCapacity | None = None
    predicted_capacity: Capacity | None = None

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

        def both(
            scenario: Scenario,
            name: str,
            pred: Path,
            meas: Path,
            *,
            rate: float | None = None,
            chaos: bool = False,
        ) -> Path:
            """Predict and measure one scenario; returns the measured folder. ``rate``: a
            constant-rate run's rate, whose predicted SLO ratio the capacity chart shows."""
            sim = simulate_scenario(scenario, calibrated)
            write_run(pred / name, sim.result, sim.summary)
            offered[name] = round(float(sim.summary["offered_rps"]), 3)
            ratio = sim.summary.get("slo_ratio")
            if rate is not None and ratio is not None:
                predicted_ratios[rate] = float(ratio)
            return measure(scenario, meas / name, chaos=chaos)

        # 2. low-load runs for calibration
        low_s = low_seconds(base, low_rates, low_seconds_each)
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

        # 4. the maximum sustainable rate on the calibrated model
        t = next_step("capacity: the maximum sustainable rate under the SLO")
        estimated = capacity_rps is None
        if capacity_rps is None:
            predicted_capacity = predict_capacity(base, calibrated, seconds=seconds, seed=BASE_SEED)
            capacity_rps = round(predicted_capacity.max_rate_rps, 3)
            if capacity_rps <= 0:
                raise DemoError("the calibrated model sustains no rate under the SLO")
            say(
                f"  predicted by the calibrated model: {capacity_rps:g} req/s "
                f"({predicted_capacity.runs} simulated runs)"
            )
        else:
            say(f"  capacity given: {capacity_rps:g} req/s")
        done("capacity_model", t)

        # 5. load levels
        t = next_step(f"load levels: {', '.join(f'{f:.0%}' for f in load_fractions)}")
        ratios: dict[float, float] = {}
        for fraction in load_fractions:
            name = f"load-{round(fraction * 100):03d}"
            rps = round(fraction * capacity_rps, 3)
            levels[name] = rps
            length = level_seconds(base, rps, seconds, min_level_requests)
            scenario = _scenario(base, name=name, rps=rps, seconds=length, seed=next(seeds))
            say(f"  {name}: {rps:g} req/s for {length:g} s — predicting and measuring")
            folder = both(scenario, name, predicted_dir, measured_dir, rate=rps)
            ratios[rps] = _slo_ratio(folder)
        done("load_levels", t)

        # 6. the maximum sustainable rate on the stack
        t = next_step("measuring the maximum sustainable rate" if measure_capacity else "(skipped)")
        if measure_capacity:

            def probe(rps: float) -> float:
                name = f"rate-{rps:g}"
                scenario = _scenario(base, name=name, rps=rps, seconds=seconds, seed=next(seeds))
                folder = both(
                    scenario, name, capacity_dir / "predicted", capacity_dir / "measured", rate=rps
                )
                ratio = _slo_ratio(folder)
                say(f"  {rps:g} req/s: SLO ratio {ratio:.3g} ({'met' if ratio <= 1 else 'missed'})")
                return ratio

            measured_capacity = _measure_capacity(capacity_rps, ratios, probe, capacity_probes)
            say(f"  measured: {measured_capacity.describe()}")
        done("capacity_measured", t)

        # 7. brownout and trace
        t = next_step("brownout and trace replay")
        if brownout:
            name = "brownout"
            rps = round(brownout_fraction * capacity_rps, 3)
            # a pre-fault baseline of 10 s after the warm-up, and the rest of the run to
            # judge recovery in (recovery needs ~200 arrivals of calm after the window)
            start = min(BROWNOUT_START_S, max(0.0, (brownout_seconds - brownout_window_s) / 2))
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
                f"  brownout: {rps:g} req/s, 429 on generate from {start:g} s to "
                f"{start + brownout_window_s:g} s — predicting and measuring"
            )
            both(scenario, name, predicted_dir, measured_dir, chaos=True)
        if trace:
            replay = load_scenario(trace_scenario)
            replay = replay.model_copy(update={"seed": next(seeds)})
            name = "azure-conv"
            say(f"  trace: {replay.name} ({replay.duration_s:g} s) — predicting and measuring")
            both(replay, name, predicted_dir, measured_dir)
            levels[name] = offered[name]
        done("brownout_trace", t)
    finally:
        t = time.monotonic()
        say("stopping the reference stack")
        stack.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
        timings["stop_stack"] = round(time.monotonic() - t, 2)

    # 8. validate
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
    capacity_doc = capacity_document(
        capacity_rps,
        predicted_capacity,
        measured_capacity,
        tolerance=MSR_TOLERANCE,
        predicted_ratios=predicted_ratios,
        run_seconds=seconds,
    )
    capacity_json = out / "capacity.json"
    capacity_json.write_text(json.dumps(capacity_doc, indent=2) + "\n", encoding="utf-8")
    report += write_capacity_report(capacity_doc, out)
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
        capacity=capacity_doc,
        timings_s=timings,
        wall_s=round(time.monotonic() - began, 2),
    )


def _slo_ratio(folder: Path) -> float:
    """A run's SLO ratio (worst objective over its target; ≤ 1: the SLO held)."""
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    value = summary.get("slo_ratio")
    return float("inf") if value is None else float(value)


def _measure_capacity(
    predicted_rps: float,
    ratios: dict[float, float],
    probe: Callable[[float], float],
    budget: int,
) -> MeasuredCapacity:
    """Bracket the measured crossing around the prediction (see the module docstring) with at
    most ``budget`` probes: ×0.95 and ×1.05 first, then widening outward until one rate
    holds and one fails, then bisection with what is left (the demo's time is bounded: a
    prediction far off spends the budget widening, and the bracket may stay open).
    ``ratios``: rates already measured (the load levels) → SLO ratio; ``probe(rate)``
    measures one more rate (rounded to 1 mHz) and returns its SLO ratio."""
    asked = 0

    def bracket() -> tuple[float | None, float | None]:
        failed = [r for r, v in ratios.items() if v > 1.0]
        high = min(failed) if failed else None
        passed = [r for r, v in ratios.items() if v <= 1.0 and (high is None or r < high)]
        return (max(passed) if passed else None), high

    def ask(rps: float) -> None:
        nonlocal asked
        asked += 1
        rps = round(rps, 3)
        ratios[rps] = probe(rps)

    for factor in PROBE_FACTORS[:budget]:
        ask(predicted_rps * factor)
    while asked < budget:
        low, high = bracket()
        if high is None:
            ask(max(ratios) * WIDEN)
        elif low is None:
            ask(min(ratios) / WIDEN)
        else:
            ask(math.sqrt(low * high))
    low, high = bracket()
    return MeasuredCapacity(low_rps=low, high_rps=high, ratios=dict(sorted(ratios.items())))
