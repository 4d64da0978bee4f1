"""Maximum sustainable rate: the highest offered load at which the scenario's SLO still holds.

A grid says "somewhere between 200 and 220 req/s"; a search says "213 req/s, ± 2 %". For each
configuration we **bracket** the crossing (from the sweep's grid where it has one, otherwise by
doubling or halving from a start rate), then **bisect** geometrically until the bracket is
narrower than ``tolerance`` (relative). The figure bisected is the SLO ratio of
:func:`ragstress.analysis.summary.slo_ratio`: the worst objective's value over its target, so
≤ 1 means the SLO holds.

Noise. One run near the crossing can land on either side by chance, and bisection trusts every
verdict, so a single unlucky run would move the answer by the whole remaining bracket. Each
probe therefore runs ``replications`` seeds and takes the Student-t 95 % interval of the mean
ratio: entirely below 1 passes, entirely above fails; an interval that straddles 1 gets more
replications, up to ``max_replications``, after which the mean decides and the result is
marked not ``confident`` (the SLO is within noise of its target over the remaining bracket;
longer runs would narrow it). Replication ``r`` uses seed ``seed + r`` at every rate (common
random numbers): the ratio of one seed then moves smoothly with the rate, which keeps the
verdicts of neighbouring probes consistent.

Parallelism. Every configuration's search is a generator that asks for probes; the driver
gathers the current probe of every search into one batch for the :class:`PointRunner`, so a
sweep of eight configurations keeps eight probes' replications in flight at once.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ragstress.capacity.aggregate import mean_interval
from ragstress.capacity.sweep import SweepPoint
from ragstress.config import ConfigError

__all__ = ["Capacity", "Probe", "Runner", "SearchSettings", "find_capacities", "probe"]

MIN_RPS = 1e-3
MAX_RPS = 1e7  # the scenario schema's limit on a rate
MAX_EXPANSIONS = 40  # doublings or halvings while bracketing: 2**40 spans any sane range


class Runner(Protocol):
    """What the search needs of :class:`ragstress.capacity.sweep.PointRunner`: rows (with
    ``config`` and ``slo_ratio``) for a batch of points, in point order."""

    def run(self, points: Sequence[SweepPoint]) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class SearchSettings:
    tolerance: float = 0.02  # stop when (high − low) / low ≤ tolerance
    replications: int = 3  # seeds per probe to start with
    max_replications: int = 12  # seeds per probe at most, when the verdict is within noise
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.tolerance < 1:
            raise ConfigError([f"--tolerance: got {self.tolerance} (allowed: 0 < t < 1)"])
        if self.replications < 1:
            raise ConfigError([f"--replications: got {self.replications} (allowed: 1 or more)"])
        if self.max_replications < self.replications:
            raise ConfigError(
                [
                    f"--max-replications: got {self.max_replications} (allowed: at least "
                    f"--replications, {self.replications})"
                ]
            )


@dataclass(frozen=True)
class Probe:
    """Runs at one rate: the SLO ratio of each replication, and the verdict."""

    rate_rps: float
    ratios: tuple[float, ...]
    mean_ratio: float
    low: float  # 95 % interval of the mean ratio (NaN with a single replication)
    high: float
    passed: bool
    confident: bool


@dataclass(frozen=True)
class Capacity:
    """The search's answer for one configuration.

    ``max_rate_rps`` is the highest rate that passed (0 when none did, down to the floor);
    the crossing lies in [``low_rps``, ``high_rps``) (``high_rps`` is None when the SLO still
    held at the ceiling). ``confident`` is False when some verdict was decided by the mean of
    ``max_replications`` runs whose interval still straddled the target."""

    config: str
    overrides: dict[str, Any] = field(hash=False)
    max_rate_rps: float
    low_rps: float
    high_rps: float | None
    confident: bool
    probes: tuple[Probe, ...]
    runs: int
    note: str = ""


@dataclass(frozen=True)
class Ask:
    """A probe's request: run these replications (seed offsets) at this rate."""

    rate_rps: float
    replications: range


_Search = Generator[Ask, list[float], Capacity]


def probe(rate: float, settings: SearchSettings) -> Generator[Ask, list[float], Probe]:
    """A probe at ``rate``: yields requests for replications, is sent their SLO ratios, and
    returns the verdict once it is clear or the replication budget is spent."""
    ratios: list[float] = []
    want = settings.replications
    while True:
        ratios += yield Ask(rate, range(len(ratios), want))
        mean, low, high = mean_interval(ratios)
        if math.isnan(mean):
            raise ConfigError(
                ["the scenario has no slo: the maximum sustainable rate needs one (set slo:)"]
            )
        if len(ratios) == 1 or math.isnan(low):
            clear = settings.max_replications == 1
        else:
            clear = high <= 1.0 or low > 1.0
        if clear or want >= settings.max_replications:
            return Probe(rate, tuple(ratios), mean, low, high, mean <= 1.0, clear)
        want = min(settings.max_replications, want * 2)


def _search(
    config: str,
    overrides: Mapping[str, Any],
    settings: SearchSettings,
    *,
    start_rps: float,
    passed: Sequence[float],
    failed: Sequence[float],
) -> _Search:
    """One configuration's search; ``passed`` / ``failed`` are grid rates already judged."""
    probes: list[Probe] = []

    def judge(rate: float) -> Generator[Ask, list[float], bool]:
        result = yield from probe(rate, settings)
        probes.append(result)
        return result.passed

    # The grid's verdicts (often one run each) only suggest a bracket: both ends are judged
    # again as probes, and an end that flips makes the bracket grow from it.
    low = max((r for r in passed if not any(f <= r for f in failed)), default=None)
    high = min((r for r in failed if low is None or r > low), default=None)
    note = ""
    if low is None and high is None:
        low = start_rps
    if low is not None and not (yield from judge(low)):
        low, high = None, low
    elif high is not None and (yield from judge(high)):
        low, high = high, None
    for _ in range(MAX_EXPANSIONS):  # bracket
        if low is not None and high is not None:
            break
        if low is not None:
            rate = min(low * 2, MAX_RPS)
            if rate <= low:
                note = f"the SLO holds at the ceiling of {MAX_RPS:g} req/s"
                break
            if (yield from judge(rate)):
                low = rate
            else:
                high = rate
        elif high is not None:
            rate = high / 2
            if rate < MIN_RPS:
                note = f"the SLO fails even at {high:g} req/s"
                break
            if (yield from judge(rate)):
                low = rate
            else:
                high = rate
    if low is not None and high is not None:
        while (high - low) / low > settings.tolerance:  # bisect
            mid = math.sqrt(low * high)
            if (yield from judge(mid)):
                low = mid
            else:
                high = mid
    runs = sum(len(p.ratios) for p in probes)
    return Capacity(
        config=config,
        overrides=dict(overrides),
        max_rate_rps=0.0 if low is None else low,
        low_rps=0.0 if low is None else low,
        high_rps=high,
        confident=all(p.confident for p in probes),
        probes=tuple(probes),
        runs=runs,
        note=note,
    )


def find_capacities(
    runner: Runner,
    configs: Sequence[tuple[str, Mapping[str, Any]]],
    settings: SearchSettings,
    *,
    start_rps: float,
    grid: Sequence[Mapping[str, Any]] = (),
) -> list[Capacity]:
    """Search every configuration (``(label, overrides)`` pairs) at once; ``grid`` holds
    sweep rows whose per-rate verdicts (mean SLO ratio ≤ 1 over their replications) seed the
    brackets. Results come back in ``configs`` order."""
    verdicts: dict[str, tuple[list[float], list[float]]] = {}
    ratios: dict[tuple[str, float], list[float]] = {}
    for row in grid:
        ratios.setdefault((str(row["config"]), float(row["rate_rps"])), []).append(
            float(row["slo_ratio"])
        )
    for (config, rate), values in ratios.items():
        mean = mean_interval(values)[0]
        if math.isnan(mean):
            continue
        passed, failed = verdicts.setdefault(config, ([], []))
        (passed if mean <= 1.0 else failed).append(rate)
    searches: dict[str, _Search] = {}
    asks: dict[str, Ask] = {}
    results: dict[str, Capacity] = {}
    overrides_of = {label: dict(overrides) for label, overrides in configs}
    for label, overrides in configs:
        passed, failed = verdicts.get(label, ([], []))
        search = _search(
            label, overrides, settings, start_rps=start_rps, passed=passed, failed=failed
        )
        searches[label] = search
        asks[label] = next(search)
    while asks:
        points = [
            SweepPoint(label, overrides_of[label], ask.rate_rps, r, settings.seed + r)
            for label, ask in asks.items()
            for r in ask.replications
        ]
        rows = runner.run(points)
        answers: dict[str, list[float]] = {label: [] for label in asks}
        for row in rows:
            answers[str(row["config"])].append(float(row["slo_ratio"]))
        for label, values in answers.items():
            try:
                asks[label] = searches[label].send(values)
            except StopIteration as stop:
                results[label] = stop.value
                del asks[label]
    return [results[label] for label, _ in configs]
