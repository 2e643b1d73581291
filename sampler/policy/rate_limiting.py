"""`rate_limiting` and `bytes_limiting`: token buckets over spans (or bytes) per second.

As upstream, the bucket holds `burst_capacity` tokens (default twice the rate) and a trace passes
when its whole span count (or size) is available now. tailsampler measures a trace's bytes exactly
(the serialized size of its spans) where the Collector estimates them from field lengths, so a
bytes budget admits somewhat fewer traces here than there for the same number.
Budgets are per instance: N instances together admit up to N times the configured rate.
"""

from __future__ import annotations

from collections.abc import Callable

from sampler.policy.base import Policy, Vote
from sampler.policy.configs import BytesLimitingConfig, RateLimitingConfig
from sampler.policy.limiter import TokenBucket
from sampler.policy.summary import TraceSummary


class RateLimiting(Policy):
    def __init__(self, name: str, config: RateLimitingConfig, clock: Callable[[], float]) -> None:
        super().__init__(name)
        burst = config.burst_capacity or 2 * config.spans_per_second
        self.bucket = TokenBucket(config.spans_per_second, burst, clock)

    def evaluate(self, trace: TraceSummary) -> Vote:
        return Vote.SAMPLED if self.bucket.allow(trace.spans) else Vote.NOT_SAMPLED

    def peek(self, trace: TraceSummary) -> Vote:
        return Vote.SAMPLED if self.bucket.would_allow(trace.spans) else Vote.NOT_SAMPLED


class BytesLimiting(Policy):
    def __init__(self, name: str, config: BytesLimitingConfig, clock: Callable[[], float]) -> None:
        super().__init__(name)
        burst = config.burst_capacity or 2 * config.bytes_per_second
        self.bucket = TokenBucket(config.bytes_per_second, burst, clock)

    def evaluate(self, trace: TraceSummary) -> Vote:
        return Vote.SAMPLED if self.bucket.allow(trace.nbytes) else Vote.NOT_SAMPLED

    def peek(self, trace: TraceSummary) -> Vote:
        return Vote.SAMPLED if self.bucket.would_allow(trace.nbytes) else Vote.NOT_SAMPLED
