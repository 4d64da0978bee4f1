"""Per-call service demands and prices for each stage, drawn up front.

Drawing by request index (not in event order) keeps every stage's numbers independent of what
other stages do, so two configurations simulated with one seed see the same requests with the
same service demands: common random numbers, which make comparisons far less noisy. A stage
with ``fan_out`` k gets k first-attempt calls per request (call ``i·k + j``). Retries draw
fresh service times from a separate stream, in event order (:func:`redraw`).
"""

from __future__ import annotations

import numpy as np

from ragstress.config.profile import (
    AnyStage,
    BatcherStage,
    CacheStage,
    LlmApiStage,
    LlmEngineStage,
    PoolStage,
    TokenSource,
)
from ragstress.model.calls import CallTable
from ragstress.seeding import stream
from ragstress.workload import Workload

__all__ = ["first_attempts", "redraw", "tokens_of"]


def tokens_of(source: TokenSource, workload: Workload, system_prompt_tokens: int = 0) -> np.ndarray:
    if source == "none":
        return np.zeros(len(workload), dtype=np.int64)
    if source == "query":
        return workload.query_tokens + system_prompt_tokens
    if source == "context":
        return workload.context_tokens + system_prompt_tokens
    return workload.prompt_tokens(system_prompt_tokens)


def first_attempts(stage: AnyStage, workload: Workload) -> CallTable:
    """The table of a stage's first-attempt calls, ``fan_out`` per request."""
    n = len(workload)
    k = stage.fan_out
    m = n * k
    rng = stream(workload.seed, "stage", stage.name, "service")
    nan = np.full(m, np.nan)
    service = nan
    first_token = nan
    tokens_out = np.zeros(m, dtype=np.int64)
    if isinstance(stage, CacheStage):
        tokens_in = np.zeros(m, dtype=np.int64)
    elif isinstance(stage, PoolStage):
        tokens_in = np.repeat(tokens_of(stage.input_tokens, workload), k)
        service = stage.service.draw(rng, m) + stage.per_token_s * tokens_in
    elif isinstance(stage, BatcherStage):
        tokens_in = np.repeat(tokens_of(stage.input_tokens, workload), k)
    else:
        tokens_in = np.repeat(
            tokens_of(stage.input_tokens, workload, stage.system_prompt_tokens), k
        )
        if stage.output_tokens is None:
            tokens_out = np.repeat(workload.output_tokens, k)
        else:
            drawn = stage.output_tokens.draw(stream(workload.seed, "stage", stage.name, "out"), m)
            tokens_out = np.maximum(np.rint(drawn), 1).astype(np.int64)
        if isinstance(stage, LlmApiStage):
            first_token = stage.ttft.draw(rng, m) + stage.prefill_per_token_s * tokens_in
            service = first_token + np.maximum(tokens_out - 1, 0) * stage.time_per_output_token_s
    return CallTable(
        req=np.repeat(np.arange(n, dtype=np.int64), k).tolist(),
        tokens_in=np.asarray(tokens_in, dtype=np.int64).tolist(),
        tokens_out=np.asarray(tokens_out, dtype=np.int64).tolist(),
        service_s=np.asarray(service, dtype=float).tolist(),
        first_token_s=np.asarray(first_token, dtype=float).tolist(),
    )


def redraw(
    stage: AnyStage, table: CallTable, like: int, attempt: int, rng: np.random.Generator
) -> int:
    """Append a new call for the same request and sub-call as call ``like`` (a retry, or a
    second visit to a fallback stage): same tokens, a fresh service draw. Returns its id."""
    tin = table.tokens_in[like]
    tout = table.tokens_out[like]
    service = first_token = float("nan")
    if isinstance(stage, PoolStage):
        service = float(stage.service.draw(rng, 1)[0]) + stage.per_token_s * tin
    elif isinstance(stage, LlmApiStage):
        first_token = float(stage.ttft.draw(rng, 1)[0]) + stage.prefill_per_token_s * tin
        service = first_token + max(tout - 1, 0) * stage.time_per_output_token_s
    else:
        assert isinstance(stage, BatcherStage | LlmEngineStage | CacheStage)
    return table.append(table.req[like], attempt, tin, tout, service, first_token)
