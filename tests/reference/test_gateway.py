"""The RAG gateway against small real upstreams on 127.0.0.1: a fake embedder (OpenAI shape,
a fixed 384-d vector), a fake LLM that streams chunks with a delay between them and can be
told to answer 429/500, hang or break its stream, and a fake retriever."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer

from ragstress.reference.gateway import (
    TtlCache,
    build_app,
    build_prompt,
    http_status,
    iter_sse,
    parse_request,
    request_outcome,
)
from ragstress.reference.search import EMBEDDING_DIM, Source
from ragstress.reference.settings import GatewaySettings
from ragstress.results.schema import OUTCOMES

SOURCES = [
    Source(
        chunk_id=1, doc_id=10, title="Alpha", text="Alpha is the first letter. " * 20, distance=0.1
    ),
    Source(chunk_id=2, doc_id=11, title="Beta", text="Beta comes second.", distance=0.2),
    Source(chunk_id=3, doc_id=12, title="Gamma", text="Gamma is third.", distance=0.3),
]


# --- fake upstreams ------------------------------------------------------------------------


@dataclass
class FakeEmbedder:
    plan: list[str] = field(default_factory=list)  # "ok" | "500"
    hits: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        body = await request.json()
        assert isinstance(body["input"], str)
        step = self.plan.pop(0) if self.plan else "ok"
        if step == "500":
            return web.json_response({"error": {"message": "down"}}, status=500)
        vector = [1.0 / EMBEDDING_DIM**0.5] * EMBEDDING_DIM
        return web.json_response(
            {
                "object": "list",
                "data": [{"object": "embedding", "index": 0, "embedding": vector}],
                "model": "fake",
                "usage": {"prompt_tokens": 3, "total_tokens": 3},
            }
        )

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/embeddings", self.handle)
        return app


@dataclass
class FakeLlm:
    """Steps: "ok", "429:<retry-after>", "500", "hang", "break" (transport closed after
    ``break_after`` chunks), "error_event", "no_done"."""

    plan: list[str] = field(default_factory=list)
    tokens: int = 5
    spacing_s: float = 0.05
    break_after: int = 2
    hits: int = 0
    bodies: list[dict[str, Any]] = field(default_factory=list)
    prefix: str = "t"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        self.bodies.append(await request.json())
        step = self.plan.pop(0) if self.plan else "ok"
        if step.startswith("429"):
            return web.json_response(
                {"error": {"message": "slow down"}},
                status=429,
                headers={"retry-after": step.split(":", 1)[1]},
            )
        if step == "500":
            return web.json_response({"error": {"message": "boom"}}, status=500)
        if step == "hang":
            await asyncio.sleep(10)  # cancelled when the gateway hangs up
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(self.tokens):
            if i:
                await asyncio.sleep(self.spacing_s)
            chunk = {"choices": [{"index": 0, "delta": {"content": f"{self.prefix}{i} "}}]}
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
            if step == "break" and i + 1 == self.break_after:
                assert request.transport is not None
                request.transport.close()
                return resp
            if step == "error_event" and i + 1 == self.break_after:
                error = {"error": {"message": "overloaded", "type": "server_error"}}
                await resp.write(f"data: {json.dumps(error)}\n\n".encode())
                await resp.write_eof()
                return resp
        if step == "no_done":
            await resp.write_eof()
            return resp
        usage = {"choices": [], "usage": {"prompt_tokens": 42, "completion_tokens": self.tokens}}
        await resp.write(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
        await resp.write_eof()
        return resp

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.handle)
        return app


@dataclass
class FakeRetriever:
    error: BaseException | None = None
    calls: list[tuple[int, int]] = field(default_factory=list)

    async def __call__(self, vector: Sequence[float], top_k: int) -> list[Source]:
        self.calls.append((len(vector), top_k))
        if self.error is not None:
            raise self.error
        return SOURCES[:top_k]


@dataclass
class Stack:
    client: TestClient[web.Request, web.Application]
    embedder: FakeEmbedder
    llm: FakeLlm
    fallback: FakeLlm
    retriever: FakeRetriever

    async def rag(self, **body: Any) -> ClientResponse:
        return await self.client.post("/v1/rag", json={"query": "What is alpha?", **body})


@contextlib.asynccontextmanager
async def served(app: web.Application) -> AsyncIterator[TestServer]:
    server = TestServer(app)
    await server.start_server(shutdown_timeout=1.0)
    try:
        yield server
    finally:
        await server.close()


@contextlib.asynccontextmanager
async def stack(
    *,
    llm: FakeLlm | None = None,
    embedder: FakeEmbedder | None = None,
    retriever: FakeRetriever | None = None,
    embed_url: str | None = None,
    **settings: Any,
) -> AsyncIterator[Stack]:
    llm = llm or FakeLlm()
    embedder = embedder or FakeEmbedder()
    retriever = retriever or FakeRetriever()
    fallback = FakeLlm(prefix="f", tokens=3)
    async with (
        served(embedder.app()) as emb,
        served(llm.app()) as llm_srv,
        served(fallback.app()) as fb_srv,
    ):
        config = GatewaySettings.model_validate(
            {
                "embed_url": embed_url or f"http://127.0.0.1:{emb.port}",
                "llm_url": f"http://127.0.0.1:{llm_srv.port}/",
                "llm_fallback_url": f"http://127.0.0.1:{fb_srv.port}",
                "pg_dsn": "postgresql://unused",
                **settings,
            }
        )
        app = build_app(config, retriever=retriever, seed=1)
        async with TestClient(TestServer(app)) as client:
            yield Stack(client, embedder, llm, fallback, retriever)


def run(test: Callable[[], Awaitable[None]], limit_s: float = 10.0) -> None:
    async def main() -> None:
        async with asyncio.timeout(limit_s):
            await test()

    asyncio.run(main())


def server_timing(resp: ClientResponse) -> dict[str, float | str]:
    out: dict[str, float | str] = {}
    for entry in resp.headers["Server-Timing"].split(","):
        name, _, param = entry.strip().partition(";")
        key, _, value = param.partition("=")
        out[name] = float(value) if key == "dur" else value
    return out


async def read_events(resp: ClientResponse) -> list[tuple[float, str, Any]]:
    """(arrival time, event, data) of each event of a streamed answer."""
    events = []
    async for event, data in iter_sse(resp.content):
        events.append((time.perf_counter(), event, json.loads(data)))
    return events


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match is not None, f"{name} not in /metrics"
    return float(match.group(1))


# --- answers -------------------------------------------------------------------------------


def test_json_answer() -> None:
    async def test() -> None:
        async with stack() as s:
            resp = await s.rag(top_k=2, max_tokens=7)
            assert resp.status == 200
            body = await resp.json()
            assert body["outcome"] == "ok"
            assert resp.headers["x-ragstress-outcome"] == "ok"
            assert resp.headers["x-ragstress-attempts"] == "3"
            assert body["answer"] == "t0 t1 t2 t3 t4 "
            assert [src["chunk_id"] for src in body["sources"]] == [1, 2]
            assert set(body["sources"][0]) == {"chunk_id", "doc_id", "title", "text", "distance"}
            assert body["usage"] == {"prompt_tokens": 42, "completion_tokens": 5}
            assert body["attempts"] == {"embed": 1, "retrieve": 1, "generate": 1}
            assert s.retriever.calls == [(EMBEDDING_DIM, 2)]
            t = server_timing(resp)
            assert isinstance(t["embed"], float)
            assert isinstance(t["retrieve"], float)
            assert isinstance(t["generate"], float)
            assert isinstance(t["ttft"], float)
            assert isinstance(t["total"], float)
            assert t["embed"] + t["retrieve"] + t["generate"] <= t["total"]
            assert t["embed"] + t["retrieve"] <= t["ttft"] <= t["total"]
            # the first token comes at once, the rest 4 × 50 ms later
            assert t["ttft"] < t["generate"]
            assert t["generate"] >= 4 * 50
            assert "cache" not in t
            sent = s.llm.bodies[0]
            assert sent["model"] == "ragstress-emulated"
            assert sent["max_tokens"] == 7
            assert sent["stream"] is True
            assert sent["stream_options"] == {"include_usage": True}
            system, user = sent["messages"]
            assert system["role"] == "system"
            assert user["content"] == build_prompt("What is alpha?", SOURCES[:2])
            assert user["content"].startswith("Sources:\n[1] Alpha\nAlpha is")
            assert "\n\n[2] Beta\nBeta comes second.\n\nQuestion: What is alpha?" in user["content"]

    run(test)


def test_stream_answer() -> None:
    spacing = 0.08

    async def test() -> None:
        async with stack(llm=FakeLlm(tokens=5, spacing_s=spacing)) as s:
            resp = await s.rag(stream=True)
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            events = await read_events(resp)
            kinds = [e for _, e, _ in events]
            assert kinds == ["sources", "token", "token", "token", "token", "token", "done"]
            assert [src["title"] for src in events[0][2]["sources"]] == ["Alpha", "Beta", "Gamma"]
            assert "".join(d["text"] for _, e, d in events if e == "token") == "t0 t1 t2 t3 t4 "
            # written as they arrive: the first token well before the last
            first, last = events[1][0], events[5][0]
            assert last - first >= 4 * spacing * 0.8
            done = events[-1][2]
            assert done["outcome"] == "ok"
            assert done["usage"] == {"prompt_tokens": 42, "completion_tokens": 5}
            assert done["attempts"] == {"embed": 1, "retrieve": 1, "generate": 1}
            tm = done["timings"]
            assert set(tm) == {"embed_ms", "retrieve_ms", "generate_ms", "ttft_ms", "total_ms"}
            assert tm["embed_ms"] + tm["retrieve_ms"] + tm["generate_ms"] <= tm["total_ms"]
            assert tm["ttft_ms"] < tm["generate_ms"] <= tm["total_ms"]

    run(test)


def test_429_retry_after_is_waited_and_retried() -> None:
    async def test() -> None:
        llm = FakeLlm(plan=["429:0.3"], tokens=2, spacing_s=0.0)
        async with stack(llm=llm, generate_policy={"retry": "openai-python"}) as s:
            t0 = time.perf_counter()
            resp = await s.rag()
            elapsed = time.perf_counter() - t0
            body = await resp.json()
            assert resp.status == 200
            assert body["outcome"] == "ok"
            assert body["attempts"]["generate"] == 2
            assert resp.headers["x-ragstress-attempts"] == "4"
            assert llm.hits == 2
            assert 0.3 <= elapsed < 1.5
            assert server_timing(resp)["generate"] >= 300  # type: ignore[operator]
            text = await (await s.client.get("/metrics")).text()
            assert metric(text, 'ragstress_gateway_retries_total{stage="generate"}') == 1
            assert (
                metric(text, 'ragstress_gateway_errors_total{kind="error_429",stage="generate"}')
                == 1
            )

    run(test)


def test_retry_after_above_the_cap_is_not_retried() -> None:
    async def test() -> None:
        llm = FakeLlm(plan=["429:5"])
        policy = {"retry": {"preset": "openai-python", "max_retry_after_s": 1.0}}
        async with stack(llm=llm, generate_policy=policy) as s:
            t0 = time.perf_counter()
            resp = await s.rag()
            assert time.perf_counter() - t0 < 1.0
            assert resp.status == 502
            assert resp.headers["x-ragstress-outcome"] == "error_429"
            error = (await resp.json())["error"]
            assert error["kind"] == "error_429"
            assert error["stage"] == "generate"
            assert error["status"] == 429
            assert llm.hits == 1

    run(test)


def test_breaker_opens_then_fallback_answers_then_half_open_trial() -> None:
    async def test() -> None:
        llm = FakeLlm(plan=["500", "500"], tokens=2, spacing_s=0.0)
        policy = {"breaker": {"fail_max": 2, "reset_timeout_s": 0.4}, "fallback": "skip"}
        async with stack(llm=llm, generate_policy=policy) as s:
            for _ in range(2):
                body = await (await s.rag()).json()
                assert body["outcome"] == "ok_degraded"
            assert llm.hits == 2
            text = await (await s.client.get("/metrics")).text()
            assert metric(text, 'ragstress_gateway_breaker_open{stage="generate"}') == 1
            # open: the call does not reach the LLM, the fallback (skip) answers
            resp = await s.rag(stream=False)
            body = await resp.json()
            assert llm.hits == 2
            assert body["outcome"] == "ok_degraded"
            assert resp.headers["x-ragstress-outcome"] == "ok_degraded"
            assert body["answer"] == SOURCES[0].text[:300]
            assert body["usage"] == {"prompt_tokens": 0, "completion_tokens": 0}
            assert "ttft" not in server_timing(resp)
            await asyncio.sleep(0.45)
            body = await (await s.rag()).json()  # the half-open trial goes through
            assert body["outcome"] == "ok"
            assert llm.hits == 3
            text = await (await s.client.get("/metrics")).text()
            assert metric(text, 'ragstress_gateway_breaker_open{stage="generate"}') == 0
            assert (
                metric(text, 'ragstress_gateway_errors_total{kind="breaker_open",stage="generate"}')
                == 1
            )
            assert metric(text, 'ragstress_gateway_requests_total{outcome="ok_degraded"}') == 3

    run(test)


def test_breaker_open_without_fallback_is_503() -> None:
    async def test() -> None:
        llm = FakeLlm(plan=["500"])
        async with stack(llm=llm, generate_policy={"breaker": {"fail_max": 1}}) as s:
            first = await s.rag()
            assert first.status == 502
            assert first.headers["x-ragstress-outcome"] == "error_5xx"
            resp = await s.rag()
            assert resp.status == 503
            assert resp.headers["x-ragstress-outcome"] == "breaker_open"
            assert resp.headers["x-ragstress-attempts"] == "3"
            error = (await resp.json())["error"]
            assert (error["kind"], error["stage"]) == ("breaker_open", "generate")
            assert llm.hits == 1

    run(test)


def test_hung_llm_times_out() -> None:
    async def test() -> None:
        llm = FakeLlm(plan=["hang"])
        async with stack(llm=llm, generate_policy={"timeout_s": 0.3}) as s:
            t0 = time.perf_counter()
            resp = await s.rag()
            elapsed = time.perf_counter() - t0
            assert resp.status == 504
            assert resp.headers["x-ragstress-outcome"] == "timeout"
            error = (await resp.json())["error"]
            assert (error["kind"], error["stage"]) == ("timeout", "generate")
            assert 0.3 <= elapsed < 0.8

    run(test)


def test_timeout_covers_the_whole_stream() -> None:
    async def test() -> None:
        # 10 tokens 50 ms apart take 0.45 s: more than the 0.2 s per attempt
        llm = FakeLlm(tokens=10, spacing_s=0.05)
        async with stack(llm=llm, generate_policy={"timeout_s": 0.2}) as s:
            resp = await s.rag()
            assert resp.status == 504
            resp = await s.rag(stream=True)  # started: the timeout ends it in-band
            events = await read_events(resp)
            assert events[0][1] == "sources"
            assert events[-1][1] == "error"
            assert events[-1][2]["kind"] == "timeout"

    run(test)


@pytest.mark.parametrize("step", ["break", "error_event", "no_done"])
def test_broken_stream(step: str) -> None:
    async def test() -> None:
        llm = FakeLlm(plan=[step, step], tokens=5, spacing_s=0.02, break_after=2)
        async with stack(llm=llm, generate_policy={"retry": "tenacity-default"}) as s:
            resp = await s.rag(stream=True)
            assert resp.status == 200
            events = await read_events(resp)
            kinds = [e for _, e, _ in events]
            expected = ["sources", "token", "token", "error"]
            assert kinds == (
                expected if step != "no_done" else [*expected[:1], *["token"] * 5, "error"]
            )
            assert events[-1][2]["kind"] == "error_stream"
            resp = await s.rag()
            assert resp.status == 502
            assert resp.headers["x-ragstress-outcome"] == "error_stream"
            error = (await resp.json())["error"]
            assert (error["kind"], error["stage"]) == ("error_stream", "generate")
            assert llm.hits == 2  # never retried, even by a retry-everything policy

    run(test)


def test_embedding_cache() -> None:
    async def test() -> None:
        async with stack(embed_cache_ttl_s=60) as s:
            first = await s.rag()
            second = await s.rag()
            assert s.embedder.hits == 1
            assert server_timing(first)["cache"] == "miss"
            timing = server_timing(second)
            assert timing["cache"] == "hit"
            assert timing["embed"] < 5  # type: ignore[operator]
            assert (await second.json())["attempts"]["embed"] == 0
            await s.client.post("/v1/rag", json={"query": "Something else?"})
            assert s.embedder.hits == 2
            text = await (await s.client.get("/metrics")).text()
            assert metric(text, "ragstress_gateway_embed_cache_hits_total") == 1
            assert metric(text, "ragstress_gateway_embed_cache_misses_total") == 2

    run(test)


def test_metrics_count_requests_and_errors() -> None:
    async def test() -> None:
        llm = FakeLlm(plan=["ok", "500"], tokens=1)
        async with stack(llm=llm) as s:
            assert (await s.rag()).status == 200
            assert (await s.rag()).status == 502
            assert (await s.client.post("/v1/rag", json={"query": ""})).status == 400
            resp = await s.client.get("/metrics")
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain")
            text = await resp.text()
            assert metric(text, 'ragstress_gateway_requests_total{outcome="ok"}') == 1
            assert metric(text, 'ragstress_gateway_requests_total{outcome="error_5xx"}') == 1
            assert metric(text, 'ragstress_gateway_requests_total{outcome="timeout"}') == 0
            assert (
                metric(text, 'ragstress_gateway_errors_total{kind="error_5xx",stage="generate"}')
                == 1
            )
            assert metric(text, "ragstress_gateway_bad_requests_total") == 1
            assert metric(text, "ragstress_gateway_in_flight") == 0
            for stage, count in [("total", 2), ("embed", 2), ("retrieve", 2), ("ttft", 1)]:
                name = f'ragstress_gateway_stage_seconds_count{{stage="{stage}"}}'
                assert metric(text, name) == count

    run(test)


BAD_BODIES: list[Any] = [
    [1, 2],
    {},
    {"query": ""},
    {"query": "   "},
    {"query": "x" * 8001},
    {"query": 3},
    {"query": "q", "top_k": 0},
    {"query": "q", "top_k": 51},
    {"query": "q", "top_k": "3"},
    {"query": "q", "top_k": True},
    {"query": "q", "stream": "yes"},
    {"query": "q", "max_tokens": 0},
    {"query": "q", "max_tokens": 1.5},
    {"query": "q", "k": 3},
]


def test_bad_input_is_400() -> None:
    async def test() -> None:
        async with stack() as s:
            for body in BAD_BODIES:
                resp = await s.client.post("/v1/rag", json=body)
                assert resp.status == 400, body
                error = (await resp.json())["error"]
                assert error["kind"] == "bad_request"
                assert error["message"]
            resp = await s.client.post("/v1/rag", data=b"{not json")
            assert resp.status == 400
            assert s.embedder.hits == 0

    run(test)


def test_parse_request_defaults_and_messages() -> None:
    settings = GatewaySettings(embed_url="http://e", llm_url="http://l", pg_dsn="x", max_top_k=9)
    req = parse_request({"query": "q"}, settings)
    assert (req.top_k, req.stream, req.max_tokens) == (5, False, 128)
    with pytest.raises(ValueError, match="top_k must be an integer from 1 to 9"):
        parse_request({"query": "q", "top_k": 10}, settings)


def test_generate_fallback_stage() -> None:
    async def test() -> None:
        llm = FakeLlm(plan=["500"])
        policy = {"fallback": {"kind": "stage", "stage": "generate_small"}}
        async with stack(llm=llm, generate_policy=policy) as s:
            resp = await s.rag()
            body = await resp.json()
            assert resp.status == 200
            assert body["outcome"] == "ok_degraded"
            assert body["answer"] == "f0 f1 f2 "
            assert body["attempts"]["generate"] == 2
            assert (llm.hits, s.fallback.hits) == (1, 1)
            assert s.fallback.bodies[0]["messages"] == llm.bodies[0]["messages"]
            stream = await s.rag(stream=True)
            assert stream.status == 200
            events = await read_events(stream)
            assert [e for _, e, _ in events][-1] == "done"
            assert events[-1][2]["outcome"] == "ok"  # the primary answers again

    run(test)


def test_fallback_stage_needs_a_url() -> None:
    settings = GatewaySettings(
        embed_url="http://e",
        llm_url="http://l",
        pg_dsn="x",
        generate_policy={"fallback": {"kind": "stage", "stage": "generate_small"}},
    )
    with pytest.raises(ValueError, match="llm_fallback_url"):
        build_app(settings, retriever=FakeRetriever())
    with pytest.raises(ValueError, match=r"retrieve_policy\.fallback"):
        build_app(
            GatewaySettings(
                embed_url="http://e",
                llm_url="http://l",
                pg_dsn="x",
                retrieve_policy={"fallback": {"kind": "stage", "stage": "cache"}},
            ),
            retriever=FakeRetriever(),
        )


def test_embed_skip_goes_on_without_retrieval() -> None:
    async def test() -> None:
        async with stack(
            embedder=FakeEmbedder(plan=["500"]), embed_policy={"fallback": "skip"}
        ) as s:
            resp = await s.rag()
            body = await resp.json()
            assert body["outcome"] == "ok_degraded"
            assert body["sources"] == []
            assert s.retriever.calls == []
            assert s.llm.bodies[0]["messages"][1]["content"] == "Question: What is alpha?"

    run(test)


def test_retrieve_failures() -> None:
    async def test() -> None:
        down = FakeRetriever(error=psycopg.OperationalError("connection refused"))
        async with stack(retriever=down) as s:
            resp = await s.rag()
            assert resp.status == 502
            error = (await resp.json())["error"]
            assert (error["kind"], error["stage"]) == ("error_connect", "retrieve")
            assert s.llm.hits == 0
        broken = FakeRetriever(error=psycopg.errors.UndefinedTable("no chunks"))
        async with stack(retriever=broken, retrieve_policy={"fallback": "skip"}) as s:
            body = await (await s.rag()).json()
            assert body["outcome"] == "ok_degraded"
            assert body["sources"] == []

    run(test)


def test_unreachable_embedder_is_error_connect() -> None:
    async def test() -> None:
        async with served(web.Application()) as gone:
            url = f"http://127.0.0.1:{gone.port}"
        async with stack(embed_url=url) as s:
            resp = await s.rag()
            assert resp.status == 502
            error = (await resp.json())["error"]
            assert (error["kind"], error["stage"]) == ("error_connect", "embed")

    run(test)


def test_stream_with_generate_skipped() -> None:
    async def test() -> None:
        llm = FakeLlm(plan=["500"])
        async with stack(llm=llm, generate_policy={"fallback": "skip"}) as s:
            resp = await s.rag(stream=True)
            events = await read_events(resp)
            assert [e for _, e, _ in events] == ["sources", "token", "done"]
            assert events[1][2]["text"] == SOURCES[0].text[:300]
            assert events[2][2]["outcome"] == "ok_degraded"
            assert events[2][2]["timings"]["ttft_ms"] is None

    run(test)


def test_stream_error_before_the_llm_answers_is_plain_http() -> None:
    async def test() -> None:
        async with stack(llm=FakeLlm(plan=["500"])) as s:
            resp = await s.rag(stream=True)
            assert resp.status == 502
            assert resp.headers["x-ragstress-outcome"] == "error_5xx"

    run(test)


def test_healthz() -> None:
    async def test() -> None:
        async with stack() as s:
            resp = await s.client.get("/healthz")
            assert resp.status == 200
            assert (await resp.json()) == {"status": "ok"}

    run(test)


@pytest.mark.parametrize(
    ("call_outcome", "outcome", "status"),
    [
        ("timeout", "timeout", 504),
        ("error_408", "timeout", 504),  # the model's rule: a 408 is the server's timeout
        ("error_409", "error_5xx", 502),
        ("error_4xx", "error_5xx", 502),
        ("error_429", "error_429", 502),
        ("error_5xx", "error_5xx", 502),
        ("error_connect", "error_connect", 502),
        ("error_stream", "error_stream", 502),
        ("breaker_open", "breaker_open", 503),
    ],
)
def test_request_outcome_and_status(call_outcome: str, outcome: str, status: int) -> None:
    assert request_outcome(call_outcome) == outcome
    assert outcome in OUTCOMES
    assert http_status(outcome) == status


def test_ttl_cache_expires_and_evicts() -> None:
    now = [0.0]
    cache: TtlCache[str, int] = TtlCache(10.0, 2, clock=lambda: now[0])
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recently used
    cache.put("c", 3)  # evicts b
    assert (cache.get("b"), cache.get("a"), cache.get("c")) == (None, 1, 3)
    now[0] = 10.0  # an entry lives ttl_s, exclusive
    assert cache.get("a") is None
    assert len(cache) == 1
