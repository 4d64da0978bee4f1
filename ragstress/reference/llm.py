"""The reference stack's LLM service: an OpenAI-compatible ``/v1/chat/completions`` server.

In ``engine`` mode it answers from the built-in engine (:mod:`ragstress.reference.engine`),
which emits filler tokens at the times a continuous-batching GPU server would. In ``forward``
mode it is a pass-through to a real OpenAI-compatible server (``forward_url``), so the rest of
the stack runs unchanged against either.

**Token accounting.** Prompt tokens are ``approx_tokens`` of the messages' text, summed
over messages. The answer always has exactly ``max_completion_tokens`` (or ``max_tokens``, or
the engine's ``default_max_tokens``) tokens, as vLLM's benchmarks run with ``ignore_eos``, and
ends with ``finish_reason: "length"``. Each filler token is exactly ``CHARS_PER_TOKEN``
characters (a short word and a space), so ``approx_tokens(answer)`` is the completion tokens
and the gateway's and driver's counts agree with the engine's.

**Streaming.** One SSE event per token, written as soon as the engine emits the token (one
``write`` per event, no buffering; aiohttp sets ``TCP_NODELAY`` on every connection, so
Nagle's algorithm does not hold small events back). The non-streaming answer carries
``Server-Timing: queue;dur=…, ttft;dur=…, total;dur=…`` (milliseconds from the request's
arrival to admission, to the first token, to the last).

**Errors** have OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``: a bad
body is 400 ``invalid_request_error``; prompt + answer over the KV cache is 400 with code
``context_length_exceeded`` (the call could never be admitted); a full queue
(``queue_limit``) is 503 ``server_error``. A client that goes away mid-answer does not stop
its sequence: the engine finishes it (see the engine's docstring).

**Forward mode** streams the upstream body through chunk by chunk as it arrives, with the
upstream status and the headers clients act on (content type, retry hints, request id, rate
limits). One client session serves every request, with no cap on connections: a pool limit
would be a hidden queue in front of the server under test. The API key comes from the
environment variable named by ``forward_api_key_env`` and is never logged.

Endpoints: ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /healthz``,
``GET /metrics`` (Prometheus text, one registry per application).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from ragstress.reference.engine import (
    EmulatedEngine,
    EngineRefusedError,
    EngineStoppedError,
    Generation,
    StepTiming,
)
from ragstress.reference.service import run_service
from ragstress.reference.settings import CHARS_PER_TOKEN, LlmSettings, approx_tokens

__all__ = [
    "BadRequestError",
    "ChatRequest",
    "build_app",
    "filler_token",
    "main",
    "parse_chat_request",
]

# Short words, each padded with a space to exactly CHARS_PER_TOKEN characters.
_WORDS = ("the", "and", "for", "you", "are", "not", "all", "can", "was", "one", "our", "new")
_FILLER = tuple(w[: CHARS_PER_TOKEN - 1].ljust(CHARS_PER_TOKEN) for w in _WORDS)

# Upstream headers worth passing on in forward mode (retry hints drive client policies).
_FORWARD_HEADERS = (
    "content-type",
    "retry-after",
    "retry-after-ms",
    "x-should-retry",
    "x-request-id",
)
_FORWARD_PREFIXES = ("x-ratelimit-",)

# A prompt of a few hundred thousand tokens is a legitimate (long-context) request.
_MAX_BODY_BYTES = 64 * 1024 * 1024


def filler_token(index: int) -> str:
    """The text of answer token ``index``: exactly ``CHARS_PER_TOKEN`` characters."""
    return _FILLER[index % len(_FILLER)]


# --- the request ---------------------------------------------------------------------------


class BadRequestError(ValueError):
    """The request body is not a chat completion request we accept (HTTP 400)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """What the service reads of a chat completion request; other OpenAI fields are ignored."""

    model: str
    prompt_tokens: int
    max_tokens: int | None
    stream: bool
    include_usage: bool


def _content_text(content: object, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        parts: list[str] = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text":
                raise BadRequestError(f"{where}[{j}]: only text content parts are supported", where)
            text = part.get("text")
            if not isinstance(text, str):
                raise BadRequestError(f"{where}[{j}].text must be a string", where)
            parts.append(text)
        return "".join(parts)
    raise BadRequestError(f"{where} must be a string or a list of text parts", where)


def _optional_int(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequestError(f"{key} must be an integer", key)
    if value < 1:
        raise BadRequestError(f"{key} must be at least 1", key)
    return value


def _optional_bool(obj: dict[str, Any], key: str, param: str) -> bool | None:
    value = obj.get(key)
    if value is None or isinstance(value, bool):
        return value
    raise BadRequestError(f"{param} must be a boolean", param)


def parse_chat_request(body: object) -> ChatRequest:
    """Validate a ``/v1/chat/completions`` body; raises :class:`BadRequestError`."""
    if not isinstance(body, dict):
        raise BadRequestError("the body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str):
        raise BadRequestError("model must be a string", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequestError("messages must be a non-empty list", "messages")
    prompt_tokens = 0
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise BadRequestError(f"{where} must be an object", "messages")
        if not isinstance(message.get("role"), str):
            raise BadRequestError(f"{where}.role must be a string", "messages")
        prompt_tokens += approx_tokens(_content_text(message.get("content"), f"{where}.content"))
    # As vLLM: max_completion_tokens (the current name) wins over the deprecated max_tokens.
    max_completion = _optional_int(body, "max_completion_tokens")
    max_tokens = max_completion if max_completion is not None else _optional_int(body, "max_tokens")
    stream = bool(_optional_bool(body, "stream", "stream"))
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not isinstance(options, dict):
            raise BadRequestError("stream_options must be an object", "stream_options")
        if not stream:
            raise BadRequestError(
                "stream_options can only be given when stream is true", "stream_options"
            )
        include_usage = bool(
            _optional_bool(options, "include_usage", "stream_options.include_usage")
        )
    return ChatRequest(
        model=model,
        prompt_tokens=prompt_tokens,
        max_tokens=max_tokens,
        stream=stream,
        include_usage=include_usage,
    )


# --- responses -----------------------------------------------------------------------------


def _error(
    status: int, message: str, type_: str, *, param: str | None = None, code: str | None = None
) -> web.Response:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return web.json_response(body, status=status)


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def _ms(seconds: float) -> str:
    return f"{max(0.0, seconds) * 1000:.3f}"


class _Metrics:
    """The service's Prometheus metrics, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "ragstress_llm_requests",
            "Chat completion requests, by HTTP status",
            ["status"],
            registry=r,
        )
        self.prompt_tokens = Counter(
            "ragstress_llm_prompt_tokens", "Prompt tokens of accepted requests", registry=r
        )
        self.generation_tokens = Counter(
            "ragstress_llm_generation_tokens", "Answer tokens the engine emitted", registry=r
        )
        self.steps = Counter("ragstress_llm_steps", "Engine steps run", registry=r)
        self.step_seconds = Histogram(
            "ragstress_llm_step_duration_seconds",
            "Engine step time by the step formula",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )
        self.step_lateness = Histogram(
            "ragstress_llm_step_lateness_seconds",
            "How late the emulator woke up after a step's planned end",
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.1),
            registry=r,
        )
        # vLLM's buckets; _sum / _count gives the exact mean, which tells the engine's share
        # of a caller's first token from the hops before it
        self.time_to_first_token = Histogram(
            "ragstress_llm_time_to_first_token_seconds",
            "From a request's arrival at the service to its first token written",
            buckets=(
                *(0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75),
                *(1.0, 2.5, 5.0, 7.5, 10.0),
            ),
            registry=r,
        )
        self.running = Gauge("ragstress_llm_running_sequences", "Sequences running", registry=r)
        self.waiting = Gauge("ragstress_llm_waiting_sequences", "Calls waiting", registry=r)
        self.kv_used = Gauge("ragstress_llm_kv_cache_used_tokens", "KV tokens reserved", registry=r)


class _Service:
    """One application's state: settings, engine or upstream session, metrics."""

    def __init__(self, settings: LlmSettings) -> None:
        self.settings = settings
        self.metrics = _Metrics()
        self.engine: EmulatedEngine | None = None
        self.session: aiohttp.ClientSession | None = None
        self.created = int(time.time())
        self.forward_base = ""
        self.authorization: str | None = None
        if settings.mode == "forward":
            if not settings.forward_url:
                raise ValueError("mode 'forward' needs forward_url")
            self.forward_base = settings.forward_url.rstrip("/")
            env = settings.forward_api_key_env
            if env:
                key = os.environ.get(env)
                if not key:
                    raise ValueError(f"forward_api_key_env: environment variable {env} is not set")
                self.authorization = f"Bearer {key}"
        else:
            engine = EmulatedEngine(settings.engine, on_step=self._on_step)
            self.engine = engine
            m = self.metrics
            m.running.set_function(lambda: engine.running)
            m.waiting.set_function(lambda: engine.waiting)
            m.kv_used.set_function(lambda: engine.kv_used)
        self._last_tokens = 0

    def _on_step(self, timing: StepTiming) -> None:
        m = self.metrics
        m.steps.inc()
        m.step_seconds.observe(timing.plan.duration)
        m.step_lateness.observe(max(0.0, timing.lateness))
        assert self.engine is not None
        total = self.engine.tokens_emitted
        m.generation_tokens.inc(total - self._last_tokens)
        self._last_tokens = total

    async def lifespan(self, app: web.Application) -> AsyncIterator[None]:
        """Start the engine or open the upstream session; undo it on cleanup."""
        if self.engine is not None:
            await self.engine.start()
        else:
            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                # No total: an answer streams as long as it takes. A read timeout still
                # bounds a hung upstream (a client that left is noticed only on a write).
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=300),
                auto_decompress=False,  # pass bytes through; content-encoding goes along
            )
        try:
            yield
        finally:
            if self.engine is not None:
                await self.engine.stop()
            if self.session is not None:
                await self.session.close()

    # -- plain endpoints ----------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "mode": self.settings.mode})

    async def models(self, request: web.Request) -> web.StreamResponse:
        if self.settings.mode == "forward":
            return await self._forward(request, "/models", count=False)
        model = {
            "id": self.settings.engine.model,
            "object": "model",
            "created": self.created,
            "owned_by": "ragstress",
        }
        return web.json_response({"object": "list", "data": [model]})

    async def metrics_text(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.metrics.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )

    # -- chat completions ---------------------------------------------------------------

    async def chat(self, request: web.Request) -> web.StreamResponse:
        if self.settings.mode == "forward":
            resp = await self._forward(request, "/chat/completions", count=True)
        else:
            resp = await self._engine_chat(request)
        if not resp.prepared:  # streams are counted when they start, not when they end
            self._count(resp.status)
        return resp

    def _count(self, status: int) -> None:
        self.metrics.requests.labels(str(status)).inc()

    async def _engine_chat(self, request: web.Request) -> web.StreamResponse:
        engine = self.engine
        assert engine is not None
        arrived = asyncio.get_running_loop().time()
        try:
            body = json.loads(await request.read())
        except ValueError:
            return _error(400, "the body is not valid JSON", "invalid_request_error")
        try:
            req = parse_chat_request(body)
        except BadRequestError as exc:
            return _error(400, str(exc), "invalid_request_error", param=exc.param)
        max_tokens = req.max_tokens or engine.settings.default_max_tokens
        try:
            gen = engine.submit(req.prompt_tokens, max_tokens)
        except EngineRefusedError as exc:
            if exc.reason == "too_long":
                return _error(
                    400,
                    f"This model's maximum context length is {exc.kv_cache_tokens} tokens. "
                    f"However, you requested {exc.need} tokens ({req.prompt_tokens} in the "
                    f"messages, {exc.need - req.prompt_tokens} in the completion).",
                    "invalid_request_error",
                    param="messages",
                    code="context_length_exceeded",
                )
            return _error(503, "the engine is overloaded", "server_error")
        self.metrics.prompt_tokens.inc(req.prompt_tokens)
        if req.stream:
            return await self._stream(request, req, gen, arrived)
        return await self._complete(req, gen, arrived)

    def _usage(self, req: ChatRequest, gen: Generation) -> dict[str, int]:
        return {
            "prompt_tokens": req.prompt_tokens,
            "completion_tokens": gen.max_tokens,
            "total_tokens": req.prompt_tokens + gen.max_tokens,
        }

    async def _complete(self, req: ChatRequest, gen: Generation, arrived: float) -> web.Response:
        parts: list[str] = []
        try:
            parts.extend([filler_token(token.index) async for token in gen])
        except EngineStoppedError:
            return _error(503, "the engine stopped", "server_error")
        done = asyncio.get_running_loop().time()
        admitted = gen.admitted_at if gen.admitted_at is not None else arrived
        first = gen.first_token_at if gen.first_token_at is not None else done
        self.metrics.time_to_first_token.observe(max(0.0, first - arrived))
        body = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.settings.engine.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(parts)},
                    "logprobs": None,
                    "finish_reason": "length",
                }
            ],
            "usage": self._usage(req, gen),
        }
        timing = (
            f"queue;dur={_ms(admitted - arrived)}, ttft;dur={_ms(first - arrived)}, "
            f"total;dur={_ms(done - arrived)}"
        )
        return web.json_response(body, headers={"Server-Timing": timing})

    async def _stream(
        self, request: web.Request, req: ChatRequest, gen: Generation, arrived: float
    ) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await resp.prepare(request)
        self._count(resp.status)
        base: dict[str, Any] = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": self.settings.engine.model,
        }
        extra: dict[str, Any] = {"usage": None} if req.include_usage else {}
        try:
            async for token in gen:
                delta: dict[str, str] = {"content": filler_token(token.index)}
                if token.index == 0:
                    delta = {"role": "assistant", **delta}
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
                await resp.write(_sse({**base, "choices": [choice], **extra}))
                if token.index == 0:
                    loop = asyncio.get_running_loop()
                    self.metrics.time_to_first_token.observe(loop.time() - arrived)
            last = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}
            await resp.write(_sse({**base, "choices": [last], **extra}))
            if req.include_usage:
                await resp.write(_sse({**base, "choices": [], "usage": self._usage(req, gen)}))
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
        except ConnectionResetError:
            pass  # the client went away; the engine finishes the sequence regardless
        except EngineStoppedError:
            _abort(request)  # a truncated stream, not a clean end that looks complete
        return resp

    # -- forward mode -------------------------------------------------------------------

    async def _forward(self, request: web.Request, path: str, *, count: bool) -> web.StreamResponse:
        session = self.session
        assert session is not None
        body = await request.read()
        headers = {
            "Accept": request.headers.get("Accept", "*/*"),
            # Bytes pass through undecoded, so ask only for encodings the client accepts.
            "Accept-Encoding": request.headers.get("Accept-Encoding", "identity"),
        }
        if body:
            headers["Content-Type"] = request.headers.get("Content-Type", "application/json")
        auth = self.authorization or request.headers.get("Authorization")
        if auth:
            headers["Authorization"] = auth
        try:
            upstream = await session.request(
                request.method, self.forward_base + path, data=body or None, headers=headers
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return _error(
                502,
                f"the upstream server could not be reached: {type(exc).__name__}",
                "server_error",
                code="upstream_unreachable",
            )
        try:
            out_headers = {
                k: v
                for k, v in upstream.headers.items()
                if k.lower() in _FORWARD_HEADERS or k.lower().startswith(_FORWARD_PREFIXES)
            }
            if "Content-Encoding" in upstream.headers:
                out_headers["Content-Encoding"] = upstream.headers["Content-Encoding"]
            resp = web.StreamResponse(
                status=upstream.status, reason=upstream.reason, headers=out_headers
            )
            await resp.prepare(request)
            if count:
                self._count(resp.status)
            try:
                async for data in upstream.content.iter_any():
                    await resp.write(data)
                await resp.write_eof()
            except ConnectionResetError:
                pass  # the client went away
            except (aiohttp.ClientError, OSError, TimeoutError):
                _abort(request)  # the upstream broke mid-body: truncate, don't end cleanly
            return resp
        finally:
            upstream.release()


def _abort(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


# --- the application -------------------------------------------------------------------------

_SERVICE = web.AppKey("llm_service", _Service)


def build_app(settings: LlmSettings) -> web.Application:
    """The LLM service as an aiohttp application; raises ValueError on unusable settings
    (forward mode without ``forward_url``, an API key variable that is not set)."""
    service = _Service(settings)
    app = web.Application(client_max_size=_MAX_BODY_BYTES)
    app[_SERVICE] = service
    app.cleanup_ctx.append(service.lifespan)
    app.router.add_post("/v1/chat/completions", service.chat)
    app.router.add_get("/v1/models", service.models)
    app.router.add_get("/healthz", service.healthz)
    app.router.add_get("/metrics", service.metrics_text)
    return app


def _build_or_exit(settings: LlmSettings) -> web.Application:
    try:
        return build_app(settings)
    except ValueError as exc:
        sys.stderr.write(f"ragstress-llm: --settings: {exc}\n")
        raise SystemExit(2) from None


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m ragstress.reference.llm --settings JSON``: serve until SIGINT/SIGTERM."""
    run_service(argv, LlmSettings, _build_or_exit, "ragstress-llm", _host_port)


def _host_port(settings: LlmSettings) -> tuple[str, int]:
    return settings.host, settings.port


if __name__ == "__main__":
    main()
