"""Scenario + seed → Workload: every request's intended arrival time and attributes."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from ragstress.config.distributions import Distribution
from ragstress.config.scenario import Scenario, TraceArrivals
from ragstress.seeding import stream
from ragstress.workload.arrivals import rescaled_arrivals
from ragstress.workload.trace import load_trace

__all__ = ["Workload", "build_workload"]


@dataclass(frozen=True, eq=False)
class Workload:
    """A scenario materialised with its seed. Arrays are indexed by request id and read-only.

    The model and the driver consume the same Workload, so a prediction and a measurement
    describe the same requests.
    """

    scenario: Scenario
    seed: int
    arrival_s: np.ndarray
    query_id: np.ndarray
    query_tokens: np.ndarray
    top_k: np.ndarray
    context_tokens: np.ndarray
    output_tokens: np.ndarray
    truncated: bool = False

    def __len__(self) -> int:
        return int(self.arrival_s.size)

    @property
    def duration_s(self) -> float:
        return self.scenario.duration_s

    def prompt_tokens(self, system_prompt_tokens: int = 0) -> np.ndarray:
        """What an LLM reads for each request: system prompt + query + retrieved context."""
        return np.asarray(system_prompt_tokens + self.query_tokens + self.context_tokens)

    @cached_property
    def _faker(self) -> Any:
        from faker import Faker  # imported lazily: the model never needs text

        return Faker(self.scenario.requests.locale)

    def query_text(self, i: int) -> str:
        """The request's query text: made with Faker from the query id, so repeated query ids
        give the same text, and about as many words as the query's token count implies."""
        fake = self._faker
        fake.seed_instance(self.seed * 1_000_003 + int(self.query_id[i]))
        words = max(1, round(int(self.query_tokens[i]) * 0.75))  # ≈ 0.75 words per token
        text: str = fake.sentence(nb_words=words, variable_nb_words=False)
        return text


def _tokens(dist: Distribution, rng: np.random.Generator, n: int) -> np.ndarray:
    values = np.rint(dist.draw(rng, n))
    return np.asarray(np.maximum(values, 1), dtype=np.int64)


def build_workload(scenario: Scenario, seed: int | None = None) -> Workload:
    """Materialise ``scenario``. ``seed`` overrides the scenario's own seed."""
    seed = scenario.seed if seed is None else seed
    arrivals = scenario.arrivals
    span = scenario.duration_s
    trace_in: np.ndarray | None = None
    trace_out: np.ndarray | None = None
    if isinstance(arrivals, TraceArrivals):
        trace = load_trace(arrivals.file)
        t = (trace.arrival_s - arrivals.offset_s) / arrivals.speedup
        keep = (t >= 0) & (t < span)
        arrival_s = t[keep]
        if arrivals.use_tokens == "output":
            trace_out = trace.output_tokens[keep]
        elif arrivals.use_tokens:
            trace_in, trace_out = trace.input_tokens[keep], trace.output_tokens[keep]
    else:
        cv = getattr(arrivals, "cv", 1.0)
        arrival_s = rescaled_arrivals(
            arrivals.rate, span, arrivals.kind, stream(seed, "arrivals"), cv
        )
    truncated = arrival_s.size > scenario.max_requests
    if truncated:
        arrival_s = arrival_s[: scenario.max_requests]
        if trace_in is not None:
            trace_in = trace_in[: arrival_s.size]
        if trace_out is not None:
            trace_out = trace_out[: arrival_s.size]
    n = int(arrival_s.size)

    mix = scenario.requests
    query_tokens = _tokens(mix.query_tokens, stream(seed, "query_tokens"), n)
    chunk = _tokens(mix.chunk_tokens, stream(seed, "chunk_tokens"), n)
    top_k = np.full(n, mix.top_k, dtype=np.int64)
    context_tokens = top_k * chunk
    output_tokens = _tokens(mix.output_tokens, stream(seed, "output_tokens"), n)
    if mix.distinct_queries is None:
        query_id = np.arange(n, dtype=np.int64)
    else:
        ranks = np.arange(1, mix.distinct_queries + 1, dtype=float)
        p = ranks**-mix.zipf_s
        query_id = stream(seed, "query_id").choice(mix.distinct_queries, size=n, p=p / p.sum())
        # a repeated query has the same text, hence the same size
        first = np.full(mix.distinct_queries, -1, dtype=np.int64)
        first[query_id[::-1]] = np.arange(n - 1, -1, -1)
        query_tokens = query_tokens[first[query_id]]
    if trace_in is not None:
        # The trace's prompt size is the LLM's whole input; keep the mix's query size (as
        # repeated queries set it above) and let the retrieved context make up the rest, so
        # the LLM reads what the trace recorded.
        context_tokens = np.maximum(trace_in - query_tokens, 0)
    if trace_out is not None:
        output_tokens = np.maximum(trace_out, 1)
    query_id = query_id.astype(np.int64, copy=False)  # before freezing: astype copies
    columns = [arrival_s, query_id, query_tokens, top_k, context_tokens, output_tokens]
    for col in columns:
        col.setflags(write=False)
    return Workload(
        scenario=scenario,
        seed=seed,
        arrival_s=arrival_s,
        query_id=query_id,
        query_tokens=query_tokens,
        top_k=top_k,
        context_tokens=context_tokens,
        output_tokens=output_tokens,
        truncated=bool(truncated),
    )
