"""Charts and a self-contained HTML/Markdown report of one run, a sweep or a plan (reads
results, never runs anything)."""

from ragstress.report.capacity_report import write_capacity_report
from ragstress.report.charts import (
    latency_cdf,
    latency_over_time,
    queues_over_time,
    stage_breakdown,
    throughput_over_time,
)
from ragstress.report.html import write_report

__all__ = [
    "latency_cdf",
    "latency_over_time",
    "queues_over_time",
    "stage_breakdown",
    "throughput_over_time",
    "write_capacity_report",
    "write_report",
]
