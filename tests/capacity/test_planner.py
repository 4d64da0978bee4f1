"""The planner on a space built so the cheapest configuration is known from Erlang C."""

from __future__ import annotations

from typing import Any

import pytest

from ragstress.capacity import PointRunner
from ragstress.capacity.planner import PlanSettings, candidates, make_plan
from ragstress.capacity.search import SearchSettings
from ragstress.capacity.sweep import SweepPoint
from ragstress.config import ConfigError, Profile, Scenario

# One M/M/c pool at 50 req/s (40 peak + 25 % headroom), p95 ≤ 0.5 s; $10 per replica-hour.
# - model "slow": mean 0.1 s, free per call. M/M/c needs c ≥ 6 (P(S > 0.5) = 0.027; c = 5 is
#   exactly saturated): $60/h.
# - model "fast": mean 0.05 s, $0.0002 per call = $36/h at 50 req/s; needs c ≥ 3
#   (P(S > 0.5) = 0.009): $30 + $36 = $66/h.
# The cheapest is slow × 6 although fast × 3 has half the replicas.
PROFILE: dict[str, Any] = {
    "name": "plannable",
    "stages": [
        {
            "kind": "pool",
            "name": "work",
            "replicas": 1,
            "concurrency": 1,
            "service": {"kind": "exponential", "mean": 0.1},
            "price": {"per_replica_hour_usd": 10.0},
        }
    ],
    "knobs": [
        {
            "name": "model",
            "options": {
                "slow": {
                    "stages.work.service": {"kind": "exponential", "mean": 0.1},
                    "stages.work.price.per_call_usd": 0.0,
                },
                "fast": {
                    "stages.work.service": {"kind": "exponential", "mean": 0.05},
                    "stages.work.price.per_call_usd": 0.0002,
                },
            },
        },
        {"key": "stages.work.replicas", "values": list(range(1, 13)), "monotone": True},
    ],
}
SCENARIO = Scenario.model_validate(
    {
        "name": "peak",
        "duration_s": 240,
        "warmup_s": 20,
        "seed": 8,
        "arrivals": {"kind": "poisson", "rate": 1},
        "slo": {"latency_s": {"p95": 0.5}},
    }
)
SEARCH = SearchSettings(tolerance=0.05, replications=2, max_replications=6, seed=8)


def test_candidates_are_the_product_of_the_knobs_priced_at_their_replicas() -> None:
    profile = Profile.model_validate(PROFILE)
    space = candidates(SCENARIO, profile)
    assert len(space) == 24
    assert space[0].config == "model=slow work.replicas=1"
    assert space[23].config == "model=fast work.replicas=12"
    assert space[23].overrides["stages.work.service"]["mean"] == 0.05
    assert [c.fixed_usd_per_hour for c in space[:3]] == [10.0, 20.0, 30.0]
    assert space[5].positions == (0, 5)


def test_plan_finds_the_known_cheapest_configuration_and_prunes() -> None:
    profile = Profile.model_validate(PROFILE)
    settings = PlanSettings(peak_rps=40.0, headroom=0.25, top=2, search=SEARCH)
    with PointRunner(SCENARIO, profile, workers=1) as runner:
        plan = make_plan(runner, SCENARIO, profile, settings)
    assert settings.target_rps == 50.0
    chosen = plan.chosen
    assert chosen is not None
    assert chosen.config == "model=slow work.replicas=6"
    assert chosen.usd_per_hour == pytest.approx(60.0, rel=0.01)
    (first, second) = plan.ranked
    assert second.config == "model=fast work.replicas=3"
    assert second.usd_per_hour == pytest.approx(66.0, rel=0.02)
    assert first.max_rate_rps >= 50.0
    assert second.max_rate_rps > first.max_rate_rps  # 3 × 20 req/s of capacity vs 6 × 10
    by_config = {c.config: c for c in plan.candidates}
    for c in plan.candidates:
        model, replicas = c.config.split()
        n = int(replicas.split("=")[1])
        need = 6 if model == "model=slow" else 3
        if c.status in {"feasible", "pruned-dominated"}:
            assert n >= need, c
        if c.status in {"infeasible", "pruned-monotone"}:
            assert n < need, c
    assert by_config["model=slow work.replicas=5"].status in {"infeasible", "pruned-monotone"}
    # bisection along replicas: a handful of evaluations per model, not 12
    assert plan.evaluated <= 10
    assert (
        plan.evaluated
        + plan.count("pruned-monotone")
        + plan.count("pruned-dominated")
        + plan.count("pruned-cost")
        == 24
    )


def test_plan_cost_bound_stops_early() -> None:
    profile = Profile.model_validate(PROFILE)
    settings = PlanSettings(peak_rps=40.0, headroom=0.25, top=1, search=SEARCH)
    calls: list[int] = []

    class Counting(PointRunner):
        def run(self, points: Any, progress: Any = None) -> list[dict[str, Any]]:
            calls.append(len(points))
            return super().run(points, progress)

    with Counting(SCENARIO, profile, workers=1) as runner:
        plan = make_plan(runner, SCENARIO, profile, settings)
    assert plan.chosen is not None
    assert plan.chosen.config == "model=slow work.replicas=6"
    assert [c.rank for c in plan.candidates if c.rank] == [1]
    assert plan.runs == sum(calls)


def test_profile_without_knobs_is_refused() -> None:
    profile = Profile.model_validate({**PROFILE, "knobs": []})
    with pytest.raises(ConfigError, match="declares no knobs"):
        candidates(SCENARIO, profile)


def test_knob_values_are_validated_before_anything_runs() -> None:
    bad = {**PROFILE, "knobs": [{"key": "stages.work.replicas", "values": [1, 0]}]}
    with pytest.raises(ConfigError, match=r"knobs \(work.replicas=0\)"):
        candidates(SCENARIO, Profile.model_validate(bad))


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ([{"key": "stages.nope.replicas", "values": [1]}], "no stage named 'nope'"),
        ([{"key": "stages.work.replicas"}], "needs key and values"),
        ([{"options": {"a": {"stages.work.replicas": 1}}}], "needs a name"),
        (
            [
                {"key": "stages.work.replicas", "values": [1]},
                {"name": "m", "options": {"a": {"stages.work.replicas": 2}}},
            ],
            "already turned by knob 0",
        ),
    ],
)
def test_bad_knobs_are_config_errors(knobs: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Profile.model_validate({**PROFILE, "knobs": knobs})


def test_plan_settings_name_their_flags() -> None:
    with pytest.raises(ConfigError, match="--peak"):
        PlanSettings(peak_rps=0.0)
    with pytest.raises(ConfigError, match="--headroom"):
        PlanSettings(peak_rps=1.0, headroom=-0.1)
    with pytest.raises(ConfigError, match="--top"):
        PlanSettings(peak_rps=1.0, top=0)


def test_points_carry_each_configurations_overrides() -> None:
    seen: list[SweepPoint] = []

    class Recording:
        def run(self, points: Any) -> list[dict[str, Any]]:
            seen.extend(points)
            # everything fails: the planner must stop once the space is settled
            return [
                {
                    "config": p.config,
                    "slo_ratio": 2.0,
                    "cost_usd_per_hour": 1.0,
                    "cost_usd_per_1k_answers": 1.0,
                    "latency_p95_s": 9.0,
                }
                for p in points
            ]

    profile = Profile.model_validate(PROFILE)
    settings = PlanSettings(peak_rps=40.0, headroom=0.25, search=SEARCH, batch=1)
    plan = make_plan(Recording(), SCENARIO, profile, settings)
    assert plan.chosen is None
    assert {p.rate_rps for p in seen} == {50.0}
    # bisection along replicas: about log2(12) + 1 evaluations per model, ending at the
    # largest, whose failure settles everything below it
    assert plan.evaluated <= 2 * 4
    assert plan.count("pruned-monotone") == 24 - plan.evaluated
    assert {"model=slow work.replicas=12", "model=fast work.replicas=12"} <= {
        p.config for p in seen
    }
