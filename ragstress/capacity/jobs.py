"""Whole capacity jobs, as the CLI runs them: plan → simulate → search → write.

``run_plan_job`` is ``ragstress plan``: the planner (:mod:`.planner`), written as
``plan.json`` (settings, knobs, counts, every configuration of the space with its status) and
``plan.csv`` (the same, one row per configuration).

``run_sweep_job`` is ``ragstress sweep``: the grid (``sweep.csv``), then per configuration
the knee and the maximum sustainable rate (``capacity.csv``), and for a scenario with faults
the scenario as written on the first configuration, as a run folder (``timeline/``) for the
report's fault timeline. Everything the job simulates goes through one :class:`PointRunner`,
so a Dask executor or the local pool serves the grid and the search alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ragstress.api import simulate_scenario
from ragstress.capacity.limits import capacity_rows, has_objectives, write_capacity
from ragstress.capacity.overrides import Override, apply_overrides
from ragstress.capacity.planner import Plan, PlanSettings, make_plan
from ragstress.capacity.search import Capacity, SearchSettings, find_capacities
from ragstress.capacity.sweep import PointRunner, plan_points, write_sweep
from ragstress.config import Profile, Scenario
from ragstress.results import write_run
from ragstress.results.store import csv_bytes, json_bytes, write_atomic

__all__ = [
    "PLAN_CSV",
    "PLAN_JSON",
    "TIMELINE_DIR",
    "SweepJob",
    "plan_document",
    "run_plan_job",
    "run_sweep_job",
]

TIMELINE_DIR = "timeline"
PLAN_JSON = "plan.json"
PLAN_CSV = "plan.csv"
PLAN_COLUMNS: tuple[str, ...] = (
    "config",
    "status",
    "rank",
    "fixed_usd_per_hour",
    "usd_per_hour",
    "usd_per_1k_answers",
    "latency_p95_s",
    "slo_ratio",
    "replications",
    "max_rate_rps",
)
ProgressFn = Callable[[float], None]


@dataclass(frozen=True)
class SweepJob:
    """What a sweep job produced: the grid rows, one capacity row per configuration, and the
    searches (None when the scenario has no SLO or the search was turned off)."""

    rows: list[dict[str, Any]]
    capacity: list[dict[str, Any]]
    capacities: list[Capacity] | None
    timeline: Path | None


def run_sweep_job(
    scenario: Scenario,
    profile: Profile,
    rates: Sequence[float],
    overrides: Sequence[Override],
    out: str | Path,
    *,
    replications: int = 1,
    seed: int | None = None,
    search: SearchSettings | None = None,
    workers: int | None = None,
    executor: Executor | None = None,
    progress: ProgressFn | None = None,
) -> SweepJob:
    """Run and write a whole sweep (see the module doc). ``search`` None skips the
    maximum-sustainable-rate search; its seed is replaced by the sweep's."""
    points = plan_points(scenario, profile, rates, overrides, replications=replications, seed=seed)
    base_seed = scenario.seed if seed is None else seed
    configs: list[tuple[str, dict[str, Any]]] = []
    for point in points:
        if not configs or configs[-1][0] != point.config:
            configs.append((point.config, point.overrides))
    with PointRunner(scenario, profile, workers=workers, executor=executor) as runner:
        rows = runner.run(points, progress)
        write_sweep(
            out,
            rows,
            scenario=scenario,
            profile=profile,
            rates=rates,
            overrides=overrides,
            replications=replications,
            seed=seed,
        )
        capacities = None
        settings = None
        if search is not None and has_objectives(scenario.slo):
            settings = SearchSettings(
                tolerance=search.tolerance,
                replications=search.replications,
                max_replications=search.max_replications,
                seed=base_seed,
            )
            capacities = find_capacities(
                runner, configs, settings, start_rps=float(max(rates)), grid=rows
            )
    table = capacity_rows(rows, configs, capacities)
    write_capacity(
        out,
        table,
        [o.key for o in overrides],
        capacities=capacities,
        settings=settings,
        slo=scenario.slo,
    )
    timeline = None
    if scenario.faults:
        sc, prof = apply_overrides(scenario, profile, configs[0][1])
        run = simulate_scenario(sc, prof, seed=base_seed)
        timeline = Path(out) / TIMELINE_DIR
        write_run(timeline, run.result, run.summary)
    return SweepJob(rows, table, capacities, timeline)


def plan_document(plan: Plan, scenario: Scenario, profile: Profile) -> dict[str, Any]:
    """Everything ``plan.json`` holds: inputs, settings, counts and every configuration."""
    chosen = plan.chosen
    settings = plan.settings
    return {
        "scenario": scenario.model_dump(mode="json"),
        "profile": profile.model_dump(mode="json"),
        "peak_rps": settings.peak_rps,
        "headroom": settings.headroom,
        "target_rps": settings.target_rps,
        "top": settings.top,
        "batch": settings.batch,
        "search": asdict(settings.search),
        "knobs": [
            {
                "label": knob.label,
                "choices": [text for text, _ in knob.choices()],
                "monotone": knob.monotone,
            }
            for knob in profile.knobs
        ],
        "grid_size": len(plan.candidates),
        "evaluated": plan.evaluated,
        "pruned_monotone": plan.count("pruned-monotone"),
        "pruned_dominated": plan.count("pruned-dominated"),
        "pruned_cost": plan.count("pruned-cost"),
        "runs": plan.runs,
        "chosen": None if chosen is None else chosen.config,
        "candidates": [c.row() for c in plan.candidates],
    }


def run_plan_job(
    scenario: Scenario,
    profile: Profile,
    settings: PlanSettings,
    out: str | Path,
    *,
    workers: int | None = None,
    executor: Executor | None = None,
) -> Plan:
    """Plan (see :mod:`.planner`) and write ``plan.json`` and ``plan.csv``."""
    with PointRunner(scenario, profile, workers=workers, executor=executor) as runner:
        plan = make_plan(runner, scenario, profile, settings)
    folder = Path(out)
    write_atomic(folder / PLAN_JSON, json_bytes(plan_document(plan, scenario, profile)))
    rows = ([c.row()[name] for name in PLAN_COLUMNS] for c in plan.candidates)
    write_atomic(folder / PLAN_CSV, csv_bytes(PLAN_COLUMNS, rows))
    return plan
