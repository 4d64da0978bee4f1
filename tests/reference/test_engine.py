"""The built-in engine: the pure scheduler step by step on virtual time, the same arrivals
through the SimPy model's station, and the asyncio driver against the real clock.

Unless a test says otherwise a step costs ``0.01 + 0.0001·P + 0.001·D`` seconds (P prompt
tokens prefilled, D sequences decoding), with no context term, as in the model's tests.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import statistics
import time
from dataclasses import dataclass, field
from functools import partial

import pytest
import simpy

from ragstress.config.profile import EngineStep, LlmEngineStage
from ragstress.model.calls import CallTable
from ragstress.model.llm_engine import LlmEngineStation
from ragstress.reference.engine import (
    EmulatedEngine,
    EngineRefusedError,
    EngineScheduler,
    EngineStoppedError,
    StepPlan,
    StepTiming,
    Token,
)
from ragstress.reference.settings import EngineSettings

BASE = 0.01
PREFILL = 0.0001
DECODE = 0.001


def approx(x: float) -> object:
    return pytest.approx(x, rel=1e-9, abs=1e-12)


def settings(
    *,
    max_num_seqs: int = 256,
    kv_cache_tokens: int = 1_000_000,
    max_batched_tokens: int = 100_000,
    per_context_token_s: float = 0.0,
    queue_limit: int | None = None,
    base_s: float = BASE,
    per_prefill_token_s: float = PREFILL,
    per_decode_seq_s: float = DECODE,
) -> EngineSettings:
    return EngineSettings(
        max_num_seqs=max_num_seqs,
        kv_cache_tokens=kv_cache_tokens,
        max_batched_tokens=max_batched_tokens,
        queue_limit=queue_limit,
        step=EngineStep(
            base_s=base_s,
            per_prefill_token_s=per_prefill_token_s,
            per_decode_seq_s=per_decode_seq_s,
            per_context_token_s=per_context_token_s,
        ),
    )


# -- a virtual-time driver for the pure scheduler --------------------------------------------


@dataclass
class Log:
    """What happened to each call, and every step as planned."""

    refused: dict[int, str] = field(default_factory=dict)
    admitted: dict[int, float] = field(default_factory=dict)
    waited: dict[int, float] = field(default_factory=dict)
    first: dict[int, float] = field(default_factory=dict)
    tokens: dict[int, list[float]] = field(default_factory=dict)
    done: dict[int, float] = field(default_factory=dict)
    steps: list[StepPlan] = field(default_factory=list)
    # (time, running, waiting, kv_used) sampled right after each submit batch and step end
    states: list[tuple[float, int, int, int]] = field(default_factory=list)

    def step_table(self) -> list[tuple[float, float, int, int, int]]:
        return [
            (s.start, s.duration, s.prefill_tokens, s.decode_seqs, s.context_tokens)
            for s in self.steps
        ]


def replay(cfg: EngineSettings, calls: list[tuple[float, int, int]]) -> Log:
    """Run calls ``(arrival, prompt, answer)`` (ids = list positions) through a scheduler.

    As in the SimPy model: calls arriving at one instant are all submitted before an idle
    engine starts its step; an arrival at the very instant a step ends is submitted first.
    """
    sched = EngineScheduler(cfg)
    log = Log()
    order = sorted(range(len(calls)), key=lambda c: calls[c][0])
    i = 0
    plan: StepPlan | None = None

    def begin(t: float) -> StepPlan | None:
        p = sched.start_step(t)
        if p is not None:
            log.steps.append(p)
            for c, waited in p.admitted:
                log.admitted[c] = t
                log.waited[c] = waited
        return p

    while i < len(order) or plan is not None:
        t_arr = calls[order[i]][0] if i < len(order) else math.inf
        t_end = plan.end if plan is not None else math.inf
        if t_arr <= t_end:
            while i < len(order) and calls[order[i]][0] == t_arr:
                c = order[i]
                _, prompt, out = calls[c]
                result = sched.submit(c, prompt, out, t_arr)
                if result != "accepted":
                    log.refused[c] = result
                i += 1
            log.states.append((t_arr, sched.running, sched.waiting, sched.kv_used))
            if plan is None:
                plan = begin(t_arr)
        else:
            events = sched.end_step(t_end)
            assert events.at == t_end
            for c in events.first_token:
                log.first[c] = t_end
            for c in (*events.first_token, *events.next_token):
                log.tokens.setdefault(c, []).append(t_end)
            for c in events.finished:
                log.done[c] = t_end
            log.states.append((t_end, sched.running, sched.waiting, sched.kv_used))
            plan = begin(t_end)
    return log


def burst(prompts: list[int], outputs: list[int]) -> list[tuple[float, int, int]]:
    return [(0.0, p, o) for p, o in zip(prompts, outputs, strict=True)]


def assert_steps(log: Log, expected: list[tuple[float, float, int, int, int]]) -> None:
    got = log.step_table()
    assert len(got) == len(expected), got
    for g, e in zip(got, expected, strict=True):
        assert g[0] == approx(e[0])
        assert g[1] == approx(e[1])
        assert g[2:] == e[2:]


# -- 1. the pure scheduler, hand-computed ----------------------------------------------------


def test_burst_is_one_prefill_step_then_decode_steps() -> None:
    log = replay(settings(), burst([100] * 4, [3] * 4))
    assert_steps(
        log,
        [
            (0.0, 0.05, 400, 0, 0),  # 0.01 + 400·0.0001
            (0.05, 0.014, 0, 4, 404),  # 0.01 + 4·0.001; K = 4·(100 + 1), free here
            (0.064, 0.014, 0, 4, 408),
        ],
    )
    for c in range(4):
        assert log.admitted[c] == 0.0
        assert log.tokens[c] == [approx(0.05), approx(0.064), approx(0.078)]
        assert log.done[c] == approx(0.078)
    assert log.states[-1][1:] == (0, 0, 0)


def test_chunked_prefill_with_the_context_term() -> None:
    log = replay(settings(max_batched_tokens=100, per_context_token_s=1e-5), burst([250], [2]))
    # Chunks of 100, 100, 50 tokens; K is the prompt prefilled before each chunk, then
    # prompt + generated while decoding: 0.02, 0.01+0.01+0.001, 0.01+0.005+0.002, then
    # 0.01+0.001+0.00251.
    assert_steps(
        log,
        [
            (0.0, 0.02, 100, 0, 0),
            (0.02, 0.021, 100, 0, 100),
            (0.041, 0.017, 50, 0, 200),
            (0.058, 0.01351, 0, 1, 251),
        ],
    )
    assert log.first[0] == approx(0.058)
    assert log.done[0] == approx(0.07151)


def test_decoding_sequences_take_the_budget_first_and_a_prefill_may_sit_out() -> None:
    log = replay(settings(max_batched_tokens=1), burst([1, 1], [3, 1]))
    # c0 takes the only token; then it decodes and takes the whole budget, c1 sits out.
    assert_steps(
        log,
        [
            (0.0, 0.0101, 1, 0, 0),
            (0.0101, 0.011, 0, 1, 2),
            (0.0211, 0.011, 0, 1, 3),
            (0.0321, 0.0101, 1, 0, 0),
        ],
    )
    assert log.admitted[1] == 0.0  # admitted at once, but prefilled only after c0 is done
    assert log.done[0] == approx(0.0321)
    assert log.first[1] == approx(0.0422)
    assert log.done[1] == approx(0.0422)


def test_kv_head_of_line_blocking() -> None:
    # Needs 300, 300, 300, 300 and 11 tokens; KV 1000.
    log = replay(
        settings(kv_cache_tokens=1000),
        burst([298, 290, 290, 290, 10], [2, 10, 10, 10, 1]),
    )
    assert log.states[0] == (0.0, 0, 5, 0)
    # Step 1 admits c0-c2 (900 tokens); c4 would fit in the 100 left but may not overtake c3.
    assert log.steps[0].admitted == ((0, 0.0), (1, 0.0), (2, 0.0))
    assert_steps(
        log,
        [
            (0.0, 0.0978, 878, 0, 0),
            (0.0978, 0.013, 0, 3, 881),  # c0 finishes: 300 tokens free
            (0.1108, 0.042, 300, 2, 584),  # c3 and c4 admitted; c4 is done at its end
        ]
        # c1 and c2 decode tokens 4-10 with c3's tokens 2-8, then c3 alone.
        + [(0.1528 + 0.013 * j, 0.013, 0, 3, 877 + 3 * j) for j in range(7)]
        + [(0.2438, 0.011, 0, 1, 298), (0.2548, 0.011, 0, 1, 299)],
    )
    assert log.done[1] == log.done[2] == approx(0.2438)
    assert log.done[3] == approx(0.2658)
    assert log.states[1] == (approx(0.0978), 3, 2, 900)
    assert log.waited[3] == approx(0.1108)
    assert log.waited[4] == approx(0.1108)
    assert log.done[4] == approx(0.1528)
    assert log.first[3] == approx(0.1528)


def test_max_num_seqs_caps_the_batch() -> None:
    log = replay(settings(max_num_seqs=2), burst([100, 100, 100], [2, 5, 1]))
    assert log.steps[0].admitted == ((0, 0.0), (1, 0.0))
    assert log.steps[2].admitted == ((2, approx(0.042)),)
    assert_steps(
        log,
        [
            (0.0, 0.03, 200, 0, 0),
            (0.03, 0.012, 0, 2, 202),  # c0 done
            (0.042, 0.021, 100, 1, 102),  # c2 in; c1 decodes
            (0.063, 0.011, 0, 1, 103),
            (0.074, 0.011, 0, 1, 104),
        ],
    )
    assert log.done == {0: approx(0.042), 2: approx(0.063), 1: approx(0.085)}


def test_one_token_answer_finishes_with_its_prefill_and_zero_counts_as_one() -> None:
    sched = EngineScheduler(settings())
    assert sched.submit(0, 100, 1, 0.0) == "accepted"
    assert sched.submit(1, 100, 0, 0.0) == "accepted"
    assert sched.kv_used == 0
    plan = sched.start_step(0.0)
    assert plan is not None
    assert sched.kv_used == 202
    assert plan.end == approx(0.03)
    events = sched.end_step(plan.end)
    assert events.first_token == (0, 1)
    assert events.next_token == ()
    assert events.finished == (0, 1)
    assert sched.kv_used == 0
    assert sched.tokens_emitted == 2
    assert sched.start_step(plan.end) is None  # idle


def test_empty_prompt_emits_its_first_token_after_one_step() -> None:
    log = replay(settings(), burst([0], [3]))
    assert_steps(log, [(0.0, 0.01, 0, 0, 0), (0.01, 0.011, 0, 1, 1), (0.021, 0.011, 0, 1, 2)])
    assert log.first[0] == approx(0.01)
    assert log.done[0] == approx(0.032)


def test_call_arriving_mid_step_waits_for_it_to_end() -> None:
    log = replay(settings(), [(0.0, 100, 2), (0.005, 100, 1)])
    assert log.waited[1] == approx(0.015)
    assert_steps(log, [(0.0, 0.02, 100, 0, 0), (0.02, 0.021, 100, 1, 101)])
    assert log.done == {0: approx(0.041), 1: approx(0.041)}


def test_queue_limit_refuses_beyond_the_calls_that_fit() -> None:
    log = replay(settings(max_num_seqs=1, queue_limit=1), burst([100] * 3, [1] * 3))
    assert log.refused == {2: "overloaded"}
    assert log.done == {0: approx(0.02), 1: approx(0.04)}


def test_queue_limit_zero_serves_only_calls_that_fit_now() -> None:
    calls = [(0.0, 100, 1), (0.005, 100, 1), (0.006, 100, 1), (0.03, 100, 1)]
    log = replay(settings(max_num_seqs=2, queue_limit=0), calls)
    # c1 arrives mid-step with a slot free: it waits for the step, it is not refused. c2
    # finds both slots taken. c3 arrives when c0 has finished and a slot is free again.
    assert log.refused == {2: "overloaded"}
    assert log.waited[1] == approx(0.015)
    assert log.done[1] == approx(0.04)
    assert log.waited[3] == approx(0.01)
    assert log.done[3] == approx(0.06)


def test_too_long_is_refused_at_submit() -> None:
    log = replay(settings(kv_cache_tokens=100), burst([95, 95, 100, 99], [6, 5, 0, 1]))
    assert log.refused == {0: "too_long", 2: "too_long"}  # needs 101 (0 answer counts 1)
    assert sorted(log.done) == [1, 3]
    assert log.admitted[3] == approx(log.done[1])  # c1 held all 100 tokens


def test_scheduler_rejects_misuse() -> None:
    sched = EngineScheduler(settings())
    with pytest.raises(RuntimeError, match="no step"):
        sched.end_step(0.0)
    assert sched.submit(7, 10, 2, 0.0) == "accepted"
    with pytest.raises(ValueError, match="already"):
        sched.submit(7, 10, 2, 0.0)
    with pytest.raises(ValueError, match="prompt_tokens"):
        sched.submit(8, -1, 2, 0.0)
    assert sched.start_step(0.0) is not None
    with pytest.raises(RuntimeError, match="already in progress"):
        sched.start_step(0.0)


# -- 2. the same arrivals through the SimPy model ----------------------------------------------


def _submit(st: LlmEngineStation, c: int, _event: object) -> None:
    st.submit(c)


def run_model(cfg: EngineSettings, calls: list[tuple[float, int, int]]) -> CallTable:
    n = len(calls)
    env = simpy.Environment()
    table = CallTable(
        req=list(range(n)),
        tokens_in=[p for _, p, _ in calls],
        tokens_out=[o for _, _, o in calls],
        service_s=[math.nan] * n,
        first_token_s=[math.nan] * n,
    )
    stage = LlmEngineStage.model_validate(
        {
            "kind": "llm_engine",
            "name": "generate",
            "max_num_seqs": cfg.max_num_seqs,
            "kv_cache_tokens": cfg.kv_cache_tokens,
            "max_batched_tokens": cfg.max_batched_tokens,
            "queue_limit": cfg.queue_limit,
            "step": cfg.step.model_dump(),
        }
    )

    def on_done(c: int) -> None:
        table.done_at[c] = env.now

    def on_shed(c: int) -> None:
        table.outcome[c] = "shed"

    st = LlmEngineStation(env, stage, table, on_done=on_done, on_shed=on_shed)
    for c, (t, _, _) in enumerate(calls):
        env.timeout(t).callbacks.append(partial(_submit, st, c))
    env.run()
    return table


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_scheduler_matches_the_simpy_model(seed: int) -> None:
    rng = random.Random(seed)
    cfg = settings(
        max_num_seqs=rng.choice([2, 4, 8]),
        kv_cache_tokens=2000,
        max_batched_tokens=rng.choice([64, 256, 512]),
        per_context_token_s=1e-6,
        queue_limit=rng.choice([None, 0, 3]),
    )
    calls: list[tuple[float, int, int]] = []
    t = 0.0
    for _ in range(400):
        t += rng.expovariate(25.0)
        prompt = rng.choice([0, rng.randint(1, 600), rng.randint(1, 2100)])
        calls.append((t, prompt, rng.randint(0, 40)))
    calls[10:10] = [(calls[9][0], 50, 5)] * 3  # a burst at one instant
    calls.sort(key=lambda c: c[0])

    table = run_model(cfg, calls)
    log = replay(cfg, calls)

    shed = {c for c in range(len(calls)) if table.outcome[c] == "shed"}
    assert set(log.refused) == shed
    assert len(log.done) + len(shed) == len(calls)
    assert 0 < len(shed) < len(calls) or cfg.queue_limit is None
    for c in range(len(calls)):
        if c in shed:
            continue
        assert log.first[c] == pytest.approx(table.first_token_at[c], abs=1e-9)
        assert log.done[c] == pytest.approx(table.done_at[c], abs=1e-9)
        assert log.waited[c] == pytest.approx(table.wait_s[c], abs=1e-9)
        assert len(log.tokens[c]) == max(calls[c][2], 1)


# -- 3. the asyncio driver on the real clock ---------------------------------------------------


async def _collect(engine: EmulatedEngine, prompt: int, out: int) -> list[Token]:
    return [t async for t in engine.generate(prompt, out)]


def test_token_rate_follows_the_step_formula_under_concurrency() -> None:
    """base 20 ms, 5 ms per decoding sequence: alone a token every 25 ms; 8 at once, every
    60 ms. The first token comes after one step of 20 ms (prefill is free here)."""
    cfg = settings(base_s=0.02, per_prefill_token_s=0.0, per_decode_seq_s=0.005)

    async def main() -> tuple[list[Token], list[list[Token]], float, float]:
        engine = EmulatedEngine(cfg)
        await engine.start()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        alone = await _collect(engine, 50, 10)
        t1 = loop.time()
        together = await asyncio.gather(*(_collect(engine, 50, 10) for _ in range(8)))
        assert engine.steps == 10 + 10
        assert engine.tokens_emitted == 90
        assert (engine.running, engine.waiting, engine.kv_used) == (0, 0, 0)
        await engine.stop()
        return alone, together, t0, t1

    alone, together, t0, t1 = asyncio.run(main())
    assert [t.index for t in alone] == list(range(10))
    assert [t.last for t in alone] == [False] * 9 + [True]
    assert alone[0].at - t0 == pytest.approx(0.02, abs=0.005)
    gap1 = (alone[-1].at - alone[0].at) / 9
    assert gap1 == pytest.approx(0.025, rel=0.1)
    for tokens in together:
        assert len(tokens) == 10
        assert tokens[0].at - t1 == pytest.approx(0.02, abs=0.005)
        assert tokens[0].at == together[0][0].at  # one batch: the same steps
    gap8 = (together[0][-1].at - together[0][0].at) / 9
    assert gap8 == pytest.approx(0.06, rel=0.1)
    assert gap8 > 2 * gap1


def test_calls_in_one_loop_iteration_share_a_step_and_abandoned_calls_keep_running() -> None:
    cfg = settings(base_s=0.01, per_prefill_token_s=0.0, per_decode_seq_s=0.002)
    timings: list[StepTiming] = []

    async def main() -> None:
        engine = EmulatedEngine(cfg, on_step=timings.append)
        await engine.start()
        a = engine.submit(10, 6)
        b = engine.submit(10, 6)
        first = await anext(a)  # then a is abandoned
        assert first.index == 0
        tokens = [t async for t in b]
        assert [t.index for t in tokens] == list(range(6))
        assert a.admitted_at == b.admitted_at
        assert a.first_token_at == b.first_token_at
        # a was not read after its first token, yet it decoded in every step with b.
        assert a.finished_at == b.finished_at
        assert a.emitted == 6
        assert engine.tokens_emitted == 12
        assert engine.running == 0
        await engine.stop()

    asyncio.run(main())
    assert [t.plan.sequences for t in timings] == [2] * 6
    assert [t.plan.decode_seqs for t in timings] == [0] + [2] * 5
    # Back to back on the planned timeline: each step starts at the previous planned end.
    for prev, nxt in itertools.pairwise(timings):
        assert nxt.plan.start == prev.plan.end
    assert all(t.lateness >= -1e-6 for t in timings)


def test_refusals_and_stop() -> None:
    cfg = settings(max_num_seqs=1, kv_cache_tokens=100, queue_limit=0)

    async def main() -> None:
        engine = EmulatedEngine(cfg)
        with pytest.raises(RuntimeError, match="start"):
            engine.submit(1, 1)
        await engine.start()
        with pytest.raises(EngineRefusedError) as too_long:
            engine.submit(95, 6)
        assert too_long.value.reason == "too_long"
        assert too_long.value.need == 101
        gen = engine.submit(10, 1000 - 910)  # fits now
        with pytest.raises(EngineRefusedError) as busy:
            engine.submit(1, 1)  # the only slot is taken and no one may wait
        assert busy.value.reason == "overloaded"
        await anext(gen)
        await engine.stop()
        with pytest.raises(EngineStoppedError):
            async for _ in gen:
                pass
        with pytest.raises(RuntimeError):
            await engine.start()

    asyncio.run(main())


def test_late_wake_ups_do_not_accumulate() -> None:
    """A loop blocked for less than a step delays tokens but keeps the timeline: 20 steps of
    10 ms still end about 200 ms after the start. A stall longer than a step gives the lost
    time up instead of bursting to catch up."""
    cfg = settings(base_s=0.01, per_prefill_token_s=0.0, per_decode_seq_s=0.0)
    timings: list[StepTiming] = []

    async def main() -> tuple[float, list[Token]]:
        engine = EmulatedEngine(cfg, on_step=timings.append)
        await engine.start()
        t0 = asyncio.get_running_loop().time()
        tokens: list[Token] = []
        async for tok in engine.generate(0, 30):
            tokens.append(tok)
            if tok.index % 4 == 1:
                time.sleep(0.006)  # block the loop for 60 % of a step
            if tok.index == 20:
                time.sleep(0.05)  # a stall of five steps
        await engine.stop()
        return t0, tokens

    t0, tokens = asyncio.run(main())
    assert tokens[20].at - t0 == pytest.approx(0.21, abs=0.006)
    starts = [t.plan.start for t in timings]
    # Before the stall: planned starts exactly 10 ms apart from the first.
    assert starts[:21] == [pytest.approx(starts[0] + 0.01 * k, abs=1e-9) for k in range(21)]
    # Step 21 ends 40 ms late, more than a step: step 22 starts from then, not from the plan.
    assert starts[22] - starts[21] == pytest.approx(0.05, abs=0.008)
    assert timings[21].lateness == pytest.approx(0.04, abs=0.008)
    assert tokens[29].at - tokens[21].at == pytest.approx(0.08, abs=0.006)
    assert statistics.mean(t.lateness for t in timings) < 0.01
