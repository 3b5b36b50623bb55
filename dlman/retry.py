"""Retry policy (pure): which failures are worth another try, and how long to wait first."""

from __future__ import annotations

import random
from dataclasses import dataclass

RETRYABLE_STATUSES = frozenset({408, 429})


def is_retryable_status(status: int) -> bool:
    """408, 429 and every 5xx may succeed later; other 4xx will not (SPEC rule 6)."""
    return status in RETRYABLE_STATUSES or 500 <= status <= 599


def status_message(status: int, reason: str = "") -> str:
    """The sentence a user sees for a status that ends a download."""
    if status == 404:
        return "not found (HTTP 404)"
    if status in (401, 403):
        return f"not authorised (HTTP {status})"
    if status == 410:
        return "gone (HTTP 410)"
    text = f"HTTP {status}"
    return f"{text} {reason}".strip() if reason else text


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, capped; Retry-After wins when the server sends one.

    ``retries`` counts consecutive failed attempts that brought no new bytes, per
    segment: an attempt that made progress resets the count, so a long download
    over a flaky link is not abandoned for failures spread over hours.
    """

    retries: int = 5
    base: float = 0.5
    cap: float = 30.0
    max_retry_after: float = 300.0

    def delay(self, failures: int, retry_after: float | None = None,
              rng: random.Random | None = None) -> float:
        """Seconds to wait before attempt number ``failures + 1`` (``failures`` >= 1)."""
        if retry_after is not None:
            return min(max(0.0, retry_after), self.max_retry_after)
        ceiling = min(self.cap, self.base * (2 ** min(max(0, failures - 1), 62)))
        jitter = (rng or random).uniform(0.5, 1.0)
        return ceiling * jitter

    def gives_up(self, failures: int) -> bool:
        return failures > self.retries
