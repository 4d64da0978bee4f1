"""``--rates`` and ``--set`` parsing, and applying overrides to validated models."""

from __future__ import annotations

from typing import Any

import pytest

from ragstress.capacity.overrides import (
    MAX_RATES,
    apply,
    apply_overrides,
    parse_rates,
    parse_set,
    split_key,
    with_rate,
)
from ragstress.config import ConfigError, Profile, Scenario

PROFILE: dict[str, Any] = {
    "name": "p",
    "stages": [
        {"kind": "pool", "name": "embed", "service": {"kind": "exponential", "mean": 0.01}},
        {
            "kind": "pool",
            "name": "generate",
            "concurrency": 2,
            "service": {"kind": "exponential", "mean": 0.1},
        },
    ],
}
SCENARIO: dict[str, Any] = {
    "name": "s",
    "duration_s": 10,
    "seed": 3,
    "arrivals": {"kind": "gamma", "cv": 2.0, "rate": {"kind": "ramp", "from_rps": 1, "to_rps": 5}},
}


@pytest.fixture
def profile() -> Profile:
    return Profile.model_validate(PROFILE)


@pytest.fixture
def scenario() -> Scenario:
    return Scenario.model_validate(SCENARIO)


# --rates


def test_grid_includes_stop_when_on_the_grid() -> None:
    assert parse_rates("10:400:20") == tuple(float(r) for r in range(10, 400, 20))
    assert parse_rates("10:90:20") == (10.0, 30.0, 50.0, 70.0, 90.0)
    assert parse_rates("5:5:1") == (5.0,)


def test_grid_is_decimal_exact_for_float_steps() -> None:
    # binary arithmetic gives 0.30000000000000004 or drops the stop
    assert parse_rates("0.1:0.3:0.1") == (0.1, 0.2, 0.3)
    assert parse_rates("0.7:1:0.1") == (0.7, 0.8, 0.9, 1.0)
    assert parse_rates("1:2:0.3") == (1.0, 1.3, 1.6, 1.9)


def test_comma_list_keeps_order() -> None:
    assert parse_rates("10,50, 20") == (10.0, 50.0, 20.0)
    assert parse_rates("7.5") == (7.5,)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty"),
        ("1:2", "START:STOP:STEP"),
        ("1:2:3:4", "START:STOP:STEP"),
        ("a:2:1", "not a number"),
        ("5:1:1", "below start"),
        ("1:5:0", "step must be > 0"),
        ("1:5:-1", "step must be > 0"),
        ("0:5:1", "start must be > 0"),
        ("10,x", "'x' is not a number"),
        ("10,inf", "not finite"),
        ("0", "out of range"),
        ("1:1e9:1", f"at most {MAX_RATES:,}"),
    ],
)
def test_bad_rates_name_the_flag_and_what_is_allowed(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=r"^--rates: ") as info:
        parse_rates(text)
    message = str(info.value)
    assert why in message
    assert "\n" not in message


# --set


def test_parse_set_reads_each_value_as_yaml() -> None:
    o = parse_set("stages.generate.replicas=2,4,8")
    assert (o.key, o.target, o.path, o.values) == (
        "stages.generate.replicas",
        "profile",
        ("stages", "generate", "replicas"),
        (2, 4, 8),
    )
    assert parse_set("stages.embed.fallback_only=true,false").values == (True, False)
    assert parse_set("stages.embed.input_tokens=query,prompt").values == ("query", "prompt")
    assert parse_set("stages.embed.queue_limit=null,5").values == (None, 5)
    mixed = parse_set("stages.embed.service={kind: exponential, mean: 0.2},{kind: gamma, mean: 1}")
    assert mixed.values == (
        {"kind": "exponential", "mean": 0.2},
        {"kind": "gamma", "mean": 1},
    )


def test_parse_set_scenario_keys_drop_the_prefix() -> None:
    o = parse_set("scenario.requests.top_k=3,5")
    assert (o.target, o.path, o.values) == ("scenario", ("requests", "top_k"), (3, 5))


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("stages.generate.replicas", "expected KEY=VALUE"),
        ("=1", "expected KEY=VALUE"),
        ("stages.generate=1", "not a profile or scenario key"),
        ("replicas=1", "not a profile or scenario key"),
        ("scenario=1", "not a profile or scenario key"),
        ("stages..replicas=1", "empty part"),
        ("stages.generate.replicas=", "no values"),
        ("stages.generate.replicas=[1", "cannot read"),
    ],
)
def test_bad_set_names_the_flag(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=r"^--set ") as info:
        parse_set(text)
    assert why in str(info.value)
    assert "allowed" in str(info.value)


def test_split_key() -> None:
    assert split_key("scenario.duration_s") == ("scenario", ("duration_s",))
    with pytest.raises(ValueError, match="not a profile or scenario key"):
        split_key("stages.generate")


def test_apply_to_a_stage_by_name_returns_a_new_validated_profile(profile: Profile) -> None:
    new = apply(profile, ("stages", "generate", "replicas"), 4)
    assert new.stage("generate").replicas == 4
    assert new.stage("generate").servers == 8
    assert profile.stage("generate").replicas == 1  # the original is untouched
    deeper = apply(new, ("stages", "generate", "service", "mean"), 0.5)
    assert deeper.stage("generate").service.mean == 0.5  # type: ignore[union-attr]
    assert deeper.stage("generate").replicas == 4


def test_apply_fills_an_unset_block(profile: Profile) -> None:
    new = apply(profile, ("stages", "embed", "queue_limit"), 3)
    assert new.stage("embed").queue_limit == 3  # type: ignore[union-attr]


def test_apply_to_the_scenario(scenario: Scenario) -> None:
    new = apply(scenario, ("requests", "top_k"), 9)
    assert new.requests.top_k == 9
    assert new.arrivals == scenario.arrivals
    assert scenario.requests.top_k == 5


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("stages.nope.replicas", 2, "--set stages.nope.replicas: no stage named 'nope' "
         "(allowed: embed, generate)"),
        ("stages.generate.replicaz", 2, "--set stages.generate.replicaz: unknown key "
         "'replicaz' (allowed: name, client, fan_out,"),
        ("stages.generate.replicas", 0, "--set stages.generate.replicas=0: input should be "
         "greater than or equal to 1 (got 0)"),
        ("stages.generate.replicas", "many", "--set stages.generate.replicas='many': input "
         "should be a valid integer"),
        ("stages.generate.input_tokens", "all", "--set stages.generate.input_tokens='all': "
         "got 'all' (allowed: none, query, context or prompt)"),
        ("stages.generate.replicas.x", 1, "--set stages.generate.replicas.x: unknown key 'x' "
         "(allowed: none: it holds a value)"),
        ("scenario.requests.topk", 3, "--set scenario.requests.topk: unknown key 'topk' "
         "(allowed: query_tokens, top_k,"),
        ("scenario.duration_s", -1, "--set scenario.duration_s=-1: input should be greater "
         "than 0 (got -1)"),
    ],
)  # fmt: skip
def test_apply_errors_are_one_line_config_errors(
    profile: Profile, scenario: Scenario, key: str, value: Any, expected: str
) -> None:
    with pytest.raises(ConfigError) as info:
        apply_overrides(scenario, profile, {key: value})
    (problem,) = info.value.problems
    assert problem.startswith(expected), problem
    assert "\n" not in problem


def test_with_rate_keeps_the_arrival_kind(scenario: Scenario) -> None:
    new = with_rate(scenario, 12.5)
    assert new.arrivals.kind == "gamma"
    assert new.arrivals.cv == 2.0
    assert new.arrivals.rate.kind == "constant"
    assert new.arrivals.rate.rps == 12.5
    assert new.duration_s == scenario.duration_s
    poisson = Scenario.model_validate({**SCENARIO, "arrivals": {"kind": "poisson", "rate": 1}})
    assert with_rate(poisson, 3).arrivals.kind == "poisson"


def test_with_rate_refuses_trace_arrivals(tmp_path: Any) -> None:
    trace = tmp_path / "trace.csv"
    trace.write_text("arrival_s,input_tokens,output_tokens\n0.5,10,20\n")
    scenario = Scenario.model_validate(
        {**SCENARIO, "arrivals": {"kind": "trace", "file": str(trace)}}
    )
    with pytest.raises(ConfigError, match="--rates needs rate-driven arrivals"):
        with_rate(scenario, 5)
