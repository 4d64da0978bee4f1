"""Per-interval views of a run: load, completions by outcome and latency over time."""

from __future__ import annotations

import math

import numpy as np

from ragstress.results.schema import ANSWERED, RunResult

__all__ = ["per_window"]


def per_window(result: RunResult, width_s: float = 1.0) -> dict[str, np.ndarray]:
    """Columns indexed by window start ``t_s``: arrivals (by intended arrival), completions
    and errors (by finishing time), and latency percentiles of the requests that *arrived*
    in the window (so a slow period is charged to the load that met it)."""
    req = result.requests
    arrival = req["arrival_s"]
    finish = arrival + req["latency_s"]
    end = max(result.manifest.duration_s, float(np.nanmax(finish)) if finish.size else 0.0)
    edges = np.arange(0.0, end + width_s, width_s)
    if edges.size < 2:
        edges = np.array([0.0, width_s])
    n_win = edges.size - 1
    answered = np.isin(req["outcome"], list(ANSWERED))
    arrivals, _ = np.histogram(arrival, bins=edges)
    completed, _ = np.histogram(finish[answered], bins=edges)
    failed, _ = np.histogram(finish[~answered], bins=edges)
    idx = np.clip(np.floor(arrival / width_s).astype(np.int64), 0, n_win - 1)
    p50 = np.full(n_win, math.nan)
    p95 = np.full(n_win, math.nan)
    lat = req["latency_s"]
    order = np.argsort(idx, kind="stable")
    sorted_idx = idx[order]
    bounds = np.searchsorted(sorted_idx, np.arange(n_win + 1))
    for w in range(n_win):
        rows = order[bounds[w] : bounds[w + 1]]
        rows = rows[answered[rows]]
        if rows.size:
            p50[w], p95[w] = np.percentile(lat[rows], [50, 95])
    return {
        "t_s": edges[:-1],
        "arrivals_rps": arrivals / width_s,
        "throughput_rps": completed / width_s,
        "errors_rps": failed / width_s,
        "latency_p50_s": p50,
        "latency_p95_s": p95,
    }
