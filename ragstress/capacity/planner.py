"""The cheapest configuration whose SLO holds at the planned peak: ``ragstress plan``.

The space is the product of the profile's ``knobs`` (replicas, batch sizes, rate-limit tiers,
cache on or off, model choice...). Trying every combination at peak load is what a grid sweep
does; the planner prunes instead, with rules that never change the answer:

1. **Monotonicity.** A knob marked ``monotone`` promises that moving along its list never
   lowers capacity and never lowers cost (more replicas, a higher tier). So when a
   configuration fails the SLO, every configuration no larger on each monotone knob (and equal
   on the others) fails too: ``pruned-monotone``. When one passes, every configuration above
   it passes and costs at least as much, so none of them can be cheaper: ``pruned-dominated``.
2. **Bisection.** Among configurations not yet settled, the next one evaluated is the one
   that settles the most others whichever way it comes out (ties: the cheapest). Along one
   monotone knob that is bisection: replicas 1 to 16 take about 4 evaluations, not 16; with
   several monotone knobs it walks the staircase of minimal feasible configurations.
3. **Cost bound, early stop.** A configuration's replica-hours cost is known without
   simulating it (replicas × price per replica-hour over the stages), and per-call charges are
   never negative, so that fixed cost is a lower bound on its dollars per hour. Once ``top``
   feasible configurations are known, any configuration whose bound is no lower than the
   ``top``-th cheapest of them cannot enter the ranking and is never run: ``pruned-cost``.

Each evaluation is a probe of :mod:`.search` at ``peak × (1 + headroom)``: replications added
while the 95 % interval of the mean SLO ratio straddles 1. ``batch`` configurations are probed
side by side (the most informative ones), so a pool of workers stays busy; a bigger batch may
run a configuration a smaller one would have skipped, never choose differently. The batch is a
setting, not the number of workers, so the same plan comes out on any machine or cluster.
The ranking lists the cheapest feasible configurations of the frontier (those not above
another feasible one), each with its maximum sustainable rate searched. Pure apart from what
the runner simulates.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ragstress.capacity.aggregate import mean_interval
from ragstress.capacity.overrides import apply_overrides, with_rate
from ragstress.capacity.search import Probe, Runner, SearchSettings, find_capacities, probe
from ragstress.capacity.sweep import SweepPoint
from ragstress.config import ConfigError, Profile, Scenario

__all__ = ["Candidate", "Plan", "PlanSettings", "candidates", "make_plan"]

# Choosing the next configuration compares every open one with every other (numpy, O(n²)):
# a few thousand stay fast; more means knobs nobody meant to search exhaustively.
MAX_CANDIDATES = 4096


@dataclass(frozen=True)
class PlanSettings:
    peak_rps: float
    headroom: float = 0.2
    top: int = 3
    search: SearchSettings = field(default_factory=SearchSettings)
    # configurations probed side by side: part of the plan's definition, not of the machine,
    # so a plan gives the same result serially, in local processes and on Dask
    batch: int = 4

    def __post_init__(self) -> None:
        if not (math.isfinite(self.peak_rps) and self.peak_rps > 0):
            raise ConfigError([f"--peak: got {self.peak_rps} (allowed: a rate > 0 in req/s)"])
        if not (math.isfinite(self.headroom) and 0 <= self.headroom <= 10):
            raise ConfigError(
                [f"--headroom: got {self.headroom:.0%} (allowed: 0% to 1000%, e.g. 20%)"]
            )
        if self.top < 1:
            raise ConfigError([f"--top: got {self.top} (allowed: 1 or more)"])
        if self.batch < 1:
            raise ConfigError([f"--batch: got {self.batch} (allowed: 1 or more)"])

    @property
    def target_rps(self) -> float:
        return self.peak_rps * (1 + self.headroom)


@dataclass(frozen=True)
class Candidate:
    """One configuration of the knob space and what the planner learned of it.

    ``status``: ``feasible`` / ``infeasible`` (evaluated at the target rate),
    ``pruned-monotone`` (below a failed configuration), ``pruned-dominated`` (above a feasible
    one) or ``pruned-cost`` (its cost bound could not beat the ranking); pruned ones never
    ran."""

    config: str
    overrides: dict[str, Any] = field(hash=False)
    positions: tuple[int, ...]
    fixed_usd_per_hour: float
    status: str = "pending"
    probe: Probe | None = None
    usd_per_hour: float = math.nan
    usd_per_1k_answers: float = math.nan
    latency_p95_s: float = math.nan
    rank: int | None = None
    max_rate_rps: float = math.nan

    def row(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "overrides": self.overrides,
            "fixed_usd_per_hour": self.fixed_usd_per_hour,
            "status": self.status,
            "usd_per_hour": self.usd_per_hour,
            "usd_per_1k_answers": self.usd_per_1k_answers,
            "latency_p95_s": self.latency_p95_s,
            "slo_ratio": math.nan if self.probe is None else self.probe.mean_ratio,
            "replications": 0 if self.probe is None else len(self.probe.ratios),
            "rank": self.rank,
            "max_rate_rps": self.max_rate_rps,
        }


@dataclass(frozen=True)
class Plan:
    settings: PlanSettings
    candidates: list[Candidate]  # every configuration of the space, in knob order
    runs: int  # simulations run, capacity searches included

    @property
    def ranked(self) -> list[Candidate]:
        return sorted((c for c in self.candidates if c.rank), key=lambda c: c.rank or 0)

    @property
    def chosen(self) -> Candidate | None:
        ranked = self.ranked
        return ranked[0] if ranked else None

    def count(self, status: str) -> int:
        return sum(c.status == status for c in self.candidates)

    @property
    def evaluated(self) -> int:
        return self.count("feasible") + self.count("infeasible")


def _fixed_usd_per_hour(profile: Profile) -> float:
    return sum(s.replicas * s.price.per_replica_hour_usd for s in profile.stages)


def candidates(scenario: Scenario, profile: Profile) -> list[Candidate]:
    """Every configuration of the profile's knobs, first knob varying slowest, each applied
    (so an invalid one fails here, before anything runs) and priced at its fixed cost."""
    knobs = profile.knobs
    if not knobs:
        raise ConfigError(
            [
                f"profile {profile.name!r} declares no knobs: ragstress plan needs a knobs: list "
                "(e.g. - key: stages.generate.replicas, values: [1, 2, 4], monotone: true)"
            ]
        )
    choices = [knob.choices() for knob in knobs]
    size = math.prod(len(c) for c in choices)
    if size > MAX_CANDIDATES:
        raise ConfigError(
            [f"knobs: {size} configurations (allowed: at most {MAX_CANDIDATES}); fewer values"]
        )
    out: list[Candidate] = []
    for combo in itertools.product(*(enumerate(c) for c in choices)):
        overrides: dict[str, Any] = {}
        for _, (_, sets) in combo:
            overrides.update(sets)
        label = " ".join(text for _, (text, _) in combo)
        try:
            _, prof = apply_overrides(scenario, profile, overrides)
        except ConfigError as exc:
            raise ConfigError([f"knobs ({label}): {p}" for p in exc.problems]) from None
        positions = tuple(i for i, _ in combo)
        out.append(Candidate(label, overrides, positions, _fixed_usd_per_hour(prof)))
    return out


def _indices(mask: np.ndarray) -> list[int]:
    return [int(i) for i in np.flatnonzero(mask)]


class _Space:
    """Which configurations each result implies something about, under the knobs' promises."""

    def __init__(self, space: Sequence[Candidate], monotone: Sequence[bool]) -> None:
        pos = np.array([c.positions for c in space], dtype=np.int64).reshape(len(space), -1)
        mono = np.array(monotone, dtype=bool)
        self._mono = pos[:, mono]
        self._other = pos[:, ~mono]

    def below(self, i: int) -> np.ndarray:
        """Configurations no larger than ``i`` on every monotone knob, equal on the others."""
        same = (self._other == self._other[i]).all(axis=1)
        return np.asarray(same & (self._mono <= self._mono[i]).all(axis=1))

    def above(self, i: int) -> np.ndarray:
        same = (self._other == self._other[i]).all(axis=1)
        return np.asarray(same & (self._mono >= self._mono[i]).all(axis=1))


def make_plan(runner: Runner, scenario: Scenario, profile: Profile, settings: PlanSettings) -> Plan:
    """Search the knob space (see the module doc); ``runner`` simulates on ``scenario`` and
    ``profile`` as given, the planner adds each configuration's overrides and the rate."""
    with_rate(scenario, settings.target_rps)  # a trace scenario fails here
    space = candidates(scenario, profile)
    geometry = _Space(space, [knob.monotone for knob in profile.knobs])
    n = len(space)
    fixed = np.array([c.fixed_usd_per_hour for c in space])
    open_ = np.ones(n, dtype=bool)  # nothing known or implied yet
    runs = 0

    def bar() -> float:
        costs = sorted(c.usd_per_hour for c in space if c.status == "feasible")
        return costs[settings.top - 1] if len(costs) >= settings.top else math.inf

    while True:
        # a configuration that cannot beat the ranking's last place is never run
        for i in _indices(open_ & (fixed >= bar())):
            space[i] = replace(space[i], status="pruned-cost")
            open_[i] = False
        if not open_.any():
            break
        # the most informative configurations first: whichever way one comes out, it settles
        # as many others as possible (a bisection along each monotone knob), cheapest first
        scores = []
        for i in _indices(open_):
            settled = min(
                int((open_ & geometry.below(i)).sum()), int((open_ & geometry.above(i)).sum())
            )
            scores.append((-settled, fixed[i], int(i)))
        batch = [i for _, _, i in sorted(scores)[: settings.batch]]
        for i, (cand, used) in zip(
            batch, _evaluate(runner, [space[i] for i in batch], settings), strict=True
        ):
            runs += used
            space[i] = cand
            open_[i] = False
            implied = geometry.below(i) if cand.status == "infeasible" else geometry.above(i)
            status = "pruned-monotone" if cand.status == "infeasible" else "pruned-dominated"
            for j in _indices(open_ & implied):
                space[j] = replace(space[j], status=status)
                open_[j] = False
    index = {c.config: i for i, c in enumerate(space)}
    feasible = sorted(
        (c for c in space if c.status == "feasible"),
        key=lambda c: (c.usd_per_hour, index[c.config]),
    )
    # a feasible configuration above another feasible one is no cheaper (the monotone promise)
    # and no more interesting: rank the frontier
    frontier = [
        c
        for c in feasible
        if not any(
            o is not c and geometry.below(index[c.config])[index[o.config]] for o in feasible
        )
    ][: settings.top]
    if frontier:
        caps = find_capacities(
            runner,
            [(c.config, c.overrides) for c in frontier],
            settings.search,
            start_rps=settings.target_rps,
        )
        runs += sum(cap.runs for cap in caps)
        for rank, (cand, cap) in enumerate(zip(frontier, caps, strict=True), start=1):
            space[index[cand.config]] = replace(cand, rank=rank, max_rate_rps=cap.max_rate_rps)
    return Plan(settings, space, runs)


def _evaluate(
    runner: Runner, batch: Sequence[Candidate], settings: PlanSettings
) -> list[tuple[Candidate, int]]:
    """Probe each candidate of ``batch`` at the target rate, side by side: the evaluated
    candidates, in order, with the runs each took."""
    search = settings.search
    rate = settings.target_rps
    probes = {c.config: probe(rate, search) for c in batch}
    asks = {label: next(gen) for label, gen in probes.items()}
    rows: dict[str, list[Mapping[str, Any]]] = {c.config: [] for c in batch}
    done: dict[str, Probe] = {}
    by_label = {c.config: c for c in batch}
    while asks:
        points = [
            SweepPoint(label, by_label[label].overrides, ask.rate_rps, r, search.seed + r)
            for label, ask in asks.items()
            for r in ask.replications
        ]
        answers: dict[str, list[float]] = {label: [] for label in asks}
        for row in runner.run(points):
            label = str(row["config"])
            rows[label].append(row)
            answers[label].append(float(row["slo_ratio"]))
        for label, ratios in answers.items():
            try:
                asks[label] = probes[label].send(ratios)
            except StopIteration as stop:
                done[label] = stop.value
                del asks[label]
    out = []
    for cand in batch:
        result = done[cand.config]
        got = rows[cand.config]

        def mean(name: str, got: Sequence[Mapping[str, Any]] = got) -> float:
            return mean_interval([float(r[name]) for r in got])[0]

        updated = replace(
            cand,
            status="feasible" if result.passed else "infeasible",
            probe=result,
            usd_per_hour=mean("cost_usd_per_hour"),
            usd_per_1k_answers=mean("cost_usd_per_1k_answers"),
            latency_p95_s=mean("latency_p95_s"),
        )
        out.append((updated, len(got)))
    return out
