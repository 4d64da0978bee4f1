"""Malformed profile and scenario files: every problem is one ``file:LINE: key: what`` line.

Each case is a whole YAML file written to a temporary folder. The expected line number was
worked out by hand from the text (line 1 is the first line of the string), so a regression in
the loader's line mapping shows up as a plain mismatch here.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from ragstress.config import (
    ConfigError,
    Exponential,
    LlmApiStage,
    PoolStage,
    Price,
    Profile,
    Scenario,
    load_profile,
    load_scenario,
)
from ragstress.config.scenario import RampRate, RequestMix, Slo

Which = Literal["profile", "scenario"]

# file:LINE: key: message  (the key never contains ": ", the message may)
SHAPE = re.compile(r"^(?P<file>.+?):(?P<line>\d+): (?P<key>[^:]+?): (?P<msg>.+)$")


def doc(text: str) -> str:
    return textwrap.dedent(text)


def fields(model: type, *, drop: tuple[str, ...] = ("kind",)) -> tuple[str, ...]:
    return tuple(k for k in model.model_fields if k not in drop)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Case:
    id: str
    which: Which
    text: str | bytes
    line: int
    key: str
    message: str  # a substring of the message part
    allowed: tuple[str, ...] | None = None  # for unknown keys: exactly the keys listed


GOOD_PROFILE = doc("""\
    name: demo
    stages:
      - kind: pool
        name: embed
        service: {kind: exponential, mean: 0.01}
    """)

GOOD_SCENARIO = doc("""\
    name: steady
    duration_s: 60
    arrivals: {kind: poisson, rate: 5}
    """)

PROFILE_CASES = [
    # --- wrong types -------------------------------------------------------------------------
    Case(
        "name-is-a-list",
        "profile",
        doc("""\
            description: x
            name: [a, b]
            stages:
              - {kind: pool, name: embed, service: {kind: exponential, mean: 0.01}}
            """),
        2,
        "name",
        "valid string",
    ),
    Case(
        "replicas-is-text",
        "profile",
        doc("""\
            name: demo
            stages:
              - kind: pool
                name: embed
                replicas: many
                service: {kind: exponential, mean: 0.01}
            """),
        5,
        "stages[0].replicas",
        "valid integer",
    ),
    Case(
        "concurrency-is-fractional",
        "profile",
        doc("""\
            name: demo
            stages:
              - kind: llm_api
                name: generate
                concurrency: 1.5
                ttft: {kind: deterministic, value: 0.2}
                time_per_output_token_s: 0.01
            """),
        5,
        "stages[0].concurrency",
        "fractional part",
    ),
    Case(
        "stages-is-a-mapping",
        "profile",
        doc("""\
            name: demo
            stages:
              embed: {kind: pool, service: {kind: exponential, mean: 0.01}}
            """),
        2,
        "stages",
        "input should be a list (got dict)",
    ),
    Case(
        "input-tokens-not-allowed",
        "profile",
        doc("""\
            name: demo
            stages:
              - kind: pool
                name: embed
                service: {kind: exponential, mean: 0.01}
                input_tokens: everything
            """),
        6,
        "stages[0].input_tokens",
        "allowed: none, query, context or prompt",
    ),
    Case(
        "stage-name-pattern",
        "profile",
        doc("""\
            name: demo
            stages:
              - kind: pool
                name: Embed Stage
                service: {kind: exponential, mean: 0.01}
            """),
        4,
        "stages[0].name",
        "should match pattern",
    ),
    Case(
        "key-is-a-number",
        "profile",
        doc("""\
            name: demo
            1: one
            stages:
              - {kind: pool, name: embed, service: {kind: exponential, mean: 0.01}}
            """),
        2,
        "1",
        "keys should be strings",
    ),
    Case(
        "key-is-a-list",
        "profile",
        doc("""\
            name: demo
            ? [a, b]
            : x
            """),
        2,
        "(top level)",
        "keys must be scalars",
    ),
    # --- unknown keys ------------------------------------------------------------------------
    Case(
        "unknown-top-level-key",
        "profile",
        doc("""\
            name: demo
            colour: blue
            stages:
              - {kind: pool, name: embed, service: {kind: exponential, mean: 0.01}}
            """),
        2,
        "colour",
        "unknown key",
        fields(Profile),
    ),
    Case(
        "unknown-key-in-pool-stage",
        "profile",
        doc("""\
            name: demo
            stages:
              - kind: pool
                name: embed
                replica: 2
                service: {kind: exponential, mean: 0.01}
            """),
        5,
        "stages[0].replica",
        "unknown key",
        fields(PoolStage),
    ),
    Case(
        "unknown-key-in-llm-stage",
        "profile",
        doc("""\
            name: demo
            stages:
              - kind: pool
                name: embed
                service: {kind: exponential, mean: 0.01}
              - kind: llm_api
                name: generate
                concurrency: 8
                ttft: {kind: deterministic, value: 0.2}
                time_per_output_token_s: 0.01
                max_tokens: 512
            """),
        11,
        "stages[1].max_tokens",
        "unknown key",
        fields(LlmApiStage),
    ),
    Case(
        "unknown-key-in-distribution",
        "profile",
        doc("""\
            name: demo
            stages:
              - kind: pool
                name: embed
                service:
                  kind: exponential
                  mean: 0.01
                  sigma: 2
            """),
        8,
        "stages[0].service.sigma",
        "unknown key",
        fields(Exponential),
    ),
    Case(
        "unknown-key-in-price",
        "profile",
        doc("""\
            name: demo
            stages:
              - kind: pool
                name: embed
                service: {kind: exponential, mean: 0.01}
                price:
                  per_call_usd: 0.001
                  per_hour_usd: 2
            """),
        8,
        "stages[0].price.per_hour_usd",
        "unknown key",
        fields(Price),
    ),
    # --- numbers out of range ----------------------------------------------------------------
    Case(
        "service-mean-zero",
        "profile",
        doc("""\
            name: demo
            stages:
              - kind: pool
                name: embed
                service:
                  kind: exponential
                  mean: 0
            """),
        7,
        "stages[0].service.mean",
        "greater than 0",
    ),
    Case(
        "service-mean-negative",
        "profile",
        doc("""\
            name: demo
            stages:
              - kind: pool
                name: embed
                service:
                  kind: gamma
                  mean: -0.5
                  cv: 1
            """),
        7,
        "stages[0].service.mean",
        "greater than 0",
    ),
    Case(
        "deterministic-negative",
        "profile",
        doc("""\
            name: demo
            stages:
              - kind: pool
                name: embed
                service: {kind: deterministic, value: -1}
            """),
        5,
        "stages[0].service.value",
        "greater than or equal to 0",
    ),
    Case(
        "negative-price",
        "profile",
        doc("""\
            name: demo
            stages:
              - kind: pool
                name: embed
                service: {kind: exponential, mean: 0.01}
                price:
                  per_replica_hour_usd: -2.2
            """),
        7,
        "stages[0].price.per_replica_hour_usd",
        "greater than or equal to 0",
    ),
    Case(
        "negative-time-per-token",
        "profile",
        doc("""\
            name: demo
            stages:
              - kind: llm_api
                name: generate
                concurrency: 8
                ttft: {kind: deterministic, value: 0.2}
                time_per_output_token_s: -0.01
            """),
        7,
        "stages[0].time_per_output_token_s",
        "greater than 0",
    ),
    Case(
        "replicas-zero",
        "profile",
        doc("""\
            name: demo
            stages:
              - kind: pool
                name: embed
                replicas: 0
                service: {kind: exponential, mean: 0.01}
            """),
        5,
        "stages[0].replicas",
        "greater than or equal to 1",
    ),
    # --- empty / missing -----------------------------------------------------------------
    Case(
        "empty-pipeline",
        "profile",
        doc("""\
            name: demo
            description: nothing to do
            stages: []
            """),
        3,
        "stages",
        "needs 1 to 64 stages, got 0",
    ),
    Case(
        "missing-name",
        "profile",
        doc("""\
            description: no name
            stages:
              - {kind: pool, name: embed, service: {kind: exponential, mean: 0.01}}
            """),
        1,
        "name",
        "required key is missing",
    ),
    Case(
        "missing-stage-service",
        "profile",
        doc("""\
            name: demo
            stages:
              - kind: pool
                name: embed
              - kind: pool
                name: rerank
                service: {kind: exponential, mean: 0.01}
            """),
        3,
        "stages[0].service",
        "required key is missing",
    ),
    Case(
        "missing-llm-ttft",
        "profile",
        doc("""\
            name: demo
            stages:
              - kind: pool
                name: embed
                service: {kind: exponential, mean: 0.01}

              - kind: llm_api
                name: generate
                concurrency: 8
                time_per_output_token_s: 0.01
            """),
        7,
        "stages[1].ttft",
        "required key is missing",
    ),
    # --- kinds -------------------------------------------------------------------------------
    Case(
        "unknown-stage-kind",
        "profile",
        doc("""\
            name: demo
            stages:
              - kind: gpu
                name: embed
                service: {kind: exponential, mean: 0.01}
            """),
        3,
        "stages[0]",
        "unknown kind 'gpu' (allowed: pool, batcher, llm_api, llm_engine, cache)",
    ),
    Case(
        "missing-stage-kind",
        "profile",
        doc("""\
            name: demo
            stages:
              - name: embed
                service: {kind: exponential, mean: 0.01}
            """),
        3,
        "stages[0]",
        "missing key 'kind'",
    ),
    Case(
        "unknown-distribution-kind",
        "profile",
        doc("""\
            name: demo
            stages:
              - kind: pool
                name: embed
                service:
                  kind: weibull
                  mean: 0.01
            """),
        5,
        "stages[0].service",
        "unknown kind 'weibull' (allowed: exponential, deterministic, lognormal, gamma, empirical)",
    ),
    Case(
        "missing-distribution-kind",
        "profile",
        doc("""\
            name: demo
            stages:
              - kind: pool
                name: embed
                service:
                  mean: 0.01
            """),
        5,
        "stages[0].service",
        "missing key 'kind'",
    ),
    # --- duplicates --------------------------------------------------------------------------
    Case(
        "duplicate-yaml-key-top",
        "profile",
        doc("""\
            name: demo
            stages:
              - {kind: pool, name: embed, service: {kind: exponential, mean: 0.01}}
            name: again
            """),
        4,
        "name",
        "duplicate key",
    ),
    Case(
        "duplicate-yaml-key-in-stage",
        "profile",
        doc("""\
            name: demo
            stages:
              - kind: pool
                name: embed
                replicas: 2
                service: {kind: exponential, mean: 0.01}
                replicas: 3
            """),
        7,
        "stages[0].replicas",
        "duplicate key",
    ),
    Case(
        "duplicate-yaml-key-in-flow-mapping",
        "profile",
        doc("""\
            name: demo
            stages:
              - kind: pool
                name: embed
                service: {kind: exponential, mean: 0.01, mean: 0.02}
            """),
        5,
        "stages[0].service.mean",
        "duplicate key",
    ),
    Case(
        "duplicate-stage-names",
        "profile",
        doc("""\
            name: demo
            stages:
              - {kind: pool, name: embed, service: {kind: exponential, mean: 0.01}}
              - {kind: pool, name: embed, service: {kind: exponential, mean: 0.02}}
            """),
        2,
        "stages",
        "stage name 'embed' is used twice",
    ),
    # --- distributions -------------------------------------------------------------------
    Case(
        "lognormal-cv-and-p99",
        "profile",
        doc("""\
            name: demo
            stages:
              - kind: pool
                name: embed
                service:
                  kind: lognormal
                  mean: 0.1
                  cv: 0.5
                  p99: 0.4
            """),
        5,
        "stages[0].service",
        "give exactly one of cv or p99",
    ),
    Case(
        "lognormal-neither-cv-nor-p99",
        "profile",
        doc("""\
            name: demo
            stages:
              - kind: pool
                name: embed
                service: {kind: lognormal, mean: 0.1}
            """),
        5,
        "stages[0].service",
        "give exactly one of cv or p99",
    ),
    Case(
        "lognormal-p99-below-mean",
        "profile",
        doc("""\
            name: demo
            stages:
              - kind: pool
                name: embed
                service: {kind: lognormal, mean: 0.1, p99: 0.05}
            """),
        5,
        "stages[0].service",
        "p99 must be greater than mean",
    ),
    Case(
        "empirical-weights-mismatch",
        "profile",
        doc("""\
            name: demo
            stages:
              - kind: pool
                name: embed
                service:
                  kind: empirical
                  values: [0.01, 0.02, 0.03]
                  weights: [1, 2]
            """),
        5,
        "stages[0].service",
        "weights must have as many entries as values",
    ),
    Case(
        "empirical-empty-values",
        "profile",
        doc("""\
            name: demo
            stages:
              - kind: pool
                name: embed
                service:
                  kind: empirical
                  values: []
            """),
        7,
        "stages[0].service.values",
        "values must not be empty",
    ),
    # --- whole-file problems -------------------------------------------------------------
    Case("empty-file", "profile", "", 1, "(top level)", "the file is empty"),
    Case("only-a-comment", "profile", "# nothing here\n", 1, "(top level)", "the file is empty"),
    Case(
        "top-level-list",
        "profile",
        doc("""\
            - name: demo
            - stages: []
            """),
        1,
        "(top level)",
        "expected a mapping",
    ),
    Case(
        "top-level-scalar", "profile", "just some words\n", 1, "(top level)", "expected a mapping"
    ),
    # --- YAML syntax -------------------------------------------------------------------------
    Case(
        "unclosed-bracket",
        "profile",
        doc("""\
            name: demo
            stages: [
              {kind: pool, name: embed, service: {kind: exponential, mean: 0.01}}
            description: x
            """),
        4,
        "invalid YAML",
        "expected ',' or ']'",
    ),
    Case(
        "bad-indentation",
        "profile",
        doc("""\
            name: demo
            stages:
              - kind: pool
                name: embed
               service: {kind: exponential, mean: 0.01}
            """),
        5,
        "invalid YAML",
        "expected <block end>",
    ),
    Case(
        "tab-indentation",
        "profile",
        "name: demo\nstages:\n  - kind: pool\n\tname: embed\n",
        4,
        "invalid YAML",
        "found character '\\t' that cannot start any token",
    ),
    Case(
        "unterminated-quote",
        "profile",
        doc("""\
            name: "demo
            stages: []
            """),
        3,
        "invalid YAML",
        "found unexpected end of stream",
    ),
    Case(
        "control-character",
        "profile",
        "name: demo\ndescription: bell \x07 here\n",
        2,
        "invalid YAML",
        "unacceptable character #x0007",
    ),
    Case(
        "recursive-alias",
        "profile",
        doc("""\
            name: demo
            stages: &loop
              - *loop
            """),
        2,
        "stages[0]",
        "refers to itself",
    ),
    Case(
        "not-utf8",
        "profile",
        b"name: demo\ndescription: caf" + b"\xe9 cr\xe8me\nstages: []\n",
        2,
        "(top level)",
        "not UTF-8 text",
    ),
    # --- stage kinds of issue 3 and references between stages ------------------------------
    Case(
        "fallback-to-unknown-stage",
        "profile",
        doc("""\
            name: demo
            stages:
              - kind: pool
                name: rerank
                service: {kind: exponential, mean: 0.01}
                client:
                  fallback: {kind: stage, stage: nowhere}
            """),
        7,
        "stages[0].client.fallback.stage",
        "'nowhere' is not a stage (allowed: rerank)",
    ),
    Case(
        "fallback-to-a-main-path-stage",
        "profile",
        doc("""\
            name: demo
            stages:
              - kind: pool
                name: embed
                service: {kind: exponential, mean: 0.01}
              - kind: pool
                name: rerank
                service: {kind: exponential, mean: 0.01}
                client: {fallback: {kind: stage, stage: embed}}
            """),
        9,
        "stages[1].client.fallback.stage",
        "'embed' must be marked fallback_only: true",
    ),
    Case(
        "fallback-only-but-unused",
        "profile",
        doc("""\
            name: demo
            stages:
              - kind: pool
                name: embed
                service: {kind: exponential, mean: 0.01}
              - kind: pool
                name: spare
                fallback_only: true
                service: {kind: exponential, mean: 0.01}
            """),
        8,
        "stages[1].fallback_only",
        "no stage names this stage as its client.fallback.stage",
    ),
    Case(
        "cache-skips-a-stage-not-next",
        "profile",
        doc("""\
            name: demo
            stages:
              - kind: cache
                name: answers
                lookup: {kind: deterministic, value: 0.001}
                hits: {kind: probability, p: 0.2}
                skips: [generate]
              - kind: pool
                name: embed
                service: {kind: exponential, mean: 0.01}
              - kind: pool
                name: generate
                service: {kind: exponential, mean: 0.01}
            """),
        7,
        "stages[0].skips",
        "must list the stages right after the cache, in order (allowed: embed, generate)",
    ),
    Case(
        "cache-fan-out",
        "profile",
        doc("""\
            name: demo
            stages:
              - kind: cache
                name: answers
                fan_out: 2
                lookup: {kind: deterministic, value: 0.001}
                hits: {kind: key, ttl_s: 60}
                skips: [embed]
              - kind: pool
                name: embed
                service: {kind: exponential, mean: 0.01}
            """),
        5,
        "stages[0].fan_out",
        "a cache makes one lookup per request (allowed: 1)",
    ),
    Case(
        "rate-limit-without-limits",
        "profile",
        doc("""\
            name: demo
            stages:
              - kind: llm_api
                name: generate
                concurrency: 8
                ttft: {kind: deterministic, value: 0.3}
                time_per_output_token_s: 0.01
                rate_limit: {rpm_burst: 10}
            """),
        8,
        "stages[0].rate_limit",
        "give rpm, tpm or both",
    ),
    Case(
        "overload-status-not-a-shedding-status",
        "profile",
        doc("""\
            name: demo
            stages:
              - kind: llm_api
                name: generate
                concurrency: 8
                ttft: {kind: deterministic, value: 0.3}
                time_per_output_token_s: 0.01
                overload_status: 500
            """),
        8,
        "stages[0].overload_status",
        "got 500 (allowed: 503 or 529)",
    ),
    Case(
        "engine-without-step",
        "profile",
        doc("""\
            name: demo
            stages:
              - kind: llm_engine
                name: generate
                max_num_seqs: 64
                kv_cache_tokens: 100000
                max_batched_tokens: 512
            """),
        3,
        "stages[0].step",
        "required key is missing",
    ),
    Case(
        "batcher-unknown-key",
        "profile",
        doc("""\
            name: demo
            stages:
              - kind: batcher
                name: embed
                max_batch_size: 32
                max_wait_s: 0.005
                batch_time: {base_s: 0.01, per_tokn_s: 0.0001}
            """),
        7,
        "stages[0].batch_time.per_tokn_s",
        "unknown key (allowed: base_s, per_token_s)",
    ),
]

SCENARIO_CASES = [
    Case(
        "negative-rate-shorthand",
        "scenario",
        doc("""\
            name: steady
            duration_s: 60
            arrivals:
              kind: poisson
              rate: -5
            """),
        5,
        "arrivals.rate.rps",
        "greater than or equal to 0",
    ),
    Case(
        "negative-constant-rate",
        "scenario",
        doc("""\
            name: steady
            duration_s: 60
            arrivals:
              kind: poisson
              rate:
                kind: constant
                rps: -1
            """),
        7,
        "arrivals.rate.rps",
        "greater than or equal to 0",
    ),
    Case(
        "rate-is-text",
        "scenario",
        doc("""\
            name: steady
            duration_s: 60
            arrivals:
              kind: constant
              rate: fifty
            """),
        5,
        "arrivals.rate",
        "input should be a valid dictionary",
    ),
    Case(
        "rate-is-bool",
        "scenario",
        doc("""\
            name: steady
            duration_s: 60
            arrivals:
              kind: constant
              rate: true
            """),
        5,
        "arrivals.rate",
        "input should be a valid dictionary",
    ),
    Case(
        "duration-is-text",
        "scenario",
        doc("""\
            name: steady
            duration_s: ten minutes
            arrivals: {kind: poisson, rate: 5}
            """),
        2,
        "duration_s",
        "valid number",
    ),
    Case(
        "duration-zero",
        "scenario",
        doc("""\
            name: steady
            arrivals: {kind: poisson, rate: 5}
            duration_s: 0
            """),
        3,
        "duration_s",
        "greater than 0",
    ),
    Case(
        "negative-seed",
        "scenario",
        doc("""\
            name: steady
            duration_s: 60
            seed: -1
            arrivals: {kind: poisson, rate: 5}
            """),
        3,
        "seed",
        "greater than or equal to 0",
    ),
    Case(
        "seed-is-an-impossible-date",
        "scenario",
        doc("""\
            name: steady
            duration_s: 60
            seed: 2024-13-45
            arrivals: {kind: poisson, rate: 5}
            """),
        3,
        "seed",
        "cannot read",
    ),
    Case(
        "unknown-top-level-key",
        "scenario",
        doc("""\
            name: steady
            duration_s: 60
            arrivals: {kind: poisson, rate: 5}
            duration: 60
            """),
        4,
        "duration",
        "unknown key",
        fields(Scenario),
    ),
    Case(
        "unknown-key-in-arrivals",
        "scenario",
        doc("""\
            name: steady
            duration_s: 60
            arrivals:
              kind: poisson
              rate: 5
              burstiness: 2
            """),
        6,
        "arrivals.burstiness",
        "unknown key",
        ("rate",),
    ),
    Case(
        "unknown-key-in-rate-shape",
        "scenario",
        doc("""\
            name: ramp
            duration_s: 60
            arrivals:
              kind: poisson
              rate:
                kind: ramp
                from_rps: 1
                to_rps: 10
                over_s: 30
            """),
        9,
        "arrivals.rate.over_s",
        "unknown key",
        fields(RampRate),
    ),
    Case(
        "unknown-key-in-phase-shape",
        "scenario",
        doc("""\
            name: phased
            duration_s: 120
            arrivals:
              kind: poisson
              rate:
                kind: phases
                phases:
                  - duration_s: 60
                    shape: {kind: constant, rps: 5}
                  - duration_s: 60
                    shape:
                      kind: constant
                      rps: 10
                      jitter: 1
            """),
        14,
        "arrivals.rate.phases[1].shape.jitter",
        "unknown key",
        ("rps",),
    ),
    Case(
        "unknown-key-in-requests",
        "scenario",
        doc("""\
            name: steady
            duration_s: 60
            arrivals: {kind: poisson, rate: 5}
            requests:
              top_n: 5
            """),
        5,
        "requests.top_n",
        "unknown key",
        fields(RequestMix),
    ),
    Case(
        "unknown-key-in-slo-percentiles",
        "scenario",
        doc("""\
            name: steady
            duration_s: 60
            arrivals: {kind: poisson, rate: 5}
            slo:
              latency_s:
                p95: 2.0
                p999: 5.0
            """),
        7,
        "slo.latency_s.p999",
        "unknown key",
        ("p50", "p90", "p95", "p99"),
    ),
    Case(
        "unknown-key-in-slo",
        "scenario",
        doc("""\
            name: steady
            duration_s: 60
            arrivals: {kind: poisson, rate: 5}
            slo: {latency: 2}
            """),
        4,
        "slo.latency",
        "unknown key",
        fields(Slo),
    ),
    Case(
        "unknown-arrivals-kind",
        "scenario",
        doc("""\
            name: steady
            duration_s: 60
            arrivals:
              kind: burst
              rate: 5
            """),
        3,
        "arrivals",
        "unknown kind 'burst' (allowed: poisson, gamma, constant, trace)",
    ),
    Case(
        "missing-arrivals-kind",
        "scenario",
        doc("""\
            name: steady
            duration_s: 60
            arrivals:
              rate: 5
            """),
        3,
        "arrivals",
        "missing key 'kind'",
    ),
    Case(
        "unknown-rate-shape-kind",
        "scenario",
        doc("""\
            name: steady
            duration_s: 60
            arrivals:
              kind: poisson
              rate: {kind: sawtooth, rps: 5}
            """),
        5,
        "arrivals.rate",
        "unknown kind 'sawtooth' (allowed: constant, ramp, step, spike, diurnal, phases)",
    ),
    Case(
        "missing-rate-shape-kind",
        "scenario",
        doc("""\
            name: steady
            duration_s: 60
            arrivals:
              kind: poisson
              rate:
                rps: 5
            """),
        5,
        "arrivals.rate",
        "missing key 'kind'",
    ),
    Case(
        "unknown-request-distribution-kind",
        "scenario",
        doc("""\
            name: steady
            duration_s: 60
            arrivals: {kind: poisson, rate: 5}
            requests:
              top_k: 5
              output_tokens: {kind: pareto, mean: 200}
            """),
        6,
        "requests.output_tokens",
        "unknown kind 'pareto'",
    ),
    Case(
        "missing-duration",
        "scenario",
        doc("""\
            name: steady
            arrivals: {kind: poisson, rate: 5}
            """),
        1,
        "duration_s",
        "required key is missing",
    ),
    Case(
        "missing-arrivals",
        "scenario",
        doc("""\
            name: steady
            duration_s: 60
            """),
        1,
        "arrivals",
        "required key is missing",
    ),
    Case(
        "gamma-arrivals-missing-cv",
        "scenario",
        doc("""\
            name: bursty
            duration_s: 60
            arrivals:
              kind: gamma
              rate: 5
            """),
        3,
        "arrivals.cv",
        "required key is missing",
    ),
    Case(
        "gamma-arrivals-zero-cv",
        "scenario",
        doc("""\
            name: bursty
            duration_s: 60
            arrivals:
              kind: gamma
              rate: 5
              cv: 0
            """),
        6,
        "arrivals.cv",
        "greater than 0",
    ),
    Case(
        "spike-missing-peak",
        "scenario",
        doc("""\
            name: spike
            duration_s: 60
            arrivals:
              kind: poisson
              rate:
                kind: spike
                base_rps: 5
                start_s: 10
                duration_s: 5
            """),
        5,
        "arrivals.rate.peak_rps",
        "required key is missing",
    ),
    Case(
        "diurnal-amplitude-too-big",
        "scenario",
        doc("""\
            name: day
            duration_s: 86400
            arrivals:
              kind: poisson
              rate:
                kind: diurnal
                mean_rps: 5
                amplitude: 2
            """),
        8,
        "arrivals.rate.amplitude",
        "less than or equal to 1",
    ),
    Case(
        "step-not-starting-at-zero",
        "scenario",
        doc("""\
            name: steps
            duration_s: 60
            arrivals:
              kind: poisson
              rate:
                kind: step
                steps:
                  - {at_s: 5, rps: 1}
                  - {at_s: 30, rps: 10}
            """),
        7,
        "arrivals.rate.steps",
        "the first step must start at at_s: 0",
    ),
    Case(
        "step-out-of-order",
        "scenario",
        doc("""\
            name: steps
            duration_s: 60
            arrivals:
              kind: poisson
              rate:
                kind: step
                steps:
                  - {at_s: 0, rps: 1}
                  - {at_s: 30, rps: 10}
                  - {at_s: 20, rps: 5}
            """),
        7,
        "arrivals.rate.steps",
        "steps must be in increasing at_s order",
    ),
    Case(
        "step-negative-rps",
        "scenario",
        doc("""\
            name: steps
            duration_s: 60
            arrivals:
              kind: poisson
              rate:
                kind: step
                steps:
                  - at_s: 0
                    rps: 1
                  - at_s: 30
                    rps: -10
            """),
        11,
        "arrivals.rate.steps[1].rps",
        "greater than or equal to 0",
    ),
    Case(
        "warmup-equals-duration",
        "scenario",
        doc("""\
            name: steady
            duration_s: 60
            warmup_s: 60
            arrivals: {kind: poisson, rate: 5}
            """),
        3,
        "warmup_s",
        "warmup_s must be shorter than duration_s",
    ),
    Case(
        "missing-trace-file",
        "scenario",
        doc("""\
            name: replay
            duration_s: 60
            arrivals:
              kind: trace
              file: traces/nowhere.csv
              speedup: 2
            """),
        5,
        "arrivals.file",
        "no such trace file",
    ),
    Case(
        "trace-speedup-zero",
        "scenario",
        doc("""\
            name: replay
            duration_s: 60
            arrivals:
              kind: trace
              file: trace.csv
              speedup: 0
            """),
        6,
        "arrivals.speedup",
        "greater than 0",
    ),
    Case(
        "slo-error-rate-above-one",
        "scenario",
        doc("""\
            name: steady
            duration_s: 60
            arrivals: {kind: poisson, rate: 5}
            slo:
              error_rate: 1.5
            """),
        5,
        "slo.error_rate",
        "less than or equal to 1",
    ),
    Case(
        "duplicate-key-in-arrivals",
        "scenario",
        doc("""\
            name: steady
            duration_s: 60
            arrivals:
              kind: poisson
              rate: 5
              rate: 6
            """),
        6,
        "arrivals.rate",
        "duplicate key",
    ),
    Case(
        "top-level-list",
        "scenario",
        doc("""\
            - name: steady
              duration_s: 60
            """),
        1,
        "(top level)",
        "expected a mapping",
    ),
    Case("empty-file", "scenario", "\n\n", 1, "(top level)", "the file is empty"),
    Case(
        "bad-indentation",
        "scenario",
        doc("""\
            name: steady
            duration_s: 60
            arrivals:
              kind: poisson
                rate: 5
            """),
        5,
        "invalid YAML",
        "mapping values are not allowed here",
    ),
    Case(
        "unclosed-brace",
        "scenario",
        doc("""\
            name: steady
            duration_s: 60
            arrivals: {kind: poisson, rate: 5
            """),
        4,
        "invalid YAML",
        "expected ',' or '}'",
    ),
    Case(
        "not-utf8",
        "scenario",
        b"name: steady\nduration_s: 60\narrivals: {kind: poisson, rate: 5}\n# \xff\xfe\n",
        4,
        "(top level)",
        "not UTF-8 text",
    ),
]

CASES = PROFILE_CASES + SCENARIO_CASES


def _load(which: Which, path: Path) -> Profile | Scenario:
    return load_profile(path) if which == "profile" else load_scenario(path)


def _write(tmp_path: Path, case: Case) -> Path:
    path = tmp_path / f"{case.which}.yaml"
    if isinstance(case.text, bytes):
        path.write_bytes(case.text)
    else:
        path.write_text(case.text, encoding="utf-8")
    # Scenario cases that name an existing trace get one, so only the intended key is wrong.
    (tmp_path / "trace.csv").write_text("arrival_s,input_tokens,output_tokens\n0,10,10\n")
    return path


def _problem(which: Which, path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        _load(which, path)
    problems = info.value.problems
    assert len(problems) == 1, problems
    assert str(info.value) == problems[0]
    return problems[0]


def test_there_are_enough_cases() -> None:
    assert len(CASES) >= 35
    assert len({(c.which, c.id) for c in CASES}) == len(CASES)
    assert any(c.which == "profile" for c in CASES)
    assert any(c.which == "scenario" for c in CASES)


@pytest.mark.parametrize("case", [pytest.param(c, id=f"{c.which}-{c.id}") for c in CASES])
def test_malformed_file_reports_line_and_key(tmp_path: Path, case: Case) -> None:
    path = _write(tmp_path, case)
    problem = _problem(case.which, path)

    m = SHAPE.match(problem)
    assert m is not None, problem
    assert "\n" not in problem
    assert m["file"] == str(path)
    assert int(m["line"]) == case.line, problem
    assert m["key"] == case.key, problem
    assert case.message in m["msg"], problem

    if case.allowed is not None:
        listed = re.search(r"\(allowed: ([^)]*)\)$", m["msg"])
        assert listed is not None, problem
        assert tuple(listed[1].split(", ")) == case.allowed, problem


@pytest.mark.parametrize("which", ["profile", "scenario"])
def test_good_files_load(tmp_path: Path, which: Which) -> None:
    path = tmp_path / f"{which}.yaml"
    path.write_text(GOOD_PROFILE if which == "profile" else GOOD_SCENARIO)
    model = _load(which, path)
    assert model.name in ("demo", "steady")


@pytest.mark.parametrize("which", ["profile", "scenario"])
def test_missing_file(tmp_path: Path, which: Which) -> None:
    path = tmp_path / "absent.yaml"
    problem = _problem(which, path)
    m = SHAPE.match(problem)
    assert m is not None, problem
    assert (m["file"], m["line"], m["key"]) == (str(path), "1", "(top level)")
    assert "no such file" in m["msg"]


@pytest.mark.parametrize("which", ["profile", "scenario"])
def test_folder_instead_of_file(tmp_path: Path, which: Which) -> None:
    path = tmp_path / "profiles.yaml"
    path.mkdir()
    problem = _problem(which, path)
    m = SHAPE.match(problem)
    assert m is not None, problem
    assert (m["file"], m["line"], m["key"]) == (str(path), "1", "(top level)")
    assert "is a folder" in m["msg"]


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = doc("""\
        name: demo
        stages:
          - kind: pool
            name: embed
            replicas: 0
            service: {kind: exponential, mean: -1}
          - kind: llm_api
            name: generate
            concurrency: 8
            ttft: {kind: deterministic, value: 0.2}
            time_per_output_token_s: 0.01
            colour: red
        """)
    path = tmp_path / "profile.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    got = []
    for problem in info.value.problems:
        m = SHAPE.match(problem)
        assert m is not None, problem
        got.append((int(m["line"]), m["key"]))
    assert sorted(got) == [
        (5, "stages[0].replicas"),
        (6, "stages[0].service.mean"),
        (12, "stages[1].colour"),
    ]


def test_merge_key_override_is_not_a_duplicate(tmp_path: Path) -> None:
    text = doc("""\
        name: demo
        stages:
          - &embed
            kind: pool
            name: embed
            replicas: 2
            service: {kind: exponential, mean: 0.01}
          - <<: *embed
            name: rerank
            replicas: 3
        """)
    path = tmp_path / "profile.yaml"
    path.write_text(text)
    profile = load_profile(path)
    assert [(s.name, s.replicas) for s in profile.stages] == [("embed", 2), ("rerank", 3)]


def test_merge_key_override_keeps_line_numbers(tmp_path: Path) -> None:
    text = doc("""\
        name: demo
        stages:
          - &embed
            kind: pool
            name: embed
            replicas: 2
            service: {kind: exponential, mean: 0.01}
          - <<: *embed
            name: rerank
            replicas: -3
        """)
    path = tmp_path / "profile.yaml"
    path.write_text(text)
    problem = _problem("profile", path)
    m = SHAPE.match(problem)
    assert m is not None, problem
    assert (int(m["line"]), m["key"]) == (10, "stages[1].replicas")
