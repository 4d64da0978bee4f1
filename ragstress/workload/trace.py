"""Recorded traffic: arrival offsets and token counts from a CSV trace."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ragstress.config.loader import ConfigError

__all__ = ["Trace", "load_trace"]

AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
PLAIN_COLUMNS = ("arrival_s", "input_tokens", "output_tokens")


@dataclass(frozen=True)
class Trace:
    """Arrival offsets in seconds from the first record, sorted, with token counts."""

    arrival_s: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray


def load_trace(path: Path) -> Trace:
    """Read an Azure LLM inference trace or a plain ``arrival_s,input_tokens,output_tokens`` CSV."""
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise ConfigError([f"{path}:1: (header): empty trace (expected a header row)"])
        header = [h.strip() for h in header]
        if tuple(header[:3]) == AZURE_COLUMNS:
            azure = True
        elif tuple(header[:3]) == PLAIN_COLUMNS:
            azure = False
        else:
            raise ConfigError(
                [
                    f"{path}:1: (header): unknown trace header {','.join(header)!r} "
                    f"(allowed: {','.join(AZURE_COLUMNS)} or {','.join(PLAIN_COLUMNS)})"
                ]
            )
        stamps: list[str] = []
        inputs: list[int] = []
        outputs: list[int] = []
        for lineno, row in enumerate(reader, start=2):
            if not row:
                continue
            try:
                stamps.append(row[0])
                inputs.append(int(row[1]))
                outputs.append(int(row[2]))
            except (IndexError, ValueError):
                raise ConfigError(
                    [
                        f"{path}:{lineno}: {','.join(header[:3])}: expected a time and two "
                        f"whole token counts, got {','.join(row)!r}"
                    ]
                ) from None
    if not stamps:
        raise ConfigError([f"{path}:2: (records): the trace has no records"])
    try:
        if azure:
            ts = np.array(stamps, dtype="datetime64[ns]")
            offsets = (ts - ts.min()).astype(np.int64) / 1e9
        else:
            offsets = np.array(stamps, dtype=float)
            offsets = offsets - offsets.min()
    except ValueError:
        raise ConfigError([_bad_stamp(path, stamps, header[0], azure)]) from None
    order = np.argsort(offsets, kind="stable")
    return Trace(
        arrival_s=offsets[order],
        input_tokens=np.asarray(inputs, dtype=np.int64)[order],
        output_tokens=np.asarray(outputs, dtype=np.int64)[order],
    )


def _bad_stamp(path: Path, stamps: list[str], column: str, azure: bool) -> str:
    """Locate the first unreadable time (only on the error path: one parse per row)."""
    for lineno, stamp in enumerate(stamps, start=2):
        try:
            np.datetime64(stamp, "ns") if azure else float(stamp)
        except ValueError:
            expected = "YYYY-MM-DD HH:MM:SS.fffffff" if azure else "seconds as a number"
            return f"{path}:{lineno}: {column}: unreadable time {stamp!r} (expected {expected})"
    return f"{path}:2: {column}: unreadable times"
