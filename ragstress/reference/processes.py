"""Child processes of ``ragstress serve``: start, pin, watch, stop, leave no orphans.

Two rules keep a stack from outliving its supervisor:

- each child runs in its own session, so a Ctrl-C in the terminal reaches the supervisor
  only, which then stops the children in order (gateway first, the database last);
- each child asks the kernel for a signal when its parent dies (Linux ``PR_SET_PDEATHSIG``),
  so even a SIGKILL of the supervisor, which runs no cleanup at all, stops every child.

``preexec_fn`` is unsafe with threads in the parent; the supervisor starts its children from
its main thread before it starts any other, and the function only makes two system calls.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

__all__ = [
    "ServiceError",
    "child_setup",
    "free_port",
    "parse_cpus",
    "start_service",
    "stop_process",
    "wait_healthy",
]

_PR_SET_PDEATHSIG = 1


class ServiceError(RuntimeError):
    """A service failed to start or died."""


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if not sys.platform.startswith("linux") or name is None:
        return None
    return ctypes.CDLL(name, use_errno=True)


def child_setup(
    death_signal: signal.Signals, cpus: frozenset[int] | None
) -> Callable[[], None] | None:
    """A ``preexec_fn``: die with ``death_signal`` when the parent dies; pin to ``cpus``.

    Runs after ``subprocess`` has switched user, which matters: the kernel clears the
    parent-death signal when the credentials change.
    """
    libc = _libc()
    if libc is None and cpus is None:
        return None

    def setup() -> None:
        if libc is not None:
            libc.prctl(_PR_SET_PDEATHSIG, int(death_signal), 0, 0, 0)
        if cpus is not None:
            os.sched_setaffinity(0, cpus)

    return setup


def parse_cpus(spec: str) -> frozenset[int]:
    """``"1"``, ``"0,2"``, ``"2-3"`` → a set of CPU numbers this process may use.

    Raises ValueError naming what is allowed.
    """
    if not hasattr(os, "sched_setaffinity"):
        raise ValueError("pinning to CPUs needs Linux (os.sched_setaffinity)")
    allowed = sorted(os.sched_getaffinity(0))
    cpus: set[int] = set()
    try:
        for part in spec.split(","):
            lo, sep, hi = part.strip().partition("-")
            first, last = int(lo), int(hi) if sep else int(lo)
            if last < first:
                raise ValueError
            cpus.update(range(first, last + 1))
    except ValueError:
        raise ValueError(
            f"{spec!r} is not a CPU list; write e.g. 1, 0,2 or 2-3 "
            f"(this machine: {', '.join(map(str, allowed))})"
        ) from None
    missing = sorted(cpus - set(allowed))
    if missing:
        raise ValueError(
            f"CPU {', '.join(map(str, missing))} is not available here "
            f"(available: {', '.join(map(str, allowed))})"
        )
    return frozenset(cpus)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on now (the OS's choice). Another process could take it before
    the service binds it; on a loopback test machine that race is rare, and a service that
    fails to bind exits, which the supervisor reports."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def start_service(
    module: str,
    settings: BaseModel,
    log_path: Path,
    cpus: frozenset[int] | None = None,
) -> subprocess.Popen[bytes]:
    """``python -m <module> --settings <json>`` as a child, its output in ``log_path`` (new
    for each start, so the tail shown on a failure is this start's)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    # Each service is one core's worth of work; BLAS/OpenMP pools sized to the machine would
    # only contend with the other services (onnxruntime takes its threads from its settings).
    env.setdefault("OMP_NUM_THREADS", "1")
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", module, "--settings", settings.model_dump_json()],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=child_setup(signal.SIGTERM, cpus),  # noqa: PLW1509 (see module docstring)
        )


def _log_tail(path: Path, chars: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def wait_healthy(
    name: str,
    url: str,
    proc: subprocess.Popen[bytes],
    log_path: Path,
    timeout_s: float,
) -> dict[str, object]:
    """Poll ``url`` (a ``/healthz``) until it answers 200; its JSON body is returned.

    Fails at once, with the end of the service's log, if the process exits first.
    """
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            raise ServiceError(
                f"{name} exited with code {code} while starting\n--- {log_path} ---\n"
                f"{_log_tail(log_path)}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    body = json.loads(resp.read() or b"{}")
                    return body if isinstance(body, dict) else {}
                last = f"HTTP {resp.status}"
        except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError) as e:
            last = str(e)
        time.sleep(0.1)
    raise ServiceError(
        f"{name} did not answer {url} within {timeout_s:g} s ({last})\n--- {log_path} ---\n"
        f"{_log_tail(log_path)}"
    )


def stop_process(
    proc: subprocess.Popen[bytes], sig: signal.Signals = signal.SIGTERM, timeout_s: float = 10.0
) -> int | None:
    """Send ``sig``, wait up to ``timeout_s``, then SIGKILL. Returns the exit code."""
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        except ProcessLookupError:
            pass
    return proc.returncode
