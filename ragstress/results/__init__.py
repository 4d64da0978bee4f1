"""RunResult schema and the store that reads and writes run folders (the only writer)."""

from ragstress.results.schema import BASE_COLUMNS, OUTCOMES, Manifest, RunResult, stage_columns
from ragstress.results.store import read_run, write_run

__all__ = [
    "BASE_COLUMNS",
    "OUTCOMES",
    "Manifest",
    "RunResult",
    "read_run",
    "stage_columns",
    "write_run",
]
