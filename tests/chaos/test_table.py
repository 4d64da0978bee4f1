"""The table decides exactly as the fault plan does (same draws, same effects), with a fake
clock; and the rendering details it adds (which error, the first-byte share) are right."""

from __future__ import annotations

from typing import Any

import pytest
from multidict import CIMultiDict
from pydantic import TypeAdapter

from ragstress.chaos import ChaosSettings, FaultTable, PlanError
from ragstress.chaos.faults import ProxyFault
from ragstress.config.faults import Fault
from ragstress.faults.plan import FaultPlan
from ragstress.seeding import stream

SCENARIO: TypeAdapter[Fault] = TypeAdapter(Fault)
PROXY: TypeAdapter[ProxyFault] = TypeAdapter(ProxyFault)
EPOCH = 1_800_000_000.0


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _table(clock: Clock, seed: int = 4, **listener: Any) -> FaultTable:
    settings = ChaosSettings.model_validate(
        {
            "listeners": {"llm": {"upstream": "http://127.0.0.1:1", **listener}},
            "control_port": 0,
            "seed": seed,
        }
    )
    return FaultTable(settings, clock=clock)


def _f(kind: str, start: float = 0, end: float = 100, **kw: Any) -> dict[str, Any]:
    return {"kind": kind, "stage": "llm", "start_s": start, "end_s": end, **kw}


PLAN = [
    _f("error", 10, 50, status=503, percent=30, retry_after_s=1.5),
    _f("added_latency", 0, 80, latency={"kind": "lognormal", "mean": 0.2, "cv": 1}, percent=50),
    _f("latency_multiplier", 20, 60, factor=3, percent=20),
    _f("stream_stall", 0, 100, after_tokens=3, stall_s=2, percent=40),
    _f("stream_truncate", 30, 90, after_tokens=5, percent=25),
    _f("hang", 40, 45, percent=10),
    _f("outage", 70, 75, percent=15),
]
HEADERS: CIMultiDict[str] = CIMultiDict()


def test_decisions_are_the_plans_own() -> None:
    clock = Clock(EPOCH)
    table = _table(clock)
    table.load([PROXY.validate_python(f) for f in PLAN], EPOCH)
    plan = FaultPlan.from_scenario([SCENARIO.validate_python(f) for f in PLAN], ["llm"])
    rng = stream(4, "chaos", "llm")
    for k in range(3000):
        t = k * 0.035
        clock.now = EPOCH + t
        verdict = table.decide("llm", "POST", "/v1/chat/completions", HEADERS, clock.now)
        expected = plan.draw("llm", t, rng)
        got = verdict.effect if verdict is not None else None
        if expected.is_noop and got is None:
            continue
        assert got == expected, (t, got, expected)
        assert verdict is not None
        if expected.status is not None:
            assert verdict.error is not None
            assert verdict.error.status == expected.status
        if not expected.answered_by_fault:
            assert verdict.request_delay_s == expected.extra_latency_s


def test_first_byte_share_is_each_faults_own_draw() -> None:
    clock = Clock(EPOCH)
    table = _table(clock)
    table.load(
        [
            PROXY.validate_python(
                _f("added_latency", latency={"kind": "lognormal", "mean": 0.2, "cv": 1})
            ),
            PROXY.validate_python(
                _f(
                    "added_latency",
                    latency={"kind": "uniform", "low": 5, "high": 6},
                    on="first_byte",
                )
            ),
            PROXY.validate_python(_f("added_latency", latency={"kind": "constant", "value": 10})),
        ],
        EPOCH,
    )
    for _ in range(200):
        v = table.decide("llm", "GET", "/", HEADERS, clock.now)
        assert v is not None
        assert 5 <= v.first_byte_delay_s <= 6
        assert v.request_delay_s > 10
        total = v.request_delay_s + v.first_byte_delay_s
        assert total == pytest.approx(v.effect.extra_latency_s, abs=1e-12)


def test_windows_are_absolute_and_expire_without_anyone() -> None:
    clock = Clock(EPOCH)
    table = _table(clock)
    table.load([PROXY.validate_python(_f("outage", 5, 10))], EPOCH)
    clock.now = EPOCH + 4.999
    assert table.decide("llm", "GET", "/", HEADERS, clock.now) is None
    clock.now = EPOCH + 5
    v = table.decide("llm", "GET", "/", HEADERS, clock.now)
    assert v is not None
    assert v.effect.refuse
    clock.now = EPOCH + 10
    assert table.decide("llm", "GET", "/", HEADERS, clock.now) is None
    assert table.faults() == []


def test_absolute_plans_and_their_mistakes() -> None:
    clock = Clock(EPOCH)
    table = _table(clock)
    table.load([PROXY.validate_python(_f("outage", EPOCH - 5, EPOCH + 5))])
    assert len(table.faults(active_only=True)) == 1
    with pytest.raises(PlanError, match="unless the plan gives run_start_epoch"):
        table.load([PROXY.validate_python(_f("outage", 5, 10))])
    with pytest.raises(PlanError, match="run_start_epoch must be a finite epoch"):
        table.load([], float("nan"))


def test_rate_limit_cut_edges_are_exact() -> None:
    """rpm 60 (refill 1/s, burst 100) cut to half from t = 10 to 20: the refill is 1/s before
    and after the cut and 0.5/s during it, however far apart the calls are."""
    clock = Clock(EPOCH)
    table = _table(clock, rate_limit={"rpm": 60, "rpm_burst": 100})
    table.load([PROXY.validate_python(_f("rate_limit_cut", 10, 20, factor=0.5))], EPOCH)
    limits = table._stages["llm"].limits  # the bucket itself, to read its level
    assert limits is not None
    assert limits.rpm is not None
    clock.now = EPOCH + 1
    v = table.decide("llm", "POST", "/", HEADERS, clock.now)
    assert v is not None
    for _ in range(100):
        assert table.admit("llm", v, b"") is None
    clock.now = EPOCH + 15  # 9 s at 1/s, then 5 s at 0.5/s
    assert table.admit("llm", v, b"") is None
    assert limits.rpm.level(clock.now) == pytest.approx(9 + 2.5 - 1)
    clock.now = EPOCH + 25  # 5 s at 0.5/s, then 5 s at 1/s
    assert table.admit("llm", v, b"") is None
    assert limits.rpm.level(clock.now) == pytest.approx(10.5 + 2.5 + 5 - 1)
