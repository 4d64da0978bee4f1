"""Small configurations the tests build again and again: one M/M/c pool, a Poisson scenario,
the reference stack's profile and a small corpus for it."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ragstress.config import Profile, Scenario
from ragstress.reference.settings import CorpusSettings

__all__ = [
    "REFERENCE_PROFILE",
    "TEST_CORPUS",
    "mmc_profile",
    "poisson_scenario",
    "reference_data_dir",
]

REFERENCE_PROFILE = Path(__file__).resolve().parents[1] / "profiles" / "reference.yaml"
# 40 documents of 64-token chunks: ~300 chunks, embedded in a few seconds.
TEST_CORPUS = CorpusSettings(documents=40, seed=7, chunk_tokens=64)


@contextmanager
def reference_data_dir() -> Iterator[Path]:
    """A data folder for a reference stack, directly under the system temp folder, removed
    afterwards. Not under pytest's tmp_path: as root, PostgreSQL runs as the user
    ``pgserver``, which must traverse the folder's parents, and pytest takes group and other
    access off ``/tmp/pytest-of-<user>`` whenever a pytest session starts."""
    path = Path(tempfile.mkdtemp(prefix="ragstress-test-stack-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def mmc_profile(
    servers: int = 2, mean_s: float = 0.1, stage: str = "work", **fields: Any
) -> Profile:
    """One pool stage ``stage``: ``servers`` servers, exponential service with mean
    ``mean_s`` (capacity servers / mean_s req/s); ``fields`` add stage keys (price, …)."""
    return Profile.model_validate(
        {
            "name": "mmc",
            "stages": [
                {
                    "kind": "pool",
                    "name": stage,
                    "concurrency": servers,
                    "service": {"kind": "exponential", "mean": mean_s},
                    **fields,
                }
            ],
        }
    )


def poisson_scenario(
    *, duration_s: float, warmup_s: float, seed: int, rate: float = 1.0, **fields: Any
) -> Scenario:
    """Poisson arrivals at ``rate`` req/s; ``fields`` add scenario keys (slo, faults, …)."""
    return Scenario.model_validate(
        {
            "name": "tiny",
            "duration_s": duration_s,
            "warmup_s": warmup_s,
            "seed": seed,
            "arrivals": {"kind": "poisson", "rate": rate},
            **fields,
        }
    )
