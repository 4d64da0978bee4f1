"""What one run says about one stage, and whether the run was at low enough load to believe it.

Pure: a :class:`~ragstress.results.RunResult` (and, where known, each request's token count
for the stage) in, arrays and warnings out.

Which rows count
================

Only requests that were answered without help — outcome ``ok``, not ``ok_degraded``, whose
fallback means some stage failed or timed out — that *arrived* in the measurement window
``[warmup_s, duration_s)`` (the manifest's scenario, on the run's clock), reached the stage
with a positive time (the gateway reports 0 for a stage that did not run, e.g. the embedder
on a cache hit), and made no more calls to it than its ``fan_out`` where the run says
(``<stage>_attempts``: a simulated run; a measured row has only the request's total).

Stage times
===========

A simulated run separates ``<stage>_wait_s`` from ``<stage>_service_s``: the fit uses the
service time alone, which is what the profile's parameters describe. A measured run cannot
(``ragstress.driver.spec``: the gateway's ``Server-Timing`` is queueing + service as the
gateway saw it, recorded in ``_service_s`` with ``_wait_s`` empty): the fit then takes the
whole stage time as the service time, which holds only at low load, where queueing is
negligible. :func:`load_warnings` says when a run looks too busy for that.

Where a request was at a stage (for in-flight counts and overlaps) is estimated from its row:
it reached stage k at ``arrival_s`` + the times of the path's stages before k. This ignores
the gateway's own overhead between stages and any backoff between retries; at low load both
are small next to the gaps between requests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from ragstress.analysis.summary import window_mask
from ragstress.config.profile import AnyStage, Profile
from ragstress.results.schema import RunResult, stage_columns

__all__ = [
    "IN_FLIGHT_RHO",
    "QUEUE_SHARE",
    "TREND_RATIO",
    "StageRun",
    "erlang_c_wait_share",
    "free_on_arrival",
    "in_flight_at",
    "isolated",
    "load_warnings",
    "stage_run",
]

# A measured stage time is believed as a service time while an M/M/c queue at the run's
# utilisation would add less than this share to it.
QUEUE_SHARE = 0.05
# Spearman ρ between a stage's time and the calls in flight at the stage above which the
# stage time visibly includes queueing (when significant at 0.1 %).
IN_FLIGHT_RHO = 0.1
# Median stage time of the window's last third over its first third above which the run
# slowed down while it ran (when the trend is significant at 0.1 %).
TREND_RATIO = 1.1
_P = 0.001


@dataclass(frozen=True)
class StageRun:
    """One run's rows as one stage saw them. Arrays hold every row of the run (requests that
    failed or arrived outside the window still occupied the stage); ``usable`` marks those a
    fit may use (see the module docstring)."""

    label: str
    stage: str
    split: bool  # the run separates wait from service (simulated)
    servers: int  # the stage's servers in the profile (for utilisation estimates)
    arrival_s: np.ndarray
    latency_s: np.ndarray
    ttft_s: np.ndarray
    tokens_in: np.ndarray  # the answering LLM's prompt tokens, as the row says
    tokens_out: np.ndarray  # the answer's tokens, as the row says
    tokens: np.ndarray | None  # the stage's input tokens per row (None: unknown)
    start_s: np.ndarray  # when the request reached the stage (NaN: unknown or never)
    after_s: np.ndarray  # time in the path's later stages (0 for the last)
    wait_s: np.ndarray  # NaN where the run does not separate it
    total_s: np.ndarray  # wait + service as the caller saw it (NaN: not reached)
    time_s: np.ndarray  # what a fit uses: the service time when split, else total_s
    usable: np.ndarray
    window: tuple[float, float]

    @property
    def n(self) -> int:
        return int(self.usable.sum())


def _nan0(x: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(x), x, 0.0)


def _time_in(req: dict[str, np.ndarray], stages: list[str], n: int) -> np.ndarray:
    """Each row's wait + service summed over ``stages`` (a stage not reached adds 0)."""
    out = np.zeros(n)
    for name in stages:
        for col in stage_columns(name):
            if col in req:
                out += _nan0(np.asarray(req[col], dtype=float))
    return out


def stage_run(
    result: RunResult,
    profile: Profile,
    stage: AnyStage,
    label: str,
    tokens: np.ndarray | None = None,
) -> StageRun | None:
    """The stage's view of ``result``; None when the run has no time for the stage at all.

    ``tokens``: the stage's input tokens for each row (aligned with the rows), when known.
    """
    req = result.requests
    wait_col, service_col = stage_columns(stage.name)
    if service_col not in req or not np.isfinite(req[service_col]).any():
        return None
    n = len(result)
    service = np.asarray(req[service_col], dtype=float)
    wait = np.asarray(req[wait_col], dtype=float) if wait_col in req else np.full(n, np.nan)
    split = bool(np.isfinite(wait).any())
    total = service + _nan0(wait)
    arrival = np.asarray(req["arrival_s"], dtype=float)
    start = np.full(n, np.nan)
    after = np.zeros(n)
    path = [s.name for s in profile.path]
    if stage.name in path:
        k = path.index(stage.name)
        start = np.where(np.isfinite(total), arrival + _time_in(req, path[:k], n), np.nan)
        after = _time_in(req, path[k + 1 :], n)
    usable = (req["outcome"] == "ok") & window_mask(result) & np.isfinite(service) & (service > 0)
    attempts = req.get(f"{stage.name}_attempts")
    if attempts is not None:
        usable &= attempts <= stage.fan_out
    warm = float(result.manifest.scenario.get("warmup_s", 0.0))
    return StageRun(
        label=label,
        stage=stage.name,
        split=split,
        servers=stage.servers,
        arrival_s=arrival,
        latency_s=np.asarray(req["latency_s"], dtype=float),
        ttft_s=np.asarray(req["ttft_s"], dtype=float),
        tokens_in=np.asarray(req["tokens_in"], dtype=float),
        tokens_out=np.asarray(req["tokens_out"], dtype=float),
        tokens=None if tokens is None else np.asarray(tokens, dtype=float),
        start_s=start,
        after_s=after,
        wait_s=wait,
        total_s=total,
        time_s=service,
        usable=np.asarray(usable, dtype=bool),
        window=(warm, result.manifest.duration_s),
    )


def in_flight_at(start: np.ndarray, end: np.ndarray, at: np.ndarray) -> np.ndarray:
    """How many of the intervals ``[start, end)`` (NaN ones ignored) contain each time in
    ``at``; an interval starting exactly at ``t`` counts, so a request counts itself."""
    ok = np.isfinite(start) & np.isfinite(end)
    s = np.sort(start[ok])
    e = np.sort(end[ok])
    return np.asarray(
        np.searchsorted(s, at, side="right") - np.searchsorted(e, at, side="right"),
        dtype=float,
    )


def isolated(start: np.ndarray, end: np.ndarray, joinable_until: np.ndarray) -> np.ndarray:
    """True for each call ``[start, end)`` that no other call touched (NaN calls touch
    nothing): no earlier call was still at the stage when it arrived, and no later call
    arrived before ``joinable_until`` (its batch's start: a call arriving later queues
    behind the batch but does not change it).

    A batcher serves calls that arrive within ``max_wait_s`` of each other as one batch, whose
    time depends on all their tokens, and a call arriving while a batch runs waits for it; a
    per-call regression leaves out every call that may have shared a batch or queued."""
    n = start.size
    out = np.zeros(n, dtype=bool)
    ok = np.flatnonzero(np.isfinite(start) & np.isfinite(end))
    if ok.size == 0:
        return out
    order = ok[np.argsort(start[ok], kind="stable")]
    s = start[order]
    e = end[order]
    until = np.where(np.isfinite(joinable_until[order]), joinable_until[order], e)
    prev_end = np.maximum.accumulate(e)
    clear_before = np.concatenate(([True], s[1:] >= prev_end[:-1]))
    clear_after = np.concatenate((s[1:] >= until[:-1], [True]))
    out[order] = clear_before & clear_after
    return out


def free_on_arrival(sr: StageRun) -> np.ndarray:
    """True for the calls that found a free server at the stage (fewer than ``servers`` other
    calls there when they arrived; unknown arrival counts as free). At a FIFO station such a
    call did not queue, so its measured stage time is its service time, at any load; and
    which calls found a server free does not depend on their own service time, so keeping
    only them leaves the service distribution as it was."""
    end = sr.start_s + sr.total_s
    here = in_flight_at(sr.start_s, end, sr.start_s)
    return np.asarray(~(here > sr.servers), dtype=bool)


def erlang_c_wait_share(arrival_rate: float, mean_service_s: float, servers: int) -> float:
    """Mean queueing delay over mean service time in an M/M/c queue (inf when overloaded):
    the share a stage time measured from outside would overstate the service time by."""
    a = arrival_rate * mean_service_s
    c = max(servers, 1)
    rho = a / c
    if rho >= 1:
        return math.inf
    if a <= 0:
        return 0.0
    # Erlang C via the stable recursion of Erlang B
    b = 1.0
    for k in range(1, c + 1):
        b = a * b / (k + a * b)
    p_wait = b / (1 - rho * (1 - b))
    return p_wait / (c * (1 - rho))


def _trend(arrival: np.ndarray, value: np.ndarray) -> tuple[float, float, float]:
    """(Spearman ρ, its p-value, last-third median over first-third median)."""
    order = np.argsort(arrival, kind="stable")
    v = value[order]
    rho, p = stats.spearmanr(arrival[order], v)
    third = max(v.size // 3, 1)
    first = float(np.median(v[:third]))
    ratio = float(np.median(v[-third:])) / first if first > 0 else math.nan
    return float(rho), float(p), ratio


def load_warnings(
    sr: StageRun,
    *,
    check_in_flight: bool = True,
    values: np.ndarray | None = None,
) -> list[str]:
    """Signs that ``sr``'s run was too busy for its stage times to be service times.

    - measured runs: an M/M/c queue at the run's utilisation (calls per second in the
      window × mean time of the calls that found a free server, over the stage's servers)
      would add over 5 % to the mean stage time; or the stage time rises with the calls in
      flight at the stage (Spearman ρ > 0.1, significant at 0.1 %; skipped with
      ``check_in_flight=False``: an LLM engine's speed depends on its batch by design, and a
      batcher's calls in flight together are its batches);
    - any run: the stage time grew over the window (significant Spearman trend against
      arrival time, and the last third's median over 10 % above the first third's).

    A simulated run's service times are free of queueing whatever its load, so only the
    trend is checked there; so it is for a cache, which has no queue. ``values``: what to
    check for a trend instead of the stage time (aligned with the rows).
    """
    out: list[str] = []
    use = sr.usable
    if use.sum() < 10:
        return out
    who = f"{sr.stage}: run {sr.label}"
    t = sr.time_s[use]
    if not sr.split and sr.servers > 0:  # a cache (no servers) has no queue
        w0, w1 = sr.window
        reached = np.isfinite(sr.total_s) & (sr.arrival_s >= w0) & (sr.arrival_s < w1)
        rate = float(reached.sum()) / max(w1 - w0, 1e-9)
        free = free_on_arrival(sr)[use]
        mean_t = float(t[free].mean()) if free.any() else float(t.mean())
        share = erlang_c_wait_share(rate, mean_t, sr.servers)
        if share > QUEUE_SHARE:
            util = rate * mean_t / max(sr.servers, 1)
            grow = "without bound" if math.isinf(share) else f"~{share:.0%}"
            out.append(
                f"{who}: utilisation {util:.2f} on {sr.servers} server(s): queueing would add "
                f"{grow} to the mean stage time, which the fit takes as service time"
            )
        if check_in_flight:
            ends = sr.start_s + sr.total_s
            busy = in_flight_at(sr.start_s, ends, sr.start_s[use])
            ok = np.isfinite(busy)
            if ok.sum() >= 10 and np.ptp(busy[ok]) > 0:
                rho, p = stats.spearmanr(busy[ok], t[ok])
                if float(rho) > IN_FLIGHT_RHO and float(p) < _P:
                    out.append(
                        f"{who}: stage times rise with the calls in flight at the stage "
                        f"(Spearman ρ={float(rho):.2f}): queueing is in the data"
                    )
    series = t if values is None else values[use]
    ok = np.isfinite(series)
    if ok.sum() >= 30 and np.ptp(series[ok]) > 0:
        rho, p, ratio = _trend(sr.arrival_s[use][ok], series[ok])
        if rho > 0 and p < _P and ratio > TREND_RATIO:
            out.append(
                f"{who}: stage times grew over the run (last third's median {ratio:.2f}× the "
                "first's): the service was falling behind or warming up"
            )
    return out
