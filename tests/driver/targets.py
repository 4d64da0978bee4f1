"""Small HTTP targets for the driver's tests: an aiohttp app on 127.0.0.1 in a background thread.

``running_target()`` yields a :class:`Target` whose ``url`` is the base URL; every route counts
the requests it got by the ``id`` in their JSON body (``Target.ids``, for template bodies that
carry ``{{id}}``). Routes (all ``POST``):

- ``/json?delay_ms=D``: a rag-shaped JSON answer after ``D`` ms.
- ``/sse?first_ms=F&last_ms=L&tokens=N[&cut_after=K]``: a rag-shaped event stream — ``sources``
  at once, ``N`` token events evenly spaced from ``F`` ms to ``L`` ms after the request came in,
  then ``done``; with ``cut_after`` the connection is dropped after ``K`` tokens.

``Target.stall(from_id, seconds)`` arms the stall switch: the first request whose id is at least
``from_id`` opens a window of ``seconds``; every request that arrives inside it is held until the
window closes, then answered as usual (a server pause, like a long GC).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

__all__ = ["Target", "running_target"]


@dataclass
class Target:
    url: str = ""
    ids: Counter[int] = field(default_factory=Counter)
    requests: int = 0
    stall_from_id: int | None = None
    stall_s: float = 0.0
    stall_until: float | None = None  # time.monotonic() when the open window closes
    lock: threading.Lock = field(default_factory=threading.Lock)

    def stall(self, from_id: int, seconds: float) -> None:
        with self.lock:
            self.stall_from_id, self.stall_s, self.stall_until = from_id, seconds, None

    def reset(self) -> None:
        with self.lock:
            self.ids.clear()
            self.requests = 0
            self.stall_from_id, self.stall_until = None, None

    async def _arrive(self, request: web.Request) -> None:
        try:
            body: Any = json.loads(await request.read() or b"{}")
        except ValueError:
            body = {}
        rid = body.get("id") if isinstance(body, dict) else None
        now = time.monotonic()
        with self.lock:
            self.requests += 1
            if isinstance(rid, int):
                self.ids[rid] += 1
                if (
                    self.stall_from_id is not None
                    and self.stall_until is None
                    and rid >= self.stall_from_id
                ):
                    self.stall_until = now + self.stall_s
            until = self.stall_until
        if until is not None and now < until:
            await asyncio.sleep(until - now)


def _answer(tokens: int) -> dict[str, Any]:
    return {
        "answer": "x" * tokens,
        "sources": [],
        "usage": {"prompt_tokens": 10, "completion_tokens": tokens},
        "outcome": "ok",
        "attempts": {"embed": 1, "retrieve": 1, "generate": 1},
    }


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


def _app(target: Target) -> web.Application:
    async def json_route(request: web.Request) -> web.Response:
        await target._arrive(request)
        await asyncio.sleep(float(request.query.get("delay_ms", "0")) / 1000)
        return web.json_response(
            _answer(5),
            headers={
                "x-ragstress-outcome": "ok",
                "x-ragstress-attempts": "3",
                "Server-Timing": "embed;dur=1.000, retrieve;dur=2.000, generate;dur=3.000",
            },
        )

    async def sse_route(request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        await target._arrive(request)
        first = float(request.query.get("first_ms", "200")) / 1000
        last = float(request.query.get("last_ms", "1000")) / 1000
        tokens = int(request.query.get("tokens", "5"))
        cut_after = request.query.get("cut_after")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(_event("sources", {"sources": []}))
        # the stall (if any) shifts the whole answer: times count from when it was released
        started = max(started, time.monotonic())
        gap = (last - first) / max(tokens - 1, 1)
        for k in range(tokens):
            if cut_after is not None and k >= int(cut_after):
                assert request.transport is not None
                request.transport.abort()  # no terminating chunk: a broken stream
                return response
            await asyncio.sleep(max(0.0, started + first + k * gap - time.monotonic()))
            await response.write(_event("token", {"text": "tok "}))
        done = {
            "usage": {"prompt_tokens": 10, "completion_tokens": tokens},
            "outcome": "ok",
            "attempts": {"embed": 1, "retrieve": 1, "generate": 1},
            "timings": {
                "embed_ms": 1.0,
                "retrieve_ms": 2.0,
                "generate_ms": last * 1000,
                "ttft_ms": first * 1000,
                "total_ms": last * 1000 + 3,
            },
        }
        await response.write(_event("done", done))
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/json", json_route)
    app.router.add_post("/sse", sse_route)
    return app


@contextmanager
def running_target() -> Iterator[Target]:
    """Serve the target app on a free 127.0.0.1 port until the block ends."""
    target = Target()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-target", daemon=True)
    thread.start()
    runner = web.AppRunner(_app(target), access_log=None, handler_cancellation=True)

    async def start() -> int:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server)
        port: int = server.sockets[0].getsockname()[1]
        return port

    try:
        port = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
        target.url = f"http://127.0.0.1:{port}"
        yield target
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
