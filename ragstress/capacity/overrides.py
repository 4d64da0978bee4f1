"""Sweep flags → values: ``--rates`` grids, ``--set key=v1,v2`` overrides, and applying them.

A sweep changes a validated profile or scenario one key at a time. Rather than mutating frozen
models we dump them to plain data, set the key and validate again, so an override can never
produce a configuration that loading a YAML file would have refused. Every problem is a
``ConfigError`` (or, for the text of a flag, a ``ValueError``) with one printable line that
names the flag, the key and what is allowed, like the loader's ``file:line: key: msg`` lines.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from ragstress.config import ConfigError, Profile, Scenario, TraceArrivals

__all__ = [
    "MAX_RATES",
    "Override",
    "apply",
    "apply_overrides",
    "parse_rates",
    "parse_set",
    "split_key",
    "with_rate",
]

ModelT = TypeVar("ModelT", bound=BaseModel)
Target = Literal["profile", "scenario"]

MAX_RATES = 10_000  # a typo like 10:400:0.0001 should fail at once, not plan 4 million runs
MAX_RPS = 1e7  # the scenario schema's limit on a rate
_RATES_ALLOWED = (
    "allowed: START:STOP:STEP with 0 < START ≤ STOP and STEP > 0, e.g. 10:400:20, "
    "or a list of rates, e.g. 10,20,50"
)
_KEY_ALLOWED = "allowed: stages.<stage>.<field>[.<subfield>…] or scenario.<field>[.<subfield>…]"


@dataclass(frozen=True)
class Override:
    """One ``--set``: ``key`` as written, the model it targets, the path inside that model
    (the stage addressed by name) and the values to sweep, in the order given."""

    key: str
    target: Target
    path: tuple[str, ...]
    values: tuple[Any, ...]


def _number(text: str, what: str) -> Decimal:
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        problem = f"--rates: {what} {text.strip()!r} is not a number ({_RATES_ALLOWED})"
        raise ValueError(problem) from None
    if not value.is_finite():
        raise ValueError(f"--rates: {what} {text.strip()!r} is not finite ({_RATES_ALLOWED})")
    return value


def parse_rates(text: str) -> tuple[float, ...]:
    """The offered rates (requests/s) of ``--rates``.

    ``START:STOP:STEP`` is an inclusive grid: STOP is included when it lies on the grid. The
    grid is computed in decimal arithmetic from the text, so ``0.1:0.3:0.1`` gives exactly
    0.1, 0.2 and 0.3 (binary floats would drop 0.3 or add 0.30000000000000004). A comma list
    is taken in the order given.
    """
    text = text.strip()
    if not text:
        raise ValueError(f"--rates: empty ({_RATES_ALLOWED})")
    if ":" in text:
        parts = text.split(":")
        if len(parts) != 3:
            raise ValueError(f"--rates: {text!r} needs exactly START:STOP:STEP ({_RATES_ALLOWED})")
        start, stop, step = (
            _number(p, w) for p, w in zip(parts, ("start", "stop", "step"), strict=True)
        )
        if step <= 0:
            raise ValueError(f"--rates: step must be > 0, got {step} ({_RATES_ALLOWED})")
        if start <= 0:
            raise ValueError(f"--rates: start must be > 0, got {start} ({_RATES_ALLOWED})")
        if stop < start:
            raise ValueError(f"--rates: stop {stop} is below start {start} ({_RATES_ALLOWED})")
        count = int((stop - start) / step) + 1  # Decimal division: exact for decimal text
        if count > MAX_RATES:
            raise ValueError(f"--rates: {text!r} gives {count:,} rates (at most {MAX_RATES:,})")
        decimals = [start + i * step for i in range(count)]
    else:
        decimals = [_number(p, "rate") for p in text.split(",")]
        if len(decimals) > MAX_RATES:
            raise ValueError(f"--rates: {len(decimals):,} rates (at most {MAX_RATES:,})")
    rates = tuple(float(d) for d in decimals)
    for rate in rates:
        if not 0 < rate <= MAX_RPS:
            raise ValueError(f"--rates: {rate:g} is out of range (rates must be > 0 and ≤ 1e7)")
    return rates


def split_key(key: str) -> tuple[Target, tuple[str, ...]]:
    """``stages.generate.replicas`` → ("profile", ("stages", "generate", "replicas"));
    ``scenario.requests.top_k`` → ("scenario", ("requests", "top_k"))."""
    parts = tuple(key.split("."))
    if any(not p for p in parts):
        raise ValueError(f"--set {key}: empty part in the key ({_KEY_ALLOWED})")
    if parts[0] == "stages" and len(parts) >= 3:
        return "profile", parts
    if parts[0] == "scenario" and len(parts) >= 2:
        return "scenario", parts[1:]
    raise ValueError(f"--set {key}: not a profile or scenario key ({_KEY_ALLOWED})")


def parse_set(text: str) -> Override:
    """``key=v1,v2,…`` → an Override. Each value is read as YAML (``4`` is a number, ``true`` a
    boolean, ``null`` unsets, ``{kind: exponential, mean: 0.2}`` a mapping), by reading the
    whole list as one YAML flow sequence so that commas inside a mapping do not split it."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"--set {text!r}: expected KEY=VALUE[,VALUE…] ({_KEY_ALLOWED})")
    target, path = split_key(key)
    if not raw.strip():
        raise ValueError(f"--set {key}: no values after '=' (allowed: a comma list, e.g. 2,4,8)")
    try:
        values = yaml.safe_load(f"[{raw}]")
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or "malformed value"
        raise ValueError(
            f"--set {key}: cannot read {raw!r} as YAML values ({problem}; "
            "allowed: a comma list of numbers, booleans or strings)"
        ) from None
    if not isinstance(values, list) or not values:
        raise ValueError(f"--set {key}: no values after '=' (allowed: a comma list, e.g. 2,4,8)")
    return Override(key=key, target=target, path=path, values=tuple(values))


def _describe(error: Any) -> str:
    """One pydantic error as the loader words it: lower case, with what was given."""
    kind = error["type"]
    msg = str(error["msg"])
    ctx = error.get("ctx") or {}
    if kind == "literal_error":
        return (
            f"got {error.get('input')!r} (allowed: {str(ctx.get('expected')).replace(chr(39), '')})"
        )
    if kind in ("value_error", "assertion_error"):
        return msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    text = f"{msg[0].lower()}{msg[1:]}"
    if "input" in error and not isinstance(error["input"], Mapping | list):
        text += f" (got {error['input']!r})"
    return text


def _allowed(node: Mapping[str, Any]) -> str:
    return ", ".join(k for k in node if k != "kind") or "none"


def apply(model: ModelT, path: tuple[str, ...], value: Any, *, key: str | None = None) -> ModelT:
    """A copy of ``model`` with the key at ``path`` set to ``value``, validated again.

    In a profile, ``path`` starts ``("stages", <stage name>, …)``: stages are addressed by
    name because their order is an implementation detail of the pipeline. A numeric part
    indexes a list (``faults.0.at_s``). ``key`` is the flag's text, for messages.
    """
    label = key or ".".join(path)
    data: Any = model.model_dump(mode="json")
    node: Any = data
    walked = list(path)
    if isinstance(model, Profile) and walked[:1] == ["stages"]:
        names = [stage["name"] for stage in data["stages"]]
        if len(walked) < 3 or walked[1] not in names:
            got = walked[1] if len(walked) > 1 else ""
            raise ConfigError(
                [f"--set {label}: no stage named {got!r} (allowed: {', '.join(names)})"]
            )
        node = data["stages"][names.index(walked[1])]
        walked = walked[2:]
    for i, part in enumerate(walked):
        last = i == len(walked) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(
                    [f"--set {label}: {part!r} is not an index (allowed: 0 to {len(node) - 1})"]
                )
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
            continue
        if not isinstance(node, dict) or part not in node:
            allowed = _allowed(node) if isinstance(node, dict) else "none: it holds a value"
            raise ConfigError([f"--set {label}: unknown key {part!r} (allowed: {allowed})"])
        if last:
            node[part] = value
        else:
            if node[part] is None:  # an unset optional block (rate_limit): start it empty
                node[part] = {}
            node = node[part]
    try:
        return type(model).model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        raise ConfigError([f"--set {label}={value!r}: {_describe(error)}"]) from None


def apply_overrides(
    scenario: Scenario, profile: Profile, settings: Mapping[str, Any]
) -> tuple[Scenario, Profile]:
    """Apply ``{key: value}`` settings (keys as ``--set`` writes them) in order."""
    for key, value in settings.items():
        target, path = split_key(key)
        if target == "profile":
            profile = apply(profile, path, value, key=key)
        else:
            scenario = apply(scenario, path, value, key=key)
    return scenario, profile


def with_rate(scenario: Scenario, rps: float) -> Scenario:
    """``scenario`` offered a constant ``rps``: the arrival process keeps its kind (Poisson,
    gamma with its cv, evenly spaced), only its rate shape becomes constant."""
    if isinstance(scenario.arrivals, TraceArrivals):
        raise ConfigError(
            [
                f"--rates: scenario {scenario.name!r} replays a trace; --rates needs "
                "rate-driven arrivals (allowed kinds: poisson, gamma, constant)"
            ]
        )
    if not (math.isfinite(rps) and 0 < rps <= MAX_RPS):
        raise ConfigError([f"--rates: {rps!r} is out of range (rates must be > 0 and ≤ 1e7)"])
    data = scenario.model_dump(mode="json")
    data["arrivals"]["rate"] = {"kind": "constant", "rps": rps}
    return Scenario.model_validate(data)
