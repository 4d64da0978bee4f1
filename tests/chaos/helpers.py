"""Shared pieces of the chaos proxy's tests: a small upstream, a proxy in front of it, and
the statistics to check a share of calls.

Everything runs in-process on 127.0.0.1 with ports the OS picks, inside ``asyncio.run``
(pytest-asyncio is not used); every test is bounded by ``run(..., limit_s)``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import math
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from ragstress.chaos import ChaosSettings, RunningProxy, serve_proxy

TOKEN_SPACING_S = 0.02


@dataclass
class Upstream:
    """``POST /v1/embeddings`` → small JSON; ``POST /v1/chat/completions`` → an OpenAI-like
    SSE stream of ``tokens`` chunks ``spacing_s`` apart (``{"stream": false}`` → JSON);
    ``GET /slow`` → JSON after ``slow_s``; ``GET /big`` → ``big_bytes`` bytes; anything else
    echoes method, path and headers."""

    tokens: int = 5
    spacing_s: float = TOKEN_SPACING_S
    slow_s: float = 0.1
    big_bytes: int = 20_000
    hits: int = 0
    seen: list[dict[str, Any]] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    peers: set[int] = field(default_factory=set)

    async def embeddings(self, request: web.Request) -> web.Response:
        self.hits += 1
        body = await request.json()
        self.seen.append({"path": request.path, "body": body})
        return web.json_response(
            {"object": "list", "data": [{"index": 0, "embedding": [0.1, 0.2, 0.3]}]}
        )

    async def chat(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        body = await request.json()
        self.seen.append({"path": request.path, "body": body})
        tokens = int(body.get("max_tokens") or self.tokens)
        break_after = body.get("break_after")
        if body.get("stream") is False:
            text = "".join(f"t{i} " for i in range(tokens))
            return web.json_response({"choices": [{"message": {"content": text}}]})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            for i in range(tokens):
                if i:
                    await asyncio.sleep(self.spacing_s)
                chunk = {"choices": [{"index": 0, "delta": {"content": f"t{i} "}}]}
                await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
                if break_after is not None and i + 1 == break_after:
                    assert request.transport is not None
                    request.transport.close()
                    return resp
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
        except ConnectionError:
            pass  # the proxy broke the stream off (truncation, an error event)
        return resp

    async def slow(self, request: web.Request) -> web.Response:
        self.hits += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(float(request.query.get("s", self.slow_s)))
        finally:
            self.in_flight -= 1
        return web.json_response({"slow": True})

    async def big(self, request: web.Request) -> web.Response:
        self.hits += 1
        return web.Response(body=b"x" * self.big_bytes, content_type="application/octet-stream")

    async def status(self, request: web.Request) -> web.Response:
        self.hits += 1
        code = int(request.match_info["code"])
        return web.json_response({"status": code}, status=code, headers={"x-upstream": "yes"})

    async def echo(self, request: web.Request) -> web.Response:
        self.hits += 1
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if peer is not None:
            self.peers.add(peer[1])
        body = await request.read()
        return web.json_response(
            {
                "method": request.method,
                "path": request.path_qs,
                "headers": dict(request.headers),
                "body": body.decode(),
            }
        )

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_route("*", "/slow", self.slow)
        app.router.add_get("/big", self.big)
        app.router.add_get("/status/{code}", self.status)
        app.router.add_route("*", "/{tail:.*}", self.echo)
        return app


@contextlib.asynccontextmanager
async def served(app: web.Application) -> AsyncIterator[TestServer]:
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield server
    finally:
        await server.close()


@dataclass
class Rig:
    """A proxy with one listener per stage in front of upstreams, and a client session."""

    proxy: RunningProxy
    upstreams: dict[str, Upstream]
    direct: dict[str, str]
    session: aiohttp.ClientSession

    def url(self, stage: str, path: str) -> str:
        return self.proxy.listen_urls[stage] + path

    @property
    def control(self) -> str:
        return self.proxy.control_url

    async def load(self, faults: list[dict[str, Any]], start: float | None = None) -> Any:
        """Load a plan (times relative to ``start``, default now) through the control API."""
        body = {"faults": faults, "run_start_epoch": time.time() if start is None else start}
        async with self.session.post(self.control + "/plan", json=body) as resp:
            data = await resp.json()
            assert resp.status == 200, data
            return data

    async def control_json(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.session.request(method, self.control + path, json=body) as resp:
            return resp.status, await resp.json(content_type=None)


@contextlib.asynccontextmanager
async def rig(
    stages: tuple[str, ...] = ("embed", "generate"),
    *,
    seed: int = 1,
    listener: dict[str, dict[str, Any]] | None = None,
    upstream: Upstream | None = None,
    **settings: Any,
) -> AsyncIterator[Rig]:
    ups = {s: upstream if upstream is not None and s == stages[-1] else Upstream() for s in stages}
    async with contextlib.AsyncExitStack() as stack:
        servers = {s: await stack.enter_async_context(served(u.app())) for s, u in ups.items()}
        direct = {s: f"http://127.0.0.1:{srv.port}" for s, srv in servers.items()}
        config = ChaosSettings.model_validate(
            {
                "listeners": {
                    s: {"upstream": direct[s], "port": 0, **(listener or {}).get(s, {})}
                    for s in stages
                },
                "control_port": 0,
                "seed": seed,
                **settings,
            }
        )
        proxy = await stack.enter_async_context(serve_proxy(config))
        session = await stack.enter_async_context(
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        )
        yield Rig(proxy, ups, direct, session)


def run(test: Callable[[], Awaitable[None]], limit_s: float = 20.0) -> None:
    async def main() -> None:
        async with asyncio.timeout(limit_s):
            await test()

    asyncio.run(main())


def binomial_bounds(n: int, p: float, sigmas: float = 5.0) -> tuple[float, float]:
    """The range ``n·p ± sigmas·sqrt(n·p·(1−p))``: a count outside it is a bug, not bad luck
    (5 σ: about one in 3.5 million)."""
    mean = n * p
    sd = math.sqrt(n * p * (1 - p))
    return mean - sigmas * sd, mean + sigmas * sd


async def gather_limited(
    calls: list[Callable[[], Awaitable[Any]]], concurrency: int = 50
) -> list[Any]:
    """Run ``calls`` with at most ``concurrency`` at once, results in order."""
    sem = asyncio.Semaphore(concurrency)

    async def one(call: Callable[[], Awaitable[Any]]) -> Any:
        async with sem:
            return await call()

    return await asyncio.gather(*(one(c) for c in calls))


async def paced(calls: list[Callable[[], Awaitable[Any]]], rate: float) -> list[Any]:
    """Start call i at ``i / rate`` s (open loop: whatever is still in flight), results in
    order. Unlike a burst, this keeps the one event loop — client, proxy and upstream at once
    — from saturating, so an unfaulted call stays fast even on a loaded machine."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    tasks = []
    for i, call in enumerate(calls):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(call()))
    return await asyncio.gather(*tasks)


async def sse_times(resp: aiohttp.ClientResponse, t0: float) -> list[tuple[float, bytes]]:
    """``(seconds since t0, line)`` for each ``data:`` line of a stream as it arrives."""
    return [
        (time.perf_counter() - t0, line.strip())
        async for line in resp.content
        if line.startswith(b"data:")
    ]


T = TypeVar("T")


class Background(Generic[T]):
    """An async context manager's value, entered on an event loop in a thread of its own, so
    synchronous code (the sync client, CliRunner, hypothesis) can use it."""

    def __init__(self, value: T, loop: asyncio.AbstractEventLoop) -> None:
        self.value = value
        self.loop = loop

    def call(self, coro: Coroutine[Any, Any, Any], timeout_s: float = 30.0) -> Any:
        """Run ``coro`` on the background loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)


@contextlib.contextmanager
def in_thread(
    factory: Callable[[], contextlib.AbstractAsyncContextManager[T]],
) -> Iterator[Background[T]]:
    loop = asyncio.new_event_loop()
    started: concurrent.futures.Future[T] = concurrent.futures.Future()
    stop = asyncio.Event()

    async def main() -> None:
        try:
            async with factory() as value:
                started.set_result(value)
                await stop.wait()
        except BaseException as exc:
            if not started.done():
                started.set_exception(exc)
            raise

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    try:
        yield Background(started.result(30), loop)
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        loop.close()
