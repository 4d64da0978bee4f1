"""Parameter sweeps: the same scenario at many offered rates and configurations.

A sweep is planned first (:func:`plan_points`, which also validates every configuration, so a
bad ``--set`` fails before any simulation runs), then each point is simulated independently
(:func:`run_point`, pure: no I/O, picklable arguments, so it runs the same in a worker
process), and only the finished rows are written (:func:`write_sweep`).

Seeds: replication ``r`` of every point uses ``seed + r``, where ``seed`` defaults to the
scenario's own. Configurations and rates therefore share random streams replication by
replication (common random numbers, see :mod:`ragstress.seeding`): the difference between two
configurations at one rate is not blurred by different draws, and a row can be reproduced with
``ragstress simulate --seed``. Because each row depends only on its point, a sweep gives the
same rows serially and in parallel, whatever order the workers finish in.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Executor, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragstress.api import simulate_scenario
from ragstress.capacity.overrides import Override, apply_overrides, with_rate
from ragstress.config import ConfigError, Profile, Scenario
from ragstress.results.store import csv_bytes, json_bytes, write_atomic

__all__ = [
    "COLUMNS",
    "STAGE_FIGURES",
    "SWEEP_CSV",
    "SWEEP_JSON",
    "PointRunner",
    "SweepPoint",
    "columns",
    "config_label",
    "plan_points",
    "run_point",
    "run_sweep",
    "write_sweep",
]

SWEEP_CSV = "sweep.csv"
SWEEP_JSON = "sweep.json"

# Columns of every row, in CSV order; the override keys go right after ``config``.
COLUMNS: tuple[str, ...] = (
    "config",
    "rate_rps",
    "replication",
    "seed",
    "requests",
    "offered_rps",
    "throughput_rps",
    "goodput_rps",
    "error_rate",
    "latency_p50_s",
    "latency_p50_ci_low_s",
    "latency_p50_ci_high_s",
    "latency_p95_s",
    "latency_p95_ci_low_s",
    "latency_p95_ci_high_s",
    "latency_p99_s",
    "latency_p99_ci_low_s",
    "latency_p99_ci_high_s",
    "ttft_p95_s",
    "cost_usd_per_1k_answers",
    "cost_usd_per_hour",
    "slo_ratio",
    "slo_met",
)

# Per-stage columns, ``<stage>_<figure>``, after COLUMNS in the stages' profile order: the mean
# queue wait and service time of the window's requests' calls (where the time goes), the
# stage's utilisation and mean queue length (which stage saturates first).
STAGE_FIGURES: tuple[str, ...] = ("wait_mean_s", "service_mean_s", "utilisation", "mean_queue")

ProgressFn = Callable[[float], None]


@dataclass(frozen=True)
class SweepPoint:
    """One simulation of a sweep: a configuration (``overrides``, keys as ``--set`` writes
    them, labelled ``config``) at one offered ``rate_rps``, one ``replication``, its ``seed``."""

    config: str
    overrides: dict[str, Any] = field(hash=False)
    rate_rps: float
    replication: int
    seed: int


def config_label(settings: Mapping[str, Any]) -> str:
    """``generate.replicas=4`` (the ``stages.`` prefix dropped), several joined by spaces;
    ``baseline`` when nothing is overridden."""
    if not settings:
        return "baseline"
    parts = []
    for key, value in settings.items():
        text = json.dumps(value) if not isinstance(value, str) else value
        parts.append(f"{key.removeprefix('stages.')}={text}")
    return " ".join(parts)


def plan_points(
    scenario: Scenario,
    profile: Profile,
    rates: Sequence[float],
    overrides: Sequence[Override] = (),
    *,
    replications: int = 1,
    seed: int | None = None,
) -> list[SweepPoint]:
    """Every point: the cartesian product of the override values (first ``--set`` varying
    slowest) × ``rates`` × replications, in that nesting order. Replication ``r`` uses seed
    ``seed + r`` (``seed`` defaults to the scenario's). Each configuration is applied once
    here, so an invalid one raises ConfigError before anything is simulated."""
    if not rates:
        raise ConfigError(["--rates: no rates given (allowed: e.g. 10:400:20 or 10,20,50)"])
    if replications < 1:
        raise ConfigError([f"--replications: got {replications} (allowed: 1 or more)"])
    keys = [o.key for o in overrides]
    if len(set(keys)) != len(keys):
        twice = sorted({k for k in keys if keys.count(k) > 1})
        raise ConfigError([f"--set {twice[0]}: given twice (allowed: each key once)"])
    base = scenario.seed if seed is None else seed
    with_rate(scenario, rates[0])  # raises for trace arrivals
    points: list[SweepPoint] = []
    for combo in itertools.product(*(o.values for o in overrides)):
        settings = dict(zip(keys, combo, strict=True))
        apply_overrides(scenario, profile, settings)  # validate once per configuration
        label = config_label(settings)
        for rate in rates:
            with_rate(scenario, rate)
            points.extend(
                SweepPoint(label, dict(settings), float(rate), r, base + r)
                for r in range(replications)
            )
    return points


def _ci(block: Mapping[str, Any], name: str) -> tuple[float, float]:
    low, high = block["ci95"][name]
    return float(low), float(high)


def run_point(point: SweepPoint, scenario: Scenario, profile: Profile) -> dict[str, Any]:
    """Simulate one point and flatten its summary into a row (keys: ``config``, the override
    keys, then :data:`COLUMNS`). Pure: it writes nothing."""
    sc, prof = apply_overrides(scenario, profile, point.overrides)
    sc = with_rate(sc, point.rate_rps)
    summary = simulate_scenario(sc, prof, seed=point.seed).summary
    lat, ttft = summary["latency_s"], summary["ttft_s"]
    start, end = summary["window_s"]
    span = max(float(end) - float(start), 1e-12)
    p50_low, p50_high = _ci(lat, "p50")
    p95_low, p95_high = _ci(lat, "p95")
    p99_low, p99_high = _ci(lat, "p99")
    figures: dict[str, Any] = {
        "rate_rps": point.rate_rps,
        "replication": point.replication,
        "seed": point.seed,
        "requests": int(summary["requests"]),
        "offered_rps": float(summary["offered_rps"]),
        "throughput_rps": float(summary["throughput_rps"]),
        "goodput_rps": float(summary["goodput_rps"]),
        "error_rate": float(summary["error_rate"]),
        "latency_p50_s": float(lat["p50"]),
        "latency_p50_ci_low_s": p50_low,
        "latency_p50_ci_high_s": p50_high,
        "latency_p95_s": float(lat["p95"]),
        "latency_p95_ci_low_s": p95_low,
        "latency_p95_ci_high_s": p95_high,
        "latency_p99_s": float(lat["p99"]),
        "latency_p99_ci_low_s": p99_low,
        "latency_p99_ci_high_s": p99_high,
        "ttft_p95_s": float(ttft["p95"]),
        "cost_usd_per_1k_answers": float(summary["cost_usd_per_1k_answers"]),
        "cost_usd_per_hour": 3600 * float(summary["cost_usd"]["total"]) / span,
        "slo_ratio": float(summary["slo_ratio"]),
        "slo_met": bool(summary["slo_met"]),
    }
    for stage, entry in summary["stages"].items():
        figures[f"{stage}_wait_mean_s"] = float(entry["wait_s"]["mean"])
        figures[f"{stage}_service_mean_s"] = float(entry["service_s"]["mean"])
        figures[f"{stage}_utilisation"] = float(entry["utilisation"])
        figures[f"{stage}_mean_queue"] = float(entry["mean_queue"])
    return {"config": point.config, **point.overrides, **figures}


def _run_in_worker(point: SweepPoint, scenario: Scenario, profile: Profile) -> tuple[bool, Any]:
    """``run_point`` for a worker process. A ConfigError does not survive pickling intact
    (its ``problems`` come back as characters), so its lines are returned instead."""
    try:
        return True, run_point(point, scenario, profile)
    except ConfigError as exc:
        return False, exc.problems


class PointRunner:
    """Runs batches of points and returns their rows in point order, whatever order they
    finish in: here, one after another (``workers=1``: easy to debug and profile), in a pool of
    local processes (the default: one per CPU), or on any ``concurrent.futures.Executor`` it
    is given, such as a Dask cluster's (it does not shut down an executor it did not create).

    Sweeps run one batch; the capacity search and the planner run many small ones (a probe's
    replications), so the pool is created once, on first use, and reused until :meth:`close`.
    """

    def __init__(
        self,
        scenario: Scenario,
        profile: Profile,
        *,
        workers: int | None = None,
        executor: Executor | None = None,
    ) -> None:
        if workers is None:
            workers = os.cpu_count() or 1
        if workers < 1:
            raise ConfigError([f"--workers: got {workers} (allowed: 1 or more)"])
        self.scenario = scenario
        self.profile = profile
        self.workers = workers
        self._executor = executor
        self._owned: ProcessPoolExecutor | None = None
        self.runs = 0  # points simulated so far, for reports of how much a search cost

    def __enter__(self) -> PointRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._owned is not None:
            self._owned.shutdown(wait=True, cancel_futures=True)
            self._owned = None

    def _pool(self) -> Executor | None:
        if self._executor is not None:
            return self._executor
        if self.workers == 1:
            return None
        if self._owned is None:
            self._owned = ProcessPoolExecutor(max_workers=self.workers)
        return self._owned

    def run(
        self, points: Sequence[SweepPoint], progress: ProgressFn | None = None
    ) -> list[dict[str, Any]]:
        """Simulate ``points``; ``progress`` gets the fraction of this batch done."""
        total = len(points)
        rows: list[dict[str, Any] | None] = [None] * total
        pool = self._pool() if total > 1 else None
        if pool is None:
            for i, point in enumerate(points):
                rows[i] = run_point(point, self.scenario, self.profile)
                self.runs += 1
                if progress is not None:
                    progress((i + 1) / total)
            return [r for r in rows if r is not None]
        futures: dict[Future[tuple[bool, Any]], int] = {
            pool.submit(_run_in_worker, point, self.scenario, self.profile): i
            for i, point in enumerate(points)
        }
        pending = set(futures)
        done = 0
        try:
            while pending:
                finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for future in finished:
                    ok, value = future.result()  # a crash in a worker propagates here
                    if not ok:
                        raise ConfigError(value)
                    rows[futures[future]] = value
                    done += 1
                    self.runs += 1
                if progress is not None:
                    progress(done / total)
        except BaseException:
            for future in pending:
                future.cancel()  # no point finishing a failed batch
            self.close()
            raise
        return [r for r in rows if r is not None]


def run_sweep(
    points: Sequence[SweepPoint],
    scenario: Scenario,
    profile: Profile,
    *,
    workers: int | None = None,
    executor: Executor | None = None,
    progress: ProgressFn | None = None,
) -> list[dict[str, Any]]:
    """Run every point; rows come back in point order whatever order they finish in.

    ``workers`` > 1 runs points in that many local processes (default: every CPU); 1 runs them
    here, one after another. ``executor`` (e.g. a Dask cluster's) replaces the local pool.
    ``progress`` gets the fraction done."""
    with PointRunner(scenario, profile, workers=workers, executor=executor) as runner:
        return runner.run(points, progress)


def columns(override_keys: Sequence[str], stages: Sequence[str]) -> list[str]:
    """CSV columns of a sweep: ``config``, the override keys, :data:`COLUMNS`, then
    :data:`STAGE_FIGURES` for each stage."""
    per_stage = [f"{stage}_{figure}" for stage in stages for figure in STAGE_FIGURES]
    return ["config", *override_keys, *COLUMNS[1:], *per_stage]


def write_sweep(
    folder: str | Path,
    rows: Sequence[Mapping[str, Any]],
    *,
    scenario: Scenario,
    profile: Profile,
    rates: Sequence[float],
    overrides: Sequence[Override],
    replications: int,
    seed: int | None,
) -> Path:
    """Write ``sweep.csv`` (one row per point, columns in a fixed order) and ``sweep.json``
    (everything needed to run the sweep again), each atomically. Returns the folder."""
    out = Path(folder)
    stages = [stage.name for stage in profile.stages]
    header = columns([o.key for o in overrides], stages)
    inputs = {
        "scenario": scenario.model_dump(mode="json"),
        "profile": profile.model_dump(mode="json"),
        "rates": list(rates),
        "overrides": [{"key": o.key, "values": list(o.values)} for o in overrides],
        "replications": replications,
        "seed": scenario.seed if seed is None else seed,
        "seeding": "replication r uses seed + r",
        "points": len(rows),
        "stages": stages,
        "columns": header,
    }
    table = ([row.get(c, math.nan) for c in header] for row in rows)
    write_atomic(out / SWEEP_CSV, csv_bytes(header, table))
    write_atomic(out / SWEEP_JSON, json_bytes(inputs))
    return out
