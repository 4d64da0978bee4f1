"""Run a workload through a profile's pipeline on virtual time and return a RunResult.

Pure: no files, no printing, no wall clock, no global random state. Progress is reported
through an optional callback so a CLI can draw a bar without the model knowing about it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import simpy

from ragstress import __version__
from ragstress.config.profile import LlmApiStage, Profile
from ragstress.model.service import StageDemand, stage_demand
from ragstress.model.stations import FifoStation
from ragstress.results.schema import Manifest, RunResult, stage_columns
from ragstress.workload import Workload

__all__ = ["ProgressCallback", "simulate"]

ProgressCallback = Callable[[float], None]

OK, SHED = 0, 1
_OUTCOME_NAMES = np.array(["ok", "shed"])


def simulate(
    workload: Workload,
    profile: Profile,
    *,
    sample_interval_s: float = 1.0,
    progress: ProgressCallback | None = None,
) -> RunResult:
    """Simulate every request of ``workload`` through ``profile`` until the system drains.

    Requests arrive open loop at their intended times; each visits the stages in order.
    The run continues past the scenario's duration until the last request has finished, so
    every arrival ends in exactly one outcome.
    """
    env = simpy.Environment()
    n = len(workload)
    arrivals: list[float] = workload.arrival_s.tolist()
    outcome = [OK] * n
    finished_at = [math.nan] * n
    in_flight = 0

    def complete(i: int) -> None:
        nonlocal in_flight
        finished_at[i] = env.now
        in_flight -= 1

    def shed(i: int) -> None:
        nonlocal in_flight
        outcome[i] = SHED
        finished_at[i] = env.now
        in_flight -= 1

    demands: list[StageDemand] = [stage_demand(s, workload) for s in profile.stages]
    stations: list[FifoStation] = []
    handoff = complete
    for stage, demand in reversed(list(zip(profile.stages, demands, strict=True))):
        station = FifoStation(
            env,
            name=stage.name,
            servers=stage.servers,
            queue_limit=stage.queue_limit,
            service_s=demand.service_s.tolist(),
            first_token_s=None if demand.first_token_s is None else demand.first_token_s.tolist(),
            on_done=handoff,
            on_shed=shed,
        )
        stations.append(station)
        handoff = station.arrive
    stations.reverse()
    enter = stations[0].arrive

    def arrive(event: simpy.Event) -> None:
        nonlocal in_flight
        i: int = event.value  # type: ignore[assignment]  # a Timeout carries the request id
        in_flight += 1
        enter(i)
        if i + 1 < n:
            env.timeout(arrivals[i + 1] - env.now, i + 1).callbacks.append(arrive)

    if n:
        env.timeout(arrivals[0], 0).callbacks.append(arrive)

    # Per-interval samples of the system's state, taken at t = 0, dt, 2dt, … until it drains.
    sample_t: list[float] = []
    sample_in_flight: list[int] = []
    sample_queue: list[list[int]] = [[] for _ in stations]
    sample_busy: list[list[int]] = [[] for _ in stations]
    duration = workload.duration_s

    def sample(event: simpy.Event) -> None:
        sample_t.append(env.now)
        sample_in_flight.append(in_flight)
        for k, st in enumerate(stations):
            sample_queue[k].append(len(st.queue))
            sample_busy[k].append(st.busy)
        if progress is not None:
            progress(min(env.now / duration, 1.0))
        # keep sampling while work remains: arrivals still to come or requests in flight
        if env.now < duration or in_flight > 0:
            env.timeout(sample_interval_s).callbacks.append(sample)

    env.timeout(0).callbacks.append(sample)
    env.run()
    if progress is not None:
        progress(1.0)
    horizon = max(env.now, duration)

    arrival_np = workload.arrival_s
    finished = np.asarray(finished_at)
    outcome_np = np.asarray(outcome, dtype=np.int8)
    ok = outcome_np == OK
    latency = finished - arrival_np

    answer_stage = _answer_stage(profile)
    if answer_stage is not None:
        first_token = stations[answer_stage].first_token_at
        assert first_token is not None
        ttft = np.asarray(first_token) - arrival_np
        ttft[~ok] = math.nan
        tokens_in = demands[answer_stage].tokens_in
        tokens_out = np.where(
            np.isnan(np.asarray(stations[answer_stage].service_s)),
            0,
            demands[answer_stage].tokens_out,
        )
    else:
        # no streaming stage: the first byte of the answer is the whole answer
        ttft = np.where(ok, latency, math.nan)
        tokens_in = workload.query_tokens
        tokens_out = np.zeros(n, dtype=np.int64)

    cost = np.zeros(n)
    columns: dict[str, np.ndarray] = {}
    stage_cols: dict[str, np.ndarray] = {}
    for station, demand in zip(stations, demands, strict=True):
        service = np.asarray(station.service_s)
        cost += np.where(np.isnan(service), 0.0, demand.cost_usd)  # billed once served
        wait_col, service_col = stage_columns(station.name)
        stage_cols[wait_col] = np.asarray(station.wait_s)
        stage_cols[service_col] = service

    columns["id"] = np.arange(n, dtype=np.int64)
    columns["arrival_s"] = arrival_np.copy()
    columns["outcome"] = _OUTCOME_NAMES[outcome_np]
    columns["latency_s"] = latency
    columns["ttft_s"] = ttft
    columns["attempts"] = np.ones(n, dtype=np.int64)
    columns["tokens_in"] = np.asarray(tokens_in, dtype=np.int64).copy()
    columns["tokens_out"] = np.asarray(tokens_out, dtype=np.int64)
    columns["cost_usd"] = cost
    columns.update(stage_cols)

    series: dict[str, np.ndarray] = {
        "t_s": np.asarray(sample_t),
        "in_flight": np.asarray(sample_in_flight, dtype=np.int64),
    }
    for k, st in enumerate(stations):
        series[f"{st.name}_queue"] = np.asarray(sample_queue[k], dtype=np.int64)
        series[f"{st.name}_busy"] = np.asarray(sample_busy[k], dtype=np.int64)

    fixed_cost = sum(
        s.replicas * s.price.per_replica_hour_usd * duration / 3600.0 for s in profile.stages
    )
    manifest = Manifest(
        source="simulated",
        scenario=workload.scenario.model_dump(mode="json"),
        profile=profile.model_dump(mode="json"),
        seed=workload.seed,
        stages=[s.name for s in profile.stages],
        duration_s=duration,
        ragstress_version=__version__,
        complete=True,
        fixed_cost_usd=fixed_cost,
        notes=[f"simulated horizon {horizon:.3f} s"]
        + (["workload truncated at scenario.max_requests"] if workload.truncated else []),
    )
    return RunResult(manifest=manifest, requests=columns, timeseries=series)


def _answer_stage(profile: Profile) -> int | None:
    """The last LLM stage: its first token is the first token the user sees."""
    idx = None
    for k, stage in enumerate(profile.stages):
        if isinstance(stage, LlmApiStage):
            idx = k
    return idx
