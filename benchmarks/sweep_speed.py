"""Sweep throughput: 20 points of one simulated hour at 100 req/s each, serial vs parallel.

Usage: python benchmarks/sweep_speed.py [--points 20] [--hours 1.0] [--rate 100] [--workers N]

The points are replications (seeds) of scenarios/steady.yaml stretched to ``--hours`` at a
constant ``--rate`` on profiles/hosted-api.yaml, sized so 100 req/s is sustainable: 400
streamed calls in flight and the tier-4 rate limits (a saturated hour would measure a growing
queue, not the sweep). The same points run twice in one process, serially and on the local
process pool, and the table reports both wall times, points per minute and the speed-up,
because absolute speeds on shared machines are noisy; the rows of both runs must be identical.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path
from typing import Any

from ragstress.capacity import plan_points
from ragstress.capacity.overrides import apply_overrides
from ragstress.capacity.sweep import PointRunner
from ragstress.config import load_profile, load_scenario

ROOT = Path(__file__).resolve().parent.parent
SIZING = {
    "stages.generate.concurrency": 400,
    "stages.generate.rate_limit": {"rpm": 10000, "tpm": 20000000},
}


def _canon(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()}
        for r in rows
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=20)
    parser.add_argument("--hours", type=float, default=1.0)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    scenario = load_scenario(ROOT / "scenarios/steady.yaml")
    scenario = scenario.model_copy(update={"duration_s": 3600.0 * args.hours})
    profile = load_profile(ROOT / "profiles/hosted-api.yaml")
    scenario, profile = apply_overrides(scenario, profile, SIZING)
    points = plan_points(scenario, profile, [args.rate], replications=args.points)

    timings: dict[str, float] = {}
    results: dict[str, list[dict[str, Any]]] = {}
    for name, workers in (("serial", 1), ("parallel", args.workers)):
        started = time.perf_counter()
        with PointRunner(scenario, profile, workers=workers) as runner:
            results[name] = runner.run(points)
        timings[name] = time.perf_counter() - started

    requests = sum(int(r["requests"]) for r in results["serial"])
    slo = sum(bool(r["slo_met"]) for r in results["serial"])
    print(
        f"{args.points} points x {args.hours:g} h at {args.rate:g} req/s on hosted-api "
        f"(~{requests:,} requests in the measurement windows; SLO met in {slo}/{args.points})"
    )
    print(f"| {'run':<24} | {'wall time':>10} | {'points / min':>12} | {'speed-up':>8} |")
    print(f"|{'-' * 26}|{'-' * 12}|{'-' * 14}|{'-' * 10}|")
    for name, workers in (("serial", 1), ("parallel", args.workers)):
        wall = timings[name]
        label = f"{name} ({workers} process{'es' if workers > 1 else ''})"
        speed_up = timings["serial"] / wall
        print(
            f"| {label:<24} | {wall:>8.1f} s | {60 * args.points / wall:>12.1f} | "
            f"{speed_up:>7.2f}x |"
        )
    same = _canon(results["serial"]) == _canon(results["parallel"])
    print(f"rows identical serially and in parallel: {same}")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
