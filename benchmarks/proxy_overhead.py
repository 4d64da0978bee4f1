"""What the chaos proxy adds to a call when no fault is active: p50 and p99, side by side.

Usage: python benchmarks/proxy_overhead.py [--rates 100,1000] [--seconds 3] [--rounds 4]
       [--cpus-upstream 0 --cpus-proxy 1 --cpus-load 0] [--profile proxy.prof]

Three processes: a small JSON upstream (aiohttp, ``GET /json`` → a 60-byte object), the proxy
(``python -m ragstress.chaos.proxy``, one listener in front of the upstream), and this one,
which sends the load: open loop (each call sent at its scheduled time, evenly spaced, whatever
is in flight) from one aiohttp client with a keep-alive pool. Each call's latency is measured
from when it was sent to its last byte.

For each rate, phases of ``--seconds`` alternate direct → proxied → direct → … for
``--rounds`` pairs (after a warm-up of each), so a change in the machine's load hits both
sides alike; the table pools each side's calls. ``send lag p99`` is how late the generator
sent its calls: when it is large the generator, not the proxy, was the bottleneck.

Each process freezes its start-up objects out of the garbage collector's reach (the proxy
does so itself), so full collections — 40–50 ms over the imports — do not land in a phase.

``--profile FILE`` runs the proxy under cProfile and writes its stats to FILE on exit (it
slows the proxy down; use it to see where the time goes, not for the table).

Everything stays on 127.0.0.1; every phase is bounded by its duration.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import numpy as np
from aiohttp import web

from ragstress.reference.processes import free_port, parse_cpus

ROOT = Path(__file__).resolve().parent.parent
BODY = {"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}


# --- the upstream (its own process) ----------------------------------------------------------


def serve_upstream(port: int) -> None:
    payload = json.dumps(BODY).encode()

    async def handle(request: web.Request) -> web.Response:
        return web.Response(body=payload, content_type="application/json")

    async def freeze(app: web.Application) -> None:
        gc.collect()
        gc.freeze()  # as the proxy does: no 50 ms full collections over the imports

    app = web.Application()
    app.router.add_get("/json", handle)
    app.on_startup.append(freeze)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# --- processes -------------------------------------------------------------------------------


def _start(args: list[str], cpus: frozenset[int] | None) -> subprocess.Popen[bytes]:
    def pin() -> None:
        if cpus is not None:
            os.sched_setaffinity(0, cpus)

    return subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=pin,  # noqa: PLW1509 (two system calls, no threads yet)
        start_new_session=True,
    )


async def _wait_up(session: aiohttp.ClientSession, url: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            async with session.get(url) as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


# --- the load ----------------------------------------------------------------------------------


async def phase(
    session: aiohttp.ClientSession, url: str, rate: float, seconds: float
) -> tuple[np.ndarray, np.ndarray]:
    """Open-loop calls at ``rate`` for ``seconds``: (latencies, send lags), in seconds."""
    n = int(rate * seconds)
    latencies = np.full(n, np.nan)
    lags = np.zeros(n)
    loop = asyncio.get_running_loop()

    async def one(i: int, due: float) -> None:
        sent = loop.time()
        lags[i] = sent - due
        try:
            async with session.get(url) as resp:
                await resp.read()
                if resp.status == 200:
                    latencies[i] = loop.time() - sent
        except aiohttp.ClientError:
            pass

    tasks = []
    start = loop.time() + 0.01
    for i in range(n):
        due = start + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(i, due)))
    await asyncio.gather(*tasks)
    return latencies, lags


def _ms(values: np.ndarray, q: float) -> float:
    return float(np.nanpercentile(values, q)) * 1000


async def measure(args: argparse.Namespace, direct: str, proxied: str) -> list[dict[str, float]]:
    rows = []
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        await _wait_up(session, direct)
        await _wait_up(session, proxied)
        gc.collect()
        gc.freeze()  # the generator's own pauses would blur both sides
        for rate in args.rates:
            for url in (direct, proxied):  # warm-up: pools, caches, the JIT-less interpreter
                await phase(session, url, rate, 1.0)
            samples: dict[str, list[np.ndarray]] = {"direct": [], "proxied": []}
            lags: list[np.ndarray] = []
            for _ in range(args.rounds):
                for name, url in (("direct", direct), ("proxied", proxied)):
                    lat, lag = await phase(session, url, rate, args.seconds)
                    samples[name].append(lat)
                    lags.append(lag)
            d = np.concatenate(samples["direct"])
            p = np.concatenate(samples["proxied"])
            lag_all = np.concatenate(lags)
            rows.append(
                {
                    "rate": rate,
                    "n": float(min(np.sum(~np.isnan(d)), np.sum(~np.isnan(p)))),
                    "failed": float(np.sum(np.isnan(d)) + np.sum(np.isnan(p))),
                    "d50": _ms(d, 50),
                    "d99": _ms(d, 99),
                    "p50": _ms(p, 50),
                    "p99": _ms(p, 99),
                    "lag99": _ms(lag_all, 99),
                }
            )
    return rows


def table(rows: list[dict[str, float]]) -> str:
    head = (
        "| rate (req/s) | direct p50 | proxied p50 | added p50 | ratio p50 "
        "| direct p99 | proxied p99 | added p99 | ratio p99 | send lag p99 | calls/side |"
    )
    lines = [head, "|" + "|".join("---" for _ in range(11)) + "|"]
    lines.extend(
        f"| {r['rate']:,.0f} | {r['d50']:.3f} ms | {r['p50']:.3f} ms | "
        f"{r['p50'] - r['d50']:+.3f} ms | {r['p50'] / r['d50']:.2f}× | "
        f"{r['d99']:.3f} ms | {r['p99']:.3f} ms | {r['p99'] - r['d99']:+.3f} ms | "
        f"{r['p99'] / r['d99']:.2f}× | {r['lag99']:.3f} ms | {r['n']:,.0f} |"
        for r in rows
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="100,1000")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--cpus-upstream", default=None)
    parser.add_argument("--cpus-proxy", default=None)
    parser.add_argument("--cpus-load", default=None)
    parser.add_argument("--profile", default=None, help="cProfile the proxy into this file")
    parser.add_argument("--serve-upstream", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream is not None:
        serve_upstream(args.serve_upstream)
        return
    args.rates = [float(x) for x in args.rates.split(",")]
    cpus = {
        name: None if spec is None else parse_cpus(spec)
        for name, spec in (
            ("upstream", args.cpus_upstream),
            ("proxy", args.cpus_proxy),
            ("load", args.cpus_load),
        )
    }
    up_port, proxy_port, control_port = free_port(), free_port(), free_port()
    settings = {
        "listeners": {"embed": {"upstream": f"http://127.0.0.1:{up_port}", "port": proxy_port}},
        "control_port": control_port,
    }
    proxy_cmd = ["-m", "ragstress.chaos.proxy", "--settings", json.dumps(settings)]
    if args.profile:
        proxy_cmd = ["-m", "cProfile", "-o", args.profile, *proxy_cmd]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(_start([__file__, "--serve-upstream", str(up_port)], cpus["upstream"]))
        procs.append(_start(proxy_cmd, cpus["proxy"]))
        load_cpus = cpus["load"]
        if load_cpus is not None:
            os.sched_setaffinity(0, load_cpus)  # after the children started: they keep theirs
        rows = asyncio.run(
            measure(
                args,
                f"http://127.0.0.1:{up_port}/json",
                f"http://127.0.0.1:{proxy_port}/json",
            )
        )
    finally:
        for proc in reversed(procs):
            os.killpg(proc.pid, signal.SIGINT)  # SIGINT: cProfile writes its file on the way out
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
    print(
        f"proxy overhead, no fault active ({args.rounds} × {args.seconds:g} s per side and rate, "
        f"interleaved; {os.cpu_count()} CPUs)"
    )
    print(table(rows))
    failed = sum(r["failed"] for r in rows)
    if failed:
        print(f"{failed:.0f} calls failed")


if __name__ == "__main__":
    main()
