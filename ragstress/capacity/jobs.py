"""Whole capacity jobs, as the CLI runs them: plan → simulate → search → write.

``run_sweep_job`` is ``ragstress sweep``: the grid (``sweep.csv``), then per configuration
the knee and the maximum sustainable rate (``capacity.csv``), and for a scenario with faults
the scenario as written on the first configuration, as a run folder (``timeline/``) for the
report's fault timeline. Everything the job simulates goes through one :class:`PointRunner`,
so a Dask executor or the local pool serves the grid and the search alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragstress.api import simulate_scenario
from ragstress.capacity.limits import capacity_rows, has_objectives, write_capacity
from ragstress.capacity.overrides import Override, apply_overrides
from ragstress.capacity.search import Capacity, SearchSettings, find_capacities
from ragstress.capacity.sweep import PointRunner, plan_points, write_sweep
from ragstress.config import Profile, Scenario
from ragstress.results import write_run

__all__ = ["TIMELINE_DIR", "SweepJob", "run_sweep_job"]

TIMELINE_DIR = "timeline"
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
