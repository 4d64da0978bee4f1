"""Scenarios materialised into seeded workloads: arrivals, sizes, query texts, traces."""

from ragstress.workload.build import Workload, build_workload
from ragstress.workload.trace import Trace, load_trace

__all__ = ["Trace", "Workload", "build_workload", "load_trace"]
