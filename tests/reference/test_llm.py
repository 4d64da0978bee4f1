"""The LLM service over real HTTP on 127.0.0.1: OpenAI shapes, streaming timing, errors,
metrics, forward mode against a small upstream, and the service as its own process."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from ragstress.config.profile import EngineStep
from ragstress.reference.llm import build_app, filler_token, parse_chat_request
from ragstress.reference.settings import CHARS_PER_TOKEN, EngineSettings, LlmSettings, approx_tokens

REPO = Path(__file__).resolve().parents[2]


def engine_settings(
    base_s: float = 0.005, per_decode_seq_s: float = 0.0005, **fields: Any
) -> LlmSettings:
    return LlmSettings(
        engine=EngineSettings(
            step=EngineStep(base_s=base_s, per_decode_seq_s=per_decode_seq_s), **fields
        )
    )


@asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    async with TestClient(TestServer(app, host="127.0.0.1", port=0)) as client:
        yield client


def run(coro_fn: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        await coro_fn()

    asyncio.run(main())


def chat_body(text: str = "x" * 40, **fields: Any) -> dict[str, Any]:
    return {
        "model": "ragstress-emulated",
        "messages": [
            {"role": "system", "content": "be brief"},  # 8 chars: 2 tokens
            {"role": "user", "content": text},
        ],
        "temperature": 0.3,  # ignored
        **fields,
    }


async def read_events(resp: Any) -> list[tuple[float, str]]:
    """The SSE ``data:`` payloads of a streaming response, with the loop time each arrived."""
    loop = asyncio.get_running_loop()
    events: list[tuple[float, str]] = []
    async for raw in resp.content:
        line = raw.decode().strip()
        if line.startswith("data: "):
            events.append((loop.time(), line.removeprefix("data: ")))
    return events


def error_of(body: dict[str, Any]) -> dict[str, Any]:
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str)
    assert err["message"]
    return dict(err)


# -- 1. engine mode --------------------------------------------------------------------------


def test_filler_tokens_are_chars_per_token_long() -> None:
    assert all(len(filler_token(i)) == CHARS_PER_TOKEN for i in range(50))
    assert approx_tokens("".join(filler_token(i) for i in range(37))) == 37


def test_non_streaming_completion_shape_usage_and_server_timing() -> None:
    async def go() -> None:
        async with serve(build_app(engine_settings(default_max_tokens=7))) as client:
            resp = await client.post("/v1/chat/completions", json=chat_body(max_tokens=5))
            assert resp.status == 200
            body = await resp.json()
            assert body["object"] == "chat.completion"
            assert body["id"].startswith("chatcmpl-")
            assert body["model"] == "ragstress-emulated"
            (choice,) = body["choices"]
            assert choice["finish_reason"] == "length"
            assert choice["message"]["role"] == "assistant"
            assert approx_tokens(choice["message"]["content"]) == 5
            assert body["usage"] == {
                "prompt_tokens": 12,
                "completion_tokens": 5,
                "total_tokens": 17,
            }
            timing = {
                part.split(";dur=")[0].strip(): float(part.split(";dur=")[1])
                for part in resp.headers["Server-Timing"].split(",")
            }
            assert set(timing) == {"queue", "ttft", "total"}
            assert 0 <= timing["queue"] <= timing["ttft"] <= timing["total"]
            # One prefill step of 5 ms and four decode steps of 5.5 ms: 27 ms.
            assert 27 * 0.95 <= timing["total"] <= 27 * 1.6

            # max_completion_tokens wins over max_tokens; without either, the default.
            resp = await client.post(
                "/v1/chat/completions",
                json=chat_body(max_tokens=5, max_completion_tokens=3, stream=False),
            )
            assert (await resp.json())["usage"]["completion_tokens"] == 3
            resp = await client.post("/v1/chat/completions", json=chat_body())
            body = await resp.json()
            assert body["usage"]["completion_tokens"] == 7
            assert approx_tokens(body["choices"][0]["message"]["content"]) == 7

    run(go)


def test_streaming_events_arrive_as_tokens_are_emitted() -> None:
    """base 20 ms, 5 ms per decoding sequence: the first token after 20 ms, then one every
    25 ms, so the tenth arrives about 225 ms after the first."""

    async def go() -> None:
        settings = engine_settings(base_s=0.02, per_decode_seq_s=0.005)
        async with serve(build_app(settings)) as client:
            body = chat_body(max_tokens=10, stream=True, stream_options={"include_usage": True})
            resp = await client.post("/v1/chat/completions", json=body)
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            events = await read_events(resp)

        assert events[-1][1] == "[DONE]"
        chunks = [json.loads(data) for _, data in events[:-1]]
        assert len(chunks) == 10 + 2  # tokens, the finish chunk, the usage chunk
        assert all(c["object"] == "chat.completion.chunk" for c in chunks)
        assert len({c["id"] for c in chunks}) == 1
        tokens = chunks[:10]
        assert tokens[0]["choices"][0]["delta"]["role"] == "assistant"
        assert all("role" not in c["choices"][0]["delta"] for c in tokens[1:])
        assert all(c["choices"][0]["finish_reason"] is None for c in tokens)
        assert all(c["usage"] is None for c in chunks[:11])
        text = "".join(c["choices"][0]["delta"]["content"] for c in tokens)
        assert approx_tokens(text) == 10
        assert chunks[10]["choices"][0]["finish_reason"] == "length"
        assert chunks[10]["choices"][0]["delta"] == {}
        assert chunks[11]["choices"] == []
        assert chunks[11]["usage"] == {
            "prompt_tokens": 12,
            "completion_tokens": 10,
            "total_tokens": 22,
        }
        times = [t for t, _ in events[:10]]
        assert times[-1] - times[0] == pytest.approx(9 * 0.025, rel=0.12)
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert min(gaps) > 0.015  # spread out, not buffered until the end

    run(go)


def test_stream_without_usage_and_an_abandoned_stream_runs_to_its_end() -> None:
    async def go() -> None:
        settings = engine_settings(base_s=0.01, per_decode_seq_s=0.0)
        async with serve(build_app(settings)) as client:
            resp = await client.post(
                "/v1/chat/completions", json=chat_body(max_tokens=3, stream=True)
            )
            chunks = [json.loads(d) for _, d in (await read_events(resp))[:-1]]
            assert len(chunks) == 4
            assert all("usage" not in c for c in chunks)

            resp = await client.post(
                "/v1/chat/completions", json=chat_body(max_tokens=20, stream=True)
            )
            await resp.content.readline()  # the first token's event
            resp.close()  # the client goes away
            await asyncio.sleep(0.35)  # 20 steps of 10 ms
            metrics = await (await client.get("/metrics")).text()
            assert "ragstress_llm_generation_tokens_total 23.0" in metrics
            assert "ragstress_llm_running_sequences 0.0" in metrics
            # streams count their first token as written, the abandoned one too
            assert "ragstress_llm_time_to_first_token_seconds_count 2.0" in metrics

    run(go)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ([1, 2], None),
        ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
        ({"model": "m", "messages": []}, "messages"),
        ({"model": "m", "messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
        ({"model": "m", "messages": [{"content": "hi"}]}, "messages"),
        (chat_body(max_tokens="5"), "max_tokens"),
        (chat_body(max_tokens=0), "max_tokens"),
        (chat_body(max_completion_tokens=True), "max_completion_tokens"),
        (chat_body(stream="yes"), "stream"),
        (chat_body(stream_options={"include_usage": True}), "stream_options"),
        (
            chat_body(stream=True, stream_options={"include_usage": 1}),
            "stream_options.include_usage",
        ),
    ],
)
def test_bad_bodies_are_400(body: object, param: str | None) -> None:
    with pytest.raises(ValueError, match=r".") as exc:
        parse_chat_request(body)
    assert getattr(exc.value, "param", None) == param

    async def go() -> None:
        async with serve(build_app(engine_settings())) as client:
            resp = await client.post("/v1/chat/completions", json=body)
            assert resp.status == 400
            err = error_of(await resp.json())
            assert err["type"] == "invalid_request_error"
            assert err["param"] == param

    run(go)


def test_text_parts_count_as_content() -> None:
    req = parse_chat_request(
        {
            "model": "m",
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "abcd" * 3}]},
                {"role": "assistant", "content": None},
            ],
        }
    )
    assert req.prompt_tokens == 3


def test_context_length_exceeded_and_overloaded() -> None:
    async def go() -> None:
        settings = engine_settings(base_s=0.01, kv_cache_tokens=100, max_num_seqs=1, queue_limit=0)
        async with serve(build_app(settings)) as client:
            resp = await client.post(
                "/v1/chat/completions", json=chat_body("x" * 360, max_tokens=10)
            )  # 2 + 90 + 10 tokens > 100
            assert resp.status == 400
            err = error_of(await resp.json())
            assert err["code"] == "context_length_exceeded"
            assert err["type"] == "invalid_request_error"
            assert "100" in err["message"]

            bad = await client.post("/v1/chat/completions", data=b"{not json")
            assert bad.status == 400
            error_of(await bad.json())

            busy = await client.post(
                "/v1/chat/completions", json=chat_body(max_tokens=30, stream=True)
            )
            await busy.content.readline()  # it runs, holding the only slot
            resp = await client.post("/v1/chat/completions", json=chat_body(max_tokens=1))
            assert resp.status == 503
            err = error_of(await resp.json())
            assert err["type"] == "server_error"
            assert "overloaded" in err["message"]
            busy.close()

            metrics = await (await client.get("/metrics")).text()
            assert 'ragstress_llm_requests_total{status="400"} 2.0' in metrics
            assert 'ragstress_llm_requests_total{status="503"} 1.0' in metrics
            assert 'ragstress_llm_requests_total{status="200"} 1.0' in metrics
            assert "ragstress_llm_running_sequences 1.0" in metrics
            assert "ragstress_llm_kv_cache_used_tokens 42.0" in metrics  # 12 + 30

    run(go)


def test_healthz_models_and_metrics() -> None:
    async def go() -> None:
        async with serve(build_app(engine_settings())) as client:
            health = await client.get("/healthz")
            assert health.status == 200
            assert await health.json() == {"status": "ok", "mode": "engine"}
            models = await (await client.get("/v1/models")).json()
            assert models["object"] == "list"
            assert [m["id"] for m in models["data"]] == ["ragstress-emulated"]
            for n in (3, 4):
                await client.post("/v1/chat/completions", json=chat_body(max_tokens=n))
            text = await (await client.get("/metrics")).text()
            for line in (
                'ragstress_llm_requests_total{status="200"} 2.0',
                "ragstress_llm_prompt_tokens_total 24.0",
                "ragstress_llm_generation_tokens_total 7.0",
                "ragstress_llm_waiting_sequences 0.0",
                "ragstress_llm_kv_cache_used_tokens 0.0",
            ):
                assert line in text
            steps = [ln for ln in text.splitlines() if ln.startswith("ragstress_llm_steps_total")]
            assert steps
            assert float(steps[0].split()[-1]) >= 4
            assert "ragstress_llm_step_duration_seconds_bucket" in text
            assert "ragstress_llm_step_lateness_seconds_count" in text
            # one first token per answer, each at least one step (5 ms) after its arrival
            assert "ragstress_llm_time_to_first_token_seconds_count 2.0" in text
            (ttft_sum,) = [
                float(ln.split()[-1])
                for ln in text.splitlines()
                if ln.startswith("ragstress_llm_time_to_first_token_seconds_sum")
            ]
            assert 2 * 0.005 <= ttft_sum < 2 * 0.2

    run(go)


# -- 2. forward mode -------------------------------------------------------------------------


def upstream_app(seen: list[dict[str, Any]]) -> web.Application:
    """An OpenAI-like server: 3 SSE events 100 ms apart, or a 429 for model "limited"."""

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        seen.append({"auth": request.headers.get("Authorization"), "body": body})
        if body["model"] == "limited":
            return web.json_response(
                {
                    "error": {
                        "message": "slow down",
                        "type": "requests",
                        "param": None,
                        "code": "rate_limit_exceeded",
                    }
                },
                status=429,
                headers={"retry-after": "7", "x-request-id": "req-1", "x-other": "dropped"},
            )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(3):
            if i:
                await asyncio.sleep(0.1)
            await resp.write(f'data: {{"n": {i}}}\n\n'.encode())
        await resp.write(b"data: [DONE]\n\n")
        return resp

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "upstream-model"}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    return app


def test_forward_streams_through_unbuffered_and_passes_errors_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RAGSTRESS_TEST_UPSTREAM_KEY", "sk-test")
    seen: list[dict[str, Any]] = []

    async def go() -> None:
        async with serve(upstream_app(seen)) as upstream:
            settings = LlmSettings(
                mode="forward",
                forward_url=str(upstream.make_url("/v1")),
                forward_api_key_env="RAGSTRESS_TEST_UPSTREAM_KEY",
            )
            async with serve(build_app(settings)) as proxy:
                health = await (await proxy.get("/healthz")).json()
                assert health == {"status": "ok", "mode": "forward"}
                resp = await proxy.post(
                    "/v1/chat/completions", json=chat_body(max_tokens=3, stream=True)
                )
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("text/event-stream")
                events = await read_events(resp)
                assert [d for _, d in events] == ['{"n": 0}', '{"n": 1}', '{"n": 2}', "[DONE]"]
                times = [t for t, _ in events]
                assert times[1] - times[0] == pytest.approx(0.1, abs=0.03)
                assert times[2] - times[0] == pytest.approx(0.2, abs=0.04)

                limited = await proxy.post("/v1/chat/completions", json={"model": "limited"})
                assert limited.status == 429
                assert limited.headers["retry-after"] == "7"
                assert limited.headers["x-request-id"] == "req-1"
                assert "x-other" not in limited.headers
                assert error_of(await limited.json())["code"] == "rate_limit_exceeded"

                models = await (await proxy.get("/v1/models")).json()
                assert models["data"][0]["id"] == "upstream-model"
                metrics = await (await proxy.get("/metrics")).text()
                assert 'ragstress_llm_requests_total{status="429"} 1.0' in metrics

    run(go)
    assert [s["auth"] for s in seen] == ["Bearer sk-test", "Bearer sk-test"]
    assert seen[0]["body"]["max_tokens"] == 3  # the body went through as sent


def test_forward_to_an_unreachable_upstream_is_502() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nothing listens there

    async def go() -> None:
        settings = LlmSettings(mode="forward", forward_url=f"http://127.0.0.1:{port}/v1")
        async with serve(build_app(settings)) as proxy:
            resp = await proxy.post("/v1/chat/completions", json=chat_body())
            assert resp.status == 502
            assert error_of(await resp.json())["type"] == "server_error"

    run(go)


def test_forward_settings_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="forward_url"):
        build_app(LlmSettings(mode="forward"))
    monkeypatch.delenv("RAGSTRESS_TEST_NO_SUCH_KEY", raising=False)
    with pytest.raises(ValueError, match="RAGSTRESS_TEST_NO_SUCH_KEY"):
        build_app(
            LlmSettings(
                mode="forward",
                forward_url="http://127.0.0.1:1/v1",
                forward_api_key_env="RAGSTRESS_TEST_NO_SUCH_KEY",
            )
        )


# -- 3. as a process -------------------------------------------------------------------------


def _service(settings: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "ragstress.reference.llm", "--settings", settings],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def test_runs_as_a_process_and_stops_on_sigterm() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = _service(json.dumps({"port": port}))
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                    assert json.loads(r.read()) == {"status": "ok", "mode": "engine"}
                    break
            except (urllib.error.URLError, ConnectionError):
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "no /healthz within 15 s"
                time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(
    ("settings", "complaint"),
    [
        ('{"port": -1}', "port"),
        ('{"engine": {"max_num_seqs": 0}}', "max_num_seqs"),
        ("not json", "not JSON"),
        ('{"mode": "forward"}', "forward_url"),
    ],
)
def test_bad_settings_exit_2(settings: str, complaint: str) -> None:
    proc = _service(settings)
    try:
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 2
    assert complaint in err
    assert len(err.strip().splitlines()) == 1
