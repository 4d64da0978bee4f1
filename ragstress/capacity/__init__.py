"""Capacity planning: sweeps of offered rate and configuration over the simulator.

``ragstress sweep`` is a thin layer over this package: parse the flags
(:mod:`ragstress.capacity.overrides`), plan and run the points, write ``sweep.csv`` and
``sweep.json`` (:mod:`ragstress.capacity.sweep`).
"""

from ragstress.capacity.aggregate import aggregate, by_config
from ragstress.capacity.knee import Knee, find_knee
from ragstress.capacity.overrides import (
    Override,
    apply,
    apply_overrides,
    parse_rates,
    parse_set,
    with_rate,
)
from ragstress.capacity.search import Capacity, SearchSettings, find_capacities
from ragstress.capacity.sweep import (
    PointRunner,
    SweepPoint,
    plan_points,
    run_point,
    run_sweep,
    write_sweep,
)

__all__ = [
    "Capacity",
    "Knee",
    "Override",
    "PointRunner",
    "SearchSettings",
    "SweepPoint",
    "aggregate",
    "apply",
    "apply_overrides",
    "by_config",
    "find_capacities",
    "find_knee",
    "parse_rates",
    "parse_set",
    "plan_points",
    "run_point",
    "run_sweep",
    "with_rate",
    "write_sweep",
]
