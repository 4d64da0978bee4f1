"""Server-sent events cut into whole events, so stream faults act between tokens.

The proxy counts tokens as the model does for a streaming stage: one ``data:`` event is one
token (an OpenAI chat chunk carries one token; the final chunk and the usage chunk count too,
``data: [DONE]`` does not). The splitter works on raw bytes and never decodes or re-encodes:
every byte the upstream sent goes out unchanged, only the moments differ.
"""

from __future__ import annotations

from typing import Final

__all__ = ["DATA", "DONE", "OTHER", "SseSplitter", "event_kind"]

DATA: Final = 1
"""An event with a ``data:`` line: a token."""
DONE: Final = 2
"""``data: [DONE]``: OpenAI's end marker, not a token."""
OTHER: Final = 0
"""Comments, ``retry:``, an ``event:`` without data: not dispatched, not a token."""


def event_kind(event: bytes) -> int:
    """:data:`DATA`, :data:`DONE` or :data:`OTHER` for one whole event."""
    data: list[bytes] = []
    for raw in event.split(b"\n"):
        line = raw.rstrip(b"\r")
        if line.startswith(b"data:"):
            data.append(line[5:].removeprefix(b" "))
        elif line == b"data":
            data.append(b"")
    if not data:
        return OTHER
    if len(data) == 1 and data[0].strip() == b"[DONE]":
        return DONE
    return DATA


class SseSplitter:
    """Feed bytes as they arrive; get back each event once its blank line has arrived.

    An event is returned with its terminating blank line, so concatenating everything
    returned (plus :meth:`rest`) gives back the input exactly."""

    __slots__ = ("_buf", "_scan")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._scan = 0  # where to look for the next line end

    def feed(self, data: bytes) -> list[tuple[bytes, int]]:
        """Whole events completed by ``data``, with their kind, in order."""
        buf = self._buf
        buf += data
        out: list[tuple[bytes, int]] = []
        start = 0
        pos = self._scan
        while True:
            nl = buf.find(b"\n", pos)
            if nl < 0:
                break
            # the line that ends at nl is blank when it is empty or a lone "\r"
            line_start = pos
            blank = nl == line_start or (nl == line_start + 1 and buf[line_start] == 0x0D)
            pos = nl + 1
            if blank:
                if line_start == start:
                    continue  # blank lines between events: keep them with the next event
                event = bytes(buf[start:pos])
                out.append((event, event_kind(event)))
                start = pos
        if start:
            del buf[:start]
            pos -= start
        self._scan = pos
        return out

    def rest(self) -> bytes:
        """Bytes of an event the stream ended before finishing (emptied)."""
        rest = bytes(self._buf)
        self._buf.clear()
        self._scan = 0
        return rest
