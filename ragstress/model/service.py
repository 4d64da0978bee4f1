"""Per-request service times and prices for each stage, drawn up front.

Drawing by request index (not in event order) keeps every stage's numbers independent of
what other stages do, so two configurations simulated with one seed see the same requests
with the same service demands: common random numbers, which make comparisons far less noisy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ragstress.config.profile import LlmApiStage, PoolStage, TokenSource
from ragstress.seeding import stream
from ragstress.workload import Workload

__all__ = ["StageDemand", "stage_demand", "tokens_of"]


@dataclass(frozen=True)
class StageDemand:
    """What each request asks of one stage."""

    service_s: np.ndarray  # total time a server is held
    first_token_s: np.ndarray | None  # offset of the first streamed token (LLM stages)
    tokens_in: np.ndarray
    tokens_out: np.ndarray
    cost_usd: np.ndarray  # what one call costs, charged when service starts


def tokens_of(source: TokenSource, workload: Workload, system_prompt_tokens: int = 0) -> np.ndarray:
    if source == "none":
        return np.zeros(len(workload), dtype=np.int64)
    if source == "query":
        return workload.query_tokens
    if source == "context":
        return workload.context_tokens
    return workload.prompt_tokens(system_prompt_tokens)


def stage_demand(stage: PoolStage | LlmApiStage, workload: Workload) -> StageDemand:
    n = len(workload)
    rng = stream(workload.seed, "stage", stage.name, "service")
    price = stage.price
    if isinstance(stage, PoolStage):
        tokens_in = tokens_of(stage.input_tokens, workload)
        tokens_out = np.zeros(n, dtype=np.int64)
        service = stage.service.draw(rng, n) + stage.per_token_s * tokens_in
        first_token = None
    else:
        tokens_in = workload.prompt_tokens(stage.system_prompt_tokens)
        tokens_out = workload.output_tokens
        first_token = stage.ttft.draw(rng, n) + stage.prefill_per_token_s * tokens_in
        service = first_token + np.maximum(tokens_out - 1, 0) * stage.time_per_output_token_s
    cost = (
        price.per_call_usd
        + tokens_in * (price.per_1m_input_tokens_usd / 1e6)
        + tokens_out * (price.per_1m_output_tokens_usd / 1e6)
    )
    return StageDemand(
        service_s=np.asarray(service, dtype=float),
        first_token_s=first_token,
        tokens_in=tokens_in,
        tokens_out=tokens_out,
        cost_usd=np.broadcast_to(np.asarray(cost, dtype=float), (n,)).copy(),
    )
