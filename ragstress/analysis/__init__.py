"""Statistics over RunResults: percentiles with intervals, goodput, windows, SLO verdicts."""

from ragstress.analysis.stats import Estimate, batch_means_ci, describe, quantile_ci
from ragstress.analysis.summary import good_mask, slo_report, summarize, window_mask
from ragstress.analysis.windows import per_window

__all__ = [
    "Estimate",
    "batch_means_ci",
    "describe",
    "good_mask",
    "per_window",
    "quantile_ci",
    "slo_report",
    "summarize",
    "window_mask",
]
