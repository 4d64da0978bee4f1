"""Knee of latency-versus-load curves with known shapes."""

from __future__ import annotations

import math

import numpy as np

from ragstress.capacity import find_knee


def _mm1_p95(rates: np.ndarray, capacity: float = 100.0) -> np.ndarray:
    # M/M/1 sojourn time is exponential with rate μ − λ: p95 = ln 20 / (μ − λ)
    return math.log(20) / (capacity - rates)


def test_queue_curve_bends_in_the_upper_utilisations() -> None:
    rates = np.arange(5.0, 100.0, 5.0)  # up to 95 % utilisation
    knee = find_knee(list(rates), list(_mm1_p95(rates)))
    assert knee is not None
    assert 60.0 <= knee.rate_rps <= 90.0
    assert knee.latency_s == _mm1_p95(np.array([knee.rate_rps]))[0]
    assert knee.bend > 0.2


def test_a_saturated_tail_does_not_drag_the_knee_to_the_last_points() -> None:
    rates = np.arange(5.0, 100.0, 5.0)
    p95 = list(_mm1_p95(rates))
    # past capacity the queue grows with the run length: thousands of seconds
    with_tail = find_knee([*rates, 110.0, 120.0], [*p95, 2000.0, 4000.0])
    assert with_tail is not None
    assert with_tail.rate_rps <= 95.0


def test_saturated_points_after_the_first_are_dropped() -> None:
    rates = np.arange(5.0, 100.0, 5.0)
    p95 = list(_mm1_p95(rates))
    # past capacity, throughput stays at 100 req/s and p95 grows linearly with the backlog
    tail_rates = [110.0, 130.0, 150.0, 170.0, 190.0]
    tail_p95 = [30.0, 90.0, 150.0, 210.0, 270.0]
    served = [*rates, 100.0, 100.0, 100.0, 100.0, 100.0]
    knee = find_knee([*rates, *tail_rates], [*p95, *tail_p95], served)
    assert knee is not None
    assert 60.0 <= knee.rate_rps <= 95.0


def test_unsorted_input_and_missing_points_are_handled() -> None:
    rates = np.arange(5.0, 100.0, 5.0)
    p95 = _mm1_p95(rates)
    order = np.random.default_rng(1).permutation(rates.size)
    shuffled = find_knee(list(rates[order]), list(p95[order]))
    assert shuffled == find_knee(list(rates), list(p95))
    assert find_knee([*rates, 97.0], [*p95, math.nan]) == shuffled


def test_straight_flat_or_falling_curves_have_no_knee() -> None:
    rates = [10.0, 20.0, 30.0, 40.0, 50.0]
    assert find_knee(rates, [1.0, 1.0, 1.0, 1.0, 1.0]) is None
    assert find_knee(rates, [5.0, 4.0, 3.0, 2.0, 1.0]) is None
    # exponential growth is a straight line on the log scale the knee is found on
    assert find_knee(rates, [math.exp(r / 10) for r in rates]) is None
    assert find_knee([10.0, 20.0], [1.0, 5.0]) is None  # too few points
