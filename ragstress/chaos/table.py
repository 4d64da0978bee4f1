"""The proxy's fault table: which faults are installed, and what each call gets.

One table serves every listener of a proxy, on one event loop (no locks, no threads). It
holds each installed fault with its **absolute** window, so a fault ends by itself at its
end time whoever loaded it and whether or not anyone remembers to remove it; nothing is kept
on disk, so a restarted proxy starts with no fault at all.

Deciding a call
===============

:meth:`FaultTable.decide` is called once per call, when it arrives (the model's "send
time"). It takes the stage's faults whose window covers that instant and whose ``match``
holds, in plan order (the order they were loaded), and asks
:meth:`ragstress.faults.plan.FaultPlan.decide` — the one definition shared with the model —
for the :class:`CallEffect`, with one uniform draw per fault from the stage's own generator
``ragstress.seeding.stream(seed, "chaos", stage)`` and the latency draws from the same
generator after them, exactly as :meth:`FaultPlan.draw` takes them. The table then only looks
up the *rendering* of what the plan decided: which error fault's style to answer in (the
first error hit in plan order, the plan's rule 3), which hang fault bounds the call, and how
the added delay splits between ``on: request`` and ``on: first_byte`` (each hit latency
fault's own draw, replayed from the generator's state before the plan drew them).

Then the proxy-only per-call kinds (``stream_error``, ``stream_rate``, ``bandwidth``) take
one more draw each, in plan order; they combine as the plan combines stream faults (the
earliest error point, the slowest rate, the narrowest bandwidth) and apply only to a call
that is forwarded and answered normally.

State
=====

- Rate limits: the listener's ``rate_limit`` buckets (for the whole run) and those of each
  active ``rate_limit`` fault whose ``match`` holds. A call must fit in every one, and is
  charged to all of them only then (:class:`ragstress.model.ratelimit.ProviderLimits`
  arithmetic: one request and ``prompt + max_tokens`` tokens). ``rate_limit_cut`` scales
  every bucket of the stage, applied at each window edge between two calls, so refill is
  exact across a cut. A plan with a cut on a stage without buckets is refused.
- ``capacity_loss``: with the listener's ``units``, while losses are active at most
  ``units − down`` forwarded calls are in flight (``FaultPlan.replicas_down``); the others
  wait in arrival order until a call finishes or the loss ends. Without ``units`` the plan is
  refused: a proxy cannot take replicas of a real service down.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np

from ragstress.chaos.faults import (
    PLAN_KINDS,
    Bandwidth,
    ErrorStyle,
    Match,
    ProxyAddedLatency,
    ProxyCapacityLoss,
    ProxyErrorStatus,
    ProxyFault,
    ProxyHang,
    ProxyOutage,
    ProxyRateLimitCut,
    RateLimitFault,
    StreamError,
    StreamRate,
)
from ragstress.chaos.settings import ChaosSettings
from ragstress.config.distributions import Deterministic
from ragstress.config.faults import CallFault, CapacityLoss, RateLimitCut
from ragstress.faults.plan import NO_EFFECT, CallEffect, FaultPlan
from ragstress.model.ratelimit import ProviderLimits
from ragstress.reference.settings import approx_tokens
from ragstress.seeding import stream

__all__ = [
    "MAX_FAULTS",
    "CapacityGate",
    "FaultTable",
    "Installed",
    "PlanError",
    "RateRefusal",
    "Verdict",
    "request_tokens",
]

MAX_FAULTS: Final = 10_000  # installed at once; a plan is a list written by a person
_PROXY_CALL_KINDS = (StreamError, StreamRate, Bandwidth)


def _call_fault(fault: ProxyFault) -> CallFault:
    """``fault`` as the scenario's per-call fault it extends (it must be one)."""
    assert not isinstance(
        fault, StreamError | StreamRate | Bandwidth | RateLimitFault | RateLimitCut | CapacityLoss
    )
    return fault


class PlanError(ValueError):
    """A plan (or one fault) the proxy refuses; ``problems`` are ready-to-print lines."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


# --- one installed fault -------------------------------------------------------------------


@dataclass(eq=False)
class Installed:
    """A fault in the table: as given (``spec``, times relative to ``run_start_epoch`` when
    that is set) and with absolute times (``fault``, what the plan evaluates)."""

    id: str
    spec: ProxyFault
    run_start_epoch: float | None
    fault: ProxyFault
    hits: int = 0
    limits: ProviderLimits | None = None
    limits_checked: float = 0.0
    gone: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def start(self) -> float:
        return self.fault.start_s

    @property
    def end(self) -> float:
        return self.fault.end_s

    def covers(self, now: float) -> bool:
        return self.fault.start_s <= now < self.fault.end_s

    def describe(self, now: float) -> dict[str, object]:
        """The JSON the control API lists: the fault as given, and where it stands."""
        return {
            "id": self.id,
            "stage": self.fault.stage,
            "kind": self.fault.kind,
            "active": self.covers(now),
            "hits": self.hits,
            "start_epoch": self.start,
            "end_epoch": self.end,
            "run_start_epoch": self.run_start_epoch,
            "fault": self.spec.model_dump(mode="json", exclude_none=True),
        }


def _matches(match: Match | None, method: str, path: str, headers: Mapping[str, str]) -> bool:
    if match is None:
        return True
    if match.method is not None and method.upper() != match.method:
        return False
    if match.path_prefix is not None and not path.startswith(match.path_prefix):
        return False
    if match.path_regex is not None and re.search(match.path_regex, path) is None:
        return False  # re caches compiled patterns
    if match.header is not None:
        name, _, value = match.header.partition("=")
        if headers.get(name.strip()) != value:
            return False
    return True


# --- what a call gets ------------------------------------------------------------------------


@dataclass(slots=True)
class Verdict:
    """What the proxy does to one call: the plan's effect, and how to render it."""

    effect: CallEffect = NO_EFFECT
    error: ProxyErrorStatus | None = None
    """The fault whose status answers the call (the first error hit in plan order)."""
    outage: ProxyOutage | None = None
    hang: Installed | None = None
    request_delay_s: float = 0.0
    first_byte_delay_s: float = 0.0
    stream_error: StreamError | None = None
    tokens_per_s: float | None = None
    bytes_per_s: float | None = None
    rate_faults: tuple[Installed, ...] = ()
    rate_limited: bool = False
    capacity: bool = False

    @property
    def streams_faulted(self) -> bool:
        """Whether an SSE answer must be cut into events (a stream fault applies)."""
        e = self.effect
        return (
            e.stall_after_tokens is not None
            or e.truncate_after_tokens is not None
            or self.stream_error is not None
            or self.tokens_per_s is not None
        )


@dataclass(frozen=True, slots=True)
class RateRefusal:
    """A call the rate limits refuse: the exact wait, which bucket, and the style."""

    wait_s: float
    bucket: str  # "requests" | "tokens"
    style: ErrorStyle


def request_tokens(body: bytes) -> tuple[int, int]:
    """``(prompt_tokens, max_tokens)`` of a request body, counted as the model and the
    reference LLM count them: 4 characters a token, per chat message (``messages``), or of
    ``prompt`` / ``input`` (completions, embeddings), else of the whole body; the output cap
    is ``max_completion_tokens``, else ``max_tokens``, else 0."""
    try:
        obj = json.loads(body) if body else None
    except ValueError:
        obj = None
    if not isinstance(obj, dict):
        return approx_tokens(body.decode("utf-8", "replace")), 0
    prompt = 0
    messages = obj.get("messages")
    texts = obj.get("prompt", obj.get("input"))
    if isinstance(messages, list):
        for message in messages:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, list):
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            prompt += approx_tokens(content if isinstance(content, str) else "")
    elif isinstance(texts, str):
        prompt = approx_tokens(texts)
    elif isinstance(texts, list):
        prompt = sum(approx_tokens(t) for t in texts if isinstance(t, str))
    else:
        prompt = approx_tokens(body.decode("utf-8", "replace"))
    out = 0
    for key in ("max_completion_tokens", "max_tokens"):
        value = obj.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            out = value
            break
    return prompt, out


# --- capacity loss ---------------------------------------------------------------------------


class CapacityGate:
    """At most ``capacity(now)`` forwarded calls in flight (``None``: no limit); waiting
    calls are woken when one finishes, when the table changes, and at the next change
    point of the stage's capacity."""

    def __init__(
        self,
        capacity: Callable[[float], int | None],
        next_change: Callable[[float], float | None],
        clock: Callable[[], float],
    ) -> None:
        self._capacity = capacity
        self._next_change = next_change
        self._clock = clock
        self.in_flight = 0
        self._event = asyncio.Event()

    async def acquire(self) -> bool:
        """Take a place; returns whether the call had to wait for it."""
        waited = False
        while True:
            now = self._clock()
            cap = self._capacity(now)
            if cap is None or self.in_flight < cap:
                self.in_flight += 1
                return waited
            waited = True
            event = self._event
            change = self._next_change(now)
            timeout = None if change is None else max(change - now, 0.0) + 0.001
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout)

    def release(self) -> None:
        self.in_flight -= 1
        self.poke()

    def poke(self) -> None:
        """Wake every waiting call to look again."""
        event, self._event = self._event, asyncio.Event()
        event.set()


# --- the table ---------------------------------------------------------------------------------


class _Stage:
    """One stage's slice of the table."""

    def __init__(self, name: str, settings: ChaosSettings, clock: Callable[[], float]) -> None:
        listener = settings.listeners[name]
        self.name = name
        self.rng = stream(settings.seed, "chaos", name)
        self.units = listener.units
        self.style: ErrorStyle = listener.style
        rl = listener.rate_limit
        now = clock()
        self.limits: ProviderLimits | None = (
            None
            if rl is None
            else ProviderLimits(
                rl.rpm, rl.tpm, rpm_burst=rl.rpm_burst, tpm_burst=rl.tpm_burst, now=now
            )
        )
        self.limits_checked = now
        self.faults: tuple[Installed, ...] = ()
        self.plans: dict[tuple[str, ...], FaultPlan] = {}
        self.state = FaultPlan.from_scenario((), [name])
        self.has_state = False
        self.gate = CapacityGate(self.capacity, self.next_change, clock)

    def rebuild(self, faults: tuple[Installed, ...]) -> None:
        self.faults = faults
        self.plans.clear()
        state = [
            i.fault for i in faults if isinstance(i.fault, ProxyRateLimitCut | ProxyCapacityLoss)
        ]
        self.state = FaultPlan.from_scenario(state, [self.name])
        self.has_state = bool(state)

    def plan_for(self, faults: Sequence[Installed]) -> FaultPlan:
        key = tuple(i.id for i in faults)
        plan = self.plans.get(key)
        if plan is None:
            plan = FaultPlan.from_scenario([_call_fault(i.fault) for i in faults], [self.name])
            self.plans[key] = plan
        return plan

    def capacity(self, now: float) -> int | None:
        if self.units is None or not self.has_state:
            return None
        down = self.state.replicas_down(self.name, now, self.units)
        return None if down == 0 else self.units - down

    def next_change(self, now: float) -> float | None:
        if not self.has_state:
            return None
        later = [c for c in self.state.change_points(self.name) if c > now]
        return min(later) if later else None


class FaultTable:
    """Every installed fault of one proxy, the decisions, the buckets and the counters.

    ``clock`` returns Unix epoch seconds (a seam for tests); fault windows are compared with
    it, so the proxy and whoever loads a plan must agree on the time (one machine, or NTP).
    """

    def __init__(self, settings: ChaosSettings, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self._stages = {name: _Stage(name, settings, clock) for name in settings.listeners}
        self._faults: dict[str, Installed] = {}
        self._ids = itertools.count(1)
        self._next_expiry = math.inf
        self.requests: dict[str, int] = dict.fromkeys(self._stages, 0)
        self.injected: dict[tuple[str, str], int] = {}
        self.upstream_errors: dict[str, int] = dict.fromkeys(self._stages, 0)

    # ------------------------------------------------------------ contents

    @property
    def stages(self) -> tuple[str, ...]:
        return tuple(self._stages)

    def faults(self, *, active_only: bool = False) -> list[Installed]:
        """Installed faults in plan order (expired ones are dropped first)."""
        now = self.clock()
        self._expire(now)
        return [i for i in self._faults.values() if not active_only or i.covers(now)]

    def get(self, fault_id: str) -> Installed | None:
        self._expire(self.clock())
        return self._faults.get(fault_id)

    def _expire(self, now: float) -> None:
        if now < self._next_expiry:
            return
        gone = [i for i in self._faults.values() if i.end <= now]
        for i in gone:
            del self._faults[i.id]
            i.gone.set()
        self._changed(now)

    def _changed(self, now: float) -> None:
        by_stage: dict[str, list[Installed]] = {s: [] for s in self._stages}
        for i in self._faults.values():
            by_stage[i.fault.stage].append(i)
        for name, stage in self._stages.items():
            self._sync_limits(stage, now)  # under the old cuts, up to now
            stage.rebuild(tuple(by_stage[name]))
            self._rescale(stage, now)  # the new cuts, from now
            stage.gate.poke()
        self._next_expiry = min((i.end for i in self._faults.values()), default=math.inf)

    # ------------------------------------------------------------ loading

    def load(
        self,
        faults: Sequence[ProxyFault],
        run_start_epoch: float | None = None,
        *,
        replace: bool = True,
    ) -> list[Installed]:
        """Install ``faults`` (all or none): with ``run_start_epoch`` their times are
        seconds from it, else absolute epochs. ``replace`` removes every other fault first.
        Raises :class:`PlanError` listing every problem."""
        now = self.clock()
        self._expire(now)
        problems: list[str] = []
        if run_start_epoch is not None and not (
            math.isfinite(run_start_epoch) and run_start_epoch >= 0
        ):
            problems.append(f"run_start_epoch must be a finite epoch ≥ 0, got {run_start_epoch!r}")
            raise PlanError(problems)
        kept = {} if replace else dict(self._faults)
        base = run_start_epoch or 0.0
        absolute: list[ProxyFault] = [
            f.model_copy(update={"start_s": base + f.start_s, "end_s": base + f.end_s})
            if run_start_epoch is not None
            else f
            for f in faults
        ]
        limited = {n for n, s in self._stages.items() if s.limits is not None}
        limited |= {i.fault.stage for i in kept.values() if isinstance(i.fault, RateLimitFault)}
        limited |= {f.stage for f in absolute if isinstance(f, RateLimitFault)}
        names = ", ".join(self._stages)
        ids = set(kept)
        new_ids: list[str] = []
        for n, (f, a) in enumerate(zip(faults, absolute, strict=True)):
            where = f"faults[{n}] ({f.kind})"
            if f.stage not in self._stages:
                problems.append(f"{where}: unknown stage {f.stage!r} (allowed: {names})")
            elif isinstance(f, ProxyRateLimitCut) and f.stage not in limited:
                allowed = ", ".join(sorted(limited)) or "none"
                problems.append(
                    f"{where}: stage {f.stage!r} has no rate limits (allowed: {allowed}); give "
                    "its listener a rate_limit, or add a rate_limit fault"
                )
            elif isinstance(f, ProxyCapacityLoss) and self._stages[f.stage].units is None:
                problems.append(
                    f"{where}: capacity_loss needs the stage's units: a proxy cannot take "
                    f"replicas of a real service down; give listener {f.stage!r} 'units' "
                    "to play it as a concurrency limit of units − down"
                )
            if a.end_s <= now:
                hint = (
                    "times are absolute Unix epochs unless the plan gives run_start_epoch"
                    if run_start_epoch is None
                    else f"run_start_epoch is {_when(run_start_epoch)}"
                )
                problems.append(
                    f"{where}: its window ended at {_when(a.end_s)}, before now ({_when(now)}); "
                    + hint
                )
            fid = f.id
            if fid is None:
                fid = self._fresh_id(ids)
            elif fid in ids:
                problems.append(f"{where}: id {fid!r} is already in use")
            ids.add(fid)
            new_ids.append(fid)
        if len(kept) + len(faults) > MAX_FAULTS:
            problems.append(f"at most {MAX_FAULTS} faults can be installed at once")
        if problems:
            raise PlanError(problems)
        if replace:
            for i in self._faults.values():
                i.gone.set()
        installed: list[Installed] = []
        for fid, f, a in zip(new_ids, faults, absolute, strict=True):
            spec = f if f.id == fid else f.model_copy(update={"id": fid})
            item = Installed(fid, spec, run_start_epoch, a.model_copy(update={"id": fid}))
            if isinstance(a, RateLimitFault):
                item.limits = ProviderLimits(
                    a.rpm, a.tpm, rpm_burst=a.rpm_burst, tpm_burst=a.tpm_burst, now=now
                )
                item.limits_checked = now
            installed.append(item)
            kept[fid] = item
        self._faults = kept
        self._changed(now)
        return installed

    def _fresh_id(self, taken: set[str]) -> str:
        while True:
            fid = f"f{next(self._ids)}"
            if fid not in taken:
                return fid

    def remove(self, fault_id: str) -> Installed | None:
        """Remove one fault (its hung calls are let go); ``None`` when there is none."""
        now = self.clock()
        self._expire(now)
        item = self._faults.pop(fault_id, None)
        if item is not None:
            item.gone.set()
            self._changed(now)
        return item

    def clear(self) -> int:
        """Remove every fault; returns how many were installed (expired ones not counted)."""
        now = self.clock()
        self._expire(now)
        count = len(self._faults)
        for i in self._faults.values():
            i.gone.set()
        self._faults = {}
        self._changed(now)
        return count

    # ------------------------------------------------------------ per call

    def decide(
        self, stage: str, method: str, path: str, headers: Mapping[str, str], now: float
    ) -> Verdict | None:
        """The verdict for a call arriving at ``now``; ``None`` when nothing at all applies
        (no fault covers it and the stage has no buckets): the fast path."""
        self._expire(now)
        st = self._stages[stage]
        self.requests[stage] += 1
        if not st.faults:
            return None if st.limits is None else Verdict(rate_limited=True)
        plan_faults: list[Installed] = []
        own: list[Installed] = []
        rate: list[Installed] = []
        for i in st.faults:
            f = i.fault
            if not (f.start_s <= now < f.end_s):
                continue
            if isinstance(f, ProxyRateLimitCut | ProxyCapacityLoss):
                continue
            if not _matches(f.match, method, path, headers):
                continue
            if isinstance(f, RateLimitFault):
                rate.append(i)
            elif f.kind in PLAN_KINDS:
                plan_faults.append(i)
            else:
                own.append(i)
        capacity = st.units is not None and st.has_state
        if not (plan_faults or own or rate) and st.limits is None and not capacity:
            return None
        v = Verdict(
            rate_faults=tuple(rate),
            rate_limited=bool(rate) or st.limits is not None,
            capacity=capacity,
        )
        rng = st.rng
        if plan_faults:
            self._decide_plan(st, plan_faults, now, v)
        for i in own:
            f = i.fault
            assert isinstance(f, _PROXY_CALL_KINDS)
            if rng.random() >= f.percent / 100.0:
                continue
            i.hits += 1
            if isinstance(f, StreamError):
                if v.stream_error is None or f.after_tokens < v.stream_error.after_tokens:
                    v.stream_error = f
            elif isinstance(f, StreamRate):
                v.tokens_per_s = min(v.tokens_per_s or math.inf, f.tokens_per_s)
            else:
                v.bytes_per_s = min(v.bytes_per_s or math.inf, f.bytes_per_s)
        if v.effect.answered_by_fault or v.effect.status is not None:
            v.stream_error = None
            v.tokens_per_s = v.bytes_per_s = None
        return v

    def _decide_plan(self, st: _Stage, faults: list[Installed], now: float, v: Verdict) -> None:
        rng = st.rng
        plan = st.plan_for(faults)
        us = rng.random(len(faults)).tolist()
        hit = [u < _call_fault(i.fault).percent / 100.0 for u, i in zip(us, faults, strict=True)]
        split = any(
            h and isinstance(i.fault, ProxyAddedLatency) and i.fault.on == "first_byte"
            for h, i in zip(hit, faults, strict=True)
        )
        before = rng.bit_generator.state if split else None
        effect = plan.decide(st.name, now, us, rng)
        v.effect = effect
        for h, i in zip(hit, faults, strict=True):
            if h:
                i.hits += 1
        if effect.refuse:
            v.outage = next(
                i.fault
                for h, i in zip(hit, faults, strict=True)
                if h and isinstance(i.fault, ProxyOutage)
            )
            return
        if effect.hang:
            v.hang = next(
                i for h, i in zip(hit, faults, strict=True) if h and isinstance(i.fault, ProxyHang)
            )
            return
        if effect.status is not None:
            v.error = next(
                i.fault
                for h, i in zip(hit, faults, strict=True)
                if h and isinstance(i.fault, ProxyErrorStatus)
            )
        first_byte = 0.0
        if before is not None:
            first_byte = _first_byte_share(faults, hit, before)
        v.first_byte_delay_s = first_byte
        v.request_delay_s = max(effect.extra_latency_s - first_byte, 0.0)

    # ------------------------------------------------------------ rate limits

    def _sync_limits(self, st: _Stage, now: float) -> None:
        """Apply the stage's cut edges between the buckets' last check and ``now``."""
        for limits, checked, set_checked in self._bucket_sets(st):
            now_ = max(now, checked)
            if st.has_state:
                for c in st.state.change_points(st.name):
                    if checked < c <= now_:
                        limits.scale(c, st.state.rate_limit_factor(st.name, c))
            set_checked(now_)

    def _rescale(self, st: _Stage, now: float) -> None:
        factor = st.state.rate_limit_factor(st.name, now)
        for limits, checked, set_checked in self._bucket_sets(st):
            now_ = max(now, checked)
            limits.scale(now_, factor)
            set_checked(now_)

    def _bucket_sets(
        self, st: _Stage
    ) -> list[tuple[ProviderLimits, float, Callable[[float], None]]]:
        out: list[tuple[ProviderLimits, float, Callable[[float], None]]] = []
        if st.limits is not None:

            def set_stage(t: float, st: _Stage = st) -> None:
                st.limits_checked = t

            out.append((st.limits, st.limits_checked, set_stage))
        for i in st.faults:
            if i.limits is not None:

                def set_item(t: float, i: Installed = i) -> None:
                    i.limits_checked = t

                out.append((i.limits, i.limits_checked, set_item))
        return out

    def admit(self, stage: str, v: Verdict, body: bytes) -> RateRefusal | None:
        """Charge the call to every bucket that applies to it, or refuse it (charging none)
        with the exact wait until all of them have room."""
        now = self.clock()
        st = self._stages[stage]
        self._sync_limits(st, now)
        sets: list[tuple[ProviderLimits, ErrorStyle]] = []
        if st.limits is not None:
            sets.append((st.limits, st.style))
        for i in v.rate_faults:
            if i.limits is not None and i.id in self._faults:
                assert isinstance(i.fault, RateLimitFault)
                sets.append((i.limits, i.fault.style))
        if not sets:
            return None
        now = max([now, st.limits_checked, *(i.limits_checked for i in v.rate_faults)])
        prompt, out = (0, 0)
        if any(limits.tpm is not None for limits, _ in sets):
            prompt, out = request_tokens(body)
        worst: RateRefusal | None = None
        for limits, style in sets:
            rpm_wait = 0.0 if limits.rpm is None else limits.rpm.wait_s(now, 1.0)
            tpm_wait = (
                0.0
                if limits.tpm is None
                else limits.tpm.wait_s(now, ProviderLimits.charge(prompt, out))
            )
            wait = max(rpm_wait, tpm_wait)
            if wait > 0.0 and (worst is None or wait > worst.wait_s):
                bucket = "tokens" if tpm_wait >= rpm_wait else "requests"
                worst = RateRefusal(wait, bucket, style)
        if worst is not None:
            return worst
        for limits, _ in sets:
            limits.admit(now, prompt, out)
        return None

    def gate(self, stage: str) -> CapacityGate:
        return self._stages[stage].gate

    # ------------------------------------------------------------ counters

    def count(self, stage: str, kind: str) -> None:
        """One fault of ``kind`` applied to a call of ``stage``."""
        key = (stage, kind)
        self.injected[key] = self.injected.get(key, 0) + 1

    def counters(self) -> dict[str, object]:
        """Since the proxy started: calls per stage, faults applied per stage and kind,
        upstream failures per stage."""
        injected: dict[str, dict[str, int]] = {s: {} for s in self._stages}
        for (stage, kind), n in sorted(self.injected.items()):
            injected[stage][kind] = n
        return {
            "requests": dict(self.requests),
            "injected": injected,
            "upstream_errors": dict(self.upstream_errors),
        }


def _first_byte_share(
    faults: Sequence[Installed], hit: Sequence[bool], state: Mapping[str, object]
) -> float:
    """The part of the plan's added delay due to hit ``on: first_byte`` latency faults.

    The plan draws one delay per hit ``added_latency`` fault, in plan order, from the call's
    generator (a deterministic one takes no draw); replaying those draws from the generator's
    state before them gives each fault's own delay."""
    replay = np.random.Generator(np.random.PCG64())
    replay.bit_generator.state = dict(state)
    share = 0.0
    for h, i in zip(hit, faults, strict=True):
        f = i.fault
        if not (h and isinstance(f, ProxyAddedLatency)):
            continue
        if isinstance(f.latency, Deterministic):
            d = f.latency.value
        else:
            d = float(f.latency.draw(replay, 1)[0])
        if f.on == "first_byte":
            share += d
    return share


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch)) + f" ({epoch:.3f})"
