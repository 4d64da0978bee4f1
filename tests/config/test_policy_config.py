"""Client policy config: presets and their overrides, shorthands, validation, YAML round trips.

The models are wrapped in a tiny model of our own (``client:`` at the top level) so that the
real loader (``parse_config``) reports errors with file, line and key as it will for a
stage's ``client:`` block.
"""

from __future__ import annotations

import textwrap

import pytest
import yaml
from pydantic import ValidationError

from ragstress.config.base import StrictModel
from ragstress.config.loader import ConfigError, parse_config
from ragstress.config.policy import (
    OUTCOMES,
    RETRY_PRESETS,
    BreakerPolicy,
    ClientPolicy,
    ConstantBackoff,
    EqualJitter,
    ExponentialBackoff,
    FailFallback,
    FullJitter,
    NoBackoff,
    NoJitter,
    ProportionalJitter,
    RetryPolicy,
    RetryPresetName,
    SkipFallback,
    StageFallback,
    retry_preset,
)

PRESETS: tuple[RetryPresetName, ...] = ("openai-python", "tenacity-default", "no-retry")


class Wrapper(StrictModel):
    client: ClientPolicy


def parse(text: str) -> ClientPolicy:
    return parse_config(textwrap.dedent(text), Wrapper, "p.yaml").client


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(text)
    return info.value.problems


# --- presets ---------------------------------------------------------------------------------


def test_openai_python_preset_mirrors_the_library() -> None:
    p = retry_preset("openai-python")
    assert p.preset == "openai-python"
    assert p.max_attempts == 3  # 2 retries
    assert set(p.retry_on) == {
        "timeout",
        "error_connect",
        "error_408",
        "error_409",
        "error_429",
        "error_5xx",
    }
    assert p.backoff == ExponentialBackoff(
        kind="exponential",
        initial_s=0.5,
        multiplier=2.0,
        max_s=8.0,
        jitter=ProportionalJitter(kind="proportional", fraction=0.25),
    )
    assert p.honour_retry_after is True
    assert p.max_retry_after_s == 120.0


def test_tenacity_default_retries_for_a_long_time_without_waiting() -> None:
    p = retry_preset("tenacity-default")
    assert p.max_attempts == 100
    assert set(p.retry_on) == set(OUTCOMES)
    assert p.backoff == NoBackoff(kind="none")
    assert p.honour_retry_after is False


def test_no_retry_preset_makes_one_attempt() -> None:
    p = retry_preset("no-retry")
    assert p.max_attempts == 1
    assert p.retry_on == ()


@pytest.mark.parametrize("name", PRESETS)
def test_a_preset_name_a_preset_mapping_and_the_written_out_policy_are_equal(
    name: RetryPresetName,
) -> None:
    by_name = parse(f"client: {{retry: {name}}}").retry
    by_mapping = parse(f"client: {{retry: {{preset: {name}}}}}").retry
    written = RetryPolicy.model_validate({"preset": name, **RETRY_PRESETS[name]})
    assert by_name == by_mapping == written == retry_preset(name)


@pytest.mark.parametrize("name", PRESETS)
def test_yaml_round_trip_of_each_preset(name: RetryPresetName) -> None:
    first = parse(f"""\
        client:
          timeout_s: 30
          retry: {name}
        """)
    text = yaml.safe_dump({"client": first.model_dump(mode="json")}, sort_keys=False)
    again = parse_config(text, Wrapper, "dumped.yaml").client
    assert again == first
    assert again.retry.preset == name


def test_yaml_round_trip_of_a_custom_policy() -> None:
    first = parse("""\
        client:
          timeout_s: 2.5
          retry:
            max_attempts: 4
            retry_on: [timeout, error_429]
            backoff: {kind: exponential, initial_s: 1, max_s: 30, jitter: full}
            honour_retry_after: true
            max_retry_after_s: 60
          breaker: {fail_max: 3, reset_timeout_s: 10, half_open_trials: 2, counts: [timeout]}
          fallback: {kind: stage, stage: generate_small}
        """)
    assert first.retry.preset is None
    text = yaml.safe_dump({"client": first.model_dump(mode="json")})
    assert parse_config(text, Wrapper, "dumped.yaml").client == first


def test_presets_are_read_only_and_not_changed_by_overrides() -> None:
    before = yaml.safe_dump(_plain(RETRY_PRESETS))
    parse("client: {retry: {preset: openai-python, max_attempts: 9, backoff: {max_s: 30}}}")
    assert yaml.safe_dump(_plain(RETRY_PRESETS)) == before
    with pytest.raises(TypeError):
        RETRY_PRESETS["openai-python"]["max_attempts"] = 7  # type: ignore[index]


def _plain(value: object) -> object:
    if hasattr(value, "items"):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return list(value)
    return value


# --- overrides -------------------------------------------------------------------------------


def test_an_override_replaces_only_the_keys_written() -> None:
    retry = parse("client: {retry: {preset: openai-python, max_attempts: 5}}").retry
    assert retry.preset == "openai-python"
    assert retry.max_attempts == 5
    base = retry_preset("openai-python")
    assert retry.model_copy(update={"max_attempts": 3}) == base


def test_a_backoff_without_kind_is_merged_into_the_presets_backoff() -> None:
    retry = parse("client: {retry: {preset: openai-python, backoff: {max_s: 30}}}").retry
    assert retry.backoff == ExponentialBackoff(
        kind="exponential",
        initial_s=0.5,
        multiplier=2.0,
        max_s=30.0,
        jitter=ProportionalJitter(kind="proportional", fraction=0.25),
    )


def test_a_backoff_with_kind_replaces_the_presets_backoff() -> None:
    retry = parse("client: {retry: {preset: openai-python, backoff: {kind: constant, wait_s: 1}}}")
    assert retry.retry.backoff == ConstantBackoff(kind="constant", wait_s=1.0)
    retry2 = parse("client: {retry: {preset: tenacity-default, backoff: none}}").retry
    assert retry2.backoff == NoBackoff(kind="none")


def test_an_override_can_clear_the_retry_after_cap() -> None:
    retry = parse("client: {retry: {preset: openai-python, max_retry_after_s: null}}").retry
    assert retry.max_retry_after_s is None


def test_overrides_are_validated_like_everything_else() -> None:
    assert problems("""\
        client:
          retry:
            preset: openai-python
            backoff: {max_s: 0.1}
        """) == ["p.yaml:4: client.retry.backoff: max_s (0.1) must not be below initial_s (0.5)"]
    assert problems("""\
        client:
          retry: {preset: openai-python, max_attempts: 0}
        """) == [
        "p.yaml:2: client.retry.max_attempts: input should be greater than or equal to 1 (got 0)"
    ]


# --- error messages --------------------------------------------------------------------------


def test_a_bad_preset_name_is_reported_with_the_allowed_names() -> None:
    assert problems("""\
        client:
          timeout_s: 10
          retry: openai
        """) == [
        "p.yaml:3: client.retry: unknown retry preset 'openai' "
        "(allowed: openai-python, tenacity-default, no-retry); did you mean 'openai-python'?"
    ]


def test_a_bad_preset_name_in_a_mapping_is_reported_too() -> None:
    (problem,) = problems("""\
        client:
          retry:
            preset: tenacity
            max_attempts: 4
        """)
    assert problem.startswith("p.yaml:2: client.retry: unknown retry preset 'tenacity' (allowed:")
    assert "did you mean 'tenacity-default'?" in problem
    (problem,) = problems("client: {retry: {preset: zzz}}")
    assert problem == (
        "p.yaml:1: client.retry: unknown retry preset 'zzz' "
        "(allowed: openai-python, tenacity-default, no-retry)"
    )


def test_retry_of_the_wrong_type_says_what_is_expected() -> None:
    assert problems("client: {retry: 3}") == [
        "p.yaml:1: client.retry: expected a preset name (openai-python, tenacity-default, "
        "no-retry) or a mapping of retry settings (got int)"
    ]


def test_unknown_keys_and_outcomes_are_reported_with_the_allowed_values() -> None:
    assert problems("client: {retry: {preset: openai-python, colour: red}}") == [
        "p.yaml:1: client.retry.colour: unknown key (allowed: preset, max_attempts, retry_on, "
        "backoff, honour_retry_after, max_retry_after_s)"
    ]
    (problem,) = problems("""\
        client:
          retry:
            max_attempts: 2
            backoff: none
            retry_on:
              - timeout
              - error_500
        """)
    assert problem.startswith("p.yaml:7: client.retry.retry_on[1]: got 'error_500' (allowed:")
    assert all(o in problem for o in OUTCOMES)
    assert problems(
        "client: {retry: {max_attempts: 2, backoff: none, retry_on: [timeout, timeout]}}"
    ) == ["p.yaml:1: client.retry.retry_on: 'timeout' is listed twice in retry_on"]


def test_a_custom_policy_needs_max_attempts_and_backoff() -> None:
    assert sorted(problems("client: {retry: {retry_on: [timeout]}}")) == [
        "p.yaml:1: client.retry.backoff: required key is missing",
        "p.yaml:1: client.retry.max_attempts: required key is missing",
    ]


def test_variant_errors() -> None:
    assert problems(
        "client: {retry: {max_attempts: 2, backoff: {kind: exponential, initial_s: 1, "
        "max_s: 2, jitter: fulll}}}"
    ) == [
        "p.yaml:1: client.retry.backoff.jitter: unknown kind 'fulll' "
        "(allowed: none, full, equal, proportional)"
    ]
    assert problems(
        "client: {retry: {max_attempts: 2, backoff: {kind: exponential, initial_s: 1, "
        "max_s: 2, jitter: proportional}}}"
    ) == ["p.yaml:1: client.retry.backoff.jitter.fraction: required key is missing"]
    assert problems("client: {fallback: skipp}") == [
        "p.yaml:1: client.fallback: unknown kind 'skipp' (allowed: fail, skip, stage)"
    ]
    assert problems("client: {fallback: {kind: stage}}") == [
        "p.yaml:1: client.fallback.stage: required key is missing"
    ]
    (problem,) = problems("client: {fallback: {kind: stage, stage: Big-Model}}")
    assert problem.startswith("p.yaml:1: client.fallback.stage: string should match pattern")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("client: {timeout_s: 0}", "client.timeout_s"),
        ("client: {timeout_s: -1}", "client.timeout_s"),
        ("client: {timeout_s: .inf}", "client.timeout_s"),
        ("client: {breaker: {fail_max: 0}}", "client.breaker.fail_max"),
        ("client: {breaker: {reset_timeout_s: 0}}", "client.breaker.reset_timeout_s"),
        ("client: {breaker: {half_open_trials: 0}}", "client.breaker.half_open_trials"),
        ("client: {breaker: {counts: []}}", "client.breaker.counts"),
        ("client: {breaker: {counts: [timeout, timeout]}}", "client.breaker.counts"),
        ("client: {retry: {max_attempts: 100001, backoff: none}}", "client.retry.max_attempts"),
        (
            "client: {retry: {max_attempts: 2, backoff: {kind: constant, wait_s: -1}}}",
            "client.retry.backoff.wait_s",
        ),
        (
            "client: {retry: {max_attempts: 2, backoff: {kind: exponential, initial_s: 1, "
            "max_s: 2, multiplier: 0.5}}}",
            "client.retry.backoff.multiplier",
        ),
        (
            "client: {retry: {max_attempts: 2, backoff: {kind: exponential, initial_s: 1, "
            "max_s: 2, jitter: {kind: proportional, fraction: 1.5}}}}",
            "client.retry.backoff.jitter.fraction",
        ),
        (
            "client: {retry: {preset: openai-python, max_retry_after_s: 0}}",
            "client.retry.max_retry_after_s",
        ),
    ],
)
def test_out_of_range_values_are_reported_at_their_key(text: str, key: str) -> None:
    (problem,) = problems(text)
    assert problem.startswith(f"p.yaml:1: {key}: ")


# --- defaults and shorthands -----------------------------------------------------------------


def test_client_policy_defaults() -> None:
    policy = parse("client: {}")
    assert policy.timeout_s is None
    assert policy.retry == retry_preset("no-retry")
    assert policy.breaker is None
    assert policy.fallback == FailFallback(kind="fail")
    assert ClientPolicy() == policy


def test_breaker_defaults_are_pybreakers() -> None:
    breaker = parse("client: {breaker: {}}").breaker
    assert breaker == BreakerPolicy()
    assert (breaker.fail_max, breaker.reset_timeout_s, breaker.half_open_trials) == (5, 60.0, 1)
    assert set(breaker.counts) == set(OUTCOMES)


def test_shorthands_for_variants_without_parameters() -> None:
    policy = parse("""\
        client:
          retry:
            max_attempts: 3
            backoff: {kind: exponential, initial_s: 1, max_s: 4, jitter: equal}
          fallback: skip
        """)
    assert isinstance(policy.retry.backoff, ExponentialBackoff)
    assert policy.retry.backoff.jitter == EqualJitter(kind="equal")
    assert policy.retry.backoff.multiplier == 2.0
    assert policy.fallback == SkipFallback(kind="skip")
    assert parse("client: {fallback: fail}").fallback == FailFallback(kind="fail")
    no_jitter = parse(
        "client: {retry: {max_attempts: 2, backoff: {kind: exponential, initial_s: 1, max_s: 1}}}"
    ).retry.backoff
    assert isinstance(no_jitter, ExponentialBackoff)
    assert no_jitter.jitter == NoJitter(kind="none")
    full = parse(
        "client: {retry: {max_attempts: 2, backoff: {kind: exponential, initial_s: 1, "
        "max_s: 1, jitter: {kind: full}}}}"
    ).retry.backoff
    assert isinstance(full, ExponentialBackoff)
    assert full.jitter == FullJitter(kind="full")


def test_fallback_to_another_stage() -> None:
    policy = parse("client: {fallback: {kind: stage, stage: generate_small}}")
    assert policy.fallback == StageFallback(kind="stage", stage="generate_small")


def test_models_accept_python_objects_and_are_frozen() -> None:
    policy = ClientPolicy(retry=retry_preset("openai-python"), breaker=BreakerPolicy(fail_max=2))
    assert policy.retry.max_attempts == 3
    assert ClientPolicy.model_validate({"retry": "openai-python"}) == ClientPolicy(
        retry=retry_preset("openai-python")
    )
    with pytest.raises(ValidationError, match="frozen"):
        policy.timeout_s = 3.0  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        policy.retry.max_attempts = 4  # type: ignore[misc]
    assert hash(policy.retry) == hash(retry_preset("openai-python"))
