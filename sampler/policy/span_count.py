"""`span_count`: samples traces with at least `min_spans` spans and, when `max_spans` is not 0,
at most `max_spans` (both inclusive, as upstream)."""

from __future__ import annotations

from sampler.policy.base import Policy, Vote
from sampler.policy.configs import SpanCountConfig
from sampler.policy.summary import TraceSummary


class SpanCount(Policy):
    def __init__(self, name: str, config: SpanCountConfig) -> None:
        super().__init__(name)
        self.low = config.min_spans
        self.high = config.max_spans

    def evaluate(self, trace: TraceSummary) -> Vote:
        n = trace.spans
        hit = n >= self.low and (self.high == 0 or n <= self.high)
        return Vote.SAMPLED if hit else Vote.NOT_SAMPLED
