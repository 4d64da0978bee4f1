"""Calibration recovers the parameters a run was simulated with.

Each test simulates a small profile at low load with the model, treats the run as the
measurement (``<stage>_service_s`` as the stage times; and, for the measured path, the
stage time wait + service in ``_service_s`` with ``_wait_s`` empty, as the driver records
the gateway's Server-Timing), calibrates a profile with wrong values, and checks that the
true values come back within the fit's own confidence interval (3 standard errors, so that
fixed-seed runs never sit on the edge) and a stated relative tolerance.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ragstress.api import simulate_scenario
from ragstress.calibration import (
    LoadedRun,
    Options,
    calibrate,
    calibrate_files,
    calibration_text,
    load_run,
)
from ragstress.calibration.fit import DistributionFit, Interval
from ragstress.config import ConfigError, Profile, Scenario, load_profile, parse_config
from ragstress.config.distributions import Deterministic, Exponential, Gamma, LogNormal
from ragstress.results import write_run
from ragstress.results.schema import RunResult
from ragstress.workload import build_workload
from tests.builders import REFERENCE_PROFILE


def scenario(rate: float, *, duration_s: float = 400, seed: int = 1, **mix: Any) -> Scenario:
    return Scenario.model_validate(
        {
            "name": "calibration",
            "duration_s": duration_s,
            "warmup_s": 10,
            "seed": seed,
            "arrivals": {"kind": "poisson", "rate": rate},
            "requests": mix,
        }
    )


def profile(*stages: dict[str, Any]) -> Profile:
    return Profile.model_validate({"name": "truth", "stages": list(stages)})


def as_measured(result: RunResult) -> RunResult:
    """The run as the driver would record it: stage time = wait + service in ``_service_s``,
    ``_wait_s`` empty, no per-stage attempts, source measured."""
    req = dict(result.requests)
    for stage in result.stages:
        wait, service = req[f"{stage}_wait_s"], req[f"{stage}_service_s"]
        req[f"{stage}_service_s"] = service + np.where(np.isfinite(wait), wait, 0.0)
        req[f"{stage}_wait_s"] = np.full(wait.size, np.nan)
        req.pop(f"{stage}_attempts", None)
    manifest = result.manifest.model_copy(update={"source": "measured"})
    return RunResult(manifest=manifest, requests=req)


def run(truth: Profile, sc: Scenario, label: str, *, measured: bool = False) -> LoadedRun:
    result = simulate_scenario(sc, truth).result
    if measured:
        result = as_measured(result)
    return LoadedRun(label, result, build_workload(sc, sc.seed))


def within(est: Interval, true: float, *, rel: float) -> None:
    assert abs(est.value - true) <= 3 * est.se, (est, true)
    assert abs(est.value - true) <= rel * true, (est, true)


def comments(text: str) -> str:
    """The YAML's comment lines joined into one text (the writer wraps long comments)."""
    lines = [line.strip() for line in text.splitlines()]
    return " ".join(line.removeprefix("#").strip() for line in lines if line.startswith("#"))


def pool(service: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"kind": "pool", "name": "work", "service": service, **fields}


PRIOR = {"kind": "exponential", "mean": 1.0}  # a wrong guess that calibration must replace


# --- pool -----------------------------------------------------------------------------------------


def test_pool_lognormal_service_is_recovered_from_service_times() -> None:
    truth = profile(pool({"kind": "lognormal", "mean": 0.02, "cv": 0.5}))
    loaded = run(truth, scenario(8), "ln")  # utilisation 0.16, ~3,100 requests
    cal = calibrate(profile(pool(PRIOR)), [loaded])
    fit = cal.stage("work")
    dfit: DistributionFit = fit.details["service"]
    assert dfit.family == "lognormal"
    assert dfit.n > 3000
    within(dfit.mean, 0.02, rel=0.03)
    assert dfit.cv is not None
    within(dfit.cv, 0.5, rel=0.05)
    service = cal.profile.stage("work").service  # type: ignore[union-attr]
    assert isinstance(service, LogNormal)
    assert service.mean == pytest.approx(dfit.mean.value, rel=1e-4)
    assert any("simulated, not measured" in w for w in cal.warnings)
    assert not any("utilisation" in w or "queueing" in w for w in cal.warnings)


def test_pool_exponential_is_recovered_from_measured_stage_times() -> None:
    # the measured path: _wait_s empty, the stage time includes any queueing; 4 servers at
    # utilisation 0.1 make that negligible (an M/M/4 call waits ~0.01 % of its service)
    truth = profile(pool({"kind": "exponential", "mean": 0.05}, concurrency=4))
    loaded = run(truth, scenario(8), "exp", measured=True)
    assert np.isnan(loaded.result.requests["work_wait_s"]).all()
    cal = calibrate(profile(pool(PRIOR, concurrency=4)), [loaded])
    dfit: DistributionFit = cal.stage("work").details["service"]
    assert dfit.family in ("exponential", "gamma")
    within(dfit.mean, 0.05, rel=0.04)
    service = cal.profile.stage("work").service  # type: ignore[union-attr]
    if isinstance(service, Gamma):
        assert service.cv == pytest.approx(1.0, abs=0.05)
    else:
        assert isinstance(service, Exponential)
    assert not any("utilisation" in w for w in cal.warnings)


def test_pool_deterministic_service_is_deterministic() -> None:
    truth = profile(pool({"kind": "deterministic", "value": 0.01}))
    cal = calibrate(profile(pool(PRIOR)), [run(truth, scenario(5, duration_s=60), "det")])
    service = cal.profile.stage("work").service  # type: ignore[union-attr]
    assert isinstance(service, Deterministic)
    assert service.value == pytest.approx(0.01, rel=1e-6)


def test_pool_per_token_cost_is_recovered_and_taken_off_the_service_time() -> None:
    truth = profile(
        pool({"kind": "gamma", "mean": 0.005, "cv": 0.3}, per_token_s=2e-4, input_tokens="query")
    )
    loaded = run(truth, scenario(10, duration_s=300), "tok")
    cal = calibrate(profile(pool(PRIOR, input_tokens="query")), [loaded])
    fit = cal.stage("work")
    slope = fit.details["per_token_s"]
    assert slope.significant
    assert slope.fit is not None
    within(slope.fit["slope"], 2e-4, rel=0.05)
    dfit: DistributionFit = fit.details["service"]
    within(dfit.mean, 0.005, rel=0.05)
    stage = cal.profile.stage("work")
    assert stage.per_token_s == pytest.approx(slope.value, rel=1e-4)  # type: ignore[union-attr]


def test_a_busy_measured_run_is_flagged() -> None:
    truth = profile(pool({"kind": "exponential", "mean": 0.02}))
    loaded = run(truth, scenario(35, duration_s=100), "busy", measured=True)  # utilisation 0.7
    cal = calibrate(profile(pool(PRIOR)), [loaded])
    text = " ".join(cal.warnings)
    assert "utilisation 0.7" in text
    assert "rise with the calls in flight" in text


# --- batcher --------------------------------------------------------------------------------------


def batcher(base_s: float, per_token_s: float) -> dict[str, Any]:
    return {
        "kind": "batcher",
        "name": "embed",
        "max_batch_size": 16,
        "max_wait_s": 0.002,
        "batch_time": {"base_s": base_s, "per_token_s": per_token_s},
    }


@pytest.mark.parametrize("measured", [False, True], ids=["service", "measured"])
def test_batcher_base_and_per_token_time_are_recovered(measured: bool) -> None:
    truth = profile(batcher(0.003, 5e-5))
    # 10 req/s: a call finds the previous one still there, or gets company within max_wait,
    # ~8 % of the time; those calls are left out
    loaded = run(truth, scenario(10, duration_s=300), "emb", measured=measured)
    cal = calibrate(profile(batcher(0.01, 0.0)), [loaded])
    fit = cal.stage("embed")
    assert fit.fitted
    assert fit.details["max_wait_subtracted"] is measured
    assert 0 < fit.details["left_out"] < 0.12 * fit.n
    base, base_se = fit.details["base_s"]
    slope = fit.details["per_token_s"]
    # batch time is deterministic in the model: the line is exact for lone calls
    assert base == pytest.approx(0.003, rel=1e-3)
    assert slope.value == pytest.approx(5e-5, rel=1e-3)
    batch = cal.profile.stage("embed").batch_time  # type: ignore[union-attr]
    assert (batch.base_s, batch.per_token_s) == (pytest.approx(0.003), pytest.approx(5e-5))
    assert math.isfinite(base_se)


# --- LLM stages -----------------------------------------------------------------------------------

ENGINE_MIX = {
    "chunk_tokens": {"kind": "lognormal", "mean": 200, "cv": 0.5},
    "output_tokens": {"kind": "lognormal", "mean": 60, "cv": 0.5},
}


def engine(base_s: float, per_decode_seq_s: float, per_prefill_token_s: float) -> dict[str, Any]:
    return {
        "kind": "llm_engine",
        "name": "generate",
        "max_num_seqs": 16,
        "kv_cache_tokens": 65536,
        "max_batched_tokens": 1024,
        "step": {
            "base_s": base_s,
            "per_decode_seq_s": per_decode_seq_s,
            "per_prefill_token_s": per_prefill_token_s,
        },
    }


@pytest.fixture(scope="module")
def engine_runs() -> list[LoadedRun]:
    truth = profile(engine(0.010, 0.001, 1e-5))
    # ~1.6, 3.5 and 6 sequences decoding on average: the engine never fills (16)
    return [
        run(truth, scenario(rate, duration_s=200, seed=k, **ENGINE_MIX), f"c{rate}")
        for k, rate in enumerate((1, 3, 5))
    ]


def test_llm_engine_step_is_recovered_from_runs_at_three_loads(
    engine_runs: list[LoadedRun],
) -> None:
    cal = calibrate(profile(engine(0.05, 0.0, 0.0)), engine_runs)
    fit = cal.stage("generate")
    base, _ = fit.details["base_s"]
    pd, _ = fit.details["per_decode_seq_s"]
    assert base == pytest.approx(0.010, rel=0.05)
    assert pd == pytest.approx(0.001, rel=0.05)
    prefill = fit.details["per_prefill_token_s"]
    assert prefill.significant
    assert prefill.value == pytest.approx(1e-5, rel=0.15)
    assert fit.details["decode_fit"].r2 > 0.95
    step = cal.profile.stage("generate").step  # type: ignore[union-attr]
    assert step.base_s == pytest.approx(base, rel=1e-4)
    comment = fit.keys[0].comment
    for part in ("R²=", "residuals 5/50/95 %", "D̄"):
        assert part in comment


def test_llm_engine_measured_path_and_a_single_load_keeps_per_decode(
    engine_runs: list[LoadedRun],
) -> None:
    measured = [LoadedRun(r.label, as_measured(r.result), r.workload, r.notes) for r in engine_runs]
    cal = calibrate(profile(engine(0.05, 0.0, 0.0)), measured)
    base, _ = cal.stage("generate").details["base_s"]
    pd, _ = cal.stage("generate").details["per_decode_seq_s"]
    assert base == pytest.approx(0.010, rel=0.1)
    assert pd == pytest.approx(0.001, rel=0.1)
    # one very quiet run (rarely two answers at once) cannot separate base_s from
    # per_decode_seq_s: the prior is kept, and base_s fitted with it
    truth = profile(engine(0.010, 0.001, 1e-5))
    lone = run(truth, scenario(0.2, duration_s=400, **ENGINE_MIX), "quiet", measured=True)
    quiet = calibrate(profile(engine(0.05, 0.0007, 1e-5)), [lone])
    kept = quiet.stage("generate")
    assert kept.details["base_s"][0] == pytest.approx(0.0103, rel=0.02)  # 0.010 + 0.0003
    assert kept.details["per_decode_seq_s"][0] == 0.0007
    assert "varies too little" in kept.keys[0].comment


@pytest.mark.parametrize("measured", [False, True])
def test_llm_engine_call_overhead_is_recovered(measured: bool) -> None:
    # a gamma overhead of 6 ms mean (cv 0.5) before each engine call: the fit finds its mean
    # from the first tokens, less the prefill step and the step in progress
    truth_stage = engine(0.010, 0.001, 1e-5)
    truth_stage["call_overhead"] = {"kind": "gamma", "mean": 0.006, "cv": 0.5}
    truth = profile(truth_stage)
    runs = [
        run(
            truth,
            scenario(rate, duration_s=200, seed=k, **ENGINE_MIX),
            f"c{rate}",
            measured=measured,
        )
        for k, rate in enumerate((1, 3))
    ]
    cal = calibrate(profile(engine(0.010, 0.001, 1e-5)), runs)
    overhead = cal.profile.stage("generate").call_overhead
    assert isinstance(overhead, Gamma)
    mean, low, high = cal.stage("generate").details["call_overhead"]
    assert low <= 0.006 <= high
    assert mean == pytest.approx(0.006, rel=0.25)  # the prefill slope's error lands here
    assert overhead.mean == pytest.approx(mean, rel=1e-4)
    assert 0.3 < overhead.cv < 0.7
    comment = next(k.comment for k in cal.stage("generate").keys if k.key == "call_overhead")
    assert "found the engine idle" in comment
    assert "call overhead gamma" in cal.stage("generate").summary


def test_caller_time_outside_every_stage_lands_in_the_call_overhead() -> None:
    # a gateway's own 2 ms (parsing, prompt building) before the engine call, seen by the
    # client but by no stage's timing: the first token's overhead takes it, so the model's
    # TTFT keeps it
    truth_stage = engine(0.010, 0.001, 1e-5)
    truth_stage["call_overhead"] = {"kind": "deterministic", "value": 0.004}
    truth = profile(truth_stage)
    runs = []
    for k, rate in enumerate((1, 3)):
        loaded = run(truth, scenario(rate, duration_s=200, seed=k, **ENGINE_MIX), f"c{rate}")
        measured = as_measured(loaded.result)
        req = dict(measured.requests)
        req["latency_s"] = req["latency_s"] + 0.002
        req["ttft_s"] = req["ttft_s"] + 0.002
        runs.append(
            LoadedRun(
                loaded.label, RunResult(manifest=measured.manifest, requests=req), loaded.workload
            )
        )
    cal = calibrate(profile(engine(0.010, 0.001, 1e-5)), runs)
    mean, low, high = cal.stage("generate").details["call_overhead"]
    assert low <= 0.006 <= high
    assert mean == pytest.approx(0.006, rel=0.15)


def test_served_prompts_unlike_the_scenario_are_flagged(engine_runs: list[LoadedRun]) -> None:
    cal = calibrate(profile(engine(0.010, 0.001, 1e-5)), engine_runs)
    assert not any("service reported prompts" in w for w in cal.warnings)
    # the service counted 20 % fewer prompt tokens than the scenario makes
    shrunk = []
    for r in engine_runs:
        req = dict(r.result.requests)
        req["tokens_in"] = np.round(req["tokens_in"] * 0.8).astype(np.int64)
        shrunk.append(
            LoadedRun(r.label, RunResult(manifest=r.result.manifest, requests=req), r.workload)
        )
    cal = calibrate(profile(engine(0.010, 0.001, 1e-5)), shrunk)
    (warning,) = [w for w in cal.warnings if "service reported prompts" in w]
    assert "(+25%)" in warning
    assert "chunk_tokens" in warning


def test_llm_engine_without_overhead_fits_none(engine_runs: list[LoadedRun]) -> None:
    for runs in (
        engine_runs,
        [LoadedRun(r.label, as_measured(r.result), r.workload) for r in engine_runs],
    ):
        cal = calibrate(profile(engine(0.010, 0.001, 1e-5)), runs)
        key = next(k for k in cal.stage("generate").keys if k.key == "call_overhead")
        assert key.value is None, key.comment
        assert cal.profile.stage("generate").call_overhead is None


def test_llm_api_ttft_and_time_per_token_are_recovered() -> None:
    truth = profile(
        {
            "kind": "llm_api",
            "name": "generate",
            "concurrency": 64,
            "ttft": {"kind": "lognormal", "mean": 0.3, "cv": 0.4},
            "prefill_per_token_s": 1e-4,
            "time_per_output_token_s": 0.02,
        }
    )
    loaded = run(truth, scenario(2, duration_s=400, **ENGINE_MIX), "api", measured=True)
    prior = truth.model_dump(mode="json", exclude_unset=True)
    prior["stages"][0].update(
        ttft={"kind": "exponential", "mean": 1.0},
        prefill_per_token_s=0.0,
        time_per_output_token_s=0.5,
    )
    cal = calibrate(Profile.model_validate(prior), [loaded])
    fit = cal.stage("generate")
    slope = fit.details["prefill_per_token_s"]
    assert slope.significant
    assert slope.fit is not None
    within(slope.fit["slope"], 1e-4, rel=0.1)
    dfit: DistributionFit = fit.details["ttft"]
    assert dfit.family == "lognormal"
    within(dfit.mean, 0.3, rel=0.05)
    stage = cal.profile.stage("generate")
    assert stage.time_per_output_token_s == pytest.approx(0.02, rel=1e-4)  # type: ignore[union-attr]


# --- what is kept, and refused --------------------------------------------------------------------


def test_too_few_samples_keep_the_stage_and_say_so() -> None:
    truth = profile(
        pool({"kind": "exponential", "mean": 0.01}),
        {**pool({"kind": "exponential", "mean": 0.01}), "name": "rare"},
    )
    # 'rare' gets only the last 20 requests' times
    loaded = run(truth, scenario(5, duration_s=60), "few")
    req = loaded.result.requests
    req["rare_service_s"][:-20] = np.nan
    cal = calibrate(profile(pool(PRIOR), {**pool(PRIOR), "name": "rare"}), [loaded])
    rare = cal.stage("rare")
    assert not rare.fitted
    assert "fewer than 30" in rare.summary
    assert cal.profile.stage("rare") == cal.original.stage("rare")
    assert any("rare" in w and "fewer than 30" in w for w in cal.warnings)
    text = calibration_text(cal, [loaded], command="c", profile_path="p.yaml")
    assert "calibration: not fitted: 20 usable request(s), fewer than 30" in comments(text)
    assert parse_config(text, Profile, "calibrated.yaml") == cal.profile
    # and with nothing else to fit, that is an error
    with pytest.raises(ConfigError, match="nothing to calibrate: stage rare"):
        calibrate(
            profile(pool(PRIOR), {**pool(PRIOR), "name": "rare"}),
            [loaded],
            Options(stages=("rare",)),
        )


def test_named_stages_must_exist_and_have_data() -> None:
    truth = profile(pool({"kind": "exponential", "mean": 0.01}))
    loaded = run(truth, scenario(5, duration_s=30), "one")
    two = profile(pool(PRIOR), {**pool(PRIOR), "name": "other"})
    with pytest.raises(ConfigError, match="--stage nope: the profile has no such stage"):
        calibrate(two, [loaded], Options(stages=("nope",)))
    with pytest.raises(ConfigError, match="stage other: no times for it"):
        calibrate(two, [loaded], Options(stages=("other",)))
    # not named: a stage without data is kept, with a warning
    cal = calibrate(two, [loaded])
    assert not cal.stage("other").fitted
    assert cal.stage("work").fitted


# --- the reference profile, files and YAML --------------------------------------------------------


@pytest.fixture(scope="module")
def reference_folders(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The reference profile simulated at three low loads, written as run folders."""
    truth = load_profile(REFERENCE_PROFILE)
    base = tmp_path_factory.mktemp("runs")
    folders = []
    for k, rate in enumerate((0.5, 2.0, 4.0)):
        sc = scenario(rate, duration_s=300, seed=k, **ENGINE_MIX)
        sim = simulate_scenario(sc, truth)
        folders.append(write_run(base / f"rate{rate:g}", as_measured(sim.result)))
    return folders


def test_reference_profile_round_trip(reference_folders: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "calibrated.yaml"
    cal = calibrate_files(reference_folders, REFERENCE_PROFILE, out, command="test")
    text = out.read_text()
    again = load_profile(out)
    assert again == cal.profile
    original = load_profile(REFERENCE_PROFILE)
    # untouched keys are equal: every key of every stage except the fitted ones
    fitted = {(f.stage, k.key) for f in cal.stages if f.fitted for k in f.keys if k.changed}
    for old, new in zip(original.stages, again.stages, strict=True):
        for key in type(old).model_fields:
            if (old.name, key) not in fitted:
                assert getattr(new, key) == getattr(old, key), (old.name, key)
    assert again.description == original.description
    assert fitted >= {("embed", "batch_time"), ("retrieve", "service"), ("generate", "step")}
    # the fit comments: above each fitted key, with the data and the quality
    assert text.startswith("# Calibrated by `test` on ")
    notes = comments(text)
    assert "fitted: lognormal, n=" in notes  # retrieve
    for part in ("KS D=", "AIC", "R²="):
        assert part in notes
    for folder in reference_folders:
        assert str(folder) in notes
    lines = text.splitlines()
    step = next(i for i, line in enumerate(lines) if line.strip().startswith("step:"))
    assert lines[step - 1].strip().startswith("#")
    gen = cal.stage("generate")
    base, _ = gen.details["base_s"]
    pd, _ = gen.details["per_decode_seq_s"]
    assert base == pytest.approx(0.010, rel=0.1)
    assert pd == pytest.approx(0.001, rel=0.1)
    emb = cal.stage("embed")
    assert emb.details["max_wait_subtracted"]
    assert emb.details["base_s"][0] == pytest.approx(0.003, rel=0.02)


def test_a_time_scaled_run_rebuilds_its_workload(tmp_path: Path) -> None:
    truth = profile(pool({"kind": "exponential", "mean": 0.01}, input_tokens="query"))
    sc = scenario(4, duration_s=40)
    result = simulate_scenario(sc, truth).result
    scale = 4.0
    req = dict(result.requests)
    req["arrival_s"] = req["arrival_s"] / scale
    scaled = dict(result.manifest.scenario, duration_s=40 / scale, warmup_s=10 / scale)
    manifest = result.manifest.model_copy(
        update={"scenario": scaled, "duration_s": 40 / scale, "source": "measured"}
    )
    folder = write_run(tmp_path / "scaled", RunResult(manifest=manifest, requests=req))
    loaded = load_run(folder)
    # without driver.json the scaled duration makes other requests: detected, tokens unknown
    assert loaded.workload is None
    assert "token counts for the stages are unknown" in loaded.notes[0]
    (folder / "driver.json").write_text(
        json.dumps({"time_scale": scale, "scenario_duration_s": 40, "scenario_warmup_s": 10})
    )
    loaded = load_run(folder)
    assert loaded.workload is not None, loaded.notes
    assert len(loaded.workload) == len(result)
