"""LlmEngineStation: continuous batching in virtual time, checked against hand-computed steps.

Unless a test says otherwise a step costs ``0.01 + 0.0001·P + 0.001·D`` seconds (P prompt
tokens prefilled, D sequences decoding), with no context term.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from functools import partial

import pytest
import simpy

from ragstress.config.profile import LlmEngineStage
from ragstress.model.calls import CallTable
from ragstress.model.llm_engine import LlmEngineStation

BASE = 0.01
PREFILL = 0.0001
DECODE = 0.001


def approx(x: float) -> object:
    return pytest.approx(x, rel=1e-9, abs=1e-12)


class Rig:
    """A station over a table of calls, with logs of what it handed on."""

    def __init__(
        self,
        prompts: list[int],
        outputs: list[int],
        *,
        replicas: int = 1,
        router: str = "least_outstanding",
        max_num_seqs: int = 256,
        kv_cache_tokens: int = 1_000_000,
        max_batched_tokens: int = 100_000,
        per_context_token_s: float = 0.0,
        queue_limit: int | None = None,
    ) -> None:
        n = len(prompts)
        self.env = simpy.Environment()
        self.table = CallTable(
            req=list(range(n)),
            tokens_in=list(prompts),
            tokens_out=list(outputs),
            service_s=[math.nan] * n,
            first_token_s=[math.nan] * n,
        )
        stage = LlmEngineStage.model_validate(
            {
                "kind": "llm_engine",
                "name": "generate",
                "replicas": replicas,
                "router": router,
                "max_num_seqs": max_num_seqs,
                "kv_cache_tokens": kv_cache_tokens,
                "max_batched_tokens": max_batched_tokens,
                "queue_limit": queue_limit,
                "step": {
                    "base_s": BASE,
                    "per_prefill_token_s": PREFILL,
                    "per_decode_seq_s": DECODE,
                    "per_context_token_s": per_context_token_s,
                },
            }
        )
        self.done: dict[int, float] = {}
        self.done_count: dict[int, int] = {}
        self.shed: list[int] = []
        self.sent: dict[int, float] = {}
        self.st = LlmEngineStation(
            self.env, stage, self.table, on_done=self._on_done, on_shed=self.shed.append
        )

    def _on_done(self, c: int) -> None:
        self.done[c] = self.env.now
        self.done_count[c] = self.done_count.get(c, 0) + 1

    def at(self, t: float, fn: Callable[[], None]) -> None:
        self.env.timeout(t).callbacks.append(lambda _: fn())

    def submit(self, c: int) -> None:
        self.sent[c] = self.env.now
        self.st.submit(c)

    def submit_at(self, t: float, *calls: int) -> None:
        def go() -> None:
            for c in calls:
                self.submit(c)

        if t == 0:
            go()
        else:
            self.at(t, go)

    def run(self, until: float | None = None) -> None:
        self.env.run(until=until)

    def ttft(self, c: int) -> float:
        return self.table.first_token_at[c] - self.sent[c]


# -- 1. TTFT and token gaps emerge from the batch -------------------------------------------


def _burst(n: int) -> Rig:
    rig = Rig([100] * n, [10] * n)
    rig.submit_at(0, *range(n))
    rig.run()
    return rig


@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_identical_burst_ttft_and_gap(n: int) -> None:
    rig = _burst(n)
    ttft = BASE + PREFILL * 100 * n  # one step prefills every prompt
    gap = BASE + DECODE * n  # then each step decodes one token of each
    for c in range(n):
        assert rig.table.wait_s[c] == 0.0
        assert rig.ttft(c) == approx(ttft)
        assert rig.done[c] == approx(ttft + 9 * gap)
        assert rig.table.held_s[c] == approx(ttft + 9 * gap)
        assert (rig.done[c] - rig.table.first_token_at[c]) / 9 == approx(gap)
    assert rig.st.queued() == 0
    assert rig.st.busy() == 0


def test_ttft_and_gap_grow_with_concurrency() -> None:
    ttfts = []
    gaps = []
    for n in (1, 2, 4, 8):
        rig = _burst(n)
        ttfts.append(rig.ttft(0))
        gaps.append((rig.done[0] - rig.table.first_token_at[0]) / 9)
    assert ttfts == [approx(x) for x in (0.02, 0.03, 0.05, 0.09)]
    assert gaps == [approx(x) for x in (0.011, 0.012, 0.014, 0.018)]
    assert ttfts == sorted(set(ttfts))
    assert gaps == sorted(set(gaps))


def test_one_token_answer_finishes_with_its_prefill_and_zero_output_counts_as_one() -> None:
    rig = Rig([100, 100], [1, 0])
    rig.submit_at(0, 0, 1)
    rig.run()
    for c in (0, 1):
        assert rig.table.first_token_at[c] == approx(0.03)
        assert rig.done[c] == approx(0.03)


def test_empty_prompt_emits_first_token_after_one_step() -> None:
    rig = Rig([0], [3])
    rig.submit_at(0, 0)
    rig.run()
    assert rig.table.first_token_at[0] == approx(BASE)
    assert rig.done[0] == approx(BASE + 2 * (BASE + DECODE))


def test_calls_arriving_mid_step_wait_for_it_to_end() -> None:
    rig = Rig([100, 100], [2, 1])
    rig.submit_at(0, 0)
    rig.submit_at(0.005, 1)
    rig.run()
    # Step 1 [0, 0.02]: c0 prefills. Step 2 admits c1: D=1, P=100 → 0.021.
    assert rig.table.wait_s[1] == approx(0.015)
    assert rig.done[0] == approx(0.041)
    assert rig.done[1] == approx(0.041)
    assert rig.table.held_s[1] == approx(0.021)


# -- 2. chunked prefill ---------------------------------------------------------------------


def test_long_prompt_is_prefilled_in_chunks() -> None:
    rig = Rig([250], [2], max_batched_tokens=100)
    rig.submit_at(0, 0)
    rig.run()
    # Chunks of 100, 100, 50 tokens: 0.02 + 0.02 + 0.015.
    assert rig.table.first_token_at[0] == approx(0.055)
    assert rig.done[0] == approx(0.055 + BASE + DECODE)


def test_decoding_sequences_take_the_budget_first() -> None:
    rig = Rig([50, 250], [10, 1], max_batched_tokens=100)
    rig.submit_at(0, 0)
    rig.submit_at(0.001, 1)
    rig.run()
    assert rig.table.first_token_at[0] == approx(0.015)  # 0.01 + 50·0.0001
    # c1 is admitted at 0.015; c0 decodes, leaving 99 tokens a step: chunks 99, 99, 52.
    assert rig.table.wait_s[1] == approx(0.014)
    first1 = 0.015 + 0.0209 + 0.0209 + 0.0162
    assert rig.table.first_token_at[1] == approx(first1)
    assert rig.done[1] == approx(first1)
    assert rig.table.held_s[1] == approx(first1 - 0.015)
    # c0 emitted tokens 2-4 in those three steps; 6 more decode-only steps.
    assert rig.done[0] == approx(first1 + 6 * (BASE + DECODE))


def test_prefill_waits_while_decodes_use_the_whole_budget() -> None:
    rig = Rig([1, 1], [3, 1], max_batched_tokens=1)
    rig.submit_at(0, 0, 1)
    rig.run()
    # Step 1: c0 takes the one token (0.0101). Steps 2-3: c0 decodes, budget 0, c1 sits
    # out (0.011 each). Step 4: c1 prefills (0.0101).
    assert rig.table.first_token_at[0] == approx(0.0101)
    assert rig.done[0] == approx(0.0321)
    assert rig.table.wait_s[1] == 0.0
    assert rig.table.first_token_at[1] == approx(0.0422)
    assert rig.done[1] == approx(0.0422)


# -- 3. KV cache and max_num_seqs cap the batch ---------------------------------------------


def test_kv_cache_caps_concurrency_and_head_of_line_blocks() -> None:
    # Needs: 300, 300, 300, 300, 11 tokens; KV 1000.
    rig = Rig([298, 290, 290, 290, 10], [2, 10, 10, 10, 1], kv_cache_tokens=1000)
    rig.submit_at(0, 0, 1, 2, 3, 4)
    seen: list[tuple[int, int]] = []
    rig.at(0.05, lambda: seen.append((rig.st.busy(), rig.st.queued())))
    rig.run()
    assert seen == [(3, 2)]
    # Step 1: P = 878 → 0.0978. Step 2: D=3 → 0.013; c0 done, 400 tokens free.
    t_free = 0.0978 + 0.013
    assert rig.done[0] == approx(t_free)
    # c4 (11 tokens) fitted in the 100 free tokens all along but may not overtake c3.
    assert rig.table.wait_s[3] == approx(t_free)
    assert rig.table.wait_s[4] == approx(t_free)
    # Step 3: D=2, P=300 → 0.042.
    assert rig.table.first_token_at[3] == approx(t_free + 0.042)
    assert rig.done[4] == approx(t_free + 0.042)


def test_max_num_seqs_caps_concurrency() -> None:
    rig = Rig([100, 100, 100], [2, 5, 1], max_num_seqs=2)
    rig.submit_at(0, 0, 1, 2)
    seen: list[int] = []
    rig.at(0.01, lambda: seen.append(rig.st.busy()))
    rig.run()
    assert seen == [2]
    # Step 1: P=200 → 0.03; step 2: D=2 → 0.012, c0 done; step 3 admits c2: D=1, P=100.
    assert rig.done[0] == approx(0.042)
    assert rig.table.wait_s[2] == approx(0.042)
    assert rig.done[2] == approx(0.063)


# -- 4. router and capacity loss ------------------------------------------------------------


@pytest.mark.parametrize("router", ["round_robin", "least_outstanding"])
def test_two_replicas_split_a_burst(router: str) -> None:
    rig = Rig([100, 200, 300, 400], [1] * 4, replicas=2, router=router)
    rig.submit_at(0, 0, 1, 2, 3)
    rig.run()
    # Replica 0 gets c0, c2 (P=400); replica 1 gets c1, c3 (P=600).
    assert [rig.done[c] for c in range(4)] == [approx(x) for x in (0.05, 0.07, 0.05, 0.07)]


@pytest.mark.parametrize(("router", "on_idle"), [("round_robin", 3), ("least_outstanding", 2)])
def test_round_robin_cycles_least_outstanding_picks_the_idle_replica(
    router: str, on_idle: int
) -> None:
    rig = Rig([100] * 4, [1000, 1, 1, 1], replicas=2, router=router)
    rig.submit_at(0, 0, 1)  # c0 (long) → replica 0, c1 → replica 1
    rig.submit_at(0.5, 2, 3)
    rig.run()
    assert rig.done[1] == approx(0.02)
    # The call on idle replica 1 is served at once; the other joins replica 0, whose
    # decode step in progress at 0.5 ends at 0.02 + 44·0.011 = 0.504, then D=1, P=100.
    on_busy = 5 - on_idle
    assert rig.done[on_idle] == approx(0.52)
    assert rig.table.wait_s[on_busy] == approx(0.004)
    assert rig.done[on_busy] == approx(0.525)


def test_least_outstanding_counts_waiting_calls() -> None:
    rig = Rig([100] * 4, [5] * 4, replicas=2, max_num_seqs=1)
    rig.submit_at(0, 0, 1, 2)  # r0: c0, c2 waiting; r1: c1
    rig.submit_at(0.001, 3)  # r0 has 2 outstanding, r1 has 1 → r1
    rig.run()
    # Each call: 0.02 prefill step + 4 decode steps of 0.011 = 0.064.
    assert rig.done[2] == approx(0.128)
    assert rig.done[3] == approx(0.128)
    assert rig.table.wait_s[3] == approx(0.063)


def test_least_outstanding_ties_go_to_the_lowest_index() -> None:
    rig = Rig([100] * 3, [50, 1, 1], replicas=2, max_num_seqs=1)
    rig.submit_at(0, 0, 1, 2)  # c0 → r0 (tie), c1 → r1, c2 → r0 (tie), behind the long c0
    rig.at(0.001, lambda: rig.st.set_units_down(1))  # r1 is down: nothing of r1's moves
    rig.run()
    assert rig.done[1] == approx(0.02)
    assert rig.done[0] == approx(0.02 + 49 * 0.011)
    assert rig.table.wait_s[2] == approx(rig.done[0])


def test_calls_moved_from_several_replicas_keep_arrival_order() -> None:
    rig = Rig([100] * 8, [5] * 8, replicas=3, router="round_robin", max_num_seqs=1)
    for c in range(8):
        rig.submit_at(0.001 * c, c)
    # r0: c0 running, c3, c6 waiting; r1: c1, [c4, c7]; r2: c2, [c5].
    rig.at(0.01, lambda: rig.st.set_units_down(2))
    rig.run()
    assert rig.done[1] == approx(0.065)
    assert rig.done[2] == approx(0.066)
    # r0 serves its own queue, then c4, c5, c7 (oldest first), 0.064 each.
    admitted = {c: rig.sent[c] + rig.table.wait_s[c] for c in range(8)}
    assert [admitted[c] for c in (3, 6, 4, 5, 7)] == [approx(0.064 * k) for k in (1, 2, 3, 4, 5)]


def test_capacity_loss_reroutes_waiting_and_down_replica_finishes_running() -> None:
    rig = Rig([100] * 5, [5] * 5, replicas=2, router="round_robin", max_num_seqs=1)
    rig.submit_at(0, 0, 1, 2, 3)  # r0: c0 running, c2 waiting; r1: c1 running, c3 waiting
    seen: list[tuple[int, int]] = []

    def lose() -> None:
        rig.st.set_units_down(1)
        seen.append((rig.st.busy(), rig.st.queued()))

    rig.at(0.001, lose)
    rig.submit_at(0.002, 4)  # only replica 0 is up
    rig.run()
    assert seen == [(2, 2)]
    assert rig.done[1] == approx(0.064)  # replica 1 finished what it ran
    assert rig.done[0] == approx(0.064)
    # Replica 0 serves c2, then c3 (moved from replica 1), then c4, one at a time.
    assert rig.table.wait_s[2] == approx(0.064)
    assert rig.table.wait_s[3] == approx(0.128)
    assert rig.done[3] == approx(0.192)
    assert rig.table.wait_s[4] == approx(0.192 - 0.002)
    assert rig.done[4] == approx(0.256)


def test_all_down_backlog_then_restore() -> None:
    rig = Rig([100] * 6, [1] * 6, replicas=2, max_num_seqs=4)
    rig.at(0, lambda: rig.st.set_units_down(2))
    rig.submit_at(0.01, 0)
    rig.submit_at(0.1, 1)
    seen: list[tuple[int, int]] = []
    rig.at(0.2, lambda: seen.append((rig.st.busy(), rig.st.queued())))
    rig.at(0.3, lambda: rig.st.set_units_down(1))
    rig.at(0.5, lambda: rig.st.set_units_down(0))
    rig.submit_at(0.5, 2, 3)
    rig.run()
    assert seen == [(0, 2)]
    # The backlog goes to replica 0 at 0.3, both in one step (P=200).
    assert rig.table.wait_s[0] == approx(0.29)
    assert rig.table.wait_s[1] == approx(0.2)
    assert rig.done[0] == approx(0.33)
    assert rig.done[1] == approx(0.33)
    # Restored, replica 1 takes one of the two (one step of P=100 each, not one of 200).
    assert rig.done[2] == approx(0.52)
    assert rig.done[3] == approx(0.52)
    assert rig.st.queued() == 0


def test_losing_every_replica_moves_waiting_calls_to_the_backlog_in_order() -> None:
    rig = Rig([100] * 5, [5] * 5, replicas=2, router="round_robin", max_num_seqs=1)
    rig.submit_at(0, 0, 1)
    rig.submit_at(0.001, 2)  # waits on r0
    rig.submit_at(0.002, 3)  # waits on r1
    rig.submit_at(0.003, 4)  # waits on r0, behind c2
    seen: list[tuple[int, int]] = []

    def lose_all() -> None:
        rig.st.set_units_down(2)
        seen.append((rig.st.busy(), rig.st.queued()))

    rig.at(0.005, lose_all)
    rig.at(1.0, lambda: rig.st.set_units_down(1))
    rig.run()
    assert seen == [(2, 3)]
    assert rig.done[0] == approx(0.064)
    assert rig.done[1] == approx(0.064)
    # Replica 0 comes back at 1.0 and serves c2, c3, c4 (oldest first), 0.064 each.
    admitted = [rig.sent[c] + rig.table.wait_s[c] for c in (2, 3, 4)]
    assert admitted == [approx(1.0), approx(1.064), approx(1.128)]


def test_set_units_down_rejects_out_of_range() -> None:
    rig = Rig([1], [1], replicas=2)
    with pytest.raises(ValueError, match="3 of 2"):
        rig.st.set_units_down(3)
    with pytest.raises(ValueError, match="-1 of 2"):
        rig.st.set_units_down(-1)


# -- 5. the context term --------------------------------------------------------------------


def test_context_tokens_cost_per_step() -> None:
    rig = Rig([100], [3], per_context_token_s=1e-5)
    rig.submit_at(0, 0)
    rig.run()
    # Step 1: K=0 → 0.02. Step 2: K=100+1 → 0.011 + 0.00101. Step 3: K=102.
    assert rig.table.first_token_at[0] == approx(0.02)
    assert rig.done[0] == approx(0.02 + 0.01201 + 0.01202)


def test_context_tokens_of_a_chunked_prefill_and_a_decoder() -> None:
    rig = Rig([250, 20], [1, 3], max_batched_tokens=101, per_context_token_s=1e-5)
    rig.submit_at(0, 1, 0)  # c1 first: it prefills in step 1 and then decodes
    rig.run()
    # Step 1: c1 20 + c0 81 tokens, K=0: 0.01 + 0.0101 = 0.0201.
    # Step 2: c1 decodes (K 21), c0 takes 100 (K 81): 0.01 + 0.01 + 0.001 + 0.00102.
    # Step 3: c1 decodes (K 22) and is done, c0 takes 69 (K 181): 0.01 + 0.0069 + 0.001
    #         + 0.00203.
    s1, s2, s3 = 0.0201, 0.02202, 0.01993
    assert rig.table.first_token_at[1] == approx(s1)
    assert rig.done[1] == approx(s1 + s2 + s3)
    assert rig.done[0] == approx(s1 + s2 + s3)


# -- 6. shedding ----------------------------------------------------------------------------


def test_queue_limit_sheds_beyond_the_calls_that_fit() -> None:
    rig = Rig([100] * 3, [1] * 3, max_num_seqs=1, queue_limit=1)
    rig.submit_at(0, 0, 1, 2)  # c0 is admitted, c1 waits, c2 would wait behind 1
    assert rig.shed == [2]
    rig.run()
    assert rig.done == {0: approx(0.02), 1: approx(0.04)}


def test_queue_limit_zero_serves_only_calls_that_fit_now() -> None:
    rig = Rig([100] * 4, [1] * 4, max_num_seqs=2, queue_limit=0)
    rig.submit_at(0, 0)
    rig.submit_at(0.005, 1)  # mid-step but a slot is free: waits for the step, not shed
    rig.submit_at(0.006, 2)  # both slots taken by c0 and c1
    rig.submit_at(0.03, 3)  # c0 finished at 0.02; c1 runs, a slot is free again
    rig.run()
    assert rig.shed == [2]
    assert rig.table.wait_s[1] == approx(0.015)
    assert rig.done[1] == approx(0.04)
    assert rig.table.wait_s[3] == approx(0.01)
    assert rig.done[3] == approx(0.06)


def test_queue_limit_bounds_the_backlog_when_all_replicas_are_down() -> None:
    rig = Rig([100] * 4, [1] * 4, replicas=2, queue_limit=1)
    rig.st.set_units_down(2)
    rig.submit_at(0, 0, 1, 2)
    assert rig.shed == [2]
    assert rig.st.queued() == 2
    rig.at(1.0, lambda: rig.st.set_units_down(0))
    rig.run()
    assert rig.done == {0: approx(1.02), 1: approx(1.02)}  # one on each replica


def test_call_too_large_for_the_kv_cache_is_shed() -> None:
    rig = Rig([95, 95, 100, 99], [6, 5, 0, 1], kv_cache_tokens=100)
    rig.submit_at(0, 0, 1, 2, 3)
    assert rig.shed == [0, 2]  # needs 101 (an empty answer still needs one token)
    rig.run()
    assert sorted(rig.done) == [1, 3]
    assert math.isnan(rig.table.wait_s[0])
    # c1 took all 100 tokens; c3 is admitted when it finishes.
    assert rig.table.wait_s[3] == approx(rig.done[1])


# -- 7. conservation under random load ------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("router", ["round_robin", "least_outstanding"])
@pytest.mark.parametrize("queue_limit", [None, 3])
def test_random_load_conserves_calls(seed: int, router: str, queue_limit: int | None) -> None:
    rng = random.Random(seed)
    n = 400
    prompts = [rng.choice([0, rng.randint(1, 800), rng.randint(1, 2200)]) for _ in range(n)]
    outputs = [rng.randint(0, 60) for _ in range(n)]
    rig = Rig(
        prompts,
        outputs,
        replicas=3,
        router=router,
        max_num_seqs=4,
        kv_cache_tokens=2000,
        max_batched_tokens=512,
        per_context_token_s=1e-6,
        queue_limit=queue_limit,
    )
    t = 0.0
    for c in range(n):
        t += rng.expovariate(20.0)
        rig.submit_at(t, c)
    for _ in range(20):
        down = rng.randint(0, 3)
        rig.at(rng.uniform(0, t), partial(rig.st.set_units_down, down))
    rig.at(t + 1e-9, lambda: rig.st.set_units_down(0))
    peak: list[int] = []

    def sample() -> None:
        peak.append(rig.st.busy())
        if rig.env.now < t:
            rig.at(0.01, sample)

    rig.at(0, sample)
    rig.run()

    table = rig.table
    assert set(rig.shed).isdisjoint(rig.done)
    assert len(rig.shed) == len(set(rig.shed))
    assert len(rig.shed) + len(rig.done) == n
    assert all(k == 1 for k in rig.done_count.values())
    too_large = {c for c in range(n) if prompts[c] + max(outputs[c], 1) > 2000}
    assert too_large <= set(rig.shed)
    if queue_limit is None:
        assert set(rig.shed) == too_large
    else:
        assert set(rig.shed) > too_large  # the bound did shed some
    assert len(rig.done) > n // 4
    for c, done_at in rig.done.items():
        admitted = rig.sent[c] + table.wait_s[c]
        assert table.wait_s[c] >= 0
        assert admitted + table.held_s[c] == approx(done_at)
        assert admitted < table.first_token_at[c] <= done_at
    assert max(peak) <= 3 * 4
    assert max(peak) > 4  # more than one replica was busy at once
    assert rig.st.queued() == 0
    assert rig.st.busy() == 0
