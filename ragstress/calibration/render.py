"""A profile as YAML text with comments: the calibrated profile, each fitted key under a
comment saying how it was fitted. Pure: returns text.

PyYAML cannot write comments, so the text is generated here from the profile's JSON-mode
data (the keys the original file set, plus the fitted ones) in a stable order — ``kind`` and
``name`` first, then the model's field order — in the style of the shipped profiles: short
mappings and lists in flow style on one line (``service: {kind: lognormal, mean: 0.02}``),
the rest in block style. Scalars are written by PyYAML's own representer (so ``1e-05`` comes
out as ``1.0e-05``, which YAML 1.1 reads back as a float, not a string); strings are plain
where that reads back as the same string, else JSON-quoted (valid YAML double quotes).
:func:`ragstress.calibration.files.calibrate_files` loads the text back and checks it gives
the same profile before writing it.
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import yaml

from ragstress.config.profile import Profile

__all__ = ["WIDTH", "render_profile"]

WIDTH = 100
_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.+/-]*$")
CommentKey = tuple[str, str | None]


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return yaml.safe_dump(value).split("\n", 1)[0]
    text = str(value)
    if _PLAIN.fullmatch(text) and yaml.safe_load(text) == text:
        return text
    return json.dumps(text, ensure_ascii=False)


def _key(key: Any) -> str:
    return _scalar(str(key))


def _ordered(data: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """``kind`` and ``name`` first (what a reader looks for), then the rest as given."""
    first = [k for k in ("kind", "name") if k in data]
    return [(k, data[k]) for k in first] + [(k, v) for k, v in data.items() if k not in first]


def _flow(value: Any) -> str:
    if isinstance(value, Mapping):
        inner = ", ".join(f"{_key(k)}: {_flow(v)}" for k, v in _ordered(value))
        return "{" + inner + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    return _scalar(value)


def _clean(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)


def _comment(text: str, indent: int) -> list[str]:
    pad = " " * indent
    width = max(WIDTH - indent - 2, 40)
    return [f"{pad}# {line}" for line in textwrap.wrap(_clean(text), width)] or [f"{pad}#"]


def _wrapped_list(prefix: str, items: Sequence[Any], indent: int) -> list[str]:
    """A long flow list over several lines, continuation lines indented under its key."""
    words = [_flow(v) for v in items]
    lines: list[str] = []
    line = prefix + "["
    cont = " " * (indent + 4)
    for k, word in enumerate(words):
        piece = word + ("]" if k == len(words) - 1 else ",")
        candidate = piece if line.endswith("[") else " " + piece
        if len(line) + len(candidate) > WIDTH and not line.endswith("["):
            lines.append(line)
            line = cont + piece
        else:
            line += candidate
    lines.append(line)
    return lines


def _mapping(
    data: Mapping[str, Any],
    indent: int,
    comments: Callable[[str], Sequence[str]],
) -> list[str]:
    pad = " " * indent
    lines: list[str] = []
    for key, value in _ordered(data):
        for text in comments(key):
            lines.extend(_comment(text, indent))
        head = f"{pad}{_key(key)}:"
        if isinstance(value, Mapping | list | tuple) and value:
            flow = _flow(value)
            if len(head) + 1 + len(flow) <= WIDTH:
                lines.append(f"{head} {flow}")
            elif isinstance(value, Mapping):
                lines.append(head)
                lines.extend(_mapping(value, indent + 2, _none))
            elif all(not isinstance(v, Mapping | list | tuple) for v in value):
                lines.extend(_wrapped_list(head + " ", value, indent))
            else:
                lines.append(head)
                for item in value:
                    lines.extend(_item(item, indent + 2, _none, ()))
        elif isinstance(value, Mapping):
            lines.append(f"{head} {{}}")
        elif isinstance(value, list | tuple):
            lines.append(f"{head} []")
        else:
            lines.append(f"{head} {_scalar(value)}")
    return lines


def _none(key: str) -> Sequence[str]:
    del key
    return ()


def _item(
    value: Any,
    indent: int,
    comments: Callable[[str], Sequence[str]],
    above: Sequence[str],
) -> list[str]:
    """One list item at ``indent`` (the dash's column), with comment lines ``above`` it."""
    lines: list[str] = []
    for text in above:
        lines.extend(_comment(text, indent))
    if isinstance(value, Mapping) and value:
        body = _mapping(value, indent + 2, comments)
        # the dash goes on the first key line; comments above that key stay where they are
        j = next(k for k, line in enumerate(body) if not line.lstrip().startswith("#"))
        body[j] = " " * indent + "- " + body[j][indent + 2 :]
        lines.extend(body)
    else:
        lines.append(f"{' ' * indent}- {_flow(value)}")
    return lines


def _stage_comments(
    notes: Mapping[CommentKey, Sequence[str]], stage: str
) -> Callable[[str], Sequence[str]]:
    def lookup(key: str) -> Sequence[str]:
        return notes.get((stage, key), ())

    return lookup


def render_profile(
    profile: Profile,
    *,
    header: Sequence[str] = (),
    comments: Mapping[CommentKey, Sequence[str]] | None = None,
) -> str:
    """YAML text for ``profile`` (the keys its source set, see the module docstring).

    ``header``: comment lines at the top. ``comments``: text written above a stage's key,
    ``(stage, key)``, or above the stage itself, ``(stage, None)``; long text is wrapped.
    """
    notes = comments or {}
    data = profile.model_dump(mode="json", exclude_unset=True)
    lines: list[str] = []
    for text in header:
        lines.extend(_comment(text, 0))
    for key, value in data.items():
        if key != "stages":
            lines.extend(_mapping({key: value}, 0, _none))
            continue
        lines.append("stages:")
        for k, stage in enumerate(value):
            name = str(stage["name"])
            if k:
                lines.append("")
            lines.extend(_item(stage, 2, _stage_comments(notes, name), notes.get((name, None), ())))
    return "\n".join(lines) + "\n"
