"""Requests per endpoint kind, and answers read from recorded byte streams."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given, settings
from hypothesis import strategies as st

from ragstress.config.profile import EngineStep
from ragstress.driver.endpoints import (
    ERROR_MAX_CHARS,
    SYSTEM_PROMPT,
    MissingEnvError,
    ResponseReader,
    build_request,
    check_template,
    new_reader,
    outcome_for_status,
    parse_server_timing,
    prompt_messages,
    prompt_text,
)
from ragstress.driver.spec import EndpointSettings, ParsedResponse, ReplayRequest
from ragstress.reference.llm import build_app
from ragstress.reference.settings import EngineSettings, LlmSettings, approx_tokens

SSE = {"Content-Type": "text/event-stream"}
JSON = {"Content-Type": "application/json; charset=utf-8"}


def _req(**fields: Any) -> ReplayRequest:
    base: dict[str, Any] = {
        "id": 3,
        "at_s": 1.5,
        "query": "What is RAG?",
        "top_k": 5,
        "query_tokens": 3,
        "prompt_tokens": 40,
        "max_tokens": 16,
    }
    return ReplayRequest(**{**base, **fields})


def _endpoint(kind: str = "rag", **fields: Any) -> EndpointSettings:
    return EndpointSettings.model_validate(
        {"kind": kind, "target": "http://127.0.0.1:8000", **fields}
    )


def _tokens(messages: Sequence[Mapping[str, str]]) -> int:
    return sum(approx_tokens(m["content"]) for m in messages)


# --- requests ------------------------------------------------------------------------------


def test_rag_body_golden() -> None:
    http = build_request(_endpoint(), _req(), {})
    assert http.method == "POST"
    assert http.path == "/v1/rag"
    assert http.body == b'{"query":"What is RAG?","top_k":5,"stream":true,"max_tokens":16}'
    assert http.headers == {"content-type": "application/json", "accept": "text/event-stream"}


def test_rag_body_without_streaming_and_with_a_path() -> None:
    http = build_request(_endpoint(stream=False, path="/api/rag"), _req(), {})
    assert http.path == "/api/rag"
    assert json.loads(http.body) == {
        "query": "What is RAG?",
        "top_k": 5,
        "stream": False,
        "max_tokens": 16,
    }
    assert http.headers == {"content-type": "application/json"}


def test_openai_body_golden() -> None:
    # 6 tokens: the 1-token query whole, the system prompt cut to the 5 left
    http = build_request(
        _endpoint("openai-chat", model="m"), _req(query="Why?", prompt_tokens=6), {}
    )
    assert http.path == "/v1/chat/completions"
    assert http.body == (
        b'{"model":"m","messages":[{"role":"system","content":"You are a helpful as"},'
        b'{"role":"user","content":"Why?"}],"max_tokens":16,"stream":true,'
        b'"stream_options":{"include_usage":true}}'
    )
    assert http.headers["accept"] == "text/event-stream"


def test_openai_body_shape_and_exact_prompt_tokens() -> None:
    req = _req()
    body = json.loads(build_request(_endpoint("openai-chat"), req, {}).body)
    assert body["model"] == "ragstress-emulated"
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert body["messages"][0]["content"] == SYSTEM_PROMPT[: 20 * 4]  # 20 tokens, whole
    user = body["messages"][1]["content"]
    assert user.startswith("What is RAG? ")  # the query, then filler words
    assert _tokens(body["messages"]) == 40
    assert body["max_tokens"] == 16
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    plain = json.loads(build_request(_endpoint("openai-chat", stream=False), req, {}).body)
    assert plain["stream"] is False
    assert "stream_options" not in plain


@settings(max_examples=300, deadline=None)
@given(
    query=st.text(min_size=1, max_size=400),
    prompt_tokens=st.integers(min_value=1, max_value=5000),
)
def test_prompt_token_count_is_exact(query: str, prompt_tokens: int) -> None:
    req = _req(query=query, prompt_tokens=prompt_tokens)
    messages = prompt_messages(req)
    assert _tokens(messages) == prompt_tokens
    assert approx_tokens(prompt_text(req)) == prompt_tokens
    if prompt_tokens >= 2:
        assert [m["role"] for m in messages] == ["system", "user"]
        assert all(m["content"] for m in messages)
    if approx_tokens(query) < prompt_tokens:  # the query fits: it is sent whole, first
        assert messages[-1]["content"].startswith(query)
        assert prompt_text(req).startswith(query)
    assert prompt_messages(req) == messages  # deterministic


def test_prompts_differ_after_the_system_message() -> None:
    a = prompt_messages(_req(query="first question", prompt_tokens=500))
    b = prompt_messages(_req(query="second question", prompt_tokens=500))
    assert a[0] == b[0]
    assert a[1]["content"][:5] != b[1]["content"][:5]


def test_template_substitution_and_escaping() -> None:
    template = (
        '{"q": "{{query}}", "k": {{top_k}}, "n": {{ max_tokens }}, "p": "{{prompt}}", '
        '"pt": {{prompt_tokens}}, "id": "req-{{id}}"}'
    )
    endpoint = _endpoint("template", path="/generate", body_template=template, stream=False)
    check_template(endpoint)
    query = 'say "hi" \\ then\nnewline\tand ünïcode </script>'
    req = _req(query=query, prompt_tokens=30)
    http = build_request(endpoint, req, {})
    assert http.path == "/generate"
    body = json.loads(http.body)
    assert body == {
        "q": query,
        "k": 5,
        "n": 16,
        "p": prompt_text(req),
        "pt": 30,
        "id": "req-3",
    }
    assert approx_tokens(body["p"]) == 30
    assert http.headers == {"content-type": "application/json"}


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ({"path": "/x", "body_template": '{"q": "{{qeury}}"}'}, r"unknown placeholder '\{\{qeury"),
        ({"path": "/x", "body_template": '{"q": "{{ bad-name }}"}'}, "bad-name"),
        ({"path": "/x", "body_template": '{"q": {{query}}}'}, "not valid JSON"),
        ({"path": "/x", "body_template": '{"q": "{{query}}",}'}, "not valid JSON"),
        ({"path": "/x"}, "needs a body_template"),
        ({"body_template": "{}"}, "needs a path"),
    ],
)
def test_bad_templates(fields: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        check_template(_endpoint("template", **fields))


def test_check_template_ignores_other_kinds() -> None:
    check_template(_endpoint("rag"))
    check_template(_endpoint("openai-chat"))


def test_headers_as_written_and_from_the_environment() -> None:
    endpoint = _endpoint(
        "openai-chat",
        headers={"X-Org": "research", "Content-Type": "application/json; charset=utf-8"},
        header_env={"Authorization": "RAGSTRESS_TEST_KEY"},
    )
    http = build_request(endpoint, _req(), {"RAGSTRESS_TEST_KEY": "Bearer sk-secret-123"})
    assert http.headers == {
        "accept": "text/event-stream",
        "X-Org": "research",
        "Content-Type": "application/json; charset=utf-8",
        "Authorization": "Bearer sk-secret-123",
    }


@pytest.mark.parametrize("environ", [{}, {"RAGSTRESS_TEST_KEY": ""}])
def test_missing_env_names_header_and_variable_never_a_value(environ: dict[str, str]) -> None:
    secret = "sk-very-secret-value-42"
    endpoint = _endpoint(header_env={"X-Other": "OTHER_KEY", "Authorization": "RAGSTRESS_TEST_KEY"})
    with pytest.raises(MissingEnvError) as caught:
        build_request(endpoint, _req(), {**environ, "OTHER_KEY": secret})
    err = caught.value
    assert isinstance(err, ValueError)
    assert err.header == "Authorization"
    assert err.variable == "RAGSTRESS_TEST_KEY"
    for text in (str(err), repr(err), str(err.args), str(vars(err))):
        assert "Authorization" in text
        assert "RAGSTRESS_TEST_KEY" in text
        assert secret not in text


# --- answers -------------------------------------------------------------------------------


def _read(
    kind: str,
    status: int,
    headers: Mapping[str, str],
    lines: Iterable[tuple[float, bytes]] = (),
    *,
    body: tuple[float, bytes] | None = None,
    error: tuple[str, str, float] | None = None,
    end: float = 99.0,
) -> ParsedResponse:
    reader = new_reader(_endpoint(kind, path="/x", body_template="{}"))
    reader.on_headers(status, headers, 1.0)
    if body is not None:
        assert not reader.wants_lines()
        reader.on_body(body[1], body[0])
    else:
        for at, line in lines:
            reader.on_line(line, at)
    if error is not None:
        reader.on_transport_error(*error)
    return reader.finish(end)


def _sse(
    *events: tuple[str | None, Any], start: float = 2.0, step: float = 0.1
) -> list[tuple[float, bytes]]:
    """SSE lines as a server writes them, each event at its own time: ``(event, data)``,
    ``event`` None for a data-only event; data a string is written as is, else as JSON."""
    out: list[tuple[float, bytes]] = []
    for k, (event, data) in enumerate(events):
        at = start + k * step
        if event is not None:
            out.append((at, f"event: {event}\n".encode()))
        text = data if isinstance(data, str) else json.dumps(data)
        out.append((at, f"data: {text}\n".encode()))
        out.append((at, b"\n"))
    return out


RAG_TIMING = (
    "embed;dur=4.500, retrieve;dur=2.000, generate;dur=120.250, ttft;dur=50.000, "
    "total;dur=130.000, cache;desc=miss"
)


def test_rag_json_ok() -> None:
    body = {
        "answer": "the and for",
        "sources": [],
        "usage": {"prompt_tokens": 100, "completion_tokens": 20},
        "outcome": "ok",
        "attempts": {"embed": 1, "retrieve": 1, "generate": 2},
    }
    headers = {
        **JSON,
        "X-Ragstress-Outcome": "ok",
        "X-Ragstress-Attempts": "4",
        "Server-Timing": RAG_TIMING,
    }
    got = _read("rag", 200, headers, body=(3.25, json.dumps(body).encode()))
    assert got.outcome == "ok"
    assert got.status == 200
    assert got.attempts == 4
    assert (got.tokens_in, got.tokens_out) == (100, 20)
    assert got.stages == pytest.approx({"embed": 0.0045, "retrieve": 0.002, "generate": 0.12025})
    assert got.first_token_at == got.last_byte_at == 3.25  # a whole answer: its last byte
    assert got.error == ""


def test_rag_json_degraded_and_skipped_stage() -> None:
    body: dict[str, Any] = {
        "answer": "extract",
        "usage": None,
        "outcome": "ok_degraded",
        "attempts": {},
    }
    headers = {
        **JSON,
        "x-ragstress-outcome": "ok_degraded",
        "server-timing": "embed;dur=4, retrieve;dur=2, generate;dur=0.000, total;dur=7",
    }
    got = _read("rag", 200, headers, body=(2.0, json.dumps(body).encode()))
    assert got.outcome == "ok_degraded"
    assert got.stages == pytest.approx({"embed": 0.004, "retrieve": 0.002})  # 0: did not run
    assert got.attempts == 1  # no header: the body's (empty) attempts, else 1


def test_rag_json_outcome_from_the_body_without_the_header() -> None:
    body = {"answer": "x", "outcome": "ok_degraded", "attempts": {"embed": 2, "generate": 1}}
    got = _read("rag", 200, JSON, body=(2.0, json.dumps(body).encode()))
    assert got.outcome == "ok_degraded"
    assert got.attempts == 3


def test_rag_json_that_is_not_json() -> None:
    got = _read("rag", 200, JSON, body=(2.0, b"<html>proxy</html>"))
    assert got.outcome == "error_stream"
    assert "not a JSON object" in got.error


def _gateway_error(kind: str, message: str = "it failed") -> bytes:
    return json.dumps(
        {"error": {"kind": kind, "stage": "generate", "message": message, "cause": kind}}
    ).encode()


@pytest.mark.parametrize(
    ("status", "headers", "body", "outcome"),
    [
        (504, {"x-ragstress-outcome": "timeout"}, _gateway_error("timeout"), "timeout"),
        (503, {}, _gateway_error("breaker_open"), "breaker_open"),  # from the body's kind
        (502, {"x-ragstress-outcome": "error_429"}, _gateway_error("error_429"), "error_429"),
        (502, {}, _gateway_error("error_connect"), "error_connect"),
        (400, {}, _gateway_error("bad_request", "top_k must be an integer"), "error_5xx"),
        (429, {}, b"slow down", "error_429"),
        (408, {}, b"", "timeout"),
        (504, {}, b"gateway timeout", "timeout"),
        (503, {}, b"unavailable", "error_5xx"),
        (500, {}, b"boom", "error_5xx"),
        (404, {}, b"no such path", "error_5xx"),
        (502, {"x-ragstress-outcome": "ok"}, b"", "error_5xx"),  # ok is not a failure
    ],
)
def test_rag_error_statuses(
    status: int, headers: dict[str, str], body: bytes, outcome: str
) -> None:
    got = _read(
        "rag",
        status,
        {**JSON, "x-ragstress-attempts": "3", **headers},
        body=(4.0, body),
    )
    assert got.outcome == outcome
    assert got.status == status
    assert got.attempts == 3
    assert got.error.startswith(f"HTTP {status}: ")
    assert got.last_byte_at == 4.0


def test_error_messages_are_one_short_line() -> None:
    got = _read("rag", 502, JSON, body=(4.0, _gateway_error("error_5xx", "x\n" * 500)))
    assert len(got.error) <= ERROR_MAX_CHARS
    assert "\n" not in got.error
    assert got.error.startswith("HTTP 502: x x x")
    empty = _read("openai-chat", 500, JSON, body=(4.0, b""))
    assert empty.error == "HTTP 500: (empty body)"


def _rag_stream(done: bool = True, outcome: str = "ok") -> list[tuple[float, bytes]]:
    events: list[tuple[str | None, Any]] = [
        ("sources", {"sources": [{"chunk_id": 1, "title": "t", "text": "s"}]}),
        ("token", {"text": "the "}),
        ("token", {"text": "and "}),
        ("token", {"text": "for "}),
    ]
    if done:
        events.append(
            (
                "done",
                {
                    "usage": {"prompt_tokens": 321, "completion_tokens": 3},
                    "outcome": outcome,
                    "attempts": {"embed": 1, "retrieve": 1, "generate": 2},
                    "timings": {
                        "embed_ms": 5.0,
                        "retrieve_ms": 3.0,
                        "generate_ms": 250.0,
                        "ttft_ms": 80.0,
                        "total_ms": 260.0,
                    },
                },
            )
        )
    return _sse(*events)


def test_rag_stream_ok() -> None:
    reader = new_reader(_endpoint())
    reader.on_headers(200, {"content-type": "text/event-stream"}, 1.0)
    assert reader.wants_lines()
    for at, line in _rag_stream():
        reader.on_line(line, at)
    got = reader.finish(9.0)
    assert got.outcome == "ok"
    assert got.first_token_at == pytest.approx(2.1)  # the first token event's line
    assert got.last_byte_at == pytest.approx(2.4)  # the done event
    assert (got.tokens_in, got.tokens_out) == (321, 3)
    assert got.attempts == 4
    assert got.stages == pytest.approx({"embed": 0.005, "retrieve": 0.003, "generate": 0.25})
    assert reader.finish(10.0) is got  # idempotent


def test_rag_stream_degraded() -> None:
    got = _read("rag", 200, SSE, _rag_stream(outcome="ok_degraded"))
    assert got.outcome == "ok_degraded"


def test_rag_stream_without_done_is_broken() -> None:
    got = _read("rag", 200, SSE, _rag_stream(done=False), end=5.0)
    assert got.outcome == "error_stream"
    assert "without a done event" in got.error
    assert got.first_token_at == pytest.approx(2.1)
    assert got.last_byte_at == pytest.approx(2.3)  # the last line that arrived
    assert got.tokens_out == 3  # counted, no usage
    assert got.tokens_in == 0


@pytest.mark.parametrize(
    ("kind", "outcome"), [("error_stream", "error_stream"), ("timeout", "timeout")]
)
def test_rag_stream_error_event(kind: str, outcome: str) -> None:
    lines = _rag_stream(done=False) + _sse(
        (
            "error",
            {
                "kind": kind,
                "stage": "generate",
                "message": "the LLM stream broke",
                "attempts": {"embed": 1, "retrieve": 1, "generate": 1},
            },
        ),
        start=3.0,
    )
    got = _read("rag", 200, SSE, lines)
    assert got.outcome == outcome
    assert got.attempts == 3
    assert "the LLM stream broke" in got.error
    assert got.first_token_at == pytest.approx(2.1)


def test_sse_lines_without_newlines_and_with_crlf() -> None:
    stripped = [(at, line.rstrip(b"\n")) for at, line in _rag_stream()]
    assert _read("rag", 200, SSE, stripped).outcome == "ok"
    crlf = [(at, line.rstrip(b"\n") + b"\r\n") for at, line in _rag_stream()]
    got = _read("rag", 200, {"content-type": "text/event-stream; charset=utf-8"}, crlf)
    assert got.outcome == "ok"
    assert got.tokens_out == 3


def test_a_stream_given_whole_is_read_as_a_stream() -> None:
    reader = new_reader(_endpoint())
    reader.on_headers(200, SSE, 1.0)
    reader.on_body(b"".join(line for _, line in _rag_stream()), 2.5)
    got = reader.finish(3.0)
    assert got.outcome == "ok"
    assert got.first_token_at == got.last_byte_at == 2.5


def _chunk(content: str | None = None, *, role: bool = False, usage: Any = None) -> dict[str, Any]:
    """A chunk as the reference LLM writes it (``ragstress.reference.llm``)."""
    if content is None:
        choices: list[dict[str, Any]] = []
    else:
        delta: dict[str, str] = {"content": content}
        if role:
            delta = {"role": "assistant", **delta}
        choices = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}]
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": choices,
        "usage": usage,
    }


def _openai_stream(*, usage: bool = True, done: bool = True) -> list[tuple[float, bytes]]:
    events: list[tuple[str | None, Any]] = [
        (None, _chunk("", role=True)),  # a role-only first chunk: not a token
        (None, _chunk("the ")),
        (None, _chunk("and ")),
        (None, _chunk("for ")),
        (
            None,
            {
                **_chunk(),
                "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}],
            },
        ),
    ]
    if usage:
        events.append(
            (None, _chunk(usage={"prompt_tokens": 40, "completion_tokens": 3, "total_tokens": 43}))
        )
    if done:
        events.append((None, "[DONE]"))
    return _sse(*events)


def test_openai_stream_with_usage() -> None:
    got = _read("openai-chat", 200, SSE, _openai_stream())
    assert got.outcome == "ok"
    assert got.first_token_at == pytest.approx(2.1)
    assert got.last_byte_at == pytest.approx(2.6)  # [DONE]
    assert (got.tokens_in, got.tokens_out) == (40, 3)
    assert got.attempts == 1
    assert got.stages == {}


def test_openai_stream_without_usage_counts_chunks() -> None:
    got = _read("openai-chat", 200, SSE, _openai_stream(usage=False))
    assert got.outcome == "ok"
    assert (got.tokens_in, got.tokens_out) == (0, 3)


def test_openai_stream_without_done_is_broken() -> None:
    got = _read("openai-chat", 200, SSE, _openai_stream(done=False))
    assert got.outcome == "error_stream"
    assert "[DONE]" in got.error


def test_openai_stream_with_an_error_object() -> None:
    lines = _openai_stream(done=False)[:6] + _sse(
        (None, {"error": {"message": "upstream overloaded", "type": "server_error"}}),
        start=5.0,
    )
    got = _read("openai-chat", 200, SSE, lines)
    assert got.outcome == "error_stream"
    assert got.error == "upstream overloaded"
    assert got.tokens_out == 2


def test_openai_json_answer() -> None:
    body = {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "the and "}}],
        "usage": {"prompt_tokens": 40, "completion_tokens": 2, "total_tokens": 42},
    }
    got = _read("openai-chat", 200, JSON, body=(3.0, json.dumps(body).encode()))
    assert (got.outcome, got.tokens_in, got.tokens_out) == ("ok", 40, 2)
    assert got.first_token_at == got.last_byte_at == 3.0
    del body["usage"]
    bare = _read("openai-chat", 200, JSON, body=(3.0, json.dumps(body).encode()))
    assert (bare.tokens_in, bare.tokens_out) == (0, 2)  # by the 4-characters rule


def test_openai_errors() -> None:
    body = json.dumps(
        {"error": {"message": "Rate limit reached", "type": "rate_limit", "code": None}}
    ).encode()
    got = _read("openai-chat", 429, {**JSON, "x-ragstress-outcome": "timeout"}, body=(2.0, body))
    assert got.outcome == "error_429"  # the gateway's header means nothing from an LLM
    assert got.error == "HTTP 429: Rate limit reached"
    ok_status_error = _read("openai-chat", 200, JSON, body=(2.0, body))
    assert ok_status_error.outcome == "error_5xx"


def test_template_stream_and_json() -> None:
    lines = _sse((None, {"text": "a"}), (None, {"text": "b"}), (None, "not json"), start=2.0)
    got = _read("template", 200, SSE, lines)
    assert got.outcome == "ok"
    assert got.first_token_at == pytest.approx(2.0)  # the first data: line
    assert got.last_byte_at == pytest.approx(2.2)
    assert got.tokens_out == 3
    with_usage = lines + _sse((None, {"usage": {"input_tokens": 9, "output_tokens": 2}}), start=3)
    assert _read("template", 200, SSE, with_usage).tokens_in == 9
    broken = lines + _sse(("error", {"message": "gone"}), start=3.0)
    assert _read("template", 200, SSE, broken).outcome == "error_stream"
    whole = _read(
        "template",
        200,
        {**JSON, "server-timing": "retrieve;dur=12"},
        body=(4.0, b'{"output": "x", "usage": {"prompt_tokens": 7, "completion_tokens": 1}}'),
    )
    assert whole.outcome == "ok"
    assert whole.first_token_at == whole.last_byte_at == 4.0
    assert (whole.tokens_in, whole.tokens_out) == (7, 1)
    assert whole.stages == pytest.approx({"retrieve": 0.012})
    text = _read("template", 200, {"content-type": "text/plain"}, body=(4.0, b"plain answer"))
    assert text.outcome == "ok"
    refused = _read("template", 503, JSON, body=(4.0, b"busy"))
    assert (refused.outcome, refused.error) == ("error_5xx", "HTTP 503: busy")


def test_transport_errors_before_an_answer() -> None:
    for outcome in ("error_connect", "timeout"):
        reader = new_reader(_endpoint())
        reader.on_transport_error(outcome, "connection refused", 1.5)
        got = reader.finish(2.0)
        assert (got.outcome, got.status, got.error) == (outcome, 0, "connection refused")
        assert got.last_byte_at == 1.5
        assert got.first_token_at is None
    odd = ResponseReader("rag")
    odd.on_transport_error("weird", "?", 1.0)
    assert odd.finish(2.0).outcome == "error_connect"
    silent = ResponseReader("rag")
    assert silent.finish(2.0).outcome == "error_connect"


@pytest.mark.parametrize("kind", ["rag", "openai-chat"])
def test_transport_errors_mid_stream(kind: str) -> None:
    lines = _rag_stream(done=False) if kind == "rag" else _openai_stream(done=False)
    reset = _read(kind, 200, SSE, lines, error=("error_connect", "connection reset", 7.0))
    assert reset.outcome == "error_stream"  # after the 200: the stream broke
    assert reset.error == "connection reset"
    assert reset.status == 200
    assert reset.last_byte_at == 7.0
    timeout = _read(kind, 200, SSE, lines, error=("timeout", "no complete answer", 8.0))
    assert timeout.outcome == "timeout"
    stalled = _read(kind, 200, SSE, lines, error=("error_stream", "stalled", 8.0))
    assert stalled.outcome == "error_stream"


def test_transport_error_after_the_end_marker_changes_nothing() -> None:
    got = _read("rag", 200, SSE, _rag_stream(), error=("error_connect", "reset", 7.0))
    assert got.outcome == "ok"
    assert got.last_byte_at == pytest.approx(2.4)
    openai = _read("openai-chat", 200, SSE, _openai_stream(), error=("timeout", "late", 7.0))
    assert openai.outcome == "ok"


def test_transport_error_reading_a_whole_body() -> None:
    got = _read("rag", 200, JSON, error=("error_connect", "reset", 3.0))
    assert got.outcome == "error_stream"
    refused = _read("rag", 503, JSON, error=("error_connect", "reset", 3.0))
    assert refused.outcome == "error_5xx"
    assert refused.last_byte_at == 3.0


def test_wants_lines_follows_the_content_type() -> None:
    reader = new_reader(_endpoint())
    reader.on_headers(200, {"CONTENT-TYPE": "Text/Event-Stream; charset=utf-8"}, 1.0)
    assert reader.wants_lines()
    json_reader = new_reader(_endpoint())
    json_reader.on_headers(200, JSON, 1.0)
    assert not json_reader.wants_lines()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            RAG_TIMING,
            {"embed": 0.0045, "retrieve": 0.002, "generate": 0.12025, "ttft": 0.05, "total": 0.13},
        ),
        ("db;dur=53, app;dur=47.2", {"db": 0.053, "app": 0.0472}),
        ('cache;desc="Cache Read";dur=23.2', {"cache": 0.0232}),
        ("  a ; DUR = 1 ,b;dur=2", {"a": 0.001, "b": 0.002}),
        ("a;dur=abc, b;dur=-1, c;dur=inf, d;dur, e, ;dur=3, f;dur=4", {"f": 0.004}),
        ("a;dur=1, a;dur=2", {"a": 0.001}),
        ("", {}),
        ("garbage ;;; ,,, ==", {}),
    ],
)
def test_parse_server_timing(value: str, expected: dict[str, float]) -> None:
    assert parse_server_timing(value) == pytest.approx(expected)


def test_outcome_for_status() -> None:
    assert outcome_for_status(429) == "error_429"
    assert outcome_for_status(408) == "timeout"
    assert outcome_for_status(504) == "timeout"
    assert outcome_for_status(503) == "error_5xx"
    assert outcome_for_status(418) == "error_5xx"


# --- against the reference LLM, in process on 127.0.0.1 ------------------------------------


def _llm_settings() -> LlmSettings:
    return LlmSettings(
        engine=EngineSettings(step=EngineStep(base_s=0.002, per_decode_seq_s=0.0001))
    )


@pytest.mark.parametrize("stream", [True, False])
def test_openai_chat_against_the_reference_llm(stream: bool) -> None:
    """The reference LLM counts exactly the prompt tokens the driver meant to send, and the
    reader reads its answers as they are written."""
    endpoint = _endpoint("openai-chat", stream=stream)
    req = _req(query="How do retrieval pipelines fail under load?", prompt_tokens=777)
    http = build_request(endpoint, req, {})

    async def go() -> ParsedResponse:
        loop = asyncio.get_running_loop()
        async with TestClient(TestServer(build_app(_llm_settings()), host="127.0.0.1")) as client:
            resp = await client.post(http.path, data=http.body, headers=http.headers)
            reader = new_reader(endpoint)
            reader.on_headers(resp.status, dict(resp.headers), loop.time())
            if reader.wants_lines():
                async for line in resp.content:
                    reader.on_line(line, loop.time())
            else:
                reader.on_body(await resp.read(), loop.time())
            return reader.finish(loop.time())

    got = asyncio.run(go())
    assert got.outcome == "ok"
    assert got.status == 200
    assert (got.tokens_in, got.tokens_out) == (777, 16)
    assert got.first_token_at is not None
    assert got.last_byte_at is not None
    if stream:
        assert got.first_token_at < got.last_byte_at
    else:
        assert got.first_token_at == got.last_byte_at
