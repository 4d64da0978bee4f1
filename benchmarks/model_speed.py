"""Simulated requests per CPU-second: the full pipeline model beside a bare SimPy M/M/4 loop.

Usage: python benchmarks/model_speed.py [--requests N] [--rounds R]

Both are measured in the same process, interleaved round by round, and the table reports the
median of each plus their ratio, because absolute speeds on shared machines are noisy.

Cases: hosted-api (FIFO pools, an LLM API with token-bucket rate limits, openai-python client
policy with a timeout), self-hosted (continuous-batching engines: one event per engine step),
and retry-storm (the scenario stretched to n requests: after the brownout every request makes
three attempts, so the model does ~3× the calls per request) with its guarded variant.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import simpy

from ragstress.analysis import summarize
from ragstress.config import load_profile, load_scenario
from ragstress.model import simulate
from ragstress.workload import build_workload

ROOT = Path(__file__).resolve().parent.parent


def bare_mm4(n: int, seed: int = 1) -> int:
    """M/M/4 at ρ = 0.8 written the simplest way: a process per customer and a Resource."""
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1 / 3.2, n).tolist()
    services = rng.exponential(1.0, n).tolist()
    env = simpy.Environment()
    servers = simpy.Resource(env, capacity=4)
    waits: list[float] = []

    def customer(service: float):  # type: ignore[no-untyped-def]
        arrived = env.now
        with servers.request() as req:
            yield req
            waits.append(env.now - arrived)
            yield env.timeout(service)

    def source():  # type: ignore[no-untyped-def]
        for gap, service in zip(gaps, services, strict=True):
            yield env.timeout(gap)
            env.process(customer(service))

    env.process(source())
    env.run()
    return len(waits)


def pipeline(scenario_file: str, profile_file: str, n: int) -> Callable[[], int]:
    scenario = load_scenario(ROOT / scenario_file)
    profile = load_profile(ROOT / profile_file)
    # stretch the scenario so it holds about n requests at its own rate
    probe = build_workload(scenario)
    scale = n / max(len(probe), 1)
    long = scenario.model_copy(
        update={"duration_s": scenario.duration_s * scale, "max_requests": 10 * n}
    )
    workload = build_workload(long)

    def run() -> int:
        return len(simulate(workload, profile))

    return run


def cpu_rate(fn: Callable[[], int]) -> float:
    start = time.process_time()
    count = fn()
    return count / (time.process_time() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    n = args.requests
    cases: dict[str, Callable[[], int]] = {
        "bare M/M/4 SimPy loop (reference)": lambda: bare_mm4(n),
        "hosted-api pipeline (steady)": pipeline(
            "scenarios/steady.yaml", "profiles/hosted-api.yaml", n
        ),
        "self-hosted pipeline (steady)": pipeline(
            "scenarios/steady.yaml", "profiles/self-hosted.yaml", n
        ),
        "retry-storm (openai-python retries)": pipeline(
            "scenarios/retry-storm.yaml", "profiles/retry-storm.yaml", n
        ),
        "retry-storm-guarded (breaker)": pipeline(
            "scenarios/retry-storm.yaml", "profiles/retry-storm-guarded.yaml", n
        ),
    }
    rates: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, fn in cases.items():  # interleaved: drift hits every case alike
            rates[name].append(cpu_rate(fn))
    # the whole job for comparison: workload + model + summary
    scenario = load_scenario(ROOT / "scenarios/steady.yaml")
    profile = load_profile(ROOT / "profiles/hosted-api.yaml")
    start = time.process_time()
    result = simulate(build_workload(scenario), profile)
    summarize(result)
    whole = len(result) / (time.process_time() - start)

    ref = statistics.median(rates["bare M/M/4 SimPy loop (reference)"])
    print(f"{n:,} requests per run, median of {args.rounds} interleaved rounds, CPU time\n")
    print(f"| {'case':<36} | {'requests / CPU-s':>16} | {'vs bare M/M/4':>13} |")
    print(f"|{'-' * 38}|{'-' * 18}|{'-' * 15}|")
    for name, values in rates.items():
        med = statistics.median(values)
        print(f"| {name:<36} | {med:>16,.0f} | {med / ref:>12.2f}x |")
    print(
        f"\nsteady.yaml end to end on hosted-api (workload + model + summary, "
        f"{len(result):,} requests): {whole:,.0f} requests / CPU-s"
    )


if __name__ == "__main__":
    main()
