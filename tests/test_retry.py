"""Retry policy: which statuses are worth another try, and how long to wait (SPEC rule 6)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dlman.retry import RetryPolicy, is_retryable_status, status_message


class _Top:
    """An rng whose jitter is always the top of the range, to read the ceiling exactly."""

    def uniform(self, low: float, high: float) -> float:
        return high


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504, 599])
def test_timeout_throttle_and_server_errors_are_retryable(status):
    assert is_retryable_status(status)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 410, 416, 418, 451, 499, 200, 206, 301, 600])
def test_other_statuses_are_not_retryable(status):
    assert not is_retryable_status(status)


@pytest.mark.parametrize("status, words", [
    (404, "not found"), (401, "not authorised"), (403, "not authorised"), (410, "gone"),
])
def test_status_message_says_why_in_words(status, words):
    message = status_message(status, "Whatever")
    assert words in message and str(status) in message


def test_status_message_for_other_statuses_carries_the_reason_phrase():
    assert status_message(418, "I'm a teapot") == "HTTP 418 I'm a teapot"
    assert status_message(400) == "HTTP 400"


def test_backoff_ceiling_doubles_from_base_and_is_capped():
    policy = RetryPolicy(base=0.5, cap=30.0)
    ceilings = [policy.delay(n, rng=_Top()) for n in range(1, 11)]
    assert ceilings[:7] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0]
    assert ceilings[7:] == [30.0, 30.0, 30.0]
    assert ceilings == sorted(ceilings)


@given(failures=st.integers(1, 60), seed=st.integers(0, 2**32))
def test_jitter_stays_within_half_and_all_of_the_ceiling(failures, seed):
    policy = RetryPolicy()
    ceiling = min(policy.cap, policy.base * 2 ** (failures - 1))
    delay = policy.delay(failures, rng=random.Random(seed))
    assert 0.5 * ceiling <= delay <= ceiling


def test_seeded_jitter_is_reproducible_and_varies():
    policy = RetryPolicy()
    first = [policy.delay(4, rng=random.Random(7)) for _ in range(3)]
    assert len(set(first)) == 1
    rng = random.Random(7)
    spread = {policy.delay(4, rng=rng) for _ in range(20)}
    assert len(spread) > 1


def test_retry_after_wins_over_backoff():
    policy = RetryPolicy()
    assert policy.delay(1, retry_after=12.0, rng=_Top()) == 12.0
    assert policy.delay(5, retry_after=0.0, rng=_Top()) == 0.0


def test_retry_after_is_capped_at_max_retry_after_and_never_negative():
    policy = RetryPolicy(max_retry_after=300.0)
    assert policy.delay(1, retry_after=86400.0) == 300.0
    assert policy.delay(1, retry_after=-5.0) == 0.0
    assert RetryPolicy(max_retry_after=10.0).delay(1, retry_after=11.0) == 10.0


def test_gives_up_only_after_more_failures_than_retries():
    policy = RetryPolicy(retries=3)
    assert [policy.gives_up(n) for n in range(0, 6)] == [False, False, False, False, True, True]
    assert RetryPolicy(retries=0).gives_up(1)
    assert not RetryPolicy(retries=0).gives_up(0)


def test_defaults_match_the_spec():
    policy = RetryPolicy()
    assert policy.retries == 5
    assert policy.max_retry_after >= policy.cap


def test_backoff_for_very_many_failures_is_still_the_cap():
    policy = RetryPolicy(retries=5000)
    assert policy.delay(2000, rng=_Top()) == policy.cap
