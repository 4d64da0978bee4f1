"""Raw samples on disk (written as they arrive, never lost) and the run folder they become."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ragstress.config import Profile, Scenario
from ragstress.driver.recorder import (
    LAG_FLOOR_S,
    LAG_P99_MAX_S,
    SampleWriter,
    finalize_run,
    generator_health,
    make_cost_fn,
    read_samples,
    sample_header,
)
from ragstress.driver.replay import ReplayPlan, build_replay
from ragstress.driver.spec import SAMPLE_COLUMNS, ReplayRequest, RunSettings, Sample
from ragstress.model import simulate
from ragstress.results import read_run
from ragstress.workload import build_workload
from tests.builders import poisson_scenario

REPO = Path(__file__).resolve().parents[2]
STAGES = ("embed", "generate")
SECRET = "sk-live-0123456789abcdef"


def _settings(out: Path, **fields: Any) -> RunSettings:
    endpoint = {
        "kind": "rag",
        "target": "http://user:hunter2@127.0.0.1:8000/base?api_key=abc",
        "headers": {"X-Static": "static-value"},
        "header_env": {"Authorization": "RAGSTRESS_TEST_KEY"},
    }
    return RunSettings.model_validate(
        {"scenario": "s.yaml", "out": str(out), "endpoint": endpoint, **fields}
    )


def _scenario(duration_s: float = 20.0, warmup_s: float = 4.0, rate: float = 5.0) -> Scenario:
    return poisson_scenario(
        duration_s=duration_s,
        warmup_s=warmup_s,
        seed=5,
        rate=rate,
        slo={"latency_s": {"p95": 2.0}},
    )


def _profile() -> Profile:
    return Profile.model_validate(
        {
            "name": "priced",
            "stages": [
                {
                    "kind": "pool",
                    "name": "embed",
                    "concurrency": 8,
                    "service": {"kind": "deterministic", "value": 0.01},
                    "input_tokens": "query",
                    "replicas": 2,
                    "price": {
                        "per_call_usd": 0.0001,
                        "per_1m_input_tokens_usd": 10.0,
                        "per_replica_hour_usd": 3.6,
                    },
                },
                {
                    "kind": "llm_api",
                    "name": "generate",
                    "concurrency": 100,
                    "ttft": {"kind": "deterministic", "value": 0.2},
                    "time_per_output_token_s": 0.001,
                    "system_prompt_tokens": 50,
                    "client": {"fallback": {"kind": "stage", "stage": "small"}},
                    "price": {
                        "per_call_usd": 0.001,
                        "per_1m_input_tokens_usd": 1.0,
                        "per_1m_output_tokens_usd": 4.0,
                    },
                },
                {
                    "kind": "llm_api",
                    "name": "small",
                    "fallback_only": True,
                    "concurrency": 10,
                    "ttft": {"kind": "deterministic", "value": 0.1},
                    "time_per_output_token_s": 0.001,
                    "price": {"per_call_usd": 5.0},
                },
            ],
        }
    )


def _sample(i: int, **fields: Any) -> Sample:
    base: dict[str, Any] = {
        "id": i,
        "arrival_s": i / 3,  # a value that does not print exactly in decimal
        "outcome": "ok",
        "latency_s": 0.1 + i / 7,
        "ttft_s": 0.05 + i / 11,
        "send_lag_s": 0.0001 * (i % 7) / 3,
        "attempts": 1,
        "tokens_in": 100 + i,
        "tokens_out": 10 + i,
        "status": 200,
        "stages": {"embed": 0.002 + i / 1000, "generate": 0.09},
        "error": "",
    }
    return Sample(**{**base, **fields})


def _plan(settings: RunSettings, scenario: Scenario, profile: Profile | None) -> ReplayPlan:
    return build_replay(settings, scenario, profile)


def _finalize(
    out: Path, plan: ReplayPlan, settings: RunSettings, **fields: Any
) -> tuple[Any, dict[str, Any]]:
    args: dict[str, Any] = {
        "settings": settings,
        "complete": True,
        "started_at": "2026-01-01T00:00:00+00:00",
        "notes": [],
        "extra": {},
        "environ": {"RAGSTRESS_TEST_KEY": SECRET},
        **fields,
    }
    return finalize_run(out, plan, **args)


# --- writing and reading -------------------------------------------------------------------


def test_header() -> None:
    assert sample_header(STAGES) == [
        *SAMPLE_COLUMNS,
        "embed_wait_s",
        "embed_service_s",
        "generate_wait_s",
        "generate_service_s",
    ]


def test_round_trip_with_nan_and_quoted_errors(tmp_path: Path) -> None:
    samples = [
        _sample(0),
        _sample(
            1,
            outcome="error_5xx",
            latency_s=0.25,
            ttft_s=math.nan,
            status=502,
            tokens_in=0,
            tokens_out=0,
            stages={"embed": 0.003, "rerank": 0.5},  # a stage the plan does not name: dropped
            error='HTTP 502: upstream said "no", then, well,\nnothing',
        ),
        Sample.shed(ReplayRequest(2, 0.75, "q", 5, 3, 40, 16)),
    ]
    with SampleWriter(tmp_path, STAGES, cost_fn=lambda s: s.tokens_out * 0.1) as writer:
        # completion order is not id order
        assert writer.write([samples[2], samples[0]]) == 2
        writer.write([samples[1]])
    cols, skipped = read_samples(tmp_path / "requests.csv", STAGES)
    assert skipped == {"torn": 0, "malformed": 0, "duplicate": 0}
    assert cols["id"].tolist() == [0, 1, 2]
    assert cols["arrival_s"].tolist() == [0.0, 1 / 3, 0.75]  # exact: written with repr
    assert cols["latency_s"][0] == 0.1
    assert cols["ttft_s"][0] == 0.05
    assert math.isnan(cols["ttft_s"][1])
    assert math.isnan(cols["latency_s"][2])
    assert math.isnan(cols["send_lag_s"][2])
    assert cols["outcome"].tolist() == ["ok", "error_5xx", "shed"]
    assert cols["error"].tolist() == [
        "",
        'HTTP 502: upstream said "no", then, well, nothing',
        "max_in_flight reached",
    ]
    assert cols["status"].tolist() == [200, 502, 0]
    assert cols["status"].dtype == np.int64
    assert cols["cost_usd"].tolist() == pytest.approx([1.0, 0.0, 0.0])
    assert cols["embed_service_s"].tolist()[:2] == [0.002, 0.003]
    assert np.isnan(cols["embed_wait_s"]).all()  # from outside, wait cannot be told apart
    assert cols["generate_service_s"][0] == 0.09
    assert math.isnan(cols["generate_service_s"][1])
    assert "rerank_service_s" not in cols


def test_writer_refuses_after_close_and_closes_twice(tmp_path: Path) -> None:
    writer = SampleWriter(tmp_path, ())
    writer.close()
    writer.close()
    with pytest.raises(ValueError, match="closed"):
        writer.write([_sample(0)])
    # the header is on disk at once, before any sample
    assert (tmp_path / "requests.csv").read_text().splitlines() == [",".join(SAMPLE_COLUMNS)]


def test_flushed_rows_survive_a_killed_process(tmp_path: Path) -> None:
    """The driver process dies without closing anything: what it wrote is on disk."""
    code = f"""
import os, signal
from pathlib import Path
from ragstress.driver.recorder import SampleWriter
from ragstress.driver.spec import Sample
writer = SampleWriter(Path({str(tmp_path)!r}), ("embed",))
for i in range(5):
    writer.write([Sample(i, i / 3, "ok", 0.5, 0.1, 0.0, 1, 10, 2, 200, {{"embed": 0.01}})])
os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, check=False, timeout=120)
    assert proc.returncode == -9
    cols, _ = read_samples(tmp_path / "requests.csv", ("embed",))
    assert cols["id"].tolist() == [0, 1, 2, 3, 4]


def test_partial_file_is_readable_and_the_run_incomplete(tmp_path: Path) -> None:
    scenario = _scenario()
    settings = _settings(tmp_path)
    plan = _plan(settings, scenario, None)
    assert len(plan) > 20
    writer = SampleWriter(tmp_path, plan.stages)
    writer.write([_sample(i, arrival_s=plan.requests[i].at_s) for i in (3, 1, 2, 0, 5)])
    # never closed; a last row torn mid-write, and a row repeated
    with (tmp_path / "requests.csv").open("a", encoding="utf-8") as fh:
        fh.write("1,0.3,ok,0.1,0.05,1,1,1,0.0,0.0,200,,,,,,,\n")
        fh.write("7,2.3333,ok,0.1")
    result, summary = _finalize(tmp_path, plan, settings, complete=False, notes=["stopped"])
    assert result.requests["id"].tolist() == [0, 1, 2, 3, 5]
    assert not result.manifest.complete
    assert summary["complete"] is False
    notes = result.manifest.notes
    assert notes[0] == "stopped"
    assert any(n.startswith("interrupted: 5 of") and "absent" in n for n in notes)
    assert any("1 torn row" in n for n in notes)
    assert any("1 duplicate row" in n for n in notes)
    assert summary["driver"]["requests_recorded"] == 5
    assert summary["driver"]["requests_missing"] == len(plan) - 5
    # the folder reads back as a run, rows in id order and the torn row gone
    again = read_run(tmp_path)
    assert again.requests["id"].tolist() == [0, 1, 2, 3, 5]
    assert (tmp_path / "requests.csv").read_text().endswith("\n")
    writer.close()


def test_finalize_writes_a_measured_run(tmp_path: Path) -> None:
    scenario = _scenario()
    profile = _profile()
    settings = _settings(tmp_path)
    plan = _plan(settings, scenario, profile)
    samples = [_sample(r.id, arrival_s=r.at_s) for r in plan.requests]
    samples[4] = _sample(4, arrival_s=plan.requests[4].at_s, error=f"echo: Bearer {SECRET}")
    with SampleWriter(tmp_path, plan.stages, cost_fn=make_cost_fn(profile, plan.requests)) as w:
        w.write(reversed(samples))
    health = generator_health(
        tmp_path / "requests.csv",
        intended_rps=len(plan) / plan.duration_s,
        duration_s=plan.duration_s,
        cpu_seconds=1.0,
    )
    extra = {**health, "target": settings.endpoint.target, "kind": "rag", "workers": 2}
    result, summary = _finalize(tmp_path, plan, settings, extra=extra)

    m = result.manifest
    assert m.source == "measured"
    assert m.complete
    assert m.seed == scenario.seed
    assert m.stages == ["embed", "generate", "small"]
    assert m.duration_s == scenario.duration_s
    assert m.scenario == scenario.model_dump(mode="json")
    assert m.profile == profile.model_dump(mode="json")
    assert m.started_at == "2026-01-01T00:00:00+00:00"
    assert {"python", "ragstress", "numpy", "locust"} <= set(m.versions)
    # 2 replicas × $3.6/h for 20 s, as the model computes it
    assert m.fixed_cost_usd == pytest.approx(2 * 3.6 * 20 / 3600)
    assert result.requests["id"].tolist() == list(range(len(plan)))

    assert summary["source"] == "measured"
    assert summary["requests"] == int((result.requests["arrival_s"] >= 4.0).sum())
    assert summary["cost_usd"]["per_request_charges"] > 0
    driver = summary["driver"]
    assert driver["endpoint"] == "rag"
    assert driver["target"] == "http://127.0.0.1:8000/base?[redacted]"
    assert driver["time_scale"] == 1.0
    assert driver["workers"] == 2
    assert driver["requests_planned"] == driver["requests_recorded"] == len(plan)
    assert driver["suspect"] is False

    on_disk = read_run(tmp_path)
    assert on_disk.manifest == m
    for name, column in result.requests.items():
        if column.dtype.kind == "f":
            assert np.array_equal(on_disk.requests[name], column, equal_nan=True), name
        else:
            assert on_disk.requests[name].tolist() == column.tolist(), name
    assert json.loads((tmp_path / "summary.json").read_text())["driver"]["workers"] == 2
    record = json.loads((tmp_path / "driver.json").read_text())
    assert record["achieved_rps"] == pytest.approx(health["achieved_rps"])
    assert record["settings"]["endpoint"]["headers"] == ["X-Static"]
    assert record["settings"]["endpoint"]["header_env"] == {"Authorization": "RAGSTRESS_TEST_KEY"}

    # no secret anywhere: not the environment's key, not the URL's password or query
    for path in tmp_path.iterdir():
        text = path.read_text()
        assert SECRET not in text, path.name
        assert "hunter2" not in text, path.name
        assert "static-value" not in text, path.name
    assert "[redacted]" in result.requests["error"][4]


def test_time_scale_scales_the_window(tmp_path: Path) -> None:
    scenario = _scenario(duration_s=100.0, warmup_s=20.0, rate=2.0)
    brownout = {"kind": "error", "stage": "work", "status": 429, "start_s": 40, "end_s": 60}
    scenario = scenario.model_validate({**scenario.model_dump(), "faults": [brownout]})
    settings = _settings(tmp_path, time_scale=4.0)
    plan = _plan(settings, scenario, None)
    assert plan.duration_s == 25.0
    with SampleWriter(tmp_path, plan.stages) as writer:
        writer.write(_sample(r.id, arrival_s=r.at_s) for r in plan.requests)
    result, summary = _finalize(tmp_path, plan, settings)
    assert result.manifest.duration_s == 25.0
    assert result.manifest.scenario["duration_s"] == 25.0
    assert result.manifest.scenario["warmup_s"] == 5.0
    # fault windows on the run's clock, as `run --chaos` plays them and charts shade them
    fault = result.manifest.scenario["faults"][0]
    assert (fault["start_s"], fault["end_s"]) == (10.0, 15.0)
    assert summary["window_s"] == [5.0, 25.0]
    arrivals = result.requests["arrival_s"]
    assert summary["requests"] == int(((arrivals >= 5.0) & (arrivals < 25.0)).sum())
    assert summary["requests"] < len(plan)
    assert summary["offered_rps"] == pytest.approx(summary["requests"] / 20.0)
    assert any(n.startswith("time_scale 4:") for n in result.manifest.notes)
    assert summary["driver"]["scenario_warmup_s"] == 20.0
    assert summary["driver"]["time_scale"] == 4.0


def test_truncation_and_suspect_generator_are_noted(tmp_path: Path) -> None:
    settings = _settings(tmp_path, max_requests=10)
    plan = _plan(settings, _scenario(), None)
    SampleWriter(tmp_path, plan.stages).close()
    extra = {"generator": {"suspect": True, "reasons": ["p99 send lag 80 ms is over 50 ms"]}}
    result, summary = _finalize(tmp_path, plan, settings, extra=extra)
    notes = result.manifest.notes
    assert any(n.startswith("replay truncated at max_requests: 10 of") for n in notes)
    assert any("bottleneck" in n and "80 ms" in n for n in notes)
    assert summary["requests"] == 0
    assert summary["driver"]["generator"]["suspect"] is True


def test_finalize_without_a_samples_file(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    plan = _plan(settings, _scenario(), None)
    result, summary = _finalize(tmp_path, plan, settings, complete=False)
    assert len(result) == 0
    assert summary["requests"] == 0
    assert (tmp_path / "manifest.json").is_file()


# --- cost ----------------------------------------------------------------------------------


def test_cost_without_a_profile_is_zero() -> None:
    assert make_cost_fn(None)(_sample(1)) == 0.0


def test_cost_by_stage_reached() -> None:
    profile = _profile()
    req = ReplayRequest(1, 0.0, "q", 5, query_tokens=20, prompt_tokens=50 + 20 + 300, max_tokens=9)
    cost = make_cost_fn(profile, [req])
    embed = 0.0001 + 20 * 10.0 / 1e6
    generate = 0.001 + 370 * 1.0 / 1e6 + 9 * 4.0 / 1e6
    answered = _sample(1, tokens_in=370, tokens_out=9, stages={"embed": 0.01, "generate": 0.3})
    assert cost(answered) == pytest.approx(embed + generate)
    # no stage times: an answered request reached every main-path stage
    assert cost(_sample(1, tokens_in=370, tokens_out=9, stages={})) == pytest.approx(
        embed + generate
    )
    # the LLM reported no input tokens: the replayed prompt size stands in
    assert cost(_sample(1, tokens_in=0, tokens_out=9, stages={})) == pytest.approx(embed + generate)
    # failed after embed, before the LLM produced anything
    failed = _sample(
        1, outcome="error_5xx", status=502, tokens_in=0, tokens_out=0, stages={"embed": 0.01}
    )
    assert cost(failed) == pytest.approx(embed)
    nothing = _sample(1, outcome="error_connect", status=0, tokens_in=0, tokens_out=0, stages={})
    assert cost(nothing) == 0.0
    # without the replayed requests, token prices of other stages are unknown
    assert make_cost_fn(profile)(answered) == pytest.approx(0.0001 + generate)


def test_cost_follows_the_models_rule() -> None:
    """Samples with the model's own token counts cost what the model charged."""
    profile = _profile()
    scenario = _scenario(rate=2.0)
    workload = build_workload(scenario)
    simulated = simulate(workload, profile)
    assert (simulated.requests["outcome"] == "ok").all()
    plan = build_replay(_settings(Path("unused")), scenario, profile)
    cost = make_cost_fn(profile, plan.requests)
    cols = simulated.requests
    for i in range(len(workload)):
        sample = _sample(
            i,
            tokens_in=int(cols["tokens_in"][i]),
            tokens_out=int(cols["tokens_out"][i]),
            stages={},
        )
        assert cost(sample) == pytest.approx(float(cols["cost_usd"][i]), rel=1e-12), i


# --- generator health ----------------------------------------------------------------------


def test_a_healthy_generator_passes() -> None:
    rng = np.random.default_rng(1)
    lags = rng.uniform(0.0, 0.001, 1000)
    health = generator_health(lags, intended_rps=10.0, duration_s=100.0, cpu_seconds=20.0)
    assert health["suspect"] is False
    assert health["reasons"] == []
    assert health["achieved_rps"] == 10.0
    assert health["achieved_ratio"] == 1.0
    assert health["send_lag_p99_s"] < 0.001
    assert health["cpu_share"] == pytest.approx(0.2)
    assert health["send_lag_limit_s"] == pytest.approx(0.010)  # a tenth of the 100 ms gap


def test_lag_limit_follows_the_rate() -> None:
    lags = np.zeros(10)
    assert generator_health(lags, intended_rps=1.0, duration_s=10, cpu_seconds=0)[
        "send_lag_limit_s"
    ] == pytest.approx(LAG_P99_MAX_S)
    assert generator_health(lags, intended_rps=10.0, duration_s=1, cpu_seconds=0)[
        "send_lag_limit_s"
    ] == pytest.approx(0.010)
    assert generator_health(lags, intended_rps=1000.0, duration_s=0.01, cpu_seconds=0)[
        "send_lag_limit_s"
    ] == pytest.approx(LAG_FLOOR_S)


def test_a_lagging_generator_is_flagged() -> None:
    lags = np.concatenate([np.full(950, 0.001), np.full(50, 0.2)])
    health = generator_health(lags, intended_rps=10.0, duration_s=100.0, cpu_seconds=95.0)
    assert health["suspect"] is True
    assert any("send lag" in r for r in health["reasons"])
    assert any("CPU" in r for r in health["reasons"])
    assert health["send_lag_max_s"] == pytest.approx(0.2)


def test_a_generator_that_did_not_send_is_flagged(tmp_path: Path) -> None:
    with SampleWriter(tmp_path, ()) as writer:
        writer.write(_sample(i, send_lag_s=0.0) for i in range(90))
        writer.write(Sample.shed(ReplayRequest(i, 0.0, "q", 1, 1, 2, 1)) for i in range(90, 100))
    health = generator_health(
        tmp_path / "requests.csv", intended_rps=1.0, duration_s=100.0, cpu_seconds=1.0
    )
    assert health["sent"] == 90
    assert health["not_sent"] == 10
    assert health["suspect"] is True
    assert health["reasons"] == ["sent 0.9 req/s of 1 intended (90.0%; 10 not sent)"]


def test_health_of_nothing() -> None:
    health = generator_health([], intended_rps=0.0, duration_s=0.0, cpu_seconds=0.0)
    assert health["suspect"] is False
    assert math.isnan(health["send_lag_p99_s"])
    assert math.isnan(health["achieved_rps"])


def test_driver_modules_import_neither_locust_nor_gevent() -> None:
    """They are imported by the CLI too, where gevent's monkey-patching must never happen."""
    code = (
        "import sys\n"
        "import ragstress.driver.endpoints, ragstress.driver.recorder, ragstress.driver.replay\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('locust', 'gevent'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)
