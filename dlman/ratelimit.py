"""Token buckets: one shared by every connection of a run (``--limit-rate``), and one per
download (``--max-speed``) that also spends from the run's.

A bucket holds at most one second of tokens, so bursts stay within about a
second's worth of bytes (the SPEC's promise) while connections share the rate.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class TokenBucket:
    """Pure accounting: ``take(n)`` says how long the caller must wait before its bytes are due."""

    def __init__(self, rate: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = float(rate)
        self.capacity = float(rate)
        self._clock = clock
        self._tokens = self.capacity
        self._stamp = clock()

    def take(self, amount: int) -> float:
        """Spend ``amount`` tokens (going into debt if needed); the seconds until the debt is paid."""
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        self._tokens -= amount
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


class RateLimiter:
    """The asyncio face of a TokenBucket: ``await limiter.acquire(n)`` after receiving n bytes.

    ``within``: a wider limiter these bytes also count against (a download's own limit
    inside the run's), so the slower of the two sets the pace.
    """

    def __init__(self, rate: int, *, within: "RateLimiter | None" = None) -> None:
        self.bucket = TokenBucket(rate)
        self.within = within

    async def acquire(self, amount: int) -> None:
        wait = self.bucket.take(amount)
        if wait > 0:
            await asyncio.sleep(wait)
        if self.within is not None:
            await self.within.acquire(amount)
