"""The library API the CLI is a thin layer over: load, simulate, summarise, store."""

from __future__ import annotations

import platform
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from ragstress.analysis import summarize
from ragstress.config import ConfigError, Profile, Scenario, load_profile, load_scenario
from ragstress.model import ModelError, ProgressCallback, simulate
from ragstress.results import RunResult, write_run
from ragstress.workload import build_workload

__all__ = [
    "SimulationRun",
    "library_versions",
    "load_pair",
    "simulate_files",
    "simulate_scenario",
]


@dataclass(frozen=True)
class SimulationRun:
    result: RunResult
    summary: dict[str, Any]


def library_versions() -> dict[str, str]:
    """Versions of what shapes a result, for the manifest (read here, not in the pure model)."""
    out = {"python": platform.python_version()}
    for dist in ("ragstress", "simpy", "numpy", "scipy", "pydantic"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "unknown"
    return out


def simulate_scenario(
    scenario: Scenario,
    profile: Profile,
    *,
    seed: int | None = None,
    progress: ProgressCallback | None = None,
) -> SimulationRun:
    """Materialise the workload, run the model, summarise. Pure apart from the clock stamp."""
    workload = build_workload(scenario, seed)
    try:
        result = simulate(workload, profile, progress=progress)
    except ModelError as exc:
        # the scenario's faults do not fit this profile: a configuration problem, one line
        raise ConfigError(
            [f"scenario {scenario.name!r} with profile {profile.name!r}: {exc}"]
        ) from None
    stamp = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": library_versions(),
    }
    stamped = replace(result, manifest=result.manifest.model_copy(update=stamp))
    return SimulationRun(result=stamped, summary=summarize(stamped))


def load_pair(scenario_path: str | Path, profile_path: str | Path) -> tuple[Scenario, Profile]:
    """Load a scenario and a profile, reporting the problems of both files at once."""
    problems: list[str] = []
    scenario: Scenario | None = None
    profile: Profile | None = None
    try:
        scenario = load_scenario(scenario_path)
    except ConfigError as exc:
        problems.extend(exc.problems)
    try:
        profile = load_profile(profile_path)
    except ConfigError as exc:
        problems.extend(exc.problems)
    if problems or scenario is None or profile is None:
        raise ConfigError(problems)
    return scenario, profile


def simulate_files(
    scenario_path: str | Path,
    profile_path: str | Path,
    out: str | Path,
    *,
    seed: int | None = None,
    progress: ProgressCallback | None = None,
) -> SimulationRun:
    """Load both files (ConfigError on any problem), simulate and write the run folder."""
    scenario, profile = load_pair(scenario_path, profile_path)
    run = simulate_scenario(scenario, profile, seed=seed, progress=progress)
    write_run(out, run.result, run.summary)
    return run
