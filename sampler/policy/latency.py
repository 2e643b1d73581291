"""`latency`: samples traces whose whole duration (latest end - earliest start) is long.

As upstream: with only `threshold_ms`, duration >= threshold samples; with `upper_threshold_ms`
too, threshold < duration <= upper samples. Durations are truncated to whole milliseconds.
"""

from __future__ import annotations

from sampler.policy.base import Policy, Vote
from sampler.policy.configs import LatencyConfig
from sampler.summary import TraceSummary


class Latency(Policy):
    def __init__(self, name: str, config: LatencyConfig) -> None:
        super().__init__(name)
        self.lower = config.threshold_ms
        self.upper = config.upper_threshold_ms

    def evaluate(self, trace: TraceSummary) -> Vote:
        ms = trace.duration_ns // 1_000_000
        hit = ms >= self.lower if self.upper == 0 else self.lower < ms <= self.upper
        return Vote.SAMPLED if hit else Vote.NOT_SAMPLED
