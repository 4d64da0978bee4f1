"""Run sweeps on a Dask cluster: ``ragstress sweep ... --dask tcp://host:8786``.

Local processes (:class:`~ragstress.capacity.sweep.PointRunner`'s default pool) stop at one
machine's cores. A sweep's points are independent and each is a pure function of its
arguments, so they spread over many machines unchanged; Dask's ``distributed`` scheduler does
that (placement, rerunning a lost worker's tasks, a dashboard) and is well kept, so we use it rather
than a scheduler of our own. :func:`dask_executor` connects to a running scheduler and hands
:func:`~ragstress.capacity.sweep.run_sweep` a ``concurrent.futures.Executor`` (Dask's
``ClientExecutor``), so the same code path and the same seeds give the same rows as a local run.

Points travel to the workers pickled, and ragstress's functions and models pickle by reference:
every worker must have the same ragstress version installed as the machine that submits (and
the same numpy and simpy, which draw the random numbers), or it fails to run them or, worse,
gives different rows.

``distributed`` is an optional dependency: ``pip install 'ragstress[dask]'``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import Executor
from contextlib import contextmanager

from ragstress.config import ConfigError

__all__ = ["CONNECT_TIMEOUT_S", "dask_executor"]

# How long to keep trying to reach the scheduler. Dask retries a refused connection until this
# runs out, so it is also how long a wrong address takes to fail.
CONNECT_TIMEOUT_S = 10.0

_ADDRESS = re.compile(r"(?:tcp|tls)://(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(\d{1,5})")
_ALLOWED = "allowed: tcp://host:port or tls://host:port, e.g. tcp://scheduler:8786"


def _check_address(address: str) -> None:
    match = _ADDRESS.fullmatch(address)
    if match is None or not 1 <= int(match.group(1)) <= 65535:
        raise ConfigError([f"--dask {address}: not a scheduler address ({_ALLOWED})"])


def _reason(exc: BaseException, timeout: float) -> str:
    """A short, one-line reason for a failed connection."""
    chain: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in chain:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    if any(isinstance(e, ConnectionRefusedError) or "Connection refused" in str(e) for e in chain):
        return f"connection refused, retried for {timeout:g} s"
    if any("Timed out" in str(e) for e in chain):
        return f"no answer within {timeout:g} s"
    if not any(isinstance(e, OSError) for e in chain):  # it answered, with something else
        return f"it answered, but not as a Dask scheduler: {type(exc).__name__}"
    text = (str(exc).strip().splitlines() or [""])[0]
    text = text if len(text) <= 120 else text[:117] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _handshake(address: str, timeout: float) -> str | None:
    """Connect to ``address`` and complete Dask's handshake, with a deadline; ``None`` if that
    worked, else why not.

    ``Client(address, timeout=...)`` bounds only the connection, not the handshake after it
    (on purpose, dask/distributed#7698), so a port that accepts a connection and never answers
    (some other service, a wrong port) would hang it for ever. This probe gives the connection
    ``timeout`` and everything together twice that. It uses the credentials ``Client`` uses
    when no ``distributed.client.security-loader`` is configured; with one, it is skipped."""
    import asyncio

    import dask.config
    from distributed.comm.core import connect
    from distributed.security import Security

    if dask.config.get("distributed.client.security-loader", None):
        return None  # only Client knows the credentials; it has to do without the deadline
    # Security's and connect's signatures are unannotated: hence the ignores
    args = Security().get_connection_args("client")  # type: ignore[no-untyped-call]

    async def probe() -> None:
        comm = await connect(address, timeout=timeout, **args)  # type: ignore[no-untyped-call]
        await comm.close()

    try:
        asyncio.run(asyncio.wait_for(probe(), 2 * timeout))
    except TimeoutError:  # from wait_for: connected, then silence
        return f"it accepted the connection but sent no Dask handshake within {2 * timeout:g} s"
    except Exception as exc:  # not BaseException: Ctrl-C still interrupts
        return _reason(exc, timeout)
    return None


@contextmanager
def dask_executor(address: str, *, timeout: float | None = None) -> Iterator[Executor]:
    """Connect to the Dask scheduler at ``address`` (``tcp://host:port`` or ``tls://...``) and
    yield a ``concurrent.futures.Executor`` that runs calls on its workers; the connection is
    closed on exit. ``timeout`` (default :data:`CONNECT_TIMEOUT_S`) bounds the connection
    attempt. A bad address, an unreachable scheduler or a missing ``distributed`` raise
    ConfigError with one line."""
    _check_address(address)
    try:
        from distributed import Client
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in {"distributed", "dask"}:
            raise
        raise ConfigError(
            ["--dask: needs the 'dask' extra: pip install 'ragstress[dask]'"]
        ) from None
    seconds = CONNECT_TIMEOUT_S if timeout is None else timeout
    failure = _handshake(address, seconds)
    if failure is None:
        try:
            # set_as_default=False: this client serves the sweep only, not other dask code in
            # the process. distributed ships py.typed, but Client is unannotated: the ignores.
            client = Client(address, timeout=seconds, set_as_default=False)  # type: ignore[no-untyped-call]
        except Exception as exc:  # not BaseException: Ctrl-C still interrupts
            failure = _reason(exc, seconds)
    if failure is not None:
        # raised outside the except block, so no traceback keeps a half-made client alive: it
        # is collected now, not at interpreter exit, where its clean-up prints a traceback
        raise ConfigError([f"--dask {address}: cannot reach the scheduler ({failure})"])
    try:
        # pure=False: every submission is its own task. The default (pure=True) names a task by
        # hashing its arguments, which costs a pass over the scenario and profile per point and
        # would merge identical submissions into one cached result.
        executor: Executor = client.get_executor(pure=False)  # type: ignore[no-untyped-call]
        try:
            yield executor
        finally:
            executor.shutdown(wait=False)  # cancels anything still queued (e.g. after Ctrl-C)
    finally:
        client.close()  # type: ignore[no-untyped-call]
