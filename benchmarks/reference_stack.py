"""The reference stack's own figures: cold and warm start, per-stage latency, capacity.

Usage: python benchmarks/reference_stack.py [--corpus-size 1000] [--rates 2,4,6,8,10,12]
       [--seconds 30] [--cpus-stack 1 --cpus-load 0]

1. Cold start: a fresh data folder, so initdb, the corpus build (Faker → chunks → the real
   embedder → COPY → HNSW index) and every service's start; then a warm start on the same
   folder, which reuses the corpus.
2. Single-request latency per stage: 50 sequential JSON requests with 5 sources and
   64 output tokens, stage times read from the gateway's Server-Timing header (median).
   Every question is distinct, so the embedding cache never answers.
3. Capacity: open-loop Poisson load at each rate for ``--seconds`` (an aiohttp client that
   sends each request at its scheduled time whatever is in flight; latency from the scheduled
   time), p50/p95 per rate. The capacity is the first rate whose p95 is at least twice the
   p95 at the lowest rate (interpolated between the rates around it).

The load runs in this process and the stack in its own processes; ``--cpus-stack`` and
``--cpus-load`` pin them apart on a machine with cores to spare. Traffic goes to 127.0.0.1
only; every run is bounded by ``--seconds`` and a request cap.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from ragstress.config.loader import load_profile
from ragstress.reference.processes import parse_cpus
from ragstress.reference.settings import CorpusSettings
from ragstress.reference.stack import ReferenceStack, StackOptions

ROOT = Path(__file__).resolve().parent.parent
QUERIES = (
    "How long does shipping to Port Samanthatown take?",
    "Who approves invoices above ten thousand dollars?",
    "Which team answers incidents for the billing service?",
    "What does the gold plan include?",
    "When can customers call support?",
)


def _query(i: int) -> str:
    """Request i's question: distinct for every i, so the gateway's embedding cache (which
    the profile turns on) never answers and the embed stage is measured."""
    return f"{QUERIES[i % len(QUERIES)]} (ticket {i})"


def _timing(header: str) -> dict[str, float]:
    out = {}
    for part in header.split(","):
        m = re.match(r"\s*([a-z_]+);.*dur=([0-9.]+)", part)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


async def _per_stage(url: str, n: int) -> dict[str, float]:
    rows: list[dict[str, float]] = []
    async with aiohttp.ClientSession() as session:
        for i in range(n):
            body = {"query": _query(i), "top_k": 5, "max_tokens": 64}
            async with session.post(f"{url}/v1/rag", json=body) as resp:
                await resp.read()
                rows.append(_timing(resp.headers["Server-Timing"]))
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


async def _open_loop(
    url: str, rate: float, seconds: float, seed: int, first_id: int
) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1.0 / rate, size=int(rate * seconds * 2) + 10)
    starts = np.cumsum(gaps)
    starts = starts[starts < seconds][:20_000]
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        loop = asyncio.get_running_loop()
        t0 = loop.time() + 0.1

        async def one(i: int, at: float) -> None:
            nonlocal errors
            await asyncio.sleep(max(0.0, t0 + at - loop.time()))
            body = {"query": _query(first_id + i), "top_k": 5, "max_tokens": 64}
            try:
                async with session.post(f"{url}/v1/rag", json=body) as resp:
                    await resp.read()
                    if resp.status != 200:
                        errors += 1
                        return
            except aiohttp.ClientError:
                errors += 1
                return
            latencies.append(loop.time() - (t0 + at))

        await asyncio.gather(*(one(i, float(at)) for i, at in enumerate(starts)))
    lat = np.array(latencies)
    return {
        "rate": rate,
        "sent": len(starts),
        "errors": errors,
        "p50": float(np.percentile(lat, 50)) if lat.size else float("nan"),
        "p95": float(np.percentile(lat, 95)) if lat.size else float("nan"),
    }


def _start(options: StackOptions) -> tuple[ReferenceStack, float]:
    began = time.perf_counter()
    stack = ReferenceStack(options)
    stack.start()
    return stack, time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus-size", type=int, default=1000)
    parser.add_argument("--rates", default="2,4,6,8,10,12")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--cpus-stack", default=None)
    parser.add_argument("--cpus-load", default=None)
    args = parser.parse_args()
    if args.cpus_load:
        os.sched_setaffinity(0, parse_cpus(args.cpus_load))
    profile = load_profile(ROOT / "profiles/reference.yaml")
    with tempfile.TemporaryDirectory(prefix="ragstress-bench-") as tmp:
        options = StackOptions(
            profile=profile,
            data_dir=Path(tmp),
            gateway_port=None,
            corpus=CorpusSettings(documents=args.corpus_size),
            cpus=parse_cpus(args.cpus_stack) if args.cpus_stack else None,
        )
        stack, cold = _start(options)
        report = stack.corpus_report
        phases = dict(stack.startup_seconds)
        stack.stop()
        stack, warm = _start(options)
        try:
            assert stack.urls is not None
            url = stack.urls.gateway
            print(
                f"corpus: {report.documents if report else '?'} documents, "
                f"{report.chunks if report else '?'} chunks"
            )
            print("| start | seconds |\n|---|---|")
            print(f"| cold (initdb + corpus build) | {cold:.1f} |")
            for k, v in phases.items():
                print(f"|   of which {k} | {v:.1f} |")
            print(f"| warm (corpus reused) | {warm:.1f} |")
            stages = asyncio.run(_per_stage(url, 50))
            print("\n| stage (single request, median of 50) | ms |\n|---|---|")
            for k, v in stages.items():
                print(f"| {k} | {v:.1f} |")
            rates = [float(r) for r in args.rates.split(",")]
            rows = [
                asyncio.run(_open_loop(url, r, args.seconds, int(r * 10), (k + 1) * 100_000))
                for k, r in enumerate(rates)
            ]
            print("\n| rate req/s | sent | errors | p50 s | p95 s |\n|---|---|---|---|---|")
            for r in rows:
                print(
                    f"| {r['rate']:g} | {r['sent']} | {r['errors']} | {r['p50']:.3f} | "
                    f"{r['p95']:.3f} |"
                )
            base = rows[0]["p95"]
            capacity = None
            for lo, hi in itertools.pairwise(rows):
                if hi["p95"] >= 2 * base:
                    frac = (2 * base - lo["p95"]) / (hi["p95"] - lo["p95"])
                    capacity = lo["rate"] + frac * (hi["rate"] - lo["rate"])
                    break
            if capacity is None:
                print(f"\np95 did not double up to {rows[-1]['rate']:g} req/s")
            else:
                print(
                    f"\ncapacity (p95 = 2 × p95 at {rows[0]['rate']:g} req/s): {capacity:.1f} req/s"
                )
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
