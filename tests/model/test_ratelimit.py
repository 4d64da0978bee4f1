"""Token buckets and provider limits, checked against arithmetic done by hand."""

from __future__ import annotations

import math

import pytest

from ragstress.model.ratelimit import ProviderLimits, TokenBucket, retry_after_header_s

# ------------------------------------------------------------------- the bucket


def test_constant_load_at_twice_the_rpm_limit() -> None:
    """One request every 0.5 s against 60 RPM (1/s), burst 60, starting full.

    Before request k (at t = k/2) the bucket holds 60 + k/2 − k = 60 − k/2 while every request
    so far was granted, so requests 0…118 are granted (the last leaves 0 at t = 59). From then
    on the bucket gains 0.5 per gap: request 119 (t = 59.5) finds 0.5 and is refused with an
    exact wait of 0.5 s, request 120 (t = 60) finds 1 and is granted, and so on: every odd k is
    refused, every even k granted. Over 1,200 requests (600 s): 119 + 540 granted = 659 =
    60 (burst) + 599.5 (refill until the last request) − 0.5 (left over).
    """
    bucket = TokenBucket(60, 60 / 60)
    granted: list[int] = []
    waits: list[float] = []
    for k in range(1200):
        wait = bucket.try_take(k * 0.5, 1)
        if wait == 0.0:
            granted.append(k)
        else:
            waits.append(wait)
    assert granted[:119] == list(range(119))
    assert granted[119:] == list(range(120, 1200, 2))
    assert len(granted) == 659
    assert len(waits) == 1200 - 659 == 541
    assert set(waits) == {0.5}
    after_burst = range(119, 1200)
    assert len(waits) / len(after_burst) == pytest.approx(0.5, abs=1 / len(after_burst))


def test_the_same_load_through_provider_limits_reports_whole_seconds() -> None:
    limits = ProviderLimits(rpm=60)
    answers = [limits.admit(k * 0.5, 1000, 1000) for k in range(240)]
    assert answers[:119] == [0.0] * 119
    assert answers[119:] == [1.0, 0.0] * 60 + [1.0]  # exact wait 0.5 s → retry-after: 1


def test_retry_after_is_the_exact_wait() -> None:
    bucket = TokenBucket(10, 2.0)  # 10 tokens, 2 per second
    assert bucket.try_take(0.0, 10) == 0.0
    assert bucket.try_take(0.0, 1) == 0.5
    assert bucket.try_take(0.0, 4) == 2.0
    assert bucket.try_take(1.0, 3) == 0.5  # holds 2
    assert bucket.try_take(1.5, 3) == 0.0  # holds 3: granted
    assert bucket.level(1.5) == 0.0
    assert bucket.try_take(1.5, 0) == 0.0  # nothing asked, nothing needed


def test_a_refused_request_takes_nothing() -> None:
    bucket = TokenBucket(10, 1.0, tokens=3)
    assert bucket.try_take(0.0, 5) == 2.0
    assert bucket.level(0.0) == 3.0
    assert bucket.try_take(2.0, 5) == 0.0  # exactly when promised
    assert bucket.level(2.0) == 0.0


def test_never_enough() -> None:
    assert TokenBucket(10, 1.0).try_take(0.0, 10.5) == math.inf
    dry = TokenBucket(10, 0.0, tokens=1)
    assert dry.try_take(0.0, 2) == math.inf
    assert dry.try_take(100.0, 1) == 0.0


def test_refill_stops_at_capacity() -> None:
    bucket = TokenBucket(5, 1.0, tokens=0)
    assert bucket.level(3.0) == 3.0
    assert bucket.level(1000.0) == 5.0


def test_refill_rounding_does_not_refuse_an_exact_rate() -> None:
    # 1000 RPM refills 1000/60 per second; a request every 0.06 s uses exactly that
    limits = ProviderLimits(rpm=1000, rpm_burst=1)
    assert all(limits.admit(k * 0.06, 0, 0) == 0.0 for k in range(10_000))


def test_time_must_not_go_backwards() -> None:
    bucket = TokenBucket(5, 1.0, now=10.0)
    with pytest.raises(ValueError, match="backwards"):
        bucket.try_take(9.0, 1)


@pytest.mark.parametrize(
    ("capacity", "refill"), [(0.0, 1.0), (-1.0, 1.0), (math.inf, 1.0), (1.0, -1.0)]
)
def test_bad_bucket(capacity: float, refill: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        TokenBucket(capacity, refill)


@pytest.mark.parametrize(
    ("wait", "header"),
    [(0.0, 0.0), (1e-6, 1.0), (0.5, 1.0), (1.0, 1.0), (2.0, 2.0), (2.0001, 3.0), (59.9, 60.0)],
)
def test_retry_after_rounds_up_to_whole_seconds(wait: float, header: float) -> None:
    assert retry_after_header_s(wait) == header
    assert retry_after_header_s(math.inf) == math.inf


# ------------------------------------------------------------------- provider limits


def test_tpm_charges_prompt_plus_max_tokens_at_admission() -> None:
    limits = ProviderLimits(tpm=600)  # 10 tokens/s, 600 at most
    assert ProviderLimits.charge(100, 200) == 300
    assert limits.admit(0.0, 100, 200) == 0.0
    assert limits.tpm is not None
    assert limits.tpm.level(0.0) == 300.0  # the output cap, whatever the answer's length
    assert limits.admit(0.0, 100, 200) == 0.0
    assert limits.wait_s(0.0, 100, 200) == 30.0  # 300 tokens at 10/s
    assert limits.admit(0.0, 100, 200) == 30.0
    assert limits.wait_s(10.0, 100, 200) == 20.0
    assert limits.admit(10.0, 100, 200) == 20.0
    assert limits.admit(30.0, 100, 200) == 0.0
    assert limits.admit(30.0, 500, 200) == math.inf  # 700 > 600: never admitted


def test_both_buckets_must_have_room_and_a_refusal_charges_neither() -> None:
    limits = ProviderLimits(rpm=2, tpm=1_000_000)
    assert limits.rpm is not None
    assert limits.tpm is not None
    assert limits.admit(0.0, 10, 10) == 0.0
    assert limits.admit(0.0, 10, 10) == 0.0
    tpm_before = limits.tpm.level(0.0)
    assert limits.wait_s(0.0, 10, 10) == 30.0  # one request at 2/60 per s
    assert limits.admit(0.0, 10, 10) == 30.0
    assert limits.tpm.level(0.0) == tpm_before == 1_000_000 - 40

    # TPM short, RPM fine: the RPM bucket keeps its token
    tight = ProviderLimits(rpm=60, tpm=60)  # 1 request/s, 1 token/s
    assert tight.rpm is not None
    assert tight.admit(0.0, 30, 30) == 0.0
    assert tight.admit(0.0, 0, 1) == 1.0
    assert tight.rpm.level(0.0) == 59.0


def test_retry_after_is_the_larger_wait_rounded_up() -> None:
    limits = ProviderLimits(rpm=60, tpm=600, rpm_burst=1, tpm_burst=600)
    assert limits.admit(0.0, 573, 0) == 0.0  # RPM now empty (1 s), TPM holds 27
    # RPM needs 1 s, TPM needs (100 − 27) / 10 = 7.3 s: the request needs both
    assert limits.wait_s(0.0, 50, 50) == pytest.approx(7.3)
    assert limits.admit(0.0, 50, 50) == 8.0
    assert limits.admit(0.5, 0, 0) == 1.0  # RPM alone: 0.5 s → 1


def test_no_limits_admits_everything() -> None:
    limits = ProviderLimits()
    assert all(limits.admit(0.0, 10**6, 10**6) == 0.0 for _ in range(100))


# ------------------------------------------------------------------- rate-limit cuts


def test_rate_limit_cut_scales_capacity_and_refill() -> None:
    bucket = TokenBucket(60, 1.0)
    bucket.scale(0.0, 0.5)  # 30 tokens at most, 0.5 per second
    assert (bucket.capacity, bucket.refill_per_s) == (30.0, 0.5)
    assert bucket.level(0.0) == 30.0  # the excess is lost
    assert bucket.try_take(0.0, 30) == 0.0
    assert bucket.try_take(0.0, 1) == 2.0  # 1 token at 0.5/s
    bucket.scale(10.0, 1.0)  # ends: 5 tokens earned at the cut rate, no free burst
    assert bucket.level(10.0) == 5.0
    assert bucket.try_take(10.0, 6) == 1.0  # full rate again
    assert bucket.level(1000.0) == 60.0  # full capacity again


def test_scale_is_absolute_not_cumulative() -> None:
    bucket = TokenBucket(100, 10.0)
    bucket.scale(0.0, 0.5)
    bucket.scale(0.0, 0.5)
    assert (bucket.capacity, bucket.refill_per_s) == (50.0, 5.0)
    with pytest.raises(ValueError, match="factor"):
        bucket.scale(0.0, 0.0)
    with pytest.raises(ValueError, match="factor"):
        bucket.scale(0.0, 1.5)


def test_a_cut_to_a_quarter_admits_a_quarter() -> None:
    """120 RPM cut to 0.25: 30 tokens at most, refilled at 0.5/s. A request every 0.5 s finds
    30 − 0.75·k before request k while all are granted, so k = 0…38 are granted (0.5 left at
    t = 19); k = 39 finds 0.75 (wait 0.5 s → 1); k = 40 finds 1.0 and is granted; then the cycle
    of four repeats: 0.25 (wait 1.5 s → 2), 0.5 (1.0 s → 1), 0.75 (0.5 s → 1), 1.0 (granted).
    One in four admitted: the cut's 30 RPM out of 120 offered."""
    limits = ProviderLimits(rpm=120)
    limits.scale(0.0, 0.25)
    answers = [limits.admit(k * 0.5, 0, 0) for k in range(440)]
    assert answers[:39] == [0.0] * 39
    assert answers[39] == 1.0
    assert answers[40:] == [0.0, 2.0, 1.0, 1.0] * 100
