"""What a provider's error looks like on the wire: bodies, headers, and stream error events.

Clients act on these details — openai-python and anthropic-sdk-python read ``retry-after-ms``
before ``retry-after``, obey ``x-should-retry``, and raise the error type named in the body —
so an injected error is only a fair test when it looks like the real one.

- OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}`` with ``x-request-id``;
  a 429 has type ``requests`` or ``tokens`` and code ``rate_limit_exceeded``; an error inside
  a stream is a ``data:`` event carrying the same object.
- Anthropic's shape: ``{"type": "error", "error": {"type", "message"}, "request_id"}`` with
  ``request-id``; types ``rate_limit_error`` (429), ``overloaded_error`` (529),
  ``api_error`` (500, 502, 503), ``timeout_error`` (408, 504); an error inside a stream is
  ``event: error`` with that object.

Retry hints (:func:`retry_headers`): ``retry-after-ms`` is the wait in milliseconds, exact to
the microsecond; ``retry-after`` is whole seconds rounded *up* (RFC 9110 allows only whole
seconds; rounding up means a client that waits that long is not early), exactly as
:func:`ragstress.model.ratelimit.retry_after_header_s` rounds a simulated one.
"""

from __future__ import annotations

import json
import math
import uuid
from typing import Final

from aiohttp import web

from ragstress.chaos.faults import ErrorStyle
from ragstress.model.ratelimit import retry_after_header_s

__all__ = [
    "error_body",
    "error_response",
    "format_ms",
    "retry_headers",
    "stream_error_event",
]

_OPENAI: Final[dict[int, tuple[str, str, str | None]]] = {
    408: ("Request timed out.", "server_error", "timeout"),
    429: ("Rate limit reached. Please try again later.", "requests", "rate_limit_exceeded"),
    500: (
        "The server had an error while processing your request. Sorry about that!",
        "server_error",
        None,
    ),
    502: ("Bad gateway.", "server_error", None),
    503: ("The server is overloaded or not ready yet.", "server_error", None),
    504: ("Gateway timeout.", "server_error", None),
    529: ("The server is overloaded.", "server_error", "overloaded"),
}
_ANTHROPIC: Final[dict[int, tuple[str, str]]] = {
    408: ("timeout_error", "Request timed out"),
    429: ("rate_limit_error", "Rate limit exceeded. Please try again later."),
    500: ("api_error", "Internal server error"),
    502: ("api_error", "Bad gateway"),
    503: ("api_error", "Service unavailable"),
    504: ("timeout_error", "Gateway timeout"),
    529: ("overloaded_error", "Overloaded"),
}


def format_ms(seconds: float) -> str:
    """``seconds`` as milliseconds, exact to the microsecond: 0.3 → ``"300"``, 0.0015 →
    ``"1.5"`` (no float noise such as ``1100.0000000000002``)."""
    ms = round(seconds * 1000.0, 3)
    if ms == int(ms):
        return str(int(ms))
    return f"{ms:.3f}".rstrip("0").rstrip(".")


def retry_headers(retry_after_s: float | None) -> dict[str, str]:
    """``retry-after`` (whole seconds, rounded up) and ``retry-after-ms`` (exact); none for
    ``None`` or an infinite wait (a request that can never be admitted must not be retried)."""
    if retry_after_s is None or math.isinf(retry_after_s):
        return {}
    whole = retry_after_header_s(retry_after_s)
    return {"retry-after": str(int(whole)), "retry-after-ms": format_ms(retry_after_s)}


def _request_id() -> str:
    return f"req_{uuid.uuid4().hex}"


def error_body(
    status: int,
    style: ErrorStyle,
    *,
    message: str | None = None,
    openai_type: str | None = None,
    code: str | None = None,
) -> dict[str, object]:
    """The JSON body a provider of ``style`` sends with ``status``.

    ``openai_type`` / ``code`` replace OpenAI's defaults (a token-limit 429 has type
    ``tokens``)."""
    if style == "anthropic":
        kind, text = _ANTHROPIC.get(status, ("api_error", "Internal server error"))
        return {
            "type": "error",
            "error": {"type": kind, "message": message or text},
            "request_id": _request_id(),
        }
    text, kind, default_code = _OPENAI.get(status, _OPENAI[500])
    return {
        "error": {
            "message": message or text,
            "type": openai_type or kind,
            "param": None,
            "code": code if code is not None else default_code,
        }
    }


def error_response(
    status: int,
    style: ErrorStyle,
    *,
    retry_after_s: float | None = None,
    x_should_retry: bool | None = None,
    message: str | None = None,
    openai_type: str | None = None,
    code: str | None = None,
    extra_headers: dict[str, str] | None = None,
) -> web.Response:
    """A complete error answer: body, content type, request id and retry hints."""
    body = error_body(status, style, message=message, openai_type=openai_type, code=code)
    headers = retry_headers(retry_after_s)
    if x_should_retry is not None:
        headers["x-should-retry"] = "true" if x_should_retry else "false"
    rid = body.get("request_id")
    headers["request-id" if style == "anthropic" else "x-request-id"] = (
        rid if isinstance(rid, str) else _request_id()
    )
    if extra_headers:
        headers.update(extra_headers)
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type="application/json",
        headers=headers,
    )


def stream_error_event(status: int, style: ErrorStyle) -> bytes:
    """The SSE event a provider of ``style`` sends when a started stream fails."""
    body = error_body(status, style)
    body.pop("request_id", None)  # Anthropic's stream error event carries none
    data = json.dumps(body, separators=(",", ":"))
    if style == "anthropic":
        return f"event: error\ndata: {data}\n\n".encode()
    return f"data: {data}\n\n".encode()
