"""Retry policy (pure): which failures are worth another try, and how long to wait first."""

from __future__ import annotations

import random
from dataclasses import dataclass

RETRYABLE_STATUSES = frozenset({408, 429})


def is_retryable_status(status: int) -> bool:
    """408, 429 and every 5xx may succeed later; other 4xx will not (SPEC rule 6)."""
    return status in RETRYABLE_STATUSES or 500 <= status <= 599


def status_message(status: int, reason: str = "", detail: str | None = None) -> str:
    """The sentence a user sees for a status that ends a download (``detail``: the server's own words)."""
    named = {404: "not found", 401: "not authorised", 403: "not authorised", 410: "gone"}.get(status)
    code = f"HTTP {status}: {detail}" if detail else f"HTTP {status}"
    if named:
        return f"{named} ({code})"
    text = f"HTTP {status} {reason}".strip()
    return f"{text}: {detail}" if detail else text


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
        ceiling: float = min(self.cap, self.base * float(2 ** min(max(0, failures - 1), 62)))
        jitter: float = (rng or random).uniform(0.5, 1.0)
        return ceiling * jitter

    def gives_up(self, failures: int) -> bool:
        return failures > self.retries
