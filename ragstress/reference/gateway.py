"""The reference RAG gateway: embed → retrieve → generate, each under its client policy.

It is the real counterpart of a profile's main path: the embedder and the LLM are called
over HTTP (OpenAI's shapes), the chunks come from pgvector, and each call goes through a
``PolicyCaller`` (``ragstress.reference.client_policy``): per-attempt timeout, tenacity
retries with the model's backoff, a pybreaker circuit breaker per dependency, and the
policy's fallback. Run it as ``python -m ragstress.reference.gateway --settings JSON``.

API
===

``POST /v1/rag`` with a JSON object (unknown keys are refused, so a misspelt key is an error
rather than a silently ignored default)::

    {"query": str (1..8000 characters, not blank), "top_k": int 1..max_top_k (default
     default_top_k), "stream": bool (default false), "max_tokens": int >= 1 (default
     default_max_tokens)}

A bad body is ``400 {"error": {"kind": "bad_request", "message": ...}}``.

The request: (1) embed — the embedding cache (key: the query text) or ``POST
{embed_url}/v1/embeddings {"input": query}``; (2) retrieve — ``retriever(vector, top_k)``;
(3) the prompt — the system prompt, and ``Sources:\\n[1] <title>\\n<text>\\n\\n[2] ...
\\n\\nQuestion: <query>`` (only ``Question: <query>`` without sources); (4) generate — ``POST
{llm_url}/v1/chat/completions`` with ``stream: true`` and ``stream_options.include_usage``
always, so the gateway sees the first token whatever the client asked for.

Answer, ``stream: false``: ``200`` with ``{"answer", "sources": [{"chunk_id", "doc_id",
"title", "text", "distance"}], "usage": {"prompt_tokens", "completion_tokens"}, "outcome":
"ok"|"ok_degraded", "attempts": {"embed", "retrieve", "generate"}}`` and headers
``x-ragstress-outcome``, ``x-ragstress-attempts`` (all stages' attempts) and ``Server-Timing:
embed;dur=…, retrieve;dur=…, generate;dur=…, ttft;dur=…, total;dur=…`` (milliseconds, 3
decimals; a stage that did not run has 0; ``ttft`` — request receipt to the LLM's first
token — only when there was one; with the cache on, ``cache;desc=hit`` or ``cache;desc=miss``).

Answer, ``stream: true``: ``text/event-stream``, started only once the LLM answered 200 (so
every failure before that is a plain HTTP error as below)::

    event: sources   data: {"sources": [...]}
    event: token     data: {"text": "..."}           one per LLM token, written as it arrives
    event: done      data: {"usage", "outcome", "attempts",
                            "timings": {"embed_ms", "retrieve_ms", "generate_ms",
                                        "ttft_ms", "total_ms"}}

If the LLM stream breaks (or the per-attempt timeout fires) after it started:
``event: error  data: {"kind": "error_stream"|"timeout", "stage": "generate", "message",
"attempts"}`` and the response ends; nothing can be retried or replaced once tokens reached
the client. A streamed answer carries its outcome in its last event only (its headers left
before the outcome was known).

Failures: ``504`` for ``timeout``, ``503`` for ``breaker_open``, ``502`` for the others, body
``{"error": {"kind": <request outcome>, "stage": "embed"|"retrieve"|"generate", "message",
"cause": <call outcome>, "status": <upstream HTTP status or null>}}``, headers
``x-ragstress-outcome``, ``x-ragstress-attempts``, ``Server-Timing``.

Outcomes. A call outcome (``client_policy``) becomes the request's outcome (one of
``ragstress.results.schema.OUTCOMES``) as the model maps it: ``error_408`` (the server saying
"timed out") is ``timeout``; ``error_409`` and any other 4xx (``error_4xx``) have no kind of
their own in the request vocabulary and are ``error_5xx`` — the request failed because a
dependency refused it; ``cause`` keeps the precise one.

Fallbacks (``client.fallback`` of each stage): ``fail`` — the request fails with the outcome;
``skip`` — embed: go on without retrieval; retrieve: generate without sources; generate:
answer with a short extract of the top source and no LLM call; ``stage`` (generate only) —
the same LLM request to ``llm_fallback_url``, under the generate policy with its own breaker
(metric stage ``generate_fallback``; its attempts are added to ``generate``'s), and if that
fails too the request fails. Any fallback that answers makes the outcome ``ok_degraded``. A
streamed answer that already started cannot fall back. ``build_app`` refuses, with a
ValueError, a ``stage`` fallback on embed or retrieve (nothing to fall back to) and a
generate ``stage`` fallback without ``llm_fallback_url``.

``GET /healthz``: 200 ``{"status": "ok"}`` once the HTTP session (and the pool) are open, 503
otherwise. ``GET /metrics``: Prometheus text from the application's own registry:
``ragstress_gateway_requests_total{outcome}``, ``ragstress_gateway_bad_requests_total``,
``ragstress_gateway_errors_total{kind,stage}`` (one per failed or refused *attempt*, kind the
call outcome), ``ragstress_gateway_in_flight``, ``ragstress_gateway_stage_seconds{stage}``
(embed and retrieve when called, generate, ttft, total), ``ragstress_gateway_retries_total
{stage}``, ``ragstress_gateway_breaker_open{stage}`` (1 while open as last observed; open
turns half-open when the next call asks), ``ragstress_gateway_embed_cache_hits_total`` and
``..._misses_total``.

Each dependency's backoff jitter draws from its own ``ragstress.seeding.stream(seed,
"gateway", stage)``, so a gateway run is as reproducible as the network lets it be.
"""

from __future__ import annotations

import json
import os
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final, Generic, TypeVar

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from psycopg_pool import AsyncConnectionPool

from ragstress.config.policy import ClientPolicy, StageFallback
from ragstress.model.policies import OPEN, BreakerState
from ragstress.reference.client_policy import (
    ERROR_STREAM,
    AttemptError,
    CallAbortedError,
    CallFailed,
    CallOk,
    PolicyCaller,
    error_from_response,
)
from ragstress.reference.search import Source, open_pool, search_chunks
from ragstress.reference.service import run_service
from ragstress.reference.settings import GatewaySettings, approx_tokens
from ragstress.results.schema import OUTCOMES
from ragstress.seeding import stream

__all__ = [
    "MAX_QUERY_CHARS",
    "POOL_OPEN_TIMEOUT_S",
    "BadRequestError",
    "GatewayMetrics",
    "RagRequest",
    "Retriever",
    "TtlCache",
    "build_app",
    "build_prompt",
    "http_status",
    "iter_sse",
    "main",
    "parse_request",
    "request_outcome",
]

Retriever = Callable[[Sequence[float], int], Awaitable[list[Source]]]
"""``retriever(vector, top_k)``: the ``top_k`` chunks nearest to ``vector``, nearest first."""

MAX_QUERY_CHARS: Final = 8000
MAX_TOKENS_LIMIT: Final = 1_000_000  # the engine's own bound on max_tokens
POOL_OPEN_TIMEOUT_S: Final = 30.0  # GatewaySettings has no field for it
EXTRACT_CHARS: Final = 300  # the answer of a skipped generate: this much of the top source
STAGE_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, float("inf"),
)  # fmt: skip
_STAGES: Final = ("embed", "retrieve", "generate")
_FALLBACK: Final = "generate_fallback"

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


# --- pure pieces ---------------------------------------------------------------------------


class BadRequestError(ValueError):
    """The body of ``POST /v1/rag`` is not acceptable; the message says what is allowed."""


@dataclass(frozen=True, slots=True)
class RagRequest:
    """A validated ``POST /v1/rag`` body."""

    query: str
    top_k: int
    stream: bool
    max_tokens: int


_FIELDS: Final = ("query", "top_k", "stream", "max_tokens")


def _int_field(body: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadRequestError(f"{key} must be an integer from {low} to {high}, got {value!r}")
    return value


def parse_request(body: object, settings: GatewaySettings) -> RagRequest:
    """Validate a ``POST /v1/rag`` body; ``BadRequestError`` says what is wrong and what is
    allowed."""
    if not isinstance(body, dict):
        raise BadRequestError(f"the body must be a JSON object with keys {', '.join(_FIELDS)}")
    unknown = sorted(set(body) - set(_FIELDS))
    if unknown:
        raise BadRequestError(f"unknown keys {', '.join(unknown)} (allowed: {', '.join(_FIELDS)})")
    query = body.get("query")
    if not isinstance(query, str) or not query.strip() or len(query) > MAX_QUERY_CHARS:
        raise BadRequestError(
            f"query must be a non-blank string of at most {MAX_QUERY_CHARS} characters"
        )
    top_k = _int_field(body, "top_k", settings.default_top_k, 1, settings.max_top_k)
    stream_ = body.get("stream", False)
    if not isinstance(stream_, bool):
        raise BadRequestError(f"stream must be true or false, got {stream_!r}")
    max_tokens = _int_field(body, "max_tokens", settings.default_max_tokens, 1, MAX_TOKENS_LIMIT)
    return RagRequest(query=query, top_k=top_k, stream=stream_, max_tokens=max_tokens)


def build_prompt(query: str, sources: Sequence[Source]) -> str:
    """The user message: numbered sources (so the answer can cite them), then the question."""
    if not sources:
        return f"Question: {query}"
    listed = "\n\n".join(f"[{i}] {s.title}\n{s.text}" for i, s in enumerate(sources, 1))
    return f"Sources:\n{listed}\n\nQuestion: {query}"


def request_outcome(call_outcome: str) -> str:
    """A failed call's outcome as the request's (``results.schema.OUTCOMES``), as the model
    maps it: a 408 is a timeout; a 409 or another 4xx has no kind of its own: ``error_5xx``."""
    if call_outcome == "error_408":
        return "timeout"
    if call_outcome in OUTCOMES:
        return call_outcome
    return "error_5xx"


def http_status(outcome: str) -> int:
    """The gateway's status for a failed request: 504 timeout, 503 breaker_open, else 502."""
    if outcome == "timeout":
        return 504
    if outcome == "breaker_open":
        return 503
    return 502


class TtlCache(Generic[K, V]):
    """A small TTL + LRU map: an entry lives ``ttl_s`` from when it was put; beyond
    ``max_entries`` the least recently used goes. One per application (no global state);
    ``clock`` is a seam for tests."""

    def __init__(
        self, ttl_s: float, max_entries: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._clock = clock
        self._items: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: K) -> V | None:
        item = self._items.get(key)
        if item is None:
            return None
        expires, value = item
        if self._clock() >= expires:
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._items[key] = (self._clock() + self.ttl_s, value)
        self._items.move_to_end(key)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)


async def iter_sse(content: aiohttp.StreamReader) -> AsyncIterator[tuple[str, str]]:
    """``(event, data)`` for each server-sent event of ``content`` (event ``message`` when
    unnamed; multi-line data joined with newlines; comments skipped)."""
    event = ""
    data: list[str] = []
    async for raw in content:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if data:
                yield event or "message", "\n".join(data)
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
    if data:
        yield event or "message", "\n".join(data)


# --- metrics -------------------------------------------------------------------------------


class GatewayMetrics:
    """The gateway's Prometheus metrics, in a registry of their own (one per application)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "ragstress_gateway_requests", "Requests by outcome", ["outcome"], registry=r
        )
        for outcome in OUTCOMES:
            self.requests.labels(outcome)
        self.bad_requests = Counter(
            "ragstress_gateway_bad_requests", "Requests refused with 400", registry=r
        )
        self.errors = Counter(
            "ragstress_gateway_errors",
            "Failed or refused attempts by call outcome and stage",
            ["kind", "stage"],
            registry=r,
        )
        self.in_flight = Gauge("ragstress_gateway_in_flight", "Requests in progress", registry=r)
        self.stage_seconds = Histogram(
            "ragstress_gateway_stage_seconds",
            "Time per stage (generate: all attempts and the fallback; ttft: from receipt)",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            "ragstress_gateway_retries", "Retries by stage", ["stage"], registry=r
        )
        self.breaker_open = Gauge(
            "ragstress_gateway_breaker_open",
            "1 while the stage's circuit breaker is open (as last observed)",
            ["stage"],
            registry=r,
        )
        self.cache_hits = Counter(
            "ragstress_gateway_embed_cache_hits", "Embedding cache hits", registry=r
        )
        self.cache_misses = Counter(
            "ragstress_gateway_embed_cache_misses", "Embedding cache misses", registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


# --- one request ---------------------------------------------------------------------------


@dataclass
class _Generation:
    """What one LLM attempt produced."""

    tokens: list[str] = field(default_factory=list)
    first_token_at: float | None = None
    usage: dict[str, int] | None = None


class _SseAnswer:
    """The streamed answer to the client: started at the LLM's 200 (``open``), one event per
    token. A write that fails means the client went away: ``CallAbortedError``."""

    def __init__(self, request: web.Request) -> None:
        self._request = request
        self.sources: list[dict[str, Any]] = []
        self.response: web.StreamResponse | None = None

    def committed(self) -> bool:
        return self.response is not None

    async def send(self, event: str, data: object) -> None:
        assert self.response is not None
        payload = f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()
        try:
            await self.response.write(payload)
        except (ConnectionError, aiohttp.ClientError) as exc:
            raise CallAbortedError(f"the client went away: {exc}") from exc

    async def open(self) -> None:
        if self.response is not None:
            return
        response = web.StreamResponse(
            status=200,
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            },
        )
        self.response = response
        try:
            await response.prepare(self._request)
        except (ConnectionError, aiohttp.ClientError) as exc:
            raise CallAbortedError(f"the client went away: {exc}") from exc
        await self.send("sources", {"sources": self.sources})

    async def token(self, text: str) -> None:
        await self.send("token", {"text": text})


@dataclass
class _Run:
    """The bookkeeping of one request: timings (seconds), attempts, degradation."""

    t0: float
    timings: dict[str, float] = field(default_factory=lambda: dict.fromkeys(_STAGES, 0.0))
    attempts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_STAGES, 0))
    ttft: float | None = None
    cache: str | None = None  # "hit" / "miss" when the cache is on
    degraded: bool = False

    def total_attempts(self) -> int:
        return sum(self.attempts.values())

    def server_timing(self, total: float) -> str:
        parts = [f"{stage};dur={self.timings[stage] * 1000:.3f}" for stage in _STAGES]
        if self.ttft is not None:
            parts.append(f"ttft;dur={self.ttft * 1000:.3f}")
        parts.append(f"total;dur={total * 1000:.3f}")
        if self.cache is not None:
            parts.append(f"cache;desc={self.cache}")
        return ", ".join(parts)

    def timings_ms(self, total: float) -> dict[str, float | None]:
        out: dict[str, float | None] = {
            f"{stage}_ms": round(self.timings[stage] * 1000, 3) for stage in _STAGES
        }
        out["ttft_ms"] = None if self.ttft is None else round(self.ttft * 1000, 3)
        out["total_ms"] = round(total * 1000, 3)
        return out


class _StageFailedError(Exception):
    """A stage failed and its fallback is ``fail``: the request ends with this failure."""

    def __init__(self, stage: str, failure: CallFailed) -> None:
        super().__init__(failure.message)
        self.stage = stage
        self.failure = failure


# --- the application -----------------------------------------------------------------------


def _check_fallbacks(settings: GatewaySettings) -> None:
    for stage, policy in (("embed", settings.embed_policy), ("retrieve", settings.retrieve_policy)):
        if isinstance(policy.fallback, StageFallback):
            raise ValueError(
                f"gateway: {stage}_policy.fallback is {{kind: stage}}, which the gateway has "
                f"nothing to call for; use skip or fail"
            )
    if isinstance(settings.generate_policy.fallback, StageFallback) and (
        settings.llm_fallback_url is None
    ):
        raise ValueError(
            "gateway: generate_policy.fallback is {kind: stage} but llm_fallback_url is not "
            "set; give the fallback LLM's base URL or change the fallback"
        )


def _llm_headers(settings: GatewaySettings) -> dict[str, str]:
    if settings.llm_api_key_env is None:
        return {}
    key = os.environ.get(settings.llm_api_key_env)
    if not key:
        raise ValueError(
            f"gateway: llm_api_key_env names {settings.llm_api_key_env!r}, which is not set "
            f"in the environment"
        )
    return {"Authorization": f"Bearer {key}"}


class _Gateway:
    """The application's state and handlers (one per ``build_app``)."""

    def __init__(self, settings: GatewaySettings, retriever: Retriever | None, seed: int) -> None:
        _check_fallbacks(settings)
        self.settings = settings
        self.metrics = GatewayMetrics()
        self.llm_headers = _llm_headers(settings)
        self.embed_endpoint = settings.embed_url.rstrip("/") + "/v1/embeddings"
        self.llm_endpoint = settings.llm_url.rstrip("/") + "/v1/chat/completions"
        self.fallback_endpoint = (
            None
            if settings.llm_fallback_url is None
            else settings.llm_fallback_url.rstrip("/") + "/v1/chat/completions"
        )
        self.cache: TtlCache[str, list[float]] | None = (
            None
            if settings.embed_cache_ttl_s is None
            else TtlCache(settings.embed_cache_ttl_s, settings.embed_cache_max_entries)
        )
        self.retriever = retriever
        self.session: aiohttp.ClientSession | None = None
        self.ready = False
        self.embed = self._caller("embed", settings.embed_policy, seed)
        self.retrieve = self._caller("retrieve", settings.retrieve_policy, seed)
        self.generate = self._caller("generate", settings.generate_policy, seed)
        self.generate_fallback = self._caller(_FALLBACK, settings.generate_policy, seed)

    def _caller(self, stage: str, policy: ClientPolicy, seed: int) -> PolicyCaller:
        m = self.metrics

        def on_failure(outcome: str) -> None:
            m.errors.labels(outcome, stage).inc()

        def on_retry(wait_s: float) -> None:
            m.retries.labels(stage).inc()

        def on_breaker(old: BreakerState, new: BreakerState) -> None:
            m.breaker_open.labels(stage).set(1.0 if new == OPEN else 0.0)

        if policy.breaker is not None:
            m.breaker_open.labels(stage).set(0.0)
        return PolicyCaller(
            policy,
            rng=stream(seed, "gateway", stage),
            name=stage,
            on_failure=on_failure,
            on_retry=on_retry,
            on_breaker_change=on_breaker,
        )

    # -- resources

    async def resources(self, app: web.Application) -> AsyncIterator[None]:
        """cleanup_ctx: the shared HTTP session and, without a retriever, the pgvector pool."""
        s = self.settings
        # No connection cap (aiohttp's default is 100) and no session timeout: the policies
        # own the timeouts, and a cap the model does not have would queue calls unseen.
        session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None),
            connector=aiohttp.TCPConnector(limit=0),
        )
        pool: AsyncConnectionPool | None = None
        try:
            if self.retriever is None:
                pool = open_pool(s.pg_dsn, s.pool_size, s.ef_search)
                await pool.open(wait=True, timeout=POOL_OPEN_TIMEOUT_S)
                opened = pool

                async def retrieve(vector: Sequence[float], top_k: int) -> list[Source]:
                    async with opened.connection() as conn:
                        return await search_chunks(conn, vector, top_k)

                self.retriever = retrieve
            self.session = session
            self.ready = True
            yield
        finally:
            self.ready = False
            await session.close()
            if pool is not None:
                await pool.close()

    # -- handlers

    async def healthz(self, request: web.Request) -> web.Response:
        if self.ready and self.session is not None and not self.session.closed:
            return web.json_response({"status": "ok"})
        return web.json_response({"status": "starting"}, status=503)

    async def metrics_handler(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def rag(self, request: web.Request) -> web.StreamResponse:
        run = _Run(t0=time.perf_counter())
        try:
            req = parse_request(await request.json(), self.settings)
        except ValueError as exc:  # BadRequestError, or a body that is not JSON
            self.metrics.bad_requests.inc()
            message = (
                str(exc) if isinstance(exc, BadRequestError) else f"the body is not JSON: {exc}"
            )
            return web.json_response(
                {"error": {"kind": "bad_request", "message": message}}, status=400
            )
        self.metrics.in_flight.inc()
        try:
            return await self._answer(request, req, run)
        finally:
            self.metrics.in_flight.dec()

    # -- stages

    async def _embed_once(self, query: str) -> list[float]:
        assert self.session is not None
        async with self.session.post(self.embed_endpoint, json={"input": query}) as resp:
            if resp.status != 200:
                raise await error_from_response(resp)
            payload = await resp.json(content_type=None)
        try:
            vector = payload["data"][0]["embedding"]
        except (KeyError, IndexError, TypeError):
            vector = None
        if (
            not isinstance(vector, list)
            or not vector
            or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in vector)
        ):
            raise AttemptError("error_5xx", "the embedder's answer has no data[0].embedding")
        return [float(x) for x in vector]

    async def _embed_stage(self, req: RagRequest, run: _Run) -> list[float] | None:
        """The query's vector, or ``None`` when embed failed and its fallback skips it."""
        start = time.perf_counter()
        if self.cache is not None:
            cached = self.cache.get(req.query)
            if cached is not None:
                run.cache = "hit"
                self.metrics.cache_hits.inc()
                run.timings["embed"] = time.perf_counter() - start
                return cached
            run.cache = "miss"
            self.metrics.cache_misses.inc()
        result = await self.embed.call(lambda n: self._embed_once(req.query))
        run.timings["embed"] = time.perf_counter() - start
        self.metrics.stage_seconds.labels("embed").observe(run.timings["embed"])
        run.attempts["embed"] = result.attempts
        if isinstance(result, CallOk):
            if self.cache is not None:
                self.cache.put(req.query, result.value)
            return result.value
        if self.settings.embed_policy.fallback.kind == "skip":
            run.degraded = True
            return None
        raise _StageFailedError("embed", result)

    async def _retrieve_stage(
        self, req: RagRequest, vector: list[float], run: _Run
    ) -> list[Source]:
        retriever = self.retriever
        assert retriever is not None
        start = time.perf_counter()
        result = await self.retrieve.call(lambda n: retriever(vector, req.top_k))
        run.timings["retrieve"] = time.perf_counter() - start
        self.metrics.stage_seconds.labels("retrieve").observe(run.timings["retrieve"])
        run.attempts["retrieve"] = result.attempts
        if isinstance(result, CallOk):
            return list(result.value)
        if self.settings.retrieve_policy.fallback.kind == "skip":
            run.degraded = True
            return []
        raise _StageFailedError("retrieve", result)

    async def _generate_once(
        self, url: str, payload: dict[str, Any], sink: _SseAnswer | None
    ) -> _Generation:
        """One LLM call: an error status before the stream; ``error_stream`` when it breaks,
        carries an error, or ends without ``[DONE]``."""
        assert self.session is not None
        async with self.session.post(url, json=payload, headers=self.llm_headers) as resp:
            if resp.status != 200:
                raise await error_from_response(resp)
            if sink is not None:
                await sink.open()
            gen = _Generation()
            done = False
            try:
                async for event, data in iter_sse(resp.content):
                    if data.strip() == "[DONE]":
                        done = True
                        break
                    text = self._llm_event(event, data, gen)
                    if text:
                        if gen.first_token_at is None:
                            gen.first_token_at = time.perf_counter()
                        gen.tokens.append(text)
                        if sink is not None:
                            await sink.token(text)
            except TimeoutError:
                raise
            except (aiohttp.ClientError, ValueError) as exc:
                raise AttemptError(ERROR_STREAM, f"the LLM stream broke: {exc}") from exc
            if not done:
                raise AttemptError(ERROR_STREAM, "the LLM stream ended without [DONE]")
        return gen

    @staticmethod
    def _llm_event(event: str, data: str, gen: _Generation) -> str:
        """The text of one chat-completion chunk (records usage); ``error_stream`` for an
        error event."""
        try:
            chunk = json.loads(data)
        except ValueError as exc:
            raise AttemptError(ERROR_STREAM, f"the LLM sent a malformed event: {exc}") from exc
        if event == "error" or (isinstance(chunk, dict) and chunk.get("error") is not None):
            error = chunk.get("error", chunk) if isinstance(chunk, dict) else chunk
            raise AttemptError(ERROR_STREAM, f"the LLM stream carried an error: {error}")
        if not isinstance(chunk, dict):
            raise AttemptError(ERROR_STREAM, "the LLM sent an event that is not an object")
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            gen.usage = {
                "prompt_tokens": int(usage.get("prompt_tokens") or 0),
                "completion_tokens": int(usage.get("completion_tokens") or 0),
            }
        choices = chunk.get("choices") or []
        if choices and isinstance(choices[0], dict):
            delta = choices[0].get("delta") or {}
            content = delta.get("content") if isinstance(delta, dict) else None
            if isinstance(content, str):
                return content
        return ""

    async def _generate_stage(
        self, req: RagRequest, sources: list[Source], run: _Run, sink: _SseAnswer | None
    ) -> tuple[str, dict[str, int]]:
        """The answer and its usage; a failure that the fallback does not cover raises
        ``_StageFailedError``."""
        s = self.settings
        user = build_prompt(req.query, sources)
        payload: dict[str, Any] = {
            "model": s.llm_model,
            "messages": [
                {"role": "system", "content": s.system_prompt},
                {"role": "user", "content": user},
            ],
            "max_tokens": req.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        committed = None if sink is None else sink.committed
        start = time.perf_counter()
        try:
            result = await self.generate.call(
                lambda n: self._generate_once(self.llm_endpoint, payload, sink),
                committed=committed,
            )
            run.attempts["generate"] = result.attempts
            kind = s.generate_policy.fallback.kind
            if isinstance(result, CallFailed) and not (sink is not None and sink.committed()):
                if kind == "stage":
                    assert self.fallback_endpoint is not None
                    endpoint = self.fallback_endpoint
                    first = result
                    result = await self.generate_fallback.call(
                        lambda n: self._generate_once(endpoint, payload, sink),
                        committed=committed,
                    )
                    run.attempts["generate"] = first.attempts + result.attempts
                    run.degraded = run.degraded or isinstance(result, CallOk)
                elif kind == "skip":
                    run.degraded = True
                    answer = sources[0].text[:EXTRACT_CHARS] if sources else ""
                    return answer, {"prompt_tokens": 0, "completion_tokens": 0}
        finally:
            run.timings["generate"] = time.perf_counter() - start
            self.metrics.stage_seconds.labels("generate").observe(run.timings["generate"])
        if isinstance(result, CallFailed):
            raise _StageFailedError("generate", result)
        gen = result.value
        if gen.first_token_at is not None:
            run.ttft = gen.first_token_at - run.t0
            self.metrics.stage_seconds.labels("ttft").observe(run.ttft)
        answer = "".join(gen.tokens)
        usage = gen.usage or {
            "prompt_tokens": approx_tokens(s.system_prompt) + approx_tokens(user),
            "completion_tokens": approx_tokens(answer),
        }
        return answer, usage

    # -- the whole request

    def _finish(self, outcome: str, run: _Run) -> float:
        total = time.perf_counter() - run.t0
        self.metrics.requests.labels(outcome).inc()
        self.metrics.stage_seconds.labels("total").observe(total)
        return total

    async def _answer(self, request: web.Request, req: RagRequest, run: _Run) -> web.StreamResponse:
        sink = _SseAnswer(request) if req.stream else None
        try:
            vector = await self._embed_stage(req, run)
            sources = [] if vector is None else await self._retrieve_stage(req, vector, run)
            if sink is not None:
                sink.sources = [asdict(src) for src in sources]
            answer, usage = await self._generate_stage(req, sources, run, sink)
        except _StageFailedError as failed:
            return await self._failed(failed, run, sink)
        except CallAbortedError:
            # the client went away mid-stream: nothing to answer, no outcome to count
            return sink.response if sink is not None and sink.response else web.Response()
        outcome = "ok_degraded" if run.degraded else "ok"
        if sink is None:
            total = self._finish(outcome, run)
            body = {
                "answer": answer,
                "sources": [asdict(src) for src in sources],
                "usage": usage,
                "outcome": outcome,
                "attempts": run.attempts,
            }
            return web.json_response(body, headers=self._headers(outcome, run, total))
        try:
            if not sink.committed():  # generate skipped: the extract is the one token
                await sink.open()
                if answer:
                    await sink.token(answer)
            total = self._finish(outcome, run)
            done = {
                "usage": usage,
                "outcome": outcome,
                "attempts": run.attempts,
                "timings": run.timings_ms(total),
            }
            await sink.send("done", done)
            assert sink.response is not None
            await sink.response.write_eof()
        except CallAbortedError:
            pass
        assert sink.response is not None
        return sink.response

    def _headers(self, outcome: str, run: _Run, total: float) -> dict[str, str]:
        return {
            "x-ragstress-outcome": outcome,
            "x-ragstress-attempts": str(run.total_attempts()),
            "Server-Timing": run.server_timing(total),
        }

    async def _failed(
        self, failed: _StageFailedError, run: _Run, sink: _SseAnswer | None
    ) -> web.StreamResponse:
        failure = failed.failure
        outcome = request_outcome(failure.outcome)
        total = self._finish(outcome, run)
        if sink is not None and sink.response is not None:
            # the stream had started: say so in-band and end it
            try:
                await sink.send(
                    "error",
                    {
                        "kind": outcome,
                        "stage": failed.stage,
                        "message": failure.message,
                        "attempts": run.attempts,
                    },
                )
                await sink.response.write_eof()
            except (CallAbortedError, ConnectionError, aiohttp.ClientError):
                pass
            return sink.response
        body = {
            "error": {
                "kind": outcome,
                "stage": failed.stage,
                "message": failure.message,
                "cause": failure.outcome,
                "status": failure.status,
            }
        }
        return web.json_response(
            body, status=http_status(outcome), headers=self._headers(outcome, run, total)
        )


_GATEWAY: Final = web.AppKey("ragstress_gateway", _Gateway)


def build_app(
    settings: GatewaySettings, *, retriever: Retriever | None = None, seed: int = 0
) -> web.Application:
    """The gateway's application. ``retriever`` is a seam: ``None`` opens the pgvector pool
    (``settings.pg_dsn``) at startup and searches it; tests pass a fake. ``seed`` seeds the
    retry jitter. Raises ValueError for fallbacks the gateway cannot honour (see the module
    docstring) and for an ``llm_api_key_env`` that is not set."""
    gateway = _Gateway(settings, retriever, seed)
    app = web.Application()
    app[_GATEWAY] = gateway
    app.cleanup_ctx.append(gateway.resources)
    app.router.add_post("/v1/rag", gateway.rag)
    app.router.add_get("/healthz", gateway.healthz)
    app.router.add_get("/metrics", gateway.metrics_handler)
    return app


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m ragstress.reference.gateway --settings JSON``."""
    run_service(argv, GatewaySettings, build_app, "ragstress-gateway", lambda s: (s.host, s.port))


if __name__ == "__main__":
    main()
