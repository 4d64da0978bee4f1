"""BatcherStation: dynamic batching in virtual time, with exact event logs."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import numpy as np
import pytest
import simpy

from ragstress.config.profile import BatcherStage, BatchTime
from ragstress.model.batcher import BatcherStation
from ragstress.model.calls import CallTable


def _table(tokens: list[int]) -> CallTable:
    n = len(tokens)
    return CallTable(
        req=list(range(n)),
        tokens_in=list(tokens),
        tokens_out=[0] * n,
        service_s=[math.nan] * n,
        first_token_s=[math.nan] * n,
    )


class Rig:
    """A station with logs of what it handed on, and helpers to drive it in virtual time."""

    def __init__(
        self,
        tokens: list[int],
        *,
        replicas: int = 1,
        max_batch_size: int = 4,
        max_wait_s: float = 1.0,
        base_s: float = 2.0,
        per_token_s: float = 0.0,
        queue_limit: int | None = None,
    ) -> None:
        self.env = simpy.Environment()
        self.table = _table(tokens)
        stage = BatcherStage(
            kind="batcher",
            name="embed",
            replicas=replicas,
            max_batch_size=max_batch_size,
            max_wait_s=max_wait_s,
            batch_time=BatchTime(base_s=base_s, per_token_s=per_token_s),
            queue_limit=queue_limit,
        )
        self.done: list[tuple[float, int]] = []
        self.shed: list[tuple[float, int]] = []
        self.st = BatcherStation(
            self.env,
            stage,
            self.table,
            on_done=lambda c: self.done.append((self.env.now, c)),
            on_shed=lambda c: self.shed.append((self.env.now, c)),
        )

    def submit_at(self, t: float, *calls: int) -> None:
        for c in calls:
            self.at(t, partial(self.st.submit, c))

    def at(self, t: float, fn: Callable[[], object]) -> None:
        """Run fn at virtual time t (after events scheduled earlier for t)."""

        def fire(_event: object) -> None:
            fn()

        self.env.timeout(t).callbacks.append(fire)

    def probe(self, t: float) -> list[tuple[float, int, int]]:
        """Record (time, queued, busy) at t, after the events already scheduled for t."""
        out: list[tuple[float, int, int]] = []
        self.at(t, lambda: out.append((self.env.now, self.st.queued(), self.st.busy())))
        return out


def test_full_batch_dispatches_at_once() -> None:
    r = Rig([1] * 3, max_batch_size=3, max_wait_s=10.0, base_s=2.0)
    r.submit_at(0.5, 0, 1, 2)
    seen = r.probe(0.5)
    r.env.run()
    assert r.done == [(2.5, 0), (2.5, 1), (2.5, 2)]
    assert r.table.wait_s == [0.0, 0.0, 0.0]
    assert r.table.held_s == [2.0, 2.0, 2.0]
    assert seen == [(0.5, 0, 1)]
    assert r.shed == []
    assert math.isnan(r.table.first_token_at[0])


def test_partial_batch_dispatches_at_max_wait() -> None:
    r = Rig([1] * 2, max_batch_size=4, max_wait_s=1.0, base_s=2.0)
    r.submit_at(0.0, 0)
    r.submit_at(0.25, 1)
    before = r.probe(0.75)
    r.env.run()
    # The oldest call's deadline (0 + 1) starts the batch; the younger rides along.
    assert r.done == [(3.0, 0), (3.0, 1)]
    assert r.table.wait_s == [1.0, 0.75]
    assert before == [(0.75, 2, 0)]


def test_batch_time_is_base_plus_per_token_times_tokens() -> None:
    r = Rig([10, 30, 60, 100], max_batch_size=3, max_wait_s=5.0, base_s=0.5, per_token_s=0.01)
    r.submit_at(0.0, 0, 1, 2)
    r.submit_at(1.0, 3)
    r.env.run()
    # Batch 1: 0.5 + 0.01·100 = 1.5 at t=0. Batch 2 (call 3 alone): waits to 1+5, 0.5+1.0.
    assert r.done == [(1.5, 0), (1.5, 1), (1.5, 2), (7.5, 3)]
    assert r.table.held_s == pytest.approx([1.5, 1.5, 1.5, 1.5])
    assert r.table.wait_s == [0.0, 0.0, 0.0, 5.0]


def test_two_replicas_serve_two_batches_in_parallel() -> None:
    r = Rig([1] * 4, replicas=2, max_batch_size=2, max_wait_s=10.0, base_s=3.0)
    r.submit_at(0.0, 0, 1)
    r.submit_at(1.0, 2, 3)
    seen = r.probe(1.0)
    r.env.run()
    assert r.done == [(3.0, 0), (3.0, 1), (4.0, 2), (4.0, 3)]
    assert r.table.wait_s == [0.0, 0.0, 0.0, 0.0]
    assert seen == [(1.0, 0, 2)]


def test_waiting_calls_form_full_batch_when_replica_frees() -> None:
    r = Rig([1] * 5, max_batch_size=2, max_wait_s=10.0, base_s=2.0)
    r.submit_at(0.0, 0, 1)  # full: starts at 0, ends at 2
    r.submit_at(0.5, 2, 3, 4)  # a full batch waits; call 4 is left over
    seen = r.probe(1.0)
    r.env.run()
    # At 2 the replica takes [2, 3] at once (full); [4] then waits for its deadline 10.5.
    assert r.done == [(2.0, 0), (2.0, 1), (4.0, 2), (4.0, 3), (12.5, 4)]
    assert r.table.wait_s == [0.0, 0.0, 1.5, 1.5, 10.0]
    assert seen == [(1.0, 3, 1)]


def test_replica_freeing_after_deadline_dispatches_at_once() -> None:
    r = Rig([1] * 3, max_batch_size=4, max_wait_s=0.5, base_s=2.0)
    r.submit_at(0.0, 0)  # alone: starts at its deadline 0.5, ends 2.5
    r.submit_at(1.0, 1)  # deadline 1.5 passes while the replica is busy
    r.submit_at(2.0, 2)
    r.env.run()
    # At 2.5 the oldest has waited 1.5 ≥ 0.5: the replica takes [1, 2] at once.
    assert r.done == [(2.5, 0), (4.5, 1), (4.5, 2)]
    assert r.table.wait_s == [0.5, 1.5, 0.5]


def test_replica_freeing_before_deadline_waits_the_remainder() -> None:
    r = Rig([1] * 3, max_batch_size=4, max_wait_s=3.0, base_s=1.0)
    r.submit_at(0.0, 0)  # starts 3, ends 4
    r.submit_at(3.5, 1)  # deadline 6.5; the replica frees at 4 and must wait till 6.5
    r.submit_at(5.0, 2)
    r.env.run()
    assert r.done == [(4.0, 0), (7.5, 1), (7.5, 2)]
    assert r.table.wait_s == [3.0, 3.0, 1.5]


def test_stale_timer_does_nothing() -> None:
    # Call 0's timer (deadline 1) is armed, then its batch fills at 0.5 and leaves. Call 2
    # arrives at 0.9 on the second replica's watch: its deadline is 1.9, not 1.
    r = Rig([1] * 3, replicas=2, max_batch_size=2, max_wait_s=1.0, base_s=5.0)
    r.submit_at(0.0, 0)
    r.submit_at(0.5, 1)
    r.submit_at(0.9, 2)
    r.env.run()
    assert r.done == [(5.5, 0), (5.5, 1), (6.9, 2)]
    assert r.table.wait_s == pytest.approx([0.5, 0.0, 1.0])


def test_queue_limit_sheds() -> None:
    r = Rig([1] * 6, max_batch_size=4, max_wait_s=1.0, base_s=1.0, queue_limit=2)
    r.submit_at(0.0, 0, 1, 2, 3)
    r.env.run()
    # Two wait, then the next two find two waiting: shed at once, nothing recorded.
    assert r.shed == [(0.0, 2), (0.0, 3)]
    assert r.done == [(2.0, 0), (2.0, 1)]
    assert math.isnan(r.table.wait_s[2])
    assert math.isnan(r.table.held_s[3])


def test_queue_limit_spares_a_call_its_own_batch_takes() -> None:
    # Two wait (the limit); the third completes a full batch on a free replica, so it never
    # waits. Then 3 and 4 wait for the busy replica, and 5 finds two waiting: shed.
    r = Rig([1] * 6, max_batch_size=3, max_wait_s=10.0, base_s=1.0, queue_limit=2)
    r.submit_at(0.0, 0, 1, 2, 3, 4, 5)
    r.env.run()
    assert r.shed == [(0.0, 5)]
    assert r.done == [(1.0, 0), (1.0, 1), (1.0, 2), (11.0, 3), (11.0, 4)]


def test_queue_limit_zero_serves_only_what_starts_at_once() -> None:
    r = Rig([1] * 3, max_batch_size=4, max_wait_s=0.0, base_s=1.0, queue_limit=0)
    r.submit_at(0.0, 0, 1)
    r.submit_at(1.5, 2)
    r.env.run()
    assert r.shed == [(0.0, 1)]
    assert r.done == [(1.0, 0), (2.5, 2)]


def test_units_down_while_busy_then_restored() -> None:
    r = Rig([1] * 4, max_batch_size=2, max_wait_s=10.0, base_s=2.0)
    r.submit_at(0.0, 0, 1)  # busy 0..2
    r.at(1.0, lambda: r.st.set_units_down(1))
    r.submit_at(1.5, 2, 3)  # a full batch, but the only replica is down
    mid = r.probe(3.0)
    r.at(5.0, lambda: r.st.set_units_down(0))
    r.env.run()
    # The batch in service finishes at 2; nothing starts until 5, then at once.
    assert r.done == [(2.0, 0), (2.0, 1), (7.0, 2), (7.0, 3)]
    assert r.table.wait_s == [0.0, 0.0, 3.5, 3.5]
    assert mid == [(3.0, 2, 0)]


def test_restore_respects_max_wait_rule() -> None:
    r = Rig([1] * 2, max_batch_size=4, max_wait_s=3.0, base_s=1.0)
    r.at(0.0, lambda: r.st.set_units_down(1))
    r.submit_at(1.0, 0)  # deadline 4
    r.submit_at(8.0, 1)  # deadline 11
    r.at(2.0, lambda: r.st.set_units_down(0))  # not due yet: wait until 4
    r.at(5.0, lambda: r.st.set_units_down(1))
    r.at(12.0, lambda: r.st.set_units_down(0))  # overdue: start at once
    r.env.run()
    assert r.done == [(5.0, 0), (13.0, 1)]
    assert r.table.wait_s == [3.0, 4.0]


def test_one_of_two_replicas_down() -> None:
    r = Rig([1] * 4, replicas=2, max_batch_size=2, max_wait_s=10.0, base_s=2.0)
    r.at(0.0, lambda: r.st.set_units_down(1))
    r.submit_at(0.0, 0, 1, 2, 3)
    r.env.run()
    assert r.done == [(2.0, 0), (2.0, 1), (4.0, 2), (4.0, 3)]


def test_set_units_down_rejects_out_of_range() -> None:
    r = Rig([1], replicas=2)
    with pytest.raises(ValueError, match="3 of 2"):
        r.st.set_units_down(3)
    with pytest.raises(ValueError, match="-1 of 2"):
        r.st.set_units_down(-1)


def test_max_wait_zero_dispatches_whatever_waits() -> None:
    r = Rig([1] * 4, max_batch_size=3, max_wait_s=0.0, base_s=1.0)
    r.submit_at(0.0, 0)  # alone, at once
    r.submit_at(0.5, 1)
    r.submit_at(0.6, 2)  # 1 and 2 wait for the busy replica
    r.submit_at(2.5, 3)
    r.env.run()
    assert r.done == [(1.0, 0), (2.0, 1), (2.0, 2), (3.5, 3)]
    assert r.table.wait_s == pytest.approx([0.0, 0.5, 0.4, 0.0])


@pytest.mark.parametrize(("replicas", "max_batch", "max_wait"), [(1, 4, 0.2), (3, 8, 0.0)])
def test_conservation_and_fifo_dispatch(replicas: int, max_batch: int, max_wait: float) -> None:
    rng = np.random.default_rng(1234)
    n = 500
    tokens = [int(t) for t in rng.integers(1, 200, size=n)]
    arrivals = np.cumsum(rng.exponential(0.05, size=n))
    r = Rig(
        tokens,
        replicas=replicas,
        max_batch_size=max_batch,
        max_wait_s=max_wait,
        base_s=0.05,
        per_token_s=0.0002,
    )
    for c, t in enumerate(arrivals):
        r.submit_at(float(t), c)
    downs = [(5.0, replicas), (6.0, 0), (10.0, replicas - 1), (12.0, 0)]
    for t, k in downs:
        r.at(t, partial(r.st.set_units_down, k))
    r.env.run()

    done_calls = [c for _, c in r.done]
    assert sorted(done_calls) == list(range(n))  # every call done exactly once
    assert r.shed == []
    assert r.st.queued() == 0
    assert r.st.busy() == 0
    start = [float(arrivals[c]) + r.table.wait_s[c] for c in range(n)]
    # FIFO: dispatch starts never go backwards in arrival order.
    assert all(start[c] <= start[c + 1] + 1e-9 for c in range(n - 1))
    assert all(w >= -1e-12 for w in r.table.wait_s)
    for at, c in r.done:
        assert at == pytest.approx(start[c] + r.table.held_s[c])
    # The full outage from 5 to 6 holds work back; at 6 it starts at once.
    assert any(round(s, 9) == 6.0 for s in start)
    assert not any(5.0 < s < 6.0 for s in start)
    if replicas == 1:
        # Calls sharing a start are one batch: held alike, at most max_batch_size, and it
        # started for a reason: full, its oldest call due, or the replica just freed or
        # came back (a restore at 6 or 12) with the oldest already due.
        batches: dict[float, list[int]] = {}
        for c in range(n):
            batches.setdefault(round(start[c], 9), []).append(c)
        freed = {round(at, 9) for at, _ in r.done} | {6.0, 12.0}
        for s0, calls in batches.items():
            assert len(calls) <= max_batch
            assert calls == list(range(calls[0], calls[-1] + 1))
            held = 0.05 + 0.0002 * sum(tokens[c] for c in calls)
            assert all(r.table.held_s[c] == pytest.approx(held) for c in calls)
            due = round(float(arrivals[calls[0]]) + max_wait, 9)
            assert len(calls) == max_batch or s0 == due or (s0 in freed and s0 >= due)
