"""Hangs end at the caller's timeout or the fault's end; stream faults act between whole SSE
events on the answer's timeline (held, not compressed); the SSE splitter keeps every byte."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ragstress.chaos.sse import DATA, DONE, OTHER, SseSplitter, event_kind
from tests.chaos.helpers import Upstream, rig, run


def _hang(**kw: Any) -> dict[str, Any]:
    return {"kind": "hang", "stage": "embed", "start_s": 0, "end_s": 60, **kw}


async def _post(session: aiohttp.ClientSession, url: str, timeout_s: float) -> tuple[str, float]:
    t0 = time.perf_counter()
    try:
        async with session.post(
            url, json={}, timeout=aiohttp.ClientTimeout(total=timeout_s)
        ) as resp:
            await resp.read()
            outcome = str(resp.status)
    except (aiohttp.ClientError, TimeoutError) as exc:
        outcome = type(exc).__name__
    return outcome, time.perf_counter() - t0


def test_hang_ends_at_the_callers_timeout() -> None:
    async def test() -> None:
        async with rig(("embed",)) as r:
            await r.load([_hang()])
            outcome, elapsed = await _post(r.session, r.url("embed", "/v1/embeddings"), 0.25)
            assert outcome == "TimeoutError"
            assert 0.24 < elapsed < 0.5
            assert r.upstreams["embed"].hits == 0

    run(test)


def test_hung_connection_is_closed_at_the_faults_end() -> None:
    async def test() -> None:
        async with rig(("embed",)) as r:
            start = time.time()
            await r.load([_hang(end_s=0.4)], start=start)
            outcome, _ = await _post(r.session, r.url("embed", "/v1/embeddings"), 10)
            assert outcome == "ServerDisconnectedError"
            assert 0.38 < time.time() - start < 0.8

    run(test)


def test_clearing_lets_hung_calls_go_and_close_after() -> None:
    async def test() -> None:
        async with rig(("embed",)) as r:
            await r.load([_hang()])
            url = r.url("embed", "/v1/embeddings")
            task = asyncio.create_task(_post(r.session, url, 10))
            await asyncio.sleep(0.2)
            await r.control_json("POST", "/clear")
            outcome, elapsed = await task
            assert outcome == "ServerDisconnectedError"
            assert 0.19 < elapsed < 0.6
            await r.load([_hang(close_after_s=0.15)])
            outcome, elapsed = await _post(r.session, url, 10)
            assert outcome == "ServerDisconnectedError"
            assert 0.14 < elapsed < 0.5

    run(test)


# --- streams -------------------------------------------------------------------------------


def _stream_fault(kind: str, **kw: Any) -> dict[str, Any]:
    return {"kind": kind, "stage": "generate", "start_s": 0, "end_s": 60, **kw}


async def _events(r: Any, body: dict[str, Any] | None = None) -> tuple[list[float], bytes, str]:
    """Arrival times of data events, the whole body, and how the stream ended."""
    times: list[float] = []
    raw = b""
    t0 = time.perf_counter()
    ended = "ok"
    try:
        async with r.session.post(
            r.url("generate", "/v1/chat/completions"), json=body or {}
        ) as resp:
            async for line in resp.content:
                raw += line
                if line.startswith(b"data:") and b"[DONE]" not in line:
                    times.append(time.perf_counter() - t0)
    except aiohttp.ClientPayloadError:
        ended = "broken"
    return times, raw, ended


def test_multiplier_scales_first_token_and_every_gap() -> None:
    async def test() -> None:
        async with rig(("generate",), upstream=Upstream(tokens=4, spacing_s=0.05)) as r:
            await r.load([_stream_fault("latency_multiplier", factor=3)])
            times, _, ended = await _events(r)
            assert ended == "ok"
            gaps = [b - a for a, b in itertools.pairwise(times)]
            assert all(0.13 < g < 0.22 for g in gaps), gaps

    run(test)


def test_stall_holds_the_rest_of_the_stream_back() -> None:
    async def test() -> None:
        async with rig(("generate",), upstream=Upstream(tokens=4, spacing_s=0.05)) as r:
            await r.load([_stream_fault("stream_stall", after_tokens=1, stall_s=0.2)])
            times, _, _ = await _events(r)
            assert len(times) == 4
            assert 0.22 < times[1] - times[0] < 0.33  # 0.05 + the 0.2 stall
            # later tokens are shifted, not bunched up
            assert 0.035 < times[2] - times[1] < 0.09
            assert 0.035 < times[3] - times[2] < 0.09
            await r.load([_stream_fault("stream_stall", after_tokens=0, stall_s=0.2)])
            times, _, _ = await _events(r)
            assert times[0] > 0.19

    run(test)


def test_stream_faults_past_the_end_do_nothing() -> None:
    async def test() -> None:
        async with rig(("generate",), upstream=Upstream(tokens=3, spacing_s=0.01)) as r:
            await r.load(
                [
                    _stream_fault("stream_truncate", after_tokens=3),
                    _stream_fault("stream_stall", after_tokens=3, stall_s=5),
                ]
            )
            times, raw, ended = await _events(r)
            assert ended == "ok"
            assert len(times) == 3
            assert raw.endswith(b"data: [DONE]\n\n")
            assert times[-1] < 1

    run(test)


def test_truncation_breaks_mid_event() -> None:
    async def test() -> None:
        async with rig(("generate",), upstream=Upstream(tokens=4, spacing_s=0.01)) as r:
            await r.load([_stream_fault("stream_truncate", after_tokens=2)])
            raw = b""
            with pytest.raises(aiohttp.ClientPayloadError):  # noqa: PT012
                async with r.session.post(
                    r.url("generate", "/v1/chat/completions"), json={}
                ) as resp:
                    async for chunk in resp.content.iter_any():
                        raw += chunk
            *whole, tail = raw.split(b"\n\n")
            assert len(whole) == 2  # two whole events, then half of the third
            assert tail.startswith(b"data: {")
            assert not tail.endswith(b"}")

    run(test)


def test_stream_error_event_in_anthropic_style() -> None:
    async def test() -> None:
        async with rig(("generate",), upstream=Upstream(tokens=4, spacing_s=0.01)) as r:
            await r.load(
                [_stream_fault("stream_error", after_tokens=1, style="anthropic", status=529)]
            )
            times, raw, ended = await _events(r)
            assert ended == "ok"  # a clean end after the error event
            assert len(times) == 2  # one token, then the error event's data
            assert raw.endswith(
                b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error",'
                b'"message":"Overloaded"}}\n\n'
            )

    run(test)


def test_stream_faults_leave_answers_that_do_not_stream_alone() -> None:
    async def test() -> None:
        async with rig(("generate",)) as r:
            await r.load([_stream_fault("stream_truncate", after_tokens=0)])
            async with r.session.post(
                r.url("generate", "/v1/chat/completions"), json={"stream": False}
            ) as resp:
                assert resp.status == 200
                assert (await resp.json())["choices"]

    run(test)


def test_stream_rate_and_bandwidth_pace_the_answer() -> None:
    async def test() -> None:
        async with rig(("generate",), upstream=Upstream(tokens=5, spacing_s=0.0)) as r:
            await r.load([_stream_fault("stream_rate", tokens_per_s=20)])
            times, _, _ = await _events(r)
            gaps = [b - a for a, b in itertools.pairwise(times)]
            assert all(g >= 0.045 for g in gaps), gaps
            await r.load([_stream_fault("bandwidth", bytes_per_s=100_000)])
            t0 = time.perf_counter()
            async with r.session.get(r.url("generate", "/big")) as resp:
                assert len(await resp.read()) == 20_000
            assert 0.17 < time.perf_counter() - t0 < 0.45

    run(test)


# --- the splitter --------------------------------------------------------------------------

STREAM = (
    b": comment\n\n"
    b'data: {"a": 1}\n\n'
    b"event: ping\n\n"
    b'data: {"b":\r\ndata: 2}\r\n\r\n'
    b"\n"
    b"data: [DONE]\n\n"
    b"data: tail-without-end"
)


def test_event_kinds() -> None:
    assert event_kind(b"data: x\n\n") == DATA
    assert event_kind(b"data\n\n") == DATA
    assert event_kind(b"data: [DONE]\n\n") == DONE
    assert event_kind(b"event: error\n\n") == OTHER
    assert event_kind(b": hi\n\n") == OTHER


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_splitter_finds_the_same_events_however_the_bytes_arrive(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(STREAM)]
    splitter = SseSplitter()
    events: list[tuple[bytes, int]] = []
    for a, b in itertools.pairwise(bounds):
        events.extend(splitter.feed(STREAM[a:b]))
    rest = splitter.rest()
    assert b"".join(e for e, _ in events) + rest == STREAM
    assert [k for _, k in events] == [OTHER, DATA, OTHER, DATA, DONE]
    assert rest == b"data: tail-without-end"
