"""A token bucket with the semantics of Go's golang.org/x/time/rate.Limiter.AllowN, which the
Collector's rate_limiting and bytes_limiting policies use: tokens refill continuously at `rate`
per second up to `burst`; a request for n tokens passes only if n are there now (no debt)."""

from __future__ import annotations

from collections.abc import Callable


class TokenBucket:
    def __init__(self, rate: float, burst: int, clock: Callable[[], float]) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.tokens = float(burst)  # a new bucket starts full, as rate.NewLimiter's does
        self.last = clock()

    def allow(self, n: int) -> bool:
        now = self.clock()
        if now > self.last:
            self.tokens = min(float(self.burst), self.tokens + (now - self.last) * self.rate)
            self.last = now
        if n <= self.tokens:
            self.tokens -= n
            return True
        return False

    def would_allow(self, n: int) -> bool:
        """Whether `allow(n)` would pass now, taking nothing (/debug explains without side effects)."""
        now = self.clock()
        tokens = self.tokens
        if now > self.last:
            tokens = min(float(self.burst), tokens + (now - self.last) * self.rate)
        return n <= tokens
