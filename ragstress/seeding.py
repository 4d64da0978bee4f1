"""Named, independent random streams derived from one seed. No global random state.

Each consumer asks for its own stream by name, so adding a stage or changing one distribution
never shifts the numbers another part draws (and sweeps get common random numbers for free).
"""

from __future__ import annotations

import zlib

import numpy as np

__all__ = ["stream"]


def stream(seed: int, *names: str | int) -> np.random.Generator:
    """A generator for ``seed`` and a path of names, e.g. ``stream(7, "stage", "embed")``."""
    key = tuple(n if isinstance(n, int) else zlib.crc32(n.encode()) for n in names)
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=key)))
