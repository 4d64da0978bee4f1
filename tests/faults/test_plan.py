"""The fault plan's semantics: windows, targeting, how overlapping faults combine, state."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pytest
from pydantic import TypeAdapter

from ragstress.config import Scenario, parse_config
from ragstress.config.faults import Fault
from ragstress.faults import NO_EFFECT, CallEffect, FaultPlan, status_outcome

STAGES = ("embed", "retrieve", "llm")
_FAULT: TypeAdapter[Fault] = TypeAdapter(Fault)


def fault(
    kind: str, stage: str = "llm", start: float = 10.0, end: float = 20.0, **kw: Any
) -> Fault:
    return _FAULT.validate_python(
        {"kind": kind, "stage": stage, "start_s": start, "end_s": end, **kw}
    )


def plan(*faults: Fault, **kw: Any) -> FaultPlan:
    return FaultPlan.from_scenario(faults, STAGES, **kw)


# ------------------------------------------------------------------- windows


@pytest.mark.parametrize(
    ("t", "inside"),
    [(9.999999, False), (10.0, True), (15.0, True), (19.999999, True), (20.0, False)],
)
def test_window_start_inclusive_end_exclusive(t: float, inside: bool) -> None:
    p = plan(fault("outage"))
    assert len(p.active("llm", t)) == int(inside)
    assert len(p.call_faults("llm", t)) == int(inside)
    us = [0.0] * int(inside)
    assert p.decide("llm", t, us).refuse is inside


def test_other_stages_are_untouched() -> None:
    p = plan(fault("outage", stage="llm"))
    assert p.active("embed", 15.0) == ()
    assert p.decide("embed", 15.0, []) is NO_EFFECT
    assert p.draw("embed", 15.0, np.random.default_rng(0)) is NO_EFFECT


def test_active_lists_state_faults_too_but_they_take_no_draw() -> None:
    cut = fault("rate_limit_cut", factor=0.5)
    err = fault("error", status=503)
    p = plan(cut, err)
    assert p.active("llm", 12.0) == (cut, err)
    assert p.call_faults("llm", 12.0) == (err,)
    assert p.decide("llm", 12.0, [0.5]).status == 503


def test_effect_decided_at_send_time_only() -> None:
    # the plan has no notion of "still inside": a call sent at 19.9 is hung for good
    p = plan(fault("hang"))
    assert p.decide("llm", 19.9, [0.0]).hang
    assert p.decide("llm", 20.0, []) is NO_EFFECT


# ------------------------------------------------------------------- targeting


@pytest.mark.parametrize(
    ("percent", "u", "hit"),
    [
        (30.0, 0.0, True),
        (30.0, 0.2999999, True),
        (30.0, 0.3, False),
        (30.0, 0.9, False),
        (100.0, 0.9999999999, True),
        (0.0, 0.0, False),
    ],
)
def test_percent_is_u_below_threshold(percent: float, u: float, hit: bool) -> None:
    p = plan(fault("error", status=500, percent=percent))
    effect = p.decide("llm", 15.0, [u])
    assert (effect.status == 500) is hit
    assert (effect is NO_EFFECT) is not hit


@pytest.mark.parametrize("percent", [0.5, 12.5, 50.0, 97.0])
def test_share_hit_matches_percent_within_4_sigma(percent: float) -> None:
    p = plan(fault("outage", percent=percent))
    rng = np.random.default_rng(1234)
    n = 100_000
    hits = sum(p.draw("llm", 15.0, rng).refuse for _ in range(n))
    q = percent / 100
    sigma = math.sqrt(n * q * (1 - q))
    assert abs(hits - n * q) < 4 * sigma


def test_overlapping_faults_are_rolled_independently() -> None:
    p = plan(
        fault("latency_multiplier", factor=2, percent=50),
        fault("latency_multiplier", factor=3, percent=50),
    )
    rng = np.random.default_rng(7)
    n = 100_000
    factors = [p.draw("llm", 15.0, rng).latency_factor for _ in range(n)]
    for value, q in [(1.0, 0.25), (2.0, 0.25), (3.0, 0.25), (6.0, 0.25)]:
        count = sum(f == value for f in factors)
        assert abs(count - n * q) < 4 * math.sqrt(n * q * (1 - q)), value


def test_draw_is_decide_with_the_generators_draws() -> None:
    p = plan(
        fault("error", status=503, percent=40),
        fault("added_latency", latency={"kind": "exponential", "mean": 0.5}, percent=60),
    )
    a, b = np.random.default_rng(99), np.random.default_rng(99)
    for _ in range(200):
        drawn = p.draw("llm", 15.0, a)
        us = b.random(2).tolist()
        assert drawn == p.decide("llm", 15.0, us, b)


def test_draws_must_match_the_active_faults() -> None:
    p = plan(fault("outage"), fault("hang", start=0, end=100))
    with pytest.raises(ValueError, match="one draw per active fault: 2 active"):
        p.decide("llm", 15.0, [0.1])
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        p.decide("llm", 15.0, [0.1, 1.0])
    assert p.decide("llm", 50.0, [0.1]).hang


# ------------------------------------------------------------------- combining


def test_outage_beats_hang_and_error_whatever_the_order() -> None:
    p = plan(
        fault("error", status=503),
        fault("hang", percent=50),
        fault("added_latency", latency={"kind": "deterministic", "value": 1.0}),
        fault("outage", percent=50),
    )
    assert p.decide("llm", 15.0, [0.0] * 4) == CallEffect(refuse=True)
    # the outage misses: the hang wins over the error
    assert p.decide("llm", 15.0, [0.0, 0.0, 0.0, 0.99]) == CallEffect(hang=True)
    # outage and hang miss: the error, after the added latency
    assert p.decide("llm", 15.0, [0.0, 0.99, 0.0, 0.99]) == CallEffect(
        status=503, extra_latency_s=1.0
    )


def test_first_error_in_plan_order_wins() -> None:
    p = plan(
        fault("error", status=429, retry_after_s=7.0, percent=50),
        fault("error", status=500, after_service=True),
    )
    first = p.decide("llm", 15.0, [0.0, 0.0])
    assert (first.status, first.retry_after_s, first.error_after_service) == (429, 7.0, False)
    second = p.decide("llm", 15.0, [0.99, 0.0])
    assert (second.status, second.retry_after_s, second.error_after_service) == (500, None, True)


def test_error_at_once_keeps_the_delay_but_not_the_slowdown_or_stream_faults() -> None:
    faults = [
        fault("latency_multiplier", factor=4),
        fault("added_latency", latency={"kind": "deterministic", "value": 0.25}),
        fault("stream_truncate", after_tokens=3),
        fault("stream_stall", after_tokens=1, stall_s=9),
    ]
    at_once = plan(fault("error", status=529), *faults).decide("llm", 15.0, [0.0] * 5)
    assert at_once == CallEffect(status=529, extra_latency_s=0.25)
    assert at_once.answered_by_fault
    served = plan(fault("error", status=500, after_service=True), *faults)
    effect = served.decide("llm", 15.0, [0.0] * 5)
    assert effect == CallEffect(
        status=500, error_after_service=True, extra_latency_s=0.25, latency_factor=4.0
    )
    assert not effect.answered_by_fault


def test_delays_add_and_multipliers_multiply() -> None:
    p = plan(
        fault("added_latency", latency={"kind": "deterministic", "value": 0.5}),
        fault("latency_multiplier", factor=2, percent=50),
        fault("added_latency", latency={"kind": "deterministic", "value": 0.25}, percent=50),
        fault("latency_multiplier", factor=1.5),
    )
    effect = p.decide("llm", 15.0, [0.0] * 4)
    assert effect.extra_latency_s == 0.75
    assert effect.latency_factor == 3.0
    assert p.decide("llm", 15.0, [0.0, 0.99, 0.99, 0.0]) == CallEffect(
        extra_latency_s=0.5, latency_factor=1.5
    )


def test_random_delay_draws_from_the_callers_generator_in_plan_order() -> None:
    lat1 = {"kind": "lognormal", "mean": 0.2, "cv": 1.0}
    lat2 = {"kind": "gamma", "mean": 1.0, "cv": 0.5}
    p = plan(fault("added_latency", latency=lat1), fault("added_latency", latency=lat2))
    with pytest.raises(ValueError, match="needs rng"):
        p.decide("llm", 15.0, [0.0, 0.0])
    got = p.decide("llm", 15.0, [0.0, 0.0], np.random.default_rng(5))
    ref = np.random.default_rng(5)
    d1 = p.faults[0].latency.draw(ref, 1)[0]  # type: ignore[union-attr]
    d2 = p.faults[1].latency.draw(ref, 1)[0]  # type: ignore[union-attr]
    assert got.extra_latency_s == float(d1) + float(d2)


def test_earliest_stall_and_earliest_truncation_apply() -> None:
    p = plan(
        fault("stream_stall", after_tokens=50, stall_s=5),
        fault("stream_stall", after_tokens=10, stall_s=2, percent=50),
        fault("stream_truncate", after_tokens=80),
        fault("stream_truncate", after_tokens=40, percent=50),
    )
    effect = p.decide("llm", 15.0, [0.0] * 4)
    assert (effect.stall_after_tokens, effect.stall_s) == (10, 2.0)
    assert effect.truncate_after_tokens == 40
    only_late = p.decide("llm", 15.0, [0.0, 0.99, 0.0, 0.99])
    assert (only_late.stall_after_tokens, only_late.truncate_after_tokens) == (50, 80)


@pytest.mark.parametrize(("stall_at", "kept"), [(39, True), (40, False), (41, False)])
def test_a_stall_at_or_after_the_break_never_happens(stall_at: int, kept: bool) -> None:
    p = plan(
        fault("stream_stall", after_tokens=stall_at, stall_s=5),
        fault("stream_truncate", after_tokens=40),
    )
    effect = p.decide("llm", 15.0, [0.0, 0.0])
    assert effect.truncate_after_tokens == 40
    assert (effect.stall_after_tokens == stall_at) is kept
    assert effect.stall_s == (5.0 if kept else 0.0)


# ------------------------------------------------------------------- the effect


def test_call_effect_is_frozen_and_slotted() -> None:
    effect = CallEffect(status=503)
    with pytest.raises(dataclasses.FrozenInstanceError):
        effect.status = 500  # type: ignore[misc]
    assert not hasattr(effect, "__dict__")
    assert NO_EFFECT.is_noop
    assert not effect.is_noop


@pytest.mark.parametrize(
    ("effect", "tokens", "outcome", "delivered"),
    [
        (NO_EFFECT, 100, "ok", 100),
        (CallEffect(refuse=True), 100, "error_connect", 0),
        (CallEffect(hang=True), 100, "timeout", 0),
        (CallEffect(status=429, retry_after_s=1.0), 100, "error_429", 0),
        (CallEffect(status=503), 100, "error_5xx", 0),
        (CallEffect(status=529), 100, "error_5xx", 0),
        (CallEffect(status=500, error_after_service=True), 100, "error_5xx", 0),
        (CallEffect(status=408), 100, "timeout", 0),
        (CallEffect(truncate_after_tokens=40), 100, "error_stream", 40),
        (CallEffect(truncate_after_tokens=40), 41, "error_stream", 40),
        (CallEffect(truncate_after_tokens=40), 40, "ok", 40),  # fits: delivered whole
        (CallEffect(truncate_after_tokens=0), 1, "error_stream", 0),
        (CallEffect(stall_after_tokens=10, stall_s=3.0), 100, "ok", 100),
        (CallEffect(extra_latency_s=2.0, latency_factor=3.0), 0, "ok", 0),
    ],
)
def test_outcomes(effect: CallEffect, tokens: int, outcome: str, delivered: int) -> None:
    assert effect.outcome(tokens) == outcome
    assert effect.delivered_tokens(tokens) == delivered


def test_stall_only_between_tokens() -> None:
    effect = CallEffect(stall_after_tokens=10, stall_s=3.0)
    assert effect.stalls(11)
    assert not effect.stalls(10)
    assert CallEffect(stall_after_tokens=0, stall_s=1.0).stalls(1)  # before the first token
    assert not NO_EFFECT.stalls(10**6)


def test_status_outcome_of_every_allowed_status() -> None:
    got = {s: status_outcome(s) for s in (408, 429, 500, 502, 503, 504, 529)}
    assert got == {
        408: "timeout",
        429: "error_429",
        500: "error_5xx",
        502: "error_5xx",
        503: "error_5xx",
        504: "error_5xx",
        529: "error_5xx",
    }


# ------------------------------------------------------------------- validation


def test_unknown_stage_lists_the_allowed_names() -> None:
    with pytest.raises(ValueError, match=r"faults\[1\] \(hang\): unknown stage 'rerank'") as info:
        plan(fault("outage"), fault("hang", stage="rerank"))
    assert "(allowed: embed, retrieve, llm)" in str(info.value)


def test_every_unknown_stage_is_reported() -> None:
    with pytest.raises(ValueError, match=r"faults\[0\].*'a'.*; faults\[1\].*'b'"):
        plan(fault("outage", stage="a"), fault("outage", stage="b"))


def test_lookups_on_an_unknown_stage_fail() -> None:
    p = plan()
    for call in (
        lambda: p.active("nope", 0.0),
        lambda: p.decide("nope", 0.0, []),
        lambda: p.rate_limit_factor("nope", 0.0),
        lambda: p.change_points("nope"),
        lambda: p.replicas_down("nope", 0.0, 3),
    ):
        with pytest.raises(ValueError, match=r"unknown stage 'nope' \(allowed: embed"):
            call()


def test_stream_faults_only_on_streaming_stages_when_told() -> None:
    stall = fault("stream_stall", stage="retrieve", after_tokens=1, stall_s=1)
    plan(stall)  # not told which stages stream: accepted
    with pytest.raises(ValueError, match=r"'retrieve' does not stream \(allowed: llm\)"):
        plan(stall, streaming=["llm"])
    plan(fault("stream_truncate", after_tokens=3), streaming=["llm"])


def test_rate_limit_cuts_only_on_limited_stages_when_told() -> None:
    cut = fault("rate_limit_cut", stage="embed", factor=0.5)
    with pytest.raises(ValueError, match=r"'embed' has no rate limits \(allowed: llm\)"):
        plan(cut, rate_limited=["llm"])


def test_hangs_says_which_stages_need_a_caller_timeout() -> None:
    p = plan(fault("hang", stage="retrieve", percent=1))
    assert p.hangs("retrieve")
    assert not p.hangs("llm")


# ------------------------------------------------------------------- state faults


def test_capacity_losses_add_up_and_are_capped() -> None:
    p = plan(
        fault("capacity_loss", stage="retrieve", start=10, end=30, replicas_down=2),
        fault("capacity_loss", stage="retrieve", start=20, end=40, fraction=0.25),
    )
    assert p.replicas_down("retrieve", 5.0, 8) == 0
    assert p.replicas_down("retrieve", 10.0, 8) == 2
    assert p.replicas_down("retrieve", 25.0, 8) == 4  # 2 + ceil(0.25 × 8)
    assert p.replicas_down("retrieve", 30.0, 8) == 2  # first window ended
    assert p.replicas_down("retrieve", 25.0, 3) == 3  # 2 + ceil(0.75) = 3, all of them
    assert p.replicas_down("retrieve", 25.0, 2) == 2  # capped
    assert p.capacity_factor("retrieve", 25.0, 8) == 0.5
    assert p.capacity_factor("retrieve", 50.0, 8) == 1.0
    assert p.replicas_down("llm", 25.0, 8) == 0


def test_rate_limit_cuts_multiply() -> None:
    p = plan(
        fault("rate_limit_cut", start=0, end=60, factor=0.5),
        fault("rate_limit_cut", start=30, end=90, factor=0.2),
    )
    assert p.rate_limit_factor("llm", 10.0) == 0.5
    assert p.rate_limit_factor("llm", 30.0) == pytest.approx(0.1)
    assert p.rate_limit_factor("llm", 60.0) == 0.2
    assert p.rate_limit_factor("llm", 90.0) == 1.0


def test_change_points_are_the_state_fault_edges_sorted() -> None:
    p = plan(
        fault("rate_limit_cut", start=30, end=90, factor=0.2),
        fault("outage", start=5, end=7),  # per-call: decided per call, no event needed
        fault("capacity_loss", start=0, end=30, replicas_down=1),
        fault("rate_limit_cut", start=60, end=90, factor=0.5),
    )
    assert p.change_points("llm") == (0.0, 30.0, 60.0, 90.0)
    assert p.change_points("embed") == ()


def test_plan_from_a_yaml_scenario() -> None:
    text = """\
name: s
duration_s: 600
arrivals: {kind: poisson, rate: 5}
faults:
  - {kind: error, stage: llm, start_s: 60, end_s: 240, status: 429, retry_after_s: 2, percent: 30}
  - {kind: capacity_loss, stage: retrieve, start_s: 100, end_s: 200, fraction: 0.5}
"""
    s = parse_config(text, Scenario, "s.yaml")
    p = FaultPlan.from_scenario(s.faults, STAGES)
    assert p.faults == s.faults
    assert p.decide("llm", 60.0, [0.29]) == CallEffect(status=429, retry_after_s=2.0)
    assert p.decide("llm", 240.0, []) is NO_EFFECT
    assert p.replicas_down("retrieve", 150.0, 4) == 2
    assert p.change_points("retrieve") == (100.0, 200.0)
