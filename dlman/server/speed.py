"""Download speed from progress samples: bytes over the last few seconds, and the time left."""

from __future__ import annotations

from collections import deque

WINDOW = 4.0  # seconds of samples a speed is measured over


class SpeedMeter:
    """Bytes per second over the last ``window`` seconds of ``observe(time, bytes_done)`` calls.

    Samples may come often (the engine's progress) or seldom (another process's heartbeats
    read from the queue); a count that goes down (a restart from zero) starts over.
    """

    def __init__(self, window: float = WINDOW) -> None:
        self.window = window
        self._samples: deque[tuple[float, int]] = deque()

    def observe(self, now: float, done: int) -> None:
        if self._samples and done < self._samples[-1][1]:
            self._samples.clear()
        if self._samples and self._samples[-1][0] == now:
            self._samples[-1] = (now, done)
        else:
            self._samples.append((now, done))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window:
            self._samples.popleft()

    def rate(self, now: float) -> int:
        """Bytes per second; 0 with fewer than two samples or none in the last window."""
        if len(self._samples) < 2 or now - self._samples[-1][0] > self.window:
            return 0
        (t0, b0), (t1, b1) = self._samples[0], self._samples[-1]
        return int((b1 - b0) / (t1 - t0)) if t1 > t0 else 0


def eta(total: int | None, done: int, speed: int) -> float | None:
    """Seconds left at ``speed``; None when the size or a speed is unknown."""
    if not total or speed <= 0 or done >= total:
        return None
    return (total - done) / speed
