"""TokenBucket with a fake clock: at most one second of burst, then waits that pay the debt."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dlman.ratelimit import RateLimiter, TokenBucket


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_initial_burst_is_one_second_of_bytes():
    clock = FakeClock()
    bucket = TokenBucket(1000, clock=clock)
    assert bucket.take(1000) == 0.0
    assert bucket.take(1) == pytest.approx(0.001)


def test_burst_beyond_one_second_waits_for_the_excess():
    bucket = TokenBucket(1000, clock=FakeClock())
    assert bucket.take(1500) == pytest.approx(0.5)


def test_wait_is_debt_divided_by_rate_and_debt_accumulates():
    clock = FakeClock()
    bucket = TokenBucket(2048, clock=clock)
    assert bucket.take(2048) == 0.0
    assert bucket.take(1024) == pytest.approx(0.5)
    assert bucket.take(1024) == pytest.approx(1.0)
    clock.advance(1.0)
    assert bucket.take(0) == pytest.approx(0.0)           # one second paid the whole debt
    assert bucket.take(2048) == pytest.approx(1.0)


def test_tokens_refill_over_time():
    clock = FakeClock()
    bucket = TokenBucket(100, clock=clock)
    bucket.take(100)
    clock.advance(0.25)
    assert bucket.take(25) == 0.0
    assert bucket.take(25) == pytest.approx(0.25)


def test_refill_never_exceeds_one_second_of_capacity():
    clock = FakeClock()
    bucket = TokenBucket(100, clock=clock)
    clock.advance(3600.0)
    assert bucket.take(100) == 0.0
    assert bucket.take(1) == pytest.approx(0.01)


@pytest.mark.parametrize("rate", [0, -1])
def test_rate_must_be_positive(rate):
    with pytest.raises(ValueError):
        TokenBucket(rate, clock=FakeClock())
    with pytest.raises(ValueError):
        RateLimiter(rate)


@given(rate=st.integers(1, 10**8),
       steps=st.lists(st.tuples(st.integers(0, 10**7), st.floats(0, 5)), min_size=1, max_size=40))
def test_honoured_waits_keep_throughput_within_rate_plus_one_second_burst(rate, steps):
    clock = FakeClock(0.0)
    bucket = TokenBucket(rate, clock=clock)
    sent = 0
    for amount, idle in steps:
        clock.advance(idle)
        wait = bucket.take(amount)
        assert wait >= 0
        sent += amount
        clock.advance(wait)                 # the caller honours the wait
        # by the time the bytes are due, they fit in the rate plus one second of burst
        assert sent <= rate * clock.now + rate + 1e-6 * max(1, sent)


@given(rate=st.integers(1, 10**6), amounts=st.lists(st.integers(1, 10**6), min_size=1, max_size=30))
def test_back_to_back_takes_are_not_throttled_below_the_rate(rate, amounts):
    clock = FakeClock(0.0)
    bucket = TokenBucket(rate, clock=clock)
    sent = 0
    for amount in amounts:
        wait = bucket.take(amount)
        sent += amount
        clock.advance(wait)
    # no idle time and every wait honoured: exactly one second of burst plus rate * elapsed
    assert clock.now == pytest.approx(max(0.0, (sent - rate) / rate), rel=1e-9, abs=1e-9)


def test_rate_limiter_does_not_sleep_within_the_burst():
    async def main():
        limiter = RateLimiter(10**9)
        loop = asyncio.get_running_loop()
        start = loop.time()
        await limiter.acquire(1000)
        return loop.time() - start
    assert asyncio.run(main()) < 0.5
