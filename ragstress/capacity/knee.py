"""The knee of a latency-versus-load curve: where latency stops being flat and starts to climb.

We use Kneedle (Satopää et al., 2011, "Finding a 'Kneedle' in a Haystack") on the logarithm
of latency: normalise offered load and log latency to [0, 1], draw the chord from the first to
the last point, and take the point furthest below it. The logarithm matters. A sweep that
reaches saturation ends in latencies hundreds of times the flat part; on a linear scale that
one point squashes every other to zero and the "knee" lands on the point before the last,
wherever the real bend is. On a log scale a queue's p95 (which grows like 1 / (capacity −
load)) bends where an engineer would point at the chart.

Points past saturation are dropped before the search, all but the first: once throughput
falls short of the offered load (below :data:`SATURATED` of it), the queue grows for as long as
the run lasts and the latency measures the run's length, not the system. (Without this a
saturated tail, which grows only linearly with load, would make the log curve concave and hide
the bend.)

No knee is reported when the curve does not rise (flat, noisy or falling latency) or bends
less than :data:`MIN_BEND` in normalised units: a straight line has no knee, and calling one
would mislead. Pure: numbers in, a point (or None) out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["MIN_BEND", "SATURATED", "Knee", "find_knee"]

MIN_BEND = 0.05  # the furthest point must lie this far below the chord (normalised units)
SATURATED = 0.95  # throughput below this share of the offered load: the queue is growing


@dataclass(frozen=True)
class Knee:
    rate_rps: float
    latency_s: float
    bend: float  # distance below the chord, normalised: 0 (straight) to 1 (a right angle)


def find_knee(
    rates: Sequence[float],
    latencies: Sequence[float],
    throughputs: Sequence[float] | None = None,
) -> Knee | None:
    """The knee of latency (seconds, > 0) against offered rate, or None (see module doc).
    With ``throughputs`` (answers per second at each rate), saturated points after the first
    are dropped. Points with a missing or non-positive latency are ignored; rates need not be
    sorted."""
    served = list(rates) if throughputs is None else list(throughputs)
    triples = sorted(
        (float(r), float(v), float(t))
        for r, v, t in zip(rates, latencies, served, strict=True)
        if math.isfinite(r) and math.isfinite(v) and v > 0
    )
    first_saturated = next(
        (i for i, (r, _, t) in enumerate(triples) if not t >= SATURATED * r), len(triples)
    )
    pairs = [(r, v) for r, v, _ in triples[: first_saturated + 1]]
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
