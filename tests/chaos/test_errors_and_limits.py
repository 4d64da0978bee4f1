"""Errors look like a provider's (bodies, retry hints, x-should-retry), ``after_service`` does
the work first, the token buckets answer 429 with a correct ``retry-after``, rate-limit cuts
scale them, and ``capacity_loss`` is a concurrency limit (or refused without units)."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import pytest

from ragstress.chaos.responses import error_body, format_ms, retry_headers, stream_error_event
from ragstress.chaos.table import request_tokens
from tests.chaos.helpers import Upstream, gather_limited, rig, run


def _error(status: int, **kw: Any) -> dict[str, Any]:
    return {"kind": "error", "stage": "generate", "start_s": 0, "end_s": 60, "status": status, **kw}


@pytest.mark.parametrize(
    ("seconds", "header", "ms"),
    [
        (0.3, "1", "300"),
        (0.0, "0", "0"),
        (1.0, "1", "1000"),
        (2.0001, "3", "2000.1"),
        (1.1, "2", "1100"),
        (0.0015, "1", "1.5"),
        (119.9999, "120", "119999.9"),
    ],
)
def test_retry_hints_round_up_and_are_exact(seconds: float, header: str, ms: str) -> None:
    assert retry_headers(seconds) == {"retry-after": header, "retry-after-ms": ms}
    assert format_ms(seconds) == ms


def test_no_retry_hint_for_never() -> None:
    assert retry_headers(None) == {}
    assert retry_headers(math.inf) == {}


def test_error_bodies_by_style() -> None:
    assert error_body(429, "openai") == {
        "error": {
            "message": "Rate limit reached. Please try again later.",
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    body = error_body(529, "anthropic")
    assert body["type"] == "error"
    assert body["error"] == {"type": "overloaded_error", "message": "Overloaded"}
    assert str(body["request_id"]).startswith("req_")
    assert error_body(429, "anthropic")["error"] == {
        "type": "rate_limit_error",
        "message": "Rate limit exceeded. Please try again later.",
    }
    assert stream_error_event(529, "anthropic") == (
        b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error",'
        b'"message":"Overloaded"}}\n\n'
    )
    assert stream_error_event(500, "openai").startswith(b'data: {"error":{"message":')


def test_injected_errors_on_the_wire() -> None:
    async def test() -> None:
        async with rig(("generate",)) as r:
            url = r.url("generate", "/v1/chat/completions")
            await r.load([_error(429, retry_after_s=0.3)])
            async with r.session.post(url, json={}) as resp:
                assert resp.status == 429
                assert resp.headers["retry-after"] == "1"
                assert resp.headers["retry-after-ms"] == "300"
                assert resp.headers["content-type"] == "application/json"
                assert resp.headers["x-request-id"].startswith("req_")
                assert "x-should-retry" not in resp.headers
                assert (await resp.json())["error"]["code"] == "rate_limit_exceeded"
            await r.load(
                [_error(529, style="anthropic", x_should_retry=False, message="Busy, go away")]
            )
            async with r.session.post(url, json={}) as resp:
                assert resp.status == 529
                assert resp.headers["x-should-retry"] == "false"
                assert "retry-after" not in resp.headers
                body = await resp.json()
                assert body["error"] == {"type": "overloaded_error", "message": "Busy, go away"}
                assert resp.headers["request-id"] == body["request_id"]
            assert r.upstreams["generate"].hits == 0  # answered at once, never forwarded

    run(test)


def test_error_after_service_forwards_drains_then_fails() -> None:
    async def test() -> None:
        up = Upstream(tokens=4, spacing_s=0.05)
        async with rig(("generate",), upstream=up) as r:
            await r.load([_error(500, after_service=True)])
            t0 = time.perf_counter()
            async with r.session.post(r.url("generate", "/v1/chat/completions"), json={}) as resp:
                assert resp.status == 500
                body = await resp.json()
            elapsed = time.perf_counter() - t0
            assert up.hits == 1
            assert elapsed >= 0.15  # the whole stream was served first
            assert body["error"]["type"] == "server_error"

    run(test)


def test_408_and_outage_as_503() -> None:
    async def test() -> None:
        async with rig(("generate",)) as r:
            await r.load(
                [
                    {
                        "kind": "outage",
                        "stage": "generate",
                        "start_s": 0,
                        "end_s": 60,
                        "respond": "503",
                        "match": {"path_prefix": "/a"},
                    },
                    {**_error(408), "match": {"path_prefix": "/b"}},
                ]
            )
            async with r.session.post(r.url("generate", "/a"), json={}) as resp:
                assert resp.status == 503
                assert (await resp.json())["error"]["type"] == "server_error"
            async with r.session.post(r.url("generate", "/b"), json={}) as resp:
                assert resp.status == 408

    run(test)


# --- rate limits ---------------------------------------------------------------------------


def test_request_tokens_are_counted_as_the_model_counts() -> None:
    chat = b'{"messages": [{"role": "user", "content": "abcdefgh"}, {"role": "system", "content": "abc"}], "max_tokens": 10}'  # noqa: E501
    assert request_tokens(chat) == (2 + 1, 10)
    assert request_tokens(b'{"input": ["abcd", "abcde"]}') == (1 + 2, 0)
    assert request_tokens(
        b'{"prompt": "abcdefghi", "max_completion_tokens": 7, "max_tokens": 9}'
    ) == (3, 7)
    assert request_tokens(b"not json at all") == (4, 0)


def test_rate_limit_fault_answers_429_with_the_exact_wait() -> None:
    """rpm 60 (one a second) with a burst of 3: three calls pass, the fourth is told to wait
    about a second; after that wait it passes."""

    async def test() -> None:
        async with rig(("generate",)) as r:
            await r.load(
                [
                    {
                        "kind": "rate_limit",
                        "stage": "generate",
                        "start_s": 0,
                        "end_s": 60,
                        "rpm": 60,
                        "rpm_burst": 3,
                    }
                ]
            )
            url = r.url("generate", "/v1/chat/completions")
            codes = []
            for _ in range(3):
                async with r.session.post(url, json={"stream": False}) as resp:
                    codes.append(resp.status)
            assert codes == [200, 200, 200]
            async with r.session.post(url, json={"stream": False}) as resp:
                assert resp.status == 429
                wait_ms = float(resp.headers["retry-after-ms"])
                assert resp.headers["retry-after"] == "1"
                assert (await resp.json())["error"]["type"] == "requests"
            assert 800 < wait_ms <= 1000
            await asyncio.sleep(wait_ms / 1000)
            async with r.session.post(url, json={"stream": False}) as resp:
                assert resp.status == 200
            assert r.upstreams["generate"].hits == 4  # the refused call never reached it

    run(test)


def test_tokens_per_minute_and_too_large() -> None:
    async def test() -> None:
        async with rig(("generate",), listener={"generate": {"rate_limit": {"tpm": 600}}}) as r:
            url = r.url("generate", "/v1/chat/completions")
            big = {"messages": [{"role": "user", "content": "x" * 400}], "max_tokens": 400}
            async with r.session.post(url, json={**big, "stream": False}) as resp:
                assert resp.status == 200  # 100 + 400 = 500 of 600
            async with r.session.post(url, json={**big, "stream": False}) as resp:
                assert resp.status == 429
                assert (await resp.json())["error"]["type"] == "tokens"
                # 400 more tokens at 10 a second
                assert 39_000 < float(resp.headers["retry-after-ms"]) <= 40_000
                assert resp.headers["retry-after"] == "40"
            huge = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 1000}
            async with r.session.post(url, json=huge) as resp:
                assert resp.status == 429  # can never fit: no retry hint, do not retry
                assert "retry-after" not in resp.headers
                assert resp.headers["x-should-retry"] == "false"

    run(test)


def test_rate_limit_cut_scales_the_buckets() -> None:
    async def test() -> None:
        listener = {"generate": {"rate_limit": {"rpm": 600, "rpm_burst": 10}}}
        async with rig(("generate",), listener=listener) as r:
            start = time.time()
            await r.load(
                [
                    {
                        "kind": "rate_limit_cut",
                        "stage": "generate",
                        "start_s": 0,
                        "end_s": 60,
                        "factor": 0.3,
                    }
                ],
                start=start,
            )
            url = r.url("generate", "/v1/chat/completions")

            async def code() -> int:
                async with r.session.post(url, json={"stream": False}) as resp:
                    return resp.status

            codes = [await code() for _ in range(5)]
            assert codes == [200, 200, 200, 429, 429]  # capacity 10 × 0.3 = 3
            await r.control_json("DELETE", "/faults")
            # the capacity is back to 10, the tokens are not (no free burst): 0.15 s at the
            # full 10 a second refills one and a half
            await asyncio.sleep(0.15)
            codes = [await code() for _ in range(2)]
            assert codes == [200, 429]

    run(test)


def test_cut_on_a_stage_without_buckets_is_refused() -> None:
    async def test() -> None:
        async with rig(("generate",)) as r:
            status, body = await r.control_json(
                "POST",
                "/plan",
                {
                    "faults": [
                        {
                            "kind": "rate_limit_cut",
                            "stage": "generate",
                            "start_s": 0,
                            "end_s": 9,
                            "factor": 0.5,
                        }
                    ],
                    "run_start_epoch": time.time(),
                },
            )
            assert status == 400
            assert "stage 'generate' has no rate limits" in body["error"]["message"]

    run(test)


# --- capacity loss -------------------------------------------------------------------------


def test_capacity_loss_without_units_is_refused() -> None:
    async def test() -> None:
        async with rig(("embed",)) as r:
            fault = {"kind": "capacity_loss", "stage": "embed", "start_s": 0, "end_s": 9}
            status, body = await r.control_json(
                "POST", "/plan", {"faults": [{**fault, "fraction": 0.5}], "run_start_epoch": 0}
            )
            assert status == 400
            message = body["error"]["message"]
            assert "capacity_loss needs the stage's units" in message

    run(test)


def test_capacity_loss_limits_concurrency_while_active() -> None:
    async def test() -> None:
        up = Upstream(slow_s=0.1)
        async with rig(("embed",), upstream=up, listener={"embed": {"units": 4}}) as r:
            url = r.url("embed", "/slow")

            async def call() -> int:
                async with r.session.post(url) as resp:
                    return resp.status

            await gather_limited([call] * 12, concurrency=12)
            assert up.max_in_flight == 12  # no loss: no limit at all
            start = time.time()
            await r.load(
                [
                    {
                        "kind": "capacity_loss",
                        "stage": "embed",
                        "start_s": 0,
                        "end_s": 60,
                        "fraction": 0.5,
                    }
                ],
                start=start,
            )
            up.max_in_flight = 0
            t0 = time.perf_counter()
            codes = await gather_limited([call] * 12, concurrency=12)
            elapsed = time.perf_counter() - t0
            assert codes == [200] * 12
            assert up.max_in_flight == 2  # 4 units, half of them down
            assert elapsed >= 0.55  # 12 calls, 2 at a time, 0.1 s each
            _, counters = await r.control_json("GET", "/counters")
            assert counters["injected"]["embed"]["capacity_loss"] == 10

    run(test)


def test_capacity_loss_of_every_unit_queues_until_it_ends() -> None:
    async def test() -> None:
        up = Upstream(slow_s=0.01)
        async with rig(("embed",), upstream=up, listener={"embed": {"units": 2}}) as r:
            start = time.time()
            await r.load(
                [
                    {
                        "kind": "capacity_loss",
                        "stage": "embed",
                        "start_s": 0,
                        "end_s": 0.3,
                        "replicas_down": 5,
                    }
                ],
                start=start,
            )
            async with r.session.post(r.url("embed", "/slow")) as resp:
                assert resp.status == 200
            assert time.time() - start >= 0.29

    run(test)
