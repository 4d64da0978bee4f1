"""The deployment: an ordered pipeline of stages, their capacity, service times and prices."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from ragstress.config.base import StrictModel
from ragstress.config.distributions import Distribution, NonNegative, Positive

__all__ = ["LlmApiStage", "PoolStage", "Price", "Profile", "Stage", "TokenSource"]

MAX_STAGES = 64
StageName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,39}$")]
# Which of a request's token counts a stage consumes: it scales service time and is billed as
# input. "prompt" is what an LLM reads: system prompt + query + retrieved context.
TokenSource = Literal["none", "query", "context", "prompt"]


class Price(StrictModel):
    """What a stage costs. Every field is in US dollars; all default to free."""

    per_call_usd: NonNegative = 0.0
    per_1m_input_tokens_usd: NonNegative = 0.0
    per_1m_output_tokens_usd: NonNegative = 0.0
    per_replica_hour_usd: NonNegative = 0.0


class PoolStage(StrictModel):
    """``replicas × concurrency`` identical servers behind one FIFO queue (an M/G/c station).

    Service time = a draw from ``service`` + ``per_token_s`` × the request's ``input_tokens``.
    With ``queue_limit`` set, a request that finds that many already waiting is shed.
    """

    kind: Literal["pool"]
    name: StageName
    replicas: Annotated[int, Field(ge=1, le=100_000)] = 1
    concurrency: Annotated[int, Field(ge=1, le=100_000)] = 1
    queue_limit: Annotated[int, Field(ge=0)] | None = None
    service: Distribution
    per_token_s: NonNegative = 0.0
    input_tokens: TokenSource = "none"
    price: Price = Price()

    @property
    def servers(self) -> int:
        return self.replicas * self.concurrency


class LlmApiStage(StrictModel):
    """A hosted LLM behind an API, streamed.

    At most ``concurrency`` calls are in flight (the client's connection limit or the provider's
    concurrency quota); others wait in FIFO order. A call's time to first token is a draw from
    ``ttft`` plus ``prefill_per_token_s`` × prompt tokens; then each further output token takes
    ``time_per_output_token_s``.
    """

    kind: Literal["llm_api"]
    name: StageName
    model: str = ""
    concurrency: Annotated[int, Field(ge=1, le=1_000_000)]
    queue_limit: Annotated[int, Field(ge=0)] | None = None
    ttft: Distribution
    prefill_per_token_s: NonNegative = 0.0
    time_per_output_token_s: Positive
    system_prompt_tokens: Annotated[int, Field(ge=0)] = 0
    price: Price = Price()

    @property
    def replicas(self) -> int:
        return 1

    @property
    def servers(self) -> int:
        return self.concurrency


Stage = Annotated[PoolStage | LlmApiStage, Field(discriminator="kind")]


class Profile(StrictModel):
    """A deployment under test. Stages run in the listed order for every request."""

    name: Annotated[str, Field(min_length=1)]
    description: str = ""
    stages: tuple[Stage, ...]

    @field_validator("stages")
    @classmethod
    def _unique_stage_names(cls, stages: tuple[Stage, ...]) -> tuple[Stage, ...]:
        if not 1 <= len(stages) <= MAX_STAGES:
            raise ValueError(f"a pipeline needs 1 to {MAX_STAGES} stages, got {len(stages)}")
        seen: set[str] = set()
        for stage in stages:
            if stage.name in seen:
                raise ValueError(f"stage name {stage.name!r} is used twice; names must be unique")
            seen.add(stage.name)
        return stages

    def stage(self, name: str) -> PoolStage | LlmApiStage:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)
