"""Fault windows and recovery times: exact answers on hand-built runs, bounds on simulated ones."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from ragstress.analysis.recovery import (
    HOLD_ARRIVALS,
    LATENCY_TOLERANCE,
    FaultWindow,
    fault_windows,
    recovery_times,
)
from ragstress.api import simulate_scenario
from ragstress.config.profile import Profile
from ragstress.config.scenario import Scenario
from ragstress.results import Manifest, RunResult

FAULT = {"kind": "capacity_loss", "stage": "search", "start_s": 40, "end_s": 50, "replicas_down": 1}
RATE = 10.0  # arrivals per second in the hand-built runs
NORMAL_S = 0.1
SLOW_S = 5.0

# ------------------------------------------------------------------------------ hand-built runs


def _run(
    *,
    slow: tuple[float, float] | None = None,
    failed: tuple[float, float] | None = None,
    faults: list[dict[str, Any]] | None = None,
    duration: float = 100.0,
    warmup: float = 10.0,
    slo: dict[str, Any] | None = None,
) -> RunResult:
    """Arrivals every 0.1 s (at 0.05, 0.15, …, so none falls on a whole second), answered in
    about 0.1 s, except those arriving in ``slow`` (answered in 5 s) and in ``failed`` (5xx)."""
    arrival = (np.arange(int(duration * RATE)) + 0.5) / RATE
    n = arrival.size
    # a little spread, so percentiles are not all ties: 0.09 … 0.11 s
    latency = NORMAL_S + 0.01 * np.sin(np.arange(n))
    outcome = np.array(["ok"] * n, dtype=object)
    if slow is not None:
        latency[(arrival >= slow[0]) & (arrival < slow[1])] = SLOW_S
    if failed is not None:
        outcome[(arrival >= failed[0]) & (arrival < failed[1])] = "error_5xx"
    zeros = np.zeros(n)
    scenario: dict[str, Any] = {
        "name": "hand",
        "duration_s": duration,
        "warmup_s": warmup,
        "arrivals": {"kind": "constant", "rate": RATE},
        "faults": [FAULT] if faults is None else faults,
    }
    if slo is not None:
        scenario["slo"] = slo
    manifest = Manifest(
        source="measured",
        scenario=scenario,
        profile=None,
        seed=0,
        stages=["search"],
        duration_s=duration,
        ragstress_version="test",
    )
    requests = {
        "id": np.arange(n),
        "arrival_s": arrival,
        "outcome": outcome.astype(str),
        "latency_s": latency,
        "ttft_s": latency.copy(),
        "attempts": np.ones(n, dtype=np.int64),
        "tokens_in": zeros.astype(np.int64),
        "tokens_out": zeros.astype(np.int64),
        "cost_usd": zeros,
    }
    return RunResult(manifest=manifest, requests=requests)


def test_fault_windows_keep_plan_order_and_name_each_fault() -> None:
    faults = [
        {"kind": "outage", "stage": "generate", "start_s": 30, "end_s": 35, "percent": 50},
        {"kind": "capacity_loss", "stage": "search", "start_s": 10, "end_s": 40, "fraction": 0.5},
        {"kind": "error", "stage": "generate", "start_s": 20, "end_s": 25, "status": 503},
    ]
    scenario = {"name": "s", "duration_s": 60, "arrivals": {"kind": "poisson", "rate": 1}}
    windows = fault_windows({**scenario, "faults": faults})
    assert windows == fault_windows(Scenario.model_validate({**scenario, "faults": faults}))
    assert [(w.stage, w.kind, w.start_s, w.end_s) for w in windows] == [
        ("generate", "outage", 30.0, 35.0),
        ("search", "capacity_loss", 10.0, 40.0),
        ("generate", "error", 20.0, 25.0),
    ]
    assert windows[0].label == "generate outage (50 % of calls)"
    assert windows[1].label == "search capacity_loss (−50 %)"
    assert windows[2].label == "generate error (503)"
    assert windows[1].duration_s == 30.0
    assert fault_windows(scenario) == []


def test_no_faults_no_recoveries() -> None:
    assert recovery_times(_run(faults=[])) == []


def test_slow_spell_after_the_window_is_the_recovery_time() -> None:
    # arrivals in [40, 55) are slow: the fault ends at 50, every arrival from 55 on is normal
    (rec,) = recovery_times(_run(slow=(40.0, 55.0)))
    assert rec.window == FaultWindow("search", "capacity_loss", 40.0, 50.0, rec.window.label)
    assert rec.recovered
    assert rec.recovered_at_s == 55.0
    assert rec.recovery_s == 5.0
    # the baseline is the measurement window before the fault: [10, 40), all normal
    assert rec.baseline_p95_s is not None
    assert 0.09 < rec.baseline_p95_s < 0.11
    assert rec.baseline_error_share == 0.0
    assert rec.latency_limit_s == pytest.approx(LATENCY_TOLERANCE * rec.baseline_p95_s)
    assert rec.error_limit == pytest.approx(0.01)
    # the hold period holds HOLD_ARRIVALS arrivals at the baseline rate
    assert rec.hold_s == HOLD_ARRIVALS / RATE
    assert "recovered in 5 s" in str(rec)


def test_a_spell_of_errors_counts_like_slowness() -> None:
    (rec,) = recovery_times(_run(failed=(42.0, 57.0)))
    assert rec.recovered_at_s == 57.0
    assert rec.recovery_s == 7.0


def test_normal_as_soon_as_the_window_ends_is_zero() -> None:
    (rec,) = recovery_times(_run(slow=(40.0, 50.0)))
    assert rec.recovery_s == 0.0
    assert rec.recovered_at_s == 50.0


def test_hold_period_and_the_slo_shape_the_answer() -> None:
    run = _run(slow=(40.0, 55.0))
    (short,) = recovery_times(run, hold_s=2.0)
    assert short.recovered_at_s == 55.0
    assert short.hold_s == 2.0
    # an SLO looser than the slow spell: normal by the SLO as soon as the fault ends
    (loose,) = recovery_times(run, slo={"latency_s": {"p95": 10.0}})
    assert loose.latency_limit_s == 10.0
    assert loose.recovery_s == 0.0
    # an SLO tighter than the baseline does not make the baseline abnormal
    (tight,) = recovery_times(run, slo={"latency_s": {"p95": 0.01}})
    assert tight.recovery_s == 5.0


def test_never_normal_again_is_not_recovered() -> None:
    (rec,) = recovery_times(_run(slow=(40.0, 100.0)))
    assert not rec.recovered
    assert rec.recovered_at_s is None
    assert rec.recovery_s is None
    assert rec.judged
    assert "never back to" in rec.reason
    assert "not recovered" in str(rec)


def test_window_up_to_the_end_of_the_load_cannot_recover() -> None:
    fault = {**FAULT, "start_s": 60, "end_s": 95}
    (rec,) = recovery_times(_run(faults=[fault]))
    assert not rec.recovered
    assert rec.recovery_s is None
    assert "load ends less than" in rec.reason


def test_without_a_baseline_the_slo_judges() -> None:
    # the fault starts where the warm-up ends: nothing to compare with but the SLO
    fault = {**FAULT, "start_s": 10, "end_s": 50}
    run = _run(faults=[fault], slow=(10.0, 53.0), slo={"latency_s": {"p95": 1.0}})
    (rec,) = recovery_times(run)
    assert rec.baseline_p95_s is None
    assert rec.latency_limit_s == 1.0
    assert rec.error_limit == 0.01  # the SLO names no error rate
    # the hold period from 52 s holds 10 slow arrivals of 200: 5 %, which a p95 target
    # tolerates (its p95 interpolates to ≈ 0.35 s, under the 1 s target); from 51 s, 10 %
    assert rec.hold_s == 20.0
    assert rec.recovery_s == 2.0
    assert "SLO" in rec.reason


def test_without_a_baseline_or_an_slo_recovery_is_not_judged() -> None:
    fault = {**FAULT, "start_s": 10, "end_s": 50}
    (rec,) = recovery_times(_run(faults=[fault], slow=(10.0, 53.0)))
    assert not rec.recovered
    assert not rec.judged
    assert rec.recovery_s is None
    assert "cannot judge" in rec.reason


def test_each_window_is_judged_from_its_own_end() -> None:
    faults = [
        {**FAULT, "start_s": 30, "end_s": 40},
        {"kind": "outage", "stage": "search", "start_s": 35, "end_s": 45},
    ]
    (first, second) = recovery_times(_run(faults=faults, slow=(30.0, 48.0)))
    assert first.recovery_s == 8.0
    assert second.recovery_s == 3.0
    assert "other faults active" in first.reason


# ------------------------------------------------------------------------------ simulated runs

# one pool stage: 2 replicas × 4 servers, 0.1 s mean service → serves 80 req/s
POOL: dict[str, Any] = {
    "name": "pool",
    "stages": [
        {
            "kind": "pool",
            "name": "search",
            "replicas": 2,
            "concurrency": 4,
            "service": {"kind": "exponential", "mean": 0.1},
        }
    ],
}
CAPACITY = 80.0


def _simulate(rate: float, faults: list[dict[str, Any]], duration: float = 90.0) -> RunResult:
    scenario = Scenario.model_validate(
        {
            "name": "pool-fault",
            "duration_s": duration,
            "warmup_s": 10,
            "seed": 3,
            "arrivals": {"kind": "poisson", "rate": rate},
            "faults": faults,
        }
    )
    return simulate_scenario(scenario, Profile.model_validate(POOL)).result


def test_simulated_outage_drains_its_backlog_then_recovers() -> None:
    rate, down = 40.0, 10.0
    faults = [
        # every replica down for 10 s: the queue takes the whole load
        {
            "kind": "capacity_loss",
            "stage": "search",
            "start_s": 30,
            "end_s": 40,
            "replicas_down": 2,
        },
        # half of the connections refused for 5 s: errors, but no backlog
        {"kind": "outage", "stage": "search", "start_s": 60, "end_s": 65, "percent": 50},
    ]
    drain, refused = recovery_times(_simulate(rate, faults))
    # 400 requests queue up during the loss; with the servers back, the queue shrinks by the
    # spare capacity, 80 − 40 = 40 req/s, so arrivals meet a normal wait again after ≈ 10 s.
    # Poisson arrivals move the backlog by ±√400 = ±20 requests (±0.5 s) and the limit lets
    # a short queue count as normal, so the answer lies well inside 0.5× to 1.5× of that.
    expected = rate * down / (CAPACITY - rate)
    assert drain.recovered
    assert drain.recovery_s is not None
    assert 0.5 * expected <= drain.recovery_s <= 1.5 * expected
    assert drain.recovered_at_s == pytest.approx(40.0 + drain.recovery_s)
    # refused connections leave nothing behind: normal as soon as the outage ends
    assert refused.recovered
    assert refused.recovery_s is not None
    assert refused.recovery_s <= 2.0


def test_simulated_backlog_too_large_to_drain_is_not_recovered() -> None:
    # at 70 req/s a 20 s loss queues 1,400 requests and the spare capacity is 10 req/s: the
    # backlog needs ≈ 140 s to drain, but the load ends 20 s after the window
    faults = [
        {"kind": "capacity_loss", "stage": "search", "start_s": 50, "end_s": 70, "replicas_down": 2}
    ]
    (rec,) = recovery_times(_simulate(70.0, faults))
    assert not rec.recovered
    assert rec.recovery_s is None
    assert rec.judged


def test_simulated_run_without_faults_has_no_recoveries() -> None:
    assert recovery_times(_simulate(20.0, [], duration=20.0)) == []


def test_recovery_reads_a_stored_scenario_whose_trace_file_moved() -> None:
    run = _run(slow=(40.0, 55.0))
    scenario = {**run.manifest.scenario, "arrivals": {"kind": "trace", "file": "/gone.csv"}}
    moved = RunResult(
        manifest=run.manifest.model_copy(update={"scenario": scenario}), requests=run.requests
    )
    (rec,) = recovery_times(moved)
    assert rec.recovery_s == 5.0
    assert math.isfinite(rec.baseline_p95_s or math.nan)
