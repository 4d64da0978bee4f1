"""Calibration's I/O: read run folders (and rebuild their workloads), write the profile.

The fitting itself is pure (:func:`ragstress.calibration.core.calibrate`); this module is
the only part of calibration that touches files.

Rebuilding a run's workload. A run's manifest holds the scenario and seed its requests came
from; :func:`~ragstress.workload.build_workload` makes the same requests again (the driver
sends exactly those, ``id`` = workload index). A measured run replayed with ``time_scale``
has its manifest's ``duration_s`` and ``warmup_s`` divided by it; the values as written are
in its ``driver.json`` and are put back first (the arrivals depend on the duration). Fault
windows do not shape the workload and are dropped. The rebuilt arrivals must match the
rows' (× ``time_scale``); if they do not, or the scenario no longer loads (a moved trace
file), the run's token counts are unknown and calibration says so.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from ragstress.calibration.common import Options
from ragstress.calibration.core import Calibration, LoadedRun, calibrate
from ragstress.calibration.render import render_profile
from ragstress.config.loader import ConfigError, load_profile, parse_config
from ragstress.config.profile import Profile
from ragstress.config.scenario import Scenario
from ragstress.results.schema import RunResult
from ragstress.results.store import read_run, write_atomic
from ragstress.workload import Workload, build_workload

__all__ = ["DRIVER_JSON", "calibrate_files", "calibration_text", "load_run"]

DRIVER_JSON = "driver.json"


def _driver_record(folder: Path) -> dict[str, Any]:
    path = folder / DRIVER_JSON
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _workload(result: RunResult, folder: Path, label: str) -> tuple[Workload | None, str | None]:
    data = dict(result.manifest.scenario)
    scale = 1.0
    driver = _driver_record(folder)
    raw_scale = driver.get("time_scale", 1.0)
    if isinstance(raw_scale, int | float) and raw_scale > 0 and raw_scale != 1:
        scale = float(raw_scale)
        for key in ("duration_s", "warmup_s"):
            written = driver.get(f"scenario_{key}")
            if isinstance(written, int | float):
                data[key] = written
            else:
                data[key] = float(data.get(key, 0.0)) * scale
    data.pop("faults", None)
    why = "token counts for the stages are unknown"
    try:
        scenario = Scenario.model_validate(data)
        workload = build_workload(scenario, result.manifest.seed)
    except (ValidationError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return None, f"run {label}: cannot rebuild its workload ({first}): {why}"
    ids = result.requests["id"]
    if ids.size == 0:
        return workload, None
    if ids.min() < 0 or ids.max() >= len(workload):
        return None, f"run {label}: its request ids do not fit the rebuilt workload: {why}"
    arrival = result.requests["arrival_s"] * scale
    if not np.allclose(arrival, workload.arrival_s[ids], rtol=1e-6, atol=1e-6):
        return None, f"run {label}: its arrivals differ from the rebuilt workload's: {why}"
    return workload, None


def load_run(folder: str | Path, label: str | None = None) -> LoadedRun:
    """Read a run folder (ResultsError if it is not one) and rebuild its workload."""
    path = Path(folder)
    result = read_run(path)
    name = label or str(folder)
    workload, note = _workload(result, path, name)
    notes = [] if note is None else [note]
    if not result.manifest.complete:
        notes.append(f"run {name}: incomplete (interrupted); using the requests it recorded")
    return LoadedRun(label=name, result=result, workload=workload, notes=tuple(notes))


def _stamp(value: float) -> str:
    return "—" if not math.isfinite(value) else f"{value:g}"


def calibration_text(
    calibration: Calibration, runs: Sequence[LoadedRun], *, command: str, profile_path: str
) -> str:
    """The calibrated profile as YAML: a header (command, date, runs, assumptions) and the
    fit's comment above every key it set or considered."""
    now = datetime.now(UTC).isoformat(timespec="seconds")
    header = [
        f"Calibrated by `{command}` on {now}, from profile {profile_path} "
        f"({calibration.original.name}).",
        "Assumes the runs were at low load, so that a measured stage time (queueing + service "
        "as the caller saw it) is the stage's service time; uses requests answered ok in each "
        "run's measurement window. Keys without a comment are as they were.",
        "Runs:",
    ]
    for run in runs:
        m = run.result.manifest
        warm = float(m.scenario.get("warmup_s", 0.0))
        header.append(
            f"  {run.label}: {m.source}, {len(run.result)} requests, window "
            f"[{_stamp(warm)}, {_stamp(m.duration_s)}) s, seed {m.seed}"
        )
    comments: dict[tuple[str, str | None], list[str]] = {}
    for fit in calibration.stages:
        if not fit.fitted:
            comments[(fit.stage, None)] = [f"calibration: {fit.summary}"]
            continue
        for key in fit.keys:
            comments.setdefault((fit.stage, key.key), []).append(key.comment)
        for warning in fit.warnings:
            comments.setdefault((fit.stage, None), []).append(f"calibration warning: {warning}")
    return render_profile(calibration.profile, header=header, comments=comments)


def calibrate_files(
    run_folders: Sequence[str | Path],
    profile_path: str | Path,
    out: str | Path,
    *,
    options: Options | None = None,
    command: str = "ragstress calibrate",
) -> Calibration:
    """Load the profile and runs, calibrate, write ``out``; ConfigError / ResultsError for
    what the user can fix. The written text is read back and must give the calibrated
    profile, so a profile that would not load is never written."""
    out = Path(out)
    if (
        out.exists()
        and Path(profile_path).exists()
        and out.resolve() == Path(profile_path).resolve()
    ):
        raise ConfigError(
            [f"--out {out}: is the --profile file; write the calibrated profile elsewhere"]
        )
    if out.is_dir():
        raise ConfigError([f"--out {out}: is a folder, expected a YAML file path"])
    profile = load_profile(profile_path)
    runs = [load_run(folder) for folder in run_folders]
    calibration = calibrate(profile, runs, options)
    text = calibration_text(calibration, runs, command=command, profile_path=str(profile_path))
    check = parse_config(text, Profile, str(out))
    if check != calibration.profile:  # a bug in the writer, not the user's doing
        raise RuntimeError("the calibrated profile's YAML does not read back as written")
    write_atomic(out, text.encode())
    return calibration
