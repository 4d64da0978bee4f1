"""End to end: the reference gateway, with its LLM behind the chaos proxy, sees the proxy's
429s and retries as its policy (openai-python) says — waiting exactly ``retry-after-ms``,
giving up when ``retry-after`` exceeds 120 s."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from ragstress.reference.gateway import build_app
from ragstress.reference.search import Source
from ragstress.reference.settings import GatewaySettings
from tests.chaos.helpers import Rig, Upstream, rig, run


async def _no_sources(vector: Sequence[float], top_k: int) -> list[Source]:
    return []


def _server_timing(header: str) -> dict[str, float]:
    return {m[1]: float(m[2]) / 1000 for m in re.finditer(r"(\w+);dur=([\d.]+)", header)}


async def _ask(r: Rig) -> tuple[int, Any, dict[str, float]]:
    settings = GatewaySettings.model_validate(
        {
            "embed_url": r.proxy.listen_urls["embed"],
            "llm_url": r.proxy.listen_urls["generate"],
            "pg_dsn": "postgresql://unused",
            "generate_policy": {"timeout_s": 5, "retry": "openai-python"},
        }
    )
    app = build_app(settings, retriever=_no_sources, seed=3)
    async with TestClient(TestServer(app)) as client:
        resp = await client.post("/v1/rag", json={"query": "What is alpha?", "max_tokens": 3})
        return resp.status, await resp.json(), _server_timing(resp.headers["Server-Timing"])


def _limit(retry_after_s: float, end_s: float) -> dict[str, Any]:
    return {
        "kind": "error",
        "stage": "generate",
        "start_s": 0,
        "end_s": end_s,
        "status": 429,
        "retry_after_s": retry_after_s,
    }


def test_gateway_waits_retry_after_and_retries_through_the_proxy() -> None:
    """429 (retry after 0.3 s) for the first 0.58 s: attempt 1 at ~0 and attempt 2 at ~0.3 s
    are refused; attempt 3, two exact waits after the first, comes at 0.6 s at the earliest,
    after the window, and is answered. (The window's end leaves attempt 2 a quarter second of
    slack on a slow machine, and cannot catch attempt 3.)"""

    async def test() -> None:
        async with rig(upstream=Upstream(tokens=3, spacing_s=0.001)) as r:
            start = time.time()
            await r.load([_limit(0.3, 0.58)], start=start)
            status, body, timing = await _ask(r)
            assert status == 200, body
            assert body["outcome"] == "ok"
            assert body["attempts"]["generate"] == 3
            assert body["answer"] == "t0 t1 t2 "
            # two waits of exactly retry-after-ms (no jittered backoff, which would take at
            # least 0.375 + 0.75 s)
            assert 0.6 <= timing["generate"] < 1.0, timing
            llm = r.upstreams["generate"]
            assert llm.hits == 1  # the refused attempts never reached the LLM
            _, counters = await r.control_json("GET", "/counters")
            assert counters["injected"]["generate"] == {"error": 2}
            assert counters["requests"]["generate"] == 3

    run(test)


def test_gateway_gives_up_on_a_retry_after_above_its_cap() -> None:
    async def test() -> None:
        async with rig() as r:
            await r.load([_limit(200, 60)])
            status, body, _ = await _ask(r)
            assert status == 502
            assert body["error"]["kind"] == "error_429"
            assert body["error"]["status"] == 429
            _, counters = await r.control_json("GET", "/counters")
            assert counters["requests"]["generate"] == 1  # not retried

    run(test)
