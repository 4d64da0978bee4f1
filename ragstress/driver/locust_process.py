"""The load generator's own process: open-loop replay with Locust, gevent and geventhttpclient.

Run as ``python -m ragstress.driver.locust_process --settings JSON [--role local|master|worker]
[--workers N] [--master-host H] [--master-port P] [--web-ui] [--web-port P]``. This is the
only module of ragstress that imports Locust or gevent, and nothing imports it: importing it
monkey-patches the whole process (``ragstress run`` starts it with ``subprocess``).

Open loop. Locust's users are closed loop (a user waits for its answer before the next
request), so one Locust user per process only hosts a *dispatcher* greenlet (started by the
``go``, so a process runs its share whatever Locust's user dispatch does; the user's task waits
for it): for each request of the process's share it waits until ``t0 + at_s`` (``t0`` an epoch
time shared by every process), then spawns the request into a bounded
``gevent.pool.Pool(max_in_flight)`` (split evenly over the workers). A request due while the
pool is full is recorded as ``shed`` (never skipped silently). Latency and TTFT are measured
from the *intended* send time ``t0 + at_s``; ``send_lag_s`` is actual − intended, about a
millisecond when idle (the event loop's timers have millisecond resolution).

HTTP goes through geventhttpclient (one ``HTTPClient`` and connection pool for the target); a
streamed answer is read line by line as it arrives (``readline``, not Locust's ``iter_lines``,
which buffers a kilobyte), so the first token is timed when it arrives. ``timeout_s`` bounds the
whole request (outcome ``timeout``), ``stall_timeout_s`` the gap between two lines of a stream
(``error_stream``); a failure before the response is ``error_connect``, after it ``error_stream``.
Locust's ``events.request`` fires for every answer, so its statistics and web UI show live
numbers, but results come only from the raw samples.

Roles and messages:

- ``local`` (``--workers 1``): a LocalRunner; this process dispatches everything, writes the
  samples (``SampleWriter``, flushed every 0.25 s) and finalises the run folder.
- ``local`` with ``--workers N`` > 1: a MasterRunner on 127.0.0.1 (a free port) in this process,
  and N worker processes of this module (``--role worker --exit-with-parent``) as children.
- ``master`` / ``worker``: the same protocol across machines; each worker rebuilds the plan from
  its own settings and files.

  1. Workers connect (Locust's ``client_ready``); the master starts one Locust user per worker.
  2. master → worker ``ragstress_setup {index, workers}``: the worker's share is
     ``plan.share(index, workers)``.
  3. worker → master ``ragstress_ready {index, requests, digest, share}`` (or ``{error}``): the
     master checks that every worker built the same plan (count and digest).
  4. master → all ``ragstress_go {t0}`` (now + 0.5 s).
  5. worker → master ``ragstress_samples {rows, sent, in_flight}`` every 0.25 s when it has
     rows, at least every second (rows: ``Sample`` fields as lists); the master writes them as
     they come.
  6. worker → master ``ragstress_done {cpu_s, elapsed_s, sent, shed, aborted, unsent,
     hard_bound, interrupted}`` once its share is answered (or stopped), after its last
     samples (ZeroMQ keeps one connection's messages in order).
  7. master → workers ``ragstress_stop`` on SIGINT/SIGTERM or at the hard bound, and
     ``ragstress_bye`` once every worker is done; the master writes the run folder while the
     workers leave (Locust's ``quit`` message), then ``runner.stop()`` and ``runner.quit()``,
     and ends any worker process still there.

Stop: when every request is answered; at the hard bound (scaled duration + ``timeout_s`` + 1 s);
or on SIGINT/SIGTERM: dispatching stops, requests in flight get up to 2 s, then are abandoned
(not recorded), every sample is flushed and the run folder finalised with ``complete`` false
when the run was interrupted or requests went unanswered. Exit 0, or 130 after an interrupt.

Progress: one JSON line a second on stdout: ``{"t", "sent", "done", "in_flight", "rate",
"p95_s", "errors", "shed"}``; other lines carry an ``"event"`` (``plan``, ``web_ui``,
``waiting_workers``, ``finished``, ``error``).
"""

# ruff: noqa: E402
# gevent must patch the process before anything else imports socket, ssl or threading.
from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse
import bisect
import gc
import hashlib
import json
import logging
import math
import os
import resource
import signal
import subprocess
import sys
import time
import warnings
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from http.client import HTTPException
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import gevent
import gevent.pool
from gevent.event import Event
from geventhttpclient import HTTPClient
from locust import User, constant, events, task
from locust.env import Environment
from locust.exception import StopUser

from ragstress.config import ConfigError
from ragstress.driver.chaos_link import FaultLink
from ragstress.driver.endpoints import MissingEnvError, build_request, check_template, new_reader
from ragstress.driver.recorder import (
    REQUESTS_CSV,
    SampleWriter,
    finalize_run,
    generator_health,
    make_cost_fn,
)
from ragstress.driver.replay import ReplayPlan, build_replay, load_run_inputs
from ragstress.driver.spec import ReplayRequest, RunSettings, Sample
from ragstress.results.schema import ANSWERED

__all__ = ["main"]

log = logging.getLogger("ragstress.driver")

START_DELAY_S = 0.3  # local: t0 = now + this
DISTRIBUTED_START_DELAY_S = 0.5  # master: t0 = now + this, sent with ragstress_go
STOP_GRACE_S = 2.0  # in-flight requests after a stop, before they are abandoned
HARD_GRACE_S = 1.0  # past duration + timeout_s: the hard bound
FLUSH_EVERY_S = 0.1  # samples written (or sent to the master) at least this often
# Rows written (or sent) per slice, with a yield to the dispatcher between slices: writing
# 500 rows at once held the loop ~5 ms, and requests due meanwhile went out late.
FLUSH_SLICE = 64
PROGRESS_EVERY_S = 1.0
P95_WINDOW_S = 5.0
WORKER_CONNECT_TIMEOUT_S = 60.0  # locally started workers
WORKER_READY_TIMEOUT_S = 120.0  # building the plan in every worker
WORKER_DONE_GRACE_S = 10.0  # after the hard bound or a stop, for the workers' last samples
MAX_CONNECTIONS = 4096  # a sane cap on the connection pool, whatever max_in_flight says

_STALLED_MESSAGE = "stream stalled: nothing for {:g} s"


def _emit(record: Mapping[str, Any]) -> None:
    """One JSON line on stdout (read by ``ragstress run``)."""
    sys.stdout.write(json.dumps(record, allow_nan=False) + "\n")
    sys.stdout.flush()


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _raise_fd_limit() -> int:
    """Raise the open-file limit to its hard maximum (every connection is a descriptor)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return int(soft)


def _plan_digest(plan: ReplayPlan) -> str:
    """What every process of a distributed run must agree on: the requests and their times."""
    digest = hashlib.sha256()
    for r in plan.requests:
        digest.update(f"{r.id}:{r.at_s!r}:{r.prompt_tokens}:{r.max_tokens}\n".encode())
    return digest.hexdigest()


def _row(sample: Sample) -> list[Any]:
    return [
        sample.id,
        sample.arrival_s,
        sample.outcome,
        sample.latency_s,
        sample.ttft_s,
        sample.send_lag_s,
        sample.attempts,
        sample.tokens_in,
        sample.tokens_out,
        sample.status,
        sample.stages,
        sample.error,
    ]


def _sample(row: Sequence[Any]) -> Sample:
    return Sample(
        id=int(row[0]),
        arrival_s=float(row[1]),
        outcome=str(row[2]),
        latency_s=float(row[3]),
        ttft_s=float(row[4]),
        send_lag_s=float(row[5]),
        attempts=int(row[6]),
        tokens_in=int(row[7]),
        tokens_out=int(row[8]),
        status=int(row[9]),
        stages={str(k): float(v) for k, v in dict(row[10]).items()},
        error=str(row[11]),
    )


class _StalledError(Exception):
    """The gap between two lines of a stream exceeded ``stall_timeout_s``."""


class _OutcomeError(Exception):
    """What Locust's statistics see for a failed request: the outcome, not the message (so its
    error table stays one row per kind)."""


# ---------------------------------------------------------------------------------------------
# the dispatcher and the requests


class Replayer:
    """One process's share of the plan, sent open loop from a dispatcher greenlet."""

    def __init__(
        self,
        settings: RunSettings,
        share: Sequence[ReplayRequest],
        *,
        duration_s: float,
        max_in_flight: int,
        request_event: Any,
    ) -> None:
        endpoint = settings.endpoint
        self.endpoint = endpoint
        self.share = share
        self.duration_s = duration_s
        self.timeout_s = endpoint.timeout_s
        self.stall_s = min(endpoint.stall_timeout_s, endpoint.timeout_s)
        self.pool = gevent.pool.Pool(max_in_flight)
        connections = max(1, min(max_in_flight, MAX_CONNECTIONS, _raise_fd_limit() - 256))
        self.client = HTTPClient.from_url(
            endpoint.target,
            concurrency=connections,
            connection_timeout=endpoint.timeout_s,
            network_timeout=endpoint.timeout_s + 5.0,  # a backstop: gevent.Timeout decides
        )
        self.environ = dict(os.environ)
        self.prefix = urlsplit(endpoint.target).path.rstrip("/")  # a target with a base path
        self.request_event = request_event
        self.buffer: list[Sample] = []
        self.sent = 0
        self.shed = 0
        self.unsent = 0
        self.aborted = 0
        self.hit_hard_bound = False
        self.dispatch_ended = math.nan  # perf_counter() when the last request was dispatched
        self.t0 = math.nan  # epoch
        self.base = math.nan  # perf_counter() at t0
        self.stop_requested = Event()
        self.started = Event()
        self.finished = Event()
        self.greenlet: gevent.Greenlet | None = None
        self._outcome_errors: dict[str, _OutcomeError] = {}
        self._surprised = False  # logged one unexpected exception already

    # -- control

    def go(self, t0: float) -> None:
        """Start dispatching: request ``r`` is due at epoch ``t0 + r.at_s``."""
        if self.greenlet is not None:
            return
        self.t0 = t0
        self.base = time.perf_counter() + (t0 - time.time())
        # A full collection over Locust's and gevent's import-time objects took 60-70 ms at
        # the start of the replay, making every request due meanwhile late: collect once now,
        # freeze the survivors out of later collections, and let the replay's short-lived
        # objects trigger young collections less often.
        gc.collect()
        gc.freeze()
        gc.set_threshold(10_000, 20, 50)
        self.greenlet = gevent.spawn(self._run)
        self.started.set()

    def request_stop(self) -> None:
        self.stop_requested.set()

    @property
    def in_flight(self) -> int:
        return len(self.pool)

    def drain(self) -> list[Sample]:
        batch, self.buffer = self.buffer, []
        return batch

    # -- the dispatcher

    def _run(self) -> None:
        try:
            try:
                self._dispatch()
            finally:
                self.dispatch_ended = time.perf_counter()
            self._wait_in_flight()
        except BaseException:
            log.exception("the dispatcher failed")
            self.aborted = len(self.pool)
            self.pool.kill(block=False)
            raise
        finally:
            self.client.close()
            self.finished.set()

    def _dispatch(self) -> None:
        share, pool = self.share, self.pool
        stop, now, base = self.stop_requested, time.perf_counter, self.base
        spawn, send, wait = pool.spawn, self._send, stop.wait
        for index, request in enumerate(share):
            due = base + request.at_s
            delay = due - now()
            # The event loop's timers fire 0.1-1 ms late (millisecond poll timeouts): that is
            # the send lag of an idle generator. Spinning the loop to the exact time would
            # cut it to ~0.1 ms at the price of a busy core at high rates; a timer that fires
            # early (a stale loop clock) is waited again for the rest.
            while delay > 0 and not stop.is_set():
                wait(delay)
                delay = due - now()
            if stop.is_set():
                self.unsent = len(share) - index
                return
            if pool.full():
                self.buffer.append(Sample.shed(request))
                self.shed += 1
            else:
                spawn(send, request, due)
                self.sent += 1

    def _wait_in_flight(self) -> None:
        hard = self.base + self.duration_s + self.timeout_s + HARD_GRACE_S
        pool, now = self.pool, time.perf_counter
        while len(pool):
            if self.stop_requested.is_set():
                pool.join(timeout=STOP_GRACE_S)
                break
            remaining = hard - now()
            if remaining <= 0:
                self.hit_hard_bound = True
                break
            pool.join(timeout=min(remaining, 0.2))
        self.aborted = len(pool)
        if self.aborted:
            pool.kill(block=True, timeout=2.0)

    def _send(self, request: ReplayRequest, due: float) -> None:
        now = time.perf_counter
        reader = new_reader(self.endpoint)
        http = build_request(self.endpoint, request, self.environ)
        path = self.prefix + http.path
        received = 0
        deadline = gevent.Timeout(self.timeout_s)
        sent_at = now()
        deadline.start()
        response: Any = None
        try:
            try:
                response = self.client.request(
                    http.method, path, body=http.body, headers=http.headers
                )
            except (OSError, HTTPException, ValueError) as exc:
                reader.on_transport_error("error_connect", _describe(exc), now())
            else:
                reader.on_headers(response.status_code, _headers(response), now())
                if reader.wants_lines():
                    readline, stall = response.readline, self.stall_s
                    while True:
                        with gevent.Timeout(stall, _StalledError):
                            line = readline(b"\n")
                        if not line:
                            break
                        received += len(line)
                        reader.on_line(line, now())
                    rest = response.read()  # a last line without its newline
                    if rest:
                        received += len(rest)
                        reader.on_line(rest, now())
                else:
                    body = response.read()
                    received = len(body)
                    reader.on_body(body, now())
        except gevent.Timeout as fired:
            if fired is not deadline:
                raise
            reader.on_transport_error(
                "timeout", f"no complete answer in {self.timeout_s:g} s", now()
            )
        except _StalledError:
            reader.on_transport_error("error_stream", _STALLED_MESSAGE.format(self.stall_s), now())
        except (OSError, HTTPException, ValueError) as exc:
            reader.on_transport_error("error_stream", _describe(exc), now())
        except Exception as exc:  # a surprise: still one sample, never a lost request
            if not self._surprised:
                self._surprised = True
                log.exception("unexpected error while reading an answer")
            where = "error_connect" if response is None else "error_stream"
            reader.on_transport_error(where, _describe(exc), now())
        finally:
            deadline.cancel()
            if response is not None:
                response.release()
        parsed = reader.finish(now())
        latency = math.nan if parsed.last_byte_at is None else parsed.last_byte_at - due
        ttft = math.nan if parsed.first_token_at is None else parsed.first_token_at - due
        self.buffer.append(
            Sample(
                id=request.id,
                arrival_s=request.at_s,
                outcome=parsed.outcome,
                latency_s=latency,
                ttft_s=ttft,
                send_lag_s=sent_at - due,
                attempts=parsed.attempts,
                tokens_in=parsed.tokens_in,
                tokens_out=parsed.tokens_out,
                status=parsed.status,
                stages=parsed.stages,
                error=parsed.error,
            )
        )
        failed = None
        if parsed.outcome not in ANSWERED:
            failed = self._outcome_errors.get(parsed.outcome)
            if failed is None:
                failed = self._outcome_errors[parsed.outcome] = _OutcomeError(parsed.outcome)
        elapsed = latency if math.isfinite(latency) else now() - due
        self.request_event.fire(
            request_type=http.method,
            name=path,
            response_time=elapsed * 1000.0,
            response_length=received,
            exception=failed,
            context={},
            start_time=self.t0 + request.at_s,
            url=None,
            response=None,
        )


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _headers(response: Any) -> dict[str, str]:
    """Response headers with lower-case names (a repeated header joined with ", ")."""
    out: dict[str, str] = {}
    for name, value in response.items():
        key = str(name).lower()
        out[key] = f"{out[key]}, {value}" if key in out else str(value)
    return out


# ---------------------------------------------------------------------------------------------
# the Locust side: one user per process, hosting the dispatcher


class _ProcessState:
    replayer: Replayer | None = None
    ready = Event()  # set once the replayer exists and has been told to go


_STATE = _ProcessState()


class ReplayUser(User):
    """Hosts this process's dispatcher (one per process); it sends nothing itself."""

    wait_time = constant(0)

    @task
    def replay(self) -> None:
        _STATE.ready.wait()
        replayer = _STATE.replayer
        if replayer is not None and replayer.greenlet is not None:
            replayer.finished.wait()
        raise StopUser


def _environment(settings: RunSettings) -> Any:
    env = Environment(user_classes=[ReplayUser], events=events, host=settings.endpoint.target)
    env.stop_timeout = 0.0
    return env


def _start_web_ui(env: Any, port: int) -> None:
    """Locust's web UI on 127.0.0.1, for watching the live statistics (its start and stop
    buttons are not the way to run ragstress: stop stops the replay, as Ctrl-C does)."""
    env.create_web_ui("127.0.0.1", port)
    _emit({"event": "web_ui", "url": f"http://127.0.0.1:{port}"})


# ---------------------------------------------------------------------------------------------
# collecting samples (the local process or the master)


class Monitor:
    """Running counts and a recent latency window, for the progress lines."""

    def __init__(self) -> None:
        self.done = 0
        self.errors = 0
        self.shed = 0
        self.recent: deque[tuple[float, float]] = deque()  # (finish offset, latency)

    def add(self, samples: Sequence[Sample]) -> None:
        for s in samples:
            self.done += 1
            if s.outcome == "shed":
                self.shed += 1
            elif s.outcome not in ANSWERED:
                self.errors += 1
            if math.isfinite(s.latency_s):
                self.recent.append((s.arrival_s + s.latency_s, s.latency_s))

    def p95(self, now_offset: float) -> float:
        recent = self.recent
        while recent and recent[0][0] < now_offset - P95_WINDOW_S:
            recent.popleft()
        values = sorted(lat for _, lat in recent)
        if not values:
            return math.nan
        rank = max(0, math.ceil(0.95 * len(values)) - 1)
        return values[rank]


class Progress:
    """Prints a progress line every second."""

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor
        self.last_sent = 0
        self.last_t = 0.0

    def line(self, t0: float, sent: int, in_flight: int) -> None:
        t = time.time() - t0
        dt = t - self.last_t
        rate = (sent - self.last_sent) / dt if dt > 0 else 0.0
        self.last_sent, self.last_t = sent, t
        m = self.monitor
        _emit(
            {
                "t": round(t, 3),
                "sent": sent,
                "done": m.done,
                "in_flight": in_flight,
                "rate": round(rate, 3),
                "p95_s": _finite(m.p95(t)),
                "errors": m.errors,
                "shed": m.shed,
            }
        )


def _finish(
    settings: RunSettings,
    plan: ReplayPlan,
    *,
    complete: bool,
    t0: float,
    elapsed_s: float,  # when dispatching stopped (inf: it sent the whole plan)
    notes: list[str],
    cpu_by_process: Sequence[float],
    workers: int,
    samples: int,
    link: FaultLink,
    master_cpu_s: float | None = None,
) -> None:
    """Write the run folder (``finalize_run``) with the generator's health in ``extra``; the
    chaos proxy's faults are cleared first and what was loaded is recorded.

    Health is judged over the period the requests were sent in: the scaled duration, or up to
    the stop after an interrupt, with the requests the plan scheduled in it; CPU is the
    busiest process's (each one is a single-core gevent loop)."""
    period = min(plan.duration_s, elapsed_s) if elapsed_s >= 0 else plan.duration_s
    if period < plan.duration_s:
        scheduled = bisect.bisect_left([r.at_s for r in plan.requests], period)
    else:
        scheduled = len(plan.requests)
    intended = scheduled / period if period > 0 else math.nan
    health = generator_health(
        Path(settings.out) / REQUESTS_CSV,
        intended_rps=intended,
        duration_s=period,
        cpu_seconds=max(cpu_by_process, default=0.0),
    )
    endpoint = settings.endpoint
    extra = {
        **health,
        "target": endpoint.target,
        "kind": endpoint.kind,
        "time_scale": settings.time_scale,
        "workers": workers,
        "cpu_seconds_by_process": list(cpu_by_process),
        "max_in_flight": settings.max_in_flight,
    }
    if master_cpu_s is not None:
        extra["master_cpu_seconds"] = master_cpu_s
    link.stop()
    extra.update(link.record())
    if link.error is not None:
        notes = [*notes, f"chaos proxy: {link.error}"]
    started = t0 if math.isfinite(t0) else time.time()
    with warnings.catch_warnings():
        # numpy's "mean of empty slice" for the stage wait columns a measurement leaves empty
        warnings.simplefilter("ignore", RuntimeWarning)
        finalize_run(
            settings.out,
            plan,
            settings=settings,
            complete=complete,
            started_at=datetime.fromtimestamp(started, tz=UTC).isoformat(),
            notes=notes,
            extra=extra,
        )
    _emit({"event": "finished", "out": str(settings.out), "complete": complete, "rows": samples})


def _stop_notes(
    *, interrupted: bool, unsent: int, aborted: int, hard: bool, total: int
) -> list[str]:
    notes: list[str] = []
    if interrupted:
        notes.append(f"stopped early (signal or web UI): {unsent} of {total} requests never sent")
    if aborted:
        why = "at the hard bound (duration + timeout)" if hard else "after the stop"
        notes.append(f"{aborted} requests still in flight were abandoned {why} (not recorded)")
    return notes


class _Signals:
    """SIGINT/SIGTERM (or the web UI's stop button) → the current stop action, once.

    Installed first thing, so a signal that comes while the plan is built is kept; the role
    sets its action with :meth:`on_stop` (run at once when the stop came already)."""

    def __init__(self, signals: Sequence[signal.Signals]) -> None:
        self.interrupted = False
        self._action: Callable[[], None] | None = None
        for sig in signals:
            gevent.signal_handler(sig, self.stop)

    def on_stop(self, action: Callable[[], None]) -> None:
        self._action = action
        if self.interrupted:
            action()

    def stop(self) -> None:
        if not self.interrupted:
            self.interrupted = True
            if self._action is not None:
                self._action()


# ---------------------------------------------------------------------------------------------
# roles


class _SetupError(Exception):
    """The requests cannot be built: a bad template or a missing header_env variable."""


def _load_plan(settings: RunSettings) -> ReplayPlan:
    """The plan, after checking that every request can be built (template, header_env)."""
    scenario, profile = load_run_inputs(settings)
    plan = build_replay(settings, scenario, profile)
    try:
        check_template(settings.endpoint)
        if plan.requests:
            build_request(settings.endpoint, plan.requests[0], os.environ)
    except (MissingEnvError, ValueError) as exc:
        raise _SetupError(str(exc)) from None
    return plan


def run_local(settings: RunSettings, *, signals: _Signals, web_port: int | None) -> int:
    plan = _load_plan(settings)
    if signals.interrupted:
        return 130
    _emit(_plan_event(plan, workers=1))
    link = FaultLink(settings.chaos, plan.scenario, settings.time_scale)
    env = _environment(settings)
    runner = env.create_local_runner()
    env.events.init.fire(environment=env, runner=runner, web_ui=None)
    replayer = Replayer(
        settings,
        plan.requests,
        duration_s=plan.duration_s,
        max_in_flight=settings.max_in_flight,
        request_event=env.events.request,
    )
    _STATE.replayer = replayer
    signals.on_stop(replayer.request_stop)
    _stop_from_ui(env, lambda: not replayer.finished.is_set(), signals)
    if web_port is not None:
        _start_web_ui(env, web_port)
    monitor = Monitor()
    progress = Progress(monitor)
    cpu_start = _cpu_seconds()
    rows = 0
    with SampleWriter(
        settings.out, plan.stages, cost_fn=make_cost_fn(plan.profile, plan.requests)
    ) as writer:

        def flush() -> None:
            nonlocal rows
            batch = replayer.drain()
            for i in range(0, len(batch), FLUSH_SLICE):
                part = batch[i : i + FLUSH_SLICE]
                writer.write(part)
                monitor.add(part)
                rows += len(part)
                gevent.sleep(0)  # let the dispatcher send what fell due

        runner.start(1, spawn_rate=1)
        t0 = time.time() + START_DELAY_S
        link.start(t0)
        replayer.go(t0)
        _STATE.ready.set()
        next_progress = time.time() + PROGRESS_EVERY_S
        while not replayer.finished.wait(FLUSH_EVERY_S):
            flush()
            if time.time() >= next_progress:
                progress.line(t0, replayer.sent, replayer.in_flight)
                next_progress += PROGRESS_EVERY_S
        flush()
        progress.line(t0, replayer.sent, replayer.in_flight)
    interrupted = signals.interrupted
    complete = not interrupted and replayer.aborted == 0 and replayer.unsent == 0
    notes = _stop_notes(
        interrupted=interrupted,
        unsent=replayer.unsent,
        aborted=replayer.aborted,
        hard=replayer.hit_hard_bound,
        total=len(plan.requests),
    )
    _finish(
        settings,
        plan,
        complete=complete,
        t0=t0,
        elapsed_s=math.inf if replayer.unsent == 0 else replayer.dispatch_ended - replayer.base,
        notes=notes,
        cpu_by_process=[_cpu_seconds() - cpu_start],
        workers=1,
        samples=rows,
        link=link,
    )
    _stop_runner(runner)
    return 130 if interrupted else 0


def _plan_event(plan: ReplayPlan, *, workers: int) -> dict[str, Any]:
    return {
        "event": "plan",
        "requests": len(plan.requests),
        "duration_s": plan.duration_s,
        "truncated": plan.truncated,
        "workers": workers,
    }


def _stop_from_ui(env: Any, running: Callable[[], bool], signals: _Signals) -> None:
    """The web UI's stop button (anything that stops the runner while the replay runs) stops
    the replay as Ctrl-C would."""

    def on_stopping(**_kw: Any) -> None:
        if running():
            signals.stop()

    env.events.test_stopping.add_listener(on_stopping)


def _stop_runner(runner: Any) -> None:
    """``runner.stop()`` then ``runner.quit()`` (see the Locust notes), bounded."""
    with gevent.Timeout(10, False):
        runner.stop()
    with gevent.Timeout(5, False):
        runner.quit()


class _WorkerInfo:
    def __init__(self) -> None:
        self.ready: dict[str, Any] | None = None
        self.sent = 0
        self.in_flight = 0
        self.done: dict[str, Any] | None = None


def run_master(
    settings: RunSettings,
    *,
    signals: _Signals,
    workers: int,
    bind_host: str,
    port: int,
    spawn_local: bool,
    web_port: int | None,
) -> int:
    plan = _load_plan(settings)
    if signals.interrupted:
        return 130
    _emit(_plan_event(plan, workers=workers))
    link = FaultLink(settings.chaos, plan.scenario, settings.time_scale)
    digest = _plan_digest(plan)
    env = _environment(settings)
    runner = env.create_master_runner(bind_host, port)
    port = int(runner.server.port)
    info: dict[int, _WorkerInfo] = {i: _WorkerInfo() for i in range(workers)}
    by_client: dict[str, int] = {}
    monitor = Monitor()
    pending: list[Sample] = []
    children: list[subprocess.Popen[bytes]] = []
    replaying = [False]
    _stop_from_ui(env, lambda: replaying[0], signals)
    env.events.init.fire(environment=env, runner=runner, web_ui=None)

    def on_ready(environment: Any, msg: Any, **_kw: Any) -> None:
        del environment
        data = dict(msg.data)
        index = by_client.get(msg.node_id)
        if index is not None:
            info[index].ready = data

    def on_samples(environment: Any, msg: Any, **_kw: Any) -> None:
        del environment
        data = msg.data
        index = by_client.get(msg.node_id)
        batch = [_sample(row) for row in data["rows"]]
        pending.extend(batch)
        if index is not None:
            info[index].sent = int(data["sent"])
            info[index].in_flight = int(data["in_flight"])

    def on_done(environment: Any, msg: Any, **_kw: Any) -> None:
        del environment
        index = by_client.get(msg.node_id)
        if index is not None:
            info[index].done = dict(msg.data)

    runner.register_message("ragstress_ready", on_ready)
    runner.register_message("ragstress_samples", on_samples)
    runner.register_message("ragstress_done", on_done)
    if web_port is not None:
        _start_web_ui(env, web_port)
    t0 = math.nan
    rows = 0
    cpu_start = _cpu_seconds()
    failure: str | None = None
    try:
        if spawn_local:
            children = [_spawn_worker(settings, port) for _ in range(workers)]
        else:
            _emit({"event": "waiting_workers", "workers": workers, "port": port})
        failure = _wait_for(
            lambda: _connected(runner) >= workers,
            timeout=WORKER_CONNECT_TIMEOUT_S if spawn_local else math.inf,
            signals=signals,
            children=children,
            what=f"{workers} workers to connect",
        )
        if failure is None and not signals.interrupted:
            runner.start(workers, spawn_rate=workers)
            clients = sorted(_client_ids(runner))[:workers]
            for index, client_id in enumerate(clients):
                by_client[client_id] = index
                runner.send_message(
                    "ragstress_setup", {"index": index, "workers": workers}, client_id=client_id
                )
            failure = _wait_for(
                lambda: all(w.ready is not None for w in info.values()),
                timeout=WORKER_READY_TIMEOUT_S,
                signals=signals,
                children=children,
                what="the workers to build the plan",
            )
            failure = failure or _check_ready(info, len(plan.requests), digest)
        if failure is not None or signals.interrupted:
            if failure is not None:
                _emit({"event": "error", "message": failure})
            runner.send_message("ragstress_bye")
            _stop_runner(runner)
            return 1 if failure is not None else 130

        with SampleWriter(
            settings.out, plan.stages, cost_fn=make_cost_fn(plan.profile, plan.requests)
        ) as writer:
            t0 = time.time() + DISTRIBUTED_START_DELAY_S
            link.start(t0)
            runner.send_message("ragstress_go", {"t0": t0})
            replaying[0] = True
            hard = t0 + plan.duration_s + settings.endpoint.timeout_s + HARD_GRACE_S
            stop_sent = False
            progress = Progress(monitor)
            next_progress = t0 + PROGRESS_EVERY_S

            def flush() -> None:
                nonlocal rows
                if pending:
                    batch = pending[:]
                    del pending[:]
                    writer.write(batch)
                    monitor.add(batch)
                    rows += len(batch)

            stop_deadline = math.inf
            while not all(w.done is not None for w in info.values()):
                gevent.sleep(FLUSH_EVERY_S)
                flush()
                now = time.time()
                if not stop_sent and (signals.interrupted or now >= hard):
                    runner.send_message("ragstress_stop")
                    stop_sent = True
                    stop_deadline = now + STOP_GRACE_S + WORKER_DONE_GRACE_S
                if now >= stop_deadline:
                    failure = "some workers sent no final report"
                    break
                dead = [c for c in children if c.poll() is not None]
                if dead and not all(w.done is not None for w in info.values()):
                    gevent.sleep(1.0)  # its last messages may still be on their way
                    flush()
                    if not all(w.done is not None for w in info.values()):
                        failure = f"a worker process exited with code {dead[0].returncode}"
                        break
                if now >= next_progress:
                    sent = sum(w.sent for w in info.values())
                    in_flight = sum(w.in_flight for w in info.values())
                    progress.line(t0, sent, in_flight)
                    next_progress += PROGRESS_EVERY_S
            flush()
            done = [w.done for w in info.values() if w.done is not None]
            progress.line(
                t0, sum(int(d["sent"]) for d in done), sum(w.in_flight for w in info.values())
            )
        replaying[0] = False
        runner.stop(send_stop_to_client=False)  # no rebalancing while the workers leave
        runner.send_message("ragstress_bye")  # they leave while the run folder is written

        unsent = sum(int(d["unsent"]) for d in done)
        aborted = sum(int(d["aborted"]) for d in done)
        missing = workers - len(done)
        interrupted = signals.interrupted or any(d.get("interrupted") for d in done)
        notes = _stop_notes(
            interrupted=interrupted,
            unsent=unsent,
            aborted=aborted,
            hard=any(d.get("hard_bound") for d in done),
            total=len(plan.requests),
        )
        if failure is not None:
            notes.append(f"{failure}: {missing} of {workers} workers' shares are incomplete")
            _emit({"event": "error", "message": failure})
        complete = not interrupted and failure is None and unsent == 0 and aborted == 0
        _finish(
            settings,
            plan,
            complete=complete,
            t0=t0,
            elapsed_s=math.inf
            if unsent == 0
            else max((float(d["elapsed_s"]) for d in done), default=math.inf),
            notes=notes,
            cpu_by_process=[float(d["cpu_s"]) for d in done],
            master_cpu_s=_cpu_seconds() - cpu_start,
            workers=workers,
            samples=rows,
            link=link,
        )
        _wait_exit(children, 3.0)
        _stop_runner(runner)
        if interrupted:
            return 130
        return 1 if failure is not None else 0
    finally:
        link.stop()
        _kill_children(children)


def _connected(runner: Any) -> int:
    return len(_client_ids(runner))


def _client_ids(runner: Any) -> list[str]:
    clients = runner.clients
    return [c.id for c in clients.ready + clients.spawning + clients.running]


def _check_ready(info: Mapping[int, _WorkerInfo], requests: int, digest: str) -> str | None:
    for index, worker in sorted(info.items()):
        ready = worker.ready or {}
        if ready.get("error"):
            return f"worker {index}: {ready['error']}"
        if ready.get("requests") != requests or ready.get("digest") != digest:
            return (
                f"worker {index} built a different plan ({ready.get('requests')} requests, "
                f"the master {requests}): give every process the same scenario, profile, "
                "seed, --time-scale and --max-requests"
            )
    return None


def _wait_for(
    condition: Callable[[], bool],
    *,
    timeout: float,
    signals: _Signals,
    children: Sequence[subprocess.Popen[bytes]],
    what: str,
) -> str | None:
    """Wait until ``condition()``; a message when the wait failed, None when it held (or a
    signal came: the caller checks)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if signals.interrupted:
            return None
        for child in children:
            if child.poll() is not None:
                return f"a worker process exited with code {child.returncode} before the run"
        if time.monotonic() >= deadline:
            return f"timed out waiting for {what}"
        gevent.sleep(0.05)
    return None


def _spawn_worker(settings: RunSettings, port: int) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "ragstress.driver.locust_process",
        "--settings",
        settings.model_dump_json(),
        "--role",
        "worker",
        "--master-host",
        "127.0.0.1",
        "--master-port",
        str(port),
        "--exit-with-parent",
    ]
    return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)


def _wait_exit(children: Sequence[subprocess.Popen[bytes]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for child in children:
        while child.poll() is None and time.monotonic() < deadline:
            gevent.sleep(0.05)


def _kill_children(children: Sequence[subprocess.Popen[bytes]]) -> None:
    for child in children:
        if child.poll() is None:
            child.terminate()
    deadline = time.monotonic() + 3.0
    for child in children:
        try:
            child.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def run_worker(
    settings: RunSettings,
    *,
    signals: _Signals,
    master_host: str,
    master_port: int,
    exit_with_parent: bool,
) -> int:
    if exit_with_parent:
        gevent.spawn(_exit_with_parent, os.getppid())
    try:
        plan: ReplayPlan | None = _load_plan(settings)
        error = None
    except ConfigError as exc:
        plan, error = None, "; ".join(exc.problems)
    except _SetupError as exc:
        plan, error = None, str(exc)
    env = _environment(settings)
    runner = env.create_worker_runner(master_host, master_port)
    env.events.init.fire(environment=env, runner=runner, web_ui=None)
    bye = Event()
    signals.on_stop(lambda: _STATE.replayer.request_stop() if _STATE.replayer else bye.set())

    def on_setup(environment: Any, msg: Any, **_kw: Any) -> None:
        del environment
        index, workers = int(msg.data["index"]), int(msg.data["workers"])
        if plan is None:
            runner.send_message("ragstress_ready", {"index": index, "error": error})
            return
        share = plan.share(index, workers)
        _STATE.replayer = Replayer(
            settings,
            share,
            duration_s=plan.duration_s,
            max_in_flight=max(1, math.ceil(settings.max_in_flight / workers)),
            request_event=env.events.request,
        )
        runner.send_message(
            "ragstress_ready",
            {
                "index": index,
                "requests": len(plan.requests),
                "digest": _plan_digest(plan),
                "share": len(share),
            },
        )

    def on_go(environment: Any, msg: Any, **_kw: Any) -> None:
        del environment
        if _STATE.replayer is not None:
            _STATE.replayer.go(float(msg.data["t0"]))
            _STATE.ready.set()

    def on_stop(environment: Any, msg: Any, **_kw: Any) -> None:
        del environment, msg
        if _STATE.replayer is not None:
            _STATE.replayer.request_stop()

    def on_bye(environment: Any, msg: Any, **_kw: Any) -> None:
        del environment, msg
        bye.set()
        if _STATE.replayer is not None:
            _STATE.replayer.request_stop()

    runner.register_message("ragstress_setup", on_setup)
    runner.register_message("ragstress_go", on_go)
    runner.register_message("ragstress_stop", on_stop)
    runner.register_message("ragstress_bye", on_bye)
    cpu_start = _cpu_seconds()
    while not bye.is_set() and not (_STATE.replayer and _STATE.replayer.started.is_set()):
        if not len(runner.greenlet):  # Locust quit: the master stopped sending heartbeats
            log.error("lost the master before the run started")
            return 1
        bye.wait(0.1)
    replayer = _STATE.replayer
    if replayer is not None and replayer.started.is_set():
        last_report = 0.0
        while not replayer.finished.wait(FLUSH_EVERY_S):
            batch = replayer.drain()
            now = time.monotonic()
            if batch or now - last_report >= 1.0:
                _send_samples(runner, replayer, batch)
                last_report = now
        _send_samples(runner, replayer, replayer.drain())
        runner.send_message(
            "ragstress_done",
            {
                "cpu_s": _cpu_seconds() - cpu_start,
                "elapsed_s": replayer.dispatch_ended - replayer.base,
                "sent": replayer.sent,
                "shed": replayer.shed,
                "aborted": replayer.aborted,
                "unsent": replayer.unsent,
                "hard_bound": replayer.hit_hard_bound,
                "interrupted": signals.interrupted,
            },
        )
        bye.wait(30.0)
    # Locust's own goodbye: the master forgets this worker at once instead of waiting for it
    env.events.quitting.fire(environment=env, reverse=True)
    gevent.sleep(0.1)  # let the last messages leave
    runner.quit()
    return 0


def _send_samples(runner: Any, replayer: Replayer, batch: Sequence[Sample]) -> None:
    """Send ``batch`` to the master in slices, yielding to the dispatcher between them; an
    empty batch still sends one message (the master's liveness and progress figures)."""
    for i in range(0, max(len(batch), 1), FLUSH_SLICE):
        runner.send_message(
            "ragstress_samples",
            {
                "rows": [_row(s) for s in batch[i : i + FLUSH_SLICE]],
                "sent": replayer.sent,
                "in_flight": replayer.in_flight,
            },
        )
        gevent.sleep(0)


def _exit_with_parent(parent: int) -> None:
    while True:
        gevent.sleep(0.5)
        if os.getppid() != parent:
            os._exit(1)


# ---------------------------------------------------------------------------------------------
# entry point


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ragstress.driver.locust_process")
    parser.add_argument("--settings", required=True, help="RunSettings as JSON")
    parser.add_argument("--role", choices=("local", "master", "worker"), default="local")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--master-host", default="127.0.0.1")
    parser.add_argument("--master-bind-host", default="*")
    parser.add_argument("--master-port", type=int, default=5557)
    parser.add_argument("--web-ui", action="store_true")
    parser.add_argument("--web-port", type=int, default=8089)
    parser.add_argument("--exit-with-parent", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _arguments(argv)
    # Locust's web UI parses sys.argv with its own parser (for its extra options): show it none
    sys.argv = sys.argv[:1]
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s", stream=sys.stderr)
    settings = RunSettings.model_validate_json(args.settings)
    web_port = args.web_port if args.web_ui else None
    if args.exit_with_parent:  # a worker this process's master started: the master stops it
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signals = _Signals(())
    else:
        signals = _Signals((signal.SIGINT, signal.SIGTERM))
    try:
        if args.role == "worker":
            return run_worker(
                settings,
                signals=signals,
                master_host=args.master_host,
                master_port=args.master_port,
                exit_with_parent=args.exit_with_parent,
            )
        if args.role == "master":
            return run_master(
                settings,
                signals=signals,
                workers=max(1, args.workers),
                bind_host=args.master_bind_host,
                port=args.master_port,
                spawn_local=False,
                web_port=web_port,
            )
        if args.workers > 1:
            return run_master(
                settings,
                signals=signals,
                workers=args.workers,
                bind_host="127.0.0.1",
                port=0,
                spawn_local=True,
                web_port=web_port,
            )
        return run_local(settings, signals=signals, web_port=web_port)
    except ConfigError as exc:
        _emit({"event": "error", "message": "\n".join(exc.problems)})
        return 2
    except _SetupError as exc:
        _emit({"event": "error", "message": str(exc)})
        return 2


if __name__ == "__main__":
    sys.exit(main())
