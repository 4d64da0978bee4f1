"""The scenario's fault plan as YAML: every kind loads, and every mistake is a file:line error.

Expected line numbers were counted by hand from the YAML text (line 1 is its first line).
"""

from __future__ import annotations

import textwrap

import pydantic
import pytest

from ragstress.config import ConfigError, Scenario, parse_config
from ragstress.config.distributions import LogNormal
from ragstress.config.faults import (
    AddedLatency,
    CapacityLoss,
    ErrorStatus,
    Hang,
    LatencyMultiplier,
    Outage,
    RateLimitCut,
    StreamStall,
    StreamTruncate,
)

HEAD = """\
name: s
duration_s: 600
arrivals: {kind: poisson, rate: 5}
faults:
"""


def scenario(faults: str) -> Scenario:
    return parse_config(HEAD + textwrap.dedent(faults), Scenario, "s.yaml")


def problems(faults: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        scenario(faults)
    return str(info.value).splitlines()


def test_every_kind_loads_in_plan_order() -> None:
    s = scenario(
        """\
        - {kind: added_latency, stage: embed, start_s: 0, end_s: 10,
           latency: {kind: lognormal, mean: 0.2, cv: 1.5}, percent: 25}
        - {kind: latency_multiplier, stage: embed, start_s: 5, end_s: 15, factor: 3}
        - {kind: error, stage: llm, start_s: 10, end_s: 20, status: 429, retry_after_s: 2.5}
        - {kind: error, stage: llm, start_s: 10, end_s: 20, status: 500, after_service: true}
        - {kind: outage, stage: retrieve, start_s: 20, end_s: 30}
        - {kind: hang, stage: retrieve, start_s: 30, end_s: 40, percent: 5}
        - {kind: rate_limit_cut, stage: llm, start_s: 60, end_s: 120, factor: 0.5}
        - {kind: capacity_loss, stage: retrieve, start_s: 60, end_s: 90, replicas_down: 2}
        - {kind: capacity_loss, stage: retrieve, start_s: 60, end_s: 90, fraction: 0.25}
        - {kind: stream_stall, stage: llm, start_s: 0, end_s: 600, after_tokens: 20, stall_s: 30}
        - {kind: stream_truncate, stage: llm, start_s: 0, end_s: 600, after_tokens: 0}
        """
    )
    kinds = [type(f) for f in s.faults]
    assert kinds == [
        AddedLatency,
        LatencyMultiplier,
        ErrorStatus,
        ErrorStatus,
        Outage,
        Hang,
        RateLimitCut,
        CapacityLoss,
        CapacityLoss,
        StreamStall,
        StreamTruncate,
    ]
    assert isinstance(s.faults, tuple)
    first = s.faults[0]
    assert isinstance(first, AddedLatency)
    assert first.percent == 25.0
    assert first.latency == LogNormal(kind="lognormal", mean=0.2, cv=1.5)
    err = s.faults[2]
    assert isinstance(err, ErrorStatus)
    assert (err.status, err.retry_after_s, err.after_service) == (429, 2.5, False)
    assert s.faults[4].percent == 100.0  # type: ignore[union-attr]  # the default


def test_no_faults_by_default() -> None:
    s = parse_config(HEAD.removesuffix("faults:\n"), Scenario, "s.yaml")
    assert s.faults == ()


def test_faults_are_frozen() -> None:
    s = scenario("- {kind: outage, stage: llm, start_s: 0, end_s: 1}\n")
    with pytest.raises(pydantic.ValidationError):
        s.faults[0].end_s = 5  # type: ignore[misc]


def test_bad_kind_names_its_line_and_the_allowed_kinds() -> None:
    got = problems(
        """\
        - kind: error
          stage: llm
          start_s: 10
          end_s: 20
          status: 503
        - kind: explode
          stage: llm
          start_s: 10
          end_s: 20
        """
    )
    assert got == [
        "s.yaml:10: faults[1]: unknown kind 'explode' (allowed: added_latency, "
        "latency_multiplier, error, outage, hang, rate_limit_cut, capacity_loss, "
        "stream_stall, stream_truncate)"
    ]


@pytest.mark.parametrize("end", ["30", "29.5"])
def test_end_not_after_start_points_at_end_s(end: str) -> None:
    got = problems(
        f"""\
        - kind: hang
          stage: llm
          start_s: 30
          end_s: {end}
        """
    )
    assert got == ["s.yaml:8: faults[0].end_s: end_s must be greater than start_s (30)"]


def test_missing_kind() -> None:
    got = problems("- {stage: llm, start_s: 0, end_s: 1}\n")
    assert got == ["s.yaml:5: faults[0]: missing key 'kind' that says which variant this is"]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            "- {kind: error, stage: llm, start_s: 0, end_s: 1, status: 404}",
            "s.yaml:5: faults[0].status: got 404 (allowed: 408, 429, 500, 502, 503, 504 or 529)",
        ),
        (
            "- {kind: hang, stage: llm, start_s: 0, end_s: 1, percent: 101}",
            "s.yaml:5: faults[0].percent: input should be less than or equal to 100 (got 101)",
        ),
        (
            "- {kind: hang, stage: llm, start_s: 0, end_s: 1, percent: -1}",
            "s.yaml:5: faults[0].percent: input should be greater than or equal to 0 (got -1)",
        ),
        (
            "- {kind: latency_multiplier, stage: llm, start_s: 0, end_s: 1, factor: 0.5}",
            "s.yaml:5: faults[0].factor: input should be greater than or equal to 1 (got 0.5)",
        ),
        (
            "- {kind: rate_limit_cut, stage: llm, start_s: 0, end_s: 1, factor: 0}",
            "s.yaml:5: faults[0].factor: input should be greater than 0 (got 0)",
        ),
        (
            "- {kind: rate_limit_cut, stage: llm, start_s: 0, end_s: 1, factor: 1.5}",
            "s.yaml:5: faults[0].factor: input should be less than or equal to 1 (got 1.5)",
        ),
        (
            "- {kind: rate_limit_cut, stage: llm, start_s: 0, end_s: 1, factor: 0.5, percent: 50}",
            "s.yaml:5: faults[0].percent: unknown key (allowed: stage, start_s, end_s, factor)",
        ),
        (
            "- {kind: capacity_loss, stage: db, start_s: 0, end_s: 1}",
            "s.yaml:5: faults[0]: give exactly one of replicas_down or fraction "
            "(allowed: replicas_down, fraction)",
        ),
        (
            "- {kind: capacity_loss, stage: db, start_s: 0, end_s: 1, replicas_down: 1, "
            "fraction: 0.5}",
            "s.yaml:5: faults[0]: give exactly one of replicas_down or fraction "
            "(allowed: replicas_down, fraction)",
        ),
        (
            "- {kind: stream_stall, stage: llm, start_s: 0, end_s: 1, after_tokens: 5}",
            "s.yaml:5: faults[0].stall_s: required key is missing",
        ),
        (
            "- {kind: outage, stage: LLM, start_s: 0, end_s: 1}",
            "s.yaml:5: faults[0].stage: string should match pattern "
            "'^[a-z][a-z0-9_]{0,39}$' (got 'LLM')",
        ),
    ],
)
def test_bad_fields(line: str, expected: str) -> None:
    assert problems(line + "\n") == [expected]


def test_several_problems_each_on_its_own_line() -> None:
    got = problems(
        """\
        - kind: outage
          stage: llm
          start_s: 5
          end_s: 1
        - kind: added_latency
          stage: llm
          start_s: 0
          end_s: 1
          latency: {kind: lognormal, mean: 1}
        """
    )
    assert sorted(got) == [
        "s.yaml:13: faults[1].latency: give exactly one of cv or p99 (allowed: cv, p99)",
        "s.yaml:8: faults[0].end_s: end_s must be greater than start_s (5)",
    ]


def test_capacity_loss_rounds_a_fraction_up() -> None:
    s = scenario(
        """\
        - {kind: capacity_loss, stage: db, start_s: 0, end_s: 1, fraction: 0.3}
        - {kind: capacity_loss, stage: db, start_s: 0, end_s: 1, replicas_down: 5}
        """
    )
    by_fraction, by_count = s.faults
    assert isinstance(by_fraction, CapacityLoss)
    assert isinstance(by_count, CapacityLoss)
    assert by_fraction.down_of(10) == 3  # 0.3 × 10 is 3.0000000000000004 in floats
    assert by_fraction.down_of(4) == 2  # 1.2 → 2
    assert by_fraction.down_of(1) == 1
    assert by_count.down_of(3) == 3  # never more than there are
