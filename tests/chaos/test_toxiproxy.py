"""Toxiproxy's HTTP API, for the toxics that map: a Toxiproxy client can drive the proxy."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from tests.chaos.helpers import Rig, rig, run


async def _timed_post(r: Rig, timeout_s: float = 5.0) -> tuple[str, float]:
    t0 = time.perf_counter()
    try:
        async with r.session.post(
            r.url("embed", "/v1/embeddings"),
            json={},
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as resp:
            await resp.read()
            outcome = str(resp.status)
    except (aiohttp.ClientError, TimeoutError) as exc:
        outcome = type(exc).__name__
    return outcome, time.perf_counter() - t0


async def _toxic(r: Rig, body: dict[str, Any], proxy: str = "embed") -> tuple[int, Any]:
    return await r.control_json("POST", f"/proxies/{proxy}/toxics", body)


def test_proxies_are_the_listeners() -> None:
    async def test() -> None:
        async with rig() as r:
            status, proxies = await r.control_json("GET", "/proxies")
            assert status == 200
            assert set(proxies) == {"embed", "generate"}
            embed = proxies["embed"]
            assert embed["listen"] == r.proxy.listen_urls["embed"].removeprefix("http://")
            assert embed["upstream"] == r.direct["embed"].removeprefix("http://")
            assert embed["enabled"] is True
            assert embed["toxics"] == []
            status, body = await r.control_json("GET", "/proxies/nope")
            assert (status, body) == (404, {"error": "proxy not found", "status": 404})
            status, _ = await r.control_json("POST", "/proxies", {"name": "embed"})
            assert status == 409
            status, version = await r.control_json("GET", "/version")
            assert status == 200
            assert "version" in version

    run(test)


def test_latency_toxic_then_removed() -> None:
    async def test() -> None:
        async with rig() as r:
            status, toxic = await _toxic(
                r, {"type": "latency", "attributes": {"latency": 200, "jitter": 50}}
            )
            assert status == 200
            assert toxic == {
                "name": "latency_downstream",
                "type": "latency",
                "stream": "downstream",
                "toxicity": 1.0,
                "attributes": {"latency": 200, "jitter": 50},
            }
            outcome, elapsed = await _timed_post(r)
            assert outcome == "200"
            assert 0.15 <= elapsed < 0.5
            status, listed = await r.control_json("GET", "/proxies/embed/toxics")
            assert listed == [toxic]
            status, again = await _toxic(r, {"type": "latency"})
            assert (status, again["error"]) == (409, "toxic already exists")
            status, _ = await r.control_json("DELETE", "/proxies/embed/toxics/latency_downstream")
            assert status == 204
            outcome, elapsed = await _timed_post(r)
            assert elapsed < 0.1
            status, _ = await r.control_json("DELETE", "/proxies/embed/toxics/latency_downstream")
            assert status == 404

    run(test)


def test_timeout_reset_and_bandwidth_toxics() -> None:
    async def test() -> None:
        async with rig() as r:
            await _toxic(r, {"name": "t", "type": "timeout", "attributes": {"timeout": 150}})
            outcome, elapsed = await _timed_post(r)
            assert outcome == "ServerDisconnectedError"
            assert 0.14 < elapsed < 0.5
            outcome, _ = await _timed_post(r, timeout_s=0.1)
            assert outcome == "TimeoutError"
            await r.control_json("POST", "/reset")
            assert (await _timed_post(r))[0] == "200"

            await _toxic(r, {"name": "rst", "type": "reset_peer"})
            outcome, _ = await _timed_post(r)
            assert outcome not in ("200", "TimeoutError")
            status, toxic = await r.control_json(
                "POST", "/proxies/embed/toxics/rst", {"toxicity": 0.0}
            )
            assert (status, toxic["toxicity"]) == (200, 0.0)  # updated: now it never hits
            assert (await _timed_post(r))[0] == "200"
            await r.control_json("POST", "/reset")

            status, _ = await _toxic(
                r, {"type": "bandwidth", "attributes": {"rate": 100}}, proxy="generate"
            )
            assert status == 200
            t0 = time.perf_counter()
            async with r.session.get(r.url("generate", "/big")) as resp:
                assert len(await resp.read()) == 20_000
            assert time.perf_counter() - t0 > 0.15  # 20 kB at 100 KB/s

    run(test)


def test_toxics_that_do_not_map_are_refused() -> None:
    async def test() -> None:
        async with rig() as r:
            status, body = await _toxic(r, {"type": "slicer"})
            assert status == 400
            assert "supported: latency, timeout, reset_peer, bandwidth" in body["error"]
            status, body = await _toxic(r, {"type": "bandwidth", "stream": "upstream"})
            assert status == 400
            status, body = await _toxic(r, {"type": "latency", "toxicity": 2})
            assert status == 400
            status, body = await _toxic(r, {"type": "latency", "attributes": {"rate": 1}})
            assert status == 400

    run(test)


def test_toxics_expire_and_show_up_as_faults() -> None:
    async def test() -> None:
        async with rig(toxic_max_s=0.3) as r:
            await _toxic(r, {"type": "latency", "attributes": {"latency": 10}})
            _, listing = await r.control_json("GET", "/faults")
            assert [f["kind"] for f in listing["faults"]] == ["added_latency"]
            assert listing["faults"][0]["fault"]["on"] == "first_byte"
            await asyncio.sleep(0.35)
            _, toxics = await r.control_json("GET", "/proxies/embed/toxics")
            assert toxics == []

    run(test)
