"""Run folders on disk. The only code in ragstress that writes results.

Every file is written to a temporary name in the same folder and renamed into place, so a
reader never sees half a file and an interrupted write leaves the previous version intact.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ragstress.results.schema import OUTCOMES, Manifest, RunResult

__all__ = [
    "ResultsError",
    "csv_bytes",
    "json_bytes",
    "read_run",
    "read_summary",
    "write_atomic",
    "write_run",
]

MANIFEST = "manifest.json"
REQUESTS = "requests.csv"
TIMESERIES = "timeseries.csv"
SUMMARY = "summary.json"

# Integer counts, read back as int64: request columns and per-interval time-series counts
_INT_COLUMNS = frozenset(
    {"id", "attempts", "tokens_in", "tokens_out", "in_flight", "arrivals", "status"}
    | {f"completed_{name}" for name in OUTCOMES}
)
# per stage: calls sent per request (``<stage>_attempts``); in the time series, calls sent and
# served per interval and calls queued and in service per sample
_INT_SUFFIXES = ("_attempts", "_sent", "_served", "_queue", "_busy")
# ``error``: a measured request's error message (the driver's requests.csv)
_STR_COLUMNS = frozenset({"outcome", "error"})


class ResultsError(Exception):
    """A run folder is missing or unreadable."""


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        Path(tmp).chmod(0o644)  # mkstemp makes 0600; results are meant to be shared and served
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _cell(value: Any) -> Any:
    # floats keep full precision (repr round-trips); NaN means "did not apply" → empty cell;
    # a mapping or list (a sweep's override value) is written as JSON
    if isinstance(value, float) and math.isnan(value):
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return value


def csv_bytes(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> bytes:
    """CSV text of ``header`` and ``rows``: NaN as an empty cell, floats at full precision."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([_cell(v) for v in row] for row in rows)
    return buf.getvalue().encode()


def _csv_bytes(columns: Mapping[str, np.ndarray]) -> bytes:
    names = list(columns)
    lists = [columns[c].tolist() for c in names]
    return csv_bytes(names, zip(*lists, strict=True))


def json_bytes(obj: Any) -> bytes:
    """Indented JSON of ``obj``; a non-finite float becomes null (JSON has no NaN)."""
    return (
        json.dumps(_nan_to_none(obj), indent=2, allow_nan=False, default=_json_default) + "\n"
    ).encode()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return None if math.isnan(float(obj)) else float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_nan_to_none(v) for v in obj]
    return obj


def write_run(
    folder: str | Path, result: RunResult, summary: Mapping[str, Any] | None = None
) -> Path:
    """Write ``result`` (and its summary, if given) into ``folder``. Returns the folder.

    The manifest goes last, so a folder with a manifest has all its files.
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / REQUESTS, _csv_bytes(result.requests))
    if result.timeseries is not None:
        write_atomic(out / TIMESERIES, _csv_bytes(result.timeseries))
    if summary is not None:
        write_atomic(out / SUMMARY, json_bytes(summary))
    write_atomic(out / MANIFEST, json_bytes(result.manifest.model_dump(mode="json")))
    return out


def _is_int_column(name: str) -> bool:
    return name in _INT_COLUMNS or name.endswith(_INT_SUFFIXES)


def _int_cell(value: str) -> int:
    """An integer cell; empty is 0, and ``3.0`` (a count another tool wrote as a float) is 3."""
    if not value:
        return 0
    try:
        return int(value)
    except ValueError:
        number = float(value)
        if not number.is_integer():
            raise ValueError(f"not an integer count: {value!r}") from None
        return int(number)


def _read_csv(path: Path) -> dict[str, np.ndarray]:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            raise ResultsError(f"{path}: empty file") from None
        rows = list(reader)
    cols: dict[str, np.ndarray] = {}
    for k, name in enumerate(header):
        raw = [r[k] if k < len(r) else "" for r in rows]
        if name in _STR_COLUMNS:
            cols[name] = np.asarray(raw, dtype=str)
        elif _is_int_column(name):
            cols[name] = np.asarray([_int_cell(v) for v in raw], dtype=np.int64)
        else:
            cols[name] = np.asarray([float(v) if v else math.nan for v in raw], dtype=float)
    return cols


def read_run(folder: str | Path) -> RunResult:
    """Read a run folder written by ``write_run`` (simulated or measured)."""
    out = Path(folder)
    manifest_path = out / MANIFEST
    if not manifest_path.is_file():
        raise ResultsError(f"{out}: not a run folder (no {MANIFEST})")
    try:
        manifest = Manifest.model_validate_json(manifest_path.read_text(encoding="utf-8"))
        requests = _read_csv(out / REQUESTS)
        timeseries = _read_csv(out / TIMESERIES) if (out / TIMESERIES).is_file() else None
    except (OSError, ValueError) as exc:
        raise ResultsError(f"{out}: unreadable run folder ({exc})") from None
    return RunResult(manifest=manifest, requests=requests, timeseries=timeseries)


def read_summary(folder: str | Path) -> dict[str, Any] | None:
    path = Path(folder) / SUMMARY
    if not path.is_file():
        return None
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data
