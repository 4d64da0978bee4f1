"""YAML → validated, frozen config, with every problem reported as ``file:line: key: what``.

PyYAML's composer gives each node its position; we build plain data from the node tree while
remembering the line of every key, then map each pydantic error location back to a line.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from ragstress.config.base import LocatedValueError
from ragstress.config.profile import Profile
from ragstress.config.scenario import Scenario

__all__ = ["ConfigError", "load_profile", "load_scenario", "load_yaml_with_lines", "parse_config"]

ModelT = TypeVar("ModelT", bound=BaseModel)
Path_ = tuple[str | int, ...]


class ConfigError(Exception):
    """One or more problems in configuration files, each a ready-to-print line."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


def load_yaml_with_lines(text: str, source: str) -> tuple[Any, dict[Path_, int]]:
    """Parse YAML; return the data and a map from key path to 1-based line number."""
    lines: dict[Path_, int] = {}
    loader: yaml.SafeLoader | None = None
    try:
        loader = yaml.SafeLoader(text)  # rejects control characters here, before parsing
        node = loader.get_single_node()
        if node is None:
            return None, lines
        data = _build(loader, node, (), lines, source, written=_written_keys(node), active=set())
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        problem = exc.problem or exc.context or "malformed YAML"
        raise ConfigError([f"{source}:{line}: invalid YAML: {problem}"]) from None
    except yaml.reader.ReaderError as exc:
        at = exc.position if isinstance(exc.position, int) else 0
        line = text.count("\n", 0, at) + 1
        what = f"unacceptable character #x{exc.character:04x}: {exc.reason}"
        raise ConfigError([f"{source}:{line}: invalid YAML: {what}"]) from None
    except yaml.YAMLError as exc:
        problem = " ".join(str(exc).split())
        raise ConfigError([f"{source}:1: invalid YAML: {problem}"]) from None
    except RecursionError:
        raise ConfigError([f"{source}:1: invalid YAML: nested too deeply"]) from None
    finally:
        if loader is not None:
            loader.dispose()
    return data, lines


_MERGE_TAG = "tag:yaml.org,2002:merge"
_MAX_NODES = 200_000


def _written_keys(root: yaml.Node) -> dict[int, set[int]]:
    """For each mapping, the key nodes written in it, as opposed to those a ``<<`` merge copies
    in. Taken before any merge is resolved, since resolving one rewrites the nodes in place."""
    keys: dict[int, set[int]] = {}
    seen: set[int] = set()
    todo = [root]
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys[id(node)] = {id(k) for k, _ in node.value if k.tag != _MERGE_TAG}
            for key_node, value_node in node.value:
                todo += [key_node, value_node]
        elif isinstance(node, yaml.SequenceNode):
            todo += node.value
    return keys


def _build(
    loader: yaml.SafeLoader,
    node: yaml.Node,
    path: Path_,
    lines: dict[Path_, int],
    source: str,
    *,
    written: dict[int, set[int]],
    active: set[int],
) -> Any:
    lines.setdefault(path, node.start_mark.line + 1)
    if len(lines) > _MAX_NODES:  # aliases can expand exponentially ("billion laughs")
        line = node.start_mark.line + 1
        raise ConfigError(
            [
                f"{source}:{line}: {_dotted(path)}: the document expands to more than "
                f"{_MAX_NODES:,} values (aliases nested too deeply?)"
            ]
        )
    if id(node) in active:
        line = node.start_mark.line + 1
        where = _dotted(path)
        raise ConfigError([f"{source}:{line}: {where}: an alias here refers to itself"])
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # resolves "<<" merge keys; merged entries come first
        out: dict[Any, Any] = {}
        own: set[Any] = set()
        active.add(id(node))
        for key_node, value_node in node.value:
            key = _construct(loader, key_node, path, source)
            key_line = key_node.start_mark.line + 1
            if not isinstance(key, str | int | float | bool):
                raise ConfigError([f"{source}:{key_line}: {_dotted(path)}: keys must be scalars"])
            child = (*path, str(key))
            if key in own:
                raise ConfigError([f"{source}:{key_line}: {_dotted(child)}: duplicate key"])
            if key in out:  # a key written here overrides one that "<<" brought in
                for stale in [p for p in lines if p[: len(child)] == child]:
                    del lines[stale]
            if id(key_node) in written.get(id(node), ()):
                own.add(key)
            lines[child] = key_line
            out[key] = _build(
                loader, value_node, child, lines, source, written=written, active=active
            )
        active.discard(id(node))
        return out
    if isinstance(node, yaml.SequenceNode):
        active.add(id(node))
        items = [
            _build(loader, item, (*path, i), lines, source, written=written, active=active)
            for i, item in enumerate(node.value)
        ]
        active.discard(id(node))
        return items
    return _construct(loader, node, path, source)


def _construct(loader: yaml.SafeLoader, node: yaml.Node, path: Path_, source: str) -> Any:
    """A scalar's value. PyYAML raises plain Python errors for text that matches a type's
    pattern but is no valid value (``2024-13-45``, ``!!float abc``); report those too."""
    try:
        return loader.construct_object(node, deep=True)
    except (ValueError, TypeError, LookupError, AttributeError, ArithmeticError) as exc:
        line = node.start_mark.line + 1
        tag = str(node.tag).rsplit(":", 1)[-1]
        why = f": {exc}" if isinstance(exc, ValueError | ArithmeticError) else ""
        raise ConfigError(
            [f"{source}:{line}: {_dotted(path)}: cannot read {node.value!r} as {tag}{why}"]
        ) from None


def _dotted(path: Sequence[str | int]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out or "(top level)"


def _strip(tp: Any) -> Any:
    while get_origin(tp) is typing.Annotated:
        tp = get_args(tp)[0]
    return tp


def _union_members(tp: Any) -> list[Any] | None:
    if get_origin(tp) in (Union, types.UnionType):
        return [_strip(a) for a in get_args(tp) if a is not type(None)]
    return None


def _kind_of(model: type[BaseModel]) -> str | None:
    field = model.model_fields.get("kind")
    if field is None:
        return None
    args = get_args(field.annotation)
    return str(args[0]) if args else None


def _step(tp: Any, element: str | int) -> tuple[Any, bool]:
    """Follow one error-location element through a type. Returns (next type, consumed) where
    ``consumed`` is False when the element was a union tag rather than a key in the data."""
    tp = _strip(tp)
    members = _union_members(tp)
    if members is not None:
        for m in members:
            if isinstance(m, type) and issubclass(m, BaseModel) and _kind_of(m) == element:
                return m, False
        for m in members:
            nxt, consumed = _step(m, element)
            if nxt is not None:
                return nxt, consumed
        return None, True
    if get_origin(tp) in (list, Sequence, tuple) and isinstance(element, int):
        return _strip(get_args(tp)[0]), True
    if isinstance(tp, type) and issubclass(tp, BaseModel) and isinstance(element, str):
        field = tp.model_fields.get(element)
        if field is not None:
            return field.annotation, True
    return None, True


def _allowed_keys(tp: Any, data: Any) -> list[str]:
    tp = _strip(tp)
    members = _union_members(tp)
    if members is not None:
        kind = data.get("kind") if isinstance(data, Mapping) else None
        for m in members:
            if isinstance(m, type) and issubclass(m, BaseModel) and _kind_of(m) in (kind, None):
                return list(m.model_fields)
        return []
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return list(tp.model_fields)
    return []


def _describe(error: Any, allowed: list[str]) -> str:
    kind = error["type"]
    msg = str(error["msg"])
    ctx = error.get("ctx") or {}
    if kind == "extra_forbidden":
        return f"unknown key (allowed: {', '.join(k for k in allowed if k != 'kind')})"
    if kind == "tuple_type":  # frozen models hold lists as tuples; YAML calls them lists
        return f"input should be a list (got {type(error.get('input')).__name__})"
    if kind == "missing":
        return "required key is missing"
    if kind == "union_tag_invalid":
        return f"unknown kind {ctx.get('tag')!r} (allowed: {_plain(ctx.get('expected_tags'))})"
    if kind == "union_tag_not_found":
        return "missing key 'kind' that says which variant this is"
    if kind == "literal_error":
        return f"got {error.get('input')!r} (allowed: {_plain(ctx.get('expected'))})"
    if kind in ("value_error", "assertion_error"):
        return msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if "input" in error and not isinstance(error["input"], Mapping | list):
        return f"{msg[0].lower()}{msg[1:]} (got {error['input']!r})"
    return f"{msg[0].lower()}{msg[1:]}"


def _plain(text: Any) -> str:
    return str(text).replace("'", "")


def _format_errors(
    exc: ValidationError, model: type[BaseModel], data: Any, lines: dict[Path_, int], source: str
) -> list[str]:
    problems: list[str] = []
    for raw in exc.errors():
        error: Any = raw
        cause = (raw.get("ctx") or {}).get("error")
        if isinstance(cause, LocatedValueError):
            # a cross-reference check knows which key is wrong: point at that key's line
            error = {**raw, "loc": (*raw["loc"], *cause.loc)}
        tp: Any = model
        path: list[str | int] = []
        line = lines.get((), 1)
        node: Any = data
        for element in error["loc"]:
            nxt, consumed = _step(tp, element)
            if not consumed:
                tp = nxt
                continue
            # keys are recorded as text: a key written as 1 is found under "1", not index 1
            path.append(str(element) if isinstance(node, Mapping) else element)
            if isinstance(node, Mapping):
                node = node.get(element)
            elif isinstance(node, list) and isinstance(element, int) and element < len(node):
                node = node[element]
            else:
                node = None
            tp = nxt
            key = tuple(str(p) if not isinstance(p, int) else p for p in path)
            if key in lines:
                line = lines[key]
        parent_type: Any = model
        for element in error["loc"][:-1]:
            parent_type, _ = _step(parent_type, element)
        parent_data = _data_at(data, error["loc"][:-1])
        allowed = _allowed_keys(parent_type, parent_data)
        problems.append(f"{source}:{line}: {_dotted(path)}: {_describe(error, allowed)}")
    return problems


def _data_at(data: Any, loc: Sequence[str | int]) -> Any:
    """The data under ``loc``, skipping elements that are not keys (union tags)."""
    for element in loc:
        data = _child(data, element)
    return data


def _child(data: Any, element: str | int) -> Any:
    if isinstance(data, Mapping) and element in data:
        return data[element]
    if isinstance(data, list) and isinstance(element, int) and element < len(data):
        return data[element]
    return data


def parse_config(
    text: str, model: type[ModelT], source: str, context: dict[str, Any] | None = None
) -> ModelT:
    """Validate YAML text against ``model``; raise ConfigError with one line per problem."""
    data, lines = load_yaml_with_lines(text, source)
    expected = ", ".join(k for k in model.model_fields if k != "kind")
    if data is None:
        raise ConfigError(
            [f"{source}:1: (top level): the file is empty (expected keys: {expected})"]
        )
    if not isinstance(data, Mapping):
        raise ConfigError(
            [f"{source}:1: (top level): expected a mapping of keys (allowed: {expected})"]
        )
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, model, data, lines, source)) from None


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}:1: (top level): no such file"]) from None
    except IsADirectoryError:
        raise ConfigError([f"{path}:1: (top level): is a folder, expected a YAML file"]) from None
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        what = f"not UTF-8 text ({exc.reason} at byte {exc.start})"
        raise ConfigError([f"{path}:{line}: (top level): {what}"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}:1: (top level): cannot read ({exc.strerror})"]) from None


def load_profile(path: str | Path) -> Profile:
    p = Path(path)
    return parse_config(_read(p), Profile, str(p))


def load_scenario(path: str | Path) -> Scenario:
    """Load a scenario; a trace file is resolved relative to the scenario's folder."""
    p = Path(path)
    return parse_config(_read(p), Scenario, str(p), context={"base_dir": p.parent})
