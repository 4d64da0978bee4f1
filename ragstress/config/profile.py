"""The deployment: the stages of the pipeline, their capacity, service times, limits and prices,
and the policy of each stage's caller.

Stage kinds (chosen by ``kind``):

- ``pool``: ``replicas × concurrency`` servers behind one FIFO queue (an M/G/c station);
- ``batcher``: dynamic batching (embedders, rerankers): a replica serves one batch at a time;
- ``llm_api``: a hosted LLM behind an API, streamed, with the provider's rate limits;
- ``llm_engine``: a self-hosted continuous-batching engine (vLLM-like) per replica, behind a
  router; time to first token and token gaps emerge from the engine's steps;
- ``cache``: a lookup in front of later stages; a hit skips them.

Every stage runs, in the listed order, for every request, except stages marked
``fallback_only`` (called only as another stage's fallback) and stages a cache hit skips.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from ragstress.config.base import LocatedValueError, StrictModel
from ragstress.config.distributions import Distribution, NonNegative, Positive
from ragstress.config.policy import ClientPolicy, StageFallback

__all__ = [
    "BatchTime",
    "BatcherStage",
    "CacheStage",
    "EngineStep",
    "KeyHits",
    "Knob",
    "LlmApiStage",
    "LlmEngineStage",
    "PoolStage",
    "Price",
    "ProbabilityHits",
    "Profile",
    "RateLimit",
    "Stage",
    "TokenSource",
]

MAX_STAGES = 64
StageName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,39}$")]
# Which of a request's token counts a stage consumes: it scales service time and is billed as
# input. "prompt" is what an LLM reads: system prompt + query + retrieved context.
TokenSource = Literal["none", "query", "context", "prompt"]
Count = Annotated[int, Field(ge=1, le=100_000)]
FanOut = Annotated[int, Field(ge=1, le=64)]


class Price(StrictModel):
    """What a stage costs. Every field is in US dollars; all default to free."""

    per_call_usd: NonNegative = 0.0
    per_1m_input_tokens_usd: NonNegative = 0.0
    per_1m_output_tokens_usd: NonNegative = 0.0
    per_replica_hour_usd: NonNegative = 0.0


class _StageCommon(StrictModel):
    """Fields every stage kind has.

    ``client``: how the caller treats this stage (timeout, retries, breaker, fallback).
    ``fan_out``: calls one request makes to this stage at once, waiting for all of them
    (multi-query retrieval); each call has its own attempts under ``client``.
    ``fallback_only``: the stage is not on the main path; it runs only as another stage's
    ``client.fallback``.
    ``call_overhead``: time every call (each attempt) spends outside the stage's servers
    before it reaches them: the caller building the request, the network hop, parsing. It
    delays the call's arrival (so its first token and its end) and holds no server; a
    simulated run counts it in the stage's wait (sent → service), as a measured stage time
    includes it. ``ragstress calibrate`` fits it where a stage shows it (an engine's time to
    first token beyond its prefill step). A cache's ``lookup`` is its whole time, so a cache
    has none.
    """

    name: StageName
    client: ClientPolicy = ClientPolicy()
    fan_out: FanOut = 1
    fallback_only: bool = False
    price: Price = Price()
    call_overhead: Distribution | None = None


class PoolStage(_StageCommon):
    """``replicas × concurrency`` identical servers behind one FIFO queue (an M/G/c station).

    Service time = a draw from ``service`` + ``per_token_s`` × the request's ``input_tokens``.
    With ``queue_limit`` set, a request that finds that many already waiting is shed.
    """

    kind: Literal["pool"]
    replicas: Count = 1
    concurrency: Count = 1
    queue_limit: Annotated[int, Field(ge=0)] | None = None
    service: Distribution
    per_token_s: NonNegative = 0.0
    input_tokens: TokenSource = "none"

    @property
    def servers(self) -> int:
        return self.replicas * self.concurrency

    @property
    def units(self) -> int:
        """What a capacity loss takes down: replicas (each with its ``concurrency``)."""
        return self.replicas


class BatchTime(StrictModel):
    """Time to serve one batch: ``base_s + per_token_s × (tokens in the batch)``."""

    base_s: NonNegative
    per_token_s: NonNegative = 0.0


class BatcherStage(_StageCommon):
    """Dynamic batching (Triton-style), for embedders and rerankers.

    Calls wait in one FIFO queue. A free replica takes a batch of up to ``max_batch_size``
    calls as soon as that many wait, or when the oldest waiting call has waited
    ``max_wait_s``, whichever comes first. A replica serves one batch at a time; the batch
    takes ``batch_time.base_s + batch_time.per_token_s × Σ tokens`` and all its calls finish
    together. Tokens per call: ``input_tokens`` (for a reranker, ``context``).
    """

    kind: Literal["batcher"]
    replicas: Count = 1
    max_batch_size: Annotated[int, Field(ge=1, le=65_536)]
    max_wait_s: NonNegative
    batch_time: BatchTime
    input_tokens: TokenSource = "query"
    queue_limit: Annotated[int, Field(ge=0)] | None = None

    @property
    def servers(self) -> int:
        return self.replicas

    @property
    def units(self) -> int:
        return self.replicas


class RateLimit(StrictModel):
    """A provider's per-minute limits, as token buckets (see ``ragstress.model.ratelimit``).

    ``rpm``: requests per minute; ``tpm``: tokens per minute, charged at admission as prompt
    tokens + ``max_output_tokens`` of the stage (or the call's real output length when the
    stage sets none). ``*_burst``: bucket sizes (default one minute's worth). A refused call is
    answered 429 with ``retry-after``.
    """

    rpm: Annotated[float, Field(gt=0, le=1e9, allow_inf_nan=False)] | None = None
    tpm: Annotated[float, Field(gt=0, le=1e12, allow_inf_nan=False)] | None = None
    rpm_burst: Positive | None = None
    tpm_burst: Positive | None = None

    @model_validator(mode="after")
    def _some_limit(self) -> RateLimit:
        if self.rpm is None and self.tpm is None:
            raise ValueError("give rpm, tpm or both (allowed keys: rpm, tpm, rpm_burst, tpm_burst)")
        if self.rpm is None and self.rpm_burst is not None:
            raise ValueError("rpm_burst needs rpm")
        if self.tpm is None and self.tpm_burst is not None:
            raise ValueError("tpm_burst needs tpm")
        return self


class LlmApiStage(_StageCommon):
    """A hosted LLM behind an API, streamed.

    At most ``concurrency`` calls are in flight (the client's connection limit or the provider's
    concurrency quota); others wait in FIFO order, unless ``overload_status`` is set: then a
    call that finds every slot busy (and ``queue_limit`` calls waiting, default none) is
    answered at once with that status, as providers shed load with 503 / 529. A call's time to
    first token is a draw from ``ttft`` plus ``prefill_per_token_s`` × prompt tokens; then each
    further output token takes ``time_per_output_token_s``.

    ``input_tokens``: what the call reads (default the whole RAG prompt; a query rewrite reads
    ``query``); ``system_prompt_tokens`` are added to it. ``output_tokens``: the length of the
    call's answer (default: the request's answer length from the scenario).
    """

    kind: Literal["llm_api"]
    model: str = ""
    concurrency: Annotated[int, Field(ge=1, le=1_000_000)]
    queue_limit: Annotated[int, Field(ge=0)] | None = None
    ttft: Distribution
    prefill_per_token_s: NonNegative = 0.0
    time_per_output_token_s: Positive
    system_prompt_tokens: Annotated[int, Field(ge=0)] = 0
    input_tokens: TokenSource = "prompt"
    output_tokens: Distribution | None = None
    max_output_tokens: Annotated[int, Field(ge=1, le=10_000_000)] | None = None
    rate_limit: RateLimit | None = None
    overload_status: Literal[503, 529] | None = None

    @property
    def replicas(self) -> int:
        return 1

    @property
    def servers(self) -> int:
        return self.concurrency

    @property
    def units(self) -> int:
        """A capacity loss on a hosted API takes concurrency slots down."""
        return self.concurrency


class EngineStep(StrictModel):
    """One engine step: ``base_s + per_prefill_token_s × (prompt tokens prefilled in the
    step) + per_decode_seq_s × (sequences decoding a token in the step) + per_context_token_s
    × (tokens held in the KV cache by the step's sequences)``."""

    base_s: Positive
    per_prefill_token_s: NonNegative = 0.0
    per_decode_seq_s: NonNegative = 0.0
    per_context_token_s: NonNegative = 0.0


class LlmEngineStage(_StageCommon):
    """A self-hosted continuous-batching LLM engine (vLLM-like), ``replicas`` of them behind
    a ``router`` (``round_robin`` or ``least_outstanding``).

    Per replica: waiting calls are admitted in FIFO order while fewer than ``max_num_seqs``
    run and the KV cache has room for the call's prompt + output tokens
    (``kv_cache_tokens``; the whole sequence is reserved at admission, so no preemption).
    Each step serves every running sequence: sequences still in prefill share a budget of
    ``max_batched_tokens`` tokens per step (chunked prefill, in admission order; decoding
    sequences take one token each out of the budget first); a sequence whose prefill
    completes emits its first token at the end of that step; a decoding sequence emits one
    token per step. Step time is ``step`` (see :class:`EngineStep`). ``queue_limit`` bounds
    the calls waiting per replica.
    """

    kind: Literal["llm_engine"]
    model: str = ""
    replicas: Count = 1
    router: Literal["round_robin", "least_outstanding"] = "least_outstanding"
    max_num_seqs: Annotated[int, Field(ge=1, le=100_000)]
    kv_cache_tokens: Annotated[int, Field(ge=1, le=1_000_000_000)]
    max_batched_tokens: Annotated[int, Field(ge=1, le=10_000_000)]
    step: EngineStep
    system_prompt_tokens: Annotated[int, Field(ge=0)] = 0
    input_tokens: TokenSource = "prompt"
    output_tokens: Distribution | None = None
    queue_limit: Annotated[int, Field(ge=0)] | None = None

    @property
    def servers(self) -> int:
        return self.replicas * self.max_num_seqs

    @property
    def units(self) -> int:
        return self.replicas


class ProbabilityHits(StrictModel):
    """Each lookup hits with probability ``p`` (independent of the query)."""

    kind: Literal["probability"]
    p: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]


class KeyHits(StrictModel):
    """A lookup hits when the same query (the workload's ``query_id``) was stored less than
    ``ttl_s`` ago. An entry is stored when a request that missed finishes the stages the cache
    covers, so a repeat that arrives while the first is still in flight misses."""

    kind: Literal["key"]
    ttl_s: Positive


class CacheStage(_StageCommon):
    """A cache lookup (an embedding cache, an answer cache) taking ``lookup`` seconds, with
    no queue. On a hit the request skips the stages listed in ``skips``, which must be the
    stages right after this one on the path, in order; an answer cache skips every later
    stage, so a hit answers the request."""

    kind: Literal["cache"]
    lookup: Distribution
    hits: Annotated[ProbabilityHits | KeyHits, Field(discriminator="kind")]
    skips: Annotated[tuple[StageName, ...], Field(min_length=1)]

    @property
    def replicas(self) -> int:
        return 1

    @property
    def servers(self) -> int:
        return 0

    @property
    def units(self) -> int:
        return 1

    @field_validator("fan_out")
    @classmethod
    def _single_lookup(cls, fan_out: int) -> int:
        if fan_out != 1:
            raise ValueError("a cache makes one lookup per request (allowed: 1)")
        return fan_out

    @field_validator("call_overhead")
    @classmethod
    def _no_overhead(cls, overhead: Distribution | None) -> Distribution | None:
        if overhead is not None:
            raise ValueError("a cache's lookup is its whole time (allowed: none; put it in lookup)")
        return overhead


Stage = Annotated[
    PoolStage | BatcherStage | LlmApiStage | LlmEngineStage | CacheStage,
    Field(discriminator="kind"),
]
AnyStage = PoolStage | BatcherStage | LlmApiStage | LlmEngineStage | CacheStage
STREAMING = (LlmApiStage, LlmEngineStage)


KnobKey = Annotated[str, Field(pattern=r"^stages\.[a-z][a-z0-9_]{0,39}(\.[A-Za-z0-9_]+)+$")]
OptionLabel = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,39}$")]


class Knob(StrictModel):
    """A dimension ``ragstress plan`` may turn: one key over ``values``, or named ``options``
    that each set several keys (a model choice: its service time and its prices together).

    ``monotone: true`` promises that capacity only grows along the list (replicas 1, 2, 4;
    rate-limit tiers in order): if the SLO fails at one entry it fails at every earlier one,
    other knobs equal. The planner uses the promise to skip configurations it implies fail.
    """

    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_.]{0,59}$")] | None = None
    key: KnobKey | None = None
    values: Annotated[tuple[Any, ...], Field(min_length=1, max_length=64)] | None = None
    options: (
        Annotated[
            dict[OptionLabel, Annotated[dict[KnobKey, Any], Field(min_length=1)]],
            Field(min_length=1, max_length=64),
        ]
        | None
    ) = None
    monotone: bool = False

    @model_validator(mode="after")
    def _one_form(self) -> Knob:
        if self.options is not None:
            if self.key is not None or self.values is not None:
                raise ValueError("give either key and values, or options, not both")
            if self.name is None:
                raise LocatedValueError(("name",), "a knob with options needs a name")
        elif self.key is None or self.values is None:
            raise ValueError(
                "a knob needs key and values (e.g. key: stages.generate.replicas, "
                "values: [1, 2, 4]), or a name and options"
            )
        return self

    @property
    def label(self) -> str:
        if self.name is not None:
            return self.name
        assert self.key is not None  # _one_form
        return self.key.removeprefix("stages.")

    def choices(self) -> list[tuple[str, dict[str, Any]]]:
        """(text for a table, the keys it sets) for each entry, in order."""
        if self.options is not None:
            return [(f"{self.label}={name}", dict(sets)) for name, sets in self.options.items()]
        assert self.key is not None  # _one_form
        assert self.values is not None
        return [(f"{self.label}={_show(v)}", {self.key: v}) for v in self.values]

    def keys(self) -> set[str]:
        return {key for _, sets in self.choices() for key in sets}


def _show(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


class Profile(StrictModel):
    """A deployment under test. Stages run in the listed order for every request.

    ``knobs``: what ``ragstress plan`` may change when it looks for the cheapest configuration
    that holds the SLO (ignored by everything else)."""

    name: Annotated[str, Field(min_length=1)]
    description: str = ""
    stages: tuple[Stage, ...]
    knobs: Annotated[tuple[Knob, ...], Field(max_length=8)] = ()

    @field_validator("stages")
    @classmethod
    def _unique_stage_names(cls, stages: tuple[AnyStage, ...]) -> tuple[AnyStage, ...]:
        if not 1 <= len(stages) <= MAX_STAGES:
            raise ValueError(f"a pipeline needs 1 to {MAX_STAGES} stages, got {len(stages)}")
        seen: set[str] = set()
        for stage in stages:
            if stage.name in seen:
                raise ValueError(f"stage name {stage.name!r} is used twice; names must be unique")
            seen.add(stage.name)
        return stages

    @model_validator(mode="after")
    def _references(self) -> Profile:
        """Fallback and cache references name real stages, and form no cycle."""
        by_name = {s.name: s for s in self.stages}
        index = {s.name: k for k, s in enumerate(self.stages)}
        names = ", ".join(by_name)
        path = [s.name for s in self.stages if not s.fallback_only]
        if not path:
            raise ValueError("every stage is fallback_only: the main path is empty")

        def at(stage: str, *keys: str | int) -> tuple[str | int, ...]:
            # the location as pydantic writes it: the union's tag follows the list index
            return ("stages", index[stage], by_name[stage].kind, *keys)

        # "stage" twice: the fallback union's tag, then the key
        fallback_key = ("client", "fallback", "stage", "stage")
        used_as_fallback: set[str] = set()
        for s in self.stages:
            fb = s.client.fallback
            if isinstance(fb, StageFallback):
                if fb.stage not in by_name:
                    raise LocatedValueError(
                        at(s.name, *fallback_key),
                        f"{fb.stage!r} is not a stage (allowed: {names})",
                    )
                if fb.stage == s.name:
                    raise LocatedValueError(
                        at(s.name, *fallback_key), "a stage cannot be its own fallback"
                    )
                if not by_name[fb.stage].fallback_only:
                    raise LocatedValueError(
                        at(s.name, *fallback_key),
                        f"{fb.stage!r} must be marked fallback_only: true (a stage on the main "
                        "path cannot also stand in for another)",
                    )
                used_as_fallback.add(fb.stage)
        for s in self.stages:
            # a fallback chain must end: follow it and fail on a repeat
            chain = [s.name]
            cur = s
            while isinstance(cur.client.fallback, StageFallback):
                nxt = cur.client.fallback.stage
                if nxt in chain:
                    raise LocatedValueError(
                        at(cur.name, *fallback_key),
                        f"fallback cycle: {' → '.join([*chain, nxt])}",
                    )
                chain.append(nxt)
                cur = by_name[nxt]
            if s.fallback_only and s.name not in used_as_fallback:
                raise LocatedValueError(
                    at(s.name, "fallback_only"),
                    "no stage names this stage as its client.fallback.stage",
                )
            if isinstance(s, CacheStage):
                if s.fallback_only:
                    raise LocatedValueError(
                        at(s.name, "fallback_only"), "a cache cannot be fallback_only"
                    )
                start = path.index(s.name)
                expected = path[start + 1 : start + 1 + len(s.skips)]
                if list(s.skips) != expected:
                    raise LocatedValueError(
                        at(s.name, "skips"),
                        "must list the stages right after the cache, in order "
                        f"(allowed: {', '.join(path[start + 1 :]) or 'none'})",
                    )
        return self

    @model_validator(mode="after")
    def _knob_keys(self) -> Profile:
        """Knob keys name real stages, and no two knobs set the same key."""
        names = [s.name for s in self.stages]
        owner: dict[str, int] = {}
        for i, knob in enumerate(self.knobs):
            where = ("knobs", i, "options") if knob.options is not None else ("knobs", i, "key")
            for key in sorted(knob.keys()):
                stage = key.split(".")[1]
                if stage not in names:
                    raise LocatedValueError(
                        where, f"{key}: no stage named {stage!r} (allowed: {', '.join(names)})"
                    )
                if key in owner and owner[key] != i:
                    raise LocatedValueError(
                        where, f"{key} is already turned by knob {owner[key]}; one knob per key"
                    )
                owner[key] = i
        labels = [knob.label for knob in self.knobs]
        for i, label in enumerate(labels):
            if labels.index(label) != i:
                raise LocatedValueError(("knobs", i, "name"), f"knob name {label!r} is used twice")
        return self

    @property
    def path(self) -> tuple[AnyStage, ...]:
        """The stages every request visits in order (not the fallback-only ones)."""
        return tuple(s for s in self.stages if not s.fallback_only)

    def stage(self, name: str) -> AnyStage:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)
