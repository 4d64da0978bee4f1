"""One listener of the chaos proxy: a reverse proxy to one upstream that plays the verdicts.

Pass-through (no fault decides anything for the call) is a plain relay: the request body is
read (it is small JSON in a RAG service, and the token buckets need it) and sent upstream over
a keep-alive pool with no connection cap (a cap would be a hidden queue in front of the
service under test); the answer's status and headers go back as soon as the upstream's
arrive, then every chunk is written the moment it arrives — never buffered — so SSE keeps its
first-byte and per-event timing. Bytes pass undecoded (``auto_decompress=False``), with the
upstream's ``content-encoding``; hop-by-hop headers are dropped both ways.

Rendering a verdict (:class:`ragstress.chaos.table.Verdict`), in the order the model applies
it (:mod:`ragstress.faults.plan`):

1. ``outage``: the connection is reset (RST, no answer) or answered 503, at once;
2. ``hang``: nothing is sent; the connection is closed at the fault's end (or when it is
   removed, or ``close_after_s``), unless the caller gives up first;
3. an error at once: the status after the added delay, nothing forwarded;
4. the added delay ``on: request``; then the rate limits (429 + ``retry-after``); then, during
   a ``capacity_loss``, a place among ``units − down``;
5. forwarding. The answer follows a *timeline*: a piece the upstream sent at ``a`` (since the
   call was sent at ``s``) goes out at ``s + factor·(a − s) + shift``, where ``factor`` is the
   latency multiplier (each piece held ``(factor − 1)`` × the upstream's time for it) and
   ``shift`` the ``on: first_byte`` delay plus any stall so far. An SSE answer under a
   stream fault is cut into whole events: a stall holds the event after the first
   ``after_tokens`` ``data:`` events (and everything after it) ``stall_s`` longer; a
   truncation writes half of that event and closes the connection; a ``stream_error`` sends
   the provider's error event there and ends the stream; ``stream_rate`` spaces ``data:``
   events at least ``1/tokens_per_s`` apart; ``bandwidth`` paces body bytes. With
   ``after_service`` the answer is drained on the same timeline and the status sent instead.

A reader task timestamps the upstream's chunks as they arrive, so holding one piece back
never changes when the next one is counted as sent by the upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import struct
from collections.abc import AsyncIterator
from typing import Final

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from ragstress.chaos.faults import ProxyHang
from ragstress.chaos.responses import error_response, stream_error_event
from ragstress.chaos.settings import ListenerSettings
from ragstress.chaos.sse import DATA, OTHER, SseSplitter
from ragstress.chaos.table import FaultTable, Installed, Verdict

__all__ = ["MAX_BODY_BYTES", "build_listener_app"]

MAX_BODY_BYTES: Final = 64 * 1024 * 1024  # a proxy should not refuse what its upstream takes
_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
_NOT_FORWARDED: Final = _HOP | {"host", "content-length"}
_BANDWIDTH_SLICE_S: Final = 0.02  # bandwidth pacing granularity
_UPSTREAM_ERRORS = (aiohttp.ClientError, OSError, TimeoutError)


def _request_headers(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    drop = _NOT_FORWARDED
    extra = headers.get("Connection")
    if extra:
        drop = drop | {t.strip().lower() for t in extra.split(",")}
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in drop)


def _response_headers(headers: CIMultiDictProxy[str], *, keep_length: bool) -> CIMultiDict[str]:
    drop = _HOP if keep_length else _HOP | {"content-length"}
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in drop)


def _reset(request: web.BaseRequest) -> None:
    """Reset the caller's connection (RST): what a dead host's kernel or a load balancer
    without backends does."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _close(request: web.BaseRequest) -> None:
    """Close the caller's connection after what was written (FIN): a broken-off answer."""
    transport = request.transport
    if transport is not None:
        transport.close()


async def _sleep_until(loop: asyncio.AbstractEventLoop, due: float) -> None:
    delay = due - loop.time()
    if delay > 0:
        await asyncio.sleep(delay)


class _Relay:
    """The handler state of one listener."""

    def __init__(
        self, stage: str, listener: ListenerSettings, table: FaultTable, connect_timeout_s: float
    ) -> None:
        self.stage = stage
        self.listener = listener
        self.table = table
        self.base = listener.upstream
        self.connect_timeout_s = connect_timeout_s
        self.session: aiohttp.ClientSession | None = None

    async def lifespan(self, app: web.Application) -> AsyncIterator[None]:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30.0),
            # no total and no read timeout: an answer streams (or stalls) as long as it does;
            # the caller's own timeout decides when to give up. Only opening a socket is
            # bounded (sock_connect: no timer per call on a reused connection)
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout_s),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        try:
            yield
        finally:
            await self.session.close()

    # ------------------------------------------------------------ entry

    async def handle(self, request: web.Request) -> web.StreamResponse:
        table = self.table
        verdict = table.decide(
            self.stage, request.method, request.path, request.headers, table.clock()
        )
        if verdict is None:
            return await self._forward(request, await request.read(), None)
        return await self._play(request, verdict)

    async def _play(self, request: web.Request, v: Verdict) -> web.StreamResponse:
        table, stage, e = self.table, self.stage, v.effect
        if e.refuse:
            table.count(stage, "outage")
            outage = v.outage
            if outage is not None and outage.delay_s > 0:
                await asyncio.sleep(outage.delay_s)
            if outage is not None and outage.respond == "503":
                return error_response(503, outage.style)
            _reset(request)
            return web.Response(status=503)  # never sent: the connection is gone
        if v.hang is not None:
            table.count(stage, "hang")
            return await self._hang(request, v.hang)
        if e.status is not None and not e.error_after_service:
            table.count(stage, "error")
            if e.extra_latency_s > 0:
                table.count(stage, "added_latency")
                await asyncio.sleep(e.extra_latency_s)
            return self._error(v)
        if v.request_delay_s > 0:
            table.count(stage, "added_latency")
            await asyncio.sleep(v.request_delay_s)
        body = await request.read()
        if v.rate_limited:
            refusal = table.admit(stage, v, body)
            if refusal is not None:
                table.count(stage, "rate_limit")
                return error_response(
                    429,
                    refusal.style,
                    retry_after_s=None if math.isinf(refusal.wait_s) else _ceil_ms(refusal.wait_s),
                    x_should_retry=False if math.isinf(refusal.wait_s) else None,
                    openai_type=refusal.bucket,
                    message=f"Rate limit reached for {refusal.bucket} (ragstress chaos proxy).",
                )
        if not v.capacity:
            return await self._forward(request, body, v)
        gate = table.gate(stage)
        if await gate.acquire():
            table.count(stage, "capacity_loss")
        try:
            return await self._forward(request, body, v)
        finally:
            gate.release()

    def _error(self, v: Verdict) -> web.Response:
        e, f = v.effect, v.error
        assert e.status is not None
        return error_response(
            e.status,
            "openai" if f is None else f.style,
            retry_after_s=e.retry_after_s,
            x_should_retry=None if f is None else f.x_should_retry,
            message=None if f is None else f.message,
        )

    async def _hang(self, request: web.Request, item: Installed) -> web.StreamResponse:
        """Hold the call, answering nothing, until the fault ends or goes (or
        ``close_after_s``); then close the connection. A caller that gives up first cancels
        this (the server runs with handler cancellation)."""
        left = item.end - self.table.clock()
        if isinstance(item.fault, ProxyHang) and item.fault.close_after_s is not None:
            left = min(left, item.fault.close_after_s)
        if left > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(item.gone.wait(), left)
        _close(request)
        return web.Response(status=504)  # never sent: the connection is closed

    # ------------------------------------------------------------ forwarding

    async def _forward(
        self, request: web.Request, body: bytes, v: Verdict | None
    ) -> web.StreamResponse:
        session = self.session
        assert session is not None
        loop = asyncio.get_running_loop()
        sent = loop.time()
        try:
            upstream = await session.request(
                request.method,
                URL(self.base + request.raw_path, encoded=True),
                headers=_request_headers(request.headers),
                data=body or None,
                allow_redirects=False,
            )
        except _UPSTREAM_ERRORS as exc:
            self.table.upstream_errors[self.stage] += 1
            return error_response(
                502,
                self.listener.style,
                message=f"the chaos proxy could not reach {self.base}: {type(exc).__name__}",
                code="upstream_unreachable",
                extra_headers={"x-ragstress-chaos": "upstream-unreachable"},
            )
        try:
            if v is None:
                return await self._relay(request, upstream)
            return await self._relay_faulted(request, upstream, v, sent)
        finally:
            upstream.release()

    async def _relay(
        self, request: web.Request, upstream: aiohttp.ClientResponse
    ) -> web.StreamResponse:
        """The fast path: headers as they come, then each chunk as it arrives. An answer that
        is already here whole (a small JSON body in the same packets as its headers) goes out
        in one write: nothing is held back for it, and it saves a system call per call."""
        content = upstream.content
        if content.is_eof() and content.exception() is None:
            body = await upstream.read()  # already buffered: no waiting
            return web.Response(
                status=upstream.status,
                reason=upstream.reason,
                body=body,
                headers=_response_headers(upstream.headers, keep_length=False),
            )
        resp = web.StreamResponse(
            status=upstream.status,
            reason=upstream.reason,
            headers=_response_headers(upstream.headers, keep_length=True),
        )
        await resp.prepare(request)
        try:
            async for chunk in upstream.content.iter_any():
                await resp.write(chunk)
        except ConnectionError:
            return resp  # the caller went away
        except _UPSTREAM_ERRORS:
            self.table.upstream_errors[self.stage] += 1
            _close(request)  # the upstream broke off: so does the answer, not a clean end
            return resp
        await resp.write_eof()
        return resp

    async def _relay_faulted(
        self, request: web.Request, upstream: aiohttp.ClientResponse, v: Verdict, sent: float
    ) -> web.StreamResponse:
        table, stage, e = self.table, self.stage, v.effect
        loop = asyncio.get_running_loop()
        factor = e.latency_factor
        shift = v.first_byte_delay_s
        if factor != 1.0:
            table.count(stage, "latency_multiplier")
        if shift > 0:
            table.count(stage, "added_latency")
        if e.status is not None:  # after_service: drain on the timeline, then the status
            last = loop.time()
            try:
                async for _ in upstream.content.iter_any():
                    last = loop.time()
            except _UPSTREAM_ERRORS:
                self.table.upstream_errors[stage] += 1
            await _sleep_until(loop, sent + factor * (last - sent) + shift)
            table.count(stage, "error")
            return self._error(v)
        sse = upstream.content_type == "text/event-stream"
        stream_faults = sse and v.streams_faulted
        if not (factor != 1.0 or shift > 0 or stream_faults or v.bytes_per_s is not None):
            return await self._relay(request, upstream)
        # the reader stamps the upstream's chunks from now on, while the headers are held
        pump = _TimedPump(self, request, upstream, v, sent=sent, stream_faults=stream_faults)
        try:
            await _sleep_until(loop, sent + factor * (loop.time() - sent) + shift)
            resp = web.StreamResponse(
                status=upstream.status,
                reason=upstream.reason,
                headers=_response_headers(upstream.headers, keep_length=not stream_faults),
            )
            await resp.prepare(request)
            if v.bytes_per_s is not None:
                table.count(stage, "bandwidth")
            if stream_faults and v.tokens_per_s is not None:
                table.count(stage, "stream_rate")
            await pump.write(resp)
        finally:
            pump.stop()
        return resp


class _TimedPump:
    """Writes an answer on its timeline (see the module docstring). A reader task, started
    at once, stamps each upstream chunk with its arrival time."""

    def __init__(
        self,
        relay: _Relay,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        v: Verdict,
        *,
        sent: float,
        stream_faults: bool,
    ) -> None:
        self.relay = relay
        self.request = request
        self.upstream = upstream
        self.v = v
        self.sent = sent
        self.shift = v.first_byte_delay_s
        self.factor = v.effect.latency_factor
        self.splitter = SseSplitter() if stream_faults else None
        self.loop = asyncio.get_running_loop()
        self.bw_free_at = 0.0
        self.resp: web.StreamResponse  # set by write()
        self.queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        self.failed: list[BaseException] = []
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        loop, queue = self.loop, self.queue
        try:
            async for chunk in self.upstream.content.iter_any():
                queue.put_nowait((loop.time(), chunk))
        except _UPSTREAM_ERRORS as exc:
            self.failed.append(exc)
        finally:
            queue.put_nowait(None)

    def stop(self) -> None:
        self.reader.cancel()

    def _count(self, kind: str) -> None:
        self.relay.table.count(self.relay.stage, kind)

    async def write(self, resp: web.StreamResponse) -> None:
        self.resp = resp
        with contextlib.suppress(ConnectionError):  # the caller went away
            await self._write_all(self.queue, self.failed)

    async def _write_all(
        self, queue: asyncio.Queue[tuple[float, bytes] | None], failed: list[BaseException]
    ) -> None:
        e, v = self.v.effect, self.v
        stall_at = e.stall_after_tokens if e.stall_s > 0 else None
        cut_at = e.truncate_after_tokens
        error_at = None if v.stream_error is None else v.stream_error.after_tokens
        gap = 0.0 if v.tokens_per_s is None else 1.0 / v.tokens_per_s
        tokens = 0
        last_token = -math.inf
        while True:
            item = await queue.get()
            if item is None:
                break
            arrived, chunk = item
            pieces = [(chunk, OTHER)] if self.splitter is None else self.splitter.feed(chunk)
            for piece, kind in pieces:
                due = self.sent + self.factor * (arrived - self.sent) + self.shift
                if kind == DATA:
                    if cut_at is not None and tokens == cut_at:
                        await _sleep_until(self.loop, max(due, last_token + gap))
                        await self.resp.write(piece[: max(1, len(piece) // 2)])
                        self._count("stream_truncate")
                        _close(self.request)
                        return
                    if error_at is not None and tokens == error_at:
                        assert v.stream_error is not None
                        await _sleep_until(self.loop, max(due, last_token + gap))
                        f = v.stream_error
                        await self.resp.write(stream_error_event(f.status, f.style))
                        self._count("stream_error")
                        await self.resp.write_eof()
                        return
                    if stall_at is not None and tokens == stall_at:
                        self.shift += e.stall_s
                        due += e.stall_s
                        stall_at = None
                        self._count("stream_stall")
                    due = max(due, last_token + gap)
                await _sleep_until(self.loop, due)
                await self._write(piece)
                if kind == DATA:
                    tokens += 1
                    last_token = self.loop.time()
        if failed:
            self.relay.table.upstream_errors[self.relay.stage] += 1
            _close(self.request)
            return
        if self.splitter is not None:
            rest = self.splitter.rest()
            if rest:
                await self._write(rest)
        await self.resp.write_eof()

    async def _write(self, data: bytes) -> None:
        bps = self.v.bytes_per_s
        if bps is None:
            await self.resp.write(data)
            return
        step = max(1, int(bps * _BANDWIDTH_SLICE_S))
        for start in range(0, len(data), step):
            part = data[start : start + step]
            await _sleep_until(self.loop, self.bw_free_at)
            await self.resp.write(part)
            self.bw_free_at = max(self.bw_free_at, self.loop.time()) + len(part) / bps


def _ceil_ms(seconds: float) -> float:
    """A bucket's exact wait rounded up to the next whole millisecond, so a caller that
    waits ``retry-after-ms`` is never early."""
    return math.ceil(seconds * 1000.0 - 1e-9) / 1000.0


_RELAY: Final = web.AppKey("ragstress_chaos_relay", _Relay)


def build_listener_app(
    stage: str, listener: ListenerSettings, table: FaultTable, *, connect_timeout_s: float = 10.0
) -> web.Application:
    """The aiohttp application of one listener: every method and path goes upstream."""
    relay = _Relay(stage, listener, table, connect_timeout_s)
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[_RELAY] = relay
    app.cleanup_ctx.append(relay.lifespan)
    app.router.add_route("*", "/{tail:.*}", relay.handle)
    return app
