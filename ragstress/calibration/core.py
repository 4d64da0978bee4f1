"""Calibration: a profile and runs in, the profile with fitted parameters out. Pure: the runs
come already read (:mod:`ragstress.calibration.files` reads them and writes the result).

Which stages are fitted
=======================

Every stage of the profile (or those named in ``Options.stages``) that has times in the
runs, each by its kind (:mod:`~ragstress.calibration.stages`, :mod:`~ragstress.calibration.llm`).
A stage is *kept as it was*, with the reason written above it in the profile, when

- the runs have no time for it (a measured run of the reference gateway times embed,
  retrieve and generate, not the embedding cache), unless it was named: then that is an
  error;
- fewer than ``min_samples`` (30) requests are usable (:mod:`~ragstress.calibration.observe`
  says which are);
- it is an LLM stage other than the answering one (the last LLM stage on the main path),
  whose first token and token gaps the rows do not show.

No stage fitted at all is an error, as is a named stage the profile lacks. Every other key of
the profile, and every key of a stage the fit does not set, is kept as written.

Token counts
============

A row's ``tokens_in`` is the answering LLM's prompt, not what an embedder or a search read.
Those come from the workload, rebuilt from the run's manifest (scenario and seed) exactly as
the driver built the requests it sent (request ids are workload indices), and are read with
the stage's ``input_tokens`` (:func:`ragstress.model.service.tokens_of`). The counts are the
workload's notion of tokens, which is what the model multiplies ``per_token_s`` by, whatever
tokenizer the real service used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ragstress.calibration.common import Options, StageFit
from ragstress.calibration.llm import fit_llm_api, fit_llm_engine
from ragstress.calibration.observe import StageRun, stage_run
from ragstress.calibration.stages import fit_batcher, fit_cache, fit_pool, refused
from ragstress.config.loader import ConfigError
from ragstress.config.profile import (
    STREAMING,
    AnyStage,
    BatcherStage,
    CacheStage,
    LlmApiStage,
    LlmEngineStage,
    PoolStage,
    Profile,
)
from ragstress.model.service import tokens_of
from ragstress.results.schema import RunResult
from ragstress.workload import Workload

__all__ = ["Calibration", "LoadedRun", "answering_stage", "apply_fits", "calibrate"]


@dataclass(frozen=True)
class LoadedRun:
    """A run folder as calibration uses it: its rows, its workload where it could be rebuilt
    (None: token counts unknown), and what reading it found worth saying."""

    label: str
    result: RunResult
    workload: Workload | None = None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Calibration:
    """The calibrated profile, what was done to each stage, and the warnings to show."""

    original: Profile
    profile: Profile
    stages: tuple[StageFit, ...]
    warnings: tuple[str, ...]
    runs: tuple[str, ...]
    notes: dict[str, Any] = field(default_factory=dict)

    def stage(self, name: str) -> StageFit:
        for fit in self.stages:
            if fit.stage == name:
                return fit
        raise KeyError(name)


def answering_stage(profile: Profile) -> str | None:
    """The LLM stage whose answer a row times: the last streaming stage on the main path."""
    names = [s.name for s in profile.path if isinstance(s, STREAMING)]
    return names[-1] if names else None


def _stage_tokens(stage: AnyStage, run: LoadedRun) -> np.ndarray | None:
    """The stage's input tokens for each row of ``run`` (None: unknown)."""
    if isinstance(stage, CacheStage) or stage.input_tokens == "none":
        return np.zeros(len(run.result))
    if run.workload is None:
        return None
    ids = run.result.requests["id"]
    if ids.size and (ids.min() < 0 or ids.max() >= len(run.workload)):
        return None
    system = stage.system_prompt_tokens if isinstance(stage, LlmApiStage | LlmEngineStage) else 0
    tokens = np.asarray(tokens_of(stage.input_tokens, run.workload, system), dtype=np.float64)
    return np.asarray(tokens[ids], dtype=np.float64)


def _fit_stage(stage: AnyStage, views: Sequence[StageRun], options: Options) -> StageFit:
    if isinstance(stage, PoolStage):
        return fit_pool(stage, views, options)
    if isinstance(stage, BatcherStage):
        return fit_batcher(stage, views, options)
    if isinstance(stage, CacheStage):
        return fit_cache(stage, views, options)
    if isinstance(stage, LlmEngineStage):
        return fit_llm_engine(stage, views, options)
    return fit_llm_api(stage, views, options)


def calibrate(
    profile: Profile, runs: Sequence[LoadedRun], options: Options | None = None
) -> Calibration:
    """Fit ``profile``'s stages from ``runs`` (see the module docstring).

    Raises ConfigError (one line per problem) for a named stage the profile lacks or the runs
    do not time, and when no stage could be fitted.
    """
    options = options or Options()
    if not runs:
        raise ConfigError(["calibrate: no runs given"])
    names = [s.name for s in profile.stages]
    wanted = options.stages
    if wanted is not None:
        unknown = [s for s in wanted if s not in names]
        if unknown:
            raise ConfigError(
                [
                    f"--stage {s}: the profile has no such stage (allowed: {', '.join(names)})"
                    for s in unknown
                ]
            )
    warnings: list[str] = []
    for run in runs:
        warnings.extend(run.notes)
        if run.result.manifest.source != "measured":
            warnings.append(
                f"run {run.label}: simulated, not measured: the fit recovers the model's own "
                "parameters (useful to test calibration, not to calibrate)"
            )
    answering = answering_stage(profile)
    problems: list[str] = []
    fits: list[StageFit] = []
    for stage in profile.stages:
        if wanted is not None and stage.name not in wanted:
            continue
        views: list[StageRun] = []
        for run in runs:
            view = stage_run(run.result, profile, stage, run.label, _stage_tokens(stage, run))
            if view is not None:
                views.append(view)
                warnings.extend(_kind_mismatch(run, stage))
        if not views:
            why = f"no times for it in the runs (no {stage.name}_service_s values)"
            if wanted is not None:
                problems.append(f"stage {stage.name}: {why}")
            fits.append(refused(stage.name, stage.kind, 0, f"{why}; kept as it was"))
            continue
        if isinstance(stage, STREAMING) and stage.name != answering:
            fits.append(
                refused(
                    stage.name,
                    stage.kind,
                    sum(v.n for v in views),
                    f"not the answering LLM stage ({answering}): the rows' first-token and "
                    "token times are not its own; kept as it was",
                )
            )
            continue
        fits.append(_fit_stage(stage, views, options))
    if problems:
        raise ConfigError(problems)
    if not any(f.fitted for f in fits):
        raise ConfigError(
            [f"nothing to calibrate: stage {f.stage}: {f.summary}" for f in fits]
            or ["nothing to calibrate: no stage selected"]
        )
    for f in fits:
        warnings.extend(f.warnings)
        if not f.fitted:
            warnings.append(f"stage {f.stage}: {f.summary}")
    return Calibration(
        original=profile,
        profile=apply_fits(profile, fits),
        stages=tuple(fits),
        warnings=tuple(dict.fromkeys(warnings)),
        runs=tuple(r.label for r in runs),
    )


def _kind_mismatch(run: LoadedRun, stage: AnyStage) -> list[str]:
    """A run recorded with a profile whose stage of this name is of another kind measured
    something else under the same column names."""
    recorded = run.result.manifest.profile
    if not recorded:
        return []
    for other in recorded.get("stages", []):
        if isinstance(other, dict) and other.get("name") == stage.name:
            kind = other.get("kind")
            if kind is not None and kind != stage.kind:
                return [
                    f"run {run.label}: its stage {stage.name} was a {kind}, the profile's is a "
                    f"{stage.kind}"
                ]
    return []


def apply_fits(profile: Profile, fits: Sequence[StageFit]) -> Profile:
    """``profile`` with the fitted keys set; everything else as it was written. A key the
    fit considered but kept is written too (with its old value), so that the comment saying
    why it was kept has a line to sit above."""
    data = profile.model_dump(mode="json", exclude_unset=True)
    by_name = {f.stage: f for f in fits if f.fitted}
    for stage_data in data["stages"]:
        fit = by_name.get(stage_data["name"])
        if fit is None:
            continue
        for key in fit.keys:
            stage_data[key.key] = key.value
    return Profile.model_validate(data)
