"""Sweep rows → one row per (configuration, rate): means over replications with intervals.

With two or more replications the interval of a figure is the Student-t 95 % interval of its
mean over the replications (independent runs, so the honest interval). With one replication
the latency percentiles keep the run's own batch-means interval (``…_ci_low_s`` /
``…_ci_high_s``) and other figures have none (NaN). Pure: rows in, rows out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

__all__ = ["AGGREGATED", "aggregate", "by_config", "mean_interval"]

# Figures averaged over replications; each gets ``<figure>_low`` and ``<figure>_high``.
AGGREGATED: tuple[str, ...] = (
    "offered_rps",
    "throughput_rps",
    "goodput_rps",
    "error_rate",
    "latency_p50_s",
    "latency_p95_s",
    "latency_p99_s",
    "ttft_p95_s",
    "cost_usd_per_1k_answers",
    "cost_usd_per_hour",
    "slo_ratio",
)
# One-run intervals that exist for these figures, used when there is a single replication.
_RUN_CI = {
    "latency_p50_s": ("latency_p50_ci_low_s", "latency_p50_ci_high_s"),
    "latency_p95_s": ("latency_p95_ci_low_s", "latency_p95_ci_high_s"),
    "latency_p99_s": ("latency_p99_ci_low_s", "latency_p99_ci_high_s"),
}


def mean_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean of the finite ``values`` and its Student-t interval; NaN bounds for fewer than
    two values, all NaN for none."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if x.size < 2:
        return mean, math.nan, math.nan
    half = (
        float(stats.t.ppf(0.5 + level / 2, x.size - 1)) * float(x.std(ddof=1)) / math.sqrt(x.size)
    )
    return mean, mean - half, mean + half


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def aggregate(rows: Iterable[Mapping[str, Any]], extra: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Group ``rows`` by (``config``, ``rate_rps``), in first-seen order. Each group gives
    ``config``, ``rate_rps``, ``replications``, ``slo_met`` (every replication met it),
    ``slo_met_share``, and for each figure of :data:`AGGREGATED` and ``extra`` (e.g.
    per-stage columns) its mean, ``<figure>_low`` and ``<figure>_high``."""
    groups: dict[tuple[str, float], list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault((str(row["config"]), _float(row["rate_rps"])), []).append(row)
    out: list[dict[str, Any]] = []
    for (config, rate), members in groups.items():
        met = [str(r.get("slo_met")).lower() in ("true", "1") for r in members]
        entry: dict[str, Any] = {
            "config": config,
            "rate_rps": rate,
            "replications": len(members),
            "slo_met": all(met),
            "slo_met_share": sum(met) / len(met),
        }
        for figure in (*AGGREGATED, *extra):
            mean, low, high = mean_interval([_float(r.get(figure)) for r in members])
            if len(members) == 1 and figure in _RUN_CI:
                low_key, high_key = _RUN_CI[figure]
                low, high = _float(members[0].get(low_key)), _float(members[0].get(high_key))
            entry[figure], entry[f"{figure}_low"], entry[f"{figure}_high"] = mean, low, high
        out.append(entry)
    return out


def by_config(aggregated: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """Aggregated rows split by configuration (first-seen order), each sorted by rate."""
    out: dict[str, list[Mapping[str, Any]]] = {}
    for row in aggregated:
        out.setdefault(str(row["config"]), []).append(row)
    return {k: sorted(v, key=lambda r: float(r["rate_rps"])) for k, v in out.items()}
