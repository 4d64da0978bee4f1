"""The knee of a latency-versus-load curve: where latency stops being flat and starts to climb.

We use Kneedle (Satopää et al., 2011, "Finding a 'Kneedle' in a Haystack") on the logarithm
of latency: normalise offered load and log latency to [0, 1], draw the chord from the first to
the last point, and take the point furthest below it. The logarithm matters. A sweep that
reaches saturation ends in latencies hundreds of times the flat part; on a linear scale that
one point squashes every other to zero and the "knee" lands on the point before the last,
wherever the real bend is. On a log scale a queue's p95 (which grows like 1 / (capacity −
load)) bends where an engineer would point at the chart.

No knee is reported when the curve does not rise (flat, noisy or falling latency) or bends
less than :data:`MIN_BEND` in normalised units: a straight line has no knee, and calling one
would mislead. Pure: numbers in, a point (or None) out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["MIN_BEND", "Knee", "find_knee"]

MIN_BEND = 0.05  # the furthest point must lie this far below the chord (normalised units)


@dataclass(frozen=True)
class Knee:
    rate_rps: float
    latency_s: float
    bend: float  # distance below the chord, normalised: 0 (straight) to 1 (a right angle)


def find_knee(rates: Sequence[float], latencies: Sequence[float]) -> Knee | None:
    """The knee of latency (seconds, > 0) against offered rate, or None (see module doc).
    Points with a missing or non-positive latency are ignored; rates need not be sorted."""
    pairs = sorted(
        (float(r), float(v))
        for r, v in zip(rates, latencies, strict=True)
        if math.isfinite(r) and math.isfinite(v) and v > 0
    )
    if len(pairs) < 3:
        return None
    x = np.array([p[0] for p in pairs])
    y = np.log(np.array([p[1] for p in pairs]))
    if x[-1] <= x[0] or y[-1] <= y[0]:
        return None
    xn = (x - x[0]) / (x[-1] - x[0])
    yn = (y - y[0]) / (y[-1] - y[0])
    below = xn - yn  # a convex, rising curve lies below its chord
    i = int(np.argmax(below[1:-1])) + 1
    if below[i] < MIN_BEND:
        return None
    return Knee(float(x[i]), float(math.exp(y[i])), float(below[i]))
