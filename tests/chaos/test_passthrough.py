"""With no fault active the proxy is transparent: bodies, headers and status pass; streams are
not buffered (first event and gaps as direct); the upstream pool is kept alive; an upstream
that is down or breaks off is reported as such."""

from __future__ import annotations

import asyncio
import statistics
import time

import aiohttp
import pytest

from tests.chaos.helpers import Upstream, rig, run, sse_times


def test_request_and_answer_pass_unchanged() -> None:
    async def test() -> None:
        async with (
            rig(("embed",)) as r,
            r.session.put(
                r.url("embed", "/any/path?x=1&y=%20z"),
                data=b"payload",
                headers={
                    "X-Custom": "yes",
                    "Authorization": "Bearer k",
                    "Connection": "keep-alive",
                },
            ) as resp,
        ):
            assert resp.status == 200
            echoed = await resp.json()
        assert echoed["method"] == "PUT"
        assert echoed["path"] == "/any/path?x=1&y=%20z"
        assert echoed["body"] == "payload"
        headers = {k.lower(): v for k, v in echoed["headers"].items()}
        assert headers["x-custom"] == "yes"
        assert headers["authorization"] == "Bearer k"
        assert "connection" not in headers or headers["connection"] != "keep-alive, x-custom"
        assert headers["host"].startswith("127.0.0.1:")  # the upstream's, not the proxy's
        assert headers["host"] == r.direct["embed"].removeprefix("http://")

    run(test)


def test_statuses_and_bodies_pass() -> None:
    async def test() -> None:
        async with rig(("generate",)) as r:
            url = r.url("generate", "/v1/chat/completions")
            async with r.session.post(url, json={"stream": False, "max_tokens": 3}) as resp:
                assert resp.status == 200
                body = await resp.json()
            assert body["choices"][0]["message"]["content"] == "t0 t1 t2 "
            async with r.session.get(r.url("generate", "/big")) as resp:
                assert resp.headers["Content-Length"] == "20000"
                assert await resp.read() == b"x" * 20_000
            async with r.session.get(r.url("generate", "/status/418")) as resp:
                assert resp.status == 418  # the upstream's own answer, headers and all
                assert resp.headers["x-upstream"] == "yes"
                assert await resp.json() == {"status": 418}

    run(test)


def test_stream_is_not_buffered() -> None:
    """First event and each gap as with a direct call, within a few ms."""
    up = Upstream(tokens=5, spacing_s=0.04)

    async def first_and_last(url: str, session: aiohttp.ClientSession) -> tuple[float, float]:
        t0 = time.perf_counter()
        async with session.post(url, json={"max_tokens": 5}) as resp:
            events = await sse_times(resp, t0)
        assert len(events) == 6  # 5 tokens + [DONE]
        return events[0][0], events[4][0]

    async def test() -> None:
        async with rig(("generate",), upstream=up) as r:
            proxied_url = r.url("generate", "/v1/chat/completions")
            direct_url = r.direct["generate"] + "/v1/chat/completions"
            await first_and_last(proxied_url, r.session)  # warm both pools
            await first_and_last(direct_url, r.session)
            direct, proxied = [], []
            for _ in range(6):  # interleaved, so load changes hit both alike
                direct.append(await first_and_last(direct_url, r.session))
                proxied.append(await first_and_last(proxied_url, r.session))
        first_d = statistics.median(d[0] for d in direct)
        first_p = statistics.median(p[0] for p in proxied)
        assert first_p - first_d < 0.010, (first_d, first_p)
        # the last token arrives 4 gaps after the first, not all at once at the end
        span_p = statistics.median(p[1] - p[0] for p in proxied)
        assert 0.16 - 0.015 < span_p < 0.16 + 0.05, span_p

    run(test)


def test_keep_alive_pool_to_the_upstream() -> None:
    async def test() -> None:
        async with rig(("embed",)) as r:
            for _ in range(20):
                async with r.session.get(r.url("embed", "/ping")) as resp:
                    assert resp.status == 200
            assert len(r.upstreams["embed"].peers) <= 2

    run(test)


def test_upstream_down_is_a_502_from_the_proxy() -> None:
    async def test() -> None:
        async with rig(("embed",), listener={"embed": {"upstream": "http://127.0.0.1:9"}}) as r:
            async with r.session.post(r.url("embed", "/v1/embeddings"), json={}) as resp:
                assert resp.status == 502
                assert resp.headers["x-ragstress-chaos"] == "upstream-unreachable"
                body = await resp.json()
            assert body["error"]["code"] == "upstream_unreachable"
            _, counters = await r.control_json("GET", "/counters")
            assert counters["upstream_errors"]["embed"] == 1

    run(test)


def test_upstream_breaking_off_breaks_off_the_answer() -> None:
    async def test() -> None:
        async with rig(("generate",)) as r:
            url = r.url("generate", "/v1/chat/completions")
            lines: list[bytes] = []

            async def read() -> None:
                async with r.session.post(url, json={"max_tokens": 5, "break_after": 2}) as resp:
                    async for line in resp.content:
                        if line.startswith(b"data:"):
                            lines.append(line)  # noqa: PERF401 (kept until the break)

            with pytest.raises(aiohttp.ClientPayloadError):
                await read()
            assert len(lines) == 2
            await asyncio.sleep(0.05)
            _, counters = await r.control_json("GET", "/counters")
            assert counters["upstream_errors"]["generate"] == 1

    run(test)
