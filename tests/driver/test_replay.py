"""The replay plan: the model's workload as requests, scaled, cut and shared among workers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ragstress.config import ConfigError, Profile, Scenario, load_profile
from ragstress.driver.replay import (
    RAG_STAGES,
    answer_stage,
    build_replay,
    load_run_inputs,
    system_prompt_tokens,
)
from ragstress.driver.spec import EndpointSettings, RunSettings
from ragstress.workload import build_workload
from tests.builders import REFERENCE_PROFILE, mmc_profile, poisson_scenario

REPO = Path(__file__).resolve().parents[2]
STEADY = REPO / "scenarios" / "steady.yaml"


def _settings(**fields: Any) -> RunSettings:
    endpoint = fields.pop("endpoint", {"kind": "rag", "target": "http://127.0.0.1:8000"})
    return RunSettings.model_validate(
        {"scenario": "s.yaml", "out": "out", "endpoint": endpoint, **fields}
    )


def _scenario(rate: float = 20.0, duration_s: float = 10.0, **fields: Any) -> Scenario:
    return poisson_scenario(
        duration_s=duration_s, warmup_s=duration_s / 10, seed=11, rate=rate, **fields
    )


def _llm_profile(**extra_stages: Any) -> Profile:
    stages: list[dict[str, Any]] = [
        {"kind": "pool", "name": "retrieve", "service": {"kind": "deterministic", "value": 0.01}},
        {
            "kind": "llm_api",
            "name": "generate",
            "concurrency": 4,
            "ttft": {"kind": "deterministic", "value": 0.2},
            "time_per_output_token_s": 0.01,
            "system_prompt_tokens": 77,
            "client": {"fallback": {"kind": "stage", "stage": "small"}},
        },
        {
            "kind": "llm_api",
            "name": "small",
            "fallback_only": True,
            "concurrency": 4,
            "ttft": {"kind": "deterministic", "value": 0.1},
            "time_per_output_token_s": 0.01,
            "system_prompt_tokens": 5,
        },
        {"kind": "pool", "name": "guard", "service": {"kind": "deterministic", "value": 0.01}},
    ]
    return Profile.model_validate({"name": "llm", "stages": stages, **extra_stages})


def test_same_requests_as_the_model() -> None:
    scenario = _scenario()
    workload = build_workload(scenario)
    plan = build_replay(_settings(), scenario, None)
    assert len(plan) == len(workload) > 100
    assert [r.id for r in plan.requests] == list(range(len(workload)))
    assert np.array_equal([r.at_s for r in plan.requests], workload.arrival_s)
    assert [r.query_tokens for r in plan.requests] == workload.query_tokens.tolist()
    assert [r.top_k for r in plan.requests] == workload.top_k.tolist()
    assert [r.max_tokens for r in plan.requests] == workload.output_tokens.tolist()
    assert [r.prompt_tokens for r in plan.requests] == workload.prompt_tokens(0).tolist()
    assert [r.query for r in plan.requests[:20]] == [workload.query_text(i) for i in range(20)]
    assert plan.seed == scenario.seed
    assert plan.duration_s == scenario.duration_s
    assert not plan.truncated
    assert plan.time_scale == 1.0
    assert plan.scenario is scenario
    assert plan.profile is None


def test_seed_override_is_the_models() -> None:
    scenario = _scenario()
    plan = build_replay(_settings(seed=99), scenario, None)
    workload = build_workload(scenario, 99)
    assert plan.seed == 99
    assert np.array_equal([r.at_s for r in plan.requests], workload.arrival_s)


def test_repeated_queries_have_the_same_text() -> None:
    scenario = _scenario(requests={"distinct_queries": 5})
    workload = build_workload(scenario)
    plan = build_replay(_settings(), scenario, None)
    by_qid: dict[int, set[str]] = {}
    for r in plan.requests:
        by_qid.setdefault(int(workload.query_id[r.id]), set()).add(r.query)
    assert all(len(texts) == 1 for texts in by_qid.values())
    assert [r.query for r in plan.requests[:10]] == [workload.query_text(i) for i in range(10)]


def test_time_scale_divides_times_and_duration() -> None:
    scenario = _scenario()
    plain = build_replay(_settings(), scenario, None)
    fast = build_replay(_settings(time_scale=4.0), scenario, None)
    assert [r.id for r in fast.requests] == [r.id for r in plain.requests]
    assert np.allclose([r.at_s for r in fast.requests], [r.at_s / 4 for r in plain.requests])
    assert fast.duration_s == pytest.approx(scenario.duration_s / 4)
    assert fast.time_scale == 4.0
    assert [r.query for r in fast.requests] == [r.query for r in plain.requests]


def test_max_requests_truncates() -> None:
    scenario = _scenario()
    n = len(build_workload(scenario))
    plan = build_replay(_settings(max_requests=25), scenario, None)
    assert plan.truncated
    assert [r.id for r in plan.requests] == list(range(25))
    assert plan.workload_requests == n
    assert plan.duration_s == scenario.duration_s  # the window stays the scenario's
    whole = build_replay(_settings(max_requests=n), scenario, None)
    assert not whole.truncated
    assert len(whole) == n


def test_requests_are_sorted_by_send_time() -> None:
    plan = build_replay(_settings(), _scenario(rate=200.0), None)
    times = [r.at_s for r in plan.requests]
    assert times == sorted(times)


@pytest.mark.parametrize("workers", [1, 2, 3, 4])
def test_shares_partition_the_plan(workers: int) -> None:
    plan = build_replay(_settings(), _scenario(), None)
    shares = [plan.share(k, workers) for k in range(workers)]
    ids = [r.id for share in shares for r in share]
    assert sorted(ids) == [r.id for r in plan.requests]
    assert len(ids) == len(set(ids))
    for k, share in enumerate(shares):
        assert all(r.id % workers == k for r in share)
        times = [r.at_s for r in share]
        assert times == sorted(times)


def test_share_rejects_bad_indices() -> None:
    plan = build_replay(_settings(), _scenario(duration_s=1.0), None)
    with pytest.raises(ValueError, match="workers"):
        plan.share(0, 0)
    with pytest.raises(ValueError, match="worker_index"):
        plan.share(2, 2)
    with pytest.raises(ValueError, match="worker_index"):
        plan.share(-1, 2)


def test_prompt_tokens_use_the_answering_llms_system_prompt() -> None:
    scenario = _scenario()
    workload = build_workload(scenario)
    profile = _llm_profile()
    # the last LLM stage on the main path, not the fallback-only one after it
    stage = answer_stage(profile)
    assert stage is not None
    assert stage.name == "generate"
    assert system_prompt_tokens(profile) == 77
    plan = build_replay(_settings(), scenario, profile)
    assert [r.prompt_tokens for r in plan.requests] == workload.prompt_tokens(77).tolist()
    assert plan.stages == ("retrieve", "generate", "small", "guard")


def test_reference_profile_prompt_and_stages() -> None:
    scenario = _scenario()
    profile = load_profile(REFERENCE_PROFILE)
    plan = build_replay(_settings(), scenario, profile)
    workload = build_workload(scenario)
    assert [r.prompt_tokens for r in plan.requests] == workload.prompt_tokens(35).tolist()
    assert plan.stages == ("embed_cache", "embed", "retrieve", "generate")


def test_no_llm_stage_means_no_system_prompt() -> None:
    profile = mmc_profile()
    assert answer_stage(profile) is None
    assert system_prompt_tokens(profile) == 0
    assert system_prompt_tokens(None) == 0


def test_stages_without_a_profile() -> None:
    scenario = _scenario(duration_s=1.0)
    assert build_replay(_settings(), scenario, None).stages == RAG_STAGES
    openai = {"kind": "openai-chat", "target": "http://127.0.0.1:8001"}
    assert build_replay(_settings(endpoint=openai), scenario, None).stages == ()


def test_load_run_inputs_reads_both_files() -> None:
    settings = _settings(scenario=str(STEADY), profile=str(REFERENCE_PROFILE))
    scenario, profile = load_run_inputs(settings)
    assert scenario.name == "steady"
    assert profile is not None
    assert profile.name == "reference"
    alone, none = load_run_inputs(_settings(scenario=str(STEADY)))
    assert alone.name == "steady"
    assert none is None


def test_load_run_inputs_reports_both_files_problems(tmp_path: Path) -> None:
    bad_scenario = tmp_path / "scenario.yaml"
    bad_scenario.write_text(
        "name: x\nduration_s: 10\narrivals: {kind: poisson, rate: 1}\nbogus: 1\n"
    )
    bad_profile = tmp_path / "profile.yaml"
    bad_profile.write_text("name: p\nstages: []\n")
    settings = _settings(scenario=str(bad_scenario), profile=str(bad_profile))
    with pytest.raises(ConfigError) as caught:
        load_run_inputs(settings)
    text = str(caught.value)
    assert f"{bad_scenario}:4" in text
    assert "bogus" in text
    assert str(bad_profile) in text
    missing = _settings(scenario=str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match=r"nope\.yaml"):
        load_run_inputs(missing)


def test_endpoint_settings_are_not_needed_beyond_kind() -> None:
    # a template endpoint without a profile has no stage columns
    endpoint = EndpointSettings(
        kind="template", target="http://127.0.0.1:9000", path="/x", body_template="{}"
    )
    plan = build_replay(_settings(endpoint=endpoint.model_dump()), _scenario(duration_s=1), None)
    assert plan.stages == ()
