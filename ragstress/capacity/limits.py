"""Per configuration of a sweep: the knee of its latency curve and its maximum sustainable rate.

The knee comes from the grid (mean p95 over replications at each rate, :mod:`.knee`); the
maximum sustainable rate from the search (:mod:`.search`), seeded by the grid's verdicts.
Written as ``capacity.csv`` (one row per configuration) and ``capacity.json`` (the rows, every
probe of every search, and the settings), next to the sweep's own files.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ragstress.capacity.aggregate import aggregate, by_config
from ragstress.capacity.knee import find_knee
from ragstress.capacity.search import Capacity, SearchSettings
from ragstress.config import Slo
from ragstress.results.store import csv_bytes, json_bytes, write_atomic

__all__ = [
    "CAPACITY_COLUMNS",
    "CAPACITY_CSV",
    "CAPACITY_JSON",
    "capacity_rows",
    "has_objectives",
    "write_capacity",
]

CAPACITY_CSV = "capacity.csv"
CAPACITY_JSON = "capacity.json"
CAPACITY_COLUMNS: tuple[str, ...] = (
    "config",
    "knee_rps",
    "knee_latency_p95_s",
    "max_rate_rps",
    "bracket_low_rps",
    "bracket_high_rps",
    "confident",
    "probes",
    "runs",
    "note",
)


def has_objectives(slo: Slo) -> bool:
    """Whether the SLO names anything to search against."""
    targets = [slo.latency_s, slo.ttft_s]
    return slo.error_rate is not None or any(t is not None and t.items() for t in targets)


def _served(row: Mapping[str, Any]) -> float:
    """Requests per second the system got through, answered or failed: a fault that fails a
    share of calls at every rate is not saturation, a queue that cannot keep up is."""
    error = float(row["error_rate"])
    answered = float(row["throughput_rps"])
    if not math.isfinite(error) or error >= 1.0:
        return answered
    return answered / (1.0 - error)


def capacity_rows(
    rows: Sequence[Mapping[str, Any]],
    configs: Sequence[tuple[str, Mapping[str, Any]]],
    capacities: Sequence[Capacity] | None,
) -> list[dict[str, Any]]:
    """One row per configuration: its overrides, knee and (when searched) capacity."""
    curves = by_config(aggregate(rows))
    found = {c.config: c for c in capacities or ()}
    out: list[dict[str, Any]] = []
    for label, overrides in configs:
        curve = curves.get(label, [])
        knee = find_knee(
            [float(r["rate_rps"]) for r in curve],
            [float(r["latency_p95_s"]) for r in curve],
            [_served(r) for r in curve],
        )
        cap = found.get(label)
        entry: dict[str, Any] = {
            "config": label,
            **overrides,
            "knee_rps": math.nan if knee is None else knee.rate_rps,
            "knee_latency_p95_s": math.nan if knee is None else knee.latency_s,
            "max_rate_rps": math.nan if cap is None else cap.max_rate_rps,
            "bracket_low_rps": math.nan if cap is None else cap.low_rps,
            "bracket_high_rps": math.nan if cap is None or cap.high_rps is None else cap.high_rps,
            "confident": None if cap is None else cap.confident,
            "probes": 0 if cap is None else len(cap.probes),
            "runs": 0 if cap is None else cap.runs,
            "note": "" if cap is None else cap.note,
        }
        out.append(entry)
    return out


def write_capacity(
    folder: str | Path,
    table: Sequence[Mapping[str, Any]],
    override_keys: Sequence[str],
    *,
    capacities: Sequence[Capacity] | None,
    settings: SearchSettings | None,
    slo: Slo,
) -> None:
    """``capacity.csv`` and ``capacity.json`` (with every probe), each written atomically."""
    out = Path(folder)
    header = ["config", *override_keys, *CAPACITY_COLUMNS[1:]]
    write_atomic(
        out / CAPACITY_CSV, csv_bytes(header, ([row.get(c) for c in header] for row in table))
    )
    document = {
        "slo": slo.model_dump(mode="json", exclude_none=True),
        "search": None if settings is None else asdict(settings),
        "configs": list(table),
        "probes": {c.config: [asdict(p) for p in c.probes] for c in capacities or ()},
    }
    write_atomic(out / CAPACITY_JSON, json_bytes(document))
